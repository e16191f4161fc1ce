"""`koopsweep study report` on real tiny studies (SQLite storage, the local SQLite MLflow store), and the
shipped study specs. The studies are run once per module; each test writes its own report folder."""

import json
import shutil
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY_SPEC

from koopsweep.cli import main

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OPTUNA_FIGURES = ("history.png", "importances.png")
TRACKED_FIGURES = ("loss_vs_time.png", "eigenvalues.png")


def invoke(*args, env=None):
    return CliRunner().invoke(main, list(args), catch_exceptions=False, env={"COLUMNS": "200", **(env or {})})


def _run_study(folder: Path, spec_text: str, mlflow_template: Path) -> str:
    """Run the study in ``folder`` (storage and MLflow store there); returns the storage URL."""
    shutil.copy(mlflow_template, folder / "mlflow.db")
    (folder / "spec.toml").write_text(spec_text)
    import torch

    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)  # MLflow's default artifact root is ./mlruns
        for var in ("MLFLOW_TRACKING_URI", "KOOPSWEEP_STORAGE", "MLFLOW_RUN_ID"):
            mp.delenv(var, raising=False)
        # One thread: a tiny MLP gains nothing from two, and two threads on cores that other jobs keep
        # busy wait on each other (digits-mlp measured 4x slower per step on a loaded 2-core machine).
        torch.set_num_threads(1)
        try:
            ran = invoke("study", "run", "spec.toml")
        finally:
            torch.set_num_threads(threads)
        assert ran.exit_code == 0, ran.output
    return f"sqlite:///{folder / 'koopsweep.db'}"


@pytest.fixture(scope="module")
def single(tmp_path_factory, empty_mlflow_db):
    """Three completed trials of the tiny single-objective study (enough for parameter importances)."""
    folder = tmp_path_factory.mktemp("report-single")
    # DMD only: every trial has fitted eigenvalues, whichever of them the machine's load makes the best.
    spec = TINY_SPEC.replace("n_trials = 2", "n_trials = 3").replace('["extrapolate-linear", "dmd-global"]', '["dmd-global"]')
    assert 'variants = ["dmd-global"]' in spec
    return folder, _run_study(folder, spec, empty_mlflow_db)


@pytest.fixture(scope="module")
def pareto(tmp_path_factory, empty_mlflow_db):
    """Two completed trials of a two-objective study (speedup and final-loss gap)."""
    folder = tmp_path_factory.mktemp("report-pareto")
    spec = TINY_SPEC.replace('name = "tiny"', 'name = "tiny"\nobjective = "speedup-and-gap"') + '\n[pruner]\nname = "none"\n'
    return folder, _run_study(folder, spec, empty_mlflow_db)


def _trials(storage: str):
    import optuna

    return optuna.load_study(study_name="tiny", storage=storage).get_trials()


def _report(storage: str, out: Path, env=None):
    result = invoke("study", "report", "tiny", "--storage", storage, "--out", str(out), "--json", env=env)
    assert result.exit_code == 0, result.output
    return result, json.loads(result.stdout)


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE


def test_report_of_a_real_study(single, tmp_path):
    folder, storage = single
    out = tmp_path / "report"
    result, listing = _report(storage, out)
    assert listing["skipped"] == [] and "warning" not in result.stderr, listing
    written = {Path(p).name for p in listing["written"]}
    assert written == {"index.html", *OPTUNA_FIGURES, *TRACKED_FIGURES}
    for name in (*OPTUNA_FIGURES, *TRACKED_FIGURES):
        assert _is_png(out / name), name
        assert (out / name).stat().st_size > 5_000  # a drawn figure, not an empty canvas
    assert not (out / "pareto_front.png").exists()  # one objective: no Pareto front

    trials = _trials(storage)
    best = max((t for t in trials if t.values), key=lambda t: t.values[0])
    assert listing["best_trial"] == best.number
    # Trials draw no figure (that is report time): the best trial's run holds its curves as metrics and
    # the last fit's eigenvalues as a tag, and no PNG.
    run_id = best.user_attrs["mlflow_run_id"]
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}").get_run(run_id)
    pairs = json.loads(run.data.tags["koopsweep.eigenvalues"])
    assert pairs and all(len(pair) == 2 for pair in pairs)
    assert not list(folder.glob(f"mlruns/*/{run_id}/artifacts/*.png"))

    page = (out / "index.html").read_text()
    for name in (*OPTUNA_FIGURES, *TRACKED_FIGURES):
        assert f'<img src="{name}"' in page
    assert "http://" not in page and "https://" not in page  # self-contained: nothing fetched from elsewhere
    for t in trials:  # every trial in the table of all trials, with its state
        assert f"<tr><td>{t.number}</td><td>{t.state.name.lower()}</td>" in page
    # The summary `study show` prints: the best trial first, its speedup over each baseline.
    assert "vs adam" in page and "vs adadelta" in page
    assert f"<td class=num>{best.number}</td><td class=name>{best.params['variant']}</td>" in page
    assert "missing" not in page.split("</style>")[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["closed port", "missing sqlite file"])
