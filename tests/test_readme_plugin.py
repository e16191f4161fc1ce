"""The README's "Write a plugin" example, installed as a fake distribution and run, so it cannot rot.

Every fenced block preceded by ``<!-- file: PATH -->`` between the README's plugin-example markers is
one file of the example plugin. The ``pyproject.toml`` block supplies the distribution's name, version
and entry points; the modules are written beside it.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from koopsweep import plugins
from koopsweep.cli import main
from koopsweep.testing import check_optimizer, check_task, check_variant, write_distribution

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- plugin-example:start -->", "<!-- plugin-example:end -->"
FILE_BLOCK = re.compile(r"<!-- file: (?P<path>\S+) -->\s*\n```[\w-]*\n(?P<code>.*?)^```", re.DOTALL | re.MULTILINE)


def readme_files() -> dict[str, str]:
    text = README.read_text()
    assert text.count(START) == 1 and text.count(END) == 1, "README.md must hold the plugin-example markers once"
    section = text[text.index(START) : text.index(END)]
    return {m["path"]: m["code"] for m in FILE_BLOCK.finditer(section)}


@pytest.fixture
def example(tmp_path, monkeypatch):
    """The README's plugin, 'installed' from its own pyproject.toml; forgotten again afterwards."""
    files = readme_files()
    project = tomllib.loads(files.pop("pyproject.toml"))["project"]
    entry_points = project["entry-points"]
    write_distribution(tmp_path, project["name"], project["version"], entry_points=entry_points, files=files)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield project, tmp_path
    for name in [n for n, m in sys.modules.items() if str(getattr(m, "__file__", "") or "").startswith(str(tmp_path))]:
        del sys.modules[name]
    for key in [k for k in plugins._loaded if k[1].split(":")[0] in {"scaled_step", "line_fit", "heavy_ball"}]:
        del plugins._loaded[key]


def test_readme_shows_every_file_of_the_example():
    files = readme_files()
    assert set(files) == {"pyproject.toml", "scaled_step.py", "line_fit.py", "heavy_ball.py", "tests/test_conformance.py"}
    project = tomllib.loads(files["pyproject.toml"])
    modules = {path.removesuffix(".py") for path in files if path.endswith(".py") and "/" not in path}
    # The pyproject's modules are the ones shown, and its entry points point into them.
    assert set(project["tool"]["setuptools"]["py-modules"]) == modules
    targets = [t for group in project["project"]["entry-points"].values() for t in group.values()]
    assert {t.split(":")[0] for t in targets} == modules


def test_example_loads_and_passes_the_conformance_suite(example):
    project, _ = example
    variant_cls = plugins.load_variant("scaled-step")
    task_cls = plugins.load_task("line-fit")
    assert (variant_cls.__name__, task_cls.__name__) == ("ScaledStep", "LineFit")
    check_variant(variant_cls)
    check_task(task_cls, n_points=128)
    check_optimizer(plugins.load_optimizer("heavy-ball"))


def test_example_tests_pass(example):
    # Runs the README's tests/test_conformance.py the way pytest would: every test_* of every Test* class.
    _, root = example
    spec = importlib.util.spec_from_file_location("readme_example_tests", root / "tests" / "test_conformance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ran = skipped = 0
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if not cls.__name__.startswith("Test"):
            continue
        for name, method in inspect.getmembers(cls(), inspect.ismethod):
            if name.startswith("test"):
                try:
                    method()
                    ran += 1
                except pytest.skip.Exception:
                    skipped += 1
    assert ran >= 16 and skipped == 1  # ScaledStep does not claim exactness: that one test skips


def test_example_shows_up_in_plugins_list(example):
    project, _ = example
    result = CliRunner().invoke(main, ["plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {(row["group"], row["name"]): row for row in json.loads(result.output)}
    for key in (("variants", "scaled-step"), ("tasks", "line-fit"), ("optimizers", "heavy-ball")):
        row = rows[key]
        assert (row["distribution"], row["version"], row["status"], row["error"]) == (
            project["name"], project["version"], "ok", None
        )
    assert set(rows["variants", "scaled-step"]["search_space"]) == {"scale"}
    assert set(rows["optimizers", "heavy-ball"]["search_space"]) == {"momentum"}


def test_example_optimizer_is_benchmarked_and_searched_like_a_built_in(example, workdir):
    """The third-party optimizer as baseline and inner optimizer in `bench`, and in a study, whose trials
    search its momentum for the inner optimizer while its baseline runs at the default."""
    from koopsweep.bench import BenchSettings, run_bench

    report = run_bench(BenchSettings(task="line-fit", variant="scaled-step", optimizers=["heavy-ball"], seeds=1,
                                     budget=40, params={"window": 4, "horizon": 8, "heavy-ball.momentum": 0.8}))
    rates = report["settings"]["learning_rates"]["heavy-ball"]
    assert rates == {"lr": 0.01, "tuned": False, "params": {"momentum": 0.8}}  # the plugin's default_lr
    assert report["summary"]["heavy-ball"]["median_speedup"] is not None
    spec = workdir / "heavy.toml"
    spec.write_text(
        'name = "heavy"\ntask = "line-fit"\noptimizer = "heavy-ball"\nbaselines = ["heavy-ball", "adam"]\n'
        'budget = 40\nn_trials = 2\nvariants = ["scaled-step"]\ndevice = "cpu"\n'
        '[search]\nwindow = 4\nhorizon = 8\n[sampler]\nname = "random"\nseed = 0\n'
    )
    result = CliRunner().invoke(main, ["study", "run", str(spec)])
    assert result.exit_code == 0, result.output
    import optuna

    trials = optuna.load_study(study_name="heavy", storage="sqlite:///koopsweep.db").trials
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials)
    momenta = [t.params["heavy-ball.momentum"] for t in trials]
    assert all(0.5 <= m <= 0.99 for m in momenta) and momenta[0] != momenta[1]
    assert all(t.user_attrs["untuned_lrs"] == ["heavy-ball"] for t in trials)
    shown = CliRunner().invoke(main, ["study", "show", "heavy"], env={"COLUMNS": "120"})
    assert shown.exit_code == 0, shown.output
    assert "vs heavy-ball*" in shown.output and "no tuned rate for heavy-ball" in shown.output
