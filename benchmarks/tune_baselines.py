"""Tune the baseline learning rates of a task: a small log grid per optimizer, best final eval loss wins.

    python benchmarks/tune_baselines.py TASK [--budget N] [--seeds K] [--optimizers a,b|all]
                                             [--grid OPT=LR,LR,...] [--param KEY=VALUE]

For each optimizer plugin (default: adam, adadelta, sgd, adagrad; ``all``: every installed one) and each
learning rate of its grid, train ``budget`` gradient steps (default: the task's ``default_budget``) on
CPU from seeds 0..K-1 with `koopsweep.training.train` (so with the task's schedule, and judged where
the optimizer is judged: an EMA at its average, schedule-free AdamW at its averaged point), and record
the evaluation loss at the end. The chosen lr is the one with the lowest mean final eval loss over the
seeds (a diverged run counts as +inf). A choice at the edge of its grid is flagged: widen the grid and
run again.

The result is printed as a table and as a ``baseline_lrs`` literal to paste into the task class.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import statistics
import sys
import time
from typing import Any

import torch

from koopsweep.plugins import available, instantiate, load_optimizer, load_task
from koopsweep.training import task_schedule, train

#: Default grids (half-decade steps), wide enough around each optimizer's usual range. An optimizer
#: without one gets a grid of five half-decades centred on its plugin's default_lr.
ADAM_LIKE = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
GRIDS: dict[str, list[float]] = {
    "adam": [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
    "adadelta": [0.1, 0.3, 1.0, 3.0, 10.0, 30.0],
    "sgd": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1],
    "adagrad": [3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0],
    "rmsprop": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
    **{name: ADAM_LIKE for name in ("adamw", "nadam", "muon", "lookahead-adam", "snoo-adam", "ema-adam")},
    "schedulefree-adamw": ADAM_LIKE,
    "soap": ADAM_LIKE,
    "adam-lbfgs": ADAM_LIKE,  # the Adam phase's rate; L-BFGS runs at its lbfgs_lr (1)
    # The line search's first trial step: 1 is the classical choice, larger ones are cut back by it.
    "lbfgs": [0.1, 0.3, 1.0, 3.0],
}
DEFAULT_OPTIMIZERS = ["adam", "adadelta", "sgd", "adagrad"]


def grid_for(name: str) -> list[float]:
    if name in GRIDS:
        return list(GRIDS[name])
    centre = load_optimizer(name).default_lr
    return [float(f"{centre * 10 ** (k / 2):.3g}") for k in range(-2, 3)]


def final_loss(task: Any, optimizer: str, lr: float, seed: int, budget: int) -> float:
    """Train ``budget`` steps on CPU and return the final eval loss (inf if the run diverged)."""
    run = train(task, optimizer=optimizer, lr=lr, seed=seed, device=torch.device("cpu"), max_steps=budget,
                eval_every=budget, schedule=task_schedule(task, budget))  # fmt: skip
    value = run.final_loss
    return value if math.isfinite(value) else math.inf


def parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", help="a registered task name, e.g. digits-mlp")
    parser.add_argument("--budget", type=int, help="gradient steps per run (default: the task's default_budget)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..K-1 per learning rate (default 2)")
    parser.add_argument("--optimizers", default=",".join(DEFAULT_OPTIMIZERS),
                        help="comma-separated optimizer names, or 'all' (default " + ",".join(DEFAULT_OPTIMIZERS) + ")")
    parser.add_argument("--grid", action="append", default=[], metavar="OPT=LR,LR,...", help="replace a grid")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="a task parameter")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    names = available("optimizers") if args.optimizers == "all" else args.optimizers.split(",")
    for name in names:  # every plugin imported now: an unknown name fails at once, not an hour in
        load_optimizer(name)
    grids = {name: grid_for(name) for name in names}
    for spec in args.grid:
        name, _, values = spec.partition("=")
        grids[name] = [float(v) for v in values.split(",")]
    params = {key: parse_value(value) for key, value in (p.split("=", 1) for p in args.param)}
    cls = load_task(args.task)
    task = instantiate(cls, params)
    budget = args.budget or cls.default_budget
    seeds = list(range(args.seeds))

    started = time.perf_counter()
    if hasattr(task, "prepare"):  # the built-in tasks: load or generate the data before timing anything
        task.prepare()
    print(f"# {args.task} {task.params}  budget={budget} seeds={seeds} threads={args.threads}", flush=True)
    results: dict[str, dict[float, list[float]]] = {}
    best: dict[str, tuple[float, float, bool]] = {}
    for name, grid in grids.items():
        results[name] = {}
        for lr in grid:
            t0 = time.perf_counter()
            losses = [final_loss(task, name, lr, seed, budget) for seed in seeds]
            results[name][lr] = losses
            mean = statistics.fmean(losses) if all(math.isfinite(v) for v in losses) else math.inf
            shown = " ".join(f"{v:.4g}" for v in losses)
            print(f"{name:9s} lr={lr:<8g} mean={mean:<10.4g} [{shown}]  {time.perf_counter() - t0:.1f}s", flush=True)
        means = {
            lr: (statistics.fmean(v) if all(math.isfinite(x) for x in v) else math.inf)
            for lr, v in results[name].items()
        }
        lr_best = min(means, key=means.__getitem__)
        edge = len(grid) > 1 and lr_best in (min(grid), max(grid))
        best[name] = (lr_best, means[lr_best], edge)

    print(f"\n| optimizer | lr grid | chosen lr | mean final eval loss ({len(seeds)} seeds) |")
    print("|---|---|---|---|")
    for name, (lr, mean, edge) in best.items():
        grid = ", ".join(f"{v:g}" for v in grids[name])
        flag = " (grid edge!)" if edge else ""
        print(f"| {name} | {grid} | {lr:g}{flag} | {mean:.4g} |")
    print("\nbaseline_lrs = {" + ", ".join(f'"{n}": {lr!r}' for n, (lr, _, _) in best.items()) + "}")
    print(f"# total {time.perf_counter() - started:.0f}s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "task": args.task,
                    "params": task.params,
                    "budget": budget,
                    "seeds": seeds,
                    "results": {n: {str(lr): v for lr, v in r.items()} for n, r in results.items()},
                    "best": {n: {"lr": lr, "mean": m, "edge": e} for n, (lr, m, e) in best.items()},
                },
                fh,
                indent=2,
                default=str,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
