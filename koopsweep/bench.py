"""`koopsweep bench`: a paired, repeated measurement of one configuration against its baselines.

For each inner optimizer and seed, the plain optimizer and the accelerated one train the same model
on the same batch stream in this process on one device (`koopsweep.pairing.run_paired`): by default in
alternating chunks of one evaluation interval, so that both see the same load; with ``pairing=
"sequential"`` one after the other, alternating by seed which goes first. The accelerated run trains at
least the baseline's budget (so its final loss is comparable at equal gradient steps) and, if it has
not yet reached the baseline's target, goes on up to ``cap_factor`` times the budget and time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from koopsweep import plugins
from koopsweep.devices import device_label, resolve_device
from koopsweep.errors import UsageError
from koopsweep.knobs import KNOBS
from koopsweep.measure import compare, iqr, load_moved, median
from koopsweep.pairing import Side, pairing_order, run_paired
from koopsweep.training import KoopmanConfig, learning_rate, task_schedule

SHARED_KEYS = tuple(KNOBS)


@dataclass
class BenchSettings:
    task: str
    variant: str = "dmd-global"
    params: dict[str, Any] = field(default_factory=dict)  # --param KEY=VALUE, before splitting
    optimizers: list[str] = field(default_factory=list)  # empty: the task's default optimizer
    seeds: int = 5
    device: str = "auto"
    budget: int | None = None
    cap_factor: float = 2.0
    target: str = "final"
    schedule: str | None = None  # None: the task's
    warmup: int | None = None
    pairing: str = "interleaved"  # or "sequential" (`koopsweep.spec.PAIRINGS`)


@dataclass
class SplitParams:
    """``--param`` values sorted by owner."""

    koopman: KoopmanConfig
    task: dict[str, Any]
    optimizers: dict[str, dict[str, Any]]  # optimizer name -> its parameters


def split_params(variant: str, params: dict[str, Any], optimizers: tuple[str, ...] | list[str] = ()) -> SplitParams:
    """Sort ``--param`` values into shared knobs, the variant's, the fallback rule's (``RULE.KEY``), an
    optimizer's (``OPTIMIZER.KEY``, for one of ``optimizers``) and the task's (``task.KEY``). Unknown keys
    are an error naming the accepted ones."""
    variant_cls = plugins.load_variant(variant)
    shared: dict[str, Any] = {}
    variant_params: dict[str, Any] = {}
    dotted: dict[str, Any] = {}
    task_params: dict[str, Any] = {}
    for key, value in params.items():
        if key in SHARED_KEYS:
            shared[key] = value
        elif key.startswith("task."):
            task_params[key[5:]] = value
        elif key in variant_cls.parameters():
            variant_params[key] = value
        elif "." in key:
            dotted[key] = value
        else:
            raise UsageError(
                f"--param {key}: not a parameter of variant {variant!r} ({', '.join(variant_cls.parameters()) or 'none'}) "
                f"nor a shared one ({', '.join(SHARED_KEYS)}); fallback, optimizer and task parameters are written "
                "RULE.KEY, OPTIMIZER.KEY and task.KEY"
            )
    config = KoopmanConfig(variant=variant, variant_params=variant_params, **shared)
    optimizer_params: dict[str, dict[str, Any]] = {name: {} for name in optimizers}
    for key, value in dotted.items():
        owner, _, name = key.partition(".")
        if owner == config.fallback:
            config.fallback_params[name] = value
        elif owner in optimizer_params:
            optimizer_params[owner][name] = value
        else:
            owners = [config.fallback, *optimizers]
            raise UsageError(f"--param {key}: {owner!r} is neither the fallback rule nor an optimizer here ({', '.join(owners)})")
    return SplitParams(config, task_params, optimizer_params)


def run_bench(settings: BenchSettings, on_progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the measurement and return the JSON-ready report (settings, results, summary)."""
    if settings.seeds < 1:
        raise UsageError("--seeds must be at least 1")
    task_cls = plugins.load_task(settings.task)
    optimizers = list(settings.optimizers) or [task_cls.default_optimizer]
    for name in optimizers:
        plugins.load_optimizer(name)  # an unknown name fails here, listing the installed ones
    split = split_params(settings.variant, settings.params, optimizers)
    config, task_params = split.koopman, split.task
    task = plugins.instantiate(task_cls, task_params)
    device = resolve_device(settings.device)
    budget = settings.budget or task_cls.default_budget
    schedule = task_schedule(task_cls, budget, settings.schedule, settings.warmup)
    eval_every = task.checkpoint_interval(budget)
    order = pairing_order(settings.pairing, pruned=False)
    results: list[dict[str, Any]] = []
    rates: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for optimizer in optimizers:
        lr, tuned = learning_rate(task_cls, optimizer)
        rates[optimizer] = {"lr": lr, "tuned": tuned, "params": split.optimizers[optimizer]}
        plain = Side(optimizer, optimizer, lr, split.optimizers[optimizer])
        jumping = Side("koopman", optimizer, lr, split.optimizers[optimizer], koopman=config)
        for seed in range(settings.seeds):
            # The accelerated run trains at least the budget, so its loss at equal steps is on record.
            pair = run_paired(task, [plain], [jumping], seed=seed, device=device, budget=budget, schedule=schedule,
                              order=order, target=settings.target, cap_factor=settings.cap_factor,
                              min_steps=budget, eval_every=eval_every)  # fmt: skip
            baseline, koopman = pair.baselines[optimizer], pair.accelerated["koopman"]
            koopman_first = pair.order[0] == "koopman"
            c = compare(baseline, koopman, target=settings.target)
            at_budget = next((p.loss for p in koopman.curve if p.step >= budget), koopman.final_loss)
            results.append(
                {
                    "optimizer": optimizer,
                    "seed": seed,
                    "first": "koopman" if koopman_first else "baseline",
                    "baseline_time_s": c.baseline_time_s,
                    "koopman_time_s": c.koopman_time_s,
                    "speedup": c.speedup,
                    "speedup_bound": c.speedup_bound,
                    "step_speedup": c.step_speedup,
                    "cpu_speedup": c.cpu_speedup,
                    "target_loss": c.target_loss,
                    "baseline_final_loss": baseline.final_loss,
                    "koopman_final_loss": at_budget,
                    "acceptance_rate": c.acceptance_rate,
                    "reached": c.reached,
                    "window_local_speedup": c.window_local_speedup,
                    "fit_over_step": c.fit_over_step,
                    "seconds_per_step": baseline.seconds_per_step,
                    "baseline_metrics": baseline.metrics,
                    "koopman_metrics": koopman.metrics,
                    "stats": koopman.stats,
                }
            )
            if on_progress:
                on_progress(f"{optimizer} seed {seed}")
    summary = {}
    for optimizer in optimizers:
        rows = [r for r in results if r["optimizer"] == optimizer]
        summary[optimizer] = {
            "lr": rates[optimizer]["lr"],
            "lr_tuned": rates[optimizer]["tuned"],
            "median_speedup": median([r["speedup_bound"] for r in rows]),
            "speedup_iqr": iqr([r["speedup_bound"] for r in rows]),
            "reached_fraction": sum(r["reached"] for r in rows) / len(rows),
            "median_step_speedup": median([r["step_speedup"] for r in rows]),
            "median_cpu_speedup": median([r["cpu_speedup"] for r in rows]),
            "load_moved": load_moved([r["speedup"] for r in rows], [r["step_speedup"] for r in rows]),
            "window_local_speedup": median([r["window_local_speedup"] for r in rows]),
            "median_acceptance_rate": median([r["acceptance_rate"] for r in rows]),
            "median_fit_over_step": median([r["fit_over_step"] for r in rows]),
        }
    return {
        "settings": {
            "task": settings.task,
            "task_params": task_params,
            "variant": settings.variant,
            "koopman": config.flat_params(),
            "optimizers": optimizers,
            "learning_rates": rates,
            "schedule": schedule.describe(),
            "data": task.data_facts(),
            "seeds": settings.seeds,
            "budget": budget,
            "cap_factor": settings.cap_factor,
            "target": settings.target,
            "pairing": settings.pairing,
            "device": str(device),
            "device_name": device_label(device),
            "wall_time_s": time.perf_counter() - started,
        },
        "results": results,
        "summary": summary,
    }
