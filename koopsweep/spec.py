"""Study spec files: TOML data describing one sweep, validated before anything is written.

A spec is data, never code: it is parsed with `tomllib` and checked field by field; an error names the
file, the field and the bad value on one line. The validated spec is stored inside the Optuna study
(as JSON), so a worker anywhere needs only the storage URL and the study name.

Search fields (``[search]``) take a fixed value (``window = 16``), a list of choices
(``fallback = ["verify", "backtrack"]``) or a range table (``horizon = {low = 10, high = 500, log = true}``;
integers when both bounds are integers, with an optional ``step``).
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from koopsweep.errors import SpecError, redact
from koopsweep.knobs import KNOBS
from koopsweep.schedules import SCHEDULES

SAMPLERS = ("tpe", "random", "gp", "nsga2")
PRUNERS = ("median", "percentile", "hyperband", "threshold", "none")
OBJECTIVES = ("speedup", "speedup-and-gap")
TARGETS = ("final", "relative")
#: How a seed's runs share the machine (`koopsweep.pairing`): in alternating chunks, or one after another.
PAIRINGS = ("interleaved", "sequential")

#: The shared knobs a spec may search (`koopsweep.knobs.KNOBS`) and what it searches when it says
#: nothing: a range of windows and horizons, every other knob at its default.
SEARCH_DEFAULTS: dict[str, Any] = {
    **{name: knob.default for name, knob in KNOBS.items()},
    "window": {"low": 8, "high": 32, "step": 4},
    "horizon": {"low": 10, "high": 500, "log": True},
}


@dataclass(frozen=True)
class SearchField:
    """One shared knob: fixed, a categorical choice, or an int/float range."""

    name: str
    fixed: Any = None
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def is_fixed(self) -> bool:
        return self.choices is None and self.low is None

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)

    def distribution(self):
        """The Optuna distribution to sample, or None when the value is fixed."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution(list(self.choices))
        if self.low is None:
            return None
        if self.is_int:
            return IntDistribution(self.low, self.high, log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def values(self) -> list[Any]:
        """Every value the field can take when it is fixed or categorical (for name validation)."""
        if self.choices is not None:
            return list(self.choices)
        return [self.fixed] if self.is_fixed else []

    def to_json(self) -> Any:
        if self.is_fixed:
            return self.fixed
        if self.choices is not None:
            return list(self.choices)
        table = {"low": self.low, "high": self.high}
        if self.log:
            table["log"] = True
        if self.step is not None:
            table["step"] = self.step
        return table


@dataclass
class StudySpec:
    """A validated study spec. Field meanings are documented in ``studies/README.md``."""

    name: str
    task: str
    task_params: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    optimizer: str = "adam"
    lr: float | None = None
    baselines: list[str] = field(default_factory=lambda: ["adam", "adadelta"])
    budget: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    n_trials: int = 20
    variants: list[str] | None = None
    device: str = "auto"
    search: dict[str, SearchField] = field(default_factory=dict)
    # Pinned plugin parameters, by plugin name: the rest of a plugin's space is still searched.
    variant_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    fallback_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    # An optimizer's pinned parameters hold for its baseline runs and, when it is the inner optimizer,
    # there too; the inner optimizer's unpinned space is searched.
    optimizer_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    schedule: str | None = None  # None: the task's
    warmup: int | None = None
    objective: str = "speedup"
    target: str = "final"
    cap_factor: float = 2.0
    # How each seed's baselines and accelerated run share the machine (`koopsweep.pairing.PAIRINGS`).
    pairing: str = "interleaved"
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": None, "args": {}})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median", "args": {}})
    storage: str | None = None
    tracking_uri: str | None = None

    @property
    def primary_baseline(self) -> str:
        return self.baselines[0]

    @property
    def directions(self) -> list[str]:
        return ["maximize"] if self.objective == "speedup" else ["maximize", "minimize"]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["search"] = {name: f.to_json() for name, f in self.search.items()}
        return data

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


