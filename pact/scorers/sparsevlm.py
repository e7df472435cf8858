"""SparseVLM: visual tokens ranked by the attention of text raters (Zhang et al., "SparseVLM:
Visual Token Sparsification for Efficient Vision-Language Model Inference", ICML 2025,
arXiv 2410.04417, https://github.com/Gumpest/SparseVLMs).

Raters are the text tokens relevant to the image: the relevance of text token ``j`` is the
mean over visual tokens ``i`` of ``softmax_j(v_i . t_j)`` (a softmax over the text tokens of
unscaled dot products of hidden states), and the raters are the text tokens whose relevance
exceeds the mean relevance. A visual token's score is the causal softmax attention
(all keys, heads averaged) that the raters pay it, averaged over the raters; the best are
kept. The paper's keep count is adaptive: ``floor(rank_scale x (L_v - rank(P)))`` tokens are
deleted, ``P`` the raters x visual tokens block of that attention matrix and ``L_v`` the
visual tokens entering the stage (``rank_scale`` set; the stage's ``keep_ratio`` otherwise,
as the official release's fixed per-layer counts). The deleted tokens are recycled by the
stage's ``recycling`` step (the preset ``sparsevlm``: 30% + 1, clustered by ``dpc_knn``).

pact's reading of it: a stage acts at the input of its layer, so the official "prune the
output of layer 2" is pact's layer 3. Raters are chosen, per stage, from the hidden states
entering the stage's layer (the official code chooses them once, from the decoder's input
embeddings, which a stage does not see). Scores come from the stage layer's post-RoPE
queries and keys, like pact's FastV. The text is each row's real tokens after its last
visual token (official: batch size 1, the prompt after the image); where no text token
stands out (one text token, or all equally relevant) all of them rate, and a row whose
image ends it is rated by its last real token. The rank is ``torch.linalg.matrix_rank`` of
``P`` in float32 with its default tolerance: singular values above ``sigma_max x max(R, L_v)
x eps(float32)`` count, numpy's rule. Merged recycled tokens stay at their center's position
(the official code inserts them after the kept visual tokens with truncated position ids).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import Field

from pact.lazy import lazy_module
from pact.registry import register_scorer
from pact.scorers.base import Scorer, ScorerConfig
from pact.tensors import Budget, LayerInputs

if TYPE_CHECKING:
    from torch import Tensor

torch = lazy_module("torch")


class SparseVlmConfig(ScorerConfig):
    """Settings of SparseVLM's scorer."""

    rank_scale: float | None = Field(None, gt=0.0, le=1.0)
    """The paper's lambda: each stage deletes ``floor(rank_scale x (L_v - rank(P)))`` of its
    ``L_v`` visual tokens and the stage's ``keep_ratio``/``keep_tokens`` must be unset; None:
    the stage's ``keep_ratio`` or ``keep_tokens`` decide (the official release's counts)."""

    def keep_count_setting(self) -> str | None:
        return None if self.rank_scale is None else "rank_scale"


def rater_slots(hidden: Tensor, visual: Tensor, text: Tensor) -> Tensor:
    """The slots among ``text`` (one row's text slots) whose relevance to the image beats
    the mean; all of ``text`` when none does. ``hidden`` ``[N, D]``, ``visual`` slots."""
    similarity = hidden[visual].float() @ hidden[text].float().T  # [V, T], unscaled
    relevance = torch.softmax(similarity, dim=1).mean(dim=0)
    above = relevance > relevance.mean()
    return text[above] if bool(above.any()) else text


def row_raters(inputs: LayerInputs, row: int) -> Tensor:
    """Rater slots of ``row``: relevant text tokens after its last visual token, or its last
    real token when nothing follows the image (empty when the row has no visual token)."""
    assert inputs.padding_mask is not None
    visual = torch.nonzero(inputs.real_visual_mask[row]).flatten()
    real = torch.nonzero(inputs.padding_mask[row]).flatten()
    if not visual.numel():
        return visual
    text = real[real > visual.max()]
    if not text.numel():
        return real[-1:]
    return rater_slots(inputs.hidden[row], visual, text)


def rater_attention(queries: Tensor, keys: Tensor, padding: Tensor, raters: Tensor) -> Tensor:
    """``[R, N]`` causal softmax attention of the ``raters``' queries over all real keys of
    one row, averaged over heads. ``queries`` ``[Hq, N, d]``, ``keys`` ``[Hkv, N, d]``."""
    q_heads, tokens, head_dim = queries.shape
    kv_heads = keys.shape[0]
    grouped = queries[:, raters].float().view(kv_heads, q_heads // kv_heads, -1, head_dim)
    logits = torch.einsum("kgrd,knd->kgrn", grouped, keys.float()) / math.sqrt(head_dim)
    index = torch.arange(tokens, device=queries.device)
    allowed = (index[None, :] <= raters[:, None]) & padding[None, :]
    logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, dim=-1).mean(dim=(0, 1))


def deleted_count(block: Tensor, rank_scale: float) -> int:
    """``floor(rank_scale x (L_v - rank(P)))`` for ``P`` = ``block`` ``[R, L_v]``."""
    visual = block.shape[1]
    rank = int(torch.linalg.matrix_rank(block.float())) if block.numel() else 0
    return math.floor(rank_scale * (visual - rank) + 1e-9)


@register_scorer("sparsevlm")
class SparseVlm(Scorer):
    """The attention SparseVLM's text raters pay each visual token (see the module)."""

    Config = SparseVlmConfig
    needs_attention_scores = True

    def _rows(self, inputs: LayerInputs):
        """``(row, [R, N] rater attention)`` for each row with visual tokens."""
        if inputs.qk is None:
            raise ValueError("scorer 'sparsevlm' needs the layer's queries and keys (inputs.qk)")
        queries, keys = inputs.qk.get(rotary=True)
        assert inputs.padding_mask is not None
        for row in range(inputs.batch_size):
            raters = row_raters(inputs, row)
            if raters.numel():
                yield (
                    row,
                    rater_attention(queries[row], keys[row], inputs.padding_mask[row], raters),
                )

    def score(self, inputs: LayerInputs) -> Tensor:
        scores = torch.zeros(inputs.hidden.shape[:2], device=inputs.hidden.device)
        for row, attention in self._rows(inputs):
            scores[row] = attention.mean(dim=0)
        return scores

    def budget_for(self, inputs: LayerInputs, budget: Budget) -> Budget:
        """With ``rank_scale``: each group keeps ``L_v`` minus the rank-based deletions."""
        return self.budget_and_scores(inputs, budget)[0]

    def budget_and_scores(self, inputs: LayerInputs, budget: Budget) -> tuple[Budget, Tensor]:
        """The count (with ``rank_scale``) and the scores from one pass of rater attention."""
        scores = torch.zeros(inputs.hidden.shape[:2], device=inputs.hidden.device)
        scale = self.config.rank_scale
        counts = [list(row) for row in budget.counts]
        for row, attention in self._rows(inputs):
            scores[row] = attention.mean(dim=0)
            if scale is None:
                continue
            for group, slots in enumerate(budget.members(row)):
                block = attention[:, slots]
                counts[row][group] = slots.numel() - deleted_count(block, scale)
        return Budget(budget.groups, counts), scores
