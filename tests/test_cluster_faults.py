"""The faults a real cluster has (issue 17, items 2, 4 and 5), with real servers and real worker
processes: sixteen workers on one PostgreSQL study and one `mlflow server`, workers killed again and
again mid-trial, and a tracking server that goes away mid-study and comes back."""

import random
import signal
import threading
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient
from test_workers import DONE, WAIT_S, create, finish, start_worker, trials_of, worker_env, worker_id, write_spec

from koopsweep.sweep import finished_trials
from koopsweep.tracking import TRACKING_MISSED_ATTR, start_ui_server

pytestmark = pytest.mark.slow

#: What the README's "Running on many machines" states a worker holds at most: one connection for its
#: trial loop and one for its heartbeat thread (SQLAlchemy's pool keeps no more than are used at once).
CONNECTIONS_PER_WORKER = 2


def runs_of(client: MlflowClient, study: str):
    experiment = client.get_experiment_by_name(study)
    return client.search_runs([experiment.experiment_id], max_results=5000)


def open_child_runs(client: MlflowClient, study: str) -> list[tuple[str, str]]:
    """(role, trial number) of every trial or baseline run still RUNNING."""
    return [
        (r.data.tags.get("koopsweep.role"), r.data.tags.get("koopsweep.trial"))
        for r in runs_of(client, study)
        if r.info.status == "RUNNING" and r.data.tags.get("koopsweep.role") != "study"
    ]  # fmt: skip


def check_numbers(trials) -> None:
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # no gap, no duplicate


