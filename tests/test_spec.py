"""Study specs: valid files parse; every kind of bad input gets a one-line error naming the field."""

import pytest

from koopsweep.errors import SpecError, UsageError
from koopsweep.spec import load_spec, parse_spec, spec_from_json

MINIMAL = 'name = "s"\ntask = "digits-mlp"\n'


def write(tmp_path, text, name="spec.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_minimal_spec_gets_defaults(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL))
    assert spec.name == "s" and spec.task == "digits-mlp"
    assert spec.baselines == ["adam", "adadelta"] and spec.primary_baseline == "adam"
    assert spec.search["window"].distribution().low == 8
    assert spec.search["fallback"].is_fixed and spec.search["fallback"].fixed == "worth-it"
    assert spec.directions == ["maximize"] and spec.pairing == "interleaved"


def test_search_forms(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL + """
[search]
window = 12
horizon = {low = 10, high = 400, log = true}
fallback = ["verify", "backtrack"]
burn_in = {low = 0, high = 100, step = 10}
snapshot = ["last", "mean"]
"""))
    assert spec.search["window"].distribution() is None and spec.search["window"].fixed == 12
    horizon = spec.search["horizon"].distribution()
    assert (horizon.low, horizon.high, horizon.log) == (10, 400, True)
    assert spec.search["fallback"].distribution().choices == ("verify", "backtrack")
    assert spec.search["burn_in"].distribution().step == 10
    assert spec.search["snapshot"].distribution().choices == ("last", "mean")


def test_number_knobs_are_off_unless_given_and_take_a_range(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL))
    assert spec.search["consistency"].is_fixed and spec.search["consistency"].fixed is None
    assert spec_from_json(spec.dumps(), "stored") == spec  # null in the stored JSON: still off
    spec = load_spec(write(tmp_path, MINIMAL + "[search]\nconsistency = {low = 0.1, high = 2.0, log = true}\nmax_overhead = 0.02\n"))
    consistency = spec.search["consistency"].distribution()
    assert (consistency.low, consistency.high, consistency.log) == (0.1, 2.0, True)
    assert spec.search["max_overhead"].fixed == 0.02


def test_round_trip_through_the_study_json(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL + 'objective = "speedup-and-gap"\npairing = "sequential"\n[pruner]\nname = "none"\n[search]\nhorizon = [10, 20]\n'))
    again = spec_from_json(spec.dumps(), "stored")
    assert again == spec
    assert again.directions == ["maximize", "minimize"] and again.pairing == "sequential"


BAD = [
    ("", "empty"),
    ("name = ", "not valid TOML"),
    ("name = 's'\ntask = 'x'\n[search\n", "not valid TOML"),
    ("task = 'digits-mlp'\n", "'name'"),
    ("name = 's'\n", "'task'"),
    (MINIMAL + "budgte = 3\n", "'budgte'"),
    (MINIMAL + "budget = 'many'\n", "'budget'"),
    (MINIMAL + "budget = 0\n", "'budget'"),
    (MINIMAL + "budget = true\n", "'budget'"),
    (MINIMAL + "n_trials = -1\n", "'n_trials'"),
    (MINIMAL + "seeds = []\n", "'seeds'"),
    (MINIMAL + "seeds = [-1]\n", "'seeds'"),
    (MINIMAL + "seeds = ['a']\n", "'seeds'"),
    (MINIMAL + "optimizer = 'bfgs'\n", "'optimizer'"),
    (MINIMAL + "baselines = []\n", "'baselines'"),
    (MINIMAL + "baselines = ['adam', 'rmsprops']\n", "'baselines'"),
    (MINIMAL + "baselines = ['adam', 'adam']\n", "'baselines'"),
    (MINIMAL + "lr = -0.1\n", "'lr'"),
    (MINIMAL + "device = 'tpu'\n", "'device'"),
    (MINIMAL + "variants = []\n", "'variants'"),
    (MINIMAL + "variants = 'dmd-global'\n", "'variants'"),
    (MINIMAL + "objective = 'fastest'\n", "'objective'"),
    (MINIMAL + "target = 'best'\n", "'target'"),
    (MINIMAL + "cap_factor = 0.5\n", "'cap_factor'"),
    (MINIMAL + "pairing = 'parallel'\n", "'pairing'"),
    (MINIMAL + "[sampler]\nname = 'grid'\n", "'sampler.name'"),
    (MINIMAL + "[sampler]\nseed = 'zero'\n", "'sampler.seed'"),
    (MINIMAL + "[sampler]\nsed = 1\n", "'sampler.sed'"),
    (MINIMAL + "[pruner]\nname = 'asha'\n", "'pruner.name'"),
    (MINIMAL + "objective = 'speedup-and-gap'\n", "'pruner.name'"),
    (MINIMAL + "[search]\nwindw = 3\n", "'search.windw'"),
    (MINIMAL + "[search]\nwindow = 1\n", "'search.window'"),
    (MINIMAL + "[search]\nwindow = 8.5\n", "'search.window'"),
    (MINIMAL + "[search]\nhorizon = {low = 100, high = 10}\n", "'search.horizon'"),
    (MINIMAL + "[search]\nhorizon = {low = 0, high = 10, log = true}\n", "'search.horizon'"),
    (MINIMAL + "[search]\nhorizon = {low = 1}\n", "'search.horizon'"),
    (MINIMAL + "[search]\nhorizon = {low = 1, high = 5, lg = true}\n", "'search.horizon.lg'"),
    (MINIMAL + "[search]\nhorizon = []\n", "'search.horizon'"),
    (MINIMAL + "[search]\nfallback = {low = 1, high = 2}\n", "'search.fallback'"),
    (MINIMAL + "[search]\nreset_state = 'sometimes'\n", "'search.reset_state'"),
    (MINIMAL + "[search]\nsnapshot = ['last', 'median']\n", "'search.snapshot'"),
    (MINIMAL + "[search]\nburn_in = -5\n", "'search.burn_in'"),
    (MINIMAL + "[search]\ncheck_batches = [0, -1]\n", "'search.check_batches'"),
    (MINIMAL + "[search]\nbackoff = 1.5\n", "'search.backoff'"),
    (MINIMAL + "[search]\nconsistency = 0\n", "'search.consistency'"),
    (MINIMAL + "[search]\nmax_overhead = {low = -1.0, high = 0.1}\n", "'search.max_overhead'"),
    (MINIMAL + "[search]\nconsistency = 'tight'\n", "'search.consistency'"),
    (MINIMAL + "name = 'a/b'\n", None),  # duplicate key: TOML error
    ('name = "a/b"\ntask = "digits-mlp"\n', "'name'"),
]


