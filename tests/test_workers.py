"""Workers as separate processes on a shared storage (a real PostgreSQL server, or SQLite): many at
once, one on "another host", one killed in the middle of a trial, and a study resumed after every
worker stopped. Every worker here is a real `koopsweep study run` process."""

import os
import platform
import signal
import subprocess
import sys
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
WAIT_S = 600  # a generous bound on any one wait: these machines are shared and slow under load


def write_spec(path, *, n_trials: int, budget: int = 40) -> None:
    from conftest import TINY_SPEC

    text = TINY_SPEC.replace("n_trials = 2", f"n_trials = {n_trials}").replace("budget = 60", f"budget = {budget}")
    path.write_text(text)


def worker_env(**extra) -> dict:
    # One thread per worker: several workers share the machine's cores.
    # PYTHONFAULTHANDLER: a worker that hangs is sent SIGABRT by `finish` and dumps every thread's stack.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONFAULTHANDLER": "1",
            **extra}  # fmt: skip


def koopsweep(*args, cwd, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "koopsweep", *args], cwd=cwd, env=env or worker_env(),
        capture_output=True, text=True, timeout=WAIT_S,
    )  # fmt: skip


def start_worker(*args, cwd, log, env=None) -> subprocess.Popen:
    """A `koopsweep study run` process, its output in a file (a pipe nobody reads could block it)."""
    handle = open(log, "w")
    return subprocess.Popen(
        [sys.executable, "-m", "koopsweep", "study", "run", *args], cwd=cwd, env=env or worker_env(),
        stdout=handle, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def finish(worker: subprocess.Popen, log) -> str:
    try:
        worker.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        worker.send_signal(signal.SIGABRT)  # its threads' stacks go to its log (PYTHONFAULTHANDLER)
        worker.wait(timeout=30)
        raise AssertionError(f"worker {worker.pid} still running after {WAIT_S} s:\n{log.read_text()[-6000:]}") from None
    return log.read_text()


def trials_of(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="tiny", storage=url).get_trials()


def tracking(workdir) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")


def worker_id(process: subprocess.Popen) -> str:
    return f"{platform.node()}:{process.pid}"


def cli(*args):
    """koopsweep in this process, for the steps that are not workers (cheaper than a new process)."""
    from click.testing import CliRunner

    from koopsweep.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def create(spec, url) -> None:
    created = cli("study", "create", str(spec), "--storage", url)
    assert created.exit_code == 0, created.output
    assert created.stdout.strip().splitlines()[-1] == "tiny"


# ------------------------------------------------------------------------------------- many workers
def test_four_workers_share_a_fresh_postgres_study(workdir, postgres_url):
    write_spec(workdir / "tiny.toml", n_trials=4)
    create(workdir / "tiny.toml", postgres_url)
    log = workdir / "run.log"
    # The product's own way to start several workers: `--jobs` starts them as separate processes.
    ran = start_worker("tiny", "--storage", postgres_url, "--jobs", "4", cwd=workdir, log=log)
    output = finish(ran, log)
    assert ran.returncode == 0, output
    assert "Traceback" not in output and "Error" not in output

    trials = trials_of(postgres_url)
    # Every requested trial finished; four workers may overshoot by at most three.
    assert 4 <= len(trials) <= 7
    assert all(t.state in DONE for t in trials), [(t.number, t.state.name) for t in trials]
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # no duplicate or missing number
    assert len({t.user_attrs["worker"] for t in trials}) >= 2  # really shared between processes

    client = tracking(workdir)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=200)
    [parent] = [r for r in runs if r.data.tags.get("koopsweep.role") == "study"]
    trial_runs = {r.info.run_id: r for r in runs if r.data.tags.get("koopsweep.role") == "trial"}
    assert sorted(trial_runs) == sorted(t.user_attrs["mlflow_run_id"] for t in trials)
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs.values()} == {parent.info.run_id}
    assert {r.info.status for r in trial_runs.values()} <= {"FINISHED", "KILLED"}


def test_n_trials_counts_this_invocations_trials_whatever_other_workers_do(workdir):
    url = f"sqlite:///{workdir / 'koopsweep.db'}"
    write_spec(workdir / "tiny.toml", n_trials=2, budget=20)
    create(workdir / "tiny.toml", url)
    # Two invocations at once, each with --n-trials 2 (as Optuna's optimize(n_trials=2) in each): 4 trials,
    # although the spec's study-wide target is 2.
    both = [start_worker("tiny", "--storage", url, "--n-trials", "2", cwd=workdir, log=workdir / f"w{i}.log")
            for i in range(2)]  # fmt: skip
    for i, worker in enumerate(both):
        assert finish(worker, workdir / f"w{i}.log") is not None and worker.returncode == 0
    trials = trials_of(url)
    assert len(trials) == 4 and all(t.state in DONE for t in trials)
    for worker in both:
        assert sum(t.user_attrs["worker"] == worker_id(worker) for t in trials) == 2
    # One invocation with --jobs 2 --n-trials 3: its two workers share exactly 3, one torch thread each.
    env = {k: v for k, v in worker_env().items() if k != "OMP_NUM_THREADS"}
    shared = koopsweep("study", "run", "tiny", "--storage", url, "--jobs", "2", "--n-trials", "3", cwd=workdir, env=env)
    assert shared.returncode == 0, shared.stderr
    trials = trials_of(url)
    assert len(trials) == 7 and len({t.user_attrs["worker"] for t in trials[4:]}) == 2
    assert [t.user_attrs["torch_threads"] for t in trials[4:]] == [1, 1, 1]
    again = koopsweep("study", "run", "tiny", "--storage", url, "--jobs", "2", "--n-trials", "2", "--threads", "2",
                      cwd=workdir, env=env)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert [t.user_attrs["torch_threads"] for t in trials_of(url)[7:]] == [2, 2]


