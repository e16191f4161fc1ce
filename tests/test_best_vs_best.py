"""benchmarks/best_vs_best.py on a tiny run: the target and the best baseline follow from the curves."""

import json
import math

import pytest

from koopsweep.errors import UsageError
from koopsweep.measure import SMOOTHING_CHECKPOINTS


def test_target_is_the_best_baselines_final_loss_and_speedup_uses_its_time(one_thread, load_benchmark):
    bvb = load_benchmark("best_vs_best")
    acc = [bvb.Accelerated("dmd-global", {"window": 4, "horizon": 10, "fallback": "adaptive"}, "adam")]
    report = bvb.measure("digits-mlp", acc, seeds=1, budget=40)
    seed = report["seeds"][0]
    runs = seed["runs"]
    assert set(runs) == {"adam", "adadelta", "sgd", "adagrad", acc[0].label}
    for name in bvb.BASELINES:
        curve = runs[name]["curve"]
        assert curve[-1][0] == 40  # every baseline trained the whole budget
        tail = [loss for _, _, loss in curve[-SMOOTHING_CHECKPOINTS:]]
        assert math.isclose(runs[name]["smoothed_final_loss"], sum(tail) / len(tail))
    finals = [runs[name]["smoothed_final_loss"] for name in bvb.BASELINES]
    assert seed["target_loss"] == min(finals)
    # The best baseline is the one that got there first; the others took at least as long or never did.
    best_time = seed["best_baseline_time_s"]
    assert runs[seed["best_baseline"]]["time_to_target_s"] == best_time
    for name in bvb.BASELINES:
        t = runs[name]["time_to_target_s"]
        assert t is None or t >= best_time
    koop = runs[acc[0].label]
    assert koop["steps"] >= 40 or koop["stopped"] == "time-cap"  # the budget, unless capped in time
    sp = seed["speedups"][acc[0].label]
    if koop["time_to_target_s"] is None:
        assert not sp["reached"] and math.isclose(sp["speedup_bound"], best_time / koop["time_s"])
    else:
        assert math.isclose(sp["speedup"], best_time / koop["time_to_target_s"])
    assert "| adadelta |" in bvb.tables(report)


def test_the_slow_weight_configurations_race_the_outer_loops(load_benchmark, tmp_path):
    bvb = load_benchmark("best_vs_best")
    [lookahead, snoo] = bvb.SLOW_WEIGHT_CONFIGS["teacher-student"]
    assert (lookahead.label, snoo.label) == (
        "dmd-global+verify on slow weights of lookahead-adam", "dmd-global+verify on slow weights of snoo-adam"
    )
    assert lookahead.config.snapshot == "slow" and lookahead.optimizer == "lookahead-adam"
    [average, raw, control] = bvb.AVERAGED_CONFIGS["hnn-oscillator"]
    assert (average.label, raw.label) == ("dmd-global+verify on average of ema-adam", "dmd-global+verify on ema-adam")
    assert control.label == "extrapolate-linear+verify on ema-adam"
    with pytest.raises(SystemExit) as exit_info:  # argparse's one-line error
        bvb.main(["--out", str(tmp_path), "--configs", "slow-weights", "--task", "mnist1d-cnn"])
    assert exit_info.value.code == 2


def test_the_scientific_set_reads_the_error_at_the_best_baselines_time(one_thread, load_benchmark):
    bvb = load_benchmark("best_vs_best")
    assert {a.label for a in bvb.SCIENTIFIC_CONFIGS["pinn-burgers"]} >= {
        "default on adam", "default on lbfgs", "default on adam-lbfgs", "extrapolate-linear+adaptive on adam"
    }
    # Where the L-BFGS family overfits it is neither raced nor jumped around.
    assert {a.optimizer for a in bvb.SCIENTIFIC_CONFIGS["pinn-allen-cahn"]} == {"adam"}
    assert bvb.default_baselines("scientific", "pinn-allen-cahn") == ["adam", "adamw", "muon"]
    assert bvb.default_baselines("scientific", "pinn-burgers") == bvb.SCIENTIFIC_BASELINES
    tiny = {"hidden": 8, "depth": 2, "n_interior": 64, "n_boundary": 16, "n_eval": 50}
    acc = [bvb.Accelerated("dmd-global", {}, "lbfgs")]
    report = bvb.measure("pinn-burgers", acc, seeds=1, budget=20, baselines=["adam", "lbfgs"], task_params=tiny,
                         checkpoint_metrics=True)  # fmt: skip
    seed = report["seeds"][0]
    for record in seed["runs"].values():
        curve = record["curve"]
        assert all(len(point) == 4 and point[3] >= 0 for point in curve)  # the error at every checkpoint
        before = [point for point in curve if point[1] <= seed["best_baseline_time_s"]]
        assert record["error_at_best_time"] == before[-1][3]
    assert bvb.error_at([[0, 0.0, 1.0, 0.5], [10, 1.0, 0.5, 0.2], [20, 2.0, 0.2, 0.1]], 1.5) == 0.2
    assert bvb.error_at([[0, 0.0, 1.0]], 1.5) is None
    assert "error at best's time" in bvb.tables(report)


def test_a_larger_seed_count_keeps_the_measured_seeds_and_runs_only_the_rest(one_thread, load_benchmark):
    bvb = load_benchmark("best_vs_best")
    acc = [bvb.Accelerated("extrapolate-linear", {"window": 4, "horizon": 10}, "adam")]
    saved = []
    first = bvb.measure("digits-mlp", acc, seeds=1, budget=20, baselines=["adam", "sgd"], on_seed=saved.append)
    assert [len(report["seeds"]) for report in saved] == [1] and first["settings"]["seeds"] == 1
    previous = json.loads(json.dumps(first))  # as read back from its JSON
    more = bvb.measure("digits-mlp", acc, seeds=2, budget=20, baselines=["adam", "sgd"], previous=previous)
    assert more["seeds"][0] == previous["seeds"][0]  # kept, not re-measured
    assert [s["seed"] for s in more["seeds"]] == [0, 1] and more["settings"]["seeds"] == 2
    assert more["settings"]["wall_time_s"] > previous["settings"]["wall_time_s"]
    with pytest.raises(UsageError, match="differs in budget"):
        bvb.measure("digits-mlp", acc, seeds=2, budget=30, baselines=["adam", "sgd"], previous=previous)
