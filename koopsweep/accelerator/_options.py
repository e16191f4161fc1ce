"""The accelerator's arguments, checked up front: knobs, ratios, the variant, the rule, the optimizer."""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

import torch

from koopsweep.errors import ParameterError
from koopsweep.fallbacks._base import FallbackRule
from koopsweep.knobs import KNOBS
from koopsweep.variants._base import Variant


def _knob(name: str, value: Any) -> Any:
    """A shared knob's value, checked as `koopsweep.knobs` defines it."""
    problem = KNOBS[name].problem(value)
    if problem:
        raise ParameterError(f"KoopmanAccelerator: {name}={value!r} is invalid; {problem}")
    if KNOBS[name].positive:
        return None if value is None else float(value)
    return int(value) if KNOBS[name].is_int else value


def _int_option(name: str, value: Any, minimum: int, hint: str = "") -> int:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < minimum:
        raise ParameterError(f"KoopmanAccelerator: {name}={value!r} is invalid; expected an integer >= {minimum}{hint}")
    return int(value)


def _ratio_option(name: str, value: Any, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, Real) or isinstance(value, bool) or math.isnan(value) or value <= 0:
        expected = "None or a number > 0" if allow_none else "a number > 0 (math.inf disables the guard)"
        raise ParameterError(f"KoopmanAccelerator: {name}={value!r} is invalid; expected {expected}")
    return float(value)


def _build_variant(variant: Any, params: dict[str, Any]) -> Variant:
    if isinstance(variant, Variant):
        if params:
            raise ParameterError(
                f"KoopmanAccelerator got a Variant instance ({variant!r}) and variant parameters "
                f"{', '.join(sorted(params))}; configure the instance instead, or pass the variant by name"
            )
        return variant
    if isinstance(variant, str):
        from koopsweep.plugins import instantiate, load_variant

        return instantiate(load_variant(variant), params)
    raise ParameterError(
        f"KoopmanAccelerator: variant={variant!r} is invalid; expected a registered variant name "
        "(see `koopsweep plugins list`) or a koopsweep.Variant instance"
    )


def _build_fallback(fallback: Any, params: dict[str, Any] | None) -> FallbackRule:
    if params is not None and not isinstance(params, Mapping):
        raise ParameterError(f"KoopmanAccelerator: fallback_params={params!r} is invalid; expected a dict or None")
    if isinstance(fallback, FallbackRule):
        if params:
            raise ParameterError(
                f"KoopmanAccelerator got a FallbackRule instance ({fallback!r}) and fallback_params; "
                "configure the instance instead, or pass the rule by name"
            )
        return fallback
    if isinstance(fallback, str):
        from koopsweep.plugins import instantiate, load_fallback

        return instantiate(load_fallback(fallback), params)
    raise ParameterError(
        f"KoopmanAccelerator: fallback={fallback!r} is invalid; expected a registered rule name "
        "(none, verify, backtrack, best-of, or a plugin's) or a koopsweep.FallbackRule instance"
    )


def _check_optimizer(optimizer: Any) -> None:
    if isinstance(optimizer, torch.optim.Optimizer):
        return
    missing = [a for a in ("param_groups", "state", "step", "zero_grad", "state_dict", "load_state_dict")
               if not hasattr(optimizer, a)]  # fmt: skip
    if missing:
        raise ParameterError(
            f"KoopmanAccelerator: optimizer={optimizer!r} is not a torch.optim.Optimizer "
            f"(it lacks {', '.join(missing)}); wrap an optimizer instance, e.g. torch.optim.Adam(model.parameters())"
        )
