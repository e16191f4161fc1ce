"""Turning two recorded runs into the figures koopsweep reports.

Definitions (the README's "How speedups are measured" section says the same in prose):

- target loss: the baseline's smoothed final evaluation loss (mean of its last few checkpoints), or
  with ``target="relative"`` L_min + 1% of (L_0 - L_min) on the baseline's curve;
- time to target: training wall-clock (evaluation checkpoints excluded on both sides) until the
  evaluation loss first reaches the target;
- speedup: baseline time to target / accelerated time to target. A run that never reaches the target
  has no speedup: it is "not reached", with an upper bound (baseline time / the time it ran) kept
  separately so a search can still rank it below every run that did reach it;
- step speedup: the same ratio in gradient-step units, the accelerator's verification losses and fit
  time converted to steps by the measured cost of one step (machine-independent);
- CPU speedup (CPU runs only): the same ratio in the process's CPU seconds, which other processes
  taking the cores barely move;
- load moved: a figure whose wall-clock and step speedups disagree by more than the seeds' spread (and
  by at least `LOAD_TOLERANCE`), the sign that the machine's load changed between the two sides;
- window-local speedup: the paper's figure, time of the steps a jump replaces (the accepted jumps' mean
  effective horizon) against the time of the fit and jump that replace them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

from koopsweep.training import Checkpoint, RunResult

SMOOTHING_CHECKPOINTS = 3
#: How far (a factor) wall-clock and step speedups may part for reasons of the run itself, such as
#: per-step bookkeeping the step count does not see, before `load_moved` puts it down to the machine.
LOAD_TOLERANCE = 1.5


def target_loss(baseline: RunResult, rule: str = "final") -> float:
    losses = [point.loss for point in baseline.curve]
    if rule == "final":
        tail = losses[-SMOOTHING_CHECKPOINTS:]
        return sum(tail) / len(tail)
    if rule == "relative":
        low = min(losses)
        return low + 0.01 * (losses[0] - low)
    raise ValueError(f"unknown target rule {rule!r}; use 'final' or 'relative'")


def first_reaching(curve: list[Checkpoint], target: float) -> Checkpoint | None:
    return next((point for point in curve if point.loss <= target), None)


@dataclass
class Comparison:
    """One accelerated run against one baseline on the same seed and device."""

    baseline: str
    seed: int
    target_loss: float
    baseline_time_s: float
    koopman_time_s: float | None  # None: not reached
    reached: bool
    speedup: float | None  # None when not reached
    speedup_bound: float  # equals speedup when reached; an upper bound when not
    step_speedup: float | None
    cpu_speedup: float | None  # None when not reached, and on CUDA (the host's CPU time says little there)
    baseline_final_loss: float
    koopman_final_loss: float
    loss_gap: float  # relative: (koopman final - baseline final) / |baseline final|
    acceptance_rate: float
    window_local_speedup: float | None
    fit_over_step: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def compare(baseline: RunResult, koopman: RunResult, *, target: str = "final") -> Comparison:
    goal = target_loss(baseline, target)
    base_hit = first_reaching(baseline.curve, goal)
    # The smoothed final loss is reached at the latest by the last checkpoint, but a "relative" or
    # noisy target may not be: then the baseline time is its whole run.
    base_time = base_hit.time_s if base_hit else baseline.time_s
    base_steps = base_hit.step if base_hit else baseline.steps
    hit = first_reaching(koopman.curve, goal)
    step_cost = baseline.seconds_per_step
    stats = koopman.stats or {}
    tried = stats.get("jumps_tried", 0)
    accepted = stats.get("jumps_accepted", 0)
    # The horizon the accepted jumps really covered (the adaptive rule moves it; a stride rounds it),
    # else the configured one.
    horizon = stats.get("effective_horizon") or (koopman.koopman.horizon if koopman.koopman else 0)
    fit_s = stats.get("fit_time_s", 0.0) + stats.get("predict_time_s", 0.0)
    window_local = fit_over_step = None
    if tried and fit_s > 0 and step_cost > 0:
        per_jump = fit_s / tried
        window_local = horizon * step_cost / per_jump
        fit_over_step = per_jump / step_cost
    cpu_speedup = None
    if hit is not None:
        koop_time = hit.time_s
        speedup = _ratio(base_time, koop_time)
        if baseline.device.startswith("cpu"):
            cpu_speedup = _ratio(base_hit.cpu_time_s if base_hit else baseline.curve[-1].cpu_time_s, hit.cpu_time_s)
        # Verification losses cost about one step each (they include backward); fits by their time.
        koop_steps = hit.step + hit.evaluations + (hit.fit_time_s / step_cost if step_cost > 0 else 0.0)
        step_speedup = _ratio(base_steps, koop_steps)
    else:
        koop_time = None
        speedup = step_speedup = None
    bound = speedup if speedup is not None else (base_time / koopman.time_s if koopman.time_s > 0 else 0.0)
    base_final = baseline.final_loss
    return Comparison(
        baseline=baseline.optimizer,
        seed=baseline.seed,
        target_loss=goal,
        baseline_time_s=base_time,
        koopman_time_s=koop_time,
        reached=hit is not None,
        speedup=speedup,
        speedup_bound=bound,
        step_speedup=step_speedup,
        cpu_speedup=cpu_speedup,
        baseline_final_loss=base_final,
        koopman_final_loss=koopman.final_loss,
        loss_gap=(koopman.final_loss - base_final) / abs(base_final) if base_final else math.nan,
        acceptance_rate=accepted / tried if tried else 0.0,
        window_local_speedup=window_local,
        fit_over_step=fit_over_step,
    )


def _ratio(baseline: float, accelerated: float) -> float:
    """How many times sooner the accelerated run got there. Both at the start (a held-out loss that only
    rises, say, so that its first checkpoint already meets the target): no difference, 1.0, not 0/0."""
    if accelerated > 0:
        return baseline / accelerated
    return 1.0 if baseline <= 0 else math.inf


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(values) if values else None


def quartiles(values: list[float | None]) -> tuple[float, float] | None:
    """Lower and upper quartile (inclusive method) of the values that are set; one value is both."""
    values = sorted(v for v in values if v is not None and not math.isnan(v))
    if len(values) < 2:
        return (values[0], values[0]) if values else None
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def iqr(values: list[float]) -> float | None:
    q = quartiles(values)
    return None if q is None else q[1] - q[0]


def load_moved(wall: list[float | None], steps: list[float | None]) -> bool:
    """Whether the median wall-clock and step speedups of the same seeds disagree by a factor beyond
    both the seeds' spread of wall-clock figures (upper over lower quartile) and `LOAD_TOLERANCE`.
    Steps cannot see load; a wall-clock figure that parts from them that far was moved by the machine."""
    pairs = [(w, s) for w, s in zip(wall, steps) if w and s and math.isfinite(w) and math.isfinite(s)]
    if not pairs:
        return False
    low, high = quartiles([w for w, _ in pairs])
    wall_median, step_median = median([w for w, _ in pairs]), median([s for _, s in pairs])
    disagreement = max(wall_median / step_median, step_median / wall_median)
    return disagreement > max(LOAD_TOLERANCE, high / low)


def format_speedup(comparison_or_value: Comparison | float | None, reached: bool = True) -> str:
    """``2.31x``, or ``not reached (<0.42x)`` so a missing target is never shown as a plain number."""
    if isinstance(comparison_or_value, Comparison):
        value, reached = comparison_or_value.speedup_bound, comparison_or_value.reached
    else:
        value = comparison_or_value
    if value is None:
        return "-"
    return f"{value:.2f}x" if reached else f"not reached (<{value:.2f}x)"
