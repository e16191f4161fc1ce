"""One paired measurement: the baselines and the accelerated runs of one seed, side by side.

Every comparison koopsweep reports goes through `run_paired`: the sweep's trials, `koopsweep study
verify`, ``koopsweep bench`` and the benchmark scripts. For one seed, in this process and on one device,
each baseline trains the budget and each accelerated run trains on the same model initialisation and
batch stream (see `koopsweep.training`), each on its own clock, in one of these orders:

- ``"interleaved"`` (the default): every run advances one evaluation interval in turn, baselines first,
  round after round up to the budget, so that a change of load on a shared machine (another job
  starting, a neighbour on the GPU) lands on both sides alike instead of in their ratio. Each clock
  counts only its own run's chunks; on CUDA every chunk edge synchronizes the device. Accelerated runs
  that have not reached the baselines' target at the budget go on alone afterwards (that tail is the
  one unpaired stretch), and they train the whole budget even when they reach the target sooner,
  because the target is the baselines' final loss.
- ``"rotate"`` (sequential): each run trains in one go, the runs taking turns by seed (seed ``s``
  starts with run ``s mod n``), so that a slow drift of load does not favour one side. An accelerated
  run whose turn comes before every baseline has finished trains the budget, pauses (its clock
  stopped), and resumes once the target is known.
- ``"baselines-first"`` (sequential): every baseline, then the accelerated runs, each in one go; the
  sweep's sequential mode, which stops an accelerated run as soon as it reaches the target.

The sweep's pruner judges an accelerated run's checkpoints against a baseline's curve: interleaving
gives it the baseline's curve up to the same step (its chunk runs first), a sequential order the whole.

Before the first timed run of a configuration in a process, a warm-up trains it a few steps (one jump
for an accelerated one) on a throwaway model, with no clock running: first calls pay one-time costs
(kernel and library initialisation; torch's Muon spends seconds on its first step) that belong to no run.

The accelerated runs stop at the lowest of the baselines' target losses (after ``min_steps``), or at
``cap_factor`` times the budget in steps or times the slowest baseline's run in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from koopsweep.errors import UsageError
from koopsweep.measure import target_loss
from koopsweep.schedules import Schedule
from koopsweep.spec import PAIRINGS  # what a user chooses: ``koopsweep bench --pairing``, a spec's ``pairing``
from koopsweep.tasks._base import Task
from koopsweep.training import CheckpointHook, KoopmanConfig, RunResult, TrainingRun

ORDERS = ("interleaved", "rotate", "baselines-first")

#: Untimed warm-up steps of a plain configuration (an accelerated one adds a window and one jump).
WARMUP_STEPS = 3


def pairing_order(pairing: str, *, pruned: bool) -> str:
    """The `run_paired` order of a user's ``pairing``: sequential is "baselines-first" where a pruner
    reads the baselines' whole curves (the sweep), else "rotate" (the bench)."""
    if pairing not in PAIRINGS:
        raise UsageError(f"pairing {pairing!r} is not one of {', '.join(PAIRINGS)}")
    if pairing == "interleaved":
        return "interleaved"
    return "baselines-first" if pruned else "rotate"


@dataclass(frozen=True)
class Side:
    """One run of a pair: an optimizer at a rate, accelerated when ``koopman`` is set."""

    label: str
    optimizer: str
    lr: float
    optimizer_params: dict[str, Any] = field(default_factory=dict)
    koopman: KoopmanConfig | None = None


@dataclass
class PairedSeed:
    """What one seed measured: every run by label, the baselines' targets, and the order they ran in."""

    seed: int
    order: list[str]
    baselines: dict[str, RunResult]
    accelerated: dict[str, RunResult]
    targets: dict[str, float]  # each baseline's target loss

    @property
    def target(self) -> float:
        """What the accelerated runs were stopped at: the lowest finite target."""
        finite = [t for t in self.targets.values() if math.isfinite(t)]
        return min(finite) if finite else math.inf


_warmed: set[tuple] = set()


