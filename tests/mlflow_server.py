"""Fixtures for a real `mlflow server` process on loopback (koopsweep's own start/stop code).

`mlflow_server` is shared by a test module (starting one takes about 6 s); `fresh_mlflow_server` is a
server of its own for a test that stops it on purpose. Both are stopped at the end, whole process
tree, whatever the test did.
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MlflowServer:
    """A running `mlflow server`: SQLite backend and a local artifact root, both in ``folder``."""

    folder: Path
    port: int
    process: object  # subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        path = getattr(self.process, "log_path", None)
        if not path or not os.path.exists(path):
            return ""
        return Path(path).read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        from koopsweep.tracking import stop_server

        stop_server(self.process)


def _serve(tmp_path_factory, empty_mlflow_db):
    """A server on a free loopback port, over a copy of the already migrated, empty store (a fresh one
    runs dozens of migrations, up to a minute on a loaded 2-core machine, before the server answers)."""
    from koopsweep.tracking import start_ui_server

    folder = tmp_path_factory.mktemp("mlflow-server")
    shutil.copy(empty_mlflow_db, folder / "srv.db")
    port = free_port()
    process = start_ui_server(
        f"sqlite:///{folder / 'srv.db'}", port=port, default_artifact_root=str(folder / "artifacts"), timeout=120
    )
    server = MlflowServer(folder, port, process)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, empty_mlflow_db):
    yield from _serve(tmp_path_factory, empty_mlflow_db)


@pytest.fixture
def fresh_mlflow_server(tmp_path_factory, empty_mlflow_db):
    yield from _serve(tmp_path_factory, empty_mlflow_db)
