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

Scope: ``iterbn=True`` and ``vbn=True`` models with interaction orders ≤ 4, without presence
masks (masks take :func:`masked_fuse`, a per-term path with the same economies where they still
hold). Anything else runs the module-by-module path.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..terms import Term, nonempty_subsets, term_name

FAST_MAX_ORDER = 4
"""Largest interaction order of the fast path (the regrouping above is written for k ≤ 4)."""


# --------------------------------------------------------------------------- vBN + head


class _VbnHead(torch.autograd.Function):
    """Batch-statistics vBN of a stack of blocks fused with their head blocks (see module doc).

    Inputs: ``x (Q, B, F)``, ``weight (Q, C, F)``, ``mean (Q, 1, F)`` or ``None`` (then ``x`` is
    centred by its own batch mean; a given ``mean`` must equal it — it only saves a pass),
    ``centred`` (``x`` already has batch mean 0: no centring at all), ``eps``.
    Outputs: ``ŷ`` part ``(B, C)``, ``z (Q, B, F)``, biased ``E‖c_q‖² (Q,)`` (not differentiable).
    """

    @staticmethod
    def forward(ctx, x, weight, mean, centred, eps):  # noqa: D102
        batch = x.shape[1]
        if centred:
            c = x
        else:
            c = x - (x.mean(dim=1, keepdim=True) if mean is None else mean)
        sq = torch.linalg.vector_norm(c.flatten(1), dim=1).square_() / batch
        scale = (sq + eps).rsqrt_()
        s3 = scale[:, None, None]
        z = c * s3 if centred else c.mul_(s3)
        partial = torch.bmm(z, weight.transpose(1, 2))  # (Q, B, C)
        ctx.save_for_backward(z, weight, scale, partial)
        ctx.mark_non_differentiable(sq)
        ctx.set_materialize_grads(False)
        return partial.sum(dim=0), z, sq

    @staticmethod
    def backward(ctx, grad_out, grad_z, _grad_sq):  # noqa: D102
        z, weight, scale, partial = ctx.saved_tensors
        num, batch, _ = z.shape
        grad_x = grad_w = None
        # ⟨g, z_q⟩ with g = grad_out W_q (+ grad_z): via the saved (Q, B, C) partial products.
        if grad_out is not None:
            dot = (partial * grad_out).sum(dim=(1, 2))
            centred_out = grad_out - grad_out.mean(dim=0, keepdim=True)
        else:
            dot = z.new_zeros(num)
        if grad_z is not None:
            dot = dot + (grad_z * z).sum(dim=(1, 2))
        coef = (-dot * scale / batch)[:, None, None]
        if ctx.needs_input_grad[0]:
            if grad_out is not None:
                scaled = scale[:, None, None] * centred_out  # (Q, B, C)
                grad_x = torch.baddbmm(z * coef, scaled, weight)
            else:
                grad_x = z * coef
            if grad_z is not None:
                grad_x = grad_x + scale[:, None, None] * (grad_z - grad_z.mean(dim=1, keepdim=True))
        if ctx.needs_input_grad[1] and grad_out is not None:
            grad_w = torch.matmul(grad_out.t(), z)  # (Q, C, F)
        return grad_x, grad_w, None, None, None


