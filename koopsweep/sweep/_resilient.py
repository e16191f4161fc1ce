"""A worker's Optuna storage that rides out a database outage, and the local file that keeps what it
could not write.

Optuna's RDB storage raises on the first failed connection, and when the failing call is the one that
tells a trial's result, Optuna's own trial loop masks that error with an ``UnboundLocalError``
(optuna/optuna#5280) and loses the measurement. `ResilientStorage` wraps the storage a worker uses:

- every call (asking for a trial, parameters, intermediate values, attributes, heartbeats, telling the
  result) that fails because the database cannot be reached is retried with exponential backoff and
  jitter, for up to ``retry_for`` seconds from the start of the outage; one warning when the outage
  starts and one when it ends, the URL's password masked;
- past that bound the storage has *given up*: the trial in flight goes on against a local copy of it
  (its last state read from the database plus every write since), its result is appended to the
  pending-results file (`PendingResults`), and every other call raises `StorageUnavailable`, which the
  worker turns into one line and its own exit code. The next ``koopsweep study run`` of that study on
  this machine writes the kept results to the study before it starts new trials (`replay_pending`).

Why not a retry decorator from a library: the calls must be retried as one storage, so that an outage
is warned about once for all of them, the heartbeat thread and the trial share one clock, and the
in-flight trial can be finished locally once the bound has passed; none of that is a per-call policy.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import inspect
import json
import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from koopsweep.errors import StorageUnavailable
from koopsweep.tracking import mask_uri

log = logging.getLogger(__name__)

#: Seconds a worker keeps retrying its storage through an outage when --storage-retry is not given.
DEFAULT_STORAGE_RETRY = 600
STATE_DIR_ENV = "KOOPSWEEP_STATE_DIR"
#: Backoff between attempts: doubles from the first delay up to the cap, each draw jittered by +-50% so
#: that many workers do not hammer a database that is coming back all at the same instant.
FIRST_DELAY_S, MAX_DELAY_S = 0.5, 15.0


def is_outage(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an error it was raised from or while handling) says the database could not be
    reached: SQLAlchemy's OperationalError and InterfaceError (a refused or dropped connection, a server
    shutting down, SQLite's "database is locked"), or a DBAPI error that invalidated its connection.
    Constraint violations and bad data are not outages, and are never retried."""
    from sqlalchemy import exc as sa

    import sqlite3

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, sa.DBAPIError) and isinstance(exc.orig, sqlite3.Error):
            # SQLite reports a missing table or a read-only file as OperationalError too: only a lock
            # held by another process passes.
            return "locked" in str(exc.orig) or "busy" in str(exc.orig)
        if isinstance(exc, (sa.OperationalError, sa.InterfaceError)):
            return True
        if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def state_dir() -> Path:
    """Where koopsweep keeps local state: ``$KOOPSWEEP_STATE_DIR``, else ``$XDG_STATE_HOME/koopsweep``,
    else ``~/.local/state/koopsweep``."""
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "koopsweep"


class PendingResults:
    """The results a worker could not write to its storage, one JSON line per finished trial, in a file
    named after the storage URL and the study (``<state dir>/pending/<hash>-<study>.jsonl``)."""

    def __init__(self, storage_url: str, study_name: str) -> None:
        digest = hashlib.sha256(storage_url.encode()).hexdigest()[:16]
        self.path = state_dir() / "pending" / f"{digest}-{study_name}.jsonl"
        self.study_name = study_name

    def append(self, trial: FrozenTrial) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "study": self.study_name,
            "number": trial.number,
            "state": trial.state.name,
            "values": trial.values,
            "params": trial.params,
            "distributions": {k: distribution_to_json(d) for k, d in trial.distributions.items()},
            "user_attrs": trial.user_attrs,
            "system_attrs": trial.system_attrs,
            "intermediate_values": {str(k): v for k, v in trial.intermediate_values.items()},
            "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
            "datetime_complete": datetime.datetime.now().isoformat(),
        }
        with open(self.path, "a") as handle:  # one line per result: a crash mid-write loses only that line
            handle.write(json.dumps(record, default=str) + "\n")


