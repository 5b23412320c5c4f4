"""Multiplicative interactions between modalities and their IterBN normalisation.

For every modality that takes part in an interaction, a factor ``g_m = center(P_m h_m) ∈ R^r``;
for a term ``S`` the raw tensor product ``T_S = ⊗_{m∈S} g_m ∈ R^{r^|S|}`` (axis order = S's order).

IterBN (the "iterative batch normalisation" of Mehta's slides; Varshneya et al., *Interpretable
Tensor Fusion*, IJCAI 2024) replaces ``T_S`` by its Wick (Appell) product

    :T_∅: = 1,    :T_S: = T_S − Σ_{∅≠R⊆S} E[T_R] ⊗ :T_{S∖R}:,

with each correction placed at the tensor axes of R and S∖R inside S's layout. The result has zero
mean, vanishes when any factor is constant, and (for Gaussian factors) is uncorrelated with every
lower-order product: an interaction block cannot re-encode unimodal or lower-order signal, which is
what otherwise inflates the relevance of high-order terms ("degree inflation").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..terms import Term, nonempty_subsets, term_name
from .norm import BatchCentering, masked_mean, present_count

MAX_ORDER = 32
"""Largest interaction order (a torch tensor has at most 64 axes; r^k explodes long before)."""


class InteractionFactors(nn.Module):
    """Per-modality low-rank factors ``g_m = center(P_m h_m)``, shape ``(B, d_m) → (B, r)``.

    With ``center=False`` the factors are plain affine projections ``P_m h_m + c_m`` (used to
    demonstrate degree inflation: a factor can then carry a constant that copies other modalities'
    signal into the product).
    """

    def __init__(
        self, dims: Mapping[str, int], rank: int, center: bool = True, momentum: float = 0.1
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"interaction rank must be >= 1, got {rank}")
        self.rank = rank
        self.center = center
        self.projections = nn.ModuleDict(
            {m: nn.Linear(d, rank, bias=not center) for m, d in dims.items()}
        )
        self.centering = nn.ModuleDict(
            {m: BatchCentering(rank, momentum) for m in dims} if center else {}
        )

    def forward(
        self, embeddings: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None
    ) -> dict[str, Tensor]:
        """``{m: (B, d_m)}`` → ``{m: (B, r)}``; centring statistics skip samples masked out."""
        factors = {}
        for m, projection in self.projections.items():
            g = projection(embeddings[m])
            present = masks.get(m) if masks else None
            factors[m] = self.centering[m](g, present) if self.center else g
        return factors

    def extra_repr(self) -> str:
        return f"rank={self.rank}, center={self.center}"


def outer_products(factors: Mapping[str, Tensor], terms: Sequence[Term]) -> dict[Term, Tensor]:
    """Raw products ``T_R`` of shape ``(B, r, …, r)`` for ``terms`` and all their sub-terms.

    Each product is built once from its longest prefix, so shared sub-terms cost nothing extra.
    """
    products: dict[Term, Tensor] = {}

    def product(term: Term) -> Tensor:
        if term not in products:
            if len(term) == 1:
                products[term] = factors[term[0]]
            else:
                head = product(term[:-1])
                last = factors[term[-1]]
                products[term] = head.unsqueeze(-1) * last.reshape(
                    last.shape[0], *([1] * (head.dim() - 1)), last.shape[1]
                )
        return products[term]

    for term in terms:
        for sub in nonempty_subsets(term):
            product(sub)
    return products


def term_presence(term: Term, masks: Mapping[str, Tensor] | None) -> Tensor | None:
    """Samples where every modality of ``term`` is present (``None``: all of them)."""
    if not masks:
        return None
    present = [masks[m] for m in term if m in masks]
    if not present:
        return None
    result = present[0]
    for p in present[1:]:
        result = result & p
    return result


class IterBN(nn.Module):
    """Wick (Appell) normalisation of the tensor products of a fixed set of terms, any order.

    Input: factors ``{modality: (B, r)}``. Output: ``{term: (B, r, …, r)}`` with ``|term|`` axes of
    size r, for each term given at construction. Expectations ``E[T_R]`` are batch means in training
    and running means (``momentum``) in evaluation; each is computed once per forward pass even when
    several terms share the sub-term R.
    """

    def __init__(
        self,
        terms: Sequence[Term],
        rank: int,
        momentum: float = 0.1,
        centred_factors: bool = False,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"interaction rank must be >= 1, got {rank}")
        self.centred_factors = centred_factors
        self.terms = [tuple(t) for t in terms]
        for t in self.terms:
            if len(t) > MAX_ORDER:
                raise ValueError(f"interaction order {len(t)} exceeds the maximum {MAX_ORDER}")
        self.rank = rank
        self.momentum = momentum
        self.sync_stats = False  # batch moments over all processes (norm.set_sync_stats)
        subsets = {s for t in self.terms for s in nonempty_subsets(t)}
        self.subterms = sorted(subsets, key=lambda s: (len(s), s))
        for s in self.subterms:
            self.register_buffer(self._buffer(s), torch.zeros([rank] * len(s)))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @staticmethod
    def _buffer(term: Term) -> str:
        return f"running_mean_{term_name(term)}"

    def reset_running_stats(self) -> None:
        for s in self.subterms:
            getattr(self, self._buffer(s)).zero_()
        self.num_batches_tracked.zero_()

    def moments(
        self, products: Mapping[Term, Tensor], masks: Mapping[str, Tensor] | None = None
    ) -> dict[Term, Tensor]:
        """``E[T_R]`` for every sub-term R.

        Training: batch means over the samples where every modality of R is present (updating
        the running means); evaluation, or fewer than 2 such samples: the running means.
        """
        means = {}
        for s in self.subterms:
            running = getattr(self, self._buffer(s))
            if not self.training:
                means[s] = running
                continue
            present = term_presence(s, masks)
            n = present_count(products[s], present, self.sync_stats)
            if n < 2:
                means[s] = running
                continue
            mean, _ = masked_mean(products[s], present, self.sync_stats, n)
            with torch.no_grad():
                running.lerp_(mean.detach().to(running.dtype), self.momentum)
            means[s] = mean
        if self.training:
            self.num_batches_tracked += 1
        return means

    def forward(
        self, factors: Mapping[str, Tensor], masks: Mapping[str, Tensor] | None = None
    ) -> dict[Term, Tensor]:
        """Wick products ``{term: (B, r, …, r)}``; ``masks`` (``{m: bool (B,)}``, True = present)
        restrict every moment to the samples where its modalities are present."""
        if self.training and masks is None:
            batch = next(iter(factors.values())).shape[0]
            if batch < 2:
                raise ValueError(
                    f"IterBN needs a batch of at least 2 samples in training mode, got {batch}"
                )
        products = outer_products(factors, self.terms)
        means = self.moments(products, masks)
        wick: dict[Term, Tensor] = {}
        # Centred factors have E[g_m] = 0 exactly (batch statistics over the same samples), so
        # every correction by a single modality's mean vanishes and is skipped.
        skip = 1 if self.centred_factors else 0
        for s in self.subterms:  # sorted by order, so every :T_{S∖R}: is ready when needed
            if len(s) <= skip:
                wick[s] = products[s]
                continue
            value = products[s] - means[s]
            for part in nonempty_subsets(s)[:-1]:  # proper, non-empty R ⊊ S
                if len(part) <= skip:
                    continue
                rest = tuple(m for m in s if m not in part)
                # E[T_R] ⊗ :T_{S∖R}:, broadcast into S's axes (R's axes from the mean, the rest
                # from the Wick product), subtracted in place: one pass, no einsum temporary.
                value.addcmul_(
                    means[part].reshape(1, *(self.rank if m in part else 1 for m in s)),
                    wick[rest].reshape(-1, *(self.rank if m in rest else 1 for m in s)),
                    value=-1,
                )
            wick[s] = value
        return {t: wick[t] for t in self.terms}

    def extra_repr(self) -> str:
        names = ", ".join(term_name(t) for t in self.terms)
        return (
            f"terms=[{names}], rank={self.rank}, momentum={self.momentum}, "
            f"centred_factors={self.centred_factors}"
        )
