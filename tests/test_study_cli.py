"""The main job end to end: create, run and show a study through the CLI, with real SQLite storage
and real MLflow tracking; Optuna's own CLI must read what koopsweep wrote."""

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from koopsweep.cli import main

REPO = Path(__file__).resolve().parents[1]


def invoke(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False, env={"COLUMNS": "200"})
    return result


def test_create_run_show_and_track(tiny_spec, workdir):
    created = invoke("study", "create", str(tiny_spec))
    assert created.exit_code == 0, created.output
    assert created.stdout.strip().splitlines()[-1] == "tiny"

    again = invoke("study", "create", str(tiny_spec))
    assert again.exit_code == 2 and "already exists" in again.output

    ran = invoke("study", "run", "tiny")
    assert ran.exit_code == 0, ran.output
    assert (workdir / "koopsweep.db").exists() and (workdir / "mlflow.db").exists()

    shown = invoke("study", "show", "tiny", "--json")
    assert shown.exit_code == 0, shown.output
    summary = json.loads(shown.stdout)
    assert summary["trials_by_state"].get("COMPLETE", 0) >= 1
    best = summary["best_trials"][0]
    assert best["speedup_vs_adam"] is not None and best["speedup_vs_adam"] > 0
    assert best["variant"] in ("extrapolate-linear", "dmd-global")

    table = invoke("study", "show", "tiny")
    assert "vs adam" in table.stdout and "vs adadelta" in table.stdout
    # In an 80-column terminal: every line fits, each trial's parameters on the line under it, what a
    # "not reached" means in a footnote when one shows, and one conclusion per baseline at the end.
    narrow = CliRunner().invoke(main, ["study", "show", "tiny"], env={"COLUMNS": "80"}).stdout.splitlines()
    assert all(len(line) <= 80 for line in narrow), [line for line in narrow if len(line) > 80]
    rows = [i for i, line in enumerate(narrow) if line.split()[:1] in (["0"], ["1"])]
    assert len(rows) == 2 and all("window=" in narrow[i + 1] for i in rows)
    if "†" in "".join(narrow[i] for i in rows):
        assert any(line.startswith("† not reached") for line in narrow)
    assert "Against adam:" in table.stdout and "Against adadelta:" in table.stdout.replace("\n", " ")
    wide = CliRunner().invoke(main, ["study", "show", "tiny", "--wide"], env={"COLUMNS": "40"}).stdout
    assert "fallback=verify" in wide and "…" not in wide

    # Optuna's own CLI reads the study koopsweep wrote.
    out = subprocess.run(
        [str(Path(sys.executable).with_name("optuna")), "trials", "--storage", "sqlite:///koopsweep.db", "--study-name", "tiny", "-f", "json"],
        capture_output=True, text=True, cwd=workdir, check=True,
    )
    trials = json.loads(out.stdout)
    assert len(trials) == 2 and all(t["state"] in ("COMPLETE", "PRUNED", "FAIL") for t in trials)

    # MLflow: one parent run for the study, one child per trial and per baseline run.
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("koopsweep.role") == "study"]
    assert len(parents) == 1
    parent_id = parents[0].info.run_id
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    trial_runs = [r for r in children if r.data.tags["koopsweep.role"] == "trial"]
    baseline_runs = [r for r in children if r.data.tags["koopsweep.role"] == "baseline"]
    assert len(trial_runs) == 2
    complete = [r for r in trial_runs if r.info.status == "FINISHED"]
    assert complete and all("speedup_vs_adam" in r.data.metrics for r in complete)
    assert len(baseline_runs) == 2 * len(complete)  # adam and adadelta per finished trial, one seed
    curve = client.get_metric_history(complete[0].info.run_id, "loss")
    assert len(curve) >= 2 and curve[0].step == 0


def test_the_study_run_is_finished_when_the_study_is_done_and_running_while_trials_run(tiny_spec, workdir):
    import optuna

    from koopsweep import sweep

    def parent_status() -> str:
        client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("tiny")
        [parent] = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("koopsweep.role") == "study"]
        return parent.info.status

    assert invoke("study", "run", str(tiny_spec), "--n-trials", "1").exit_code == 0
    assert parent_status() == "RUNNING"  # one of the spec's two trials: not done
    study = optuna.load_study(study_name="tiny", storage="sqlite:///koopsweep.db")
    assert study.metric_names == ["speedup_vs_adam"]  # named for optuna-dashboard and Optuna's plots
    assert invoke("study", "run", "tiny").exit_code == 0
    assert parent_status() == "FINISHED"
    seen = []
    study, spec = sweep.load_study("tiny", "sqlite:///koopsweep.db")
    sweep.run_worker(study, spec, n_trials=1, callbacks=[lambda study, trial: seen.append(parent_status())])
    assert seen == ["RUNNING"] and parent_status() == "FINISHED"


