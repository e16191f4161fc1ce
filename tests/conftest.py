"""Shared fixtures: every test that writes studies or MLflow runs gets its own folder."""

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# Fixtures that start real servers live in their own modules, each with its own owner.
pytest_plugins = ["postgres_server", "mlflow_server"]

TINY_SPEC = """
name = "tiny"
task = "digits-mlp"
optimizer = "adam"
baselines = ["adam", "adadelta"]
budget = 60
seeds = [0]
n_trials = 2
variants = ["extrapolate-linear", "dmd-global"]
device = "cpu"

[search]
window = {low = 4, high = 8, step = 2}
horizon = {low = 5, high = 40}
fallback = ["verify"]

[sampler]
name = "random"
seed = 0
"""


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory):
    """An MLflow SQLite store with its schema already migrated. Creating one runs dozens of Alembic
    migrations (seconds); tests copy this file instead, and still use a real store each."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch, empty_mlflow_db):
    """A clean current folder (with an empty, real MLflow store as ./mlflow.db) and no tracking or
    storage configured from outside."""
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "KOOPSWEEP_STORAGE", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    return tmp_path


@pytest.fixture
def tiny_spec(workdir):
    path = workdir / "tiny.toml"
    path.write_text(TINY_SPEC)
    return path


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("name")`` imports ``benchmarks/name.py``: they are scripts, not a package."""

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def one_thread():
    """One torch thread for training tests and benchmarks run in-process (as the scripts run): on a
    shared 2-core machine a second thread only spins, and tiny models then take seconds per run."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
