"""The plugin loader (`koopsweep.plugins`), `koopsweep plugins list`, and the built-ins' conformance.

Third-party plugins are faked without pip: `write_distribution` writes a ``NAME-VERSION.dist-info``
folder and the plugin's module into a temporary folder that is put on ``sys.path``, and
``importlib.metadata`` then finds its entry points like an installed distribution's.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from koopsweep import plugins
from koopsweep.cli import main
from koopsweep.errors import PluginLoadError, PluginNotFoundError, PluginValidationError, UsageError
from koopsweep.testing import check_task, check_variant, write_distribution

FAKE_PREFIX = "koopsweep-fake"

VARIANT = '''
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from koopsweep import Variant


class {name}({base}):
    """Predicts the last snapshot plus gain times the last step."""

    defaults = {defaults}

    @classmethod
    def search_space(cls):
        return {space}

    def fit(self, snapshots):
        self._last = [s[-1].clone() for s in snapshots]
        self._step = [s[-1] - s[-2] for s in snapshots]
{predict}{extra}
'''

PREDICT = '''
    def predict(self, horizon):
        return [x + self.params["gain"] * horizon * d for x, d in zip(self._last, self._step)]
'''

TASK = '''
import torch
from koopsweep import Task


class {name}(Task):
    defaults = {{}}
    default_budget = {budget}
    baseline_lrs = {lrs}

    def build_model(self, seed):
        return torch.nn.Linear(2, 1)

    def batches(self, seed, device):
        while True:
            yield torch.zeros(4, 2, device=device), torch.zeros(4, 1, device=device)

    def loss(self, model, batch):
        return ((model(batch[0]) - batch[1]) ** 2).mean()

    def eval_loss(self, model, device):
        return 0.0
'''

FALLBACK = '''
from koopsweep.fallbacks import Decision, FallbackRule


class {name}({base}):
    needs_closure = False

    def decide(self, jump):
        return Decision(jump.predict(jump.horizon), jump.horizon, "accepted")
'''


def variant_source(
    name: str = "Good",
    *,
    base: str = "Variant",
    defaults: str = '{"gain": 1.0}',
    space: str = '{"gain": FloatDistribution(0.5, 2.0)}',
    predict: str = PREDICT,
    extra: str = "",
) -> str:
    return VARIANT.format(name=name, base=base, defaults=defaults, space=space, predict=predict, extra=extra)


@pytest.fixture
def install(tmp_path, monkeypatch):
    """``install(dist, version, {group: {entry point: (module, source, attribute)}})``: a fake
    third-party distribution on sys.path. Its modules and cached classes are forgotten afterwards."""
    modules: set[str] = set()

    def _install(dist: str, version: str = "1.0", groups: dict | None = None) -> Path:
        root = tmp_path / f"{dist}-{version}"
        entry_points, files = {}, {}
        for group, points in (groups or {}).items():
            for ep_name, (module, source, attribute) in points.items():
                entry_points.setdefault(f"koopsweep.{group}", {})[ep_name] = f"{module}:{attribute}"
                files[f"{module}.py"] = textwrap.dedent(source)
                modules.add(module)
        write_distribution(root, dist, version, entry_points=entry_points, files=files)
        monkeypatch.syspath_prepend(str(root))
        return root

    yield _install
    for module in modules:
        sys.modules.pop(module, None)
    for key in [k for k in plugins._loaded if k[1].partition(":")[0] in modules]:
        del plugins._loaded[key]


@pytest.fixture
def only_fakes(monkeypatch):
    """Hide every entry point but the fake distributions', so a test does not depend on the state of
    the built-ins (and others installed here)."""

    def entry_points(**selection):
        found = metadata.entry_points(**selection)
        return [ep for ep in found if ep.dist is not None and ep.dist.metadata["Name"].startswith(FAKE_PREFIX)]

    monkeypatch.setattr(plugins, "metadata", types.SimpleNamespace(entry_points=entry_points))


def rows_by_key(rows) -> dict[tuple[str, str, str | None], plugins.PluginInfo]:
    return {(row.group, row.name, row.distribution): row for row in rows}


def builtin_names(kind: str) -> list[str]:
    """Names koopsweep itself declares in ``kind``, read from metadata only (no plugin code imported)."""
    group = plugins.GROUPS[kind].entry_point_group
    return sorted({ep.name for ep in metadata.entry_points(group=group) if plugins._is_own(ep)})


# ------------------------------------------------------------------------------- a good third party
def test_third_party_variant_is_listed_ok_with_its_search_space(install):
    install(f"{FAKE_PREFIX}-good", "1.2.3", {"variants": {"fake-good": ("fake_good", variant_source(), "Good")}})
    assert "fake-good" in plugins.available("variants")
    cls = plugins.load_variant("fake-good")
    assert cls.__name__ == "Good" and plugins.load("variants", "fake-good") is cls
    row = rows_by_key(plugins.describe(["variants"]))["variants", "fake-good", f"{FAKE_PREFIX}-good"]
    assert (row.version, row.status, row.error, row.target) == ("1.2.3", "ok", None, "fake_good:Good")
    assert list(row.search_space) == ["gain"] and "FloatDistribution" in row.search_space["gain"]
    table = CliRunner().invoke(main, ["plugins", "list", "--group", "variants"], env={"COLUMNS": "300"})
    assert table.exit_code == 0 and "fake-good" in table.output and "gain float 0.5..2" in table.output
    check_variant(cls)


def test_third_party_variant_in_a_study_is_accepted_and_searched(install, workdir):
    import optuna

    from koopsweep import sweep

    install(f"{FAKE_PREFIX}-good", "1.0", {"variants": {"fake-good": ("fake_good", variant_source(), "Good")}})
    spec = workdir / "plugin.toml"
    spec.write_text(f'name = "plugin-study"\ntask = "{builtin_names("tasks")[0]}"\nvariants = ["fake-good"]\n')
    storage = f"sqlite:///{workdir / 'studies.db'}"
    created = CliRunner().invoke(main, ["study", "create", str(spec), "--storage", storage])
    assert created.exit_code == 0, created.output
    study, stored = sweep.load_study("plugin-study", storage)
    # What a worker does first in each trial: the variant, then its own search space.
    trial = study.ask()
    sweep.suggest_config(trial, stored, sweep.variant_names(stored))
    assert trial.params["variant"] == "fake-good"
    assert 0.5 <= trial.params["fake-good.gain"] <= 2.0
    assert isinstance(trial.distributions["fake-good.gain"], optuna.distributions.FloatDistribution)


PLAIN_VARIANT = '''
import torch
from optuna.distributions import FloatDistribution
from koopsweep import Variant


class Plain(Variant):
    """Parameters the plain Python way, and no call to the base __init__."""

    def __init__(self, gain: float = 0.5, lookback: int = 1):
        if not gain > 0:
            raise ValueError(f"gain must be positive, got {gain!r}")
        self.gain = gain
        self.lookback = lookback

    @classmethod
    def search_space(cls):
        return {"gain": FloatDistribution(0.1, 2.0)}

    def fit(self, snapshots):
        self._last = [s[-1].clone() for s in snapshots]
        self._step = [s[-1] - s[-1 - self.lookback] for s in snapshots]

    def predict(self, horizon):
        return [x + self.gain * horizon * d for x, d in zip(self._last, self._step)]
'''


def test_a_plugin_with_its_parameters_in_init_is_ok_searched_and_logged(install, workdir):
    import optuna
    import torch

    from koopsweep import KoopmanAccelerator
    from koopsweep.errors import ParameterError

    install(f"{FAKE_PREFIX}-plain", "1.0", {"variants": {"fake-plain": ("fake_plain", PLAIN_VARIANT, "Plain")}})
    row = rows_by_key(plugins.describe(["variants"]))["variants", "fake-plain", f"{FAKE_PREFIX}-plain"]
    assert (row.status, row.error, list(row.search_space)) == ("ok", None, ["gain"])
    cls = plugins.load_variant("fake-plain")
    assert cls.parameters() == {"gain": 0.5, "lookback": 1}
    check_variant(cls)
    variant = plugins.instantiate(cls, {"gain": 0.7})
    assert variant.params == {"gain": 0.7, "lookback": 1} and repr(variant) == "Plain(gain=0.7, lookback=1)"
    with pytest.raises(ParameterError, match="unknown parameter.*bogus.*it accepts gain, lookback"):
        plugins.instantiate(cls, {"bogus": 1})
    with pytest.raises(ParameterError, match="gain must be positive"):
        KoopmanAccelerator(torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.1), "fake-plain", gain=-1.0)
    # In a study: its space searched, a pinned value checked against __init__'s arguments.
    spec = workdir / "plain.toml"
    spec.write_text(
        'name = "plain"\ntask = "digits-mlp"\nvariants = ["fake-plain"]\nbudget = 30\nn_trials = 1\n'
        '[search]\nwindow = 4\nhorizon = 8\n[variant_params.fake-plain]\nlookback = 2\n'
    )
    ran = CliRunner().invoke(main, ["study", "run", str(spec)])
    assert ran.exit_code == 0, ran.output
    (trial,) = optuna.load_study(study_name="plain", storage="sqlite:///koopsweep.db").trials
    assert trial.state.name == "COMPLETE" and 0.1 <= trial.params["fake-plain.gain"] <= 2.0
    assert trial.user_attrs["config"]["fake-plain.lookback"] == 2
    spec.write_text(spec.read_text().replace('name = "plain"', 'name = "plain2"').replace("lookback = 2", "lookbak = 2"))
    bad = CliRunner().invoke(main, ["study", "create", str(spec)])
    assert bad.exit_code == 2 and "'variant_params.fake-plain.lookbak'" in bad.output and "gain, lookback" in bad.output


def test_an_init_argument_without_a_default_makes_the_plugin_broken(install):
    source = PLAIN_VARIANT.replace("def __init__(self, gain: float = 0.5, lookback: int = 1)",
                                   "def __init__(self, gain: float, lookback: int = 1)")
    install(f"{FAKE_PREFIX}-nodefault", "1.0", {"variants": {"fake-nodefault": ("fake_nodefault", source, "Plain")}})
    row = rows_by_key(plugins.describe(["variants"]))["variants", "fake-nodefault", f"{FAKE_PREFIX}-nodefault"]
    assert row.status == "broken" and "takes gain without a default" in row.error


# ---------------------------------------------------------------------------------- broken plugins
def test_plugin_that_raises_on_import_is_broken_and_the_others_keep_working(install):
    before = {(r.group, r.name): r.status for r in plugins.describe() if r.distribution == "koopsweep"}
    install(
        f"{FAKE_PREFIX}-mixed",
        "0.9",
        {
            "variants": {
                "fake-broken": ("fake_broken", "raise ImportError('libfoo is not installed')\n", "Broken"),
                "fake-good": ("fake_good", variant_source(), "Good"),
            }
        },
    )
    rows = rows_by_key(plugins.describe())
    broken = rows["variants", "fake-broken", f"{FAKE_PREFIX}-mixed"]
    assert broken.status == "broken"
    assert "libfoo is not installed" in broken.error and f"{FAKE_PREFIX}-mixed 0.9" in broken.error
    assert rows["variants", "fake-good", f"{FAKE_PREFIX}-mixed"].status == "ok"
    assert {(r.group, r.name): r.status for r in rows.values() if r.distribution == "koopsweep"} == before

    with pytest.raises(PluginLoadError) as info:
        plugins.load_variant("fake-broken")
    assert isinstance(info.value.__cause__, ImportError)
    for fragment in ("koopsweep.variants:fake-broken", f"{FAKE_PREFIX}-mixed 0.9", "libfoo is not installed"):
        assert fragment in str(info.value)
    assert plugins.load_variant("fake-good").__name__ == "Good"


@pytest.mark.parametrize(
    "source, cause",
    [
        ("import sys\nsys.exit('needs a GPU')\n", SystemExit),
        ("THIS = 1\n", AttributeError),  # the entry point names a class the module does not have
        ("def broken(:\n", SyntaxError),
    ],
    ids=["sys-exit", "missing-attribute", "syntax-error"],
)
def test_other_import_failures_are_load_errors(install, source, cause):
    install(f"{FAKE_PREFIX}-odd", "1.0", {"variants": {"fake-odd": ("fake_odd", source, "Odd")}})
    with pytest.raises(PluginLoadError) as info:
        plugins.load_variant("fake-odd")
    assert isinstance(info.value.__cause__, cause)
    assert rows_by_key(plugins.describe(["variants"]))["variants", "fake-odd", f"{FAKE_PREFIX}-odd"].status == "broken"


INVALID = {
    "wrong-base": (variant_source(base="object"), "is not a subclass of koopsweep.Variant"),
    "not-a-distribution": (variant_source(space='{"gain": (0.5, 2.0)}'), "not an optuna.distributions distribution"),
    "not-a-dict": (variant_source(space="[FloatDistribution(0.5, 2.0)]"), "must return a dict of Optuna distributions"),
    "reserved-name": (
        variant_source(defaults='{"gain": 1.0, "lr": 0.1}', space='{"lr": FloatDistribution(1e-4, 0.1, log=True)}'),
        "reserved by koopsweep: lr",
    ),
    "space-key-not-a-parameter": (
        variant_source(space='{"gamma": FloatDistribution(0.0, 1.0)}'),
        "names 'gamma', which is not one of its parameters",
    ),
    "search-space-raises": (variant_source(space="1 / 0"), "search_space() raised ZeroDivisionError"),
    "abstract": (variant_source(predict=""), "leaves abstract methods unimplemented: predict"),
    "defaults-rejected": (
        variant_source(extra="\n    def validate_params(self):\n        raise ValueError('gain must be set')\n"),
        "with its default parameters raised ValueError: gain must be set",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_variant_fails_validation_naming_entry_point_distribution_and_version(install, case):
    source, problem = INVALID[case]
    install(f"{FAKE_PREFIX}-invalid", "2.3", {"variants": {f"bad-{case}": ("fake_invalid", source, "Good")}})
    with pytest.raises(PluginValidationError) as info:
        plugins.load_variant(f"bad-{case}")
    message = str(info.value)
    for fragment in (f"koopsweep.variants:bad-{case}", f"distribution {FAKE_PREFIX}-invalid 2.3", problem):
        assert fragment in message
    row = rows_by_key(plugins.describe(["variants"]))["variants", f"bad-{case}", f"{FAKE_PREFIX}-invalid"]
    assert (row.status, row.error) == ("broken", message)


@pytest.mark.parametrize(
    "budget, lrs, problem",
    [
        ("0", '{"adam": 1e-3}', "default_budget must be a positive int"),
        ("100", '{"adam": -1.0}', "baseline_lrs must map optimizer names to positive learning rates"),
    ],
)
def test_invalid_task_fails_validation(install, budget, lrs, problem):
    source = TASK.format(name="Tiny", budget=budget, lrs=lrs)
    install(f"{FAKE_PREFIX}-task", "1.0", {"tasks": {"fake-task": ("fake_task", source, "Tiny")}})
    with pytest.raises(PluginValidationError, match=problem):
        plugins.load_task("fake-task")


def test_fallback_rules_are_validated_against_their_base(install):
    good = FALLBACK.format(name="Accept", base="FallbackRule")
    bad = FALLBACK.format(name="Accept", base="object")
    install(
        f"{FAKE_PREFIX}-rules",
        "1.0",
        {
            "fallbacks": {
                "fake-accept": ("fake_rule_good", good, "Accept"),
                "fake-bad": ("fake_rule_bad", bad, "Accept"),
            }
        },
    )
    assert plugins.load_fallback("fake-accept").__name__ == "Accept"
    with pytest.raises(PluginValidationError, match="not a subclass of koopsweep.FallbackRule"):
        plugins.load_fallback("fake-bad")


def test_task_conformance_catches_unseeded_initial_weights(install):
    source = TASK.format(name="Tiny", budget="100", lrs='{"adam": 1e-3}')
    install(f"{FAKE_PREFIX}-task", "1.0", {"tasks": {"fake-task": ("fake_task", source, "Tiny")}})
    cls = plugins.load_task("fake-task")
    # Its initial weights ignore the seed (nn.Linear draws from the global RNG): the suite says so.
    with pytest.raises(AssertionError, match="initial weights"):
        check_task(cls)


# ----------------------------------------------------------------------------------- names and env
def test_unknown_name_lists_the_available_ones():
    with pytest.raises(PluginNotFoundError) as info:
        plugins.load_variant("no-such-variant")
    assert isinstance(info.value, LookupError) and isinstance(info.value, UsageError)
    message = str(info.value)
    assert "'no-such-variant'" in message
    for name in plugins.available("variants"):
        assert name in message
    with pytest.raises(PluginNotFoundError, match="the groups are variants, tasks, fallbacks, optimizers"):
        plugins.available("schedulers")


def test_disable_autoload_hides_third_party_plugins(install, monkeypatch):
    install(f"{FAKE_PREFIX}-good", "1.0", {"variants": {"fake-good": ("fake_good", variant_source(), "Good")}})
    assert "fake-good" in plugins.available("variants")
    for value in ("1", "true", "yes"):
        monkeypatch.setenv(plugins.AUTOLOAD_ENV, value)
        assert set(plugins.available("variants")) == set(builtin_names("variants"))
    with pytest.raises(PluginNotFoundError):
        plugins.load_variant("fake-good")
    rows = plugins.describe(["variants"])
    assert rows and {row.distribution for row in rows} == {"koopsweep"}
    for value in ("0", "", "false"):
        monkeypatch.setenv(plugins.AUTOLOAD_ENV, value)
        assert "fake-good" in plugins.available("variants")


def test_third_party_cannot_take_a_builtin_name(install):
    name = builtin_names("variants")[0]
    before = rows_by_key(plugins.describe(["variants"]))["variants", name, "koopsweep"].status
    install(f"{FAKE_PREFIX}-squatter", "1.0", {"variants": {name: ("fake_squatter", variant_source(), "Good")}})
    rows = rows_by_key(plugins.describe(["variants"]))
    squatter = rows["variants", name, f"{FAKE_PREFIX}-squatter"]
    assert squatter.status == "broken" and "belongs to koopsweep's built-in" in squatter.error
    assert rows["variants", name, "koopsweep"].status == before
    if before == "ok":
        assert plugins.load_variant(name).__module__.startswith("koopsweep.")


def test_two_third_parties_claiming_one_name_fail_clearly(install):
    install(f"{FAKE_PREFIX}-one", "1.0", {"variants": {"fake-shared": ("fake_one", variant_source(), "Good")}})
    install(f"{FAKE_PREFIX}-two", "2.0", {"variants": {"fake-shared": ("fake_two", variant_source(), "Good")}})
    with pytest.raises(PluginValidationError) as info:
        plugins.load_variant("fake-shared")
    message = str(info.value)
    assert "claimed by several plugins" in message
    assert f"{FAKE_PREFIX}-one 1.0" in message and f"{FAKE_PREFIX}-two 2.0" in message
    rows = [r for r in plugins.describe(["variants"]) if r.name == "fake-shared"]
    assert sorted((r.distribution, r.status) for r in rows) == [
        (f"{FAKE_PREFIX}-one", "broken"),
        (f"{FAKE_PREFIX}-two", "broken"),
    ]


# ---------------------------------------------------------------------------------- plugins list
def test_strict_exits_nonzero_only_with_a_broken_plugin(install, only_fakes):
    install(f"{FAKE_PREFIX}-good", "1.0", {"variants": {"fake-good": ("fake_good", variant_source(), "Good")}})
    runner = CliRunner()
    assert runner.invoke(main, ["plugins", "list", "--strict"]).exit_code == 0
    noisy = "raise RuntimeError('boom ' * 80)\n"
    install(f"{FAKE_PREFIX}-bad", "1.0", {"variants": {"fake-bad": ("fake_bad", noisy, "X")}})
    assert runner.invoke(main, ["plugins", "list"]).exit_code == 0
    strict = runner.invoke(main, ["plugins", "list", "--strict"])
    assert strict.exit_code == 1
    # The table shows a shortened error; --json has it whole.
    assert "broken" in strict.stdout and "boom" in strict.stdout and "--json" in strict.stderr
    assert "boom " * 60 not in strict.stdout.replace("\n", "").replace("│", "")
    rows = json.loads(runner.invoke(main, ["plugins", "list", "--json"]).stdout)
    assert ("boom " * 80).strip() in next(r["error"] for r in rows if r["name"] == "fake-bad")
    assert runner.invoke(main, ["plugins", "list", "--json", "--strict"]).exit_code == 1


def test_table_prints_errors_verbatim(install, only_fakes):
    # An error that looks like rich markup ("[bold]", "list[str]") is shown as it is.
    markup = "raise ValueError('[bold]list[str][/]')\n"
    install(f"{FAKE_PREFIX}-bad", "1.0", {"variants": {"fake-bad": ("fake_bad", markup, "X")}})
    result = CliRunner().invoke(main, ["plugins", "list"], env={"COLUMNS": "300"})
    assert "[bold]list[str][/]" in result.stdout


def test_json_rows_have_the_documented_keys():
    result = CliRunner().invoke(main, ["plugins", "list", "--json"])
    rows = json.loads(result.stdout)
    assert rows
    for row in rows:
        assert {"group", "name", "distribution", "version", "status", "error", "search_space"} <= set(row)
        assert row["group"] in ("variants", "tasks", "fallbacks", "optimizers") and row["status"] in ("ok", "broken")
        assert (row["error"] is None) == (row["status"] == "ok")
    for kind in plugins.GROUPS:
        assert set(builtin_names(kind)) <= {r["name"] for r in rows if r["group"] == kind}


def _console_script() -> str:
    beside = Path(sys.executable).with_name("koopsweep")
    found = str(beside) if beside.exists() else shutil.which("koopsweep")
    assert found, "the koopsweep console script is not installed (pip install -e .)"
    return found


#: Put on PYTHONPATH, Python imports it at startup: it writes the names of all imported modules to a
#: file when the process exits, so a test can see what a real command imported.
MODULE_RECORDER = """
import atexit, os, sys

