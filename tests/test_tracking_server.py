"""Tracking against a real `mlflow server` on loopback: workers in separate processes log one study
over HTTP, the MLflow UI shows it (headless Chromium), and an outage costs no result."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import optuna
import pytest
from mlflow.tracking import MlflowClient

from conftest import TINY_SPEC
from mlflow_server import free_port

KOOPSWEEP = [sys.executable, "-m", "koopsweep"]

#: The metrics every finished trial run carries (time_to_target_s only when the target was reached).
TRIAL_METRICS = (
    "speedup_vs_adam", "speedup_vs_adadelta", "final_loss", "loss_gap", "acceptance_rate",
    "fit_over_step", "window_local_speedup",
)  # fmt: skip


def env_for(tracking_uri: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "KOOPSWEEP_STORAGE", "MLFLOW_TRACKING_URI")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["COLUMNS"] = "200"
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def koopsweep(*args: str, cwd: Path, tracking_uri: str | None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*KOOPSWEEP, *args], cwd=cwd, env=env_for(tracking_uri), capture_output=True, text=True, timeout=timeout
    )


def load(folder: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'koopsweep.db'}")


def trials_so_far(folder: Path, name: str) -> list:
    # The study is created before its worker starts: a reader opening a storage that a writer is still
    # creating would race it on the schema.
    return load(folder, name).get_trials(deepcopy=False)


def runs_of(client: MlflowClient, experiment_name: str):
    experiment = client.get_experiment_by_name(experiment_name)
    return experiment, client.search_runs([experiment.experiment_id], max_results=500)


# ------------------------------------------------------------------ two workers, one server
@pytest.fixture(scope="module")
def logged_study(mlflow_server, tmp_path_factory):
    """A tiny study run by two worker processes that log concurrently to the server."""
    folder = tmp_path_factory.mktemp("two-workers")
    (folder / "tiny.toml").write_text(TINY_SPEC)
    ran = koopsweep("study", "run", "tiny.toml", "--jobs", "2", cwd=folder, tracking_uri=mlflow_server.url)
    assert ran.returncode == 0, ran.stdout + ran.stderr + mlflow_server.log()[-3000:]
    return folder


def test_two_workers_log_one_study_as_parent_and_children(logged_study, mlflow_server):
    import torch

    from koopsweep import plugins

    study = load(logged_study)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) >= 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment, runs = runs_of(client, "tiny")
    by_id = {r.info.run_id: r for r in runs}

    [parent] = [r for r in runs if r.data.tags.get("koopsweep.role") == "study"]
    assert parent.info.run_id == study.user_attrs["koopsweep.mlflow_parent_run_id"]
    assert parent.data.params["task"] == "digits-mlp"
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["spec.json"]
    children = [r for r in runs if r.info.run_id != parent.info.run_id]
    assert {r.data.tags.get("mlflow.parentRunId") for r in children} == {parent.info.run_id}

    trial_runs = [r for r in children if r.data.tags["koopsweep.role"] == "trial"]
    baseline_runs = [r for r in children if r.data.tags["koopsweep.role"] == "baseline"]
    assert len(trial_runs) + len(baseline_runs) == len(children)  # no stray runs
    assert sorted(r.info.run_id for r in trial_runs) == sorted(t.user_attrs["mlflow_run_id"] for t in trials)
    # Both workers logged: the trials ran in two processes at once.
    assert len({t.user_attrs.get("worker") for t in trials}) == 2

    task = plugins.load_task("digits-mlp")()
    interval = task.checkpoint_interval(60)
    baseline_checkpoints = 1 + len(set(range(interval, 61, interval)) | {60})  # step 0, every interval, the budget
    for trial in trials:
        run = by_id[trial.user_attrs["mlflow_run_id"]]
        variant = trial.params["variant"]
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"trial-{trial.number}-{variant}"
        assert run.data.tags["koopsweep.trial"] == str(trial.number) and run.data.tags["koopsweep.variant"] == variant

        params = run.data.params
        expected = {
            "task": "digits-mlp", "optimizer": "adam", "seed": "0", "device": "cpu", "gpu_name": "none",
            "torch_version": torch.__version__,
            **{name: str(value) for name, value in trial.params.items()},  # variant, its own params, window, horizon, fallback
        }  # fmt: skip
        assert {k: params.get(k) for k in expected} == expected
        assert any(k.startswith(f"{variant}.") for k in trial.params)  # the variant's own parameters are among them

        metrics = run.data.metrics
        assert set(TRIAL_METRICS) <= set(metrics)
        assert metrics["speedup_vs_adam"] == pytest.approx(trial.user_attrs["speedup_vs_adam"])
        assert metrics["speedup_vs_adam"] == pytest.approx(trial.value)
        if metrics["reached"] == 1.0:
            assert metrics["time_to_target_s"] > 0

        # One curve point per evaluation checkpoint: step 0, then every checkpoint Optuna got a report from.
        loss = client.get_metric_history(run.info.run_id, "loss")
        assert len(loss) == len(trial.intermediate_values) + 1
        steps = [m.step for m in sorted(loss, key=lambda m: m.step)]
        assert steps[0] == 0 and steps == sorted(set(steps))
        # Timestamped at training time: MLflow's relative-time axis is the training wall-clock.
        assert sorted(loss, key=lambda m: m.step)[0].timestamp == min(m.timestamp for m in loss)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert not any(path.endswith(".png") for path in artifacts)  # figures are drawn by `study report`
        if variant == "dmd-global":
            assert json.loads(run.data.tags["koopsweep.eigenvalues"])

        baselines = [r for r in baseline_runs if r.data.tags["koopsweep.trial"] == str(trial.number)]
        assert sorted(r.data.params["optimizer"] for r in baselines) == ["adadelta", "adam"]
        for base in baselines:
            assert base.info.status == "FINISHED"
            assert base.data.params["seed"] == "0" and "torch_version" not in base.data.params  # on the trial's run
            assert run.data.params["torch_version"] == torch.__version__
            assert {"final_loss", "train_time_s", "seconds_per_step"} <= set(base.data.metrics)
            assert len(client.get_metric_history(base.info.run_id, "loss")) == baseline_checkpoints
    assert len(baseline_runs) == 2 * len(trials)


# ---------------------------------------------------------------------- the MLflow UI itself
def dump_dom(url: str, budget_ms: int) -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(
            "chromium is not installed; the MLflow UI check needs Debian's headless browser: "
            "apt-get update && apt-get install -y chromium (.ci/run does this)"
        )
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [
                chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--window-size=1400,900", f"--virtual-time-budget={budget_ms}",
                "--dump-dom", url,
            ],  # fmt: skip
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def dom_until(url: str, ready) -> str:
    """The page's DOM once ``ready(dom)`` holds; a slow machine gets more virtual time (not a timing
    assertion: the page is a single-page app that renders after its API calls return)."""
    dom = ""
    for budget in (15_000, 30_000, 60_000):
        dom = dump_dom(url, budget)
        if ready(dom):
            break
    return dom


def test_the_mlflow_ui_lists_the_study_and_sorts_its_trials_by_speedup(logged_study, mlflow_server):
    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment, runs = runs_of(client, "tiny")
    trial_runs = [r for r in runs if r.data.tags.get("koopsweep.role") == "trial"]
    page = f"{mlflow_server.url}/#/experiments/{experiment.experiment_id}/runs"

    # The runs page as `koopsweep ui` prints it: every run of the study counted, and the trials nested
    # under the study's parent run, whose row starts collapsed.
    matching = re.compile(r"<strong>(\d+)</strong> matching runs")
    dom = dom_until(page, lambda d: matching.search(d) is not None)
    assert matching.search(dom), dom[-3000:]
    assert int(matching.search(dom).group(1)) == len(runs)
    [parent] = [r for r in runs if r.data.tags.get("koopsweep.role") == "study"]
    assert f"/runs/{parent.info.run_id}" in dom  # the parent's row links to its run page
    assert not any(f"/runs/{r.info.run_id}" in dom for r in runs if r is not parent)  # children: inside it

    # Sorted by speedup_vs_adam, as a click on that column does: the trial runs, best first.
    order = quote("metrics.`speedup_vs_adam`")
    names = [r.info.run_name for r in sorted(trial_runs, key=lambda r: -r.data.metrics["speedup_vs_adam"])]
    dom = dom_until(f"{page}?orderByKey={order}&orderByAsc=false", lambda d: all(n in d for n in names))
    positions = [dom.find(f">{name}<") for name in names]
    assert all(p >= 0 for p in positions), (names, dom[-3000:])
    assert positions == sorted(positions)


# ------------------------------------------------------------------ trial states become run states
def test_failed_and_interrupted_trials_end_their_runs_accordingly(mlflow_server, tmp_path):
    client = MlflowClient(tracking_uri=mlflow_server.url)
    # SGD at learning rate 1000 inside the accelerator diverges: the trial fails, its run is FAILED.
    spec = TINY_SPEC.replace('name = "tiny"', 'name = "diverges"').replace(
        'optimizer = "adam"', 'optimizer = "sgd"\nlr = 1000.0'
    )
    (tmp_path / "diverges.toml").write_text(spec)
    ran = koopsweep("study", "run", "diverges.toml", "--n-trials", "1", cwd=tmp_path, tracking_uri=mlflow_server.url)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    [trial] = load(tmp_path, "diverges").get_trials()
    assert trial.state == optuna.trial.TrialState.FAIL
    assert client.get_run(trial.user_attrs["mlflow_run_id"]).info.status == "FAILED"

    # Ctrl-C in the middle of a trial: the trial's run is KILLED (and Optuna records the trial as FAIL).
    (tmp_path / "tiny.toml").write_text(TINY_SPEC.replace("budget = 60", "budget = 3000"))
    assert koopsweep("study", "create", "tiny.toml", cwd=tmp_path, tracking_uri=mlflow_server.url).returncode == 0
    process = subprocess.Popen(
        [*KOOPSWEEP, "study", "run", "tiny", "--n-trials", "1"], cwd=tmp_path, env=env_for(mlflow_server.url),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a CI shell may start us ignoring it
    )  # fmt: skip
    try:
        run_id = None
        while run_id is None and process.poll() is None:
            time.sleep(0.5)
            run_id = next((t.user_attrs.get("mlflow_run_id") for t in trials_so_far(tmp_path, "tiny")), None)
        assert run_id is not None, process.communicate()[0]
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=300)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in output, output
    [trial] = load(tmp_path, "tiny").get_trials()
    assert trial.state == optuna.trial.TrialState.FAIL
    assert client.get_run(run_id).info.status == "KILLED"


# ------------------------------------------------------------------------------- outages
WARNING = re.compile(r"Warning: MLflow tracking at \S+ failed while trying to")


def test_a_server_that_stops_mid_study_costs_no_result_and_warns_once(fresh_mlflow_server, tmp_path):
    (tmp_path / "tiny.toml").write_text(
        TINY_SPEC.replace("n_trials = 2", "n_trials = 3") + '\n[pruner]\nname = "none"\n'
    )
    created = koopsweep("study", "create", "tiny.toml", cwd=tmp_path, tracking_uri=fresh_mlflow_server.url)
    assert created.returncode == 0, created.stderr
    process = subprocess.Popen(
        [*KOOPSWEEP, "study", "run", "tiny"], cwd=tmp_path, env=env_for(fresh_mlflow_server.url),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # A trial is COMPLETE in Optuna only after its run was logged and ended: then the server goes.
        while process.poll() is None:
            if any(t.state == optuna.trial.TrialState.COMPLETE for t in trials_so_far(tmp_path, "tiny")):
                break
            time.sleep(0.5)
        assert process.poll() is None, "the study finished before the server could be stopped"
        fresh_mlflow_server.stop()
        stdout, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stdout + stderr
    assert "Traceback" not in stdout + stderr
    assert len(WARNING.findall(stderr)) == 1, stderr  # one warning, not one per call or per trial
    assert f"127.0.0.1:{fresh_mlflow_server.port} failed" in stderr and "Optuna keeps every result" in stderr
    trials = load(tmp_path).get_trials()
    assert len(trials) == 3
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.value is not None for t in trials)
    assert all("speedup_vs_adam" in t.user_attrs for t in trials)


def test_an_unreachable_server_at_start_is_one_line_and_no_trial(workdir):
    dead = f"http://koop:hunter2@127.0.0.1:{free_port()}"  # nothing listens there
    (workdir / "tiny.toml").write_text(TINY_SPEC)

    # A spec: nothing is created, neither the study nor its storage.
    ran = koopsweep("study", "run", "tiny.toml", cwd=workdir, tracking_uri=dead)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    [line] = ran.stderr.strip().splitlines()
    assert line.startswith("Error: MLflow tracking at http://koop:***@127.0.0.1:") and "unreachable" in line
    assert "hunter2" not in ran.stderr
    assert not (workdir / "koopsweep.db").exists()

    # An existing study (made with the local MLflow store), run with two workers against the dead server.
    assert koopsweep("study", "create", "tiny.toml", cwd=workdir, tracking_uri=None).returncode == 0
    ran = koopsweep("study", "run", "tiny", "--jobs", "2", cwd=workdir, tracking_uri=dead)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1 and "unreachable" in ran.stderr
    assert load(workdir).get_trials() == []


def test_log_run_splits_what_one_log_batch_call_cannot_take(mlflow_server):
    from koopsweep.tracking import Tracker

    tracker = Tracker(mlflow_server.url, "batches")
    run_id = tracker.start_child(tracker.start_study_run("batches", "{}", {}), "many", "trial", {})
    params = {f"p{i}": i for i in range(150)}  # MLflow takes at most 100 params ...
    curve = [(step, 1.0 / (step + 1), 1_700_000_000_000 + step) for step in range(2500)]  # ... and 1,000 metrics a call
    tracker.log_run(run_id, params=params, metrics={"final_loss": 0.5, "missing": None}, curves={"loss": curve})
    run = MlflowClient(tracking_uri=mlflow_server.url).get_run(run_id)
    assert run.data.params == {k: str(v) for k, v in params.items()}
    assert run.data.metrics == {"final_loss": 0.5, "loss": pytest.approx(1 / 2500)}
    history = MlflowClient(tracking_uri=mlflow_server.url).get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(2500))
