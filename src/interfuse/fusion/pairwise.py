"""The whole fusion head of an order-≤ 2 model as one autograd Function (training, no masks).

For the common configuration — unimodal blocks of one width ``d`` plus pairwise interactions —
the stacked fast path of :mod:`interfuse.fusion.fast` still dispatches a few hundred small
operators per training step (one group per stack and stage, plus autograd's bookkeeping for every
intermediate), and at batch 256 their count, not their arithmetic, sets the time. Here the
forward pass and a hand-written backward pass of the whole head are one
:class:`torch.autograd.Function`, so autograd sees one node and the step dispatches a few dozen
operators. The values are the same as the module-by-module path's (to float rounding).

**Forward.** With the embeddings stacked, ``U ∈ R^{M×B×d}``, head blocks ``W_m ∈ R^{C×d}``,
projections ``P_m ∈ R^{r×d}`` and pairs ``q = (i_q, j_q)`` with head blocks ``V_q ∈ R^{C×r²}``:

    unimodal vBN     μ_m = E_b U_m,  s_m = (E_b‖U_m − μ_m‖² + ε)^{-1/2},  Z_m = s_m (U_m − μ_m)
    factors          G_m = U_m P_mᵀ − E_b[U_m P_mᵀ]                       (centred, E_b G_m = 0)
    pair (Wick)      X_q = G_i ⊗ G_j − E_b[G_i ⊗ G_j],   E_b[G_i ⊗ G_j] = G_iᵀ G_j / B
    pair vBN         σ_q = (E_b‖X_q‖² + ε)^{-1/2},  Y_q = σ_q X_q            (X_q has mean 0)
    head             ŷ = Σ_m Z_m W_mᵀ + Σ_q Y_q V_qᵀ + b

IterBN's corrections by single-factor means vanish (the factors are centred), so for a pair the
Wick product is the product minus its batch mean, and vBN need not centre it again.

**Backward.** With ``g = ∂L/∂ŷ`` and its centred form ``ḡ = g − E_b g`` (the adjoint of every
batch centring above, applied once to the small ``(B, C)`` matrix instead of the blocks):

    ∂W_m = gᵀ Z_m,   ∂V_q = gᵀ Y_q,   ∂b = Σ_b g,
    ∂U_m |vBN = s_m (ḡ W_m − (⟨g, Z_m W_mᵀ⟩ / B) Z_m),
    ∂X_q = σ_q (ḡ V_q − (⟨g, Y_q V_qᵀ⟩ / B) Y_q)         (already centred: it is ∂(G_i ⊗ G_j)),
    ∂G_i += ∂X_q G_j (contracting j's axis),  ∂G_j += ∂X_qᵀ G_i,
    ∂(U P_mᵀ) = ∂G_m − E_b ∂G_m,   ∂P_m = ∂(U P_mᵀ)ᵀ U_m,   ∂U_m += ∂(U P_mᵀ) P_m.

The inner products ``⟨g, Z_m W_mᵀ⟩`` come from the ``(·, B, C)`` head products kept from the
forward pass. Gradients that reach the returned blocks directly (``∂L/∂Z``, ``∂L/∂Y``, e.g. an
explanation loss) enter as ``g W`` does, centred, and add to the inner products.

**Running statistics** are updated inside the forward pass with four foreach operations, exactly
as the module path does: lerp of the vBN means and unbiased squared norms, of the factors' means
and of the raw pair moments ``E[G_i ⊗ G_j]``; decay of the (zero) batch means of the factors and of
the pair blocks; ``num_batches_tracked += 1``.

Scope (else :func:`interfuse.fusion.fast.fast_fuse` runs its stacked path): training mode, no
presence masks, interaction orders ≤ 2, all embeddings of one width, eager mode (``plain``
operations are what ``torch.compile`` needs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

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
    pairs: Sequence[tuple[str, str]],
    device: torch.device,
) -> PairwiseLayout:
    """The :class:`PairwiseLayout` of a model's modalities, projected modalities and pairs."""
    position = {m: i for i, m in enumerate(factor_modalities)}
    num_f = len(factor_modalities)
    return PairwiseLayout(
        rows_of([list(modalities).index(m) for m in factor_modalities], len(modalities), device),
        rows_of([position[a] for a, _ in pairs], num_f, device),
        rows_of([position[b] for _, b in pairs], num_f, device),
        len(pairs),
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


def _in_dtypes(values: Sequence[Tensor], targets: Sequence[Tensor]) -> list[Tensor]:
    if all(v.dtype == t.dtype for v, t in zip(values, targets)):
        return list(values)
    return [v.to(t.dtype) for v, t in zip(values, targets)]


class _PairwiseHead(torch.autograd.Function):
    """The whole head (see module doc). Inputs: a :class:`PairwiseState` (its buffers are
    updated in place), the bias (or ``None``), then the tensors ``U_1..U_M, W_1..W_M,
    P_1..P_{M_f}, V_1..V_Q``. Outputs: ``ŷ (B, C)``, ``Z (M, B, d)`` and the pair blocks
    feature-major, ``Yᵀ (Q, r², B)`` (an empty ``(0, 0, B)`` tensor when ``Q = 0``).

    The pair blocks are kept feature-major (batch on the last, contiguous axis) because the
    outer product ``G_i ⊗ G_j`` and its contractions broadcast over ``r`` and run along the
    batch: with the batch innermost they are 2–5× faster than with ``(B, r, r)`` blocks.
    """

    @staticmethod
    def forward(ctx, state, bias, *tensors):  # noqa: D102
        num_m, num_f, num_q = state.counts
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
        saved: list[Tensor | None] = [None] * 7
        if num_q:
            proj = torch.stack(tensors[2 * num_m : 2 * num_m + num_f])  # (M_f, r, d)
            v = torch.stack(tensors[2 * num_m + num_f :])  # (Q, C, r²)
            layout = state.layout
            u_f = _gather(u, layout.factor_rows)
            g = torch.bmm(proj, u_f.transpose(1, 2))  # Gᵀ, (M_f, r, B)
            mean_g = g.mean(dim=2, keepdim=True)
            g.sub_(mean_g)
            rank = g.shape[1]
            a = _gather(g, layout.first)  # (Q, r, B)
            b = _gather(g, layout.second)
            moment = torch.bmm(a, b.transpose(1, 2)).div_(batch)  # E[G_i ⊗ G_j], (Q, r, r)
            y = torch.mul(a[:, :, None, :], b[:, None, :, :]).sub_(moment[:, :, :, None])
            y = y.view(num_q, rank * rank, batch)
            sq.append(torch.linalg.vector_norm(y, dim=(1, 2)).square_().div_(batch))
            scale_p = (sq[1] + eps).rsqrt_()
            y.mul_(scale_p[:, None, None])
            part_p = torch.bmm(v, y)  # (Q, C, B)
            out.add_(part_p.sum(dim=0).t())
            rows += [*mean_g.squeeze(2).unbind(0), *moment.unbind(0)]
            saved = [u_f, proj, g, y, v, scale_p, part_p]
        else:
            y = u.new_zeros(0, 0, batch)
        if bias is not None:
            out.add_(bias)
        # running statistics: lerp of means, unbiased squared norms and decays (towards an
        # exact 0), then the counters
        buffers = state.buffers
        unbiased = (torch.cat(sq) if num_q else sq[0]).mul_(batch / (batch - 1))
        zero = unbiased.new_zeros(())
        ends = rows + list(unbiased.unbind(0)) + [zero] * len(buffers.decay)
        targets = buffers.lerped
        torch._foreach_lerp_(targets, _in_dtypes(ends, targets), state.momentum)
        torch._foreach_add_(buffers.counters, 1)

        ctx.counts = state.counts
        ctx.layout = state.layout
        ctx.has_bias = bias is not None
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(u, w, z, scale_u, part_u, *saved)
        return out, z, y

    @staticmethod
    def backward(ctx, grad_out, grad_z, grad_y):  # noqa: D102
        u, w, z, scale_u, part_u, u_f, proj, g, y, v, scale_p, part_p = ctx.saved_tensors
        num_m, num_f, num_q = ctx.counts
        layout: PairwiseLayout = ctx.layout
        batch = u.shape[1]
        if grad_out is None:
            grad_out = part_u.new_zeros(batch, w.shape[1])
        grad_out = grad_out.contiguous()
        centred_out = grad_out - grad_out.mean(dim=0, keepdim=True)
        grad_bias = grad_out.sum(dim=0) if ctx.has_bias else None

        # unimodal, batch-major: ∂U = s (ḡ W − (⟨g, Z Wᵀ⟩ / B) Z) [+ s P(∂L/∂Z)]
        dot = torch.mv(part_u.view(num_m, -1), grad_out.view(-1))
        if grad_z is not None:
            dot = dot + (grad_z * z).sum(dim=(1, 2))
        grad_w = torch.bmm(grad_out.t().expand(num_m, -1, -1), z)
        grad_u = z * (dot * (-1.0 / batch))[:, None, None]
        grad_u.baddbmm_(centred_out.expand(num_m, -1, -1), w)
        if grad_z is not None:
            grad_u.add_(grad_z - grad_z.mean(dim=1, keepdim=True))
        grad_u.mul_(scale_u[:, None, None])
        grads_p: tuple[Tensor, ...] = ()
        grads_v: tuple[Tensor, ...] = ()
        if num_q:
            # pairs, feature-major: ∂Xᵀ = σ (Vᵀ ḡᵀ − (⟨g, Y Vᵀ⟩ / B) Yᵀ) [+ σ P(∂L/∂Y)]
            out_t = grad_out.t().contiguous()
            dot = torch.mv(part_p.view(num_q, -1), out_t.view(-1))
            if grad_y is not None:
                dot = dot + (grad_y * y).sum(dim=(1, 2))
            grad_v = torch.bmm(out_t.expand(num_q, -1, -1), y.transpose(1, 2))
            grad_x = y * (dot * (-1.0 / batch))[:, None, None]
            grad_x.baddbmm_(v.transpose(1, 2), centred_out.t().expand(num_q, -1, -1))
            if grad_y is not None:
                grad_x.add_(grad_y - grad_y.mean(dim=2, keepdim=True))
            grad_x.mul_(scale_p[:, None, None])
            rank = g.shape[1]
            grad_x = grad_x.view(num_q, rank, rank, batch)
            a = _gather(g, layout.first)
            b = _gather(g, layout.second)
            grad_g = torch.zeros_like(g)
            _scatter_add(grad_g, layout.first, (grad_x * b[:, None, :, :]).sum(dim=2))
            _scatter_add(grad_g, layout.second, (grad_x * a[:, :, None, :]).sum(dim=1))
            grad_g.sub_(grad_g.mean(dim=2, keepdim=True))
            grads_p = tuple(torch.bmm(grad_g, u_f).unbind(0))
            _scatter_add(grad_u, layout.factor_rows, torch.bmm(grad_g.transpose(1, 2), proj))
            grads_v = tuple(grad_v.unbind(0))
        return (None, grad_bias, *grad_u.unbind(0), *grad_w.unbind(0), *grads_p, *grads_v)


class PairwiseState(NamedTuple):
    """Everything of the model that one step reads besides the tensors it differentiates:
    the layout, the buffers it updates, ``counts = (M, M_f, Q)`` (``M_f = 0`` when ``Q = 0``),
    the head's bias (or ``None``), vBN's ``eps`` and the momentum of every running statistic."""

    layout: PairwiseLayout
    buffers: PairwiseBuffers
    counts: tuple[int, int, int]
    bias: Tensor | None
    eps: float
    momentum: float


class PairwiseOutput(NamedTuple):
    """``prediction (B, C)``, unimodal blocks ``(M, B, d)`` and pair blocks ``(Q, B, r²)``."""

    prediction: Tensor
    unimodal: Tensor
    pairs: Tensor


def pairwise_head(state: PairwiseState, tensors: Sequence[Tensor]) -> PairwiseOutput:
    """One training step of the head (see module doc); updates ``state.buffers`` in place.

    ``tensors``: ``U_1..U_M, W_1..W_M`` then, with pairs, ``P_1..P_{M_f}, V_1..V_Q``.
    """
    num_m, num_f, num_q = state.counts
    if len(tensors) != 2 * num_m + num_f + num_q:
        raise ValueError(
            f"pairwise_head: counts {state.counts} need {2 * num_m + num_f + num_q} tensors "
            f"(embeddings, unimodal weights, projections, pair weights), got {len(tensors)}; "
            f"rebuild the state for this model"
        )
    batch = tensors[0].shape[0]
    if batch < 2:
        raise ValueError(
            f"the fusion head needs a batch of at least 2 samples in training mode (it uses "
            f"batch statistics), got {batch}; use a larger batch or call model.eval()"
        )
    prediction, unimodal, pairs = _PairwiseHead.apply(state, state.bias, *tensors)
    return PairwiseOutput(prediction, unimodal, pairs.transpose(1, 2))
