"""One paired measurement: the baselines and the accelerated runs of one seed, side by side.

Every comparison koopsweep reports goes through `run_paired`: the sweep's trials, ``koopsweep bench``
and the benchmark scripts. For one seed, in this process and on one device, each baseline trains the
budget and each accelerated run trains on the same model initialisation and batch stream (see
`koopsweep.training`), in an explicit order:

- ``"rotate"``: the runs take turns by seed (seed ``s`` starts with run ``s mod n``), so that a slow
  drift of a shared machine's load does not favour one side; with one baseline and one accelerated run
  this alternates which goes first. An accelerated run whose turn comes before every baseline has
  finished trains the budget, pauses (its clock stopped), and resumes once the target is known.
- ``"baselines-first"``: every baseline, then the accelerated runs; what the sweep uses, because its
  pruner judges an accelerated run's intermediate values against a baseline's curve.

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

from koopsweep.measure import target_loss
from koopsweep.schedules import Schedule
from koopsweep.tasks._base import Task
from koopsweep.training import CheckpointHook, KoopmanConfig, RunResult, TrainingRun

ORDERS = ("rotate", "baselines-first")

#: Untimed warm-up steps of a plain configuration (an accelerated one adds a window and one jump).
WARMUP_STEPS = 3


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
    order: str = "rotate",
    target: str = "final",
    cap_factor: float = 2.0,
    min_steps: int = 0,
    eval_every: int | None = None,
    hook: Callable[[dict[str, RunResult]], CheckpointHook | None] | None = None,
) -> PairedSeed:
    """Measure one seed (see the module docstring). ``hook``, given the finished baselines, returns the
    accelerated runs' checkpoint hook (the sweep's pruning); it is attached once the baselines are known."""
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
    names = {side.label for side in baselines}
    done: dict[str, RunResult] = {}
    targets: dict[str, float] = {}
    running: dict[str, TrainingRun] = {}
    finished: dict[str, RunResult] = {}

    def start(side: Side) -> TrainingRun:
        return TrainingRun(task, optimizer=side.optimizer, lr=side.lr, seed=seed, device=device, koopman=side.koopman,
                           eval_every=eval_every, optimizer_params=side.optimizer_params, schedule=schedule)  # fmt: skip

    def finish(label: str, run: TrainingRun) -> None:
        run.on_checkpoint = hook(done) if hook else None
        lowest = min((t for t in targets.values() if math.isfinite(t)), default=None)
        run.advance(int(math.ceil(cap_factor * budget)), stop_below=lowest, min_steps=min_steps,
                    max_time_s=cap_factor * max(r.time_s for r in done.values()))  # fmt: skip
        finished[label] = run.result()

    for label in labels:
        side = sides[label]
        run = start(side)
        if label in names:
            run.advance(budget)
            done[label] = run.result()
            targets[label] = target_loss(done[label], target)
            if len(done) == len(names):  # the target is known: the paused accelerated runs go on
                for paused, paused_run in list(running.items()):
                    finish(paused, paused_run)
                running.clear()
        elif len(done) == len(names):
            finish(label, run)
        else:
            run.advance(min(budget, int(math.ceil(cap_factor * budget))))
            running[label] = run
    return PairedSeed(seed, labels, {b.label: done[b.label] for b in baselines}, finished, targets)
