"""A worker rides out an outage of its study's database (issue 17): real PostgreSQL servers taken down
and brought back up, in-process and with real `koopsweep study run` workers."""

import logging
import os
import subprocess
import sys
import threading
import time

import optuna
import pytest

from koopsweep import sweep
from koopsweep.errors import StorageUnavailable

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KOOPSWEEP_STATE_DIR", str(tmp_path / "state"))


def test_only_errors_that_say_the_database_is_unreachable_are_outages():
    import sqlite3

    import sqlalchemy.exc as sa

    refused = sa.OperationalError("SELECT 1", {}, Exception("connection refused"))
    assert sweep.is_outage(refused)
    masked = UnboundLocalError("cannot access local variable 'updated_state'")  # optuna/optuna#5280
    masked.__context__ = optuna.exceptions.StorageInternalError("commit failed")
    masked.__context__.__cause__ = refused
    assert sweep.is_outage(masked)
    assert sweep.is_outage(sa.OperationalError("x", {}, sqlite3.OperationalError("database is locked")))
    assert not sweep.is_outage(sa.OperationalError("x", {}, sqlite3.OperationalError("no such table: studies")))
    assert not sweep.is_outage(sa.IntegrityError("INSERT", {}, Exception("duplicate key")))
    assert not sweep.is_outage(ValueError("bad value"))


def _study(url, retry_for, name="outage"):
    storage = sweep.open_storage(url, retry_for=retry_for)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True)
    storage.pending = sweep.PendingResults(url, name)
    return study, storage


def _x(trial):
    return trial.suggest_float("x", 0.0, 1.0)


def test_a_short_outage_is_ridden_out_and_the_result_written(own_postgres, caplog):
    study, storage = _study(own_postgres.url, retry_for=60)
    trial = study.ask()
    x = _x(trial)
    trial.report(0.5, 1)
    own_postgres.down()
    restart = threading.Timer(3.0, own_postgres.up)
    restart.start()
    with caplog.at_level(logging.WARNING, logger="koopsweep"):
        study.tell(trial, x * 2)  # blocks through the outage, then writes
    restart.join()
    [done] = study.get_trials()
    assert done.state == optuna.trial.TrialState.COMPLETE and done.value == pytest.approx(x * 2)
    assert done.intermediate_values == {1: 0.5}
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("koopsweep")]
    assert len(warnings) == 2, warnings  # one when it starts, one when it ends
    assert "does not answer" in warnings[0] and "answers again" in warnings[1]
    assert storage.gave_up is None


def test_past_the_bound_the_result_is_kept_and_replayed_with_its_number(own_postgres):
    study, storage = _study(own_postgres.url, retry_for=2)
    study.optimize(_x, n_trials=1)  # one trial written normally
    trial = study.ask()
    x = _x(trial)
    own_postgres.down()
    trial.report(0.25, 3)  # after the bound: the trial in flight goes on locally
    trial.set_user_attr("measured", "yes")
    study.tell(trial, x + 1)
    assert isinstance(storage.gave_up, StorageUnavailable)
    assert storage.pending.path.exists() and "did not answer for 2 s" in str(storage.gave_up)
    with pytest.raises(StorageUnavailable):
        study.ask()  # no new trial without the database
    own_postgres.up()
    fresh = optuna.load_study(study_name="outage", storage=sweep.open_storage(own_postgres.url))
    assert fresh.trials[1].state == optuna.trial.TrialState.RUNNING  # nobody wrote it yet
    assert sweep.write_kept_results(fresh, own_postgres.url) == [1]
    replayed = fresh.trials[1]
    assert replayed.state == optuna.trial.TrialState.COMPLETE and replayed.value == pytest.approx(x + 1)
    assert replayed.params == {"x": x} and replayed.user_attrs["measured"] == "yes"
    assert replayed.intermediate_values == {3: 0.25}
    assert not storage.pending.path.exists()
    assert sweep.write_kept_results(fresh, own_postgres.url) == []  # written once


def _worker(spec, url, *extra, state_dir):
    env = {**os.environ, "KOOPSWEEP_STORAGE": url, "KOOPSWEEP_STATE_DIR": str(state_dir)}
    command = [sys.executable, "-m", "koopsweep", "study", "run", str(spec), "--heartbeat-interval", "2", *extra]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_running(url, name, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name=name, storage=sweep.open_storage(url))
            if study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
                return
        except Exception:  # noqa: BLE001 - the study may not exist yet
            pass
        time.sleep(0.2)
    pytest.fail("no trial started")


def test_two_workers_ride_out_a_database_restart_mid_trial(own_postgres, tiny_spec, tmp_path):
    spec = tiny_spec.parent / "restart.toml"
    spec.write_text(tiny_spec.read_text().replace('name = "tiny"', 'name = "restart"').replace("n_trials = 2", "n_trials = 4"))
    subprocess.run([sys.executable, "-m", "koopsweep", "study", "create", str(spec), "--storage", own_postgres.url],
                   check=True, capture_output=True)  # fmt: skip
    workers = [_worker(spec, own_postgres.url, "--quiet", state_dir=tmp_path) for _ in range(2)]
    _wait_for_running(own_postgres.url, "restart")
    own_postgres.down()
    time.sleep(5)
    own_postgres.up()
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
        assert "Error: unexpected" not in err
    study = optuna.load_study(study_name="restart", storage=sweep.open_storage(own_postgres.url))
    states = [t.state for t in study.trials]
    assert len(states) >= 4 and optuna.trial.TrialState.FAIL not in states, states
    assert all(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for s in states)
    assert "does not answer" in "".join(err for _, err in outputs)


def test_an_outage_past_the_bound_exits_75_and_the_next_run_writes_the_result(own_postgres, tiny_spec, tmp_path):
    spec = tiny_spec.parent / "gone.toml"
    spec.write_text(tiny_spec.read_text().replace('name = "tiny"', 'name = "gone"').replace("n_trials = 2", "n_trials = 1"))
    subprocess.run([sys.executable, "-m", "koopsweep", "study", "create", str(spec), "--storage", own_postgres.url],
                   check=True, capture_output=True)  # fmt: skip
    worker = _worker(spec, own_postgres.url, "--storage-retry", "1", state_dir=tmp_path)
    _wait_for_running(own_postgres.url, "gone")
    own_postgres.down()
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 75, err
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "did not answer for 1 s" in lines[0] and "kept in" in lines[0], err
    assert "Error: unexpected" not in err
    own_postgres.up()
    again = _worker(spec, own_postgres.url, state_dir=tmp_path)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "wrote 1 result(s) kept from an earlier storage outage" in err
    study = optuna.load_study(study_name="gone", storage=sweep.open_storage(own_postgres.url))
    [trial] = study.trials
    assert trial.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    assert trial.user_attrs.get("replayed") is True