def warm_up(task: Task, side: Side, device: torch.device, schedule: Schedule) -> None:
    """Train ``side``'s configuration a few steps on a throwaway model, once per process, with no clock."""
    koopman = side.koopman
    key = (id(task), str(device), side.optimizer, tuple(sorted(side.optimizer_params.items())),
           None if koopman is None else (koopman.variant, koopman.window, koopman.stride))  # fmt: skip
    if key in _warmed:
        return
    steps = WARMUP_STEPS + (0 if koopman is None else koopman.burn_in + koopman.window * koopman.stride + 1)
    run = TrainingRun(task, optimizer=side.optimizer, lr=side.lr, seed=0, device=device, koopman=koopman,
                      eval_every=steps, optimizer_params=side.optimizer_params, schedule=schedule)  # fmt: skip
    run.advance(steps)
    _warmed.add(key)


def run_paired(
    task: Task,
    baselines: Sequence[Side],
    accelerated: Sequence[Side],
    *,
    seed: int,
    device: torch.device,
    budget: int,
    schedule: Schedule,
    order: str = "interleaved",
    target: str = "final",
    cap_factor: float = 2.0,
    min_steps: int = 0,
    eval_every: int | None = None,
    hook: Callable[[dict[str, TrainingRun]], CheckpointHook | None] | None = None,
    checkpoint_metrics: bool = False,
) -> PairedSeed:
    """Measure one seed (see the module docstring). ``hook``, given the baselines' runs (finished, or
    under way when interleaved), returns the accelerated runs' checkpoint hook (the sweep's pruning).
    Once every accelerated run is pruned, nothing more is trained: the baselines' results are then partial.
    ``checkpoint_metrics``: every run records the task's `eval_metrics` at each checkpoint too (clocks stopped)."""
    if order not in ORDERS:
        raise ValueError(f"order {order!r} is not one of {', '.join(ORDERS)}")
    eval_every = eval_every or task.checkpoint_interval(budget)
    sides = {side.label: side for side in (*baselines, *accelerated)}
    for side in sides.values():
        warm_up(task, side, device, schedule)
    labels = list(sides)
    if order == "rotate":
        shift = seed % len(labels)
        labels = labels[shift:] + labels[:shift]
    names = [side.label for side in baselines]
    max_steps = int(math.ceil(cap_factor * budget))
    runs: dict[str, TrainingRun] = {}
    finished: dict[str, RunResult] = {}

    def start(label: str) -> TrainingRun:
        side = sides[label]
        runs[label] = TrainingRun(task, optimizer=side.optimizer, lr=side.lr, seed=seed, device=device,
                                  koopman=side.koopman, eval_every=eval_every, optimizer_params=side.optimizer_params,
                                  schedule=schedule, checkpoint_metrics=checkpoint_metrics)  # fmt: skip
        return runs[label]

    def baseline_runs() -> dict[str, TrainingRun]:
        return {name: runs[name] for name in names}

    def targets() -> dict[str, float]:
        return {name: target_loss(runs[name], target) for name in names}

    def finish(label: str) -> None:
        """Train an accelerated run on to the target or the cap, once every baseline is done."""
        run = runs[label]
        lowest = min((t for t in targets().values() if math.isfinite(t)), default=None)
        run.advance(max_steps, stop_below=lowest, min_steps=min_steps,
                    max_time_s=cap_factor * max(runs[name].time_s for name in names))  # fmt: skip
        finished[label] = run.result()

    def attach(label: str) -> None:
        runs[label].on_checkpoint = hook(baseline_runs()) if hook else None

    accelerated_labels = [label for label in labels if label not in names]
    if order == "interleaved":
        for label in labels:
            start(label)
        for label in accelerated_labels:
            attach(label)
        rounds = [runs[label] for label in [*names, *accelerated_labels]]  # baselines first in every round
        edge = 0
        pruned = lambda: accelerated_labels and all(runs[label].stopped == "pruned" for label in accelerated_labels)  # noqa: E731
        while edge < budget and not pruned():
            edge = min(edge + eval_every, budget)
            for run in rounds:
                run.advance(min(edge, max_steps))
        for label in accelerated_labels:
            finish(label)
    else:
        paused: list[str] = []
        for label in labels:
            run = start(label)
            baselines_done = all(name in runs for name in names)  # one at a time: a started baseline is done
            if label in names:
                run.advance(budget)
                if baselines_done:  # the target is known: the paused accelerated runs go on
                    for waiting in paused:
                        attach(waiting)
                        finish(waiting)
                    paused.clear()
            elif baselines_done:
                attach(label)
                finish(label)
            else:  # its turn came before the target is known: train the budget, then pause
                run.advance(min(budget, max_steps))
                paused.append(label)
    return PairedSeed(seed, labels, {name: runs[name].result() for name in names}, finished, targets())
