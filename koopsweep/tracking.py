"""MLflow tracking: one experiment per study, a parent run per study, a child run per trial and baseline.

Everything goes through `MlflowClient` with explicit run ids (no fluent ``mlflow.start_run`` state), so
runs nest correctly when trials come from other processes or hosts and a stray ``MLFLOW_RUN_ID`` in the
environment cannot capture them. Curves are sent with `log_batch`, at most 1,000 points per call.

Tracking must never cost a result: `Tracker` methods used during a sweep catch MLflow errors, warn once
and carry on (the Optuna storage still holds every trial). While the tracking server is unreachable
the tracker stops calling it for `OFFLINE_RETRY_S` seconds at a time (or ``$KOOPSWEEP_TRACKING_RETRY``),
so an outage costs a trial a few seconds instead of minutes of retries per call.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch call
MAX_PARAMS = 100  # ... and on params per call
MAX_TAGS = 100  # ... and on tags per call

ROLE_TAG = "koopsweep.role"
STUDY_TAG = "koopsweep.study"
#: On a trial's run and on each of its baseline runs: the Optuna trial number.
TRIAL_TAG = "koopsweep.trial"
#: Optuna user attribute of a trial that ran while MLflow tracking failed: MLflow lacks part of it.
TRACKING_MISSED_ATTR = "tracking_missed"

#: Seconds during which a tracker that found the server unreachable skips tracking calls; an operator
#: may set their own in this environment variable (a positive number of seconds).
OFFLINE_RETRY_S = 60.0
OFFLINE_RETRY_ENV = "KOOPSWEEP_TRACKING_RETRY"

#: MLflow's HTTP defaults (7 retries with doubling back-off, 120 s timeout) stall every call for
#: minutes while a server is down. koopsweep's processes use these unless the user set their own.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # MLflow prints a "View run ... at: URL" line per ended run to stdout: noise, and with the password
    # of a http://user:password@host tracking URI in it.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

log = logging.getLogger(__name__)


def use_http_defaults() -> None:
    """Short MLflow HTTP retries and timeouts for this process and the workers it starts."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def offline_retry_s() -> float:
    """Seconds between tries of a tracking server that went away: ``$KOOPSWEEP_TRACKING_RETRY``, else
    `OFFLINE_RETRY_S`."""
    from koopsweep.errors import UsageError

    raw = os.environ.get(OFFLINE_RETRY_ENV, "").strip()
    if not raw:
        return OFFLINE_RETRY_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise UsageError(f"{OFFLINE_RETRY_ENV}={raw!r}: expected a number of seconds >= 0")
    return seconds


