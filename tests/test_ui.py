"""`koopsweep ui`: a real MLflow server on loopback, started and stopped by koopsweep."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from click.testing import CliRunner

from koopsweep.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process_tree(root: int) -> list[int]:
    """``root`` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def test_ui_serves_the_study_runs_page(tiny_spec, workdir):
    assert CliRunner().invoke(main, ["study", "create", str(tiny_spec)]).exit_code == 0
    port = free_port()
    koopsweep = str(Path(sys.executable).with_name("koopsweep"))
    process = subprocess.Popen(
        [koopsweep, "ui", "tiny", "--port", str(port)], cwd=workdir, stdout=subprocess.PIPE, text=True,
        start_new_session=True, env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )  # fmt: skip
    try:
        url = process.stdout.readline().strip()
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/") and url.endswith("/runs")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            assert response.status == 200
        experiment_id = url.split("/experiments/")[1].split("/")[0]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search",
            data=json.dumps({"experiment_ids": [experiment_id]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.loads(response.read())["runs"]
        # The study's parent run, created by `study create` before any worker started.
        tags = [{t["key"]: t["value"] for t in run["data"]["tags"]} for run in runs]
        assert [t.get("koopsweep.role") for t in tags] == ["study"]
        # The store's URL is on no command line of the ui or the server it started (any user can read them).
        store = str(workdir / "mlflow.db")
        for pid in _process_tree(process.pid):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            assert store not in cmdline and "sqlite:" not in cmdline, cmdline
    finally:
        process.send_signal(signal.SIGTERM)  # as `kill` would; SIGINT may be ignored under CI
        process.wait(timeout=60)
    with socket.socket() as s:  # the server went away with it
        assert s.connect_ex(("127.0.0.1", port)) != 0