def replay_pending(study: optuna.Study, pending: PendingResults) -> list[int]:
    """Write the results kept in ``pending`` to ``study``; returns their trial numbers. A trial still
    RUNNING in the storage (nobody noticed its worker go) is finished in place, with the same number; one
    that was failed meanwhile (its heartbeat went stale) gets its result as a new trial, with the user
    attribute ``replay_of`` naming the original number.

    The file is first claimed by renaming it, so that two processes starting at once on this machine
    do not both write it; if writing fails, the results not yet written go back to the file."""
    claimed = pending.path.with_name(f"{pending.path.name}.{os.getpid()}")
    try:
        os.replace(pending.path, claimed)
    except FileNotFoundError:
        return []
    records = [json.loads(line) for line in claimed.read_text().splitlines() if line.strip()]
    written: list[int] = []
    try:
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        for record in records:
            written.append(_write_record(study, record, by_number.get(record["number"])))
    finally:
        left = records[len(written):]
        if left:
            with open(pending.path, "a") as handle:
                handle.writelines(json.dumps(r, default=str) + "\n" for r in left)
        claimed.unlink()
    return written


def _write_record(study: optuna.Study, record: dict[str, Any], original: FrozenTrial | None) -> int:
    storage = study._storage  # the trial-level writes below have no public Study API
    state = TrialState[record["state"]]
    distributions = {k: json_to_distribution(v) for k, v in record["distributions"].items()}
    intermediate = {int(k): v for k, v in record["intermediate_values"].items()}
    if original is not None and original.state == TrialState.RUNNING:
        trial_id = original._trial_id
        for name, value in record["params"].items():
            if name not in original.params:
                dist = distributions[name]
                storage.set_trial_param(trial_id, name, dist.to_internal_repr(value), dist)
        for key, value in record["user_attrs"].items():
            storage.set_trial_user_attr(trial_id, key, value)
        for step, value in intermediate.items():
            storage.set_trial_intermediate_value(trial_id, step, value)
        storage.set_trial_user_attr(trial_id, "replayed", True)
        storage.set_trial_state_values(trial_id, state, record["values"])
        return record["number"]
    trial = optuna.trial.create_trial(
        state=state, values=record["values"], params=record["params"], distributions=distributions,
        user_attrs={**record["user_attrs"], "replay_of": record["number"]},
        system_attrs={k: v for k, v in record["system_attrs"].items() if k != "retry_history"},
        intermediate_values=intermediate,
    )  # fmt: skip
    study.add_trial(trial)
    return study.get_trials(deepcopy=False)[-1].number


