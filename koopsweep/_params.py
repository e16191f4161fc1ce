"""Keyword parameters with defaults: the shared shape of variants, fallback rules, tasks and optimizers.

A plugin class declares every parameter it takes, with its default, in either of two ways:

- the plain Python way, as keyword arguments of ``__init__`` (scikit-learn's, Optuna's and PyDMD's
  convention), each value kept in an attribute of the same name::

      class Gain(Variant):
          def __init__(self, gain: float = 0.5):
              self.gain = gain

- or as data, in a ``defaults`` mapping, with an ``__init__`` that takes ``**params`` (the built-ins):
  the merged values are in ``self.params`` and ``validate_params`` checks them once.

Either way `Configurable.parameters` lists them, so the plugin loader can check a search space against
the real parameters, and ``params`` reads the values (from the attributes, in the plain form), so the
sweep can log every one. A plain-form class need not call the base ``__init__``.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Mapping
from numbers import Real
from typing import Any, ClassVar

from koopsweep.errors import ParameterError

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@functools.cache
def signature_parameters(cls: type) -> dict[str, Any]:
    """The named keyword arguments of ``cls.__init__`` with their defaults (``inspect.Parameter.empty``
    where one has none); ``**params`` and ``*args`` are not named parameters. Cached per class (the
    values are read at every ``params`` access); treat the result as read-only."""
    init = cls.__init__
    if init is object.__init__:
        return {}
    items = list(inspect.signature(init).parameters.values())[1:]  # without self
    return {p.name: p.default for p in items if p.kind in _NAMED}


class Configurable:
    """Base of every pluggable class: parameters with defaults, validated once at construction."""

    #: Every parameter the class accepts, with its default value (the data form; see the module).
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, **params: Any) -> None:
        accepted = type(self).parameters()
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise ParameterError(
                f"{type(self).__name__} got unknown parameter(s) {', '.join(unknown)}; "
                f"it accepts {', '.join(sorted(accepted)) or 'no parameters'}"
            )
        self.params = {**self.defaults, **params}
        self.validate_params()

    @classmethod
    def parameters(cls) -> dict[str, Any]:
        """Every parameter with its default: ``defaults`` and the named keyword arguments of ``__init__``."""
        return {**cls.defaults, **signature_parameters(cls)}

    @property
    def params(self) -> dict[str, Any]:
        """The instance's parameter values. In the plain form they are read from the attributes named
        after ``__init__``'s arguments (their defaults where an attribute is missing)."""
        own = self.__dict__.get("_params")
        named = signature_parameters(type(self))
        if not named:
            if own is None:  # a data-form subclass that did not call the base __init__
                own = self.__dict__["_params"] = dict(self.defaults)
            return own  # the same dict each time: validate_params may normalise values in place
        base = own if own is not None else dict(self.defaults)
        return {**base, **{name: getattr(self, name, default) for name, default in named.items()}}

    @params.setter
    def params(self, values: dict[str, Any]) -> None:
        self.__dict__["_params"] = values

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        """Optuna distributions for the parameters worth searching (a subset of `parameters`)."""
        return {}

    def validate_params(self) -> None:
        """Raise `ParameterError` for a value the class cannot use. Called once by ``__init__``."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def instantiate(cls: type, params: Mapping[str, Any] | None = None) -> Any:
    """``cls(**params)`` for a plugin class, whichever form it declares its parameters in: an unknown
    name, and a ``TypeError`` or ``ValueError`` from the plugin's own ``__init__``, become one-line
    `ParameterError`s naming the class (the data form already raises those itself)."""
    params = dict(params or {})
    accepted = cls.parameters()
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ParameterError(
            f"{cls.__name__} got unknown parameter(s) {', '.join(unknown)}; "
            f"it accepts {', '.join(sorted(accepted)) or 'no parameters'}"
        )
    try:
        return cls(**params)
    except ParameterError:
        raise
    except (TypeError, ValueError) as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
        raise ParameterError(f"{cls.__name__}({shown}) raised {type(exc).__name__}: {exc}") from exc


def is_int(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A finite real number that is not a bool (ints, floats, NumPy scalars)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def require(condition: bool, owner: object, name: str, value: Any, expected: str) -> None:
    """Raise a `ParameterError` naming the owner, the parameter, the bad value and what is expected."""
    if not condition:
        who = owner if isinstance(owner, str) else type(owner).__name__
        raise ParameterError(f"{who}: parameter {name}={value!r} is invalid; expected {expected}")