class _Checker:
    """Field-by-field checks that raise one-line `SpecError`s naming the source and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, field_name: str, problem: str) -> None:
        raise SpecError(f"{self.source}: field '{field_name}': {problem}")

    def typed(self, data: dict, key: str, types: type | tuple, default: Any, what: str, path: str = "") -> Any:
        name = f"{path}{key}"
        if key not in data:
            return default
        value = data[key]
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            self.fail(name, f"expected {what}, got {value!r}")
        if not isinstance(value, types):
            self.fail(name, f"expected {what}, got {value!r}")
        return value

    def finite(self, field_name: str, value: Any) -> None:
        # TOML has nan and inf; no field of a spec means anything with them.
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(field_name, f"must be a finite number, got {value!r}")

    def no_password(self, field_name: str, url: str | None) -> None:
        # A spec is stored inside the study and logged to MLflow as spec.json: a password in it would be
        # readable by everyone who can read either. Secrets go in the environment or --storage.
        if url is not None and redact(url) != url:
            self.fail(
                field_name,
                f"{redact(url)!r} holds a password; specs are stored with the study and logged to MLflow, so "
                "give the password outside the spec (--storage, KOOPSWEEP_STORAGE, MLFLOW_TRACKING_URI, ~/.pgpass)",
            )

    def choice(self, data: dict, key: str, options: tuple, default: str, path: str = "") -> str:
        value = self.typed(data, key, str, default, "a string", path)
        if value not in options:
            self.fail(f"{path}{key}", f"{value!r} is not one of {', '.join(options)}")
        return value

    def unknown(self, data: dict, known: set[str], path: str = "") -> None:
        extra = sorted(set(data) - known)
        if extra:
            self.fail(f"{path}{extra[0]}", f"unknown field; known fields: {', '.join(sorted(known))}")


def _search_field(check: _Checker, name: str, raw: Any) -> SearchField:
    path = f"search.{name}"
    if isinstance(raw, list):
        if not raw:
            check.fail(path, "an empty list of choices")
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in raw):
            check.fail(path, f"choices must be strings or numbers, got {raw!r}")
        for v in raw:
            check.finite(path, v)
        return SearchField(name, choices=tuple(raw))
    if isinstance(raw, dict):
        check.unknown(raw, {"low", "high", "log", "step"}, path + ".")
        if "low" not in raw or "high" not in raw:
            check.fail(path, "a range needs both 'low' and 'high'")
        low, high = raw["low"], raw["high"]
        for bound in (low, high):
            if isinstance(bound, bool) or not isinstance(bound, (int, float)):
                check.fail(path, f"bounds must be numbers, got {bound!r}")
            check.finite(path, bound)
        if low > high:
            check.fail(path, f"low {low!r} is above high {high!r}")
        log = check.typed(raw, "log", bool, False, "true or false", path + ".")
        step = check.typed(raw, "step", (int, float), None, "a number", path + ".")
        check.finite(path + ".step", step)
        if log and low <= 0:
            check.fail(path, f"a log range needs low > 0, got {low!r}")
        if step is not None and (step <= 0 or log):
            check.fail(path, "step must be positive and cannot be combined with log")
        return SearchField(name, low=low, high=high, log=log, step=step)
    if isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
        check.finite(path, raw)
        return SearchField(name, fixed=raw)
    if raw is None and KNOBS[name].default is None:  # a knob that is off unless given (never from TOML)
        return SearchField(name, fixed=None)
    check.fail(path, f"expected a value, a list of choices or a {{low, high}} table, got {raw!r}")
    raise AssertionError  # unreachable


def _check_search_values(check: _Checker, search: dict[str, SearchField]) -> None:
    """Every value a shared knob can take, checked as `koopsweep.knobs` defines it (ranges only for
    integer knobs; a fallback rule's name is checked against the installed ones by `check_plugins`)."""
    for name, knob in KNOBS.items():
        f = search[name]
        if f.low is not None and not knob.is_number:
            check.fail(f"search.{name}", "takes a name or a list of names, not a range")
        for v in f.values() + [v for v in (f.low, f.high) if v is not None]:
            problem = knob.problem(v)
            if problem:
                check.fail(f"search.{name}", f"{v!r} is invalid; {problem}")


TOP_LEVEL = {
    "name", "description", "task", "task_params", "optimizer", "lr", "baselines", "budget", "seeds",
    "n_trials", "variants", "device", "search", "objective", "target", "cap_factor", "pairing", "sampler", "pruner",
    "storage", "tracking_uri", "variant_params", "fallback_params", "optimizer_params", "schedule", "warmup",
}  # fmt: skip


def _pinned(check: _Checker, data: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    """A ``[variant_params.NAME]`` / ``[fallback_params.NAME]`` table: fixed values per plugin."""
    raw = check.typed(data, key, dict, {}, "a table of tables, one per plugin name")
    for plugin, values in raw.items():
        if not isinstance(values, dict):
            check.fail(f"{key}.{plugin}", f"expected a table of fixed parameter values, got {values!r}")
        for name, value in values.items():
            if isinstance(value, (dict, list)):
                check.fail(f"{key}.{plugin}.{name}", f"takes one fixed value, got {value!r}")
            if isinstance(value, float):
                check.finite(f"{key}.{plugin}.{name}", value)
    return {plugin: dict(values) for plugin, values in raw.items()}


def parse_spec(data: dict[str, Any], source: str = "<spec>") -> StudySpec:
    """Validate a spec's data (already parsed from TOML or JSON) and return a `StudySpec`."""
    check = _Checker(source)
    if not isinstance(data, dict) or not data:
        raise SpecError(f"{source}: the spec is empty; it needs at least 'name' and 'task'")
    check.unknown(data, TOP_LEVEL)
    for required in ("name", "task"):
        if required not in data:
            check.fail(required, "missing (required)")
    name = check.typed(data, "name", str, None, "a string")
    if not name.strip() or any(c in name for c in "/\\\n\t") or len(name) > 200:
        check.fail("name", f"{name!r} is not a usable study name (non-empty, no slashes, at most 200 characters)")
    task = check.typed(data, "task", str, None, "a task name")
    task_params = check.typed(data, "task_params", dict, {}, "a table of task parameters")
    installed = _installed_optimizers()
    optimizer = check.typed(data, "optimizer", str, "adam", "an optimizer name")
    if optimizer not in installed:
        check.fail("optimizer", f"{optimizer!r} is not an installed optimizer; installed: {', '.join(installed)}")
    lr = check.typed(data, "lr", (int, float), None, "a positive number")
    check.finite("lr", lr)
    if lr is not None and lr <= 0:
        check.fail("lr", f"must be positive, got {lr!r}")
    baselines = check.typed(data, "baselines", list, ["adam", "adadelta"], "a list of optimizer names")
    if not baselines:
        check.fail("baselines", "needs at least one baseline optimizer")
    for b in baselines:
        if b not in installed:
            check.fail("baselines", f"{b!r} is not an installed optimizer; installed: {', '.join(installed)}")
    if len(set(baselines)) != len(baselines):
        check.fail("baselines", f"lists a baseline twice: {baselines!r}")
    budget = check.typed(data, "budget", int, None, "a positive integer (gradient steps)")
    if budget is not None and budget < 1:
        check.fail("budget", f"must be at least 1, got {budget!r}")
    seeds = check.typed(data, "seeds", (list, int), [0], "a list of integer seeds")
    if isinstance(seeds, int):
        seeds = [seeds]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        check.fail("seeds", f"must be a non-empty list of integers >= 0, got {seeds!r}")
    n_trials = check.typed(data, "n_trials", int, 20, "a positive integer")
    if n_trials < 1:
        check.fail("n_trials", f"must be at least 1, got {n_trials!r}")
    variants = check.typed(data, "variants", list, None, "a list of variant names")
    if variants is not None and (not variants or not all(isinstance(v, str) for v in variants)):
        check.fail("variants", f"must be a non-empty list of variant names, got {variants!r}")
    device = check.typed(data, "device", str, "auto", "auto, cpu, cuda or cuda:N")
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
        check.fail("device", f"{device!r} is not auto, cpu, cuda or cuda:N")
    raw_search = check.typed(data, "search", dict, {}, "a table")
    check.unknown(raw_search, set(SEARCH_DEFAULTS), "search.")
    search = {k: _search_field(check, k, raw_search.get(k, SEARCH_DEFAULTS[k])) for k in SEARCH_DEFAULTS}
    _check_search_values(check, search)
    variant_params = _pinned(check, data, "variant_params")
    fallback_params = _pinned(check, data, "fallback_params")
    optimizer_params = _pinned(check, data, "optimizer_params")
    schedule = check.typed(data, "schedule", str, None, "constant or cosine")
    if schedule is not None and schedule not in SCHEDULES:
        check.fail("schedule", f"{schedule!r} is not one of {', '.join(SCHEDULES)}")
    warmup = check.typed(data, "warmup", int, None, "an integer >= 0 (gradient steps)")
    if warmup is not None and warmup < 0:
        check.fail("warmup", f"must be at least 0, got {warmup!r}")
    objective = check.choice(data, "objective", OBJECTIVES, "speedup")
    target = check.choice(data, "target", TARGETS, "final")
    cap_factor = check.typed(data, "cap_factor", (int, float), 2.0, "a number >= 1")
    check.finite("cap_factor", cap_factor)
    if cap_factor < 1:
        check.fail("cap_factor", f"must be at least 1, got {cap_factor!r}")
    pairing = check.choice(data, "pairing", PAIRINGS, "interleaved")
    sampler_raw = check.typed(data, "sampler", dict, {}, "a table")
    check.unknown(sampler_raw, {"name", "seed", "args"}, "sampler.")
    sampler = {
        "name": check.choice(sampler_raw, "name", SAMPLERS, "tpe", "sampler."),
        "seed": check.typed(sampler_raw, "seed", int, None, "an integer", "sampler."),
        "args": check.typed(sampler_raw, "args", dict, {}, "a table", "sampler."),
    }
    pruner_raw = check.typed(data, "pruner", dict, {}, "a table")
    check.unknown(pruner_raw, {"name", "args"}, "pruner.")
    pruner = {
        "name": check.choice(pruner_raw, "name", PRUNERS, "median", "pruner."),
        "args": check.typed(pruner_raw, "args", dict, {}, "a table", "pruner."),
    }
    if objective != "speedup" and pruner["name"] != "none":
        # Optuna cannot prune multi-objective trials; say so instead of failing later.
        check.fail("pruner.name", f"{pruner['name']!r} cannot be used with objective {objective!r}; use 'none'")
    storage = check.typed(data, "storage", str, None, "a storage URL")
    tracking_uri = check.typed(data, "tracking_uri", str, None, "a tracking URI")
    check.no_password("storage", storage)
    check.no_password("tracking_uri", tracking_uri)
    return StudySpec(
        name=name, task=task, task_params=task_params,
        description=check.typed(data, "description", str, "", "a string"),
        optimizer=optimizer, lr=lr, baselines=list(baselines), budget=budget, seeds=list(seeds),
        n_trials=n_trials, variants=variants, device=device, search=search, variant_params=variant_params,
        fallback_params=fallback_params, optimizer_params=optimizer_params, schedule=schedule, warmup=warmup,
        objective=objective,
        target=target, cap_factor=float(cap_factor), pairing=pairing, sampler=sampler, pruner=pruner, storage=storage,
        tracking_uri=tracking_uri,
    )  # fmt: skip


def _installed_optimizers() -> list[str]:
    """Registered optimizer names (entry-point metadata only: nothing is imported)."""
    from koopsweep import plugins

    return plugins.available("optimizers")


def load_spec(path: str | Path) -> StudySpec:
    """Read and validate a TOML spec file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the spec: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    return parse_spec(data, str(path))


def spec_from_json(text: str, source: str) -> StudySpec:
    """Rebuild a spec stored inside a study (see `StudySpec.dumps`)."""
    data = json.loads(text)
    # JSON has no None-free tables: drop the defaults we wrote as null so validation sees them unset.
    data = {k: v for k, v in data.items() if v is not None}
    data["sampler"] = {k: v for k, v in data.get("sampler", {}).items() if v is not None}
    return parse_spec(data, source)


def check_plugins(spec: StudySpec) -> None:
    """Check that the task, variants, fallback rules and optimizers the spec names are installed and load."""
    from koopsweep import plugins
    from koopsweep.errors import ParameterError

    def known(kind: str, name: str, where: str) -> None:
        names = plugins.available(kind)
        if name not in names:
            raise SpecError(
                f"{spec.name}: field '{where}': no {kind[:-1]} named {name!r} is installed; available: {', '.join(names)}"
            )

    known("tasks", spec.task, "task")
    try:  # a task checks its parameters when it is built (cheap: data is loaded later, by prepare)
        plugins.instantiate(plugins.load_task(spec.task), spec.task_params)
    except ParameterError as exc:
        raise SpecError(f"{spec.name}: field 'task_params': {exc}") from None
    for name in dict.fromkeys([spec.optimizer, *spec.baselines]):
        plugins.load_optimizer(name)  # a broken plugin fails here, in one line naming its entry point
    for v in spec.variants or []:
        known("variants", v, "variants")
    for rule in spec.search["fallback"].values():
        known("fallbacks", rule, "search.fallback")
    for kind, pinned, offered in (
        ("variants", spec.variant_params, spec.variants),
        ("fallbacks", spec.fallback_params, spec.search["fallback"].values()),
        ("optimizers", spec.optimizer_params, [spec.optimizer, *spec.baselines]),
    ):
        key = f"{kind[:-1]}_params"
        for name, values in pinned.items():
            known(kind, name, f"{key}.{name}")
            if offered is not None and name not in offered:
                raise SpecError(
                    f"{spec.name}: field '{key}.{name}': the study never uses {name!r} ({', '.join(offered)})"
                )
            cls = plugins.load(kind, name)
            unknown = sorted(set(values) - set(cls.parameters()))
            if unknown:
                raise SpecError(
                    f"{spec.name}: field '{key}.{name}.{unknown[0]}': not a parameter of {name!r} "
                    f"({', '.join(cls.parameters()) or 'none'})"
                )
            try:
                plugins.instantiate(cls, values)
            except ParameterError as exc:
                raise SpecError(f"{spec.name}: field '{key}.{name}': {exc}") from None
