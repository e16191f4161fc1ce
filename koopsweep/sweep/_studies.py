"""Creating, loading and deleting studies from specs, with the spec's sampler and pruner."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import optuna

from koopsweep.errors import UsageError
from koopsweep.spec import StudySpec, check_plugins, spec_from_json
from koopsweep.sweep._resilient import PendingResults, ResilientStorage, replay_pending
from koopsweep.sweep._storage import (
    DEFAULT_HEARTBEAT_INTERVAL, PARENT_RUN_ATTR, SAMPLER_ATTR, SPEC_ATTR, TRACKING_ATTR, _storage_file, open_storage,
)  # fmt: skip
from koopsweep.tracking import Tracker, check_tracking, mask_uri, resolve_tracking_uri


def build_sampler(spec: StudySpec, stream: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's sampler with its arguments (stored with the study: Optuna 5 changed TPE's defaults).

    A seeded sampler rebuilt in every worker would draw the same "random" start-up trials in each of
    them; ``stream`` (the number of trials already in the study, plus the worker's index) gives each
    worker and each resumption its own reproducible sequence.
    """
    name, seed, args = spec.sampler["name"], spec.sampler.get("seed"), dict(spec.sampler.get("args", {}))
    if seed is not None:
        seed = (seed + 104_729 * stream) % 2**32
    factories: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "gp": getattr(optuna.samplers, "GPSampler", optuna.samplers.TPESampler),
    }
    try:
        return factories[name](seed=seed, **args)
    except TypeError as exc:
        raise UsageError(f"{spec.name}: field 'sampler.args': {exc}") from None


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    name, args = spec.pruner["name"], dict(spec.pruner.get("args", {}))
    factories: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "threshold": optuna.pruners.ThresholdPruner,
        "none": optuna.pruners.NopPruner,
    }
    if name == "median":
        args.setdefault("n_startup_trials", 4)
        args.setdefault("n_warmup_steps", 0)
    try:
        return factories[name](**args)
    except TypeError as exc:
        raise UsageError(f"{spec.name}: field 'pruner.args': {exc}") from None


def create_study(spec: StudySpec, storage_url: str, *, tracking_uri: str | None = None) -> optuna.Study:
    """Create the study (schema first, so workers started afterwards never race on a fresh database),
    store the spec inside it, and open its MLflow parent run."""
    check_plugins(spec)
    # Everything that can be checked is checked before anything is written: the sampler's and pruner's
    # arguments, a database server, the tracking store (reads only), and only then a storage file (opening
    # one creates it).
    sampler, pruner = build_sampler(spec), build_pruner(spec)
    uri = tracking_uri or resolve_tracking_uri(spec.tracking_uri)
    storage = None if _storage_file(storage_url) else open_storage(storage_url)
    check_tracking(uri)
    storage = storage or open_storage(storage_url)
    if spec.name in _study_names(storage):
        raise UsageError(
            f"a study named {spec.name!r} already exists in {mask_uri(storage_url)}; "
            f"run it with 'koopsweep study run {spec.name}', or delete it with 'koopsweep study delete {spec.name}'"
        )
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        directions=spec.directions,
    )
    with warnings.catch_warnings():  # "experimental" since Optuna 3.2; the warning would only alarm users
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(objective_names(spec))  # what optuna-dashboard and Optuna's plots call them
    study.set_user_attr(SPEC_ATTR, spec.dumps())
    study.set_user_attr(SAMPLER_ATTR, {"optuna": optuna.__version__, **spec.sampler})
    study.set_user_attr(TRACKING_ATTR, mask_uri(uri))
    tracker = Tracker(uri, spec.name)
    parent = tracker.guarded(
        "create the study's parent run",
        tracker.start_study_run,
        spec.name,
        spec.dumps(),
        {"task": spec.task, "optimizer": spec.optimizer, "baselines": ",".join(spec.baselines),
         "objective": spec.objective, "sampler": spec.sampler["name"], "seeds": ",".join(map(str, spec.seeds))},
    )  # fmt: skip
    if parent:
        study.set_user_attr(PARENT_RUN_ATTR, parent)
    return study


def objective_names(spec: StudySpec) -> list[str]:
    """The names of the study's objectives, as the trials' user attributes call the same figures."""
    names = [f"speedup_vs_{spec.primary_baseline}"]
    return names if spec.objective == "speedup" else [*names, "loss_gap"]


def study_exists(name: str, storage_url: str) -> bool:
    """Whether the storage holds a study of that name (a missing SQLite or journal file holds none)."""
    path = _storage_file(storage_url)
    if path is not None and not os.path.exists(path):
        return False
    return name in _study_names(open_storage(storage_url))


def _study_names(storage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def load_study(
    name: str, storage_url: str, *, heartbeat_interval: int | None = None, worker_index: int = 0,
    storage_retry: float = 0,
) -> tuple[optuna.Study, StudySpec]:  # fmt: skip
    """Open an existing koopsweep study and the spec stored in it. On RDB storages its running trials
    send heartbeats (every ``heartbeat_interval`` seconds, 60 by default); with ``storage_retry`` (for
    workers) the storage rides out database outages of up to that many seconds (`ResilientStorage`)."""
    storage = open_storage(
        storage_url, heartbeat_interval=heartbeat_interval or DEFAULT_HEARTBEAT_INTERVAL, create=False,
        retry_for=storage_retry,
    )  # fmt: skip
    if isinstance(storage, ResilientStorage):
        storage.pending = PendingResults(storage_url, name)
    names = _study_names(storage)
    if name not in names:
        listing = ", ".join(names) if names else "none"
        raise UsageError(f"no study named {name!r} in {mask_uri(storage_url)}; studies there: {listing}")
    bare = optuna.load_study(study_name=name, storage=storage)
    raw = bare.user_attrs.get(SPEC_ATTR)
    if raw is None:
        raise UsageError(f"study {name!r} was not created by koopsweep (it has no stored spec)")
    spec = spec_from_json(raw, f"study {name!r}")
    stream = len(bare.get_trials(deepcopy=False)) + 1_000 * worker_index
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=build_sampler(spec, stream), pruner=build_pruner(spec)
    )
    return study, spec


def delete_study(name: str, storage_url: str) -> None:
    storage = open_storage(storage_url, create=False)
    if name not in _study_names(storage):
        raise UsageError(f"no study named {name!r} in {mask_uri(storage_url)}")
    optuna.delete_study(study_name=name, storage=storage)


def write_kept_results(study: optuna.Study, storage_url: str) -> list[int]:
    """Write to ``study`` the results that a worker on this machine measured but could not write when
    its storage stayed unreachable (`PendingResults`); returns the trial numbers they were written as."""
    return replay_pending(study, PendingResults(storage_url, study.study_name))
