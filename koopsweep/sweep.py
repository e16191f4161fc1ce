"""Optuna sweeps: creating studies from specs, the trial objective, running workers, summaries.

Optuna does the sampling, pruning, storage and heartbeats; this module only translates between a
`StudySpec` and Optuna, and runs one trial as a paired measurement (baselines, then the accelerated run
on the same seed, data order and device).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from koopsweep import plugins, reporting
from koopsweep.errors import KoopsweepError, UsageError, redact
from koopsweep.spec import StudySpec, check_plugins, spec_from_json
from koopsweep.tracking import Tracker, check_tracking, mask_uri, resolve_tracking_uri  # noqa: F401 (mask_uri re-exported)

DEFAULT_STORAGE = "sqlite:///koopsweep.db"
STORAGE_ENV = "KOOPSWEEP_STORAGE"
SPEC_ATTR = "koopsweep.spec"
SAMPLER_ATTR = "koopsweep.sampler"
PARENT_RUN_ATTR = "koopsweep.mlflow_parent_run_id"
TRACKING_ATTR = "koopsweep.tracking_uri"
#: Seconds between a running trial's heartbeats on RDB storages when --heartbeat-interval is not given:
#: without heartbeats a trial whose worker died would stay RUNNING for ever and never be retried.
DEFAULT_HEARTBEAT_INTERVAL = 60


class TrialFailed(KoopsweepError):
    """A trial could not produce a measurement (for example its training diverged)."""


class _NoTraceback(logging.Filter):
    """Optuna logs a failed trial with its traceback. The reason is in the message and in the trial's
    ``fail_reason``; the traceback of a caught `TrialFailed` is noise, and that of a real bug is shown
    once, by the command line, with --debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("optuna.study._optimize").addFilter(_NoTraceback())


# ------------------------------------------------------------------------------------- storage
def resolve_storage(option: str | None, spec: StudySpec | None = None) -> str:
    """``--storage``, else ``KOOPSWEEP_STORAGE``, else the spec's, else ``sqlite:///koopsweep.db``."""
    return option or os.environ.get(STORAGE_ENV) or (spec.storage if spec else None) or DEFAULT_STORAGE


def _storage_file(url: str) -> str | None:
    """The local file behind a SQLite or journal URL (None for server databases)."""
    if url.startswith("journal://") or url.endswith((".log", ".journal")):
        return url.removeprefix("journal://")
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return url.removeprefix("sqlite:///").split("?")[0]
    return None


def open_storage(url: str, *, heartbeat_interval: int | None = None, max_retry: int = 1, create: bool = True):
    """An Optuna storage for ``url``: RDB (sqlite, postgresql, ...) or a journal file (``*.log`` or
    ``journal:///path``). RDB storages get heartbeats, so a trial whose worker died is failed and retried.
    With ``create=False`` a missing SQLite or journal file is an error instead of a new empty storage
    (reading commands must not leave files behind)."""
    path = _storage_file(url)
    if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise UsageError(f"storage {mask_uri(url)}: the folder {os.path.dirname(os.path.abspath(path))} does not exist")
    if not create and path is not None and not os.path.exists(path):
        raise UsageError(f"no storage at {mask_uri(url)}: {path} does not exist (create a study first)")
    try:
        if url.startswith("journal://") or url.endswith((".log", ".journal")):
            from optuna.storages.journal import JournalFileBackend, JournalStorage

            path = url.removeprefix("journal://")
            return JournalStorage(JournalFileBackend(path))
        if "://" not in url:
            raise UsageError(
                f"storage {url!r} is not a URL; use sqlite:///FILE.db, postgresql://USER@HOST/DB or FILE.log"
            )
        kwargs: dict[str, Any] = {}
        with warnings.catch_warnings():
            # Heartbeats are "experimental" in Optuna since 2.x; the warning would only alarm users.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if heartbeat_interval:
                kwargs = dict(
                    heartbeat_interval=heartbeat_interval,
                    grace_period=max(2 * heartbeat_interval, heartbeat_interval + 5),
                    heartbeat_stale_trial_callback=RetryStaleTrial(max_retry=max_retry),
                )
            return optuna.storages.RDBStorage(url, **kwargs)
    except UsageError:
        raise
    except Exception as exc:
        raise _storage_error(url, exc) from None


