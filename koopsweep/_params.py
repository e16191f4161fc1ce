"""Keyword parameters with defaults: the shared shape of variants, fallback rules and tasks.

A plugin class lists every parameter it takes with its default in ``defaults``; instances get the
merged values in ``self.params``. Declaring them as data (not only as ``__init__`` arguments) lets the
plugin loader check a search space against the real parameters and lets the sweep log every value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from koopsweep.errors import ParameterError


class Configurable:
    """Base of every pluggable class: parameters with defaults, validated once at construction."""

    #: Every parameter the class accepts, with its default value.
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            accepted = ", ".join(sorted(self.defaults)) or "no parameters"
            raise ParameterError(
                f"{type(self).__name__} got unknown parameter(s) {', '.join(unknown)}; it accepts {accepted}"
            )
        self.params: dict[str, Any] = {**self.defaults, **params}
        self.validate_params()

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        """Optuna distributions for the parameters worth searching (a subset of ``defaults``)."""
        return {}

    def validate_params(self) -> None:
        """Raise `ParameterError` for a value the class cannot use. Called once by ``__init__``."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def require(condition: bool, owner: object, name: str, value: Any, expected: str) -> None:
    """Raise a `ParameterError` naming the owner, the parameter, the bad value and what is expected."""
    if not condition:
        who = owner if isinstance(owner, str) else type(owner).__name__
        raise ParameterError(f"{who}: parameter {name}={value!r} is invalid; expected {expected}")
