"""The measurement definitions: targets, time to target, speedups, and 'not reached'."""

import math

import pytest

from koopsweep.measure import compare, format_speedup, iqr, load_moved, median, quartiles, target_loss
from koopsweep.training import Checkpoint, KoopmanConfig, RunResult


def run(points, koopman=None, stats=None, optimizer="adam"):
    curve = [Checkpoint(step, time_s, loss, **extra) for step, time_s, loss, *rest in points for extra in [rest[0] if rest else {}]]
    return RunResult(optimizer, 1e-3, 0, "cpu", koopman, curve, "budget", stats=stats)


BASELINE = run([(0, 0.0, 1.0), (10, 1.0, 0.5), (20, 2.0, 0.3), (30, 3.0, 0.25), (40, 4.0, 0.25), (50, 5.0, 0.25)])
CONFIG = KoopmanConfig(variant="dmd-global", horizon=50)


def test_target_is_the_smoothed_final_loss():
    assert target_loss(BASELINE) == 0.25


def test_relative_target():
    assert target_loss(BASELINE, "relative") == pytest.approx(0.25 + 0.01 * 0.75)


def test_speedup_is_the_ratio_of_the_recorded_times():
    koop = run(
        [(0, 0.0, 1.0), (10, 0.5, 0.4), (20, 1.25, 0.15, {"jumps_tried": 2, "jumps_accepted": 1, "evaluations": 2, "fit_time_s": 0.05})],
        CONFIG,
        {"jumps_tried": 2, "jumps_accepted": 1, "fit_time_s": 0.04, "predict_time_s": 0.01},
    )
    c = compare(BASELINE, koop)
    # target 0.25: the baseline reaches it at 3.0 s, the accelerated run at 1.25 s
    assert c.reached and c.baseline_time_s == 3.0 and c.koopman_time_s == 1.25
    assert c.speedup == pytest.approx(3.0 / 1.25) == c.speedup_bound
    # steps: baseline 30; accelerated 20 steps + 2 verification losses + 0.05 s of fits at 0.1 s/step
    assert c.step_speedup == pytest.approx(30 / (20 + 2 + 0.05 / 0.1))
    assert c.acceptance_rate == 0.5
    # window-local: 50 steps at 0.1 s against 0.025 s per fit and jump
    assert c.window_local_speedup == pytest.approx(50 * 0.1 / 0.025)
    assert c.fit_over_step == pytest.approx(0.025 / 0.1)
    assert format_speedup(c) == "2.40x"


def test_a_run_that_never_reaches_the_target_is_reported_as_not_reached():
    koop = run([(0, 0.0, 1.0), (10, 2.0, 0.6), (20, 6.0, 0.4)], CONFIG, {"jumps_tried": 0})
    c = compare(BASELINE, koop)
    assert not c.reached
    assert c.speedup is None and c.koopman_time_s is None and c.step_speedup is None
    assert c.speedup_bound == pytest.approx(3.0 / 6.0)  # an upper bound, kept apart from speedup
    assert format_speedup(c).startswith("not reached")
    assert c.loss_gap == pytest.approx((0.4 - 0.25) / 0.25)


def test_median_and_iqr_ignore_missing_values():
    assert median([1.0, None, 3.0, math.nan]) == 2.0
    assert iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0)
    assert median([None]) is None
    assert quartiles([5.0, None, 1.0, 3.0, math.nan, 2.0, 4.0]) == pytest.approx((2.0, 4.0))
    assert quartiles([7.0, None]) == (7.0, 7.0) and quartiles([None]) is None and iqr([None]) is None


def test_a_target_met_at_the_first_checkpoint_by_both_runs_is_no_speedup():
    # A held-out loss that only rises from its start: the smoothed final loss is met at step 0 by both.
    rising = run([(0, 0.0, 1.0), (10, 1.0, 1.5), (20, 2.0, 2.0)])
    koop = run([(0, 0.0, 1.0), (10, 1.2, 1.8), (20, 2.4, 2.5)], CONFIG, {"jumps_tried": 0})
    c = compare(rising, koop)
    assert c.reached and c.baseline_time_s == 0.0 == c.koopman_time_s
    assert c.speedup == 1.0 == c.speedup_bound and c.step_speedup == 1.0
    # Reached at the start only by the accelerated run: then it really is infinitely sooner.
    late = compare(BASELINE, run([(0, 0.0, 0.2), (10, 1.0, 0.1)], CONFIG, {"jumps_tried": 0}))
    assert late.speedup == math.inf


def test_cpu_speedup_reads_the_process_cpu_time_to_target_and_only_on_cpu():
    base = run([(0, 0.0, 1.0, {"cpu_time_s": 0.0}), (10, 2.0, 0.5, {"cpu_time_s": 1.5}), (20, 4.0, 0.25, {"cpu_time_s": 3.0})])
    koop = run([(0, 0.0, 1.0), (10, 3.0, 0.2, {"cpu_time_s": 1.0})], CONFIG, {"jumps_tried": 1})
    c = compare(base, koop)
    # target 0.25 (the mean of the last three losses is 0.583: reached at step 10 at 1.5 cpu s)
    assert c.speedup == pytest.approx(2.0 / 3.0) and c.cpu_speedup == pytest.approx(1.5 / 1.0)
    base.device = "cuda:0"
    assert compare(base, koop).cpu_speedup is None


def test_load_moved_flags_wall_clock_figures_that_part_from_the_steps_beyond_the_seeds_spread():
    # The quickstart on a machine whose load changed: 6x in wall-clock, about 1x in steps.
    assert load_moved([6.0, 5.1, 7.2], [1.0, 0.98, 1.02])
    # Overheads of the run itself: wall-clock a little under the steps.
    assert not load_moved([0.9, 0.85, 0.95], [1.1, 1.05, 1.12])
    # A disagreement inside the seeds' own spread is no evidence.
    assert not load_moved([0.5, 4.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0])
    # Unreached seeds (None) are left out; nothing to compare is no flag.
    assert load_moved([3.0, None], [1.0, 1.0]) and not load_moved([None], [None])