# ------------------------------------------------------------------- another host; resuming a study
def test_a_worker_elsewhere_joins_with_the_storage_url_and_name_and_the_study_resumes(workdir, postgres_url, tmp_path_factory):
    write_spec(workdir / "tiny.toml", n_trials=2)
    create(workdir / "tiny.toml", postgres_url)
    first = koopsweep("study", "run", "tiny", "--storage", postgres_url, "--n-trials", "1", cwd=workdir)
    assert first.returncode == 0, first.stderr
    [before] = trials_of(postgres_url)
    assert before.state in DONE

    # "Another host": another folder, no spec file, nothing configured but the storage URL and the name.
    elsewhere = tmp_path_factory.mktemp("another-host")
    env = {k: v for k, v in worker_env().items() if k not in ("MLFLOW_TRACKING_URI", "KOOPSWEEP_STORAGE")}
    log = elsewhere / "worker.log"
    joined = start_worker("tiny", "--storage", postgres_url, cwd=elsewhere, log=log, env=env)
    output = finish(joined, log)
    assert joined.returncode == 0, output

    first_again, second = trials_of(postgres_url)
    # The study went on where it was: the next number, the earlier result untouched.
    assert (first_again.number, second.number) == (0, 1)
    assert (first_again.state, first_again.values, first_again.params) == (before.state, before.values, before.params)
    assert first_again.datetime_complete == before.datetime_complete
    assert second.state in DONE and second.user_attrs["worker"] == worker_id(joined)
    # It tracked into the study's MLflow experiment (recorded at creation), not a store of its own.
    assert not (elsewhere / "mlflow.db").exists() and not (elsewhere / "koopsweep.db").exists()
    client = tracking(workdir)
    run = client.get_run(second.user_attrs["mlflow_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == client.get_run(first_again.user_attrs["mlflow_run_id"]).data.tags["mlflow.parentRunId"]

    # With its n_trials done, another run adds nothing, and says so.
    again = cli("study", "run", "tiny", "--storage", postgres_url)
    assert again.exit_code == 0 and "already has its 2 trials" in again.stderr
    assert len(trials_of(postgres_url)) == 2


# ------------------------------------------------------------------------------------ killed workers
def wait_for_running_trial(url: str, worker: subprocess.Popen) -> optuna.trial.FrozenTrial:
    """Poll the storage until ``worker`` is in the middle of a trial whose MLflow run has started."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker ended before its first trial was caught running"
        try:
            trials = trials_of(url)
        except KeyError:  # the study is not visible yet
            trials = []
        for t in trials:
            if (t.state == optuna.trial.TrialState.RUNNING and t.user_attrs.get("worker") == worker_id(worker)
                    and "mlflow_run_id" in t.user_attrs):  # fmt: skip
                return t
        time.sleep(0.2)
    raise AssertionError("no trial of the worker was seen running")


def check_killed_trial_was_retried(trials, killed, workdir) -> optuna.trial.FrozenTrial:
    by_number = {t.number: t for t in trials}
    dead = by_number[killed.number]
    assert dead.state == optuna.trial.TrialState.FAIL
    [retry] = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert retry.state in DONE and retry.number > killed.number
    assert retry.params == dead.params  # the same configuration, measured again
    client = tracking(workdir)
    assert client.get_run(dead.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    assert retry.user_attrs["mlflow_run_id"] != dead.user_attrs["mlflow_run_id"]
    assert client.get_run(retry.user_attrs["mlflow_run_id"]).info.status in ("FINISHED", "KILLED")
    # Only the killed trial failed; numbers have no gaps or duplicates.
    assert [t.number for t in trials if t.state not in DONE] == [killed.number]
    assert sorted(by_number) == list(range(len(trials)))
    # No trial or baseline run is left RUNNING in MLflow: the dead worker's were ended as FAILED.
    experiments = [e.experiment_id for e in client.search_experiments()]
    open_runs = client.search_runs(experiments, "attributes.status = 'RUNNING'")
    assert [r.data.tags.get("koopsweep.role") for r in open_runs if r.data.tags.get("koopsweep.role") != "study"] == []
    return retry


def test_the_runs_a_dead_worker_had_open_for_a_trial_are_all_failed(workdir):
    from koopsweep.tracking import Tracker

    tracker = Tracker(f"sqlite:///{workdir / 'mlflow.db'}", "dead")
    parent = tracker.start_study_run("dead", "{}", {})
    trial_run = tracker.start_child(parent, "trial-3", "trial", {"koopsweep.trial": "3"})
    baseline = tracker.start_child(parent, "trial-3-adam", "baseline", {"koopsweep.trial": "3"})
    other = tracker.start_child(parent, "trial-4", "trial", {"koopsweep.trial": "4"})
    assert sorted(tracker.fail_open_runs(3)) == sorted([trial_run, baseline])
    status = {run: tracker.client.get_run(run).info.status for run in (parent, trial_run, baseline, other)}
    assert status == {parent: "RUNNING", trial_run: "FAILED", baseline: "FAILED", other: "RUNNING"}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_retried(workdir, backend, request):
    """Killed between creating its trial and starting the heartbeat, a worker leaves a RUNNING trial with
    no heartbeat at all, which Optuna's own check never fails. Seen silent for longer than the grace
    period, it is failed and its retry queued; a trial that beats is left alone."""
    from koopsweep.sweep._storage import open_storage

    url = f"sqlite:///{workdir / 'silent.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    storage = open_storage(url, heartbeat_interval=1)
    study = optuna.create_study(study_name="silent", storage=storage)
    orphan = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # no heartbeat: its worker "died"
    alive = study.ask()
    storage.record_heartbeat(alive._trial_id)
    grace = storage._backend.grace_period if hasattr(storage, "_backend") else storage.grace_period
    optuna.storages.fail_stale_trials(study)  # first seen silent: not yet stale
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.RUNNING] * 2
    deadline = time.monotonic() + grace + 1.5
    while time.monotonic() < deadline:  # the live trial keeps beating meanwhile
        storage.record_heartbeat(alive._trial_id)
        time.sleep(0.5)
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials()
    assert trials[orphan.number].state == optuna.trial.TrialState.FAIL
    assert trials[alive.number].state == optuna.trial.TrialState.RUNNING
    [retry] = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    assert retry.user_attrs["retry_of"] == orphan.number and retry.params == orphan.params


def test_a_worker_killed_mid_trial_is_failed_and_retried_while_others_go_on(workdir, postgres_url):
    write_spec(workdir / "tiny.toml", n_trials=3)
    create(workdir / "tiny.toml", postgres_url)
    args = ("tiny", "--storage", postgres_url, "--heartbeat-interval", "1")
    doomed = start_worker(*args, cwd=workdir, log=workdir / "doomed.log")
    survivor = start_worker(*args, cwd=workdir, log=workdir / "survivor.log")
    try:
        killed = wait_for_running_trial(postgres_url, doomed)
        done_before = {t.number: (t.values, t.params) for t in trials_of(postgres_url) if t.state in DONE}
        doomed.send_signal(signal.SIGKILL)
        assert doomed.wait(timeout=60) == -signal.SIGKILL
        output = finish(survivor, workdir / "survivor.log")
    finally:
        for process in (doomed, survivor):
            if process.poll() is None:
                process.kill()
    assert survivor.returncode == 0, output
    assert "Traceback" not in output

    trials = trials_of(postgres_url)
    retry = check_killed_trial_was_retried(trials, killed, workdir)
    assert retry.user_attrs["worker"] == worker_id(survivor)
    # The survivor's own trials and whatever had finished before the kill are untouched.
    assert all(t.user_attrs["worker"] == worker_id(survivor) for t in trials if t.number != killed.number)
    after = {t.number: (t.values, t.params) for t in trials}
    assert all(after[n] == v for n, v in done_before.items())
    # The retry replaces the dead trial: three trials were asked for, and three count.
    from koopsweep.sweep import finished_trials

    assert finished_trials(optuna.load_study(study_name="tiny", storage=postgres_url)) == 3


def test_a_study_whose_only_worker_was_killed_resumes_and_retries_its_trial_on_sqlite(workdir):
    url = f"sqlite:///{workdir / 'koopsweep.db'}"
    write_spec(workdir / "tiny.toml", n_trials=2)
    create(workdir / "tiny.toml", url)
    doomed = start_worker("tiny", "--storage", url, "--heartbeat-interval", "1", cwd=workdir, log=workdir / "doomed.log")
    try:
        killed = wait_for_running_trial(url, doomed)
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=60)

    # Every worker has stopped; a new one resumes the study, fails the dead trial once its heartbeat is
    # stale, and runs it again.
    resumed = koopsweep("study", "run", "tiny", "--storage", url, "--heartbeat-interval", "1", cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    trials = trials_of(url)
    retry = check_killed_trial_was_retried(trials, killed, workdir)
    assert retry.user_attrs["worker"] != killed.user_attrs["worker"]
    assert len(trials) == 3  # the dead trial, its retry, and the one the spec still lacked
