"""The one loading path for variants, tasks, fallback rules and optimizers: Python entry points.

koopsweep's built-ins are declared in its own ``pyproject.toml`` under the same groups a third party
uses (``koopsweep.variants``, ``koopsweep.tasks``, ``koopsweep.fallbacks``, ``koopsweep.optimizers``). Discovery only reads
installed metadata; a plugin's code is imported when it is asked for by name or when plugins are
listed, and every loaded class is checked against its contract before anyone uses it.

A broken plugin never breaks the others: `describe` reports it as ``broken`` with its error, and
`load` raises for that name only, with the original error chained.
"""

from __future__ import annotations

import importlib.metadata as metadata
import inspect
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from koopsweep.errors import PluginLoadError, PluginNotFoundError, PluginValidationError
from koopsweep.knobs import KNOBS

#: Set to 1 to load only koopsweep's own built-ins (third-party entry points are ignored). Empty, 0,
#: false, no and off leave autoloading on.
AUTOLOAD_ENV = "KOOPSWEEP_DISABLE_PLUGIN_AUTOLOAD"
_AUTOLOAD_ON = ("", "0", "false", "no", "off")

#: Parameter names that belong to the framework (the accelerator, the sweep, the training run). A
#: plugin may not use them, or a spec could not tell whose parameter it sets.
RESERVED_PARAMETERS = frozenset(KNOBS) | frozenset(
    {
        "variant", "fallback_params", "max_jump_ratio", "explode_ratio", "optimizer", "optimizer_params", "lr",
        "seed", "budget", "device", "task", "time_cap", "schedule", "warmup",
    }
)  # fmt: skip

_OWN_DISTRIBUTION = "koopsweep"


@dataclass(frozen=True)
class Group:
    """One kind of plugin: its short name (``variants``), entry-point group and contract."""

    kind: str
    entry_point_group: str
    base_path: str  # "module:Class" of the abstract base, imported only when validating

    def base(self) -> type:
        module, _, name = self.base_path.partition(":")
        return getattr(__import__(module, fromlist=[name]), name)


GROUPS: dict[str, Group] = {
    "variants": Group("variants", "koopsweep.variants", "koopsweep.variants._base:Variant"),
    "tasks": Group("tasks", "koopsweep.tasks", "koopsweep.tasks._base:Task"),
    "fallbacks": Group("fallbacks", "koopsweep.fallbacks", "koopsweep.fallbacks._base:FallbackRule"),
    "optimizers": Group("optimizers", "koopsweep.optimizers", "koopsweep.optimizers._base:OptimizerPlugin"),
}


@dataclass
class PluginInfo:
    """What `koopsweep plugins list` shows for one entry point."""

    group: str
    name: str
    target: str
    distribution: str | None
    version: str | None
    status: str = "ok"
    error: str | None = None
    search_space: dict[str, str] = field(default_factory=dict)  # name -> repr of the Optuna distribution
    search_space_summary: dict[str, str] = field(default_factory=dict)  # name -> "int 1..8" and the like
    error_summary: str | None = None  # what is wrong, without the entry point the other columns show

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "name": self.name,
            "target": self.target,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "search_space": self.search_space,
        }


def _group(kind: str) -> Group:
    try:
        return GROUPS[kind]
    except KeyError:
        raise PluginNotFoundError(f"unknown plugin group {kind!r}; the groups are {', '.join(GROUPS)}") from None