def _retried(name: str):
    def method(self, *args, **kwargs):
        return self._call(name, args, kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"`{name}` of the wrapped storage, retried through an outage."
    return method


class ResilientStorage(BaseStorage, BaseHeartbeat):
    """``inner`` (an Optuna RDB storage, usually Optuna's cached wrapper of one) with every call retried
    through an outage of up to ``retry_for`` seconds; see the module's docstring."""

    #: BaseStorage's and BaseHeartbeat's methods, all passed on through `_call`. (Declared in the class
    #: body so that the abstract-method check sees them defined.)
    PASSED_ON = (
        "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
        "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
        "get_study_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
        "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id", "get_trial_param",
        "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
        "set_trial_system_attr", "get_trial", "get_all_trials", "get_n_trials", "get_best_trial",
        "get_trial_params", "get_trial_user_attrs", "get_trial_system_attrs", "remove_session",
        "check_trial_is_updatable", "record_heartbeat", "_get_stale_trial_ids", "get_heartbeat_interval",
        "get_heartbeat_stale_trial_callback", "get_failed_trial_callback",
    )  # fmt: skip
    for _name in PASSED_ON:
        locals()[_name] = _retried(_name)
    del _name

    def __init__(self, inner: BaseStorage, url: str, *, retry_for: float, pending: PendingResults | None = None):
        self.inner = inner
        self.url = url
        self.retry_for = retry_for
        self.pending = pending
        self._lock = threading.Lock()
        self._outage_since: float | None = None
        self._outage_error = ""
        self._back_since: float | None = None
        #: Set once the bound has passed: the worker stops after the trial in flight.
        self.gave_up: StorageUnavailable | None = None
        #: Local copies of the trials this process is running, kept current with every write.
        self._running: dict[int, FrozenTrial] = {}
        self._last_trials: dict[int, list[FrozenTrial]] = {}

    def __getattr__(self, name: str) -> Any:  # anything else (e.g. the engine) is the inner storage's
        return getattr(self.__dict__["inner"], name)

    # -- retrying -----------------------------------------------------------------------------------

    def _call(self, name: str, args: tuple, kwargs: dict) -> Any:
        if self.gave_up is not None:
            return self._offline(name, args, kwargs)
        if name == "_get_stale_trial_ids" and self._just_back():
            # Nobody could record a heartbeat during the outage: a trial judged by them now would be
            # failed while its worker is alive and about to tell its result.
            return []
        delay = FIRST_DELAY_S
        failed_before = False
        while True:
            try:
                result = getattr(self.inner, name)(*args, **kwargs)
            except optuna.exceptions.UpdateFinishedTrialError:
                # An attempt that failed on its way back may have committed: the trial is then already
                # in the state this call was to write, which is success.
                if failed_before and name == "set_trial_state_values" and self._state_is(args, kwargs):
                    result = True
                else:
                    raise
            except Exception as exc:
                if not is_outage(exc):
                    raise
                failed_before = True
                waited = self._outage_started(exc)
                if waited >= self.retry_for:
                    self._give_up()
                    return self._offline(name, args, kwargs)
                time.sleep(min(delay * random.uniform(0.5, 1.5), max(self.retry_for - waited, 0.0)))
                delay = min(2 * delay, MAX_DELAY_S)
                continue
            self._outage_ended()
            self._remember(name, args, kwargs, result)
            return result

    def _state_is(self, args: tuple, kwargs: dict) -> bool:
        call = _arguments("set_trial_state_values", args, kwargs)
        return self.inner.get_trial(call["trial_id"]).state == call["state"]

    def _outage_started(self, exc: Exception) -> float:
        """Seconds since this outage began (warning once when it begins)."""
        with self._lock:
            now = time.monotonic()
            if self._outage_since is None:
                self._outage_since = now
                self._outage_error = describe_error(exc)
                log.warning(
                    "Warning: the study's storage %s does not answer (%s); retrying for up to %.0f s, "
                    "the trial in flight goes on.", mask_uri(self.url), self._outage_error, self.retry_for,
                )  # fmt: skip
            return now - self._outage_since

    def _outage_ended(self) -> None:
        if self._outage_since is None:
            return
        with self._lock:
            if self._outage_since is None:
                return
            log.warning("The study's storage %s answers again after %.0f s.", mask_uri(self.url),
                        time.monotonic() - self._outage_since)  # fmt: skip
            self._outage_since = None
            self._back_since = time.monotonic()

    def _just_back(self) -> bool:
        """Whether this storage came back from an outage less than one heartbeat grace period ago."""
        if self._back_since is None:
            return False
        backend = getattr(self.inner, "_backend", self.inner)  # Optuna's cached storage keeps the RDB one there
        grace = getattr(backend, "grace_period", None) or 2 * (self.inner.get_heartbeat_interval() or 60)
        return time.monotonic() - self._back_since < grace

    def _give_up(self) -> None:
        with self._lock:
            if self.gave_up is not None:
                return
            kept = f"; results it could not write are kept in {self.pending.path}" if self.pending else ""
            self.gave_up = StorageUnavailable(
                f"the study's storage {mask_uri(self.url)} did not answer for {self.retry_for:.0f} s "
                f"({self._outage_error}){kept} and are written by the next 'koopsweep study run' of this "
                "study on this machine"
            )

    # -- the local copy of the trials in flight ------------------------------------------------------

    def _remember(self, name: str, args: tuple, kwargs: dict, result: Any) -> None:
        """Keep the trials this process runs, and the last list of a study's trials, for `_offline`."""
        call = _arguments(name, args, kwargs)
        popped = name == "set_trial_state_values" and call["state"] == TrialState.RUNNING and result
        if name == "create_new_trial" or popped:  # a new trial, or a queued one this process now runs
            trial_id = result if name == "create_new_trial" else call["trial_id"]
            try:  # as the database holds it (Optuna's cached storage answers from memory)
                self._running[trial_id] = copy.deepcopy(self.inner.get_trial(trial_id))
            except Exception:  # noqa: BLE001 - a trial that cannot be read now is not kept locally
                pass
        elif name == "get_all_trials" and call.get("states") is None:
            self._last_trials[call["study_id"]] = list(result)
        elif name.startswith("set_trial_") and call["trial_id"] in self._running:
            local = self._apply(self._running[call["trial_id"]], name, call)
            if local.state.is_finished():
                del self._running[call["trial_id"]]

    @staticmethod
    def _apply(trial: FrozenTrial, name: str, call: dict[str, Any]) -> FrozenTrial:
        """``trial`` updated in place by the write ``name`` with arguments ``call``."""
        if name == "set_trial_param":
            dist = call["distribution"]
            trial.params = {**trial.params, call["param_name"]: dist.to_external_repr(call["param_value_internal"])}
            trial.distributions = {**trial.distributions, call["param_name"]: dist}
        elif name == "set_trial_user_attr":
            trial.user_attrs = {**trial.user_attrs, call["key"]: call["value"]}
        elif name == "set_trial_system_attr":
            trial.system_attrs = {**trial.system_attrs, call["key"]: call["value"]}
        elif name == "set_trial_intermediate_value":
            trial.intermediate_values = {**trial.intermediate_values, call["step"]: call["intermediate_value"]}
        elif name == "set_trial_state_values":
            trial.state = call["state"]
            if call.get("values") is not None:
                trial.values = list(call["values"])
        return trial

    def _offline(self, name: str, args: tuple, kwargs: dict) -> Any:
        """Once the storage has given up: the trial in flight is served and updated locally, and kept in
        the pending file when it finishes; every other call raises `StorageUnavailable`."""
        if name in ("record_heartbeat", "remove_session"):
            return None  # nobody can read a heartbeat from a database that is gone
        if name == "get_heartbeat_interval":
            return self.inner.get_heartbeat_interval()
        call = _arguments(name, args, kwargs)
        local = self._running.get(call.get("trial_id"))
        if local is not None and name == "get_trial":
            return copy.deepcopy(local)
        if local is not None and name.startswith("set_trial_"):
            self._apply(local, name, call)
            if name == "set_trial_state_values" and local.state.is_finished() and self.pending is not None:
                self.pending.append(local)  # (and kept here: Optuna reads the told trial back)
            return True if name == "set_trial_state_values" else None
        if name == "get_all_trials" and call["study_id"] in self._last_trials:
            # The pruner judges the trial in flight against the others as last read.
            states = call.get("states")
            read = [t for t in self._last_trials[call["study_id"]] if t._trial_id not in self._running]
            trials = read + [copy.deepcopy(t) for t in self._running.values()]
            return [t for t in trials if states is None or t.state in states]
        raise self.gave_up


def _arguments(name: str, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A storage call's arguments by their names in `BaseStorage` (Optuna passes some by keyword)."""
    signature = _SIGNATURES.get(name)
    if signature is None:
        return {}
    bound = signature.bind(None, *args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


_SIGNATURES = {
    name: inspect.signature(getattr(BaseStorage, name))
    for name in ("set_trial_param", "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
                 "set_trial_system_attr", "get_trial", "get_all_trials")
}  # fmt: skip


def describe_error(exc: BaseException) -> str:
    """The first line of what the database driver said (``OperationalError: connection refused``), or of
    the root cause when no driver error is in the chain."""
    from sqlalchemy.exc import DBAPIError

    root, seen = exc, set()
    while id(root) not in seen:
        seen.add(id(root))
        if isinstance(root, DBAPIError) and root.orig is not None:
            root = root.orig
            break
        if root.__cause__ is None and root.__context__ is None:
            break
        root = root.__cause__ or root.__context__
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    return f"{type(root).__name__}: {lines[0] if lines else ''}"[:200]
