"""The whole fusion head of an order-≤ 3 model as one autograd Function (training, no masks).

For the common configuration — unimodal blocks of one width ``d`` plus pairwise interactions —
the stacked fast path of :mod:`interfuse.fusion.fast` still dispatches a few hundred small
operators per training step (one group per stack and stage, plus autograd's bookkeeping for every
intermediate), and at batch 256 their count, not their arithmetic, sets the time. Here the
forward pass and a hand-written backward pass of the whole head are one
:class:`torch.autograd.Function`, so autograd sees one node and the step dispatches a few dozen
operators. The values are the same as the module-by-module path's (to float rounding).
With presence masks (orders ≤ 2) :class:`_MaskedPairwiseHead` does the same with statistics
over present samples; it returns the blocks as outputs.

**Forward.** With the embeddings stacked, ``U ∈ R^{M×B×d}``, head blocks ``W_m ∈ R^{C×d}``,
projections ``P_m ∈ R^{r×d}`` and pairs ``q = (i_q, j_q)`` with head blocks ``V_q ∈ R^{C×r²}``:

    unimodal vBN     μ_m = E_b U_m,  s_m = (E_b‖U_m − μ_m‖² + ε)^{-1/2},  Z_m = s_m (U_m − μ_m)
    factors          G_m = U_m P_mᵀ − E_b[U_m P_mᵀ]                       (centred, E_b G_m = 0)
    pair (Wick)      X_q = G_i ⊗ G_j − E_b[G_i ⊗ G_j],   E_b[G_i ⊗ G_j] = G_iᵀ G_j / B
    pair vBN         σ_q = (E_b‖X_q‖² + ε)^{-1/2},  Y_q = σ_q X_q            (X_q has mean 0)
    head             ŷ = Σ_m Z_m W_mᵀ + Σ_q Y_q V_qᵀ + b

IterBN's corrections by single-factor means vanish (the factors are centred), so for a pair the
Wick product is the product minus its batch mean, and vBN need not centre it again. A triple
``S = (i, j, l)`` (its three pairs are terms too) is built from the pair blocks and moments:

    triple (Wick)    X_S = X_ij ⊗ G_l − E_il ⊗ G_j − E_jl ⊗ G_i − E[T_S],
                     E[T_S] = E_b[X_ij ⊗ G_l − E_il ⊗ G_j − E_jl ⊗ G_i]   (batch mean 0 of
                     every correction, as the factors are centred)

and goes through vBN and the head as the pairs do.

**Backward.** With ``g = ∂L/∂ŷ`` and its centred form ``ḡ = g − E_b g`` (the adjoint of every
batch centring above, applied once to the small ``(B, C)`` matrix instead of the blocks):

    ∂W_m = gᵀ Z_m,   ∂V_q = gᵀ Y_q,   ∂b = Σ_b g,
    ∂U_m |vBN = s_m (ḡ W_m − (⟨g, Z_m W_mᵀ⟩ / B) Z_m),
    ∂X_q = σ_q (ḡ V_q − (⟨g, Y_q V_qᵀ⟩ / B) Y_q)         (already centred: it is ∂(G_i ⊗ G_j)),
    ∂G_i += ∂X_q G_j (contracting j's axis),  ∂G_j += ∂X_qᵀ G_i,
    ∂(U P_mᵀ) = ∂G_m − E_b ∂G_m,   ∂P_m = ∂(U P_mᵀ)ᵀ U_m,   ∂U_m += ∂(U P_mᵀ) P_m.

With triples, ``∂X_S`` (centred, as ``∂X_q``) adds ``∂X_S · G_l`` to ``∂X_ij``, ``X_ijᵀ ∂X_S`` to
``∂G_l``, ``−∂X_S · E_il`` to ``∂G_j`` and ``−Σ_b ∂X_S · G_j`` to ``∂E_il`` (likewise for ``jl``,
``i``); ``∂X_ij`` is then centred again, and the moments' gradient reaches the factors through
``E_ij = G_iᵀ G_j / B``: ``∂G_i += ∂E_ij G_j / B``, ``∂G_j += ∂E_ijᵀ G_i / B``.

The inner products ``⟨g, Z_m W_mᵀ⟩`` come from the ``(·, B, C)`` head products kept from the
forward pass.

**Blocks on demand.** The blocks are not outputs of the Function (each output costs autograd
bookkeeping on every step, and training reads only the prediction): :class:`StepBlocks`
computes them with plain differentiable operations (:func:`pairwise_blocks`) when first read.

**Running statistics** are updated inside the forward pass with two foreach operations, as the
module path does: one lerp for the vBN means and unbiased squared norms, the factors' means, the
raw moments ``E[G_i ⊗ G_j]`` and ``E[T_S]``, and (towards an exact 0) the batch means of the
factors and of the interaction blocks; then ``num_batches_tracked += 1``.

Scope (else :func:`interfuse.fusion.fast.fast_fuse` runs its stacked path): training mode, no
presence masks, interaction orders ≤ 2, or 3 with the pairs of every triple among the terms and
a rank ≤ ``PAIRWISE_MAX_TRIPLE_RANK``, all embeddings of one width, eager mode (``plain``
operations are what ``torch.compile`` needs).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .precision import float32_backward

Rows = Tensor | slice | None
"""Rows of a stack: an index tensor, a contiguous range (a view, no copy) or ``None`` (all)."""


class PairwiseLayout(NamedTuple):
    """Which rows go where (built once per model structure, see :func:`pairwise_layout`).

    ``factor_rows``: rows of the embedding stack that have a projection; ``first``/``second``:
    rows of the factor stack that are the first and second factor of each pair.
    """

    factor_rows: Rows
    first: Rows
    second: Rows
    num_pairs: int
    t_i: Rows = None
    t_j: Rows = None
    t_l: Rows = None
    t_ij: Rows = None
    t_il: Rows = None
    t_jl: Rows = None


def rows_of(values: Sequence[int], size: int, device: torch.device) -> Rows:
    """The cheapest :data:`Rows` that select ``values`` from a stack of ``size`` rows."""
    values = list(values)
    if values == list(range(size)):
        return None
    if values and values == list(range(values[0], values[0] + len(values))):
        return slice(values[0], values[0] + len(values))
    return torch.tensor(values, dtype=torch.long, device=device)


def pairwise_layout(
    modalities: Sequence[str],
    factor_modalities: Sequence[str],
    pairs: Sequence[tuple[str, ...]],
    device: torch.device,
    triples: Sequence[tuple[str, ...]] = (),
) -> PairwiseLayout:
    """The :class:`PairwiseLayout` of a model's modalities, projected modalities, pairs and
    triples (every pair of a triple must be among ``pairs``: see :func:`closed_under_pairs`)."""
    position = {m: i for i, m in enumerate(factor_modalities)}
    pair_row = {p: i for i, p in enumerate(pairs)}
    num_f, num_q = len(factor_modalities), len(pairs)

    def factor_rows(k: int) -> Rows:
        return rows_of([position[t[k]] for t in triples], num_f, device)

    def pair_rows(k: int, n: int) -> Rows:
        return rows_of([pair_row[(t[k], t[n])] for t in triples], num_q, device)

    return PairwiseLayout(
        rows_of([list(modalities).index(m) for m in factor_modalities], len(modalities), device),
        rows_of([position[a] for a, _ in pairs], num_f, device),
        rows_of([position[b] for _, b in pairs], num_f, device),
        num_q,
        factor_rows(0),
        factor_rows(1),
        factor_rows(2),
        pair_rows(0, 1),
        pair_rows(0, 2),
        pair_rows(1, 2),
    )


def closed_under_pairs(terms: Sequence[tuple[str, ...]]) -> bool:
    """Whether every pair of every triple in ``terms`` is itself a term (as with
    ``interactions=3``): the layout :func:`pairwise_layout` needs."""
    pairs = {t for t in terms if len(t) == 2}
    return all(
        (t[0], t[1]) in pairs and (t[0], t[2]) in pairs and (t[1], t[2]) in pairs
        for t in terms
        if len(t) == 3
    )


class PairwiseBuffers(NamedTuple):
    """The running buffers one training step updates (see module doc).

    ``lerped``: every buffer moved towards its batch value, in this order: the vBN means of the
    M unimodal blocks, the factors' means, the raw pair moments ``(r, r)``, the vBN squared
    norms (unimodal, then pairs), then the ``decay`` buffers, whose batch value is exactly 0
    (IterBN's single-factor means, the pair blocks' vBN means); ``counters``:
    ``num_batches_tracked``.
    """

    lerped: list[Tensor]
    decay: list[Tensor]
    counters: list[Tensor]
    dtype: torch.dtype | None = None
    """The one dtype of all ``lerped`` buffers (``None``: mixed, converted per value)."""


def _gather(stack: Tensor, rows: Rows) -> Tensor:
    if rows is None:
        return stack
    if isinstance(rows, slice):
        return stack[rows]
    return stack.index_select(0, rows)


def _scatter_add(into: Tensor, rows: Rows, values: Tensor) -> Tensor:
    """The adjoint of :func:`_gather`, accumulated into ``into`` (in place)."""
    if rows is None:
        return into.add_(values)
    if isinstance(rows, slice):
        into[rows].add_(values)
        return into
    return into.index_add_(0, rows, values)


def _in_dtypes(
    values: Sequence[Tensor], targets: Sequence[Tensor], dtype: torch.dtype | None = None
) -> list[Tensor]:
    """``values`` in the dtypes of ``targets``; ``dtype``: the one dtype of all targets, if known
    (the values of one step share one dtype, so then one comparison decides)."""
    if dtype is not None and values and values[0].dtype == dtype:
        return list(values)
    if all(v.dtype == t.dtype for v, t in zip(values, targets)):
        return list(values)
    return [v.to(t.dtype) for v, t in zip(values, targets)]


def _update_running(buffers: PairwiseBuffers, ends: list[Tensor], momentum: float) -> None:
    """``running ← lerp(running, batch value, momentum)`` for every lerped buffer (in place), then
    ``num_batches_tracked += 1``: two foreach operations."""
    targets = buffers.lerped
    torch._foreach_lerp_(targets, _in_dtypes(ends, targets, buffers.dtype), momentum)
    torch._foreach_add_(buffers.counters, 1)


def _feature_major_grads(
    blocks: Tensor,
    weights: Tensor,
    scale: Tensor,
    part: Tensor,
    out_t: Tensor,
    centred_out_t: Tensor,
) -> tuple[Tensor, Tensor]:
    """``(∂V, ∂Xᵀ)`` of feature-major blocks ``Yᵀ = σ Xᵀ (N, F, B)`` (``X`` batch-centred) and
    their head ``VYᵀ``: ``∂Xᵀ = σ (Vᵀ ḡᵀ − (⟨g, Y Vᵀ⟩ / B) Yᵀ)`` — already centred, so it is
    also the gradient before the centring."""
    num, batch = blocks.shape[0], blocks.shape[2]
    dot = torch.mv(part.view(num, -1), out_t.view(-1))
    grad_w = torch.bmm(out_t.expand(num, -1, -1), blocks.transpose(1, 2))
    grad_x = blocks * (dot * (-1.0 / batch))[:, None, None]
    grad_x.baddbmm_(weights.transpose(1, 2), centred_out_t.expand(num, -1, -1))
    return grad_w, grad_x.mul_(scale[:, None, None])


class _PairwiseHead(torch.autograd.Function):
    """The whole head (see module doc). Inputs: a :class:`PairwiseState` (its buffers are
    updated in place), the bias (or ``None``), then the tensors ``U_1..U_M, W_1..W_M,
    P_1..P_{M_f}, V_1..V_Q, V'_1..V'_T``. Output: ``ŷ (B, C)``.

    The blocks are not outputs: each output costs autograd bookkeeping on every step, and
    training reads only the prediction (:class:`StepBlocks` computes them when read).
    Interaction blocks are kept feature-major (batch on the last, contiguous axis) because the
    outer products and their contractions broadcast over ``r`` and run along the batch: with
    the batch innermost they are 2–5× faster than with ``(B, r, r)`` blocks.
    """

    @staticmethod
    def forward(ctx, state, bias, *tensors):  # noqa: D102
        num_m, num_f, num_q, num_t = state.counts
        u = torch.stack(tensors[:num_m])  # (M, B, d)
        w = torch.stack(tensors[num_m : 2 * num_m])  # (M, C, d)
        batch = u.shape[1]
        eps = state.eps
        # unimodal vBN + head, batch-major
        mean_u = u.mean(dim=1, keepdim=True)
        z = u - mean_u
        sq = [torch.linalg.vector_norm(z.view(num_m, -1), dim=1).square_().div_(batch)]
        scale_u = (sq[0] + eps).rsqrt_()
        z.mul_(scale_u[:, None, None])
        part_u = torch.bmm(z, w.transpose(1, 2))  # (M, B, C)
        out = part_u.sum(dim=0)
        rows = list(mean_u.squeeze(1).unbind(0))
        saved: tuple[Tensor, ...] = (z, w, scale_u, part_u)
        if num_q:
            start = 2 * num_m
            proj = torch.stack(tensors[start : start + num_f])  # (M_f, r, d)
            v = torch.stack(tensors[start + num_f : start + num_f + num_q])  # (Q, C, r²)
            layout = state.layout
            u_f = _gather(u, layout.factor_rows)
            g = torch.bmm(proj, u_f.transpose(1, 2))  # Gᵀ, (M_f, r, B)
            mean_g = g.mean(dim=2, keepdim=True)
            g.sub_(mean_g)
            rank = g.shape[1]
            a = _gather(g, layout.first)  # (Q, r, B)
            b = _gather(g, layout.second)
            moment = torch.bmm(a, b.transpose(1, 2)).div_(batch)  # E[G_i ⊗ G_j], (Q, r, r)
            x = torch.mul(a[:, :, None, :], b[:, None, :, :]).sub_(moment[:, :, :, None])
            x = x.view(num_q, rank * rank, batch)
            sq.append(torch.linalg.vector_norm(x, dim=(1, 2)).square_().div_(batch))
            rows += [*mean_g.squeeze(2).unbind(0), *moment.unbind(0)]
            if num_t:
                v3 = torch.stack(tensors[start + num_f + num_q :])  # (T, C, r³)
                x3, raw_moment = _triples(layout, g, x.view(num_q, rank, rank, batch), moment)
                sq.append(torch.linalg.vector_norm(x3, dim=(1, 2)).square_().div_(batch))
                rows += list(raw_moment.unbind(0))
            scales = (torch.cat(sq[1:]) + eps).rsqrt_() if num_t else (sq[1] + eps).rsqrt_()
            scale_p = scales[:num_q]
            # with triples, X is kept for their backward pass and the pair blocks are new
            y = x * scale_p[:, None, None] if num_t else x.mul_(scale_p[:, None, None])
            part_p = torch.bmm(v, y)  # (Q, C, B)
            out.add_(part_p.sum(dim=0).t())
            saved = (u, mean_u, w, scale_u, part_u, u_f, proj, g, v, scale_p, part_p)
            if num_t:
                scale_t = scales[num_q:]
                y3 = x3.mul_(scale_t[:, None, None])
                part_t = torch.bmm(v3, y3)  # (T, C, B)
                out.add_(part_t.sum(dim=0).t())
                # X is kept (the triples' backward needs it) and Y = σX recomputed, not both;
                # Z = s (U − μ) is recomputed too (memory)
                saved += (x, moment, y3, v3, scale_t, part_t)
            else:
                saved += (y, z)
        if bias is not None:
            out.add_(bias)
        # running statistics: lerp of means, unbiased squared norms and decays (towards an
        # exact 0), then the counters
        buffers = state.buffers
        unbiased = (torch.cat(sq) if num_q else sq[0]).mul_(batch / (batch - 1))
        ends = rows + list(unbiased.unbind(0))
        if buffers.decay:
            ends += [unbiased.new_zeros(())] * len(buffers.decay)
        _update_running(buffers, ends, state.momentum)

        ctx.counts = state.counts
        ctx.layout = state.layout
        ctx.has_bias = bias is not None
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*saved)
        return out

    @staticmethod
    @float32_backward
    def backward(ctx, grad_out):  # noqa: D102
        if torch.is_grad_enabled():  # create_graph=True: first derivatives only
            return _pairwise_backward_once(ctx, grad_out)
        return _pairwise_backward(ctx, grad_out)


def _pairwise_backward(ctx, grad_out: Tensor | None) -> tuple:
    """The backward pass of :class:`_PairwiseHead` (see module doc): gradients of ``(state,
    bias, U.., W.., P.., V.., V'..)``."""
    num_m, num_f, num_q, num_t = ctx.counts
    if grad_out is None:  # an undefined gradient (zero)
        return (None,) * (2 + 2 * num_m + num_f + num_q + num_t)
    saved = ctx.saved_tensors
    layout: PairwiseLayout = ctx.layout
    if num_q:
        u, mean_u, w, scale_u, part_u, u_f, proj, g, v, scale_p, part_p, *rest = saved
        if num_t:
            x, moment, y3, v3, scale_t, part_t = rest
            z = (u - mean_u).mul_(scale_u[:, None, None])
            y = x * scale_p[:, None, None]
        else:
            y, z = rest
    else:
        z, w, scale_u, part_u = saved
    batch = z.shape[1]
    grad_out = grad_out.contiguous()
    centred_out = grad_out - grad_out.mean(dim=0, keepdim=True)
    grad_bias = grad_out.sum(dim=0) if ctx.has_bias else None

    # unimodal, batch-major: ∂U = s (ḡ W − (⟨g, Z Wᵀ⟩ / B) Z)
    dot = torch.mv(part_u.view(num_m, -1), grad_out.view(-1))
    grad_w = torch.bmm(grad_out.t().expand(num_m, -1, -1), z)
    grad_u = z * (dot * (-1.0 / batch))[:, None, None]
    grad_u.baddbmm_(centred_out.expand(num_m, -1, -1), w)
    grad_u.mul_(scale_u[:, None, None])
    grads_p: tuple[Tensor, ...] = ()
    grads_v: tuple[Tensor, ...] = ()
    if num_q:
        out_t = grad_out.t().contiguous()
        centred_t = centred_out.t()
        grad_v, grad_x = _feature_major_grads(y, v, scale_p, part_p, out_t, centred_t)
        rank = g.shape[1]
        grad_x = grad_x.view(num_q, rank, rank, batch)
        grad_g = torch.zeros_like(g)
        grad_moment = None
        grads_v = tuple(grad_v.unbind(0))
        if num_t:
            grad_v3, grad_x3 = _feature_major_grads(y3, v3, scale_t, part_t, out_t, centred_t)
            grad_moment = _triples_backward(
                layout, grad_x3, g, x.view(num_q, rank, rank, batch), moment, grad_x, grad_g
            )
            grad_x.sub_(grad_x.mean(dim=3, keepdim=True))  # the triples' part is not centred
            grads_v += tuple(grad_v3.unbind(0))
        a = _gather(g, layout.first)
        b = _gather(g, layout.second)
        grad_a = (grad_x * b[:, None, :, :]).sum(dim=2)
        grad_b = (grad_x * a[:, :, None, :]).sum(dim=1)
        if grad_moment is not None:  # E = G_i G_jᵀ / B read directly by the triples
            grad_a.baddbmm_(grad_moment, b, alpha=1.0 / batch)
            grad_b.baddbmm_(grad_moment.transpose(1, 2), a, alpha=1.0 / batch)
        _scatter_add(grad_g, layout.first, grad_a)
        _scatter_add(grad_g, layout.second, grad_b)
        grad_g.sub_(grad_g.mean(dim=2, keepdim=True))
        grads_p = tuple(torch.bmm(grad_g, u_f).unbind(0))
        _scatter_add(grad_u, layout.factor_rows, torch.bmm(grad_g.transpose(1, 2), proj))
    return (None, grad_bias, *grad_u.unbind(0), *grad_w.unbind(0), *grads_p, *grads_v)


_pairwise_backward_once = once_differentiable(_pairwise_backward)
""":func:`_pairwise_backward` under ``create_graph=True``: its gradients are not differentiable
again (a second derivative raises), as with ``once_differentiable``; the guard costs a step
nothing otherwise."""


def _triples(layout: PairwiseLayout, g: Tensor, x: Tensor, moment: Tensor) -> tuple[Tensor, Tensor]:
    """``(:T_S:ᵀ (T, r³, B), E[T_S] (T, r, r, r))`` for the triples ``S = (i, j, l)``.

    With centred factors, ``:T_S: = X_ij ⊗ g_l − E_il ⊗ g_j − E_jl ⊗ g_i − E[T_S]`` (the pair
    Wick blocks ``X`` and moments ``E`` of the pairs level), and in training
    ``E[T_S] = E_b[X_ij ⊗ g_l − …]``: every correction has batch mean 0.
    """
    x_ij = _gather(x, layout.t_ij)  # (T, r, r, B)
    g_i, g_j, g_l = (_gather(g, rows) for rows in (layout.t_i, layout.t_j, layout.t_l))
    e_il, e_jl = _gather(moment, layout.t_il), _gather(moment, layout.t_jl)
    t3 = torch.mul(x_ij[:, :, :, None, :], g_l[:, None, None, :, :])  # (T, r, r, r, B)
    t3.addcmul_(e_il[:, :, None, :, None], g_j[:, None, :, None, :], value=-1)
    t3.addcmul_(e_jl[:, None, :, :, None], g_i[:, :, None, None, :], value=-1)
    raw_moment = t3.mean(dim=4, keepdim=True)
    t3.sub_(raw_moment)
    num, rank, batch = t3.shape[0], t3.shape[1], t3.shape[4]
    return t3.view(num, rank**3, batch), raw_moment.squeeze(4)


def _triples_backward(
    layout: PairwiseLayout,
    grad_x3: Tensor,
    g: Tensor,
    x: Tensor,
    moment: Tensor,
    grad_x: Tensor,
    grad_g: Tensor,
) -> Tensor:
    """Adds the triples' gradient into ``grad_x`` (pair blocks) and ``grad_g`` (factors) and
    returns the gradient of the pair moments ``E`` they read (see :func:`_triples`; ``grad_x3``
    is centred, so the subtraction of ``E[T_S]`` passes it through)."""
    num, batch = grad_x3.shape[0], grad_x3.shape[2]
    rank = g.shape[1]
    gt = grad_x3.view(num, rank, rank, rank, batch)
    x_ij = _gather(x, layout.t_ij)
    g_i, g_j, g_l = (_gather(g, rows) for rows in (layout.t_i, layout.t_j, layout.t_l))
    e_il, e_jl = _gather(moment, layout.t_il), _gather(moment, layout.t_jl)
    _scatter_add(grad_x, layout.t_ij, (gt * g_l[:, None, None, :, :]).sum(dim=3))
    _scatter_add(grad_g, layout.t_l, (gt * x_ij[:, :, :, None, :]).sum(dim=(1, 2)))
    _scatter_add(grad_g, layout.t_j, (gt * e_il[:, :, None, :, None]).sum(dim=(1, 3)).neg_())
    _scatter_add(grad_g, layout.t_i, (gt * e_jl[:, None, :, :, None]).sum(dim=(2, 3)).neg_())
    grad_moment = torch.zeros_like(moment)
    _scatter_add(grad_moment, layout.t_il, (gt * g_j[:, None, :, None, :]).sum(dim=(2, 4)).neg_())
    _scatter_add(grad_moment, layout.t_jl, (gt * g_i[:, :, None, None, :]).sum(dim=(1, 4)).neg_())
    return grad_moment


class PairwiseState(NamedTuple):
    """Everything of the model that one step reads besides the tensors it differentiates:
    the layout, the buffers it updates, ``counts = (M, M_f, Q, T)`` (``M_f = 0`` when
    ``Q = 0``),
    the head's bias (or ``None``), vBN's ``eps`` and the momentum of every running statistic."""

    layout: PairwiseLayout
    buffers: PairwiseBuffers
    counts: tuple[int, int, int, int]
    bias: Tensor | None
    eps: float
    momentum: float


class PairwiseOutput(NamedTuple):
    """``prediction (B, C)``, unimodal blocks ``(M, B, d)``, pair blocks ``(Q, B, r²)`` and
    triple blocks ``(T, B, r³)`` (the last two are transposed views of feature-major stacks)."""

    prediction: Tensor
    unimodal: Tensor
    pairs: Tensor
    triples: Tensor


def _check_tensors(state: PairwiseState, tensors: Sequence[Tensor]) -> None:
    num_m, num_f, num_q, num_t = state.counts
    expected = 2 * num_m + num_f + num_q + num_t
    if len(tensors) != expected:
        raise ValueError(
            f"pairwise_head: counts {state.counts} need {expected} tensors (embeddings, "
            f"unimodal weights, projections, pair and triple weights), got {len(tensors)}; "
            f"rebuild the state for this model"
        )
    batch = tensors[0].shape[0]
    if batch < 2:
        raise ValueError(
            f"the fusion head needs a batch of at least 2 samples in training mode (it uses "
            f"batch statistics), got {batch}; use a larger batch or call model.eval()"
        )


def pairwise_head(state: PairwiseState, tensors: Sequence[Tensor]) -> Tensor:
    """One training step of the head (see module doc): the prediction ``(B, C)``; updates
    ``state.buffers`` in place.

    ``tensors``: ``U_1..U_M, W_1..W_M`` then, with interactions, ``P_1..P_{M_f}``, the pair
    weights ``V_1..V_Q`` and the triple weights ``V'_1..V'_T``. The blocks are computed on
    demand by :func:`pairwise_blocks`.
    """
    _check_tensors(state, tensors)
    return _PairwiseHead.apply(state, state.bias, *tensors)


def pairwise_blocks(state: PairwiseState, tensors: Sequence[Tensor]) -> list[Tensor]:
    """The blocks of :func:`pairwise_head`'s step, in stack order (unimodal ``(B, d)``, pairs
    ``(B, r²)``, triples ``(B, r³)``), from the same ``tensors``, with plain differentiable
    operations and no update of running statistics: the same values as the head computes (to
    float rounding), and gradients that flow back to the embeddings and projections."""
    _check_tensors(state, tensors)
    num_m, num_f, num_q, num_t = state.counts
    u = torch.stack(list(tensors[:num_m]))
    batch, eps = u.shape[1], state.eps

    def vbn(x: Tensor) -> Tensor:  # a stack of blocks already centred along the batch
        sq = x.square().sum(dim=(1, 2)) / batch
        return x * (sq + eps).rsqrt()[:, None, None]

    blocks = list(vbn(u - u.mean(dim=1, keepdim=True)).unbind(0))
    if num_q:
        layout = state.layout
        proj = torch.stack(list(tensors[2 * num_m : 2 * num_m + num_f]))
        g = torch.bmm(proj, _gather(u, layout.factor_rows).transpose(1, 2))
        g = g - g.mean(dim=2, keepdim=True)
        rank = g.shape[1]
        a, b = _gather(g, layout.first), _gather(g, layout.second)
        moment = torch.bmm(a, b.transpose(1, 2)) / batch
        x = a[:, :, None, :] * b[:, None, :, :] - moment[:, :, :, None]
        blocks += vbn(x.reshape(num_q, rank * rank, batch)).transpose(1, 2).unbind(0)
        if num_t:
            x3, _ = _triples(layout, g, x, moment)
            blocks += vbn(x3).transpose(1, 2).unbind(0)
    return blocks


class StepBlocks(Mapping[str, Tensor]):
    """The blocks ``{term name: (B, D_t)}`` of one training step of the one-Function head,
    computed when first read (:func:`pairwise_blocks`), in the head's term order.

    Training reads only the prediction, so the step does not pay for returning blocks. Reading
    them computes all of them once, from the step's embeddings and projections, with the grad
    and inference modes of the step (not those of the first read); gradients flow back to
    those tensors as for blocks returned by the head. If any of those tensors was modified in
    place since the step (an ``optimizer.step()`` changes the projections), the blocks can no
    longer be computed and reading one raises ``RuntimeError``: read ``output.blocks`` before
    changing them.
    """

    def __init__(
        self,
        index: Mapping[str, int],
        state: PairwiseState,
        tensors: Sequence[Tensor],
        watched: Sequence[Tensor],
    ) -> None:
        self._index = index
        self._state = state
        self._tensors = tuple(tensors)
        self._watched = [(t, t._version) for t in watched]
        self._grad = torch.is_grad_enabled()
        self._inference = torch.is_inference_mode_enabled()
        self._values: list[Tensor] | None = None

    def _computed(self) -> list[Tensor]:
        if self._values is None:
            if any(t._version != version for t, version in self._watched):
                raise RuntimeError(
                    "the fusion blocks of this training step are computed when first read, "
                    "from its embeddings and the model's projections, and one of these was "
                    "modified in place since the step (e.g. by optimizer.step()); read "
                    "`output.blocks` before modifying them"
                )
            device = self._tensors[0].device.type
            with (
                torch.inference_mode(self._inference),
                torch.set_grad_enabled(self._grad),
                torch.autocast(device, enabled=False),
            ):
                self._values = pairwise_blocks(self._state, self._tensors)
        return self._values

    def __getitem__(self, name: str) -> Tensor:
        return self._computed()[self._index[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        state = "computed" if self._values is not None else "computed when first read"
        return f"StepBlocks({list(self._index)}, {state})"


# --------------------------------------------------------------------------- presence masks


class MaskedBuffers(NamedTuple):
    """The running statistics a masked step reads where a block has fewer than 2 present
    samples (and updates where it has more), one list per kind, in stack order: vBN means and
    squared norms of the unimodal blocks, the factors' centring means, IterBN's pair moments and
    single-factor means, the pair blocks' vBN means and squared norms; the counters of the
    unimodal vBNs, of the centrings, of IterBN (one) and of the pair vBNs."""

    unimodal_mean: list[Tensor]
    unimodal_sq: list[Tensor]
    factor_mean: list[Tensor]
    pair_moment: list[Tensor]
    single_moment: list[Tensor]
    pair_mean: list[Tensor]
    pair_sq: list[Tensor]
    unimodal_count: list[Tensor]
    factor_count: list[Tensor]
    iterbn_count: list[Tensor]
    pair_count: list[Tensor]


def _masked_weights(present: Tensor) -> tuple[Tensor, Tensor, list[bool], Tensor]:
    """``(w = p / n, n, ok, usable)`` of a ``(Q, B)`` presence stack; ``ok[q]``: ``n_q ≥ 2``
    (batch statistics), ``usable`` the same as a ``(Q,)`` 0/1 tensor."""
    counts = present.sum(dim=1)
    ok = (counts >= 2).tolist()
    weights = present / counts.clamp(min=1)[:, None]
    return weights, counts, ok, (counts >= 2).to(present.dtype)


def _pick(ok: list[bool], usable: Tensor, batch_value: Tensor, running: list[Tensor]) -> Tensor:
    """Per row: the batch statistic where ``ok``, else the running one (stacked, same shape)."""
    if all(ok):
        return batch_value
    stacked = torch.stack(running).to(batch_value.dtype).view(batch_value.shape)
    keep = usable.view(-1, *([1] * (batch_value.dim() - 1))) > 0
    return torch.where(keep, batch_value, stacked)


class _MaskedPairwiseHead(torch.autograd.Function):
    """:class:`_PairwiseHead` (orders ≤ 2) with presence masks ``p_n ∈ {0, 1}`` per modality.

    Every statistic is a mean over the samples where the block's modalities are present
    (``w_n = p_n / n``); a block with ``n < 2`` uses its running statistics instead (and does not
    update them); absent rows of every block are 0. For a block ``z_n = p_n s (x_n − μ)``, with
    ``ḡ_w = Σ_n w_n g_n`` and ``D = ⟨g, Z Wᵀ⟩``,

        ∂x_n = s (p_n (g_n − ḡ_w) W − (D / n) z_n)      (n ≥ 2; else s p_n g_n W),

    the adjoint of the masked centring and scale. The pair blocks ``X = G_i ⊗ G_j − E_ij`` with
    ``E_ij = Σ_n w_n G_i,n ⊗ G_j,n`` have masked mean exactly 0, and their gradient sums to 0
    under ``w``, so it is also the gradient of ``G_i ⊗ G_j`` (as without masks). The factors'
    masked centring gives ``∂(U Pᵀ)_n = ∂G_n − w_n Σ_m ∂G_m``.
    """

    @staticmethod
    def forward(ctx, state, buffers, present, bias, *tensors):  # noqa: D102
        num_m, num_f, num_q, _ = state.counts
        layout = state.layout
        u = torch.stack(tensors[:num_m])  # (M, B, d)
        w = torch.stack(tensors[num_m : 2 * num_m])
        batch = u.shape[1]
        eps = state.eps
        p_u = present.to(u.dtype)  # (M, B)
        w_u, n_u, ok_u, use_u = _masked_weights(p_u)
        mean_u = _pick(ok_u, use_u, torch.bmm(w_u[:, None, :], u), buffers.unimodal_mean)
        c = u - mean_u
        sq_u = (torch.linalg.vector_norm(c, dim=2).square_() * w_u).sum(dim=1)
        sq_u = _pick(ok_u, use_u, sq_u, buffers.unimodal_sq)
        scale_u = (sq_u + eps).rsqrt_()
        z = c.mul_((p_u * scale_u[:, None])[:, :, None])
        part_u = torch.bmm(z, w.transpose(1, 2))
        out = part_u.sum(dim=0)
        saved: list[Tensor | None] = [None] * 12
        y = u.new_zeros(0, 0, batch)
        pending = [(buffers.unimodal_mean, mean_u.squeeze(1), ok_u)]
        pending.append((buffers.unimodal_sq, sq_u * n_u / (n_u - 1).clamp(min=1), ok_u))
        counters = [t for t, ok in zip(buffers.unimodal_count, ok_u) if ok]
        decays: list[Tensor] = []
        if num_q:
            start = 2 * num_m
            proj = torch.stack(tensors[start : start + num_f])
            v = torch.stack(tensors[start + num_f :])
            u_f = _gather(u, layout.factor_rows)
            p_f = _gather(p_u, layout.factor_rows)
            w_f, _, ok_f, use_f = _masked_weights(p_f)
            g = torch.bmm(proj, u_f.transpose(1, 2))  # (M_f, r, B)
            mean_g = _pick(ok_f, use_f, torch.bmm(g, w_f[:, :, None]), buffers.factor_mean)
            g.sub_(mean_g)
            rank = g.shape[1]
            a, b = _gather(g, layout.first), _gather(g, layout.second)
            p_q = _gather(p_f, layout.first) * _gather(p_f, layout.second)  # (Q, B)
            w_q, n_q, ok_q, use_q = _masked_weights(p_q)
            moment = _pick(
                ok_q, use_q, torch.bmm(a * w_q[:, None, :], b.transpose(1, 2)), buffers.pair_moment
            )
            x = torch.mul(a[:, :, None, :], b[:, None, :, :]).sub_(moment[:, :, :, None])
            x = x.view(num_q, rank * rank, batch)
            if not all(ok_q):  # running vBN means where the batch has < 2 samples (else 0)
                running = torch.stack(buffers.pair_mean).to(x.dtype)[:, :, None]
                x.sub_(running * (1 - use_q)[:, None, None])
            sq_q = (x.square() * w_q[:, None, :]).sum(dim=(1, 2))
            sq_q = _pick(ok_q, use_q, sq_q, buffers.pair_sq)
            scale_q = (sq_q + eps).rsqrt_()
            y = x.mul_((p_q * scale_q[:, None])[:, None, :])
            part_p = torch.bmm(v, y)
            out.add_(part_p.sum(dim=0).t())
            saved = [u_f, proj, g, y, v, scale_q, part_p, p_f, w_f, use_f, p_q, w_q]
            saved += [n_q, use_q]
            pending += [
                (buffers.factor_mean, mean_g.squeeze(2), ok_f),
                (buffers.pair_moment, moment, ok_q),
                (buffers.pair_sq, sq_q * n_q / (n_q - 1).clamp(min=1), ok_q),
            ]
            counters += [t for t, ok in zip(buffers.factor_count, ok_f) if ok]
            counters += list(buffers.iterbn_count)
            counters += [t for t, ok in zip(buffers.pair_count, ok_q) if ok]
            decays += [t for t, ok in zip(buffers.single_moment, ok_f) if ok]
            decays += [t for t, ok in zip(buffers.pair_mean, ok_q) if ok]
        else:
            saved += [None, None]
        if bias is not None:
            out.add_(bias)
        targets: list[Tensor] = []
        ends: list[Tensor] = []
        for buffer_list, values, oks in pending:
            rows = values.unbind(0)
            targets += [t for t, ok in zip(buffer_list, oks) if ok]
            ends += [r for r, ok in zip(rows, oks) if ok]
        if decays:
            zero = out.new_zeros(())
            targets += decays
            ends += [zero] * len(decays)
        if targets:
            torch._foreach_lerp_(targets, _in_dtypes(ends, targets), state.momentum)
        if counters:
            torch._foreach_add_(counters, 1)

        ctx.counts = state.counts
        ctx.layout = layout
        ctx.has_bias = bias is not None
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(u, w, z, scale_u, part_u, p_u, w_u, n_u, use_u, *saved)
        return out, z, y

    @staticmethod
    @float32_backward
    @once_differentiable
    def backward(ctx, grad_out, grad_z, grad_y):  # noqa: D102
        u, w, z, scale_u, part_u, p_u, w_u, n_u, use_u, *rest = ctx.saved_tensors
        u_f, proj, g, y, v, scale_q, part_p, p_f, w_f, use_f, p_q, w_q, n_q, use_q = rest
        num_m, _, num_q, _ = ctx.counts
        layout: PairwiseLayout = ctx.layout
        batch = u.shape[1]
        head_reached = grad_out is not None  # else the loss reads the blocks only
        if grad_out is None:
            grad_out = part_u.new_zeros(batch, w.shape[1])
        grad_out = grad_out.contiguous()
        grad_bias = grad_out.sum(dim=0) if ctx.has_bias and head_reached else None

        def grads(blocks, weights, scale, part, grad_blocks, p, wts, n, usable, feature_major):
            """``(∂W, ∂x)`` of masked vBN blocks and their head (see the class doc)."""
            num = blocks.shape[0]
            expanded = grad_out.expand(num, -1, -1)  # (N, B, C)
            flat_out = grad_out.t().contiguous() if feature_major else grad_out
            dot = torch.mv(part.view(num, -1), flat_out.view(-1))
            if grad_blocks is not None:
                dot = dot + (grad_blocks * blocks).sum(dim=(1, 2))
            mean_out = torch.bmm(wts[:, None, :], expanded) * usable[:, None, None]  # (N, 1, C)
            centred = (expanded - mean_out) * p[:, :, None]  # (N, B, C)
            coef = -(usable * dot / n.clamp(min=1))[:, None, None]
            if feature_major:  # blocks (N, F, B)
                grad_w = torch.bmm(expanded.transpose(1, 2), blocks.transpose(1, 2))
                grad_x = torch.baddbmm(
                    blocks * coef, weights.transpose(1, 2), centred.transpose(1, 2)
                )
                if grad_blocks is not None:
                    mean_g = (grad_blocks * wts[:, None, :]).sum(dim=2, keepdim=True)
                    grad_x.add_((grad_blocks - mean_g * usable[:, None, None]) * p[:, None, :])
            else:  # blocks (N, B, F)
                grad_w = torch.bmm(expanded.transpose(1, 2), blocks)
                grad_x = torch.baddbmm(blocks * coef, centred, weights)
                if grad_blocks is not None:
                    mean_g = torch.bmm(wts[:, None, :], grad_blocks)
                    grad_x.add_((grad_blocks - mean_g * usable[:, None, None]) * p[:, :, None])
            return grad_w, grad_x.mul_(scale[:, None, None])

        grad_w, grad_u = grads(z, w, scale_u, part_u, grad_z, p_u, w_u, n_u, use_u, False)
        grads_p: tuple[Tensor, ...] = ()
        grads_v: tuple[Tensor, ...] = ()
        if num_q:
            grad_v, grad_x = grads(y, v, scale_q, part_p, grad_y, p_q, w_q, n_q, use_q, True)
            rank = g.shape[1]
            grad_x = grad_x.view(num_q, rank, rank, batch)
            a, b = _gather(g, layout.first), _gather(g, layout.second)
            grad_g = torch.zeros_like(g)
            _scatter_add(grad_g, layout.first, (grad_x * b[:, None, :, :]).sum(dim=2))
            _scatter_add(grad_g, layout.second, (grad_x * a[:, :, None, :]).sum(dim=1))
            # the masked centring's adjoint: ∂(U Pᵀ)_n = ∂G_n − w_n Σ_m ∂G_m
            total = grad_g.sum(dim=2, keepdim=True) * use_f[:, None, None]
            grad_g.sub_(total * w_f[:, None, :])
            grads_p = tuple(torch.bmm(grad_g, u_f).unbind(0))
            _scatter_add(grad_u, layout.factor_rows, torch.bmm(grad_g.transpose(1, 2), proj))
            grads_v = tuple(grad_v.unbind(0))
        return (
            None,
            None,
            None,
            grad_bias,
            *grad_u.unbind(0),
            *(grad_w.unbind(0) if head_reached else [None] * num_m),
            *grads_p,
            *(grads_v if head_reached else [None] * len(grads_v)),
        )


def masked_pairwise_head(
    state: PairwiseState, buffers: MaskedBuffers, present: Tensor, tensors: Sequence[Tensor]
) -> PairwiseOutput:
    """:func:`pairwise_head` with presence masks ``present (M, B)`` (bool, one row per
    modality), orders ≤ 2; updates the buffers of the blocks with ≥ 2 present samples."""
    num_m, num_f, num_q, num_t = state.counts
    if num_t or len(tensors) != 2 * num_m + num_f + num_q or present.shape[0] != num_m:
        raise ValueError(
            f"masked_pairwise_head: counts {state.counts} (no triples) need "
            f"{2 * num_m + num_f + num_q} tensors and a presence stack of {num_m} rows, got "
            f"{len(tensors)} tensors and {tuple(present.shape)}; rebuild the state for this model"
        )
    prediction, unimodal, pairs = _MaskedPairwiseHead.apply(
        state, buffers, present, state.bias, *tensors
    )
    empty = pairs.new_zeros(0, pairs.shape[2], 0)
    return PairwiseOutput(prediction, unimodal, pairs.transpose(1, 2), empty)