def _storage_error(url: str, exc: Exception) -> KoopsweepError:
    """One masked line for a storage that cannot be opened: bad input (an unknown scheme or driver, a
    malformed URL) exits 2; a database that does not answer or refuses the connection exits 1."""
    from sqlalchemy.exc import OperationalError

    # SQLAlchemy and libpq add indented hints and a "Background on this error" link on further lines.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("(Background")]
    message = f"cannot open storage {mask_uri(url)}: {type(exc).__name__}: {' '.join(lines)}"
    runtime = isinstance(exc, (OperationalError, OSError))
    return (KoopsweepError if runtime else UsageError)(redact(message))


class RetryStaleTrial:
    """What happens to a trial whose worker died (its heartbeat went stale, and Optuna marked it FAIL):
    its MLflow run is ended as FAILED, then Optuna's own callback queues the same parameters again as a
    WAITING trial, which the next free worker picks up. Runs in whichever worker noticed the stale trial."""

    #: Attributes that describe one attempt, not the parameters: the retry gets its own.
    PER_ATTEMPT = ("mlflow_run_id", "worker")

    def __init__(self, max_retry: int | None = 1) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            _end_run_of_dead_worker(study, run_id)
        attempt = copy.copy(trial)
        attempt.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in self.PER_ATTEMPT}
        attempt.user_attrs["retry_of"] = trial.number
        self.retry(study, attempt)


