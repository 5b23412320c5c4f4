"""The fusion head computes in float32 under autocast, its backward passes included.

``MultimodalModel.fuse`` turns autocast off around the head (batch statistics and small
products need float32, as batch norm does), so the forward passes of the head's autograd
Functions run in float32. Their backward passes run in the autocast state of the caller of
``backward()``: called inside an autocast region (``with torch.autocast(...): ...;
loss.backward()``), their matrix products would run in bfloat16 or float16 — gradients in low
precision, or an error where a float32 and a bfloat16 tensor meet (``index_add_``).
:func:`float32_backward` gives them the forward pass's state back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch


def float32_backward(backward: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a custom Function's ``backward(ctx, *grads)`` to run with autocast off on the
    gradients' device (≈ 1.5 µs of checks per call when autocast is off)."""

    @functools.wraps(backward)
    def wrapped(ctx: Any, *grads: Any) -> Any:
        device = next((g.device.type for g in grads if g is not None), None)
        if (
            device is not None
            and torch.amp.is_autocast_available(device)  # not on "meta", say
            and torch.is_autocast_enabled(device)
        ):
            with torch.autocast(device, enabled=False):
                return backward(ctx, *grads)
        return backward(ctx, *grads)

    return wrapped
