"""`koopsweep study verify`: the best trials re-measured over fresh paired seeds, recorded on each trial
and in MLflow, and shown beside the sweep's own figure."""

import json

import optuna
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from koopsweep.cli import main
from koopsweep.reporting import VERIFIED_ATTR
from koopsweep.sweep import Objective, load_study
from koopsweep.sweep._verify import fresh_seeds, verify_trial


def cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def swept(workdir, tiny_spec):
    """A finished three-trial study of the tiny spec in ./koopsweep.db, tracked in ./mlflow.db."""
    tiny_spec.write_text(tiny_spec.read_text().replace("n_trials = 2", "n_trials = 3"))
    ran = cli("study", "run", str(tiny_spec))
    assert ran.exit_code == 0, ran.output
    return f"sqlite:///{workdir / 'koopsweep.db'}"


def trials_by_number(url):
    return {t.number: t for t in optuna.load_study(study_name="tiny", storage=url).get_trials()}


def test_fresh_seeds_follow_the_studys_own_and_are_the_same_for_every_trial():
    assert fresh_seeds([0], 5) == [1, 2, 3, 4, 5]
    assert fresh_seeds([3, 7, 1], 2) == [8, 9]
    assert not set(fresh_seeds([0, 1, 2], 4)) & {0, 1, 2}


def test_a_verified_seed_replays_the_trial_exactly(swept, workdir):
    """Verifying on the trial's own seed rebuilds its configuration from its parameters: the accelerated
    run's loss at every checkpoint is the one the sweep logged to MLflow (how long it runs past its
    baselines' budget depends on time; where each step lands does not)."""
    import torch

    study, spec = load_study("tiny", swept)
    best = max((t for t in study.get_trials() if t.values), key=lambda t: t.values[0])
    replay = verify_trial(Objective(spec, torch.device("cpu"), None, None), best, list(spec.seeds))
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    logged = {m.step: m.value for m in client.get_metric_history(best.user_attrs["mlflow_run_id"], "loss")}
    again = {p.step: p.loss for p in replay.koopman_runs[0].curve}
    common = sorted(set(logged) & set(again))
    assert len(common) >= 5 and common[0] == min(logged)
    assert [again[step] for step in common] == pytest.approx([logged[step] for step in common], rel=1e-12, abs=0)


def test_verify_records_on_the_trials_and_in_mlflow_and_prints_the_reranked_json(swept, workdir):
    before = trials_by_number(swept)
    complete = sorted((t for t in before.values() if t.values), key=lambda t: t.values[0], reverse=True)
    out = cli("study", "verify", "tiny", "--top", "2", "--seeds", "2", "--json")
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)

    # The public JSON: the two best trials by the sweep's figure, each over the same two fresh seeds.
    assert result["study"] == "tiny"
    assert {t["number"] for t in result["trials"]} == {t.number for t in complete[:2]}
    for row in result["trials"]:
        assert row["seeds"] == [1, 2]  # the study's own seed is 0
        assert set(row["speedup"]) == {"adam", "adadelta"} and all(v > 0 for v in row["speedup"].values())
        assert row["original_speedup"] == {b: before[row["number"]].user_attrs[f"speedup_vs_{b}"] for b in ("adam", "adadelta")}
    verified = [row["speedup"]["adam"] for row in result["trials"]]
    assert verified == sorted(verified, reverse=True)  # re-ranked by the verified figure

    # On each trial, as a user attribute a fresh reader sees; the third trial was not verified.
    after = trials_by_number(swept)
    for row in result["trials"]:
        attr = after[row["number"]].user_attrs[VERIFIED_ATTR]
        assert attr["seeds"] == [1, 2] and attr["speedup"] == row["speedup"] and attr["reached"] == row["reached"]
    assert [n for n, t in after.items() if VERIFIED_ATTR in t.user_attrs] == sorted(r["number"] for r in result["trials"])

    # In MLflow: one finished run per seed under each verified trial's run, with its per-seed figure.
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], "tags.`koopsweep.role` = 'verify'")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    for row in result["trials"]:
        mine = [r for r in runs if r.data.tags["mlflow.parentRunId"] == after[row["number"]].user_attrs["mlflow_run_id"]]
        assert sorted(int(r.data.params["seed"]) for r in mine) == [1, 2]
        per_seed = sorted(r.data.metrics["speedup_vs_adam"] for r in mine)
        assert per_seed[0] <= row["speedup"]["adam"] <= per_seed[1]  # the median of two

    # `study show` shows the verified figure beside the sweep's, as text and as JSON.
    shown = cli("study", "show", "tiny")
    assert shown.output.count("verified over 2 seeds:") == 2
    assert all(len(line) <= 80 for line in shown.output.splitlines())
    rows = json.loads(cli("study", "show", "tiny", "--json").stdout)["best_trials"]
    assert {r["number"]: r.get(VERIFIED_ATTR, {}).get("speedup") for r in rows if VERIFIED_ATTR in r} == {
        r["number"]: r["speedup"] for r in result["trials"]
    }


def test_verify_prints_a_table_that_fits_80_columns(swept):
    out = cli("study", "verify", "tiny", "--top", "1", "--seeds", "1")
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert any(line.split()[:2] == ["trial", "variant"] for line in lines)
    assert all(len(line) <= 80 for line in lines), lines


def test_verify_without_a_complete_trial_or_on_a_journal_is_one_line(workdir, tiny_spec):
    created = cli("study", "create", str(tiny_spec))
    assert created.exit_code == 0, created.output
    empty = cli("study", "verify", "tiny")
    assert empty.exit_code == 2 and "no complete trial to verify" in empty.output
    assert len(empty.output.strip().splitlines()) == 1
    journal = str(workdir / "study.log")
    assert cli("study", "run", str(tiny_spec), "--storage", journal).exit_code == 0
    on_journal = cli("study", "verify", "tiny", "--storage", journal, "--top", "1", "--seeds", "1")
    assert on_journal.exit_code == 2 and "needs an RDB storage" in on_journal.output, on_journal.output


def test_verify_records_on_a_postgres_study_too(workdir, tiny_spec, postgres_url):
    tiny_spec.write_text(tiny_spec.read_text().replace("n_trials = 2", "n_trials = 1"))
    assert cli("study", "run", str(tiny_spec), "--storage", postgres_url).exit_code == 0
    out = cli("study", "verify", "tiny", "--storage", postgres_url, "--top", "1", "--seeds", "1", "--json")
    assert out.exit_code == 0, out.output
    [row] = json.loads(out.stdout)["trials"]
    assert trials_by_number(postgres_url)[row["number"]].user_attrs[VERIFIED_ATTR]["speedup"] == row["speedup"]