def test_run_with_a_spec_creates_the_study_and_rerun_does_nothing(tiny_spec):
    first = invoke("study", "run", str(tiny_spec), "--n-trials", "1")
    assert first.exit_code == 0, first.output
    again = invoke("study", "run", str(tiny_spec), "--n-trials", "1")
    assert again.exit_code == 0, again.output
    listed = json.loads(invoke("study", "list", "--json").stdout)
    assert [(s["name"], s["n_trials"], s["task"]) for s in listed] == [("tiny", 2, "digits-mlp")]
    changed = tiny_spec.read_text().replace("budget = 60", "budget = 70")
    tiny_spec.write_text(changed)
    clash = invoke("study", "run", str(tiny_spec))
    assert clash.exit_code == 1 and "different spec" in clash.output


def test_unknown_study_and_bad_spec_are_one_line_errors(workdir):
    result = invoke("study", "show", "nope")
    assert result.exit_code == 2
    assert "does not exist" in result.output and "Traceback" not in result.output
    assert not (workdir / "koopsweep.db").exists()  # reading never creates a storage
    (workdir / "ok.toml").write_text('name = "ok"\ntask = "digits-mlp"\n')
    assert invoke("study", "create", "ok.toml").exit_code == 0
    result = invoke("study", "show", "nope")
    assert result.exit_code == 2 and "no study named 'nope'" in result.output and "ok" in result.output
    (workdir / "koopsweep.db").unlink()
    (workdir / "bad.toml").write_text('name = "b"\ntask = "no-such-task"\n')
    result = invoke("study", "create", "bad.toml")
    assert result.exit_code == 2 and "no-such-task" in result.output and "available" in result.output
    assert not (workdir / "koopsweep.db").exists()  # nothing written for a bad spec


def test_the_shipped_quickstart_spec_is_valid():
    from koopsweep.spec import check_plugins, load_spec

    spec = load_spec(REPO / "studies" / "quickstart.toml")
    check_plugins(spec)
    assert spec.name == "quickstart" and spec.task == "digits-mlp"


def test_two_worker_processes_share_one_sqlite_study(tiny_spec, workdir):
    import optuna

    tiny_spec.write_text(tiny_spec.read_text().replace("n_trials = 2", "n_trials = 4"))
    assert invoke("study", "create", str(tiny_spec)).exit_code == 0
    ran = invoke("study", "run", "tiny", "--jobs", "2")
    assert ran.exit_code == 0, ran.output
    study = optuna.load_study(study_name="tiny", storage="sqlite:///koopsweep.db")
    trials = study.get_trials(deepcopy=False)
    # Every requested trial finished, none failed; two workers may overshoot by at most one trial.
    assert 4 <= len(trials) <= 5
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    # Distinct sampler streams: the workers did not draw identical configurations.
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=200)
    parent = [r for r in runs if r.data.tags.get("koopsweep.role") == "study"]
    assert len(parent) == 1
    trial_runs = [r for r in runs if r.data.tags.get("koopsweep.role") == "trial"]
    assert len(trial_runs) == len(trials)
    assert {r.data.tags["mlflow.parentRunId"] for r in trial_runs} == {parent[0].info.run_id}


def test_pruned_trials_are_recorded_as_pruned(tiny_spec, workdir):
    import optuna

    # A threshold no trial can reach: every trial is pruned at its first intermediate report.
    tiny_spec.write_text(tiny_spec.read_text() + '\n[pruner]\nname = "threshold"\nargs = {lower = 1000.0}\n')
    ran = invoke("study", "run", str(tiny_spec), "--n-trials", "1")
    assert ran.exit_code == 0, ran.output
    [trial] = optuna.load_study(study_name="tiny", storage="sqlite:///koopsweep.db").get_trials()
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.intermediate_values
    run = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}").get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"


def test_two_objectives_give_a_pareto_front(tiny_spec, workdir):
    tiny_spec.write_text(tiny_spec.read_text().replace('name = "tiny"', 'name = "tiny"\nobjective = "speedup-and-gap"')
                         + '\n[pruner]\nname = "none"\n')  # fmt: skip
    ran = invoke("study", "run", str(tiny_spec), "--n-trials", "2")
    assert ran.exit_code == 0, ran.output
    summary = json.loads(invoke("study", "show", "tiny", "--json").stdout)
    assert summary["directions"] == ["maximize", "minimize"]
    assert summary["best_trials"] and all("loss_gap" in row for row in summary["best_trials"])
