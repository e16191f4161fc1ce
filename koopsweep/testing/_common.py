"""Helpers shared by the variant and task conformance checks: naming, sampling, comparing."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from typing import Any

import torch


def label(cls: type, params: Mapping[str, Any] | None = None) -> str:
    """``module.Class(a=1, b=2)``: who failed, with the parameters it failed with."""
    name = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', repr(cls))}"
    if params is None:
        return name
    return f"{name}({', '.join(f'{k}={v!r}' for k, v in params.items())})"


def validated(kind: str, cls: type) -> None:
    """The loader's validation of ``cls`` as a plugin of group ``kind``, and its refusal of an unknown
    parameter (a `ParameterError`, as every plugin's): both as ``AssertionError`` messages."""
    from koopsweep import plugins
    from koopsweep.errors import ParameterError, PluginValidationError

    try:
        plugins.validate(kind, cls)
    except PluginValidationError as exc:
        raise AssertionError(f"{label(cls)} fails plugin validation: {exc}") from exc
    try:
        plugins.instantiate(cls, {"__not_a_parameter__": 1})
    except ParameterError:
        pass
    except Exception as exc:
        raise AssertionError(
            f"{label(cls)}(__not_a_parameter__=1) raised {type(exc).__name__}, not koopsweep's ParameterError: {exc}"
        ) from exc
    else:
        raise AssertionError(f"{label(cls)} accepted an unknown parameter; it must raise ParameterError")


def as_device(device: str | torch.device) -> torch.device:
    return torch.device(device)


def on_device(actual: torch.device, wanted: torch.device) -> bool:
    """True when ``actual`` is ``wanted``; ``cuda`` (no index) accepts any CUDA device."""
    return actual.type == wanted.type and (wanted.index is None or actual.index == wanted.index)


def sample_points(space: Mapping[str, Any], n_random: int, seed: int) -> list[dict[str, Any]]:
    """Points of an Optuna search space to try: every low end, every high end, then random points.

    The ends are where a search space most often lies (a rank of 0, a log range that reaches an
    invalid value), so they are always tried; each categorical choice appears at least once.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    rng = random.Random(seed)
    n_choices = max((len(d.choices) for d in space.values() if isinstance(d, CategoricalDistribution)), default=0)
    n_points = max(2 + n_random, n_choices)
    points: list[dict[str, Any]] = [{} for _ in range(n_points)]
    for name, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            values = [dist.choices[i % len(dist.choices)] for i in range(n_points)]
        elif isinstance(dist, (IntDistribution, FloatDistribution)):
            step = dist.step
            # Optuna may round `high` down to the step grid; the grid's top is the real high end.
            high = dist.low + step * math.floor((dist.high - dist.low) / step + 1e-9) if step else dist.high
            values = [dist.low, high]
            for _ in range(n_points - 2):
                if dist.log:
                    value = math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
                elif step:
                    value = dist.low + step * rng.randint(0, round((high - dist.low) / step))
                else:
                    value = rng.uniform(dist.low, dist.high)
                values.append(value)
            if isinstance(dist, IntDistribution):
                values = [min(int(round(v)), int(high)) for v in values]
            else:
                values = [min(float(v), float(high)) for v in values]
        else:
            raise AssertionError(f"cannot sample {name!r} from {dist!r}: not a Float, Int or Categorical distribution")
        for point, value in zip(points, values, strict=True):
            point[name] = value
    return points


def same_structure(a: Any, b: Any, path: str = "batch") -> str | None:
    """None when ``a`` and ``b`` are identical (tensors bit for bit), else where they first differ."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            other = type(b if isinstance(a, torch.Tensor) else a).__name__
            return f"{path}: a tensor on one call, {other} on the other"
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{path}: {tuple(a.shape)} {a.dtype} vs {tuple(b.shape)} {b.dtype}"
        if not torch.equal(a.cpu(), b.cpu()):
            return f"{path}: values differ"
        return None
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if set(a) != set(b):
            return f"{path}: keys {sorted(a)} vs {sorted(b)}"
        for key in a:
            found = same_structure(a[key], b[key], f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            found = same_structure(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    if type(a).__module__ == "numpy" or type(b).__module__ == "numpy":  # arrays: == is elementwise
        import numpy as np

        return None if np.array_equal(a, b) else f"{path}: values differ"
    return None if a == b else f"{path}: {a!r} vs {b!r}"


def tensors_in(value: Any, path: str = "batch") -> list[tuple[str, torch.Tensor]]:
    """Every tensor inside a (nested) batch, with where it sits."""
    if isinstance(value, torch.Tensor):
        return [(path, value)]
    if isinstance(value, Mapping):
        return [item for key, v in value.items() for item in tensors_in(v, f"{path}[{key!r}]")]
    if isinstance(value, (list, tuple)):
        return [item for i, v in enumerate(value) for item in tensors_in(v, f"{path}[{i}]")]
    return []
