"""One trial: the configuration Optuna suggests, and its paired measurement (the baselines and the
accelerated run on the same seed, data order and device, `koopsweep.pairing`), logged to MLflow."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from koopsweep import plugins, reporting
from koopsweep.errors import KoopsweepError, UsageError
from koopsweep.spec import StudySpec
from koopsweep.sweep._storage import worker_label
from koopsweep.tracking import TRACKING_MISSED_ATTR, TRIAL_TAG, Tracker


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


def _refuse_diverged(baseline_runs, seed: int) -> None:
    """A baseline that diverges makes the trial unmeasurable: say which, and what to check."""
    for name, run in baseline_runs.items():
        if run.stopped == "diverged":
            raise TrialFailed(f"baseline {name} diverged on seed {seed}; check the task's tuned learning rate")


class Objective:
    """Runs one trial: for each seed, the baselines and the accelerated run, paired on one device."""

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
        failures_before = self.tracker.failures if self.tracker else 0
        if self.tracker and self.parent_run_id:
            trial_run = self.tracker.guarded(
                "start the trial's run",
                self.tracker.start_child,
                self.parent_run_id,
                f"trial-{trial.number}-{config.variant}",
                "trial",
                {TRIAL_TAG: str(trial.number), "koopsweep.variant": config.variant},
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
            if self.tracker and self.tracker.failures > failures_before:
                # Optuna has the result; MLflow lacks some or all of this trial (`study show` counts them).
                trial.set_user_attr(TRACKING_MISSED_ATTR, True)

    def measure(
        self, trial: optuna.Trial, config, optimizer_params: dict[str, Any], seeds: list[int] | None = None
    ) -> TrialMeasurement:
        """The paired measurement on each of ``seeds`` (the spec's by default; `study verify` passes fresh
        ones), paired as the spec's ``pairing`` says and pruned through ``trial``."""
        from koopsweep.measure import compare, first_reaching
        from koopsweep.pairing import Side, pairing_order, run_paired

        spec = self.spec
        comparisons, koopman_runs, baseline_runs = [], [], []
        max_steps = int(math.ceil(spec.cap_factor * self.budget))
        baselines = [Side(name, name, self.lr(name), dict(spec.optimizer_params.get(name, {}))) for name in spec.baselines]
        accelerated = Side("koopman", spec.optimizer, spec.lr or self.lr(spec.optimizer), optimizer_params, koopman=config)
        for index, seed in enumerate(spec.seeds if seeds is None else seeds):
            offset = index * (max_steps + 1)

            def pruning(baseline_runs, offset=offset, seed=seed):
                primary = baseline_runs[spec.primary_baseline]

                def report(point) -> bool:
                    _refuse_diverged(baseline_runs, seed)
                    # Intermediate value: how much sooner than the primary baseline this loss was reached
                    # (interleaved: against the baseline's curve up to this step, which its chunk ran first).
                    hit = first_reaching(primary.curve, point.loss)
                    base_time = hit.time_s if hit else primary.time_s
                    if point.time_s <= 0 or len(spec.directions) > 1:
                        return False
                    trial.report(base_time / point.time_s, offset + point.step)
                    return trial.should_prune()

                return report

            pair = run_paired(self.task, baselines, [accelerated], seed=seed, device=self.device, budget=self.budget,
                              schedule=self.schedule, order=pairing_order(spec.pairing, pruned=True),
                              target=spec.target, cap_factor=spec.cap_factor, hook=pruning)  # fmt: skip
            _refuse_diverged(pair.baselines, seed)
            koopman = pair.accelerated["koopman"]
            baseline_runs += list(pair.baselines.values())
            koopman_runs.append(koopman)
            if koopman.stopped == "pruned":
                raise optuna.TrialPruned()
            if koopman.stopped == "diverged":
                raise TrialFailed(
                    f"the accelerated run diverged on seed {seed} (loss {koopman.final_loss}); "
                    f"rejections: {(koopman.stats or {}).get('rejections')}"
                )
            comparisons += [compare(run, koopman, target=spec.target) for run in pair.baselines.values()]
        return TrialMeasurement(config, optimizer_params, comparisons, koopman_runs, baseline_runs)

    def objective_values(self, measurement: TrialMeasurement) -> float | tuple[float, float]:
        from koopsweep.measure import median

        primary = measurement.for_baseline(self.spec.primary_baseline)
        speedup = median([c.speedup_bound for c in primary]) or 0.0
        if self.spec.objective == "speedup":
            return speedup
        gap = median([c.loss_gap for c in primary])
        return speedup, gap if gap is not None else math.inf