def vbn_head(
    x: Tensor, weight: Tensor, eps: float, mean: Tensor | None = None, centred: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """``(Σ_q vBN(x_q) W_qᵀ, vBN(x), E‖x_q − E x_q‖²)`` with batch statistics; see :class:`_VbnHead`."""
    mean = None if mean is None else mean.detach()
    return _VbnHead.apply(x, weight, mean, centred, eps)


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


@dataclass
class _Level:
    """All subterms of one order k: how to build them from order k−1 and what they feed."""

    order: int
    subterms: list[Term]
    prefix: list[int]  # k = 2: factor position of the first modality; else level k−1 index
    last: list[int]  # factor position of the last modality
    corrections: list[_Correction] = field(default_factory=list)
    constants: list[tuple[list[int], list[int], list[int], list[int]]] = field(default_factory=list)
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
        position = {m: i for i, m in enumerate(self.factor_modalities)}
        order = max((len(t) for t in interaction_terms), default=1)
        self.max_order = order
        subterms = {t: None for term in interaction_terms for t in nonempty_subsets(term)}
        self.levels: list[_Level] = []
        index: dict[Term, int] = {}
        for k in range(2, order + 1):
            level_terms = sorted((t for t in subterms if len(t) == k), key=lambda s: [
                self.modalities.index(m) for m in s
            ])
            for i, t in enumerate(level_terms):
                index[t] = i
            prefix = [position[t[0]] if k == 2 else index[t[:-1]] for t in level_terms]
            level = _Level(k, level_terms, prefix, [position[t[-1]] for t in level_terms])
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
        self.momentum: float | None = None  # of every running statistic (set by the model)

    def index(self, values: list[int], device: torch.device) -> Tensor:
        cache = self._indices.setdefault(device, {})
        key = id(values)
        if key not in cache:
            cache[key] = torch.tensor(values, dtype=torch.long, device=device)
        return cache[key]


# --------------------------------------------------------------------------- Wick levels


def _take(stack: Tensor, values: list[int], plan: FusionPlan) -> Tensor:
    """Rows ``values`` of ``stack`` (no copy when they are all rows, in order)."""
    if len(values) == stack.shape[0] and values == list(range(len(values))):
        return stack
    return stack.index_select(0, plan.index(values, stack.device))


def wick_levels(
    plan: FusionPlan,
    factors: Tensor,
    running: list[Tensor] | None,
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """Wick products of every level, stacked: ``(blocks, centred, moments)`` per level.

    ``factors``: centred factors ``(M_f, B, r)``. Training (``running is None``): batch moments;
    evaluation: ``running[k-2]`` holds the running raw moments ``E[T_R]`` of level k, stacked.

    ``blocks[k-2]``: ``X_S`` of the module docstring, ``(Q_k, B, r, …, r)``; ``centred[k-2]``
    whether it is already ``:T_S:`` (it is when a higher order needs it, or in evaluation);
    ``moments[k-2]``: ``E[T_R]`` of the level (training: batch raw moments, detached from nothing;
    evaluation: the running ones). In training ``:T_S: = X_S − means[k-2]`` where not centred.
    """
    batch, rank = factors.shape[1], plan.rank
    training = running is None
    wick: list[Tensor] = []
    moments: list[Tensor] = []
    centred_flags: list[bool] = []
    shifts: list[Tensor] = []
    for level in plan.levels:
        k = level.order
        num = len(level.subterms)
        if k == 2:
            head = _take(factors, level.prefix, plan)  # (Q, B, r)
        else:
            head = _take(wick[-1], level.prefix, plan).reshape(num, batch, -1)
        last = _take(factors, level.last, plan)  # (Q, B, r)
        # (Q, B, r, …, r), built in its final shape: the in-place corrections below must not
        # act on a view (autograd would then copy the whole block in backward)
        x = head.reshape(num, batch, *([rank] * (k - 1)), 1) * last.reshape(
            num, batch, *([1] * (k - 1)), rank
        )
        for corr in level.corrections:
            moment = _take(moments[corr.moment_order - 2], corr.moment_index, plan)
            rest_stack = factors if corr.rest_order == 1 else wick[corr.rest_order - 2]
            rest = _take(rest_stack, corr.rest_index, plan)
            x = x.addcmul_(
                moment.reshape(corr.moment_shape), rest.reshape(num, batch, *corr.rest_shape[2:]),
                value=-1,
            )
        if training:
            # K_S = E[X_S] = E[:T_P: ⊗ g_l] (every correction has batch mean 0)
            shift = torch.bmm(head.transpose(1, 2), last).div_(batch)  # (Q, r^(k-1), r)
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
        shift = shift.reshape(num, 1, *([rank] * k))
        if level.needed_below or not training:
            x = x.sub_(shift)
            centred_flags.append(True)
        else:
            centred_flags.append(False)
        shifts.append(shift)
        wick.append(x)
    return wick, centred_flags, shifts, moments


# --------------------------------------------------------------------------- the whole head


def _stack(tensors: list[Tensor]) -> Tensor:
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def _check_training_batch(batch: int) -> None:
    if batch < 2:
        raise ValueError(
            f"the fusion head needs a batch of at least 2 samples in training mode (it uses "
            f"batch statistics), got {batch}; use a larger batch or call model.eval()"
        )


def fast_fuse(model, embeddings: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """``(prediction, blocks)`` of ``model.fuse`` without masks; the same values and gradients.

    ``model`` is a :class:`~interfuse.model.MultimodalModel` with ``iterbn`` and ``vbn`` on and
    interaction orders ≤ :data:`FAST_MAX_ORDER`; its parameters and running buffers are read and
    (in training) updated exactly as the module-by-module path would.
    """
    plan: FusionPlan = model.fusion_plan()
    training = model.training
    head = model.head
    weights = {name: block.weight for name, block in head.blocks.items()}
    first = embeddings[plan.modalities[0]]
    batch = first.shape[0]
    if training:
        _check_training_batch(batch)
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

    def head_of(x: Tensor, names: list[str], norms, mean=None, centred=False) -> None:
        """vBN + head of the stacked blocks ``x (Q, B, …)`` named ``names``."""
        num = len(names)
        flat = x.reshape(num, batch, -1)
        weight = _stack([weights[n] for n in names])
        if training:
            eps = norms[0].eps
            if mean is not None:
                mean = mean.reshape(num, 1, -1)
            partial, z, sq = vbn_head(flat, weight, eps, mean=mean, centred=centred)
            sq_norms.extend(n.running_sq_norm for n in norms)
            sq_values.extend((sq.detach() * (batch / (batch - 1))).unbind(0))
            counters.extend(n.num_batches_tracked for n in norms)
            if mean is None and not centred:
                lerp_to.extend(n.running_mean for n in norms)
                lerp_from.extend(flat.detach().mean(dim=1).unbind(0))
            else:  # interaction blocks: batch mean exactly 0
                decay.extend(n.running_mean for n in norms)
        else:
            mean = _stack([n.running_mean for n in norms]).unsqueeze(1)
            scale = (_stack([n.running_sq_norm for n in norms]) + norms[0].eps).rsqrt()
            z = (flat - mean) * scale[:, None, None]
            partial = torch.bmm(z, weight.transpose(1, 2)).sum(dim=0)
        add(partial)
        for i, n in enumerate(names):
            blocks[n] = z[i]

    # unimodal blocks
    norms = model.norms
    stacked_inputs: dict[int, Tensor] = {}
    for width, names in plan.unimodal_groups:
        x = _stack([embeddings[m] for m in names])
        stacked_inputs[width] = x
        head_of(x, names, [norms[m] for m in names])

    # interaction blocks
    if plan.levels:
        fm = model.factors
        projected = _stack(
            [torch.nn.functional.linear(embeddings[m], fm.projections[m].weight)
             for m in plan.factor_modalities]
        )  # (M_f, B, r)
        centerings = [fm.centering[m] for m in plan.factor_modalities]
        if training:
            factor_mean = projected.mean(dim=1, keepdim=True)
            factors = projected - factor_mean
            lerp_to.extend(c.running_mean for c in centerings)
            lerp_from.extend(factor_mean.detach().squeeze(1).unbind(0))
            counters.extend(c.num_batches_tracked for c in centerings)
            running = None
        else:
            factors = projected - _stack([c.running_mean for c in centerings]).unsqueeze(1)
            running = [
                _stack([getattr(model.wick, model.wick._buffer(t)) for t in level.subterms])
                for level in plan.levels
            ]
        wick, centred, shifts, moments = wick_levels(plan, factors, running)
        if training:
            iterbn = model.wick
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
            if is_centred:
                head_of(x, names, [norms[n] for n in names], centred=True)
            else:
                head_of(x, names, [norms[n] for n in names], mean=_take(shift, level.terms, plan))

    if training:
        with torch.no_grad():
            momentum = plan.momentum
            if lerp_to:
                torch._foreach_lerp_(
                    lerp_to, [v.to(t.dtype) for v, t in zip(lerp_from, lerp_to)], momentum
                )
            if sq_norms:
                torch._foreach_lerp_(
                    sq_norms, [v.to(t.dtype) for v, t in zip(sq_values, sq_norms)], momentum
                )
            if decay:
                torch._foreach_mul_(decay, 1.0 - momentum)
            torch._foreach_add_(counters, 1)
    prediction = out + head.bias if head.bias is not None else out
    ordered = {name: blocks[name] for name in head.blocks}
    return prediction, ordered
