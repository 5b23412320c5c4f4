"""The fusion head as it was before the fast path (commit f1af3cc): the reference in tests.

A frozen copy of the module-by-module computation that ``MultimodalModel.fuse`` ran before the
fast path existed — centring of the factors, IterBN over the raw outer products, one vector-wise
batch norm per block and one ``Linear`` per block summed in Python. It reads and updates the
*same* parameters and buffers as the model (the state_dict layout did not change), so a model and
a deep copy of it can be stepped side by side, one through ``model.fuse`` and one through
:func:`reference_fuse`, and compared: predictions, gradients, running buffers, relevance.

Do not "fix" or speed up this file: its only job is to stay what the library computed before.
The benchmark (``benchmarks/fusion_speed.py``) loads it for its "before" column.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
from torch import Tensor


def nonempty_subsets(term):
    return [tuple(c) for k in range(1, len(term) + 1) for c in itertools.combinations(term, k)]


def term_name(term) -> str:
    return "*".join(term)


def masked_mean(x: Tensor, present: Tensor | None) -> tuple[Tensor, int]:
    if present is None:
        return x.mean(dim=0), x.shape[0]
    count = int(present.sum())
    weights = present.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return (x * weights).sum(dim=0) / max(count, 1), count


def _check_batch(x: Tensor, name: str) -> None:
    if x.shape[0] < 2:
        raise ValueError(f"{name} needs a batch of at least 2 samples in training mode")


def use_batch_statistics(module, x: Tensor, present: Tensor | None) -> bool:
    if not module.training:
        return False
    if present is None:
        _check_batch(x, type(module).__name__)
        return True
    return int(present.sum()) >= 2


def term_presence(term, masks):
    if not masks:
        return None
    present = [masks[m] for m in term if m in masks]
    if not present:
        return None
    result = present[0]
    for p in present[1:]:
        result = result & p
    return result


def centering(module, x: Tensor, present: Tensor | None = None) -> Tensor:
    """``BatchCentering.forward`` before the fast path."""
    if not use_batch_statistics(module, x, present):
        return x - module.running_mean
    mean, _ = masked_mean(x, present)
    with torch.no_grad():
        module.running_mean.lerp_(mean.detach().to(module.running_mean.dtype), module.momentum)
        module.num_batches_tracked += 1
    return x - mean


def vector_batch_norm(module, u: Tensor, present: Tensor | None = None) -> Tensor:
    """``VectorBatchNorm.forward`` before the fast path."""
    flat = u.reshape(u.shape[0], -1)
    if use_batch_statistics(module, u, present):
        mean, n = masked_mean(flat, present)
        centred = flat - mean
        sq_norm, _ = masked_mean(centred.pow(2).sum(dim=1), present)
        with torch.no_grad():
            unbiased = sq_norm.detach() * n / (n - 1)
            module.running_mean.lerp_(mean.detach().to(module.running_mean.dtype), module.momentum)
            module.running_sq_norm.lerp_(unbiased.to(module.running_sq_norm.dtype), module.momentum)
            module.num_batches_tracked += 1
    else:
        centred = flat - module.running_mean
        sq_norm = module.running_sq_norm
    return (centred / torch.sqrt(sq_norm + module.eps)).reshape(u.shape)


def interaction_factors(module, embeddings, masks=None) -> dict[str, Tensor]:
    """``InteractionFactors.forward`` before the fast path."""
    factors = {}
    for m, projection in module.projections.items():
        g = projection(embeddings[m])
        present = masks.get(m) if masks else None
        factors[m] = centering(module.centering[m], g, present) if module.center else g
    return factors


def outer_products(factors, terms):
    products = {}

    def product(term):
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


def iterbn(module, factors, masks=None) -> dict:
    """``IterBN.forward`` before the fast path (moments, running means, Wick corrections)."""
    if module.training and masks is None:
        batch = next(iter(factors.values())).shape[0]
        if batch < 2:
            raise ValueError("IterBN needs a batch of at least 2 samples in training mode")
    products = outer_products(factors, module.terms)
    means = {}
    for s in module.subterms:
        running = getattr(module, module._buffer(s))
        present = term_presence(s, masks)
        n = products[s].shape[0] if present is None else int(present.sum())
        if not module.training or n < 2:
            means[s] = running
            continue
        mean, _ = masked_mean(products[s], present)
        with torch.no_grad():
            running.lerp_(mean.detach().to(running.dtype), module.momentum)
        means[s] = mean
    if module.training:
        module.num_batches_tracked += 1
    wick = {}
    skip = 1 if module.centred_factors else 0
    for s in module.subterms:
        if len(s) <= skip:
            wick[s] = products[s]
            continue
        value = products[s] - means[s]
        for part in nonempty_subsets(s)[:-1]:
            if len(part) <= skip:
                continue
            rest = tuple(m for m in s if m not in part)
            value.addcmul_(
                means[part].reshape(1, *(module.rank if m in part else 1 for m in s)),
                wick[rest].reshape(-1, *(module.rank if m in rest else 1 for m in s)),
                value=-1,
            )
        wick[s] = value
    return {t: wick[t] for t in module.terms}


def mnl_head(head, blocks: Mapping[str, Tensor]) -> Tensor:
    """``MNLFusion.forward`` before the fast path: one Linear per block, summed in Python."""
    out = sum(layer(blocks[t]) for t, layer in head.blocks.items())
    return out + head.bias if head.bias is not None else out


def block_norms(head) -> Tensor:
    return torch.stack([torch.linalg.vector_norm(b.weight) for b in head.blocks.values()])


def regularizer(model, p: float | None = None) -> Tensor:
    """``MultimodalModel.regularizer`` before the fast path: Ω_p = (Σ_t ‖W_t‖^q)^{2/q}."""
    p = model.head.p if p is None else float(p)
    q = 2 * p / (p + 1)
    return block_norms(model.head).pow(q).sum().pow(2 / q)


def reference_fuse(model, embeddings: Mapping[str, Tensor], masks=None):
    """``MultimodalModel.fuse`` before the fast path: ``(prediction, blocks)``."""
    raw = {(m,): embeddings[m] for m in model.modalities}
    if model.interaction_terms:
        factors = interaction_factors(model.factors, embeddings, masks)
        if model.wick is not None:
            products = iterbn(model.wick, factors, masks)
        else:
            products = outer_products(factors, model.interaction_terms)
        for t in model.interaction_terms:
            raw[t] = products[t].flatten(start_dim=1)
    blocks = {}
    for t, z in raw.items():
        name = term_name(t)
        present = term_presence(t, masks)
        if model.vbn:
            z = vector_batch_norm(model.norms[name], z, present)
        blocks[name] = z if present is None else torch.where(present[:, None], z, 0.0)
    return mnl_head(model.head, blocks), blocks