def _record():
    with open(os.environ["KOOPSWEEP_TEST_MODULES_FILE"], "w") as out:
        out.write("\\n".join(sorted(sys.modules)))

atexit.register(_record)
"""


def test_real_command_lists_a_third_party_plugin_and_imports_only_its_group(tmp_path):
    # One real process: the console script, a distribution found on PYTHONPATH, and a record of every
    # module the command imported.
    root = tmp_path / "site"
    write_distribution(
        root,
        f"{FAKE_PREFIX}-cli",
        "3.1",
        entry_points={"koopsweep.fallbacks": {"fake-accept": "fake_cli:Accept"}},
        files={"fake_cli.py": FALLBACK.format(name="Accept", base="FallbackRule"), "sitecustomize.py": MODULE_RECORDER},
    )
    record = tmp_path / "modules.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    env.pop(plugins.AUTOLOAD_ENV, None)
    env["KOOPSWEEP_TEST_MODULES_FILE"] = str(record)
    done = subprocess.run(
        [_console_script(), "plugins", "list", "--json", "--group", "fallbacks"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert {row["group"] for row in rows.values()} == {"fallbacks"}
    fake = rows["fake-accept"]
    assert (fake["distribution"], fake["version"]) == (f"{FAKE_PREFIX}-cli", "3.1")
    assert (fake["status"], fake["error"]) == ("ok", None)
    assert set(builtin_names("fallbacks")) <= set(rows)
    imported = set(record.read_text().split())
    heavy = ("koopsweep.variants._", "koopsweep.tasks.", "koopsweep.koopman", "koopsweep.accelerator", "pydmd",
             "koopsweep_pydmd", "sklearn", "mlflow", "mnist1d")  # fmt: skip
    needless = sorted(m for m in imported if m.startswith(heavy) and not m.endswith("._base"))
    assert "fake_cli" in imported and not needless, f"listing fallbacks imported {needless}"


def test_import_koopsweep_and_listing_names_do_not_import_torch():
    script = (
        "import sys, koopsweep\n"
        "assert 'torch' not in sys.modules, 'import koopsweep imported torch'\n"
        "from koopsweep import plugins\n"
        "from koopsweep.cli import main\n"
        "assert all(plugins.available(kind) for kind in plugins.GROUPS)\n"
        "assert 'torch' not in sys.modules, 'plugins.available() or importing the CLI imported torch'\n"
        "assert all(row.status == 'ok' for row in plugins.describe(['fallbacks']))\n"
        "assert 'torch' not in sys.modules, 'listing the fallback rules imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]


# ------------------------------------------------------------------ the built-ins: load and conform
@pytest.mark.parametrize(
    "kind, name", [(kind, name) for kind in plugins.GROUPS for name in builtin_names(kind)], ids="{0[0]}:{0[1]}".format
)
def test_builtin_loads(kind, name):
    cls = plugins.load(kind, name)
    assert cls.__module__.startswith("koopsweep.")


#: Parameters for the exactness check where a built-in's defaults trade exactness for speed on purpose
#: (a float32 Gram matrix).
EXACT_PARAMS = {"dmd-global": {"dtype": "float64"}, "dmd-hankel": {"dtype": "float64"}}


@pytest.mark.parametrize("name", builtin_names("variants"))
def test_builtin_variant_conforms(name):
    check_variant(plugins.load_variant(name), exact_params=EXACT_PARAMS.get(name))


#: Small data sets: the checks need a few batches, not a training run.
TASK_PARAMS = {
    "charlm-transformer": {"d_model": 16, "n_layers": 1, "n_heads": 2, "context": 16, "eval_windows": 8},
    "mnist1d-cnn": {"channels": 8, "num_samples": 200},
    "pinn-burgers": {"hidden": 8, "depth": 2, "n_interior": 100, "n_boundary": 20, "n_eval": 50},
    "pinn-allen-cahn": {"hidden": 8, "depth": 2, "n_interior": 64, "n_initial": 16, "n_eval": 50},
    "neural-ode": {"hidden": 8, "depth": 1, "n_train": 4, "n_eval": 3, "n_times": 10, "t_end": 1.8, "segment": 4},
    "pinn-helmholtz": {"hidden": 8, "depth": 2, "n_interior": 64, "n_boundary": 16, "n_eval": 50},
    "mnist1d-mlp": {"num_samples": 200},
    "teacher-student": {"n_train": 256, "n_eval": 128},
    "hnn-oscillator": {"n_points": 50, "n_eval": 100},
}


@pytest.mark.parametrize("name", builtin_names("tasks"))
def test_builtin_task_conforms(name, tmp_path):
    cls = plugins.load_task(name)
    params = TASK_PARAMS.get(name, {})
    if name == "mnist-mlp":  # no MNIST here: conformance runs on small IDX files written for the test
        from test_tasks import write_tiny_mnist

        params = {"data_dir": str(write_tiny_mnist(tmp_path / "mnist"))}
    check_task(cls, **params)