class ConnectionCounter(threading.Thread):
    """Samples pg_stat_activity every 0.2 s: the connections of each process koopsweep named
    (``koopsweep HOST:PID``, its application name for PostgreSQL) at each moment."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stopping = url, threading.Event()
        self.samples: list[dict[str, int]] = []

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stopping.is_set():
                rows = conn.execute(
                    "SELECT application_name, count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name LIKE 'koopsweep %' "
                    "GROUP BY application_name"
                ).fetchall()
                self.samples.append(dict(rows))
                time.sleep(0.2)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)

    def most_per_process(self, names: set[str]) -> dict[str, int]:
        return {name: max(sample.get(name, 0) for sample in self.samples) for name in names}

    def most_together(self, names: set[str]) -> int:
        return max(sum(n for name, n in sample.items() if name in names) for sample in self.samples)


# ------------------------------------------------------------------------------------ sixteen workers
def test_sixteen_workers_share_one_postgres_study_and_one_tracking_server(workdir, postgres_url, mlflow_server, monkeypatch):
    n_trials, n_workers = 32, 16
    write_spec(workdir / "tiny.toml", n_trials=n_trials, budget=20)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)  # the study's run is made on that server
    env = worker_env()
    create(workdir / "tiny.toml", postgres_url)
    counter = ConnectionCounter(postgres_url)
    counter.start()
    workers = [
        start_worker("tiny", "--storage", postgres_url, cwd=workdir, log=workdir / f"w{i}.log", env=env)
        for i in range(n_workers)
    ]  # fmt: skip
    try:
        outputs = [finish(worker, workdir / f"w{i}.log") for i, worker in enumerate(workers)]
    finally:
        counter.stop()
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output
        assert "Traceback" not in output and "Warning" not in output, output

    trials = trials_of(postgres_url)
    # The study-wide target is met; each worker may start one trial beyond it at the same instant.
    assert n_trials <= len(trials) <= n_trials + n_workers - 1
    assert all(t.state in DONE for t in trials), [(t.number, t.state.name) for t in trials]
    check_numbers(trials)
    assert not [t.number for t in trials if t.user_attrs.get(TRACKING_MISSED_ATTR)]
    assert len({t.user_attrs["worker"] for t in trials}) >= 8  # really shared

    # Every trial is tracked by the one server, under the study's run, and nothing is left open.
    client = MlflowClient(tracking_uri=mlflow_server.url)
    runs = runs_of(client, "tiny")
    [parent] = [r for r in runs if r.data.tags.get("koopsweep.role") == "study"]
    assert parent.info.status == "FINISHED"
    trial_runs = {r.info.run_id for r in runs if r.data.tags.get("koopsweep.role") == "trial"}
    assert trial_runs == {t.user_attrs["mlflow_run_id"] for t in trials}
    assert open_child_runs(client, "tiny") == []

    # Connections: every worker was seen, none held more than the README states.
    ours = {f"koopsweep {worker_id(w)}" for w in workers}
    most = counter.most_per_process(ours)
    assert min(most.values()) >= 1 and max(most.values()) <= CONNECTIONS_PER_WORKER, most
    assert counter.most_together(ours) <= n_workers * CONNECTIONS_PER_WORKER


# ------------------------------------------------------------------------ workers killed, repeatedly
def wait_for(condition, what: str, workers=()):
    """Poll ``condition`` until it returns something; fail at once when every one of ``workers`` has
    exited (the study ended first), else after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if workers and all(w.poll() is not None for w in workers):
            raise AssertionError(f"every worker exited while waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_workers_killed_again_and_again_mid_trial_leave_no_run_open(workdir, postgres_url, mlflow_server, monkeypatch):
    """Kill a worker in the middle of a trial five times, each at a different moment of it (training a
    baseline, logging, ending its runs), starting a new worker each time: every killed trial is failed
    and retried, the target is met, and MLflow shows no dead trial or baseline as running."""
    n_trials, kills = 16, 5  # enough trials that the study is not done before the last kill
    write_spec(workdir / "tiny.toml", n_trials=n_trials, budget=40)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    env = worker_env()
    create(workdir / "tiny.toml", postgres_url)
    args = ("tiny", "--storage", postgres_url, "--heartbeat-interval", "1")
    spawned = 0

    def spawn():
        nonlocal spawned
        spawned += 1
        return start_worker(*args, cwd=workdir, log=workdir / f"w{spawned}.log", env=env)

    workers = [spawn(), spawn()]
    delays = random.Random(17).sample([0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 1.8], kills)  # moments within a trial
    killed = []  # the workers' ids
    try:
        for delay in delays:

            def running_victim():
                live = {worker_id(w): w for w in workers if w.poll() is None}
                for t in trials_of(postgres_url):
                    if t.state == optuna.trial.TrialState.RUNNING and t.user_attrs.get("worker") in live \
                            and "mlflow_run_id" in t.user_attrs:  # fmt: skip
                        return live[t.user_attrs["worker"]]
                return None

            victim = wait_for(running_victim, "a running trial to kill", workers)
            time.sleep(delay)  # by then the victim may be logging, ending its runs, or on its next trial
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=60)
            killed.append(worker_id(victim))
            workers.append(spawn())
        outputs = [finish(w, workdir / f"w{i + 1}.log") for i, w in enumerate(workers)]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert all(w.returncode in (0, -signal.SIGKILL) for w in workers), outputs
    assert sum(w.returncode == -signal.SIGKILL for w in workers) == kills

    trials = trials_of(postgres_url)
    check_numbers(trials)
    study = optuna.load_study(study_name="tiny", storage=postgres_url)
    assert finished_trials(study) >= n_trials
    # The trials in flight when their worker was killed: each is failed, retried with its parameters,
    # and its MLflow run FAILED; every other trial finished. (A kill between two trials kills none.)
    # A trial whose worker was killed before it wrote its own name has none (failed once seen silent).
    dead = [t for t in trials if t.state not in DONE and t.user_attrs.get("worker", killed[0]) in killed]
    assert len(dead) >= kills - 2, [(t.number, t.state.name) for t in trials]
    assert [t.number for t in trials if t.state not in DONE] == [t.number for t in dead]
    client = MlflowClient(tracking_uri=mlflow_server.url)
    unretried = []
    for trial in dead:
        assert trial.state == optuna.trial.TrialState.FAIL
        retries = [t for t in trials if t.user_attrs.get("retry_of") == trial.number]
        if "retry_of" in trial.user_attrs:
            assert retries == []  # a retry that dies too is not queued again (max_retry=1)
        elif retries:
            [retry] = retries
            # Optuna's retry fixes the parameters the dead trial had sampled; one killed while still
            # sampling (define-by-run) has only some of them, and its retry samples the rest.
            assert retry.params.items() >= trial.params.items(), (retry.params, trial.params)
        else:
            unretried.append(trial.number)
        if "mlflow_run_id" in trial.user_attrs:  # absent when killed before its run started
            assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "FAILED"
    # Known gap (seen once in several runs): a worker killed between failing another's stale trial and
    # queuing its retry leaves that trial FAIL with no retry. Its runs are still ended (above).
    assert len(unretried) <= 1, unretried
    assert open_child_runs(client, "tiny") == []