def _end_run_of_dead_worker(study: optuna.Study, run_id: str) -> None:
    raw = study.user_attrs.get(SPEC_ATTR)
    if raw is None:
        return
    uri = study_tracking_uri(study, spec_from_json(raw, f"study {study.study_name!r}"))
    try:
        tracker = Tracker(uri, study.study_name)
    except Exception as exc:  # tracking must never stop the worker that noticed the dead one
        warnings.warn(
            f"MLflow tracking at {mask_uri(uri)} is unreachable ({type(exc).__name__}); "
            f"run {run_id} of a dead worker's trial stays RUNNING there",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    tracker.guarded("end a dead worker's trial run", tracker.finish, run_id, "FAILED")


def study_tracking_uri(study: optuna.Study, spec: StudySpec) -> str:
    """Where a worker tracks: ``MLFLOW_TRACKING_URI`` if set, else the URI recorded when the study was
    created (so a worker on another host, given only the storage and the name, logs to the same MLflow),
    else the spec's or ``./mlflow.db``. A recorded password is masked, and a recorded SQLite file may not
    exist on this host: neither is usable."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return resolve_tracking_uri()
    stored = study.user_attrs.get(TRACKING_ATTR)
    if stored and "***" not in stored:
        path = _storage_file(stored) if stored.startswith("sqlite:///") else None
        if path is None or os.path.exists(path):
            return stored
    return resolve_tracking_uri(spec.tracking_uri)


# ------------------------------------------------------------------------------ samplers, pruners
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


# -------------------------------------------------------------------------------- create / load
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
    name: str, storage_url: str, *, heartbeat_interval: int | None = None, worker_index: int = 0
) -> tuple[optuna.Study, StudySpec]:
    """Open an existing koopsweep study and the spec stored in it. On RDB storages its running trials
    send heartbeats (every ``heartbeat_interval`` seconds, 60 by default)."""
    storage = open_storage(storage_url, heartbeat_interval=heartbeat_interval or DEFAULT_HEARTBEAT_INTERVAL, create=False)
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


# --------------------------------------------------------------------------------- suggestions
def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Sample one parameter through Optuna's public suggest API from a distribution object."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    raise UsageError(f"parameter {name!r}: unsupported distribution {dist!r}")


def variant_names(spec: StudySpec) -> list[str]:
    """The spec's variants, or every installed variant that loads (broken ones are left out)."""
    if spec.variants:
        return list(spec.variants)
    usable = []
    for name in plugins.available("variants"):
        try:
            plugins.load_variant(name)
        except KoopsweepError:
            continue
        usable.append(name)
    return usable


def _plugin_params(trial: optuna.Trial, name: str, cls: Any, pinned: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A plugin's parameters: those the spec pins, then the rest of its declared space, sampled as
    ``<name>.<param>``."""
    fixed = dict(pinned.get(name, {}))
    sampled = {k: suggest(trial, f"{name}.{k}", d) for k, d in cls.search_space().items() if k not in fixed}
    return {**fixed, **sampled}


def suggest_config(trial: optuna.Trial, spec: StudySpec, variants: list[str]):
    """Define-by-run: the variant first, then its own space, then the shared knobs and the rule's space."""
    from koopsweep.training import KoopmanConfig

    variant = trial.suggest_categorical("variant", variants)
    variant_cls = plugins.load_variant(variant)
    variant_params = _plugin_params(trial, variant, variant_cls, spec.variant_params)
    shared = {}
    for name, field in spec.search.items():
        dist = field.distribution()
        shared[name] = field.fixed if dist is None else suggest(trial, name, dist)
    rule_cls = plugins.load_fallback(shared["fallback"])
    rule_params = _plugin_params(trial, shared["fallback"], rule_cls, spec.fallback_params)
    config = KoopmanConfig(variant=variant, variant_params=variant_params, fallback_params=rule_params, **shared)
    # A variant may need more snapshots than the sampled window (e.g. Hankel delays): raise the window
    # rather than waste the trial, and record that it happened.
    needed = plugins.instantiate(variant_cls, variant_params).min_window()
    if config.window < needed:
        trial.set_user_attr("window_raised_to", needed)
        config.window = needed
    return config


def suggest_optimizer_params(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """The inner optimizer's parameters: those the spec pins, the rest of its space sampled as
    ``<optimizer>.<param>`` (the baselines always run with the pinned values and the defaults)."""
    return _plugin_params(trial, spec.optimizer, plugins.load_optimizer(spec.optimizer), spec.optimizer_params)


# ------------------------------------------------------------------------------------ objective
@dataclass
class TrialMeasurement:
    """What one trial measured, over all its seeds."""

    config: Any  # KoopmanConfig
    optimizer_params: dict[str, Any]  # the inner optimizer's
    comparisons: list[Any]  # measure.Comparison, one per seed and baseline
    koopman_runs: list[Any]  # training.RunResult, one per seed
    baseline_runs: list[Any]

    def for_baseline(self, name: str) -> list[Any]:
        return [c for c in self.comparisons if c.baseline == name]


class Objective:
    """Runs one trial: for each seed, the baselines then the accelerated run, paired on one device."""

    def __init__(self, spec: StudySpec, device, tracker: Tracker | None, parent_run_id: str | None) -> None:
        from koopsweep.devices import device_label, environment
        from koopsweep.training import task_schedule

        self.spec = spec
        self.device = device
        self.task = plugins.instantiate(plugins.load_task(spec.task), spec.task_params)
        self.budget = spec.budget or type(self.task).default_budget
        self.schedule = task_schedule(self.task, self.budget, spec.schedule, spec.warmup)
        self.variants = variant_names(spec)
        if not self.variants:
            raise UsageError(f"{spec.name}: no usable variant is installed (see 'koopsweep plugins list')")
        self.tracker = tracker
        self.parent_run_id = parent_run_id
        self.device_name = device_label(device)
        self.context = reporting.TrialContext(
            spec=spec, budget=self.budget, lr=spec.lr or self.lr(spec.optimizer), schedule=self.schedule.describe(),
            environment=environment(device), task_facts=self.task.data_facts(), parent_run_id=parent_run_id,
        )  # fmt: skip

    def lr(self, optimizer: str) -> float:
        """The task's tuned rate for ``optimizer``, else its plugin's default (see `untuned`)."""
        from koopsweep.training import learning_rate

        return learning_rate(self.task, optimizer)[0]

    def untuned(self) -> list[str]:
        """The study's optimizers without a tuned rate on its task (they run at their default_lr)."""
        from koopsweep.training import learning_rate

        names = dict.fromkeys([*self.spec.baselines] + ([] if self.spec.lr else [self.spec.optimizer]))
        return [name for name in names if not learning_rate(self.task, name)[1]]

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        # Which process ran it: a trial that is later failed as stale names its dead worker.
        trial.set_user_attr("worker", worker_label(os.getpid()))
        import torch

        trial.set_user_attr("torch_threads", torch.get_num_threads())
        config = suggest_config(trial, self.spec, self.variants)
        optimizer_params = suggest_optimizer_params(trial, self.spec)
        trial.set_user_attr("config", config.flat_params())
        untuned = self.untuned()
        if untuned:
            trial.set_user_attr("untuned_lrs", untuned)
        trial_run = None
        if self.tracker and self.parent_run_id:
            trial_run = self.tracker.guarded(
                "start the trial's run",
                self.tracker.start_child,
                self.parent_run_id,
                f"trial-{trial.number}-{config.variant}",
                "trial",
                {"koopsweep.trial": str(trial.number), "koopsweep.variant": config.variant},
            )
            if trial_run:
                trial.set_user_attr("mlflow_run_id", trial_run)
        status = "FAILED"
        try:
            measurement = self.measure(trial, config, optimizer_params)
            values = self.objective_values(measurement)
            for key, value in reporting.trial_summary(measurement, self.spec).items():
                trial.set_user_attr(key, value)
            status = "FINISHED"
            if trial_run:  # tracking must never cost a measured result
                self.tracker.guarded(
                    "log the trial", reporting.log_trial, self.tracker, self.context, trial.number, trial_run, measurement
                )  # fmt: skip
            return values
        except (optuna.TrialPruned, KeyboardInterrupt):  # pruned or interrupted: MLflow's KILLED
            status = "KILLED"
            raise
        except TrialFailed as exc:
            trial.set_user_attr("fail_reason", str(exc))  # Optuna 5 keeps no reason for a failed trial
            raise
        finally:
            if trial_run:
                self.tracker.guarded("end the trial's run", self.tracker.finish, trial_run, status)

    def measure(self, trial: optuna.Trial, config, optimizer_params: dict[str, Any]) -> TrialMeasurement:
        from koopsweep.measure import compare, first_reaching, target_loss
        from koopsweep.training import train

        spec = self.spec
        comparisons, koopman_runs, baseline_runs = [], [], []
        max_steps = int(math.ceil(spec.cap_factor * self.budget))
        for index, seed in enumerate(spec.seeds):
            baselines = {
                name: train(
                    self.task, optimizer=name, lr=self.lr(name), seed=seed, device=self.device, max_steps=self.budget,
                    optimizer_params=spec.optimizer_params.get(name), schedule=self.schedule,
                )  # fmt: skip
                for name in spec.baselines
            }
            for name, run in baselines.items():
                if run.stopped == "diverged":
                    raise TrialFailed(f"baseline {name} diverged on seed {seed}; check the task's tuned learning rate")
            primary = baselines[spec.primary_baseline]
            targets = {name: target_loss(run, spec.target) for name, run in baselines.items()}
            offset = index * (max_steps + 1)

            def report(point, primary=primary, offset=offset) -> bool:
                # Intermediate value: how much sooner than the primary baseline this loss was reached.
                hit = first_reaching(primary.curve, point.loss)
                base_time = hit.time_s if hit else primary.time_s
                if point.time_s <= 0 or len(spec.directions) > 1:
                    return False
                trial.report(base_time / point.time_s, offset + point.step)
                return trial.should_prune()

            koopman = train(
                self.task,
                optimizer=spec.optimizer,
                lr=spec.lr or self.lr(spec.optimizer),
                seed=seed,
                device=self.device,
                max_steps=max_steps,
                koopman=config,
                eval_every=self.task.checkpoint_interval(self.budget),
                stop_below=min(targets.values()),
                max_time_s=spec.cap_factor * max(run.time_s for run in baselines.values()),
                on_checkpoint=report,
                optimizer_params=optimizer_params,
                schedule=self.schedule,
            )
            baseline_runs += list(baselines.values())
            koopman_runs.append(koopman)
            if koopman.stopped == "pruned":
                raise optuna.TrialPruned()
            if koopman.stopped == "diverged":
                raise TrialFailed(
                    f"the accelerated run diverged on seed {seed} (loss {koopman.final_loss}); "
                    f"rejections: {(koopman.stats or {}).get('rejections')}"
                )
            comparisons += [compare(run, koopman, target=spec.target) for run in baselines.values()]
        return TrialMeasurement(config, optimizer_params, comparisons, koopman_runs, baseline_runs)

    def objective_values(self, measurement: TrialMeasurement) -> float | tuple[float, float]:
        from koopsweep.measure import median

        primary = measurement.for_baseline(self.spec.primary_baseline)
        speedup = median([c.speedup_bound for c in primary]) or 0.0
        if self.spec.objective == "speedup":
            return speedup
        gap = median([c.loss_gap for c in primary])
        return speedup, gap if gap is not None else math.inf


# ---------------------------------------------------------------------------------------- runs
def retried_numbers(trials) -> set[int]:
    """Numbers of the trials that were failed as stale and queued again: each is replaced by its retry,
    so it does not count towards the study's trials."""
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def _count(study: optuna.Study, states, workers: set[str] | None = None) -> int:
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    return sum(
        1 for t in trials
        if t.state in states and t.number not in retried and (workers is None or t.user_attrs.get("worker") in workers)
    )  # fmt: skip


FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


def finished_trials(study: optuna.Study, *, workers: set[str] | None = None) -> int:
    """Finished trials (a failed one that was retried counts once, as its retry); with ``workers``
    (`worker_label` values), only those these processes ran."""
    return _count(study, FINISHED_STATES, workers)


class StopAtTotal:
    """Stops a worker once the study holds ``total`` trials, finished or running, so that workers in
    other processes or on other hosts share one target. (Two workers checking at the same instant may
    each start one more trial: the overshoot is at most the number of workers minus one.)

    A dead worker's trial is failed and queued again first, so that it does not pass for running; and a
    worker never stops while queued (WAITING) trials remain, or a retry could be left behind by all."""

    STATES = (
        optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL,
        optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING,
    )  # fmt: skip

    def __init__(self, total: int) -> None:
        self.total = total

    def reached(self, study: optuna.Study) -> bool:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a no-op without heartbeats
        if study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            return False
        return _count(study, self.STATES) >= self.total

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.reached(study):
            study.stop()


def run_worker(
    study: optuna.Study,
    spec: StudySpec,
    *,
    n_trials: int | None,
    timeout: float | None = None,
    device_name: str | None = None,
    callbacks: list[Callable] | None = None,
    tracking_uri: str | None = None,
    until_total: int | None = None,
) -> None:
    """Run trials of ``study`` in this process until ``n_trials`` more have finished, the study holds
    ``until_total`` trials, or time runs out. With ``until_total`` on a storage with heartbeats, the
    worker then waits (polling every heartbeat interval) while other workers' trials are running, and
    runs any of them that is retried because its worker died. The study's MLflow run is RUNNING while
    the worker runs trials and FINISHED when it leaves the study done (`study_done`)."""
    from koopsweep.devices import resolve_device

    device = resolve_device(device_name or spec.device)
    uri = tracking_uri or study_tracking_uri(study, spec)
    parent = study.user_attrs.get(PARENT_RUN_ATTR)
    try:
        tracker = Tracker(uri, spec.name)
        if parent is None:
            parent = tracker.start_study_run(spec.name, spec.dumps(), {"task": spec.task})
            study.set_user_attr(PARENT_RUN_ATTR, parent)
    except Exception as exc:
        raise KoopsweepError(
            f"MLflow tracking at {mask_uri(uri)} is unreachable ({type(exc).__name__}: {exc}); "
            "start the tracking server or set MLFLOW_TRACKING_URI, then run again"
        ) from None
    objective = Objective(spec, device, tracker, parent)
    callbacks = list(callbacks or [])
    stopper = None
    if until_total is not None:
        stopper = StopAtTotal(until_total)
        if stopper.reached(study):
            return
        callbacks.append(stopper)
    # The study's run is RUNNING while trials run, even after an earlier worker had finished it.
    tracker.guarded("mark the study's run as running", tracker.mark_running, parent)
    try:
        _optimize_until_done(study, objective, n_trials, timeout, callbacks, stopper)
    finally:
        if study_done(study, spec):
            tracker.guarded("finish the study's run", tracker.finish, parent, "FINISHED")


def study_done(study: optuna.Study, spec: StudySpec) -> bool:
    """Whether the study has reached its target (the spec's ``n_trials``) and no trial is running or
    queued: then its MLflow run is FINISHED."""
    busy = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    return finished_trials(study) >= spec.n_trials and not study.get_trials(deepcopy=False, states=busy)


def _optimize_until_done(study, objective, n_trials, timeout, callbacks, stopper) -> None:
    """`run_worker`'s loop: Optuna's optimize, then, towards a shared target, the wait for retries."""
    started = time.monotonic()

    def optimize(n: int | None) -> bool:
        """Run trials; False once the timeout has passed."""
        left = None if timeout is None else timeout - (time.monotonic() - started)
        if left is not None and left <= 0:
            return False
        study.optimize(
            objective, n_trials=n, timeout=left, catch=(TrialFailed,), callbacks=callbacks,
            gc_after_trial=False, show_progress_bar=False,
        )  # fmt: skip
        return True

    if not optimize(n_trials) or stopper is None:
        return
    # The shared target counts other workers' running trials. Stay while there are any: if one of those
    # workers dies, its trial is failed once its heartbeat is stale and queued again, and a worker must be
    # left to run it (without heartbeats a dead trial is never noticed, so there is nothing to wait for).
    interval = _heartbeat_interval(study)
    while interval and study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if timeout is not None and time.monotonic() - started >= timeout:
            return
        time.sleep(interval)
        if not stopper.reached(study) and not optimize(None):  # a retry was queued: run it
            return


def _heartbeat_interval(study: optuna.Study) -> int | None:
    """Seconds between heartbeats of ``study``'s storage, or None when it sends none."""
    storage = study._storage  # Optuna's own heartbeat helpers take the study's storage the same way
    interval = getattr(storage, "get_heartbeat_interval", None)  # RDB storages; None when disabled
    return interval() if interval is not None else None


def worker_command(
    name: str, storage_url: str, *, n_trials: int | None, until_total: int | None, device: str, index: int,
    timeout: float | None, heartbeat_interval: int | None, threads: int | None = None,
) -> list[str]:  # fmt: skip
    """The command line of one worker process (the same `study run`, told its share or the study-wide
    target, and its device).

    The storage URL is not on it (any local user can read a command line, and the URL may hold a
    password): start the worker with ``storage_url`` in ``KOOPSWEEP_STORAGE``."""
    import sys

    command = [
        sys.executable, "-m", "koopsweep", "study", "run", name, "--devices", device,
        "--worker-index", str(index), "--quiet",
    ]  # fmt: skip
    if n_trials is not None:
        command += ["--n-trials", str(n_trials)]
    if until_total is not None:
        command += ["--until-total", str(until_total)]
    if timeout is not None:
        command += ["--timeout", str(timeout)]
    if heartbeat_interval is not None:
        command += ["--heartbeat-interval", str(heartbeat_interval)]
    if threads is not None:
        command += ["--threads", str(threads)]
    return command


def split_trials(n_trials: int, jobs: int) -> list[int]:
    """``n_trials`` shared as evenly as possible by at most ``jobs`` workers (none gets zero)."""
    shares = [n_trials // jobs + (1 if i < n_trials % jobs else 0) for i in range(jobs)]
    return [share for share in shares if share]


def worker_label(pid: int) -> str:
    """How a trial names the process that ran it (``host:pid``), so a dead worker's trial is recognised."""
    return f"{platform.node()}:{pid}"
