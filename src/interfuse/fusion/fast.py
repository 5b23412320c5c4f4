"""Fast path of the fusion head: the same math as the module-by-module path, stacked and fused.

``MultimodalModel.fuse`` computes, for every term t, a block ``z_t = vBN(u_t)`` and the prediction
``ŷ = Σ_t W_t z_t + b``. Written module by module (centring, IterBN, one vBN and one ``Linear`` per
block) a step costs thousands of small operators and, for orders ≥ 3, many full-size passes over
the ``(B, r^k)`` interaction blocks. This module computes the *same* values with fewer of both:

**Stacking.** All blocks of one kind and size — unimodal blocks of equal width, interaction blocks
of equal order k — are stacked on a leading axis and go through every step together: one batched
matrix product (``bmm``) for the head of all of them, one foreach update for all running
statistics, one ``_foreach_norm`` for all ‖W_t‖ of the regulariser.

**vBN fused with the head** (:class:`_VbnHead`, hand-written backward). For a stack of blocks
``x_q ∈ R^{B×F}``: ``c_q = x_q − E[x_q]``, ``s_q = (E‖c_q‖² + ε)^{-1/2}``, ``z_q = s_q c_q``,
``ŷ += Σ_q z_q W_qᵀ``. Only ``z`` is kept for the backward pass (the module path keeps both the
centred block and ``z``). With ``g = ∂L/∂z = (∂L/∂ŷ) W_q`` (+ any gradient that reaches the
returned blocks directly), the backward pass is

    ∂L/∂W_q = (∂L/∂ŷ)ᵀ z_q,     ∂L/∂x_q = s_q · P(g − (⟨g, z_q⟩ / B) z_q),

where ``P`` subtracts the batch mean (the adjoint of centring; ``P z = z``, and ``P`` applied to
``(∂L/∂ŷ) W_q`` is ``(∂L/∂ŷ − E ∂L/∂ŷ) W_q``, a small matrix operation).

**Wick products built once, from the centred lower orders.** The factors ``g_m`` are centred, so
``E[g_m] = 0`` and every IterBN correction by a single modality vanishes. For a term
``S = P ∪ {l}`` (``P`` its first ``k−1`` modalities, ``l`` the last) and ``k ≤ 4`` the Wick
product ``:T_S: = T_S − Σ_{R ⊆ S, |R| ≥ 2} E[T_R] ⊗ :T_{S∖R}:`` regroups exactly as

    :T_S: = X_S − K_S,    X_S = :T_P: ⊗ g_l − Σ_{R ∋ l, 2 ≤ |R| ≤ k−1} E[T_R] ⊗ :T_{S∖R}:,
    K_S = E[T_S] − Σ_{R ⊆ P, |R| = k−2 ≥ 2} E[T_R] ⊗ E[T_{(P∖R) ∪ {l}}],

(the terms with ``R ⊆ P`` of the definition cancel against ``:T_P: ⊗ g_l`` up to the constants
in ``K_S``): one correction fewer than the definition for a triple (2 instead of 3), six instead
of ten for a quadruple. In training every correction in ``X_S`` has batch mean 0 (it multiplies a
centred lower-order block), so ``K_S = E[X_S] = E[:T_P: ⊗ g_l] = :T_Pᵀ: g_l / B`` — a small matrix
product instead of a pass over the block — and ``E[T_S] = K_S + Σ …`` recovers the raw moment that
IterBN tracks. In evaluation ``K_S`` comes from the running means. ``:T_S:`` has batch mean 0 in
training, so the vBN that follows never needs to centre it again (its running mean decays to 0,
as the module path's does).

**Presence masks.** Moments are then means over the samples where a subterm's modalities are
present, so corrections no longer have batch mean 0: ``K_S`` comes from the moments, ``E[T_S]``
from the raw prefix products, and vBN (:class:`_MaskedVbnHead`) centres and scales with
presence weights and zeroes absent rows; a block with fewer than 2 present samples uses (and does
not update) its running statistics, as before.

Scope: ``iterbn=True`` and ``vbn=True`` models with interaction orders ≤ 4, training and
evaluation, with or without masks. Anything else runs the module-by-module path.

**One Function for the common models** (:mod:`interfuse.fusion.pairwise`). In training without
masks, models with one embedding width and orders ≤ 2 — or ≤ 3 with every pair of a triple a
term too (``interactions=3``) and r ≤ :data:`PAIRWISE_MAX_TRIPLE_RANK` — run the whole head as
one autograd Function with a hand-written backward instead of the stacked stages below (fewer
operators; the same values). Everything else, evaluation and masks run the stacked path.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from ..terms import Term, nonempty_subsets, term_name
from .pairwise import (
    MaskedBuffers,
    PairwiseBuffers,
    PairwiseState,
    StepBlocks,
    closed_under_pairs,
    masked_pairwise_head,
    pairwise_head,
    pairwise_layout,
)
from .precision import float32_backward

FAST_MAX_ORDER = 4
"""Largest interaction order of the fast path (the regrouping above is written for k ≤ 4)."""

PAIRWISE_MAX_TRIPLE_RANK = 8
"""Largest rank for which models with triples train through the one-Function head
(:mod:`interfuse.fusion.pairwise`). Its triple contractions broadcast over ``(r, r, r, B)``
blocks; at r = 16 that is 1.16× slower than the stacked path's batched products (measured,
M = 4, batch 256), at r ≤ 8 it is 0.85–0.98× of it and the step dispatches far fewer operators."""


# --------------------------------------------------------------------------- vBN + head


class _VbnHead(torch.autograd.Function):
    """Batch-statistics vBN of a stack of blocks fused with their head blocks (see module doc).

    Inputs: ``x (Q, B, F)``, ``weight (Q, C, F)``, ``mean (Q, 1, F)`` or ``None`` (then ``x`` is
    centred by its own batch mean; a given ``mean`` must equal it — it only saves a pass),
    ``centred`` (``x`` already has batch mean 0: no centring at all), ``inplace`` (``x`` is a
    temporary nobody else reads: ``z`` is written into it), ``keep_input`` (``x`` stays alive
    anyway: it is kept for the backward pass, with the mean, and ``z`` recomputed from it, so
    that one copy of the block is saved, not two), ``eps``.
    Outputs: ``ŷ`` part ``(B, C)``, ``z (Q, B, F)``, and, not differentiable, the biased
    ``E‖c_q‖² (Q,)`` and the batch mean ``(Q, F)`` (``None`` when centred or given).
    """

    @staticmethod
    def forward(ctx, x, weight, mean, centred, inplace, keep_input, eps):  # noqa: D102
        num, batch = x.shape[0], x.shape[1]
        flat = x.view(num, batch, -1)
        batch_mean = None
        if not centred and mean is None:
            mean = batch_mean = flat.mean(dim=1, keepdim=True)
        if centred:
            c = flat
        else:
            c = flat.sub_(mean) if inplace else flat - mean
        # reshape, not view: a modality alone in its stack is a view of its embedding, and
        # ``flat - mean`` keeps that layout (a transposed encoder output: not flattenable)
        sq = torch.linalg.vector_norm(c.reshape(num, -1), dim=1).square_().div_(batch)
        scale = (sq + eps).rsqrt_()
        s3 = scale[:, None, None]
        z = c.mul_(s3) if inplace or not centred else c * s3
        partial = torch.bmm(z, weight.transpose(1, 2))  # (Q, B, C)
        if inplace:
            z = x  # the same memory, returned as the modified input
        # an input that stays alive (a higher order or the factors read it) is kept instead of z
        ctx.input_kept = not inplace and (centred or keep_input)
        kept_mean = mean if ctx.input_kept and not centred else None
        ctx.save_for_backward(x if ctx.input_kept else z, weight, scale, partial, kept_mean)
        if inplace:
            ctx.mark_dirty(x)
        ctx.x_shape = x.shape
        ctx.set_materialize_grads(False)
        if batch_mean is None:
            ctx.mark_non_differentiable(sq)
            return partial.sum(dim=0), z, sq, None
        batch_mean = batch_mean.squeeze(1)
        ctx.mark_non_differentiable(sq, batch_mean)
        return partial.sum(dim=0), z, sq, batch_mean

    @staticmethod
    @float32_backward
    def backward(ctx, grad_out, grad_z, _grad_sq, _grad_mean):  # noqa: D102
        z, weight, scale, partial, kept_mean = ctx.saved_tensors
        num, batch = z.shape[0], z.shape[1]
        z = z.view(num, batch, -1)
        if kept_mean is not None:  # z recomputed from the kept input
            z = (z - kept_mean) * scale[:, None, None]
        # z_q = zscale_q · (what was kept)
        centred_kept = ctx.input_kept and kept_mean is None
        zscale = scale if centred_kept else torch.ones_like(scale)
        if grad_z is not None:
            grad_z = grad_z.reshape(num, batch, -1)
        grad_x = grad_w = None
        if grad_out is not None:
            grad_out = grad_out.contiguous()
            # ⟨g, z_q⟩ for g = grad_out W_q, from the saved (Q, B, C) partial products
            dot = torch.mv(partial.view(num, -1), grad_out.view(-1))
        else:
            dot = z.new_zeros(num)
        if grad_z is not None:
            dot = dot + (grad_z * z).sum(dim=(1, 2)) * zscale
        scale3 = scale[:, None, None]
        if ctx.needs_input_grad[0]:
            grad_x = z * (dot * scale * zscale * (-1.0 / batch))[:, None, None]
            if grad_out is not None:
                centred_out = grad_out - grad_out.mean(dim=0, keepdim=True)
                grad_x = grad_x.baddbmm_(scale3 * centred_out, weight)
            if grad_z is not None:
                grad_x = grad_x + scale3 * (grad_z - grad_z.mean(dim=1, keepdim=True))
            grad_x = grad_x.view(ctx.x_shape)
        if ctx.needs_input_grad[1] and grad_out is not None:
            grad_w = torch.bmm(grad_out.t().expand(num, -1, -1), z)  # (Q, C, F)
            if centred_kept:
                grad_w = grad_w.mul_(scale3)
        return grad_x, grad_w, None, None, None, None, None


def vbn_head(
    x: Tensor,
    weight: Tensor,
    eps: float,
    mean: Tensor | None = None,
    centred: bool = False,
    inplace: bool = False,
    plain: bool = False,
    keep_input: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(Σ_q vBN(x_q) W_qᵀ, vBN(x), E‖x_q − E x_q‖², E x_q)`` with batch statistics.

    See :class:`_VbnHead`; with ``inplace`` the returned blocks reuse ``x``'s memory.
    """
    if plain:
        return _vbn_head_plain(x, weight, eps, mean, centred)
    mean = None if mean is None else mean.detach()
    return _VbnHead.apply(x, weight, mean, centred, inplace, keep_input, eps)