# ----------------------------------------------------------------- the tracking server comes and goes
def test_workers_ride_out_a_tracking_server_restart_and_log_again_once_it_is_back(workdir, fresh_mlflow_server, monkeypatch):
    """Two workers run a study while the `mlflow server` is stopped and started again on the same port:
    every trial is measured, the runs open when it went away are ended, trials that started after it came
    back are logged, and the trials that ran while it was away are marked."""
    server = fresh_mlflow_server
    url = f"sqlite:///{workdir / 'koopsweep.db'}"
    write_spec(workdir / "tiny.toml", n_trials=1000, budget=40)  # ended by --timeout, not by its count
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    create(workdir / "tiny.toml", url)
    env = worker_env(KOOPSWEEP_TRACKING_RETRY="1")
    workers = [start_worker("tiny", "--storage", url, "--timeout", "50", cwd=workdir, log=workdir / f"w{i}.log", env=env)
               for i in range(2)]  # fmt: skip
    try:
        wait_for(lambda: sum(t.state in DONE for t in trials_of(url)) >= 2, "two trials tracked", workers)
        server.stop()
        stopped = time.time()
        wait_for(lambda: sum(t.state in DONE and t.datetime_start.timestamp() > stopped for t in trials_of(url)) >= 2,
                 "two trials while the server is away", workers)  # fmt: skip
        server.process = start_ui_server(
            f"sqlite:///{server.folder / 'srv.db'}", port=server.port,
            default_artifact_root=str(server.folder / "artifacts"), timeout=120,
        )  # fmt: skip
        back = time.time()
        outputs = [finish(w, workdir / f"w{i}.log") for i, w in enumerate(workers)]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output
        assert "Traceback" not in output
        assert output.count("Warning: MLflow tracking") <= 1, output  # one warning per worker at most

    trials = trials_of(url)
    assert all(t.state in DONE for t in trials), [(t.number, t.state.name) for t in trials]
    away = [t for t in trials if t.datetime_start.timestamp() > stopped and t.datetime_complete.timestamp() < back]
    assert away and all(t.user_attrs.get(TRACKING_MISSED_ATTR) for t in away)
    later = [t for t in trials if t.datetime_start.timestamp() > back + 2]  # past the 1-s retry interval
    assert later, "no trial started after the server came back"
    client = MlflowClient(tracking_uri=server.url)
    for trial in later:
        assert not trial.user_attrs.get(TRACKING_MISSED_ATTR)
        assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status in ("FINISHED", "KILLED")
    assert open_child_runs(client, "tiny") == []  # the runs open when it went away were ended

    # `study show` counts the trials that ran while tracking failed.
    from test_workers import cli

    shown = cli("study", "show", "tiny", "--storage", url, "--json")
    assert shown.exit_code == 0, shown.output
    import json

    summary = json.loads(shown.stdout)
    assert summary["tracking_missed"] == sum(bool(t.user_attrs.get(TRACKING_MISSED_ATTR)) for t in trials) >= len(away)