def test_tracking_unavailable_still_writes_the_optuna_figures(single, tmp_path, where):
    _, storage = single
    if where == "closed port":
        uri = f"http://127.0.0.1:{_free_port()}"
        reason = f"MLflow tracking at {uri} is unreachable"
    else:
        uri = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
        reason = "no MLflow store at"
    out = tmp_path / "report"
    out.mkdir()
    (out / "eigenvalues.png").write_bytes(PNG_SIGNATURE)  # left by an earlier report into the same folder
    result, listing = _report(storage, out, env={"MLFLOW_TRACKING_URI": uri})
    for name in OPTUNA_FIGURES:
        assert _is_png(out / name)
    for name in TRACKED_FIGURES:
        assert not (out / name).exists()  # none beside a page that says it is missing
    assert {s["figure"] for s in listing["skipped"]} == set(TRACKED_FIGURES)
    assert all(reason in s["reason"] for s in listing["skipped"])
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert "loss_vs_time.png and eigenvalues.png not written" in warning and reason in warning
    page = (out / "index.html").read_text()
    assert "loss_vs_time.png is missing" in page and "eigenvalues.png is missing" in page and reason in page
    assert not (tmp_path / "nowhere").exists()  # a report never creates a tracking store


def test_a_trial_run_without_its_eigenvalues_still_gets_its_loss_figure(single, tmp_path):
    from mlflow.tracking import MlflowClient

    folder, storage = single
    best = max((t for t in _trials(storage) if t.values), key=lambda t: t.values[0])
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    run_id = best.user_attrs["mlflow_run_id"]
    saved = client.get_run(run_id).data.tags["koopsweep.eigenvalues"]
    client.delete_tag(run_id, "koopsweep.eigenvalues")  # as if the trial had made no fit
    try:
        out = tmp_path / "report"
        _, listing = _report(storage, out)
    finally:
        client.set_tag(run_id, "koopsweep.eigenvalues", saved)
    assert _is_png(out / "loss_vs_time.png") and not (out / "eigenvalues.png").exists()
    [skipped] = listing["skipped"]
    assert skipped["figure"] == "eigenvalues.png" and "no koopsweep.eigenvalues tag" in skipped["reason"]


def test_a_two_objective_study_gets_a_pareto_front(pareto, tmp_path):
    _, storage = pareto
    out = tmp_path / "report"
    result, listing = _report(storage, out)
    assert _is_png(out / "pareto_front.png") and _is_png(out / "history.png")
    page = (out / "index.html").read_text()
    assert '<img src="pareto_front.png"' in page and "Pareto-optimal trials" in page and "loss gap" in page
    # Two trials are too few for importances: skipped with a note, in the page and on stderr.
    assert not (out / "importances.png").exists()
    [skipped] = listing["skipped"]
    assert skipped["figure"] == "importances.png" and "only 2 completed trial(s)" in skipped["reason"]
    assert "importances.png is missing" in page and "warning: importances.png not written" in result.stderr


def test_no_completed_trials_is_an_error_before_anything_is_written(tiny_spec, workdir):
    assert invoke("study", "create", str(tiny_spec)).exit_code == 0
    result = invoke("study", "report", "tiny", "--out", "report")
    assert result.exit_code == 1 and "no completed trials" in result.output and "Traceback" not in result.output
    assert not (workdir / "report").exists()


def test_unknown_study_is_a_usage_error(workdir, single):
    result = invoke("study", "report", "nope", "--out", "report")
    assert result.exit_code == 2 and "does not exist" in result.output
    result = invoke("study", "report", "nope", "--out", "report", "--storage", single[1])
    assert result.exit_code == 2 and "no study named 'nope'" in result.output and "tiny" in result.output
    assert not (workdir / "report").exists() and not (workdir / "koopsweep.db").exists()


SHIPPED = sorted((REPO / "studies").glob("*.toml"))


def test_the_expected_studies_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"quickstart", "hnn_oscillator", "mnist1d_mlp", "mnist_mlp"} <= names
    # the best measured configuration of every offline task, pinned (issue 9)
    assert {f"{task}-best" for task in ("hnn-oscillator", "teacher-student", "mnist1d-mlp", "digits-mlp")} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_study_is_valid(path):
    from koopsweep import plugins
    from koopsweep.spec import check_plugins, load_spec

    spec = load_spec(path)
    check_plugins(spec)
    assert spec.name == path.stem  # `study run studies/X.toml`, then `study show X`
    # The plugins resolve and accept the spec's parameters (building a task loads no data).
    task_cls = plugins.load_task(spec.task)
    task_cls(**spec.task_params)
    for variant in spec.variants or plugins.available("variants"):
        plugins.load_variant(variant)
    for rule in spec.search["fallback"].values():
        plugins.load_fallback(rule)
    for name in [*spec.baselines, spec.optimizer]:
        assert name in task_cls.baseline_lrs
    # Every spec says what it answers and how long it takes, in its header comment.
    header = path.read_text().split("\nname")[0]
    assert header.startswith("#") and ("minute" in header or "hour" in header)
