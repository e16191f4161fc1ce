"""`koopsweep study verify`: re-measure a study's best trials over fresh paired seeds.

A sweep measures each trial on the spec's seeds, often one, on a shared machine: the best of many such
figures is biased upward (the winner is partly the luckiest draw). Verification replays each chosen
trial's full configuration, exactly as its worker ran it (`Objective.measure`, the same baselines,
budget, cap and device), on seeds the sweep never used, and records what it found on the trial.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import optuna

from koopsweep import reporting
from koopsweep.errors import UsageError
from koopsweep.reporting import VERIFIED_ATTR
from koopsweep.spec import StudySpec
from koopsweep.tracking import TRIAL_TAG, Tracker, mask_uri

log = logging.getLogger(__name__)


def fresh_seeds(used: list[int], count: int) -> list[int]:
    """``count`` seeds the sweep did not use, the same for every trial (so the re-ranking is paired):
    the integers after the largest seed it used."""
    start = max(used, default=-1) + 1
    return list(range(start, start + count))


def best_trials(study: optuna.Study, spec: StudySpec, top: int) -> list[optuna.trial.FrozenTrial]:
    """The ``top`` COMPLETE trials with the highest first objective (the speedup against the primary
    baseline): the ones a reader of `study show` would pick."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    ranked = sorted((t for t in complete if t.values), key=lambda t: t.values[0], reverse=True)
    return ranked[:top]


def rdb_storage(study: optuna.Study):
    """The RDB storage under ``study`` (through Optuna's cache and koopsweep's retrying wrapper), where
    `record_on_finished_trial` can write; a journal file is a one-line error, before anything runs."""
    from optuna.storages import RDBStorage

    storage = study._storage
    while not isinstance(storage, RDBStorage):
        storage = getattr(storage, "_backend", None) or getattr(storage, "inner", None)
        if storage is None:
            raise UsageError("study verify records its results on the trials, which needs an RDB storage "
                             "(sqlite:/// or postgresql://), not a journal file")  # fmt: skip
    return storage


def record_on_finished_trial(storage, trial: optuna.trial.FrozenTrial, key: str, value: Any) -> None:
    """Set user attribute ``key`` of a finished trial in ``storage`` (an RDB storage).

    Optuna refuses to change a finished trial through its API (`check_trial_is_updatable`): a trial's
    record is meant to be what its run produced. A verification is a later fact about that trial, and
    users look for it beside the trial's other attributes, so koopsweep writes that one attribute row
    itself, through the storage's own session and models. (A journal file is append-only by design.)"""
    from optuna.storages._rdb import models

    session = storage.scoped_session()
    try:
        row = models.TrialUserAttributeModel.find_by_trial_and_key(
            models.TrialModel.find_or_raise_by_id(trial._trial_id, session), key, session
        )
        if row is None:
            session.add(models.TrialUserAttributeModel(trial_id=trial._trial_id, key=key, value_json=json.dumps(value)))
        else:
            row.value_json = json.dumps(value)
        session.commit()
    except Exception:
        session.rollback()
        raise
    finally:
        storage.scoped_session.remove()


def verify_trial(
    objective, trial: optuna.trial.FrozenTrial, seeds: list[int], *, on_seed: Callable[[int], None] | None = None
):
    """Measure ``trial``'s configuration on each of ``seeds`` (one paired measurement per seed, as its
    worker did); returns the merged `TrialMeasurement`. ``objective`` is an `Objective` of the study."""
    from koopsweep.sweep._objective import TrialMeasurement, suggest_config, suggest_optimizer_params

    # Replaying Optuna's define-by-run with the trial's own values rebuilds exactly its configuration.
    fixed = optuna.trial.FixedTrial(trial.params, number=trial.number)
    config = suggest_config(fixed, objective.spec, [trial.params["variant"]])
    optimizer_params = suggest_optimizer_params(fixed, objective.spec)
    merged = TrialMeasurement(config, optimizer_params, [], [], [])
    for seed in seeds:  # one at a time, for the progress bar; a FixedTrial never prunes
        one = objective.measure(fixed, config, optimizer_params, seeds=[seed])
        merged.comparisons += one.comparisons
        merged.koopman_runs += one.koopman_runs
        merged.baseline_runs += one.baseline_runs
        if on_seed:
            on_seed(seed)
    return merged


def verification(measurement, spec: StudySpec, seeds: list[int], device: str) -> dict[str, Any]:
    """What is stored on the trial (`VERIFIED_ATTR`): the median speedup per baseline over ``seeds``
    (the bound where a seed did not reach, as the sweep's own figure) and how many seeds reached."""
    summary = reporting.trial_summary(measurement, spec)
    return {
        "seeds": seeds,
        "speedup": {b: summary[f"speedup_vs_{b}"] for b in spec.baselines},
        "reached": {b: summary[f"reached_vs_{b}"] for b in spec.baselines},
        "device": device,
    }


