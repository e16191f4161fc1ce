"""Small fused tensor helpers of the accelerator (no parameter-sized temporaries where torch allows)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch


def _foreach_copy(dst: list[torch.Tensor], src: Sequence[torch.Tensor]) -> None:
    """``d.copy_(s)`` for each pair; one fused call where torch has it. Call under ``torch.no_grad()``."""
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(dst, list(src))
    else:  # pragma: no cover - torch < 2.1
        for d, s in zip(dst, src):
            d.copy_(s)


def _global_norm(tensors: Iterable[torch.Tensor]) -> float:
    """The 2-norm of all tensors together, accumulated in float64 (NaN/inf propagate)."""
    total = 0.0
    for t in tensors:
        n = float(torch.linalg.vector_norm(t, dtype=torch.float64))
        total += n * n
    return math.sqrt(total)
