"""The global random states a task must never touch (torch's, NumPy's and Python's), for the task tests."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def global_states() -> tuple[Any, Any, Any]:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def same_states(a: tuple[Any, Any, Any], b: tuple[Any, Any, Any]) -> bool:
    (ta, na, pa), (tb, nb, pb) = a, b
    return torch.equal(ta, tb) and all(np.array_equal(x, y) for x, y in zip(na, nb, strict=True)) and pa == pb
