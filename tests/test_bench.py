"""`koopsweep bench`: the report's shape, its arithmetic, and paired baselines that repeat exactly."""

import json

import pytest
import torch
from click.testing import CliRunner

from koopsweep.bench import BenchSettings, run_bench, split_params
from koopsweep.cli import main
from koopsweep.errors import UsageError
from koopsweep.tasks._digits import DigitsMLP
from koopsweep.training import train

RESULT_KEYS = {
    "optimizer", "seed", "baseline_time_s", "koopman_time_s", "speedup", "step_speedup", "target_loss",
    "baseline_final_loss", "koopman_final_loss", "acceptance_rate", "reached", "cpu_speedup",
}  # fmt: skip
SUMMARY_KEYS = {"median_speedup", "speedup_iqr", "reached_fraction", "median_step_speedup", "window_local_speedup",
                "median_cpu_speedup", "load_moved"}  # fmt: skip


def test_bench_cli_writes_the_json_report(tmp_path):
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main,
        ["bench", "digits-mlp", "--variant", "dmd-global", "--param", "window=6", "--param", "horizon=20",
         "--param", "worth-it.tol=0.01", "--optimizer", "adam", "--optimizer", "adadelta", "--seeds", "2",
         "--budget", "40", "--device", "cpu", "--json", str(out)],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["settings"]["koopman"]["window"] == 6 and report["settings"]["koopman"]["worth-it.tol"] == 0.01
    assert len(report["results"]) == 4
    assert report["settings"]["pairing"] == "interleaved"
    assert {r["first"] for r in report["results"]} == {"baseline"}  # the baseline's chunk runs first each round
    for record in report["results"]:
        assert RESULT_KEYS <= set(record)
        if record["reached"]:
            assert record["speedup"] == pytest.approx(record["baseline_time_s"] / record["koopman_time_s"])
            assert record["cpu_speedup"] > 0
        else:
            assert record["speedup"] is None and record["koopman_time_s"] is None and record["cpu_speedup"] is None
    assert set(report["summary"]) == {"adam", "adadelta"}
    for row in report["summary"].values():
        assert SUMMARY_KEYS <= set(row)
        assert 0.0 <= row["reached_fraction"] <= 1.0
    assert "IQR" in result.output and "adadelta" in result.output


def test_sequential_pairing_alternates_which_side_goes_first():
    settings = BenchSettings(task="digits-mlp", variant="extrapolate-linear", seeds=2, budget=20, device="cpu",
                             pairing="sequential")  # fmt: skip
    report = run_bench(settings)
    assert report["settings"]["pairing"] == "sequential"
    assert [r["first"] for r in report["results"]] == ["baseline", "koopman"]
    with pytest.raises(UsageError, match="pairing 'parallel' is not one of interleaved, sequential"):
        run_bench(BenchSettings(task="digits-mlp", seeds=1, budget=10, device="cpu", pairing="parallel"))


def test_baseline_curves_are_identical_for_the_same_seed_on_cpu():
    task = DigitsMLP()
    runs = [
        train(task, optimizer="adam", lr=1e-3, seed=3, device=torch.device("cpu"), max_steps=30, eval_every=5)
        for _ in range(2)
    ]
    assert [p.loss for p in runs[0].curve] == [p.loss for p in runs[1].curve]
    assert [p.step for p in runs[0].curve] == list(range(0, 31, 5))


def test_check_batches_judge_jumps_on_a_fixed_sample_of_the_training_stream():
    from koopsweep.training import KoopmanConfig, TrainingRun

    task = DigitsMLP(batch_size=32)
    config = KoopmanConfig(variant="dmd-global", window=4, horizon=8, fallback="verify", check_batches=3)
    runs = []
    for _ in range(2):
        run = TrainingRun(task, optimizer="adam", lr=3e-3, seed=1, device=torch.device("cpu"), koopman=config,
                          eval_every=10)  # fmt: skip
        run.advance(40)
        runs.append(run)
    run = runs[0]
    assert len(run.check_batches) == 3
    # drawn apart from the training stream (seeded differently), the same every run
    first_training_batch = next(task.batches(1, torch.device("cpu")))
    assert not torch.equal(run.check_batches[0][0], first_training_batch[0])
    assert all(torch.equal(a[0], b[0]) for a, b in zip(run.check_batches, runs[1].check_batches))
    stats = run.stepper.stats
    assert stats.jumps_tried == 9 and stats.evaluations == 2 * stats.jumps_tried  # before and at each jump
    assert [p.loss for p in run.curve] == [p.loss for p in runs[1].curve]
    assert split_params("dmd-global", {"check_batches": 3}).koopman.check_batches == 3
    assert split_params("dmd-global", {"backoff": 2}).koopman.accelerator_kwargs()["backoff"] == 2
    assert "check_batches" not in config.accelerator_kwargs() and config.flat_params()["check_batches"] == 3


def test_param_sorting_and_errors():
    split = split_params(
        "dmd-global", {"window": 8, "rank": 3, "task.hidden": 16, "worth-it.tol": 0.1, "lookahead-adam.k": 7},
        optimizers=["adam", "lookahead-adam"],
    )  # fmt: skip
    config = split.koopman
    assert config.window == 8 and config.variant_params == {"rank": 3}
    assert config.fallback_params == {"tol": 0.1} and split.task == {"hidden": 16}
    assert split.optimizers == {"adam": {}, "lookahead-adam": {"k": 7}}
    config = split_params("dmd-global", {"stride": 4, "snapshot": "mean"}).koopman
    assert config.accelerator_kwargs()["snapshot"] == "mean" and config.flat_params()["snapshot"] == "mean"
    with pytest.raises(UsageError, match="not a parameter of variant"):
        split_params("dmd-global", {"bogus": 1})
    with pytest.raises(UsageError, match="neither the fallback rule nor an optimizer here"):
        split_params("dmd-global", {"backtrack.tol": 0.1})
    with pytest.raises(UsageError, match="no optimizer named 'bfgs'.*available optimizers: adadelta"):
        run_bench(BenchSettings(task="digits-mlp", optimizers=["bfgs"], seeds=1))


def test_bad_param_syntax_is_a_usage_error():
    result = CliRunner().invoke(main, ["bench", "digits-mlp", "--param", "window"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output
