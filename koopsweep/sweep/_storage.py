"""Where a study lives: the storage URL, opening it (RDB with heartbeats, or a journal file), and what
happens to a dead worker's trial; and where its workers track (MLflow)."""

from __future__ import annotations

import copy
import os
import platform
import time
import warnings
from typing import Any

import optuna

from koopsweep.errors import KoopsweepError, UsageError, redact
from koopsweep.spec import StudySpec, spec_from_json
from koopsweep.sweep._resilient import ResilientStorage
from koopsweep.tracking import Tracker, mask_uri, resolve_tracking_uri

DEFAULT_STORAGE = "sqlite:///koopsweep.db"
STORAGE_ENV = "KOOPSWEEP_STORAGE"
SPEC_ATTR = "koopsweep.spec"
SAMPLER_ATTR = "koopsweep.sampler"
PARENT_RUN_ATTR = "koopsweep.mlflow_parent_run_id"
TRACKING_ATTR = "koopsweep.tracking_uri"
#: Seconds between a running trial's heartbeats on RDB storages when --heartbeat-interval is not given:
#: without heartbeats a trial whose worker died would stay RUNNING for ever and never be retried.
DEFAULT_HEARTBEAT_INTERVAL = 60


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


def worker_label(pid: int) -> str:
    """How a trial names the process that ran it (``host:pid``), so a dead worker's trial is recognised;
    a worker's PostgreSQL connections carry it too."""
    return f"{platform.node()}:{pid}"


def open_storage(
    url: str, *, heartbeat_interval: int | None = None, max_retry: int = 1, create: bool = True,
    retry_for: float = 0,
):  # fmt: skip
    """An Optuna storage for ``url``: RDB (sqlite, postgresql, ...) or a journal file (``*.log`` or
    ``journal:///path``). RDB storages get heartbeats, so a trial whose worker died is failed and retried.
    With ``create=False`` a missing SQLite or journal file is an error instead of a new empty storage
    (reading commands must not leave files behind). With ``retry_for`` (a worker's ``--storage-retry``)
    an RDB storage rides out a database outage of up to that many seconds (`ResilientStorage`), and a
    server's pooled connections are checked before each use."""
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
            if not url.startswith("sqlite"):
                # A pooled connection the server dropped (a restart, a failover, an idle timeout) is
                # noticed and replaced at checkout instead of failing the call that uses it.
                kwargs["engine_kwargs"] = {"pool_pre_ping": True}
            if url.startswith("postgresql") and "application_name" not in url:
                # Each connection says which worker holds it (pg_stat_activity.application_name).
                kwargs["engine_kwargs"]["connect_args"] = {"application_name": f"koopsweep {worker_label(os.getpid())}"}
            storage = (HeartbeatRDBStorage if heartbeat_interval else optuna.storages.RDBStorage)(url, **kwargs)
        if retry_for > 0:
            return ResilientStorage(optuna.storages.get_storage(storage), url, retry_for=retry_for)
        return storage
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


class HeartbeatRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, whose stale-trial check also catches a trial that never sent a heartbeat.

    Optuna starts a trial's heartbeat just after creating it, and its check skips trials without one:
    a worker killed in between leaves a trial RUNNING for ever, which every worker waiting for the
    study's shared target then waits on (seen in the repeated-kill test). Such a trial is stale here once
    this process has seen it RUNNING without a heartbeat for longer than the grace period, by its own
    monotonic clock: the trial's start time was written by another host's clock, which need not agree
    with the database's or this one's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._silent_since: dict[int, float] = {}  # trial id -> when this process first saw it silent

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        stale = super()._get_stale_trial_ids(study_id)
        now = time.monotonic()
        self._silent_since = {tid: self._silent_since.get(tid, now) for tid in self._silent_trial_ids(study_id)}
        grace = self.grace_period or 2 * self.heartbeat_interval
        return stale + [tid for tid, since in self._silent_since.items() if now - since > grace]

    def _silent_trial_ids(self, study_id: int) -> list[int]:
        """The study's RUNNING trials that have no heartbeat recorded."""
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.scoped_session) as session:
            rows = (
                session.query(models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study_id)
                .filter(models.TrialModel.state == optuna.trial.TrialState.RUNNING)
                .filter(~models.TrialModel.heartbeats.any())
                .all()
            )
        return [row[0] for row in rows]


class RetryStaleTrial:
    """What happens to a trial whose worker died (its heartbeat went stale, and Optuna marked it FAIL):
    Optuna's own callback queues the same parameters again as a WAITING trial, which the next free worker
    picks up, then its MLflow runs still open (the trial's, a baseline's being logged) are ended as FAILED.
    Runs in whichever worker noticed the stale trial."""

    #: Attributes that describe one attempt, not the parameters: the retry gets its own.
    PER_ATTEMPT = ("mlflow_run_id", "worker")

    def __init__(self, max_retry: int | None = 1) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # The retry is queued first: it is one database write, while ending runs waits on the tracking
        # server, and a worker killed in between would otherwise lose the retry. Runs it leaves open are
        # ended by the next worker leaving the study.
        attempt = copy.copy(trial)
        attempt.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in self.PER_ATTEMPT}
        attempt.user_attrs["retry_of"] = trial.number
        self.retry(study, attempt)
        _end_runs_of_dead_trial(study, trial.number)


def _end_runs_of_dead_trial(study: optuna.Study, number: int) -> None:
    """End as FAILED every MLflow run the dead worker had open for trial ``number`` (the trial's own
    and any baseline run it was logging), so that the MLflow UI shows no dead trial as running."""
    raw = study.user_attrs.get(SPEC_ATTR)
    if raw is None:
        return
    uri = study_tracking_uri(study, spec_from_json(raw, f"study {study.study_name!r}"))
    try:
        tracker = Tracker(uri, study.study_name)
    except Exception as exc:  # tracking must never stop the worker that noticed the dead one
        warnings.warn(
            f"MLflow tracking at {mask_uri(uri)} is unreachable ({type(exc).__name__}); "
            f"the runs of dead trial {number} stay RUNNING there",
            RuntimeWarning,
            stacklevel=2,
        )
        return
    tracker.guarded("end a dead worker's runs", tracker.fail_open_runs, number)


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
