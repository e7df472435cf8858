"""A stage placed on the vision side (``place: vision``): VisionZip's place.

Three hooks on the stock model, removed by ``detach``: a pre-hook on one tower layer's
attention captures its queries and keys; a pre-hook on the projector (LLaVA's
``multi_modal_projector``, Qwen-VL's ``merger``) runs the stage's pipeline on the tower's
features, one row per image, and writes the merged features back in place, so the projector
maps merged features as the published method does; the language model's layer 0 then drops
the removed tokens (:class:`PlannedStage`), keeping original positions, and counts a merged
token by its members (proportional attention). The count of image features never changes
before the language model, so the model's own placement of features into the sequence
(``masked_scatter`` over the image tokens) runs untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pact.config import StageConfig
from pact.hooks import families
from pact.hooks.anyres import AnyresTower
from pact.hooks.state import Call
from pact.hooks.towers import LlavaTower, QwenTower, TowerRows, stack_images, write_back
from pact.pipeline import Pipeline, stack_rows
from pact.tensors import LayerInputs, Reduction, ReductionStats, RowReduction, StepTimes


@dataclass
class VisionPlan:
    """What the vision stage decided, per image feature in the order the language model
    receives them (the order of its image tokens, row after row)."""

    keep: Tensor
    """``[F]`` bool: the feature survives (alone, or as a merged token)."""
    sizes: Tensor
    """``[F]`` float32: features a surviving one stands for."""
    center: Tensor
    """``[F]`` long: index of the surviving feature each one folded into (itself when it
    survives), -1 when removed."""
    image: Tensor
    """``[F]`` long: the image each feature belongs to."""
    after_prune: list[int]
    """Per image: features the scorer kept (VisionZip's dominant tokens)."""
    seconds: StepTimes


def plan_from(reduction: Reduction, rows: TowerRows) -> VisionPlan:
    """Flatten a reduction over image rows into a plan, image after image, each image's
    features in the order the language model receives them (``rows.layout``)."""
    padding = rows.padding_mask
    keep, sizes, center, image_of, offset = [], [], [], [], 0
    for image in range(padding.shape[0]):
        count = int(padding[image].sum())
        layout = (
            torch.arange(count, device=padding.device)
            if rows.layout is None
            else rows.layout[image].to(padding.device)
        )
        kept = reduction.kept_mask[image]
        row_keep = torch.zeros(padding.shape[1], dtype=torch.bool, device=padding.device)
        row_keep[reduction.kept_slots[image][kept]] = True
        row_sizes = torch.ones(padding.shape[1], device=padding.device)
        row_sizes[reduction.kept_slots[image][kept]] = reduction.sizes[image][kept]
        token = layout >= 0
        slot = layout.clamp(min=0)
        position = torch.full((padding.shape[1],), -1, dtype=torch.long, device=padding.device)
        position[layout[token]] = torch.nonzero(token).flatten()
        folded = reduction.assignment[image, slot]
        local = torch.where(folded >= 0, position[folded.clamp(min=0)], -1)
        local = torch.where(token, local, torch.arange(len(layout), device=padding.device))
        keep.append(torch.where(token, row_keep[slot], True))
        sizes.append(torch.where(token, row_sizes[slot], 1.0))
        center.append(torch.where(local >= 0, local + offset, -1))
        image_of.append(torch.full_like(layout, image))
        offset += len(layout)
    return VisionPlan(
        torch.cat(keep),
        torch.cat(sizes),
        torch.cat(center),
        torch.cat(image_of),
        reduction.stats.after_prune,
        reduction.stats.seconds,
    )


def expanded(plan: VisionPlan, counts: list[int]) -> VisionPlan:
    """The plan for rows that ``generate`` repeated (beams, several returned sequences):
    each row ``k`` times in place, its images' features with it. ``counts``: visual tokens
    per row of the repeated batch."""
    planned = plan.keep.numel()
    total = sum(counts)
    copies = total // planned if planned else 0
    if not copies or total % planned or len(counts) % copies:
        raise ValueError(
            f"the vision stage planned {planned} image features but the sequence has {total} "
            "visual tokens (videos, or features not from this forward?)"
        )
    image_sizes = torch.bincount(plan.image, minlength=len(plan.after_prune)).tolist()
    spans, image = [], 0  # per original row: (first feature, end, first image, end image)
    for count in counts[::copies]:
        start_feature, start_image, taken = sum(image_sizes[:image]), image, 0
        while taken < count and image < len(image_sizes):
            taken, image = taken + image_sizes[image], image + 1
        if taken != count:
            raise ValueError("the vision stage's images do not fill the repeated rows")
        spans.append((start_feature, start_feature + count, start_image, image))
    parts, after_prune, offset, images = [], [], 0, 0
    for start, end, first, last in (span for span in spans for _ in range(copies)):
        center = plan.center[start:end]
        parts.append((plan.keep[start:end], plan.sizes[start:end],
                      torch.where(center >= 0, center - start + offset, -1),
                      plan.image[start:end] - first + images))  # fmt: skip
        after_prune += plan.after_prune[first:last]
        offset, images = offset + end - start, images + last - first
    keep, sizes, centers, image_of = (torch.cat(column) for column in zip(*parts, strict=True))
    return VisionPlan(keep, sizes, centers, image_of, after_prune, plan.seconds)


class PlannedStage:
    """Layer 0's side of a vision stage: applies the plan made on the vision side."""

    needs_attention_scores = False

    def __init__(self, stage: StageConfig):
        self.stage = stage

    def apply(self, inputs: LayerInputs, plan: VisionPlan | None) -> Reduction:
        visual = inputs.real_visual_mask
        total = int(visual.sum())
        if plan is None:
            raise ValueError(
                "a vision stage reduces the images the model encodes in this forward; this one "
                "has image tokens but encoded no image (pass pixel_values, not inputs_embeds)"
            )
        counts = visual.sum(dim=1).tolist()
        if total != plan.keep.numel():
            plan = expanded(plan, counts)
        device = inputs.hidden.device
        plan = VisionPlan(
            *(v.to(device) if isinstance(v, Tensor) else v for v in vars(plan).values())
        )
        feature_slots = torch.nonzero(visual)[:, 1]  # row-major, as the features were placed
        rows, stats = [], ReductionStats([], [], [], [], seconds=plan.seconds, layer=0)
        offset = 0
        for row in range(inputs.batch_size):
            count = int(visual[row].sum())
            part = slice(offset, offset + count)
            rows.append(self._row(inputs, row, plan, part, feature_slots))
            images = torch.unique(plan.image[part]).tolist()
            stats.visual_in.append(count)
            stats.after_prune.append(sum(plan.after_prune[image] for image in images))
            stats.after_merge.append(int(plan.keep[part].sum()))
            stats.retrieved.append(0)
            offset += count
        assert inputs.padding_mask is not None
        stats.tokens_in = inputs.padding_mask.sum(dim=1).tolist()
        stats.tokens_out = [
            int(inputs.padding_mask[b, row.slots].sum()) for b, row in enumerate(rows)
        ]
        return stack_rows(inputs, rows, stats)

    @staticmethod
    def _row(
        inputs: LayerInputs, row: int, plan: VisionPlan, part: slice, feature_slots: Tensor
    ) -> RowReduction:
        assert inputs.sizes is not None and inputs.positions is not None
        visual_slots = feature_slots[part]
        keep = plan.keep[part]
        others = torch.nonzero(~inputs.real_visual_mask[row]).flatten()
        slots, order = torch.sort(torch.cat([others, visual_slots[keep]]))
        sizes = torch.cat([inputs.sizes[row, others].float(), plan.sizes[part][keep]])[order]
        positions = inputs.positions[row]
        positions = positions if positions.dim() == 2 else positions[:, None]
        assignment = torch.full_like(inputs.real_visual_mask[row], -1, dtype=torch.long)
        assignment[others] = others
        center = plan.center[part]
        folded = center >= 0
        assignment[visual_slots[folded]] = feature_slots[center[folded]]
        return RowReduction(
            slots=slots,
            hidden=inputs.hidden[row, slots],
            sizes=sizes,
            positions=positions[slots],
            assignment=assignment,
        )


class VisionHooks:
    """The vision-side hooks of an attached model (mixed into the handle, next to
    :class:`pact.hooks.calls.CallHooks`, whose per-thread ``_call`` they write to)."""

    def _validate_vision(self, stage: StageConfig) -> None:
        """Find the tower (refusing an unsupported model) before any hook is installed."""
        self.tower = tower_for(self.model, stage.tower_layer)
        self.vision_pipeline = Pipeline(stage)

    def _install_vision(self) -> list:
        tower = self.tower
        return [
            tower.attention.register_forward_pre_hook(self._capture_tower, with_kwargs=True),
            tower.projector.register_forward_pre_hook(self._reduce_features),
            *tower.install(self),
        ]

    def record_image_arguments(self, arguments: dict) -> None:
        """What ``get_image_features`` was called with (any-resolution LLaVA's crops)."""
        self._vision_state().image_arguments = arguments

    def record_grid(self, module, args, kwargs) -> None:
        """Qwen-VL: the image grid the tower runs on (a pre-hook on the tower)."""
        state = self._vision_state()
        state.grid_thw = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)

    @staticmethod
    def check_vision_call(kwargs: dict, settings=None) -> None:
        """Refuse, before the tower runs, what a vision stage does not reduce (``settings``:
        the generation config of a ``generate`` call)."""
        if kwargs.get("pixel_values_videos") is not None:
            raise ValueError(
                "a vision stage (place: vision) reduces images; this call passes "
                "pixel_values_videos (use a decoder stage for videos)"
            )
        chunk = kwargs.get("prefill_chunk_size", getattr(settings, "prefill_chunk_size", None))
        if chunk:
            raise ValueError(
                "prefill_chunk_size splits the prompt across forwards, but a vision stage "
                "reduces all of an image's tokens in one; generate without it"
            )

    def _vision_state(self) -> Call:
        """Where the vision hooks write: the running forward, or, when the tower runs before
        it (``generate`` encodes the images first), a per-thread call the next forward of the
        model takes its plan from."""
        if self._call is not None:
            return self._call
        pending = getattr(self._local, "vision_pending", None)
        if pending is None:
            pending = self._local.vision_pending = Call(None, None, None)
        return pending

    def take_pending_plan(self) -> VisionPlan | None:
        """The plan made by a tower run outside a forward, for this thread's next forward."""
        pending = getattr(self._local, "vision_pending", None)
        self._local.vision_pending = None
        return None if pending is None else pending.vision_plan

    def _capture_tower(self, module, args, kwargs):
        call = self._vision_state()
        with torch.no_grad():
            call.tower = self.tower.capture(args, kwargs)
        return None

    def _reduce_features(self, module, args):
        call = self._vision_state()
        if call.tower is None:
            raise RuntimeError(
                f"pact: the tower's layer {self.tower.layer} did not run before the projector"
            )
        features = args[0]
        with torch.no_grad():
            rows = stack_images(self.tower.tokens(features, call))
            inputs = LayerInputs(
                rows.hidden,
                rows.padding_mask.clone(),
                rows.qk,
                padding_mask=rows.padding_mask,
                tower=rows.tower,
            )
            reduction = self.vision_pipeline(inputs)
            features = write_back(features, reduction, rows)
        call.vision_plan = plan_from(reduction, rows)
        call.tower = None
        return (features, *args[1:])


TOWERS = {"llava": LlavaTower, "anyres": AnyresTower, "qwen": QwenTower}
"""The adapter of each tower layout the family table names (``Family.tower``)."""


def tower_for(model, tower_layer: int | None) -> LlavaTower | QwenTower:
    """The adapter of ``model``'s tower; an unsupported model is refused, naming the
    families whose towers pact reads."""
    family = families.VLM_FAMILIES.get(getattr(model.config, "model_type", None))
    if family is None or family.tower is None:
        supported = ", ".join(f.label for f in families.VLM_FAMILIES.values() if f.tower)
        raise ValueError(
            f"a vision stage (place: vision) reads the vision tower's attention, which pact "
            f"finds in {supported}; not in {type(model).__name__}"
        )
    return TOWERS[family.tower](model, tower_layer)