def resolve_tracking_uri(spec_uri: str | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the spec's, else ``sqlite:///mlflow.db`` here.

    A relative SQLite path is made absolute: MLflow caches one database engine per URI string for
    the life of the process, so a relative URI would keep pointing at the first folder it was used in.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or spec_uri or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        uri = prefix + os.path.abspath(uri[len(prefix) :])
    return uri


def mask_uri(uri: str) -> str:
    """Hide a password in a URL (``postgresql://user:secret@host`` -> ``postgresql://user:***@host``),
    also in one that does not parse and in a ``?password=`` parameter (see `koopsweep.errors.redact`)."""
    from koopsweep.errors import redact

    return redact(uri)


def _unreachable(exc: BaseException) -> bool:
    """Whether an MLflow error comes from a server that did not answer (refused, reset, timed out):
    MLflow wraps the `requests` error, an OSError, in an MlflowException."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _describe(exc: BaseException, uri: str) -> str:
    """A short, password-free account of a tracking error."""
    if _unreachable(exc):
        return "it does not answer: connection refused or timed out"
    text = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    from urllib.parse import urlsplit

    with contextlib.suppress(ValueError):
        password = urlsplit(uri).password
        if password:
            text = text.replace(password, "***")
    return text if len(text) <= 300 else text[:297] + "..."


def check_tracking(uri: str) -> None:
    """Fail in one line, before any trial starts, when the tracking store cannot be used.

    A server that does not answer is a runtime failure (exit 1); any other error (an unknown scheme,
    a path that cannot be a database) is bad input (exit 2). Reads only: nothing is logged.
    """
    from koopsweep.errors import KoopsweepError, UsageError

    use_http_defaults()
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):  # MLflow would create the missing folders of a mistyped path
        folder = os.path.dirname(uri.removeprefix("sqlite:///").split("?")[0])
        if folder and not os.path.isdir(folder):
            raise UsageError(f"MLflow tracking URI {mask_uri(uri)}: the folder {folder} does not exist")
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises many types; each becomes one line for the user
        if _unreachable(exc):
            raise KoopsweepError(
                f"MLflow tracking at {mask_uri(uri)} is unreachable ({_describe(exc, uri)}); "
                "start the tracking server or point MLFLOW_TRACKING_URI at a running one, then run again"
            ) from None
        raise UsageError(f"MLflow tracking URI {mask_uri(uri)} cannot be used ({_describe(exc, uri)})") from None


def use_write_ahead_log(uri: str) -> None:
    """Switch a local SQLite store to SQLite's write-ahead log: each of a trial's dozen MLflow calls is a
    transaction, and in WAL mode a commit costs about a fifth less (``PRAGMA journal_mode=WAL`` is kept in
    the file, and lets readers such as the MLflow UI in beside a writer)."""
    if not uri.startswith("sqlite:///") or ":memory:" in uri:
        return
    import sqlite3

    path = uri.removeprefix("sqlite:///").split("?")[0]
    if os.path.exists(path):
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")


class Tracker:
    """The study's MLflow experiment."""

    def __init__(self, tracking_uri: str, experiment_name: str) -> None:
        use_http_defaults()
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        self.offline_retry_s = offline_retry_s()
        self.client = MlflowClient(tracking_uri=tracking_uri)
        experiment = self.client.get_experiment_by_name(experiment_name)  # also makes a new store's schema
        use_write_ahead_log(tracking_uri)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(experiment_name)
        else:
            self.experiment_id = experiment.experiment_id
        self._warned = False
        self._offline_since: float | None = None  # monotonic time of the last failed call
        #: Tracking calls that failed so far in this process (a trial compares it before and after).
        self.failures = 0
        #: Runs whose end could not be written (the server was away), ended once it answers again.
        self._unended: dict[str, str] = {}

    # ------------------------------------------------------------------ runs
    def start_study_run(self, study_name: str, spec_json: str, params: Mapping[str, Any]) -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=study_name,
            tags={ROLE_TAG: "study", STUDY_TAG: study_name},
        )
        run_id = run.info.run_id
        self.log_params(run_id, params)
        self.client.log_text(run_id, spec_json, "spec.json")
        return run_id

    def start_child(self, parent_run_id: str, run_name: str, role: str, tags: Mapping[str, str]) -> str:
        all_tags = {ROLE_TAG: role, "mlflow.parentRunId": parent_run_id, **tags}
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        return run.info.run_id

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def fail_open_runs(self, trial_number: int) -> list[str]:
        """End as FAILED every run of trial ``trial_number`` still RUNNING (the trial's own and its
        baselines', all tagged ``koopsweep.trial``): its worker died. The trial's own run is FAILED even
        when the worker had ended it, dying before Optuna was told: Optuna has the trial as FAIL, and
        its retry is the run to read. Returns their ids."""
        query = f"tags.`{TRIAL_TAG}` = '{trial_number}'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=1000)
        dead = [
            run for run in runs
            if run.info.status == "RUNNING" or (run.data.tags.get(ROLE_TAG) == "trial" and run.info.status != "FAILED")
        ]  # fmt: skip
        for run in dead:
            self.client.set_terminated(run.info.run_id, "FAILED")
        return [run.info.run_id for run in dead]

    def end_runs_of_ended_trials(self, ended: Mapping[int, str]) -> list[str]:
        """End every trial or baseline run still RUNNING whose trial has ended, with the MLflow status
        of its end (``ended``: trial number -> FINISHED, KILLED or FAILED). A worker killed while it
        failed another's dead trial leaves that trial FAIL with its runs open; whichever worker leaves
        the study next closes them. Returns their ids."""
        query = "attributes.status = 'RUNNING'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=10_000)
        closed = []
        for run in runs:
            number = run.data.tags.get(TRIAL_TAG)
            if run.data.tags.get(ROLE_TAG) in ("trial", "baseline") and number and int(number) in ended:
                self.client.set_terminated(run.info.run_id, ended[int(number)])
                closed.append(run.info.run_id)
        return closed

    def mark_running(self, run_id: str) -> None:
        """A run that was ended (the study's, when more trials come) is RUNNING again."""
        if self.client.get_run(run_id).info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")

    # --------------------------------------------------------------- logging
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), _param_value(v)) for k, v in params.items()]
        for chunk in _chunks(items, MAX_PARAMS):
            self.client.log_batch(run_id, params=chunk)

    def log_run(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float | None] | None = None,
        curves: Mapping[str, Iterable[tuple[int, float, int]]] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        """Params, summary metrics, curves (points of (step, value, timestamp in ms)) and tags of a run in
        as few `log_batch` calls as MLflow allows (each call is a round trip, and a trial logs several runs)."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        tag_items = [RunTag(str(k), str(v)) for k, v in (tags or {}).items()]
        param_items = [Param(str(k), _param_value(v)) for k, v in (params or {}).items()]
        metric_items = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if v is not None]
        for key, points in (curves or {}).items():
            metric_items += [Metric(key, float(value), int(ts), int(step)) for step, value, ts in points]
        while param_items or metric_items or tag_items:
            chunk_params, param_items = param_items[:MAX_PARAMS], param_items[MAX_PARAMS:]
            chunk_tags, tag_items = tag_items[:MAX_TAGS], tag_items[MAX_TAGS:]
            room = MAX_BATCH - len(chunk_params) - len(chunk_tags)  # at most 1,000 entities per call in all
            chunk_metrics, metric_items = metric_items[:room], metric_items[room:]
            self.client.log_batch(run_id, metrics=chunk_metrics, params=chunk_params, tags=chunk_tags)

    # ---------------------------------------------------------------- safety
    def guarded(self, action: str, fn, *args, **kwargs) -> Any:
        """Run a tracking call; on failure warn once for the whole process and return None.

        After the server failed to answer, calls are skipped (None) for ``offline_retry_s`` seconds; the
        first call after that tries it again. Calls nest (a trial's logging wraps its parts): a call
        that saw a failure inside it does not count as proof that the server is back.
        """
        started = time.monotonic()
        if self._offline_since is not None and started - self._offline_since < self.offline_retry_s:
            self._missed(fn, args, kwargs, server_away=True)
            return None
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # MLflow raises many types (HTTP, SQL, REST); none may stop a sweep
            self._missed(fn, args, kwargs, server_away=_unreachable(exc))
            if _unreachable(exc):
                self._offline_since = time.monotonic()
            if not self._warned:
                self._warned = True
                log.warning(
                    "Warning: MLflow tracking at %s failed while trying to %s (%s). The sweep goes on and "
                    "Optuna keeps every result, but runs from now on may be missing from MLflow; "
                    "koopsweep tries again every %.0f s and warns only once.",
                    mask_uri(self.uri), action, _describe(exc, self.uri), self.offline_retry_s,
                )  # fmt: skip
            return None
        if self._offline_since is not None and self._offline_since < started:
            self._offline_since = None  # it answered again
        if self._unended and fn != self.finish:
            self._end_unended()
        return result

    def _missed(self, fn, args: tuple, kwargs: dict, *, server_away: bool) -> None:
        """Count a tracking call that did not happen; the end of a run that the server was away for is
        kept, to be written when it answers again (`_end_unended`)."""
        self.failures += 1
        if server_away and fn == self.finish:
            self._unended[args[0]] = args[1] if len(args) > 1 else kwargs.get("status", "FINISHED")

    def _end_unended(self) -> None:
        """End the runs whose end was lost while the server was away (else they stay RUNNING for good)."""
        for run_id, status in list(self._unended.items()):
            del self._unended[run_id]
            self.guarded("end a run left open while the server was away", self.finish, run_id, status)
            if run_id in self._unended:  # it failed again (and was recorded again): the server is away
                return


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _chunks(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def runs_page_url(base_url: str, tracking_uri: str, study_name: str | None) -> str:
    """The MLflow UI page listing a study's runs (the bare experiment URL opens an empty overview)."""
    if not study_name:
        return base_url
    from mlflow.tracking import MlflowClient

    experiment = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(study_name)
    if experiment is None:
        return base_url
    return f"{base_url}/#/experiments/{experiment.experiment_id}/runs"


def start_ui_server(
    tracking_uri: str,
    *,
    host: str = "127.0.0.1",
    port: int = 5000,
    timeout: float = 60.0,
    default_artifact_root: str | None = None,
):
    """Start ``mlflow server`` on ``tracking_uri`` and return its process once it answers /health.

    ``default_artifact_root`` is where experiments created through the server keep their artifacts
    (MLflow's default is ``./mlartifacts`` in the current folder). The server's output goes to the
    file named by the process's ``log_path`` attribute until `stop_server` removes it.
    """
    import subprocess
    import sys
    import urllib.request

    from koopsweep.errors import KoopsweepError

    command = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", "1"]
    if default_artifact_root:
        command += ["--default-artifact-root", default_artifact_root]
    import tempfile

    # The store's URL goes in the environment (mlflow server reads MLFLOW_BACKEND_STORE_URI), not on the
    # command line, which every local user can read and which would show a password in it.
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_BACKEND_STORE_URI": tracking_uri}
    # The server logs every request: to a file, never to a pipe nobody reads (a full pipe blocks it).
    log = tempfile.NamedTemporaryFile(prefix="koopsweep-mlflow-", suffix=".log", delete=False)
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    process.log_path = log.name  # type: ignore[attr-defined]
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(process.log_path, encoding="utf-8", errors="replace") as handle:  # type: ignore[attr-defined]
                error = handle.read()[-2000:]
            raise KoopsweepError(f"mlflow server exited with status {process.returncode}: {error.strip()}")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.5)
    stop_server(process)
    raise KoopsweepError(f"mlflow server did not answer on {host}:{port} within {timeout:.0f} s")


def stop_server(process) -> None:
    """Stop a server started by `start_ui_server`, with its worker processes."""
    import signal

    import subprocess

    if process.poll() is None:
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    log_path = getattr(process, "log_path", None)
    if log_path:
        with contextlib.suppress(OSError):
            os.unlink(log_path)
