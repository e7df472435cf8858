"""``pact.attach``: reduce visual tokens inside an unmodified transformers model.

Forward pre-hooks on the decoder layers from the first stage on run the pipeline at each
stage's layer and hand every later layer the reduced sequence's position embeddings and a
:class:`ReducedAttention`; the text model's attention implementation is swapped for pact's
wrapper of the same implementation. ``detach`` undoes all of it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from pact.config import PactConfig
from pact.hooks import families
from pact.hooks.attention import KWARG, ReducedAttention, pact_name
from pact.hooks.state import (
    Call,
    Session,
    View,
    append_keys,
    compose_assignment,
    restore_length,
    rope_to_pipeline,
)
from pact.hooks.stats import HandleStats, decoder_shape
from pact.hooks.views import reduced_view, shifted_view, view_to
from pact.pipeline import Pipeline
from pact.tensors import LayerInputs

_HANDLE_ATTRIBUTE = "_pact_handle"


def _cache_of(kwargs: dict[str, Any]) -> Any:
    # transformers 5.x renamed the layers' `past_key_values` argument to `cache`.
    return kwargs.get("cache", kwargs.get("past_key_values"))


def _layer_device(layer: nn.Module) -> torch.device:
    return layer.input_layernorm.weight.device


class PactHandle:
    """A model with pact attached. Use :func:`attach` to make one."""

    def __init__(self, model: nn.Module, config: PactConfig, visual_token_ids=None):
        self.model = model
        self.config = config
        self.decoder = families.find_decoder(model)
        self.pipelines = {stage.layer: Pipeline(stage) for stage in config.stages}
        self.token_ids = (
            list(visual_token_ids)
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
        self._call: Call | None = None
        self._pending_mask: Tensor | None = None
        self._hooks: list[Any] = []
        self._validate()
        self._install()

    # ----------------------------------------------------------------- attach time
    def _validate(self) -> None:
        if getattr(self.model, _HANDLE_ATTRIBUTE, None) is not None:
            raise ValueError("pact is already attached to this model; detach it first")
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
        self._validate_needs()
        self._attention_name = pact_name(self.original_attention)

    def _validate_needs(self) -> None:
        for stage, pipeline in zip(self.config.stages, self.pipelines.values(), strict=True):
            if pipeline.needs_attention_scores and "flash" in self.original_attention:
                raise ValueError(
                    f"scorer {stage.scorer.name!r} needs attention scores, which "
                    f"{self.original_attention} never forms; load the model with "
                    "attn_implementation='sdpa' or 'eager', or use the attention-free 'euti'"
                )
            if stage.position_mode != "keep" and not hasattr(self.decoder, "rotary_emb"):
                raise ValueError(
                    f"position_mode {stage.position_mode!r} recomputes rotary embeddings, but "
                    f"{type(self.decoder).__name__} has no rotary_emb; use position_mode 'keep'"
                )

    def _install(self) -> None:
        object.__setattr__(self.model, _HANDLE_ATTRIBUTE, weakref.ref(self))
        if not self.config.stages:
            return
        self.decoder.config._attn_implementation = self._attention_name
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
        """
        if not self.attached:
            return
        try:
            for hook in self._hooks:
                hook.remove()
        finally:
            self._hooks = []
            if self.config.stages:
                self.decoder.config._attn_implementation = self.original_attention
            object.__delattr__(self.model, _HANDLE_ATTRIBUTE)
            self._sessions = weakref.WeakKeyDictionary()
            self._call = None
            self._pending_mask = None
            self.last_assignments = []

    def __enter__(self) -> PactHandle:
        return self

    def __exit__(self, *exc_info) -> None:
        self.detach()

    def set_visual_mask(self, mask: Tensor) -> None:
        """Mark the visual tokens of the next forward (``[batch, tokens]`` bool).

        Needed for decoders without image/video token ids (the generic path); used once.
        """
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
            raise ValueError("set_visual_mask takes a [batch, tokens] bool tensor")
        self._pending_mask = mask

    # ------------------------------------------------------------------- call time
    def _before_model(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        self._call = Call(
            input_ids=input_ids if isinstance(input_ids, Tensor) else None,
            attention_mask=kwargs.get("attention_mask"),
            visual_mask=self._pending_mask,
        )
        return None

    def _after_model(self, module, args, output):
        try:
            # On an exception torch calls this hook with no output: nothing ran to count.
            if self._call is not None and self._call.stats and output is not None:
                self.stats.record(self._call.stats)
                self.last_assignments = self._call.assignments
        finally:
            self._call = None
            self._pending_mask = None
        return None

    def _after_decoder(self, module, args, output):
        """Give the decoder's output the length of its input (see :func:`restore_length`)."""
        call = self._call
        if call is None or call.view is None or call.view.slots is None:
            return None
        view = call.view
        hidden = output.last_hidden_state
        slots, kept = view.slots.to(hidden.device), view.slot_mask.to(hidden.device)
        output.last_hidden_state = restore_length(hidden, slots, kept, call.length)
        return output

    def _capture_rope(self, module, args, kwargs):
        if self._call is not None:
            self._call.rope_positions = args[1] if len(args) > 1 else kwargs.get("position_ids")
        return None

    def _before_layer(self, index: int, layer: nn.Module, args, kwargs):
        call = self._call
        if call is None:
            raise RuntimeError(
                "pact: a hooked decoder layer ran outside a forward of the attached model "
                f"({type(self.model).__name__}); call that model (or generate) instead"
            )
        hidden = args[0] if args else kwargs["hidden_states"]
        if call.view is None:
            call.view = self._initial_view(call, hidden, kwargs)
        if index in self.pipelines:
            hidden = self._run_stage(index, layer, call, hidden, _cache_of(kwargs))
        view = call.view
        flash = "flash" in self.original_attention
        kwargs.update(
            position_embeddings=view.position_embeddings,
            position_ids=None if flash else view.position_ids,
            attention_mask=None,
        )
        kwargs[KWARG] = view.attention
        if args:
            args = (hidden, *args[1:])
        else:
            kwargs["hidden_states"] = hidden
        return args, kwargs

    def _initial_view(self, call: Call, hidden: Tensor, kwargs: dict) -> View:
        batch, tokens = hidden.shape[:2]
        cache = _cache_of(kwargs)
        call.session = Session() if cache is None else self._session(cache)
        valid = torch.ones(batch, tokens, dtype=torch.bool, device=hidden.device)
        mask = call.attention_mask
        if isinstance(mask, Tensor) and mask.dim() == 2:
            valid = mask[:, -tokens:].to(device=hidden.device, dtype=torch.bool)
        view = View(
            position_embeddings=kwargs["position_embeddings"],
            position_ids=kwargs.get("position_ids"),
            rope_positions=call.rope_positions,
            visual=self._visual_mask(call, batch, tokens, hidden.device),
            valid=valid,
            sizes=torch.ones(batch, tokens, dtype=torch.float32, device=hidden.device),
        )
        call.session.full_length += tokens
        call.length = tokens
        return view

    def _session(self, cache: Any) -> Session:
        session = self._sessions.get(cache)
        if session is None:
            session = self._sessions[cache] = Session()
            if self.config.stages[0].layer == 0:
                _report_full_length(cache, session)
        return session

    def _visual_mask(self, call: Call, batch: int, tokens: int, device) -> Tensor:
        if call.visual_mask is not None:
            if tuple(call.visual_mask.shape) != (batch, tokens):
                raise ValueError(
                    f"set_visual_mask: mask shape {tuple(call.visual_mask.shape)} does not match "
                    f"the sequence ({batch}, {tokens})"
                )
            return call.visual_mask.to(device)
        if self.token_ids:
            ids = call.input_ids
            if ids is None or ids.shape[-1] != tokens:
                raise ValueError(
                    "pact finds visual tokens from input_ids; this call gave "
                    f"{'none' if ids is None else tuple(ids.shape)} for {tokens} tokens: pass "
                    "input_ids, or mark them with handle.set_visual_mask"
                )
            return torch.isin(ids, torch.tensor(self.token_ids, device=ids.device)).to(device)
        if call.session is not None and call.session.full_length == 0 and tokens > 1:
            raise ValueError(
                f"{type(self.model).__name__} has no image/video token ids: call "
                "handle.set_visual_mask(mask) before each forward that starts a sequence"
            )
        return torch.zeros(batch, tokens, dtype=torch.bool, device=device)

    def _run_stage(self, index: int, layer: nn.Module, call: Call, hidden: Tensor, cache) -> Tensor:
        pipeline = self.pipelines[index]
        stage = pipeline.stage
        device = _layer_device(layer)
        hidden = hidden.to(device)
        view = view_to(call.view, device)
        session = call.session
        previous = session.stages.get(index)
        _check_cache(cache, index, previous)
        if bool(view.visual.any()):
            qk = families.layer_projections(layer, hidden, view.position_embeddings)
            positions = None
            if view.rope_positions is not None:
                positions = rope_to_pipeline(view.rope_positions.to(device), hidden.shape[0])
            inputs = LayerInputs(hidden, view.visual, qk, positions, view.sizes, view.valid)
            reduction = pipeline(inputs)
            call.stats.append(reduction.stats)
            previous_assignment = call.assignments[-1] if call.assignments else None
            call.assignments.append(
                compose_assignment(previous_assignment, view, reduction.assignment, call.length)
            )
            rotary = getattr(self.decoder, "rotary_emb", None)
            view, shift = reduced_view(view, reduction, stage.position_mode, rotary)
            hidden = reduction.hidden
            keys = append_keys(previous, view.valid, view.sizes)
            if shift is not None:
                keys.position_shift = shift
        else:
            if previous is not None and previous.position_shift is not None:
                view = shifted_view(view, previous.position_shift, hidden, self.decoder.rotary_emb)
            keys = append_keys(previous, view.valid, view.sizes)
        session.stages[index] = keys
        log_sizes = torch.log(keys.sizes) if stage.proportional_attention else None
        view.attention = ReducedAttention(keys.valid, log_sizes, *_padding_layout(keys.valid))
        call.view = view
        return hidden


def _padding_layout(valid: Tensor) -> tuple[bool, bool]:
    """(any key invalid, invalid keys only trail each row), with one host sync."""
    trailing = (valid[:, 1:] <= valid[:, :-1]).all()
    any_padding, trailing_only = torch.stack([~valid.all(), trailing]).tolist()
    return any_padding, trailing_only


def _check_cache(cache: Any, index: int, previous) -> None:
    """The cache must hold what pact recorded: a cropped or foreign cache is an error."""
    if cache is None or not hasattr(cache, "layers") or index >= len(cache.layers):
        return
    expected = 0 if previous is None else previous.valid.shape[1]
    held = cache.layers[index].get_seq_length()
    if held != expected:
        raise RuntimeError(
            f"the KV cache of layer {index} holds {held} tokens but pact recorded {expected}: "
            "the cache was changed outside pact (cropped, or filled by another model); start a "
            "new cache"
        )


def _report_full_length(cache: Any, session: Session) -> None:
    """Make ``cache.get_seq_length()`` report the original length when layer 0 is reduced.

    Models derive the positions of new tokens from layer 0's cache length; a stage at
    layer 0 shortens it, so this cache (and only it) answers with the unreduced length.
    """
    stock = cache.get_seq_length

    def get_seq_length(layer_idx: int = 0, *args, **kwargs) -> int:
        if layer_idx == 0:
            return session.full_length
        return stock(layer_idx, *args, **kwargs)

    cache.get_seq_length = get_seq_length


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