def _distribution(ep: metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _is_own(ep: metadata.EntryPoint) -> bool:
    name, _ = _distribution(ep)
    return name is not None and name.replace("_", "-").lower() == _OWN_DISTRIBUTION


def _describe_entry_point(ep: metadata.EntryPoint) -> str:
    name, version = _distribution(ep)
    source = f"distribution {name} {version}" if name else "an unknown distribution"
    return f"entry point {ep.group}:{ep.name} = {ep.value}, from {source}"


@dataclass
class _Registry:
    """A group's entry points after resolving name collisions."""

    chosen: dict[str, metadata.EntryPoint]  # name -> the entry point that answers to it
    ambiguous: dict[str, str]  # name -> why it cannot be used (several third parties claim it)
    # Entry points that answer to no name: third parties that lost to a built-in, and the other
    # claimants of an ambiguous name; each with why.
    shadowed: list[tuple[metadata.EntryPoint, str]]


_registries: dict[tuple, _Registry] = {}


def _registry(kind: str) -> _Registry:
    """The group's registry; cached, since scanning installed metadata costs tens of milliseconds and
    sweeps ask for plugins at every trial. The key includes ``sys.path`` and the autoload switch, so
    a distribution made visible later (a new path entry) is still found."""
    key = (kind, tuple(sys.path), os.environ.get(AUTOLOAD_ENV, ""))
    if key not in _registries:
        _registries[key] = _scan(kind)
    return _registries[key]


def _scan(kind: str) -> _Registry:
    group = _group(kind)
    found = list(metadata.entry_points(group=group.entry_point_group))
    if os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in _AUTOLOAD_ON:
        found = [ep for ep in found if _is_own(ep)]
    by_name: dict[str, list[metadata.EntryPoint]] = {}
    for ep in found:
        claimants = by_name.setdefault(ep.name, [])
        # The same target can be seen twice (an editable install beside a build folder): one claim.
        if all(other.value != ep.value for other in claimants):
            claimants.append(ep)
    registry = _Registry({}, {}, [])
    for name, claimants in by_name.items():
        own = [ep for ep in claimants if _is_own(ep)]
        registry.chosen[name] = (own or claimants)[0]
        if len(claimants) == 1:
            continue
        if len(own) == 1:
            # koopsweep's built-in keeps its name; the others are reported, never silently used.
            for ep in claimants:
                if ep is not own[0]:
                    registry.shadowed.append((ep, f"the name {name!r} belongs to koopsweep's built-in; rename it"))
        else:
            listing = "; ".join(_describe_entry_point(ep) for ep in claimants)
            registry.ambiguous[name] = (
                f"the name {name!r} is claimed by several plugins, so none of them is used: {listing}; "
                "uninstall or rename all but one"
            )
            # Every claimant is listed (as broken), not only the one that happens to be found first.
            registry.shadowed.extend((ep, registry.ambiguous[name]) for ep in claimants[1:])
    return registry


def available(kind: str) -> list[str]:
    """Names registered in a group, without importing any plugin code."""
    return sorted(_registry(kind).chosen)


_loaded: dict[tuple[str, str], type] = {}


def _error(error_type: type[Exception], message: str, summary: str) -> Exception:
    """An error whose ``summary`` says what is wrong without repeating the entry point (for tables)."""
    error = error_type(message)
    error.summary = summary  # type: ignore[attr-defined]
    return error


def load(kind: str, name: str) -> type:
    """Import, validate and return the class registered as ``name`` in group ``kind``."""
    registry = _registry(kind)
    if name not in registry.chosen:
        names = ", ".join(sorted(registry.chosen)) or "none"
        raise PluginNotFoundError(f"no {kind[:-1]} named {name!r} is installed; available {kind}: {names}")
    if name in registry.ambiguous:
        claimed = f"the name {name!r} is claimed by several plugins"
        raise _error(PluginValidationError, registry.ambiguous[name], claimed)
    ep = registry.chosen[name]
    key = (ep.group, ep.value)
    if key not in _loaded:
        try:
            cls = ep.load()
        # Any failure inside plugin code is the plugin's, not ours; that includes a module that calls
        # sys.exit() when a dependency is missing (KeyboardInterrupt still stops everything).
        except (Exception, SystemExit) as exc:
            cause = f"{type(exc).__name__}: {exc}"
            where = _describe_entry_point(ep)
            raise _error(
                PluginLoadError, f"{kind[:-1]} {name!r} failed to import ({where}): {cause}", f"import failed: {cause}"
            ) from exc
        validate(kind, cls, where=_describe_entry_point(ep))
        _loaded[key] = cls
    return _loaded[key]


def load_variant(name: str) -> type:
    """The `koopsweep.Variant` subclass registered as ``name``."""
    return load("variants", name)


def load_task(name: str) -> type:
    """The `koopsweep.Task` subclass registered as ``name``."""
    return load("tasks", name)


def load_fallback(name: str) -> type:
    """The `koopsweep.FallbackRule` subclass registered as ``name``."""
    return load("fallbacks", name)


def load_optimizer(name: str) -> type:
    """The `koopsweep.OptimizerPlugin` subclass registered as ``name``."""
    return load("optimizers", name)


def validate(kind: str, cls: Any, *, where: str = "") -> None:
    """Check that ``cls`` fulfils the contract of group ``kind``; raise `PluginValidationError` if not."""
    from optuna.distributions import BaseDistribution

    group = _group(kind)
    prefix = f"{where}: " if where else ""

    def fail(problem: str) -> None:
        raise _error(PluginValidationError, f"{prefix}{problem}", problem)

    base = group.base()
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        fail(f"{cls!r} is not a subclass of koopsweep.{base.__name__}")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        fail(f"{cls.__name__} leaves abstract methods unimplemented: {missing}")
    defaults = getattr(cls, "defaults", None)
    if not isinstance(defaults, Mapping):
        fail(f"{cls.__name__}.defaults must be a mapping of parameter name to default, got {defaults!r}")
    declared = cls.parameters()  # defaults, and the named keyword arguments of __init__
    no_default = sorted(name for name, value in declared.items() if value is inspect.Parameter.empty)
    if no_default:
        fail(f"{cls.__name__}.__init__ takes {', '.join(no_default)} without a default; every parameter needs one")
    clashing = sorted(set(declared) & RESERVED_PARAMETERS)
    if clashing:
        fail(f"{cls.__name__} uses parameter names reserved by koopsweep: {', '.join(clashing)}")
    try:
        space = cls.search_space()
    except Exception as exc:
        fail(f"{cls.__name__}.search_space() raised {type(exc).__name__}: {exc}")
    if not isinstance(space, Mapping):
        fail(f"{cls.__name__}.search_space() must return a dict of Optuna distributions, got {type(space).__name__}")
    for param, dist in space.items():
        if not isinstance(dist, BaseDistribution):
            fail(f"{cls.__name__}.search_space()[{param!r}] is {dist!r}, not an optuna.distributions distribution")
        if param not in declared:
            fail(
                f"{cls.__name__}.search_space() names {param!r}, which is not one of its parameters "
                f"({', '.join(declared) or 'none'}: the keyword arguments of __init__, or defaults)"
            )
    if kind == "tasks":
        budget = getattr(cls, "default_budget", None)
        if not isinstance(budget, int) or isinstance(budget, bool) or budget <= 0:
            fail(f"{cls.__name__}.default_budget must be a positive int, got {budget!r}")
        lrs = getattr(cls, "baseline_lrs", None)
        if not isinstance(lrs, Mapping) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and v > 0 for k, v in lrs.items()
        ):
            fail(f"{cls.__name__}.baseline_lrs must map optimizer names to positive learning rates, got {lrs!r}")
    else:
        if kind == "optimizers":
            lr = getattr(cls, "default_lr", None)
            if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0 or lr == float("inf"):
                fail(f"{cls.__name__}.default_lr must be a positive learning rate, got {lr!r}")
        try:
            cls()
        except Exception as exc:
            fail(f"{cls.__name__}() with its default parameters raised {type(exc).__name__}: {exc}")


