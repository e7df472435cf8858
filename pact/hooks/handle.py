"""``pact.attach``: reduce visual tokens inside an unmodified transformers model.

Forward pre-hooks on the decoder layers from the first stage on run the pipeline at each
stage's layer and hand every later layer the reduced sequence's position embeddings and a
:class:`ReducedAttention`; the text model's attention implementation is swapped for pact's
wrapper of the same implementation. ``detach`` undoes all of it.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from pact.config import PactConfig
from pact.hooks import caches, families
from pact.hooks.attention import pact_name
from pact.hooks.calls import CallHooks
from pact.hooks.checks import check_call, checked_token_ids
from pact.hooks.state import Call
from pact.hooks.stats import HandleStats, decoder_shape
from pact.hooks.vision import PlannedStage, VisionHooks
from pact.pipeline import Pipeline

_HANDLE_ATTRIBUTE = "_pact_handle"


class _Marker:
    """The model's pointer to its handle; a deep copy of the model points to the copy's."""

    def __init__(self, handle: PactHandle):
        self._ref = weakref.ref(handle)

    def __call__(self) -> PactHandle | None:
        return self._ref()

    def __deepcopy__(self, memo: dict) -> _Marker:
        handle = self._ref()
        return _Marker(copy.deepcopy(handle, memo)) if handle is not None else self


def handle_of(model: nn.Module) -> PactHandle | None:
    """The handle attached to ``model`` (a deep copy of an attached model has its own), or
    None when pact is not attached."""
    marker = getattr(model, _HANDLE_ATTRIBUTE, None)
    handle = marker() if marker is not None else None
    return handle if handle is not None and handle.attached else None


class PactHandle(CallHooks, VisionHooks):
    """A model with pact attached. Use :func:`attach` to make one."""

    def __init__(self, model: nn.Module, config: PactConfig, visual_token_ids=None):
        self.model = model
        self.config = config
        self.decoder = families.find_decoder(model)
        self.pipelines = {
            stage.layer: PlannedStage(stage) if stage.place == "vision" else Pipeline(stage)
            for stage in config.stages
        }
        self.vision_stage = next((s for s in config.stages if s.place == "vision"), None)
        self.token_ids = (
            checked_token_ids(visual_token_ids, model)
            if visual_token_ids is not None
            else families.visual_token_ids(model)
        )
        self.original_attention = self.decoder.config._attn_implementation
        self.stats = HandleStats(decoder=decoder_shape(self.decoder))
        self.last_assignments: list[Tensor] = []
        """Per stage of the last reducing forward, ``[B, N]`` over its N original tokens:
        the original slot of the token each one ended up in after that stage (itself when
        kept alone or not visual, its cluster's center when merged or retrieved), -1 when
        removed. Replaced by each reducing forward, emptied by :meth:`detach`."""
        self._sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        # Per-call state is per thread: one attached model may serve forwards from several.
        self._local = threading.local()
        self._lock = threading.Lock()
        self._hooks: list[Any] = []
        self._validate()
        self._install()

    # ----------------------------------------------------------------- attach time
    def _validate(self) -> None:
        if handle_of(self.model) is not None:
            raise ValueError("pact is already attached to this model; detach it first")
        families.check_family(self.model)
        n_layers = len(self.decoder.layers)
        for stage in self.config.stages:
            if stage.layer >= n_layers:
                raise ValueError(
                    f"stages: layer {stage.layer} is out of range; this decoder has "
                    f"{n_layers} layers (0..{n_layers - 1})"
                )
        if not self.config.stages:
            return
        first = self.config.stages[0].layer
        for index in range(first, n_layers):
            families.check_layer(self.decoder.layers[index], index)
        families.check_injection(self.model, first)
        if self.vision_stage is not None:
            self._validate_vision(self.vision_stage)
        self._validate_needs()
        self._check_implementation(self.original_attention)
        self._attention_name = pact_name(self.original_attention)

    def _check_implementation(self, implementation: str) -> None:
        """What an attention implementation cannot do with this config and decoder."""
        for stage, pipeline in zip(self.config.stages, self.pipelines.values(), strict=True):
            if pipeline.needs_attention_scores and "flash" in implementation:
                raise ValueError(
                    f"scorer {stage.scorer.name!r} needs attention scores, which "
                    f"{implementation} never forms; load the model with "
                    "attn_implementation='sdpa' or 'eager', or use the attention-free 'euti'"
                )
        if "flash" in implementation and self._windowed:
            raise ValueError(
                f"{implementation} applies sliding windows in cache slots, but pact measures "
                "them in original positions (reduction removes slots); use "
                "attn_implementation='sdpa' or 'eager' with sliding-window layers"
            )

    @property
    def _windowed(self) -> bool:
        """Whether a layer from the first stage on has a sliding window."""
        first = self.config.stages[0].layer
        return any(
            families.sliding_window(layer.self_attn) for layer in self.decoder.layers[first:]
        )

    def _validate_needs(self) -> None:
        for stage in self.config.stages:
            if stage.position_mode != "keep" and families.per_layer_rope(self.decoder):
                raise ValueError(
                    f"position_mode {stage.position_mode!r} recomputes rotary embeddings, but "
                    f"{type(self.decoder).__name__} computes one per layer type (local and "
                    "global layers); use position_mode 'keep'"
                )
            if stage.position_mode != "keep" and not hasattr(self.decoder, "rotary_emb"):
                raise ValueError(
                    f"position_mode {stage.position_mode!r} recomputes rotary embeddings, but "
                    f"{type(self.decoder).__name__} has no rotary_emb; use position_mode 'keep'"
                )

    def _install(self) -> None:
        object.__setattr__(self.model, _HANDLE_ATTRIBUTE, _Marker(self))
        if not self.config.stages:
            return
        self._window_positions = self._windowed
        self._per_layer_rope = families.per_layer_rope(self.decoder)
        self.decoder.config._attn_implementation = self._attention_name
        # generate runs the vision tower before the model's forward: its cache is checked
        # here, before that work.
        object.__setattr__(self.model, "generate", self._generate)
        hooks = [
            self.model.register_forward_pre_hook(self._before_model, with_kwargs=True),
            self.model.register_forward_hook(self._after_model, always_call=True),
        ]
        hooks.append(self.decoder.register_forward_hook(self._after_decoder))
        rotary = getattr(self.decoder, "rotary_emb", None)
        if rotary is not None:
            hooks.append(rotary.register_forward_pre_hook(self._capture_rope, with_kwargs=True))
        first = self.config.stages[0].layer
        for index in range(first, len(self.decoder.layers)):
            layer = self.decoder.layers[index]
            hook = partial(self._before_layer, index)
            hooks.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        if self.vision_stage is not None:
            hooks += self._install_vision()
        self._hooks = hooks

    @property
    def last_assignment(self) -> Tensor | None:
        """``[B, N]`` after the last stage of the last reducing forward (see
        :attr:`last_assignments`); None before any."""
        return self.last_assignments[-1] if self.last_assignments else None

    @property
    def attached(self) -> bool:
        """Whether this handle's hooks are still on the model."""
        marker = getattr(self.model, _HANDLE_ATTRIBUTE, None)
        return marker is not None and marker() is self

    def detach(self) -> None:
        """Remove every hook and restore the attention implementation.

        Idempotent, and a no-op once detached (so a stale handle never undoes a newer one).
        Caches that hold reduced keys are sealed: continuing one raises an error, since the
        stock model would misread it.
        """
        if not self.attached:
            return
        try:
            for hook in self._hooks:
                hook.remove()
        finally:
            self._hooks = []
            if vars(self.model).get("generate") == self._generate:
                del self.model.generate
            # An implementation the user chose while attached stays (it was never wrapped).
            if self.config.stages and self.decoder.config._attn_implementation == getattr(
                self, "_attention_name", None
            ):
                self.decoder.config._attn_implementation = self.original_attention
            object.__delattr__(self.model, _HANDLE_ATTRIBUTE)
            for cache, session in list(self._sessions.items()):
                caches.release(cache, session)
            self._sessions = weakref.WeakKeyDictionary()
            self._local = threading.local()
            self.last_assignments = []

    def __deepcopy__(self, memo: dict) -> PactHandle:
        """A deep copy of an attached model (``copy.deepcopy(model)``) gets its own handle:
        the copied hooks call it, :func:`handle_of` finds it, and its ``detach`` frees the
        copy alone. Caches and per-call state are not copied."""
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        fresh = {
            "_sessions": weakref.WeakKeyDictionary(),
            "_local": threading.local(),
            "_lock": threading.Lock(),
        }
        for key, value in self.__dict__.items():
            clone.__dict__[key] = fresh[key] if key in fresh else copy.deepcopy(value, memo)
        return clone

    def __enter__(self) -> PactHandle:
        return self

    def __exit__(self, *exc_info) -> None:
        self.detach()

    def set_visual_mask(self, mask: Tensor) -> None:
        """Mark the visual tokens of the next forward (``[batch, tokens]`` bool).

        Needed for decoders without image/video token ids (the generic path); used once, by
        the next forward of the model in the thread that called this.
        """
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
            raise ValueError("set_visual_mask takes a [batch, tokens] bool tensor")
        self._pending_mask = mask

    # ------------------------------------------------------------------- call time
    def _before_model(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        input_ids = input_ids if isinstance(input_ids, Tensor) else None
        mask, self._pending_mask = self._pending_mask, None
        self._call = None
        check_call(input_ids, kwargs.get("inputs_embeds"), mask, bool(self.token_ids))
        if self.vision_stage is not None:
            self.check_vision_call(kwargs)
        caches.check_supported(caches.cache_of(kwargs))
        self._follow_attention_choice()
        self._call = Call(
            input_ids=input_ids, attention_mask=kwargs.get("attention_mask"), visual_mask=mask
        )
        if self.vision_stage is not None:
            self._call.vision_plan = self.take_pending_plan()
        return None

    def _generate(self, *args, **kwargs):
        """The model's own ``generate``, after refusing a cache pact cannot follow."""
        settings = kwargs.get("generation_config") or self.model.generation_config
        implementation = kwargs.get(
            "cache_implementation", getattr(settings, "cache_implementation", None)
        )
        caches.check_implementation(implementation)
        caches.check_supported(caches.cache_of(kwargs))
        if self.vision_stage is not None:
            self.check_vision_call(kwargs, settings)
        return type(self.model).generate(self.model, *args, **kwargs)

    def _follow_attention_choice(self) -> None:
        """Wrap the implementation the user set while attached (set_attn_implementation)."""
        chosen = self.decoder.config._attn_implementation
        if chosen == self._attention_name:
            return
        with self._lock:
            if chosen.startswith("pact_"):
                raise ValueError(
                    f"the decoder runs {chosen!r}, another pact wrapper: set a stock "
                    "implementation ('eager', 'sdpa', 'flash_attention_2')"
                )
            self._check_implementation(chosen)
            self._attention_name = pact_name(chosen)
            self.original_attention = chosen
            self.decoder.config._attn_implementation = self._attention_name


def attach(
    model: nn.Module,
    config: PactConfig | str | dict | Any = "pact",
    *,
    overrides: tuple[str, ...] | list[str] = (),
    visual_token_ids: list[int] | None = None,
) -> PactHandle:
    """Make ``model`` reduce its visual tokens as ``config`` says; returns the handle.

    ``config``: a :class:`PactConfig`, preset name, YAML/JSON path or mapping; ``overrides``
    as in :meth:`PactConfig.load`. ``visual_token_ids`` overrides the ids read from the
    model's config. Everything is checked here, before any forward.
    """
    return PactHandle(model, PactConfig.load(config, overrides), visual_token_ids)


@contextmanager
def attached(model: nn.Module, config: Any = "pact", **kwargs) -> Iterator[PactHandle]:
    """``with pact.attached(model, "pact") as handle:`` ... detached on exit, even on error."""
    handle = attach(model, config, **kwargs)
    try:
        yield handle
    finally:
        handle.detach()