@pytest.mark.parametrize("text, names", BAD)
def test_bad_specs_get_one_line_errors_naming_the_field(tmp_path, text, names):
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    if names:
        assert names in message


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "bin.toml")


def test_parse_rejects_a_non_table():
    with pytest.raises(SpecError, match="empty"):
        parse_spec([], "x")


PINNED = MINIMAL + """variants = ["dmd-global"]
[search]
fallback = ["verify", "adaptive"]
[variant_params.dmd-global]
rank = -1
center = "increments"
[fallback_params.adaptive]
max_factor = 16.0
"""


def test_pinned_plugin_parameters_are_fixed_and_the_rest_searched(tmp_path):
    import optuna

    from koopsweep.spec import check_plugins
    from koopsweep.sweep import suggest_config

    spec = load_spec(write(tmp_path, PINNED))
    check_plugins(spec)
    assert spec_from_json(spec.dumps(), "stored") == spec
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_rules = set()
    for _ in range(12):
        trial = study.ask()
        config = suggest_config(trial, spec, ["dmd-global"])
        assert config.variant_params["rank"] == -1 and config.variant_params["center"] == "increments"
        assert "dmd-global.rank" not in trial.params and "dmd-global.max_eig" in trial.params
        if config.fallback == "adaptive":
            assert config.fallback_params["max_factor"] == 16.0 and "adaptive.max_factor" not in trial.params
            assert "adaptive.grow" in trial.params
        seen_rules.add(config.fallback)
        study.tell(trial, 1.0)
    assert seen_rules == {"verify", "adaptive"}


@pytest.mark.parametrize(
    "text, field",
    [
        (PINNED.replace("rank = -1", "rnk = -1"), "'variant_params.dmd-global.rnk'"),
        (PINNED.replace("rank = -1", "rank = 'many'"), "'variant_params.dmd-global'"),
        (PINNED.replace("[variant_params.dmd-global]", "[variant_params.dmd-node]"), "'variant_params.dmd-node'"),
        (PINNED.replace("[fallback_params.adaptive]", "[fallback_params.backtrack]"), "'fallback_params.backtrack'"),
        (PINNED.replace("[fallback_params.adaptive]", "[fallback_params.no-such-rule]"), "'fallback_params.no-such-rule'"),
        (PINNED.replace("max_factor = 16.0", "max_factor = [1, 2]"), "'fallback_params.adaptive.max_factor'"),
    ],
)
def test_bad_pinned_parameters_name_the_field(tmp_path, text, field):
    from koopsweep.spec import check_plugins

    with pytest.raises(SpecError, match=field):
        check_plugins(load_spec(write(tmp_path, text)))


def test_the_shared_knobs_are_defined_once():
    """KoopmanConfig, the accelerator's defaults, the spec's search table, bench --param and the reserved
    plugin parameter names all derive from koopsweep.knobs.KNOBS."""
    import dataclasses
    import inspect

    from koopsweep import KoopmanAccelerator, plugins
    from koopsweep.bench import SHARED_KEYS
    from koopsweep.knobs import ACCELERATOR_KNOBS, KNOBS
    from koopsweep.spec import SEARCH_DEFAULTS
    from koopsweep.training import KoopmanConfig

    fields = {f.name: f.default for f in dataclasses.fields(KoopmanConfig)}
    assert {name: fields[name] for name in KNOBS} == {name: knob.default for name, knob in KNOBS.items()}
    signature = inspect.signature(KoopmanAccelerator).parameters
    assert {name: signature[name].default for name in ACCELERATOR_KNOBS} == {n: KNOBS[n].default for n in ACCELERATOR_KNOBS}
    assert set(SEARCH_DEFAULTS) == set(KNOBS) == set(SHARED_KEYS) and set(KNOBS) <= plugins.RESERVED_PARAMETERS
    with pytest.raises(UsageError, match="stride=0 is invalid; expected an integer >= 1"):
        KoopmanConfig("dmd-global", stride=0)
