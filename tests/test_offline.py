"""The tasks build and train with the network switched off.

A subprocess runs in a network namespace of its own (``unshare -n``: no interface but a loopback that
is down, so every connection fails) and, as a second layer that also works where namespaces cannot be
made, with ``socket`` connections and name lookups replaced by an error. It first checks that the
network really is unreachable, then builds each task, trains a few steps through the same
`koopsweep.training.train` the sweeps use, evaluates, and computes the task's end-of-run metrics (the
Burgers reference solution included).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

#: Every task that needs no files (mnist-mlp reads IDX files from a folder: tests/test_tasks.py writes
#: them), with parameters small enough for a few seconds each.
CASES = {
    "charlm-transformer": {"d_model": 16, "n_layers": 1, "n_heads": 2, "context": 16, "batch_size": 4, "eval_windows": 8},
    "mnist1d-cnn": {"channels": 8, "num_samples": 600},
    "pinn-burgers": {"hidden": 8, "depth": 2, "n_interior": 200, "n_boundary": 40, "n_eval": 100},
    "mnist1d-mlp": {"num_samples": 600},
    "digits-mlp": {},
    "hnn-oscillator": {"n_points": 50},
    "teacher-student": {"n_train": 128, "n_eval": 128},
}

SCRIPT = """
import json, socket, sys

def switched_off(*args, **kwargs):
    raise OSError("network switched off by tests/test_offline.py")

for name in ("connect", "connect_ex"):
    setattr(socket.socket, name, switched_off)
socket.create_connection = socket.getaddrinfo = switched_off

import math
import torch
from koopsweep import plugins
from koopsweep.training import learning_rate, train

report = {}
for name, params in json.loads(sys.argv[1]).items():
    task = plugins.load_task(name)(**params)
    optimizer = type(task).default_optimizer
    run = train(task, optimizer=optimizer, lr=learning_rate(task, optimizer)[0], seed=0,
                device=torch.device("cpu"), max_steps=6, eval_every=3)
    report[name] = {"losses": [p.loss for p in run.curve], "metrics": run.metrics, "facts": task.data_facts()}
print(json.dumps(report))
"""


def _namespace_prefix() -> list[str]:
    """``unshare -n`` when this process may create a network namespace (root, or user namespaces)."""
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
        if shutil.which(prefix[0]) and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return []


def test_the_network_really_is_off_in_the_sandbox():
    prefix = _namespace_prefix()
    probe = textwrap.dedent(SCRIPT.split("import math")[0]) + textwrap.dedent("""
        import urllib.request
        try:
            urllib.request.urlopen("http://pypi.org", timeout=3)
        except OSError as exc:
            print("off:", exc)
        else:
            print("on")
    """)
    result = subprocess.run([*prefix, sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("off:"), result.stdout


@pytest.mark.slow
def test_every_file_free_task_builds_and_trains_with_the_network_switched_off():
    prefix = _namespace_prefix()
    command = [*prefix, sys.executable, "-c", SCRIPT, json.dumps(CASES)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) == set(CASES)
    for name, row in report.items():
        losses = row["losses"]
        assert len(losses) == 3 and all(isinstance(v, float) and v == v for v in losses), (name, losses)
    assert "relative_l2_error" in report["pinn-burgers"]["metrics"]
    assert "accuracy" in report["mnist1d-cnn"]["metrics"]
    assert report["charlm-transformer"]["facts"]["python_version"] == ".".join(map(str, sys.version_info[:3]))