def instantiate(cls: type, params: Mapping[str, Any] | None = None) -> Any:
    """A plugin instance from a loaded class and parameter values, whichever form the class declares its
    parameters in (see `koopsweep._params`); bad names or values are one-line `ParameterError`s."""
    from koopsweep._params import instantiate as build

    return build(cls, params)


def describe(kinds: list[str] | None = None) -> list[PluginInfo]:
    """Every installed plugin with its status; loads each one (a broken one is reported, not raised)."""
    rows: list[PluginInfo] = []
    for kind in kinds or list(GROUPS):
        registry = _registry(kind)
        entries = [(ep, None) for ep in registry.chosen.values()] + registry.shadowed
        for ep, lost_reason in sorted(entries, key=lambda pair: (pair[0].name, pair[0].value)):
            dist, version = _distribution(ep)
            info = PluginInfo(kind, ep.name, ep.value, dist, version)
            try:
                if lost_reason:
                    raise _error(PluginValidationError, f"{_describe_entry_point(ep)}: {lost_reason}", lost_reason)
                cls = load(kind, ep.name)
                space = cls.search_space()
                info.search_space = {k: repr(v) for k, v in space.items()}
                info.search_space_summary = {k: summarize_distribution(v) for k, v in space.items()}
            except Exception as exc:
                info.status, info.error = "broken", str(exc)
                info.error_summary = getattr(exc, "summary", None) or f"{type(exc).__name__}: {exc}"
            rows.append(info)
    return rows


def summarize_distribution(dist: Any) -> str:
    """A short form of an Optuna distribution for tables: ``int 1..8``, ``float 1e-05..0.1 log``,
    ``{none, stable}``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        return "{" + ", ".join(str(c) for c in dist.choices) + "}"
    if isinstance(dist, (IntDistribution, FloatDistribution)):
        kind = "int" if isinstance(dist, IntDistribution) else "float"
        text = f"{kind} {dist.low:g}..{dist.high:g}"
        if dist.log:
            text += " log"
        if dist.step is not None and not (kind == "int" and dist.step == 1):
            text += f" step {dist.step:g}"
        return text
    return repr(dist)
