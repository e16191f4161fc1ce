"""How good is a jump? At a few points of a plain run, the loss at a variant's prediction ``h`` steps ahead
against the loss the optimizer really reaches after ``h`` more steps, both relative to the loss now.

    python benchmarks/jump_quality.py TASK [--optimizers adam adadelta] [--variant dmd-global]
        [--window 16] [--stride 1] [--snapshot last|mean] [--seed 0] [--json FILE] [--plot FILE]

This is the question behind every rejected jump: a rule keeps a jump only if its loss is no worse than
now, and a jump only saves time if it lands about as low as the ``h`` steps it replaces. A ratio below 1
is progress; "pred" far above "true" is a jump the optimizer's own steps would beat. Full-batch tasks
give the cleanest reading (the future run sees the same batches as the prediction's window did).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Any

import torch

from koopsweep.plugins import load_task, load_variant
from koopsweep.training import build_optimizer

HORIZONS = [5, 10, 20, 40, 80, 160, 320]
POINTS = [0.125, 0.25, 0.5, 0.75]  # fractions of the task's default budget


class PlainRun:
    """A task trained by a plain optimizer, one step at a time, that can be copied to look ahead."""

    def __init__(self, task: Any, optimizer: str, lr: float, seed: int, device: torch.device) -> None:
        self.task, self.seed, self.device = task, seed, device
        self.model = task.build_model(seed).to(device)
        _, self.optimizer = build_optimizer(optimizer, self.model.parameters(), lr)
        self.optimizer_name, self.lr = optimizer, lr
        self.steps = 0
        self._batches = task.batches(seed, device)

    def step(self) -> None:
        self.optimizer.zero_grad()
        self.task.loss(self.model, next(self._batches)).backward()
        self.optimizer.step()
        self.steps += 1

    def params(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.model.parameters()]

    def loss(self) -> float:
        return self.task.eval_loss(self.model, self.device)

    def copy(self) -> PlainRun:
        """The same weights, optimizer state and position in the batch stream (the stream is replayed)."""
        twin = PlainRun(self.task, self.optimizer_name, self.lr, self.seed, self.device)
        twin.model.load_state_dict(copy.deepcopy(self.model.state_dict()))
        twin.optimizer.load_state_dict(copy.deepcopy(self.optimizer.state_dict()))
        for _ in range(self.steps):
            next(twin._batches)
        twin.steps = self.steps
        return twin


def window_snapshots(run: PlainRun, window: int, stride: int, snapshot: str) -> list[torch.Tensor]:
    """Train ``window * stride`` steps and return the snapshots as the accelerator records them."""
    rows = []
    for _ in range(window):
        block = []
        for _ in range(stride):
            run.step()
            block.append(run.params())
        if snapshot == "mean":
            rows.append([torch.stack(tensors).mean(0) for tensors in zip(*block)])
        else:
            rows.append(block[-1])
    return [torch.stack(tensors) for tensors in zip(*rows)]


def loss_at(run: PlainRun, weights: list[torch.Tensor]) -> float:
    """The evaluation loss at ``weights``, leaving the run's own weights as they were."""
    saved = run.params()
    with torch.no_grad():
        for p, w in zip(run.model.parameters(), weights):
            p.copy_(w)
    value = run.loss()
    with torch.no_grad():
        for p, w in zip(run.model.parameters(), saved):
            p.copy_(w)
    return value


def measure(task_name: str, optimizer: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    cls = load_task(task_name)
    task = cls()
    device = torch.device("cpu")
    task.prepare(device)
    run = PlainRun(task, optimizer, float(cls.baseline_lrs[optimizer]), args.seed, device)
    span = args.window * args.stride
    rows = []
    for fraction in POINTS:
        start = int(fraction * cls.default_budget) - span
        while run.steps < start:
            run.step()
        snaps = window_snapshots(run, args.window, args.stride, args.snapshot)
        variant = load_variant(args.variant)()
        variant.fit(snaps)
        now = run.loss()
        predicted = []
        for h in HORIZONS:
            weights = variant.predict(max(1, round(h / args.stride)))
            predicted.append(loss_at(run, weights) / now if weights is not None else float("nan"))
        future, true = run.copy(), []
        for h in HORIZONS:
            while future.steps < run.steps + h:
                future.step()
            true.append(future.loss() / now)
        rows.append({"optimizer": optimizer, "step": run.steps, "loss": now, "predicted": predicted, "true": true})
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = "| optimizer | step | loss now | | " + " | ".join(f"h={h}" for h in HORIZONS) + " |"
    lines = [head, "|" + "---|" * (4 + len(HORIZONS))]
    for r in rows:
        for label in ("predicted", "true"):
            cells = " | ".join(f"{v:.3f}" for v in r[label])
            first = f"| {r['optimizer']} | {r['step']} | {r['loss']:.4g} |" if label == "predicted" else "| | | |"
            lines.append(f"{first} {label} | {cells} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    optimizers = sorted({r["optimizer"] for r in rows})
    fig, axes = plt.subplots(1, len(optimizers), figsize=(5.5 * len(optimizers), 4), squeeze=False)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.13, top=0.86, wspace=0.25)
    for ax, name in zip(axes[0], optimizers):
        for i, r in enumerate(row for row in rows if row["optimizer"] == name):
            color = f"C{i}"
            ax.plot(HORIZONS, r["true"], "-o", color=color, ms=3, label=f"step {r['step']}: {name}'s own steps")
            ax.plot(HORIZONS, r["predicted"], "--x", color=color, ms=4, label=f"step {r['step']}: jump")
        ax.axhline(1.0, color="k", lw=0.7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("horizon h (steps)")
        ax.set_ylabel("loss after h / loss now")
        ax.set_title(name)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task")
    parser.add_argument("--optimizers", nargs="+", default=["adam", "adadelta"])
    parser.add_argument("--variant", default="dmd-global")
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--snapshot", choices=["last", "mean"], default="last")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--plot", help="write a PNG: jump vs own steps, per optimizer")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [row for name in args.optimizers for row in measure(args.task, name, args)]
    print(table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"task": args.task, "args": vars(args), "horizons": HORIZONS, "rows": rows}, fh, indent=1)
    if args.plot:
        title = f"{args.task}: {args.variant}, window {args.window} x stride {args.stride} ({args.snapshot}), seed {args.seed}"
        plot(rows, args.plot, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
