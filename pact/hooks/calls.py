"""Call-time hooks of :class:`pact.hooks.handle.PactHandle`: what runs inside a forward.

:class:`CallHooks` is the half of the handle that the model's hooks call: it builds each
call's view of the sequence, runs the pipeline at a stage's layer and hands every later
layer the reduced sequence. The handle (:mod:`pact.hooks.handle`) owns what it reads:
``model``, ``decoder``, ``config``, ``pipelines``, ``token_ids``, ``stats``,
``original_attention``, ``_sessions``, ``_lock``, ``_local``, ``_window_positions`` and
``_per_layer_rope``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pact.hooks import caches, families
from pact.hooks.attention import KWARG, ReducedAttention
from pact.hooks.state import (
    Call,
    Session,
    View,
    append_keys,
    compose_assignment,
    gather_tokens,
    restore_length,
    rope_to_pipeline,
)
from pact.hooks.views import reduced_view, shifted_view, view_to
from pact.hooks.vision import PlannedStage
from pact.tensors import LayerInputs


def _layer_device(layer: nn.Module) -> torch.device:
    return layer.input_layernorm.weight.device


class _PerThread:
    """An attribute kept per thread (in the handle's ``_local``), None until set."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, handle: Any, owner: type | None = None) -> Any:
        return self if handle is None else getattr(handle._local, self.name, None)

    def __set__(self, handle: Any, value: Any) -> None:
        setattr(handle._local, self.name, value)


class CallHooks:
    """The forward hooks of an attached model (mixed into the handle)."""

    _call = _PerThread()
    """The forward running in this thread (None outside one)."""
    _pending_mask = _PerThread()
    """The mask from ``set_visual_mask`` for this thread's next forward."""

    def _after_model(self, module, args, output):
        try:
            # On an exception torch calls this hook with no output: nothing ran to count.
            if self._call is not None and self._call.stats and output is not None:
                with self._lock:
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
        own = kwargs.get("position_embeddings")
        if index in self.pipelines:
            cache = caches.cache_of(kwargs)
            hidden = self._run_stage(index, layer, call, hidden, cache, own)
        view = call.view
        flash = "flash" in self.original_attention
        kwargs.update(
            position_embeddings=self._embeddings(view, own),
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
        cache = caches.cache_of(kwargs)
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
        with self._lock:
            session = self._sessions.get(cache)
            if session is None:
                session = self._sessions[cache] = Session()
                first = self.config.stages[0].layer
                caches.keep_whole_windows(cache, first)
                if first == 0:
                    caches.report_full_length(cache, session)
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

    def _embeddings(self, view: View, own: tuple[Tensor, Tensor] | None):
        """The cos/sin a layer gets: the view's, or (decoders that hand each layer type its
        own rotary embedding, e.g. Gemma-3's local and global layers) the layer's own at the
        view's original slots."""
        if not self._per_layer_rope or own is None:
            return view.position_embeddings
        if view.slots is None:
            return own
        slots = view.slots
        return gather_tokens(own[0], slots, 1), gather_tokens(own[1], slots, 1)

    def _run_stage(
        self, index: int, layer: nn.Module, call: Call, hidden: Tensor, cache, own
    ) -> Tensor:
        pipeline = self.pipelines[index]
        stage = pipeline.stage
        device = _layer_device(layer)
        hidden = hidden.to(device)
        view = view_to(call.view, device)
        session = call.session
        previous = session.stages.get(index)
        caches.check_length(cache, index, 0 if previous is None else previous.valid.shape[1])
        positions = self._original_indices(call, view)
        if bool(view.visual.any()):
            session.reduced = True
            qk = families.layer_projections(layer, hidden, self._embeddings(view, own))
            positions = None
            if view.rope_positions is not None:
                positions = rope_to_pipeline(view.rope_positions.to(device), hidden.shape[0])
            inputs = LayerInputs(hidden, view.visual, qk, positions, view.sizes, view.valid)
            if isinstance(pipeline, PlannedStage):
                reduction = pipeline.apply(inputs, call.vision_plan)
            else:
                reduction = pipeline(inputs)
            call.stats.append(reduction.stats)
            previous_assignment = call.assignments[-1] if call.assignments else None
            call.assignments.append(
                compose_assignment(previous_assignment, view, reduction.assignment, call.length)
            )
            rotary = getattr(self.decoder, "rotary_emb", None)
            view, shift = reduced_view(view, reduction, stage.position_mode, rotary)
            hidden = reduction.hidden
            positions = self._original_indices(call, view)
            keys = append_keys(previous, view.valid, view.sizes, positions)
            if shift is not None:
                keys.position_shift = shift
        else:
            if previous is not None and previous.position_shift is not None:
                view = shifted_view(view, previous.position_shift, hidden, self.decoder.rotary_emb)
            keys = append_keys(previous, view.valid, view.sizes, positions)
        session.stages[index] = keys
        log_sizes = torch.log(keys.sizes) if stage.proportional_attention else None
        view.attention = ReducedAttention(keys.valid, log_sizes, *_padding_layout(keys.valid))
        if positions is not None:
            view.attention.key_positions, view.attention.query_positions = keys.positions, positions
            view.attention.span = int(positions.max() - keys.positions.min())
        call.view = view
        return hidden

    def _original_indices(self, call: Call, view: View) -> Tensor | None:
        """``[B, M]`` index in the unreduced cache of each token of this call's view (what
        sliding windows are measured in); None when no hooked layer has a window."""
        if not self._window_positions:
            return None
        start = call.session.full_length - call.length
        device = view.valid.device
        if view.slots is None:
            slots = torch.arange(call.length, device=device).expand(view.valid.shape[0], -1)
        else:
            slots = view.slots.to(device)
        return slots + start


def _padding_layout(valid: Tensor) -> tuple[bool, bool]:
    """(any key invalid, invalid keys only trail each row), with one host sync."""
    trailing = (valid[:, 1:] <= valid[:, :-1]).all()
    any_padding, trailing_only = torch.stack([~valid.all(), trailing]).tolist()
    return any_padding, trailing_only
