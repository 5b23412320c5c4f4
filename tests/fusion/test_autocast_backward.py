"""A backward pass called inside an autocast region: the head's Functions still compute their
gradients in float32 (their forward passes do), and nothing fails where float32 and bfloat16
tensors meet.

PyTorch advises calling ``backward()`` outside autocast, but inside is a common way to write a
loop. The head's autograd Functions used to run their backward passes in the caller's autocast
state: bfloat16 gradients from the one-Function head (0.2–0.8 % off), and ``index_add_(): self
(Float) and source (BFloat16)`` from the stacked path (rank > 8 with triples, or presence masks
with triples). Operators outside the Functions (the factor projections of the stacked path) keep
PyTorch's own behaviour: their backward runs in the caller's autocast state.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from interfuse import MultimodalModel

NAMES = ["m0", "m1", "m2"]


def _gradients(model, inputs, y, masks, autocast: bool) -> dict[str, torch.Tensor]:
    leaves = {n: x.clone().requires_grad_() for n, x in inputs.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(leaves, masks)
        loss = F.cross_entropy(out.prediction.float(), y) + 0.05 * model.regularizer()
        loss.backward()  # inside the autocast region on purpose
    grads = {name: p.grad for name, p in model.named_parameters()}
    grads.update({f"input {n}": x.grad for n, x in leaves.items()})
    return grads


@pytest.mark.parametrize(
    "order, rank, masked, one_function",
    [
        (1, 4, False, True),
        (2, 8, False, True),
        (3, 8, False, True),
        (2, 8, True, True),
        (3, 16, False, False),  # rank > 8 with triples: the stacked path
        (4, 4, False, False),
        (3, 8, True, False),  # masks with triples: the stacked path
    ],
)
def test_backward_inside_bf16_autocast(order, rank, masked, one_function):
    torch.manual_seed(order * 10 + rank)
    model = MultimodalModel(
        {n: nn.Identity() for n in NAMES},
        interactions=order if order > 1 else "none",
        rank=rank,
        num_outputs=2,
        encoder_dims=dict.fromkeys(NAMES, 8),
    ).train()
    reference = copy.deepcopy(model)
    inputs = {n: torch.randn(32, 8) for n in NAMES}
    y = torch.randint(0, 2, (32,))
    masks = {n: torch.rand(32) > 0.2 for n in NAMES} if masked else None
    got = _gradients(model, inputs, y, masks, autocast=True)
    expected = _gradients(reference, inputs, y, masks, autocast=False)
    for name, want in expected.items():
        exact = one_function or not (name.startswith("factors.projections") or "input" in name)
        tolerance = {"rtol": 1e-5, "atol": 1e-6} if exact else {"rtol": 2e-2, "atol": 1e-3}
        torch.testing.assert_close(got[name], want, **tolerance, msg=name)
