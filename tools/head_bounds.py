"""How fast could a model without interactions (K = 1) train at best, with and without the API?

Evidence for issue 13's target "eager fast path / before ≤ 0.5 for K = 1" (BENCHMARKS.md §3).
Beside *before* (the reference implementation) and *ours* (``MultimodalModel.fuse``), one
training step (cross-entropy + λ·Ω_p, forward and backward) of two throw-away minimal heads with
the same math, written for this measurement only and never used by the library:

* ``minimal``: the model's parameter layout (one weight tensor per term): one autograd Function
  for vBN + head with a hand-written backward and two running statistics per modality updated
  with one foreach lerp; Ω_p from ``torch._foreach_norm`` over the blocks — no input checks, no
  cached state, no returned block dictionary;
* ``stacked``: the same, with all unimodal weights in *one* parameter ``(M, C, d)`` and Ω_p as a
  second hand-written Function over it — the layout an API change (new ``state_dict`` keys)
  would allow.

Run: ``PYTHONPATH=src:. .venv/bin/python tools/head_bounds.py`` (1 torch thread, batch 256,
d_m = 32, 2 classes; medians of 10 interleaved rounds of 200 steps each).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from benchmarks.fusion_speed import LAM, build
from torch.nn import functional as F

EPS = 1e-5
MOMENTUM = 0.1


def _head_forward(ctx, running, u, w, bias):  # noqa: ANN001, ANN202
    """``Σ_m vBN(U_m) W_mᵀ + b`` for stacked ``u (M, B, d)``, ``w (M, C, d)``; updates the
    running means and squared norms with one foreach lerp."""
    m, batch = u.shape[0], u.shape[1]
    mean = u.mean(1, keepdim=True)
    z = u - mean
    sq = torch.linalg.vector_norm(z.view(m, -1), dim=1).square_()
    scale = (sq * (1 / batch) + EPS).rsqrt_()
    z.mul_(scale[:, None, None])
    part = torch.bmm(z, w.transpose(1, 2))
    out = part.sum(0).add_(bias)
    ends = [*mean.squeeze(1).unbind(0), *(sq * (1 / (batch - 1))).unbind(0)]
    torch._foreach_lerp_(running, ends, MOMENTUM)
    ctx.save_for_backward(z, w, scale, part)
    return out


def _head_backward(ctx, grad):  # noqa: ANN001, ANN202
    """``(∂W (M, C, d), ∂b, ∂U (M, B, d))`` of :func:`_head_forward`."""
    z, w, scale, part = ctx.saved_tensors
    m, batch = z.shape[0], z.shape[1]
    dot = torch.mv(part.view(m, -1), grad.reshape(-1))
    grad_w = torch.bmm(grad.t().expand(m, -1, -1), z)
    centred = grad - grad.mean(0, keepdim=True)
    grad_u = z * (dot * (-1.0 / batch))[:, None, None]
    grad_u.baddbmm_(centred.expand(m, -1, -1), w).mul_(scale[:, None, None])
    return grad_w, grad.sum(0), grad_u


class _MinimalHead(torch.autograd.Function):
    """The head with one weight tensor per term; inputs ``(running, bias, U.., W..)``."""

    @staticmethod
    def forward(ctx, running, bias, *tensors):  # noqa: ANN001, ANN205, D102
        m = len(tensors) // 2
        return _head_forward(ctx, running, torch.stack(tensors[:m]), torch.stack(tensors[m:]), bias)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205, D102
        grad_w, grad_bias, grad_u = _head_backward(ctx, grad)
        return None, grad_bias, *grad_u.unbind(0), *grad_w.unbind(0)


class _StackedHead(torch.autograd.Function):
    """The head with the weights as one tensor ``(M, C, d)``; inputs ``(running, W, bias, U..)``."""

    @staticmethod
    def forward(ctx, running, w, bias, *us):  # noqa: ANN001, ANN205, D102
        return _head_forward(ctx, running, torch.stack(us), w, bias)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205, D102
        grad_w, grad_bias, grad_u = _head_backward(ctx, grad)
        return None, grad_w, grad_bias, *grad_u.unbind(0)


class _StackedOmega(torch.autograd.Function):
    """``Ω_p = (Σ_t ‖W_t‖^q)^{2/q}`` of the rows of one ``(T, …)`` weight tensor."""

    @staticmethod
    def forward(ctx, w, q):  # noqa: ANN001, ANN205, D102
        norms = w.view(w.shape[0], -1).norm(dim=1)
        total = norms.pow(q).sum()
        ctx.save_for_backward(w, norms, total)
        ctx.q = q
        return total.pow(2 / q)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205, D102
        w, norms, total = ctx.saved_tensors
        q = ctx.q
        coef = (2 * grad) * total.pow(2 / q - 1) * norms.pow(q - 2)
        return w * coef[:, None, None], None


def steps_for(m: int) -> dict[str, Callable[[], None]]:
    """The four training steps of one configuration (M = m, K = 1), sharing inputs."""
    built = build(m, 4, 1)  # the rank is unused without interactions
    model, embeddings, y = built["model"], built["embeddings"], built["y"]
    names = list(embeddings)
    weights = [model.head.blocks[n].weight for n in names]
    bias = model.head.bias
    running = [torch.zeros(32) for _ in names] + [torch.ones(()) for _ in names]
    stacked = torch.nn.Parameter(torch.stack([w.detach() for w in weights]).clone())
    stacked_bias = torch.nn.Parameter(bias.detach().clone())
    stacked_running = [t.clone() for t in running]
    q = 2 * model.p / (model.p + 1)

    def clear() -> None:
        for t in (*weights, bias, stacked, stacked_bias, *embeddings.values()):
            t.grad = None

    def minimal() -> None:
        clear()
        inputs = [embeddings[n] for n in names]
        out = _MinimalHead.apply(running, bias, *inputs, *weights)
        omega = torch.stack(torch._foreach_norm(weights)).pow(q).sum().pow(2 / q)
        (F.cross_entropy(out, y) + LAM * omega).backward()

    def stacked_step() -> None:
        clear()
        out = _StackedHead.apply(stacked_running, stacked, stacked_bias, *embeddings.values())
        (F.cross_entropy(out, y) + LAM * _StackedOmega.apply(stacked, q)).backward()

    with torch.no_grad():  # both minimal heads compute the model's training-mode prediction
        expected = model.fuse(embeddings).prediction
        inputs = [embeddings[n] for n in names]
        fresh = [t.clone() for t in running]
        got = _MinimalHead.apply(fresh, bias, *inputs, *weights)
        got_stacked = _StackedHead.apply(fresh, stacked, stacked_bias, *inputs)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_stacked, expected, rtol=1e-4, atol=1e-5)
    steps = {"before": built["steps"]["before"], "ours": built["steps"]["ours"]}
    steps.update(minimal=minimal, stacked=stacked_step)
    return steps


def main() -> None:
    torch.set_num_threads(1)
    print("| M | before ms | ours / before | minimal / before | stacked / before |")
    print("|---|-----------|---------------|------------------|------------------|")
    for m in (2, 3, 4, 5, 6):
        steps = steps_for(m)
        for _ in range(50):
            for step in steps.values():
                step()
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(10):
            for name, step in steps.items():
                start = time.process_time()
                for _ in range(200):
                    step()
                times[name].append((time.process_time() - start) / 200 * 1e3)
        ratio = {
            name: statistics.median(a / b for a, b in zip(times[name], times["before"]))
            for name in steps
        }
        print(
            f"| {m} | {statistics.median(times['before']):.2f} | {ratio['ours']:.2f} | "
            f"{ratio['minimal']:.2f} | {ratio['stacked']:.2f} |"
        )


if __name__ == "__main__":
    main()
