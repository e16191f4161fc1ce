"""MLflow tracking: one experiment per study, a parent run per study, a child run per trial and baseline.

Everything goes through `MlflowClient` with explicit run ids (no fluent ``mlflow.start_run`` state), so
runs nest correctly when trials come from other processes or hosts and a stray ``MLFLOW_RUN_ID`` in the
environment cannot capture them. Curves are sent with `log_batch`, at most 1,000 points per call.

Tracking must never cost a result: `Tracker` methods used during a sweep catch MLflow errors, warn once
and carry on (the Optuna storage still holds every trial).
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MAX_BATCH = 1000  # MLflow's limit on metrics per log_batch call
MAX_PARAMS = 100  # ... and on params per call

ROLE_TAG = "koopsweep.role"
STUDY_TAG = "koopsweep.study"


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



class Tracker:
    """The study's MLflow experiment."""

    def __init__(self, tracking_uri: str, experiment_name: str) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        experiment = self.client.get_experiment_by_name(experiment_name)
        if experiment is None:
            self.experiment_id = self.client.create_experiment(experiment_name)
        else:
            self.experiment_id = experiment.experiment_id
        self._warned = False

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

    # --------------------------------------------------------------- logging
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), _param_value(v)) for k, v in params.items()]
        for chunk in _chunks(items, MAX_PARAMS):
            self.client.log_batch(run_id, params=chunk)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float | None], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        for chunk in _chunks(items, MAX_BATCH):
            self.client.log_batch(run_id, metrics=chunk)

    def log_curve(self, run_id: str, key: str, points: Iterable[tuple[int, float, int]]) -> None:
        """Points are (step, value, timestamp in ms); sent in batches of at most 1,000."""
        from mlflow.entities import Metric

        items = [Metric(key, float(value), int(ts), int(step)) for step, value, ts in points]
        for chunk in _chunks(items, MAX_BATCH):
            self.client.log_batch(run_id, metrics=chunk)

    def log_figure(self, run_id: str, figure: Any, name: str) -> None:
        self.client.log_figure(run_id, figure, name)

    # ---------------------------------------------------------------- safety
    def guarded(self, action: str, fn, *args, **kwargs) -> Any:
        """Run a tracking call; on failure warn once for the whole process and return None."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MLflow raises many types (HTTP, SQL, REST); none may stop a sweep
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"MLflow tracking at {mask_uri(self.uri)} failed while trying to {action} "
                    f"({type(exc).__name__}: {exc}); the sweep goes on and Optuna keeps every result, "
                    "but runs from now on may be missing from MLflow",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return None


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


def start_ui_server(tracking_uri: str, *, host: str = "127.0.0.1", port: int = 5000, timeout: float = 60.0):
    """Start ``mlflow server`` on ``tracking_uri`` and return its process once it answers /health."""
    import subprocess
    import sys
    import urllib.request

    from koopsweep.errors import KoopsweepError

    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    import tempfile

    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
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
