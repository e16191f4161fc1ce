"""Workers: running trials until a target, sharing it with other processes and hosts, and the command
line of the worker processes `study run --jobs` starts."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import optuna

from koopsweep.errors import KoopsweepError, UsageError
from koopsweep.spec import StudySpec
from koopsweep.sweep._objective import Objective, TrialFailed  # noqa: F401 (re-exported)
from koopsweep.sweep._resilient import ResilientStorage, describe_error, is_outage
from koopsweep.sweep._storage import PARENT_RUN_ATTR, study_tracking_uri
from koopsweep.tracking import Tracker, mask_uri


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
    except UsageError:
        raise
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
    except Exception as exc:
        failure = _storage_failure(study, exc)
        if failure is None:
            raise
        raise failure from exc
    tracker.guarded("end the runs of ended trials", tracker.end_runs_of_ended_trials, ended_trials(study))
    if study_done(study, spec):
        tracker.guarded("finish the study's run", tracker.finish, parent, "FINISHED")


def _storage_failure(study: optuna.Study, exc: Exception) -> KoopsweepError | None:
    """What a worker's failure really was when its storage is behind it: `StorageUnavailable` once a
    `ResilientStorage` has given up, or one line naming the storage for a database that could not be
    reached. (Optuna masks a failed tell as an ``UnboundLocalError``, optuna/optuna#5280; the storage's
    own error is in the chain.) None for any other error."""
    storage = study._storage
    if isinstance(storage, ResilientStorage) and storage.gave_up is not None:
        return storage.gave_up
    if is_outage(exc):
        url = getattr(storage, "url", None) or getattr(getattr(storage, "_backend", None), "url", "")
        return KoopsweepError(f"the study's storage {mask_uri(url)} failed ({describe_error(exc)}); the trial in "
                              "flight was not recorded (run workers with --storage-retry SECONDS to ride out outages)")
    return None


#: The MLflow status of a run whose Optuna trial ended in each state.
RUN_STATUS = {
    optuna.trial.TrialState.COMPLETE: "FINISHED",
    optuna.trial.TrialState.PRUNED: "KILLED",
    optuna.trial.TrialState.FAIL: "FAILED",
}


def ended_trials(study: optuna.Study) -> dict[int, str]:
    """Trial number -> the MLflow status its runs end with, for every trial of ``study`` that ended."""
    return {t.number: RUN_STATUS[t.state] for t in study.get_trials(deepcopy=False) if t.state in RUN_STATUS}


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
    storage_retry: float | None = None,
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
    if storage_retry is not None:
        command += ["--storage-retry", str(storage_retry)]
    return command


def split_trials(n_trials: int, jobs: int) -> list[int]:
    """``n_trials`` shared as evenly as possible by at most ``jobs`` workers (none gets zero)."""
    shares = [n_trials // jobs + (1 if i < n_trials % jobs else 0) for i in range(jobs)]
    return [share for share in shares if share]