def log_verification(tracker: Tracker, parent_run_id: str, trial: optuna.trial.FrozenTrial, measurement) -> list[str]:
    """One MLflow run per seed under the trial's run (role ``verify``): the seed's speedup against each
    baseline, both sides' times and final losses. Returns the run ids (empty when tracking failed)."""
    ids = []
    for seed in sorted({c.seed for c in measurement.comparisons}):
        rows = [c for c in measurement.comparisons if c.seed == seed]
        run = tracker.guarded(
            "start a verification run", tracker.start_child, parent_run_id, f"trial-{trial.number}-verify-seed{seed}",
            "verify", {TRIAL_TAG: str(trial.number), "koopsweep.variant": str(trial.params.get("variant"))},
        )  # fmt: skip
        if not run:
            continue
        metrics: dict[str, float | None] = {}
        for c in rows:
            metrics.update({
                f"speedup_vs_{c.baseline}": c.speedup_bound, f"reached_vs_{c.baseline}": float(c.reached),
                f"time_s.{c.baseline}": c.baseline_time_s, f"final_loss.{c.baseline}": c.baseline_final_loss,
            })  # fmt: skip
        metrics["time_to_target_s"] = rows[0].koopman_time_s  # the accelerated run's, the same in every row
        metrics["final_loss"] = rows[0].koopman_final_loss
        tracker.guarded("log a verification run", tracker.log_run, run, metrics=metrics,
                        params={"seed": seed, "verifies_trial": trial.number, **trial.params})  # fmt: skip
        tracker.guarded("end a verification run", tracker.finish, run, "FINISHED")
        ids.append(run)
    return ids


def verify_study(
    study: optuna.Study, spec: StudySpec, *, top: int = 3, n_seeds: int = 5, device_name: str | None = None,
    tracking_uri: str | None = None, on_seed: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Re-measure the ``top`` best trials over ``n_seeds`` fresh paired seeds, record each result on its
    trial and in MLflow, and return ``{"study", "seeds", "trials": [...]}`` re-ranked by the verified
    speedup against the primary baseline (the JSON `study verify --json` prints)."""
    from koopsweep.devices import device_label, resolve_device
    from koopsweep.sweep._objective import Objective
    from koopsweep.sweep._storage import PARENT_RUN_ATTR, study_tracking_uri

    storage = rdb_storage(study)
    chosen = best_trials(study, spec, top)
    if not chosen:
        raise UsageError(f"study {study.study_name!r} has no complete trial to verify yet")
    seeds = fresh_seeds(spec.seeds, n_seeds)
    device = resolve_device(device_name or spec.device)
    uri = tracking_uri or study_tracking_uri(study, spec)
    try:
        tracker = Tracker(uri, spec.name)
    except Exception as exc:  # the figures do not need MLflow: they are recorded on the trials
        log.warning("Warning: MLflow tracking at %s is unreachable (%s); the verified figures are recorded on "
                    "the Optuna trials only", mask_uri(uri), type(exc).__name__)  # fmt: skip
        tracker = None
    parent = study.user_attrs.get(PARENT_RUN_ATTR)
    objective = Objective(spec, device, None, None)
    results = []
    for trial in chosen:
        measurement = verify_trial(objective, trial, seeds, on_seed=(lambda s, n=trial.number: on_seed(n, s)) if on_seed else None)
        verified = verification(measurement, spec, seeds, device_label(device))
        record_on_finished_trial(storage, trial, VERIFIED_ATTR, verified)
        trial_run = trial.user_attrs.get("mlflow_run_id")
        if tracker and (trial_run or parent):  # under the trial's run; the study's if tracking missed it
            logged = log_verification(tracker, trial_run or parent, trial, measurement)
            if logged and trial_run:
                tracker.guarded("tag the trial's run as verified", tracker.client.set_tag, trial_run,
                                "koopsweep.verified", json.dumps(verified["speedup"]))  # fmt: skip
        results.append({
            "number": trial.number,
            "variant": trial.params.get("variant"),
            "params": trial.params,
            "seeds": seeds,
            "speedup": verified["speedup"],
            "reached": verified["reached"],
            "original_speedup": {b: trial.user_attrs.get(f"speedup_vs_{b}") for b in spec.baselines},
            "original_reached": {b: trial.user_attrs.get(f"reached_vs_{b}") for b in spec.baselines},
            "original_seeds": list(spec.seeds),
        })  # fmt: skip
    primary = spec.primary_baseline
    results.sort(key=lambda r: r["speedup"][primary] if r["speedup"][primary] is not None else float("-inf"), reverse=True)
    return {"study": study.study_name, "task": spec.task, "baselines": list(spec.baselines), "seeds": seeds,
            "device": device_label(device), "trials": results}  # fmt: skip
