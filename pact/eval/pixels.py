"""The pixel budget of Qwen-VL image processors, set as lmms-eval's own wrappers set it.

Qwen-VL resizes each image to a pixel count between ``min_pixels`` and ``max_pixels``,
which fixes how many visual tokens it becomes. A checkpoint's processor carries its own
budget; lmms-eval's Qwen wrappers replace it with theirs, so pact does the same to give
the token counts (and scores) of lmms-eval's reference runs. Free of lmms-eval.
"""

from __future__ import annotations

from pact.eval import positive_int

LMMS_EVAL_PIXELS: dict[str, tuple[int, int]] = {
    # model_type: (min_pixels, max_pixels), the defaults of lmms-eval 0.7's wrappers.
    "qwen2_vl": (3136, 602112),
    "qwen2_5_vl": (256 * 28 * 28, 1605632),
    "qwen3_vl": (256 * 28 * 28, 1605632),
}


def takes_pixel_budget(image_processor) -> bool:
    """Whether an image processor resizes to a pixel budget (Qwen-VL's dynamic resolution)."""
    size = getattr(image_processor, "size", None) or {}
    keys = set(size.keys()) if hasattr(size, "keys") else set(vars(size))
    return hasattr(image_processor, "merge_size") and {"shortest_edge", "longest_edge"} <= keys


def check_checkpoint(path: str, min_pixels: int | None, max_pixels: int | None) -> None:
    """Refuse a pixel budget a checkpoint's image processor has no use for, reading only
    its processor files (before any weights load)."""
    if min_pixels is None and max_pixels is None:
        return
    from transformers import AutoImageProcessor

    try:
        image_processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError):  # no image processor of its own: the model load will say
        return
    if not takes_pixel_budget(image_processor):
        raise ValueError(
            "min_pixels / max_pixels set the pixel budget of Qwen-VL image processors; "
            f"{type(image_processor).__name__} of {path!r} resizes to a fixed size"
        )


def set_pixels(
    processor,
    model_type: str,
    min_pixels: int | None,
    max_pixels: int | None,
    lmms_eval_defaults: bool,
) -> tuple[int, int] | None:
    """Set ``processor``'s pixel budget; returns the ``(min, max)`` in force, or ``None``
    for a processor without one.

    Unset bounds take lmms-eval's default for ``model_type`` when ``lmms_eval_defaults``
    (checkpoints), else the processor's own (pact's tiny models, sized for tests).
    """
    image_processor = getattr(processor, "image_processor", None)
    if not takes_pixel_budget(image_processor):
        if min_pixels is not None or max_pixels is not None:
            raise ValueError(
                "min_pixels / max_pixels set the pixel budget of Qwen-VL image processors; "
                f"{type(image_processor).__name__} ({model_type}) resizes to a fixed size"
            )
        return None
    size = image_processor.size
    current = (int(size["shortest_edge"]), int(size["longest_edge"]))
    default = LMMS_EVAL_PIXELS.get(model_type, current) if lmms_eval_defaults else current
    low = default[0] if min_pixels is None else positive_int(min_pixels, "min_pixels")
    high = default[1] if max_pixels is None else positive_int(max_pixels, "max_pixels")
    if low > high:
        raise ValueError(f"min_pixels ({low}) must not exceed max_pixels ({high})")
    image_processor.size = {"shortest_edge": low, "longest_edge": high}
    return low, high