def _vbn_head_plain(
    x: Tensor, weight: Tensor, eps: float, mean: Tensor | None, centred: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """:func:`vbn_head` in plain differentiable operations (for ``torch.compile`` to fuse).

    A given ``mean`` must be a differentiable function equal to the batch mean of ``x``.
    """
    num, batch = x.shape[0], x.shape[1]
    flat = x.reshape(num, batch, -1)
    batch_mean = None
    if centred:
        c = flat
    else:
        if mean is None:
            mean = batch_mean = flat.mean(dim=1, keepdim=True)
        c = flat - mean
    sq = c.square().sum(dim=(1, 2)) / batch
    z = c * (sq + eps).rsqrt()[:, None, None]
    partial = torch.bmm(z, weight.transpose(1, 2)).sum(dim=0)
    batch_mean = None if batch_mean is None else batch_mean.detach().squeeze(1)
    return partial, z, sq.detach(), batch_mean


# --------------------------------------------------------------------------- plan


@dataclass
class _Correction:
    """``E[T_R] ⊗ :T_{S∖R}:`` for one position pattern, stacked over the terms of a level."""

    moment_order: int
    moment_index: list[int]  # into the level |R| subterms
    rest_order: int
    rest_index: list[int]  # |S∖R| = 1: factor positions; else: level |S∖R| subterms
    moment_shape: list[int]  # view of E[T_R] in S's axes (with the stack axis and a batch 1)
    rest_shape: list[int]  # view of :T_{S∖R}: in S's axes (stack and batch axes -1)
    layout: tuple[int, int, int, int]  # (L, a, v, c), see :func:`_correction_layout`


def _correction_layout(order: int, r_pos: tuple[int, ...], rank: int) -> tuple[int, int, int, int]:
    """Sizes ``(L, a, v, c)`` with S's axes = ``[L: rest][a: R][v: rest][c: R, ends with l]``.

    Every correction of an order ≤ 4 has this shape, so both of its gradients are one batched
    matrix product over a view of the block's gradient, ``(Q, B·L, a, v, c)`` (after moving
    ``v`` before ``a`` when ``a > 1``).
    """
    in_r = [p in r_pos for p in range(order)]
    runs: list[list[bool | int]] = []
    for flag in in_r:
        if runs and runs[-1][0] == flag:
            runs[-1][1] += 1
        else:
            runs.append([flag, 1])
    flags = [f for f, _ in runs]
    sizes = [rank**n for _, n in runs]
    if flags == [True]:
        raise ValueError("a correction needs a non-empty rest")
    if flags == [False, True]:
        return sizes[0], 1, 1, sizes[1]
    if flags == [True, False, True]:
        return 1, sizes[0], sizes[1], sizes[2]
    if flags == [False, True, False, True]:
        return sizes[0], sizes[1], sizes[2], sizes[3]
    raise NotImplementedError(f"correction pattern {in_r} of order {order}")


@dataclass
class _Level:
    """All subterms of one order k: how to build them from order k−1 and what they feed."""

    order: int
    subterms: list[Term]
    prefix: list[int]  # k = 2: factor position of the first modality; else level k−1 index
    last: list[int]  # factor position of the last modality
    corrections: list[_Correction] = field(default_factory=list)
    constants: list[tuple[list[int], list[int], list[int], list[int]]] = field(default_factory=list)
    members: list[list[int]] = field(default_factory=list)  # factor positions per subterm
    terms: list[int] = field(default_factory=list)  # subterm indices of the model's terms
    term_names: list[str] = field(default_factory=list)
    needed_below: bool = False  # Wick blocks feed a higher order


class FusionPlan:
    """Index bookkeeping of the fast path for one model structure (built once, cached)."""

    def __init__(
        self,
        modalities: Sequence[str],
        dims: Mapping[str, int],
        interaction_terms: Sequence[Term],
        factor_modalities: Sequence[str],
        rank: int,
    ) -> None:
        self.modalities = list(modalities)
        self.rank = rank
        # unimodal blocks grouped by width (one stack each), in declaration order
        groups: dict[int, list[str]] = {}
        for m in self.modalities:
            groups.setdefault(dims[m], []).append(m)
        self.unimodal_groups = list(groups.items())
        self.factor_modalities = list(factor_modalities)
        self.factor_rows = [self.modalities.index(m) for m in self.factor_modalities]
        # rows of the factor modalities in their width group, when they all share one
        self.factor_group: list[int] | None = None
        for _, names in self.unimodal_groups:
            if self.factor_modalities and all(m in names for m in self.factor_modalities):
                self.factor_group = [names.index(m) for m in self.factor_modalities]
        position = {m: i for i, m in enumerate(self.factor_modalities)}
        order = max((len(t) for t in interaction_terms), default=1)
        self.max_order = order
        self.supported = order <= FAST_MAX_ORDER  # else: no levels, the module path runs
        if not self.supported:
            interaction_terms, order = [], 1
        subterms = {t: None for term in interaction_terms for t in nonempty_subsets(term)}
        self.levels: list[_Level] = []
        index: dict[Term, int] = {}
        for k in range(2, order + 1):
            level_terms = sorted(
                (t for t in subterms if len(t) == k),
                key=lambda s: [self.modalities.index(m) for m in s],
            )
            for i, t in enumerate(level_terms):
                index[t] = i
            prefix = [position[t[0]] if k == 2 else index[t[:-1]] for t in level_terms]
            level = _Level(k, level_terms, prefix, [position[t[-1]] for t in level_terms])
            level.members = [p for t in level_terms for p in (position[m] for m in t)]
            # corrections: R ∋ l with 2 ≤ |R| ≤ k−1, one stacked correction per position pattern
            for size in range(2, k):
                for chosen in itertools.combinations(range(k - 1), size - 1):
                    r_pos = (*chosen, k - 1)
                    rest_pos = tuple(p for p in range(k) if p not in r_pos)
                    level.corrections.append(
                        _Correction(
                            size,
                            [index[tuple(t[p] for p in r_pos)] for t in level_terms],
                            len(rest_pos),
                            [
                                position[t[rest_pos[0]]]
                                if len(rest_pos) == 1
                                else index[tuple(t[p] for p in rest_pos)]
                                for t in level_terms
                            ],
                            [-1, 1, *(rank if p in r_pos else 1 for p in range(k))],
                            [-1, -1, *(rank if p in rest_pos else 1 for p in range(k))],
                            _correction_layout(k, r_pos, rank),
                        )
                    )
            # raw-moment constants: E[T_R] ⊗ E[T_{(P∖R) ∪ l}] for R ⊆ P, |R| = k − 2 ≥ 2
            if k - 2 >= 2:
                for chosen in itertools.combinations(range(k - 1), k - 2):
                    other = (*(p for p in range(k - 1) if p not in chosen), k - 1)
                    level.constants.append(
                        (
                            [index[tuple(t[p] for p in chosen)] for t in level_terms],
                            [-1, *(rank if p in chosen else 1 for p in range(k))],
                            [index[tuple(t[p] for p in other)] for t in level_terms],
                            [-1, *(rank if p in other else 1 for p in range(k))],
                        )
                    )
            self.levels.append(level)
        for t in interaction_terms:
            level = self.levels[len(t) - 2]
            level.terms.append(index[t])
            level.term_names.append(term_name(t))
        for k in range(2, order):  # a level feeds the next (prefix) and, for k = 2, corrections
            self.levels[k - 2].needed_below = True
        self._indices: dict[torch.device, dict[int, Tensor]] = {}
        # orders ≤ 3 (every pair of a triple a term too) with one embedding width: the whole
        # head is one Function in training (interfuse.fusion.pairwise)
        self.pairwise = (
            (self.max_order <= 2 or (self.max_order == 3 and rank <= PAIRWISE_MAX_TRIPLE_RANK))
            and len(self.unimodal_groups) == 1
            and closed_under_pairs([tuple(t) for t in interaction_terms])
        )
        self.pairs = [tuple(t) for t in interaction_terms if len(t) == 2]
        self.pair_names = [term_name(t) for t in self.pairs]
        self.triples = [tuple(t) for t in interaction_terms if len(t) == 3]
        self.triple_names = [term_name(t) for t in self.triples]
        # what the one-Function head gathers once (see pairwise_fuse)
        self.pairwise_cache: _PairwiseCache | None = None
        self.momentum: float | None = None  # of every running statistic (set by the model)
        self.one_eps = True  # whether every vBN has the same eps (set by the model)

    def index(self, values: list[int], device: torch.device) -> Tensor:
        cache = self._indices.setdefault(device, {})
        key = id(values)
        if key not in cache:
            cache[key] = torch.tensor(values, dtype=torch.long, device=device)
        return cache[key]


# --------------------------------------------------------------------------- Wick levels


SMALL_CONTRACTION = 64
"""Per-sample matrices up to this many entries are contracted by broadcasting instead of bmm
(a batched matrix product of thousands of tiny matrices costs more than it saves)."""


def _contract_last(grad: Tensor, vec: Tensor) -> Tensor:
    """``Σ_j grad[..., i, j] vec[..., j]`` for ``grad (N, a, r)``, ``vec (N, r)`` → ``(N, a)``."""
    if grad.shape[1] * grad.shape[2] <= SMALL_CONTRACTION:
        return (grad * vec.unsqueeze(1)).sum(dim=2)
    return torch.bmm(grad, vec.unsqueeze(2)).squeeze(2)


def _contract_first(grad: Tensor, vec: Tensor) -> Tensor:
    """``Σ_i vec[..., i] grad[..., i, j]`` for ``grad (N, a, r)``, ``vec (N, a)`` → ``(N, r)``."""
    if grad.shape[1] * grad.shape[2] <= SMALL_CONTRACTION:
        return (grad * vec.unsqueeze(2)).sum(dim=1)
    return torch.bmm(vec.unsqueeze(1), grad).squeeze(1)


def _gather(stack: Tensor, index: Tensor | None) -> Tensor:
    return stack if index is None else stack.index_select(0, index)


def _scatter(grad: Tensor, stack: Tensor, index: Tensor | None) -> Tensor:
    """The adjoint of :func:`_gather`: rows of ``grad`` added into a zero ``stack``."""
    if index is None:
        return grad.reshape(stack.shape)
    out = torch.zeros_like(stack)
    return out.index_add_(0, index, grad.reshape(-1, *stack.shape[1:]))


class _WickLevel(torch.autograd.Function):
    """``X = A ⊗ g − Σ_c E_c ⊗ V_c [− K]`` for the stacked terms of one order, by hand backward.

    ``A (Q, B, a)``: the prefix blocks ``:T_P:`` (or the first factors), ``g (Q, B, r)``: the last
    factors, ``K (Q, 1, a·r)`` or ``None``: the shift, and per correction ``c`` a moment
    ``E_c (Q, …)`` and a rest ``V_c (Q, B, …)`` placed in S's axes as ``layouts[c]`` says. ``A``,
    ``g`` and the ``V_c`` are given as whole stacks (of a lower order, or of the factors) with
    the rows to take (``spec``): they are gathered here and only the stacks are kept for the
    backward pass, so a lower-order block read by several terms is saved once. The output is a
    fresh ``(Q, B, r, …, r)`` tensor. Backward: every gradient is a batched matrix product with
    the output's gradient ``G`` (``∂A = G·g``, ``∂g = Aᵀ·G``, ``∂E_c = −Σ_n V_cᵀ G``,
    ``∂V_c = −G·E_c``, ``∂K = −Σ_n G``) — no full-size temporaries except one reordered copy of
    ``G`` for a correction whose rest sits between axes of its moment.
    """

    @staticmethod
    def forward(ctx, spec, head_stack, last_stack, shift, *operands):  # noqa: D102
        order, rank, layouts, moment_shapes, rest_shapes, head_index, last_index, rest_indices = (
            spec
        )
        last = _gather(last_stack, last_index)
        num, batch = last.shape[0], last.shape[1]
        head = _gather(head_stack, head_index)
        x = head.reshape(num, batch, *([rank] * (order - 1)), 1) * last.reshape(
            num, batch, *([1] * (order - 1)), rank
        )
        for i in range(len(layouts)):
            moment = operands[2 * i]
            rest = _gather(operands[2 * i + 1], rest_indices[i])
            x.addcmul_(
                moment.reshape(moment_shapes[i]),
                rest.reshape(num, batch, *rest_shapes[i][2:]),
                value=-1,
            )
        if shift is not None:
            x.sub_(shift.reshape(num, 1, *([rank] * order)))
        ctx.spec = spec
        ctx.shift_shape = None if shift is None else shift.shape
        ctx.save_for_backward(head_stack, last_stack, *operands)
        return x

    @staticmethod
    @float32_backward
    def backward(ctx, grad):  # noqa: D102
        head_stack, last_stack, *operands = ctx.saved_tensors
        _, _, layouts, _, _, head_index, last_index, rest_indices = ctx.spec
        last = _gather(last_stack, last_index)
        num, batch, rank = last.shape[0], last.shape[1], last.shape[2]
        flat = grad.reshape(num * batch, -1, rank)
        need = ctx.needs_input_grad
        grad_head = grad_last = grad_shift = None
        if need[1] or need[2]:
            head = _gather(head_stack, head_index).reshape(num * batch, -1)
            if need[1]:
                grad = _contract_last(flat, last.reshape(num * batch, rank))
                grad_head = _scatter(grad, head_stack, head_index)
            if need[2]:
                grad = _contract_first(flat, head)
                grad_last = _scatter(grad, last_stack, last_index)
        grad_output = flat.view(num, batch, -1)
        if ctx.shift_shape is not None and need[3]:
            grad_shift = grad_output.sum(dim=1).neg_().reshape(ctx.shift_shape)
        grads: list[Tensor | None] = []
        for i, (lead, a, v, c) in enumerate(layouts):
            moment, rest_stack = operands[2 * i], operands[2 * i + 1]
            rows = batch * lead
            if a == 1:
                g = grad_output.reshape(num, rows, c)
            else:  # bring the rest's middle axes next to its leading ones: (Q, B·L·v, a·c)
                g = grad_output.reshape(num, rows, a, v, c).transpose(2, 3)
                g = g.reshape(num, rows * v, a * c)
            grad_moment = grad_rest = None
            if need[4 + 2 * i]:
                rest = _gather(rest_stack, rest_indices[i])
                grad_moment = torch.bmm(rest.reshape(num, 1, -1), g).neg_().view(moment.shape)
            if need[5 + 2 * i]:
                grad_rest = torch.bmm(g, moment.reshape(num, -1, 1)).neg_()
                grad_rest = _scatter(grad_rest, rest_stack, rest_indices[i])
            grads += [grad_moment, grad_rest]
        return (None, grad_head, grad_last, grad_shift, *grads)


class _Moment(torch.autograd.Function):
    """``E[T_P ⊗ g_l] = Σ_n w_n T_P,n ⊗ g_l,n`` from whole stacks and row indices (``w_n = 1/B``
    when ``weights`` is ``None``): a batched matrix product ``(Q, a, B) @ (Q, B, r)``. Only the
    stacks are kept for the backward pass (``∂T_P,n = w_n G g_l,n``, ``∂g_l,n = w_n Gᵀ T_P,n``).
    """

    @staticmethod
    def forward(ctx, head_index, last_index, head_stack, last_stack, weights):  # noqa: D102
        head = _gather(head_stack, head_index)
        last = _gather(last_stack, last_index)
        num, batch = last.shape[0], last.shape[1]
        head = head.reshape(num, batch, -1)
        scaled = last / batch if weights is None else last * weights[:, :, None]
        ctx.indices = head_index, last_index
        ctx.save_for_backward(head_stack, last_stack, weights)
        return torch.bmm(head.transpose(1, 2), scaled)

    @staticmethod
    @float32_backward
    def backward(ctx, grad):  # noqa: D102
        head_stack, last_stack, weights = ctx.saved_tensors
        head_index, last_index = ctx.indices
        last = _gather(last_stack, last_index)
        num, batch = last.shape[0], last.shape[1]
        factor = (1.0 / batch) if weights is None else weights[:, :, None]
        grad_head = grad_last = None
        if ctx.needs_input_grad[2]:
            grad_head = torch.bmm(last * factor, grad.transpose(1, 2))  # (Q, B, a)
            grad_head = _scatter(grad_head, head_stack, head_index)
        if ctx.needs_input_grad[3]:
            head = _gather(head_stack, head_index).reshape(num, batch, -1)
            grad_last = torch.bmm(head, grad) * factor  # (Q, B, r)
            grad_last = _scatter(grad_last, last_stack, last_index)
        return None, None, grad_head, grad_last, None


def _moment(
    plan: FusionPlan,
    level: _Level,
    head_stack: Tensor,
    factors: Tensor,
    weights: Tensor | None,
    plain: bool = False,
) -> Tensor:
    """:class:`_Moment` of every subterm of ``level`` (prefix rows of ``head_stack``)."""
    if plain:  # the same in plain operations, for torch.compile
        head = _gather(head_stack, _index(head_stack, level.prefix, plan))
        last = _gather(factors, _index(factors, level.last, plan))
        head = head.reshape(last.shape[0], last.shape[1], -1)
        return torch.bmm(head.transpose(1, 2), last) / last.shape[1]
    return _Moment.apply(
        _index(head_stack, level.prefix, plan),
        _index(factors, level.last, plan),
        head_stack,
        factors,
        weights,
    )


def _index(stack: Tensor, values: list[int], plan: FusionPlan) -> Tensor | None:
    """The index tensor of rows ``values`` of ``stack``, or ``None`` for all rows in order."""
    if len(values) == stack.shape[0] and values == list(range(len(values))):
        return None
    return plan.index(values, stack.device)


def _wick_level(
    plan: FusionPlan,
    level: _Level,
    head_stack: Tensor,
    factors: Tensor,
    shift: Tensor | None,
    moments: list[Tensor],
    wick: list[Tensor],
    corrections: bool = True,
    plain: bool = False,
) -> Tensor:
    """:class:`_WickLevel` of one level, its operands taken from the lower levels' stacks."""
    operands: list[Tensor] = []
    rest_indices: list[Tensor | None] = []
    used = level.corrections if corrections else []
    for corr in used:
        operands.append(_take(moments[corr.moment_order - 2], corr.moment_index, plan))
        rest_stack = factors if corr.rest_order == 1 else wick[corr.rest_order - 2]
        operands.append(rest_stack)
        rest_indices.append(_index(rest_stack, corr.rest_index, plan))
    spec = (
        level.order,
        plan.rank,
        [c.layout for c in used],
        [c.moment_shape for c in used],
        [c.rest_shape for c in used],
        _index(head_stack, level.prefix, plan),
        _index(factors, level.last, plan),
        rest_indices,
    )
    if plain:
        return _wick_level_plain(spec, head_stack, factors, shift, *operands)
    return _WickLevel.apply(spec, head_stack, factors, shift, *operands)


def _wick_level_plain(spec, head_stack, last_stack, shift, *operands) -> Tensor:
    """:class:`_WickLevel`'s forward in plain differentiable operations (for ``torch.compile``)."""
    order, rank, layouts, moment_shapes, rest_shapes, head_index, last_index, rest_indices = spec
    last = _gather(last_stack, last_index)
    num, batch = last.shape[0], last.shape[1]
    head = _gather(head_stack, head_index)
    x = head.reshape(num, batch, *([rank] * (order - 1)), 1) * last.reshape(
        num, batch, *([1] * (order - 1)), rank
    )
    for i in range(len(layouts)):
        rest = _gather(operands[2 * i + 1], rest_indices[i])
        x = x - operands[2 * i].reshape(moment_shapes[i]) * rest.reshape(
            num, batch, *rest_shapes[i][2:]
        )
    if shift is not None:
        x = x - shift.reshape(num, 1, *([rank] * order))
    return x


def _take(stack: Tensor, values: list[int], plan: FusionPlan) -> Tensor:
    """Rows ``values`` of ``stack`` (no copy when they are all rows, in order)."""
    if len(values) == stack.shape[0] and values == list(range(len(values))):
        return stack
    return stack.index_select(0, plan.index(values, stack.device))


def wick_levels(
    plan: FusionPlan,
    factors: Tensor,
    running: list[Tensor] | None,
    plain: bool = False,
) -> tuple[list[Tensor], list[bool], list[Tensor], list[Tensor]]:
    """Wick products of every level, stacked: ``(blocks, centred, shifts, moments)`` per level.

    ``factors``: centred factors ``(M_f, B, r)``. Training (``running is None``): batch moments;
    evaluation: ``running[k-2]`` holds the running raw moments ``E[T_R]`` of level k, stacked.

    ``blocks[k-2]`` is ``:T_S:`` for every subterm S of order k when ``centred[k-2]`` (a higher
    order needs it, or evaluation), else ``X_S`` of the module docstring, with
    ``:T_S: = X_S − shifts[k-2]`` (the top order in training: vBN centres it anyway).
    ``moments[k-2]``: ``E[T_R]`` (raw) of the level, batch or running.
    """
    rank = plan.rank
    training = running is None
    wick: list[Tensor] = []
    moments: list[Tensor] = []
    centred_flags: list[bool] = []
    shifts: list[Tensor] = []
    for level in plan.levels:
        k = level.order
        num = len(level.subterms)
        head_stack = factors if k == 2 else wick[-1]
        if training:
            # K_S = E[X_S] = E[:T_P: ⊗ g_l] (every correction has batch mean 0)
            shift = _moment(plan, level, head_stack, factors, None, plain)  # (Q, r^(k-1), r)
            moment = shift.reshape(num, *([rank] * k))  # E[T_S] for k ≤ 3: feeds corrections
            if level.constants:  # k = 4: E[T_S] = K_S + Σ E[T_R] ⊗ E[T_rest]; statistics only
                moment = moment.detach().clone()
                for left, left_shape, right, right_shape in level.constants:
                    e_left = _take(moments[k - 4], left, plan).reshape(left_shape)
                    e_right = _take(moments[0], right, plan).reshape(right_shape)
                    moment.addcmul_(e_left.detach(), e_right.detach())
            moments.append(moment)
        else:
            moments.append(running[k - 2])
            shift = running[k - 2].clone()
            for left, left_shape, right, right_shape in level.constants:
                e_left = _take(moments[k - 4], left, plan).reshape(left_shape)
                e_right = _take(moments[0], right, plan).reshape(right_shape)
                shift.addcmul_(e_left, e_right, value=-1)
        centre = level.needed_below or not training
        x = _wick_level(
            plan, level, head_stack, factors, shift if centre else None, moments, wick, plain=plain
        )
        centred_flags.append(centre)
        shifts.append(shift.reshape(num, 1, -1))
        wick.append(x)
    return wick, centred_flags, shifts, moments


# --------------------------------------------------------------------------- the whole head


def _stack(tensors: list[Tensor]) -> Tensor:
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def _like(values: list[Tensor], targets: list[Tensor]) -> list[Tensor]:
    """``values`` in the dtypes of ``targets`` (the running buffers), converting only if needed."""
    if all(v.dtype == t.dtype for v, t in zip(values, targets)):
        return values
    return [v.to(t.dtype) for v, t in zip(values, targets)]


def _check_training_batch(batch: int) -> None:
    if batch < 2:
        raise ValueError(
            f"the fusion head needs a batch of at least 2 samples in training mode (it uses "
            f"batch statistics), got {batch}; use a larger batch or call model.eval()"
        )


def _presence_weights(present: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, list[bool]]:
    """``(weights, counts, ok)`` of a ``(Q, B)`` presence stack: ``weights[q] = present[q] / n_q``
    (a masked batch mean is ``weights @ x``), ``ok[q]``: ``n_q ≥ 2``, so batch statistics apply."""
    counts = present.sum(dim=1)
    weights = present.to(dtype) / counts.clamp(min=1).to(dtype)[:, None]
    return weights, counts, (counts >= 2).tolist()


def _choose(ok: list[bool], batch_value: Tensor, running: Tensor) -> Tensor:
    """Per stacked row: the batch statistic where ``ok``, else the running one (masked path)."""
    if all(ok):
        return batch_value
    if not any(ok):
        return running.to(batch_value.dtype).expand_as(batch_value)
    keep = torch.tensor(ok, device=batch_value.device).view(-1, *([1] * (batch_value.dim() - 1)))
    return torch.where(keep, batch_value, running.to(batch_value.dtype))


def _masked_wick_levels(
    plan: FusionPlan, factors: Tensor, present: Tensor, running: list[Tensor]
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[list[bool]]]:
    """Training with presence masks: ``(blocks :T_S:, presence (Q, B), batch moments, ok)``.

    Moments are means over the samples where every modality of the subterm is present (running
    means where fewer than 2 are), so corrections no longer have batch mean 0: the shift ``K_S``
    comes from the moments themselves, and ``E[T_S]`` from the raw product of the prefix
    (``(w ⊙ T_P)ᵀ g_l``), which this path keeps for every order below the highest.
    """
    batch, rank = factors.shape[1], plan.rank
    wick: list[Tensor] = []
    raw_products: list[Tensor] = []
    moments: list[Tensor] = []
    batch_moments: list[Tensor] = []
    presences: list[Tensor] = []
    oks: list[list[bool]] = []
    for level in plan.levels:
        k, num = level.order, len(level.subterms)
        members = plan.index(level.members, present.device)
        level_present = present.index_select(0, members).view(num, k, batch).all(dim=1)
        weights, _, ok = _presence_weights(level_present, factors.dtype)
        raw_stack = factors if k == 2 else raw_products[-1]
        batch_moment = _moment(plan, level, raw_stack, factors, weights)
        batch_moment = batch_moment.reshape(num, *([rank] * k))
        moment = _choose(ok, batch_moment, running[k - 2])
        moments.append(moment)
        shift = moment
        if level.constants:
            shift = moment.clone()
            for left, left_shape, right, right_shape in level.constants:
                e_left = _take(moments[k - 4], left, plan).reshape(left_shape)
                e_right = _take(moments[0], right, plan).reshape(right_shape)
                shift = shift.addcmul(e_left, e_right, value=-1)
        head_stack = factors if k == 2 else wick[-1]
        wick.append(_wick_level(plan, level, head_stack, factors, shift, moments, wick))
        if k < plan.max_order:
            raw_products.append(
                _wick_level(plan, level, raw_stack, factors, None, moments, wick, False)
            )
        batch_moments.append(batch_moment.detach())
        presences.append(level_present)
        oks.append(ok)
    return wick, presences, batch_moments, oks


class _MaskedVbnHead(torch.autograd.Function):
    """:class:`_VbnHead` with presence masks: statistics over present samples, absent rows 0.

    For a block with presence ``p_n ∈ {0, 1}``, ``n = Σ p_n`` and ``w_n = p_n / n``:
    ``μ = Σ_n w_n x_n``, ``c_n = x_n − μ``, ``s = (Σ_n w_n ‖c_n‖² + ε)^{-1/2}`` and
    ``z_n = p_n s c_n``.
    Blocks with ``n < 2`` (``ok`` false) use the running ``μ`` and ``E‖c‖²`` instead, and their
    gradient is ``s p_n ∂L/∂z_n``. Otherwise, with ``G_n = p_n ∂L/∂z_n`` and ``D = Σ_n ⟨G_n, z_n⟩``,

        ∂L/∂x_n = s (G_n − (D / n) z_n − w_n Σ_m G_m),

    (the last term is the adjoint of the masked centring), and ``∂L/∂z_n = (∂L/∂ŷ_n) W``
    gives ``G_n − w_n Σ_m G_m = p_n (∂L/∂ŷ_n − Σ_m w_m ∂L/∂ŷ_m) W``: a small matrix product.
    Absent rows are zeroed by a product with ``p`` (a non-finite value in an absent row would
    spread; ``MultimodalModel.encode`` zeroes absent inputs).
    """

    @staticmethod
    def forward(ctx, x, weight, present, running_mean, running_sq, ok, inplace, eps):  # noqa: D102
        num, batch = x.shape[0], x.shape[1]
        flat = x.view(num, batch, -1)
        p = present.to(x.dtype)
        counts = p.sum(dim=1)
        w = p / counts.clamp(min=1)[:, None]
        batch_mean = torch.bmm(w[:, None, :], flat)  # (Q, 1, F)
        mean = _choose(ok, batch_mean, running_mean)
        c = flat.sub_(mean) if inplace else flat - mean
        row_sq = torch.linalg.vector_norm(c, dim=2).square_()  # (Q, B)
        sq = (row_sq * w).sum(dim=1)
        scale = (_choose(ok, sq, running_sq) + eps).rsqrt_()
        z = c.mul_((p * scale[:, None])[:, :, None])
        partial = torch.bmm(z, weight.transpose(1, 2))  # (Q, B, C)
        if inplace:
            ctx.mark_dirty(x)
            z = x
        usable = torch.tensor(ok, dtype=x.dtype, device=x.device)
        ctx.save_for_backward(z, weight, scale, partial, p, counts, usable)
        ctx.x_shape = x.shape
        ctx.set_materialize_grads(False)
        unbiased = sq * counts / (counts - 1).clamp(min=1)
        batch_mean = batch_mean.squeeze(1)
        ctx.mark_non_differentiable(batch_mean, unbiased)
        return partial.sum(dim=0), z, batch_mean, unbiased

    @staticmethod
    @float32_backward
    def backward(ctx, grad_out, grad_z, _grad_mean, _grad_sq):  # noqa: D102
        z, weight, scale, partial, p, counts, usable = ctx.saved_tensors
        num, batch = z.shape[0], z.shape[1]
        z = z.view(num, batch, -1)
        w = (p / counts.clamp(min=1)[:, None])[:, None, :]  # (Q, 1, B)
        grad_x = grad_w = None
        if grad_out is not None:
            grad_out = grad_out.contiguous()
            dot = torch.mv(partial.view(num, -1), grad_out.view(-1))
        else:
            dot = z.new_zeros(num)
        if grad_z is not None:
            grad_z = grad_z.reshape(num, batch, -1)
            dot = dot + (grad_z * z).sum(dim=(1, 2))
        scale3 = scale[:, None, None]
        p3 = p[:, :, None]
        if ctx.needs_input_grad[0]:
            coef = -usable * scale * dot / counts.clamp(min=1)
            grad_x = z * coef[:, None, None]
            if grad_out is not None:
                expanded = grad_out.expand(num, -1, -1)
                mean_out = torch.bmm(w, expanded) * usable[:, None, None]  # (Q, 1, C)
                grad_x = grad_x.baddbmm_(scale3 * p3 * (expanded - mean_out), weight)
            if grad_z is not None:
                mean_z = torch.bmm(w, grad_z) * usable[:, None, None]
                grad_x = grad_x + scale3 * p3 * (grad_z - mean_z)
            grad_x = grad_x.view(ctx.x_shape)
        if ctx.needs_input_grad[1] and grad_out is not None:
            grad_w = torch.bmm(grad_out.t().expand(num, -1, -1), z)
        return grad_x, grad_w, None, None, None, None, None, None


def _masked_vbn_head(
    x: Tensor, weight: Tensor, present: Tensor, norms: list, inplace: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[bool]]:
    """``(ŷ part, z, batch mean, unbiased E‖c‖², ok)`` of :class:`_MaskedVbnHead`."""
    ok = (present.sum(dim=1) >= 2).tolist()
    running_mean = _stack([n.running_mean for n in norms]).unsqueeze(1)
    running_sq = _stack([n.running_sq_norm for n in norms])
    partial, z, batch_mean, unbiased = _MaskedVbnHead.apply(
        x, weight, present, running_mean, running_sq, ok, inplace, norms[0].eps
    )
    return partial, z, batch_mean, unbiased, ok


def fast_fuse(
    model,
    embeddings: Mapping[str, Tensor],
    present: Mapping[str, Tensor] | None = None,
    plain: bool = False,
    defer_updates: bool = False,
):
    """``(prediction, blocks)`` of ``model.fuse``; the same values and gradients.

    ``model`` is a :class:`~interfuse.model.MultimodalModel` with ``iterbn`` and ``vbn`` on and
    interaction orders ≤ :data:`FAST_MAX_ORDER`; its parameters and running buffers are read and
    (in training) updated exactly as the module-by-module path would. ``present``
    (``{m: bool (B,)}`` for every modality) restricts batch statistics to present samples and
    zeroes the blocks of absent ones. ``plain``: plain differentiable operations instead of the
    hand-written autograd Functions (the form ``torch.compile`` fuses best; no masks).
    ``defer_updates``: return the running-statistics updates as a third element instead of
    applying them (:func:`apply_updates`; keeps buffer mutations out of a compiled graph).
    """
    plan: FusionPlan = model.fusion_plan()
    training = model.training
    if plan.pairwise and training and not plain and not defer_updates:
        if present is None or not plan.triples:
            return tuple(pairwise_fuse(model, embeddings, present))
    head = model.head
    weights = {name: block.weight for name, block in head.blocks.items()}
    first = embeddings[plan.modalities[0]]
    batch = first.shape[0]
    if training and present is None:
        _check_training_batch(batch)
    masked = present is not None
    if masked:
        everyone = torch.ones(batch, dtype=torch.bool, device=first.device)
        present_all = _stack([present.get(m, everyone) for m in plan.modalities])  # (M, B)
        modality_row = {m: i for i, m in enumerate(plan.modalities)}
    blocks: dict[str, Tensor] = {}
    out = None
    # running-statistics updates, collected and applied with a few foreach operations
    lerp_to: list[Tensor] = []
    lerp_from: list[Tensor] = []
    decay: list[Tensor] = []
    counters: list[Tensor] = []
    sq_norms: list[Tensor] = []
    sq_values: list[Tensor] = []

    def add(partial: Tensor) -> None:
        nonlocal out
        out = partial if out is None else out + partial

    def head_of(
        x: Tensor,
        names: list[str],
        rows: Tensor | None,
        mean=None,
        centred=False,
        inplace=True,
        keep_input=False,
    ) -> None:
        """vBN + head of the stacked blocks ``x (Q, B, …)`` named ``names``.

        ``rows``: their presence ``(Q, B)`` (masked path only).
        """
        num = len(names)
        weight = _stack([weights[n] for n in names])
        norms = [norm_modules[n] for n in names]
        if training and rows is not None:
            partial, z, batch_mean, unbiased, ok = _masked_vbn_head(x, weight, rows, norms, inplace)
            for i, n in enumerate(norms):
                if ok[i]:
                    lerp_to.append(n.running_mean)
                    lerp_from.append(batch_mean[i])
                    sq_norms.append(n.running_sq_norm)
                    sq_values.append(unbiased[i])
                    counters.append(n.num_batches_tracked)
        elif training:
            if mean is not None:
                mean = mean.reshape(num, 1, -1)
            partial, z, sq, batch_mean = vbn_head(
                x,
                weight,
                norms[0].eps,
                mean=mean,
                centred=centred,
                inplace=inplace and not keep_input,
                plain=plain,
                keep_input=keep_input,
            )
            sq_norms.extend(n.running_sq_norm for n in norms)
            sq_values.extend((sq * (batch / (batch - 1))).unbind(0))
            counters.extend(n.num_batches_tracked for n in norms)
            if batch_mean is not None:
                lerp_to.extend(n.running_mean for n in norms)
                lerp_from.extend(batch_mean.unbind(0))
            else:  # interaction blocks: batch mean exactly 0
                decay.extend(n.running_mean for n in norms)
        else:
            mean = _stack([n.running_mean for n in norms]).unsqueeze(1)
            scale = (_stack([n.running_sq_norm for n in norms]) + norms[0].eps).rsqrt()
            z = (x.reshape(num, batch, -1) - mean) * scale[:, None, None]
            if rows is not None:
                z = torch.where(rows[:, :, None], z, 0.0)
            partial = torch.bmm(z, weight.transpose(1, 2)).sum(dim=0)
        add(partial)
        blocks.update(zip(names, z.reshape(num, batch, -1).unbind(0)))

    # unimodal blocks
    norm_modules = model.norms
    unimodal_stacks: dict[str, tuple[Tensor, int]] = {}
    for _, names in plan.unimodal_groups:
        rows = None
        if masked:
            rows = _stack([present_all[modality_row[m]] for m in names])
        x = _stack([embeddings[m] for m in names])
        # in training the factors are projected from this stack too: keep it, not a copy
        keep = training and not masked and plan.factor_group is not None and len(names) > 1
        if keep:
            unimodal_stacks.update({m: (x, i) for i, m in enumerate(names)})
        head_of(x, names, rows, inplace=len(names) > 1, keep_input=keep)

    # interaction blocks
    if plan.levels:
        fm = model.factors
        projections = [fm.projections[m].weight for m in plan.factor_modalities]
        shared = unimodal_stacks.get(plan.factor_modalities[0])
        if shared is not None:  # one batched product over the unimodal stack
            stack, _ = shared
            rows = _take(stack, plan.factor_group, plan)
            projected = torch.bmm(rows, torch.stack(projections).transpose(1, 2))
        else:
            projected = _stack(
                [
                    torch.nn.functional.linear(embeddings[m], w)
                    for m, w in zip(plan.factor_modalities, projections)
                ]
            )  # (M_f, B, r)
        centerings = [fm.centering[m] for m in plan.factor_modalities]
        iterbn = model.wick
        running = None
        if not training or masked:
            running = [
                _stack([getattr(iterbn, iterbn._buffer(t)) for t in level.subterms])
                for level in plan.levels
            ]
        if training and masked:
            factor_present = present_all.index_select(
                0, plan.index(plan.factor_rows, present_all.device)
            )
            weights_f, _, ok_f = _presence_weights(factor_present, projected.dtype)
            factor_mean = torch.bmm(weights_f[:, None, :], projected)  # (M_f, 1, r)
            running_f = _stack([c.running_mean for c in centerings]).unsqueeze(1)
            factors = projected - _choose(ok_f, factor_mean, running_f)
            for i, c in enumerate(centerings):
                if ok_f[i]:
                    lerp_to.append(c.running_mean)
                    lerp_from.append(factor_mean[i, 0].detach())
                    counters.append(c.num_batches_tracked)
                    decay.append(getattr(iterbn, iterbn._buffer((plan.factor_modalities[i],))))
            wick, level_rows, moments, oks = _masked_wick_levels(
                plan, factors, factor_present, running
            )
            for level, moment, ok in zip(plan.levels, moments, oks):
                for i, t in enumerate(level.subterms):
                    if ok[i]:
                        lerp_to.append(getattr(iterbn, iterbn._buffer(t)))
                        lerp_from.append(moment[i])
            counters.append(iterbn.num_batches_tracked)
            for level, x, rows in zip(plan.levels, wick, level_rows):
                if level.terms:
                    taken = _take(x, level.terms, plan)
                    head_of(
                        taken,
                        level.term_names,
                        _take(rows, level.terms, plan),
                        inplace=level.order == plan.max_order or taken is not x,
                    )
        else:
            if training:
                factor_mean = projected.mean(dim=1, keepdim=True)
                factors = projected - factor_mean
                lerp_to.extend(c.running_mean for c in centerings)
                lerp_from.extend(factor_mean.detach().squeeze(1).unbind(0))
                counters.extend(c.num_batches_tracked for c in centerings)
            else:
                factors = projected - _stack([c.running_mean for c in centerings]).unsqueeze(1)
            wick, centred, shifts, moments = wick_levels(plan, factors, running, plain)
            if training:
                decay.extend(getattr(iterbn, iterbn._buffer((m,))) for m in plan.factor_modalities)
                for level, moment in zip(plan.levels, moments):
                    lerp_to.extend(getattr(iterbn, iterbn._buffer(t)) for t in level.subterms)
                    lerp_from.extend(moment.detach().unbind(0))
                counters.append(iterbn.num_batches_tracked)
            for level, x, is_centred, shift in zip(plan.levels, wick, centred, shifts):
                if not level.terms:
                    continue
                x = _take(x, level.terms, plan)
                names = level.term_names
                rows = None
                if masked:  # evaluation with masks: blocks of absent samples are zeroed
                    members = plan.index(level.members, present_all.device)
                    factor_rows = present_all.index_select(
                        0, plan.index(plan.factor_rows, present_all.device)
                    )
                    all_rows = factor_rows.index_select(0, members)
                    all_rows = all_rows.view(len(level.subterms), level.order, batch).all(dim=1)
                    rows = _take(all_rows, level.terms, plan)
                if is_centred:  # a higher order reads these blocks too: no in-place update
                    head_of(x, names, rows, centred=True, inplace=x is not wick[level.order - 2])
                else:
                    head_of(x, names, rows, mean=_take(shift, level.terms, plan))

    prediction = out + head.bias if head.bias is not None else out
    ordered = {name: blocks[name] for name in head.blocks}
    updates = (lerp_to, lerp_from, sq_norms, sq_values, decay, counters)
    if defer_updates:
        return prediction, ordered, updates
    if training:
        apply_updates(updates, plan.momentum)
    return prediction, ordered


class HeadStep(NamedTuple):
    """What the one-Function head gives :meth:`MultimodalModel.fuse` for one training step:
    the prediction and the blocks ``{term name: (B, D_t)}`` in the head's order (without
    masks a :class:`~interfuse.fusion.pairwise.StepBlocks`, computed when first read)."""

    prediction: Tensor
    blocks: Mapping[str, Tensor]


class _PairwiseCache(NamedTuple):
    """What :func:`pairwise_fuse` gathers once per model state (see there)."""

    device: torch.device
    state: PairwiseState
    weights: list[Tensor]
    """``W_1..W_M, P_1..P_{M_f}, V_1..V_Q, V'_1..V'_T``, the Function's tensors after ``U``."""
    masked: MaskedBuffers
    index: dict[str, int]
    """``{term name: position in the stacks (unimodal, pairs, triples)}``, in the head's order."""
    links: list[tuple[dict, str, object]]
    """Ownership links: the cache is the model's while every ``table.get(key) is value``."""


def pairwise_fuse(
    model,
    embeddings: Mapping[str, Tensor],
    present: Mapping[str, Tensor] | None = None,
) -> HeadStep:
    """:func:`fast_fuse` for models the one-Function head takes (``fusion_plan().pairwise``) in
    training: one autograd Function (:mod:`interfuse.fusion.pairwise`); with ``present``,
    orders ≤ 2 only.

    Its state and weight lists are gathered once and kept in the plan (``MultimodalModel`` drops
    them when its tensors move or are loaded; they are also rebuilt when any tensor they hold,
    or a module on the way to it, is no longer the model's: a parameter, buffer or submodule
    replaced by assignment)."""
    plan: FusionPlan = model.fusion_plan()
    modalities = plan.modalities
    first = embeddings[modalities[0]]
    cached = plan.pairwise_cache
    if (
        cached is None
        or cached.device != first.device
        # identity checks on the owners' own dicts (nn.Module attribute lookup is slow)
        or not all(table.get(key) is value for table, key, value in cached.links)
    ):
        cached = plan.pairwise_cache = _pairwise_cache(model, plan, first.device)
    inputs = [embeddings[m] for m in modalities]
    tensors = inputs + cached.weights
    if present is None:
        prediction = pairwise_head(cached.state, tensors)
        num_m, num_f = cached.state.counts[:2]
        watched = inputs + cached.weights[num_m : num_m + num_f]  # embeddings, projections
        return HeadStep(prediction, StepBlocks(cached.index, cached.state, tensors, watched))
    everyone = torch.ones(first.shape[0], dtype=torch.bool, device=first.device)
    rows = torch.stack([present.get(m, everyone) for m in modalities])
    out = masked_pairwise_head(cached.state, cached.masked, rows, tensors)
    stacked = out.unimodal.unbind(0)
    if plan.pair_names:
        stacked += out.pairs.unbind(0)
    return HeadStep(out.prediction, {name: stacked[i] for name, i in cached.index.items()})


def _pairwise_cache(model, plan: FusionPlan, device: torch.device) -> _PairwiseCache:
    """The :class:`_PairwiseCache` of :func:`pairwise_fuse` for ``model`` on ``device``."""
    names = plan.modalities + plan.pair_names + plan.triple_names
    state, weights, masked = _pairwise_state(model, plan, device)
    held = [*weights, state.bias, *state.buffers.lerped, *state.buffers.counters]
    held += [t for values in masked for t in values]
    links = _ownership(model, held)
    if state.bias is None:  # no tensor to watch: watch the empty slot (a bias set later)
        links.append((model.head._parameters, "bias", None))
    position = {name: i for i, name in enumerate(names)}
    index = {name: position[name] for name in model.head.blocks}
    return _PairwiseCache(device, state, weights, masked, index, links)


def _ownership(model, tensors: list[Tensor | None]) -> list[tuple[dict, str, object]]:
    """``(table, key, value)`` links from ``model`` to each of ``tensors``: the parameter or
    buffer table of its owner, and the submodule table of every module on the way (the cached
    state is the model's while every ``table.get(key) is value``)."""
    owner: dict[int, tuple[str, dict, str]] = {}
    for path, module in model.named_modules():
        for table in (module._parameters, module._buffers):
            for key, value in table.items():
                owner.setdefault(id(value), (path, table, key))
    links: dict[tuple[int, str], tuple[dict, str, object]] = {}
    for tensor in tensors:
        if tensor is None:
            continue
        path, table, key = owner[id(tensor)]
        links[id(table), key] = (table, key, tensor)
        parent = model
        for name in path.split(".") if path else []:
            child = parent._modules[name]
            links[id(parent._modules), name] = (parent._modules, name, child)
            parent = child
    return list(links.values())


def _pairwise_state(
    model, plan: FusionPlan, device: torch.device
) -> tuple[PairwiseState, list[Tensor], MaskedBuffers]:
    """The :class:`PairwiseState` of ``model``, its weights ``W_1..W_M, P_1..P_{M_f},
    V_1..V_Q, V'_1..V'_T`` (see :func:`interfuse.fusion.pairwise.pairwise_head`) and the
    buffers of the masked variant."""
    modalities, pair_names = plan.modalities, plan.pair_names + plan.triple_names
    norms, blocks, factors = model.norms, model.head.blocks, model.factors
    unimodal_norms = [norms[m] for m in modalities]
    pair_norms = [norms[n] for n in pair_names]  # pairs, then triples
    means = [n.running_mean for n in unimodal_norms]
    counters = [n.num_batches_tracked for n in unimodal_norms + pair_norms]
    decay: list[Tensor] = []
    weights = [blocks[m].weight for m in modalities]
    if pair_names:
        iterbn = model.wick
        centerings = [factors.centering[m] for m in plan.factor_modalities]
        means += [c.running_mean for c in centerings]
        means += [getattr(iterbn, iterbn._buffer(t)) for t in plan.pairs + plan.triples]
        decay += [getattr(iterbn, iterbn._buffer((m,))) for m in plan.factor_modalities]
        decay += [n.running_mean for n in pair_norms]
        counters += [c.num_batches_tracked for c in centerings]
        counters.append(iterbn.num_batches_tracked)
        weights += [factors.projections[m].weight for m in plan.factor_modalities]
        weights += [blocks[n].weight for n in pair_names]
    sq_norms = [n.running_sq_norm for n in unimodal_norms + pair_norms]
    lerped = means + sq_norms + decay
    dtypes = {t.dtype for t in lerped}
    buffers = PairwiseBuffers(lerped, decay, counters, dtypes.pop() if len(dtypes) == 1 else None)
    num_f = len(plan.factor_modalities) if pair_names else 0
    counts = (len(modalities), num_f, len(plan.pairs), len(plan.triples))
    state = PairwiseState(
        pairwise_layout(modalities, plan.factor_modalities, plan.pairs, device, plan.triples),
        buffers,
        counts,
        model.head.bias,
        unimodal_norms[0].eps,
        plan.momentum,
    )
    single = [getattr(model.wick, model.wick._buffer((m,))) for m in plan.factor_modalities]
    masked = MaskedBuffers(
        [n.running_mean for n in unimodal_norms],
        [n.running_sq_norm for n in unimodal_norms],
        [factors.centering[m].running_mean for m in plan.factor_modalities] if pair_names else [],
        [getattr(model.wick, model.wick._buffer(t)) for t in plan.pairs],
        single if pair_names else [],
        [n.running_mean for n in pair_norms],
        [n.running_sq_norm for n in pair_norms],
        [n.num_batches_tracked for n in unimodal_norms],
        [factors.centering[m].num_batches_tracked for m in plan.factor_modalities]
        if pair_names
        else [],
        [model.wick.num_batches_tracked] if pair_names else [],
        [n.num_batches_tracked for n in pair_norms],
    )
    return state, weights, masked


def apply_updates(updates: tuple[list[Tensor], ...], momentum: float) -> None:
    """All running-statistics updates of a training step, in four foreach operations:
    ``running ← lerp(running, batch, momentum)`` for means and squared norms, ``running ←
    (1 − momentum)·running`` where the batch value is exactly 0, and ``count += 1``."""
    lerp_to, lerp_from, sq_norms, sq_values, decay, counters = updates
    with torch.no_grad():
        if lerp_to:
            torch._foreach_lerp_(lerp_to, _like(lerp_from, lerp_to), momentum)
        if sq_norms:
            torch._foreach_lerp_(sq_norms, _like(sq_values, sq_norms), momentum)
        if decay:
            torch._foreach_mul_(decay, 1.0 - momentum)
        if counters:
            torch._foreach_add_(counters, 1)


def wick_products(
    factors: Mapping[str, Tensor], terms: Sequence[Term], rank: int
) -> dict[Term, Tensor]:
    """``{term: :T_S:}`` of centred factors ``{m: (B, r)}`` with batch moments (orders ≤ 4).

    The fast path's Wick products on their own (what ``IterBN(terms, rank,
    centred_factors=True)`` returns in training), for tests and experiments.
    """
    names = list(factors)
    plan = FusionPlan(names, dict.fromkeys(names, rank), list(terms), names, rank)
    stacked = torch.stack([factors[m] for m in names])
    wick, centred, shifts, _ = wick_levels(plan, stacked, None)
    out: dict[Term, Tensor] = {}
    for level, x, is_centred, shift in zip(plan.levels, wick, centred, shifts):
        values = x if is_centred else x - shift.reshape(x.shape[0], 1, *x.shape[2:])
        for i in level.terms:
            out[level.subterms[i]] = values[i]
    return {tuple(t): out[tuple(t)] for t in terms}
