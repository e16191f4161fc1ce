"""The best accelerated configuration against the best baseline, at the same target loss.

    OMP_NUM_THREADS=1 python benchmarks/best_vs_best.py --out DIR [--task NAME ...] [--seeds 5]
        [--configs default|slow-weights|averaged|schedule-free|scientific] [--baselines a,b,...]
        [--budget N] [--figures DIR] [--summarize]

`koopsweep bench` pairs an accelerated run with its own inner optimizer. This asks the harder question:
against whichever of Adam, Adadelta, SGD (momentum 0.9) and Adagrad, each at the task's tuned rate
(`Task.baseline_lrs`), gets there first. For every seed, in one process, on the same seed, initial
weights and batch stream:

1. the four baselines train the task's default budget; the target is the lowest smoothed final loss
   among them (`koopsweep.measure.target_loss(run, "final")`), and the best baseline is the one whose
   curve reaches that target first (`first_reaching`);
2. each accelerated configuration trains at least the budget (so its loss at equal steps is on record)
   and, until it reaches the target, up to ``cap_factor`` times the budget in steps; in seconds it is
   capped at ``cap_factor`` times the best baseline's time to the target, as `koopsweep.bench` caps it
   (the time cap can end it before the budget);
3. speedup = the best baseline's time to the target / the accelerated run's time to it (an upper bound,
   best time / time it ran, when it never got there; the "reached" share says how often).
4. with ``--configs scientific`` every run also records the task's relative L2 error against the known
   solution at every checkpoint (clock stopped), and each run's error at the best baseline's time to the
   target is reported beside the speedups: the error metric at equal wall-clock time.

The runs of a seed advance interleaved, one evaluation interval each in turn (`koopsweep.pairing`), so
that a change of load on a shared machine lands on all of them alike (docs/best-vs-best.md's tables were
measured before that, in an order rotated by the seed); an untimed warm-up precedes each configuration's
first run in the process. Clocks are `TrainingRun`'s: training only,
evaluation checkpoints excluded.

One JSON per task goes to ``--out`` (``best-vs-best-TASK.json``), rewritten after every seed; a task
whose JSON holds ``--seeds`` seeds is not run again (delete it to re-measure), and one that holds fewer
(a run cut short, or a larger ``--seeds``) keeps them and measures only the missing seeds. Figures
(``best-vs-best-TASK.png``: loss against training wall-clock of the median seed) go to ``--figures``
(default: ``--out``). ``--summarize`` prints the tables and redraws
the figures from the JSONs alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from koopsweep import plots, plugins
from koopsweep.bench import split_params
from koopsweep.devices import device_label, resolve_device
from koopsweep.errors import KoopsweepError, UsageError
from koopsweep.measure import compare, first_reaching, median, quartiles, target_loss
from koopsweep.schedules import Schedule
from koopsweep.pairing import Side, run_paired
from koopsweep.training import KoopmanConfig, RunResult, learning_rate, task_schedule

#: The baselines of the first series (docs/best-vs-best.md); ``--baselines all`` takes every installed
#: optimizer plugin, the reference a user would pick from.
BASELINES = ["adam", "adadelta", "sgd", "adagrad"]


@dataclass
class Accelerated:
    """One accelerated configuration: a variant with `koopsweep bench --param`-style params on an inner
    optimizer at the task's tuned rate for it."""

    variant: str
    params: dict[str, Any]
    optimizer: str
    config: KoopmanConfig = field(init=False)

    def __post_init__(self) -> None:
        split = split_params(self.variant, dict(self.params), [self.optimizer])
        self.config, self.optimizer_params = split.koopman, split.optimizers[self.optimizer]
        if split.task:
            raise UsageError(f"{self.label}: task parameters ({', '.join(split.task)}) belong to the task, not to one configuration")

    @property
    def label(self) -> str:
        on = {"slow": "slow weights of ", "average": "average of "}.get(self.config.snapshot, "")
        if not self.params:
            return f"default on {on}{self.optimizer}"  # the untouched KoopmanAccelerator(inner)
        return f"{self.variant}+{self.config.fallback} on {on}{self.optimizer}"


#: task -> its accelerated configurations: the best ones of docs/results.md section 2 (adaptive
#: horizon, the oscillator's bench window and horizon, shorter ones on the 1,000-step task).
#: Every built-in variant on the task's own optimizer, under one accelerator configuration per task form:
#: minibatch tasks fit averaged snapshots (8 snapshots, each the mean of 8 iterates: what paid on the
#: stochastic forms of docs/results.md), the full-batch PINN the oscillator's window and horizon.
ALL_VARIANTS = ("dmd-global", "dmd-layer", "dmd-hankel", "dmd-fixedpoint", "dmd-node", "extrapolate-linear")
MINIBATCH_FORM = {"window": 8, "stride": 8, "snapshot": "mean", "horizon": 320, "fallback": "adaptive"}
FULL_BATCH_FORM = {"window": 16, "horizon": 100, "fallback": "adaptive"}

DEFAULT_CONFIGS: dict[str, list[Accelerated]] = {
    "charlm-transformer": [Accelerated(v, MINIBATCH_FORM, "adamw") for v in ALL_VARIANTS],
    "mnist1d-cnn": [Accelerated(v, MINIBATCH_FORM, "adam") for v in ALL_VARIANTS],
    "pinn-burgers": [Accelerated(v, FULL_BATCH_FORM, "adam") for v in ALL_VARIANTS],
    "hnn-oscillator": [
        Accelerated("dmd-global", {"window": 16, "horizon": 100, "fallback": "adaptive"}, "adadelta"),
        Accelerated("dmd-global", {"window": 16, "horizon": 100, "fallback": "adaptive"}, "adam"),
    ],
    "teacher-student": [
        Accelerated("dmd-global", {"window": 8, "horizon": 40, "fallback": "adaptive"}, "adadelta"),
        Accelerated("dmd-global", {"window": 8, "horizon": 40, "fallback": "adaptive"}, "adam"),
    ],
}

#: Koopman on slow weights (docs/results.md section 13): the configuration that kept jumps there, on
#: each outer loop, to be raced against tuned Adam and the outer loops themselves.
SLOW_WEIGHTS_FORM = {"snapshot": "slow", "fallback": "verify", "backoff": 0, "window": 8, "horizon": 100}
SLOW_WEIGHT_CONFIGS: dict[str, list[Accelerated]] = {
    task: [Accelerated("dmd-global", SLOW_WEIGHTS_FORM, inner) for inner in ("lookahead-adam", "snoo-adam")]
    for task in ("teacher-student", "hnn-oscillator", "pinn-burgers")
}
#: Averaged evaluation (docs/results.md section 13): jumps on the EMA's average, and the same jumps on
#: the EMA optimizer's raw iterates (the control), both judged where the EMA optimizer is judged.
AVERAGED_FORM = {"fallback": "verify", "backoff": 0, "window": 16, "horizon": 300}
AVERAGED_CONFIGS: dict[str, list[Accelerated]] = {
    task: [
        *(Accelerated("dmd-global", {**AVERAGED_FORM, "snapshot": snapshot}, "ema-adam") for snapshot in ("average", "last")),
        Accelerated("extrapolate-linear", AVERAGED_FORM, "ema-adam"),  # the naive control of the same jumps
    ]
    for task in ("teacher-student", "hnn-oscillator")
}
#: Averaged evaluation around schedule-free AdamW: jumps on its averaged point x under `verify` and
#: under the default rule, and the naive control of the same `verify` jumps.
SCHEDULE_FREE_CONFIGS: dict[str, list[Accelerated]] = {
    task: [
        Accelerated("dmd-global", {**AVERAGED_FORM, "snapshot": "average"}, "schedulefree-adamw"),
        Accelerated("dmd-global", {"snapshot": "average"}, "schedulefree-adamw"),
        Accelerated("extrapolate-linear", {**AVERAGED_FORM, "snapshot": "average"}, "schedulefree-adamw"),
    ]
    for task in ("teacher-student", "hnn-oscillator")
}
#: The scientific-ML family (issue 27): every variant on Adam, the PINN form, and the untouched default
#: (dmd-global, worth-it) on Adam, on L-BFGS and on adam-lbfgs's Adam phase; raced against
#: `SCIENTIFIC_BASELINES`, with the error against the known solution recorded at every checkpoint.
SCIENTIFIC_TASKS = ("pinn-burgers", "pinn-allen-cahn", "pinn-helmholtz", "neural-ode")
QUASI_NEWTON = ("lbfgs", "adam-lbfgs")
SCIENTIFIC_BASELINES = ["adam", "adamw", "muon", *QUASI_NEWTON]
#: Where L-BFGS and adam-lbfgs overfit the collocation points at every rate of their tuning grids
#: (pinn-allen-cahn: the training residual falls while the held-out loss rises from 1.9 to 13-66 in
#: 3,000 steps, where Adam's 6,000 reach 0.006; docs/tasks.md), the race runs without them and without
#: jumps around them: they would cost most of its time and never set the target.
LBFGS_OVERFITS = ("pinn-allen-cahn",)
SCIENTIFIC_CONFIGS: dict[str, list[Accelerated]] = {
    task: [*(Accelerated(v, FULL_BATCH_FORM, "adam") for v in ALL_VARIANTS),
           *(Accelerated("dmd-global", {}, inner)
             for inner in ("adam", *(() if task in LBFGS_OVERFITS else QUASI_NEWTON)))]  # fmt: skip
    for task in SCIENTIFIC_TASKS
}

CONFIG_SETS = {"default": DEFAULT_CONFIGS, "slow-weights": SLOW_WEIGHT_CONFIGS, "averaged": AVERAGED_CONFIGS,
               "schedule-free": SCHEDULE_FREE_CONFIGS, "scientific": SCIENTIFIC_CONFIGS}  # fmt: skip
#: The baselines a configuration set races against unless ``--baselines`` says otherwise.
SET_BASELINES = {"scientific": SCIENTIFIC_BASELINES}


def default_baselines(config_set: str, task: str) -> list[str]:
    """`SET_BASELINES` of the set (`BASELINES` where it names none), less the L-BFGS family where it overfits."""
    names = SET_BASELINES.get(config_set, BASELINES)
    if config_set == "scientific" and task in LBFGS_OVERFITS:
        return [name for name in names if name not in QUASI_NEWTON]
    return list(names)


#: The metric read at equal time where a task reports it (`Task.eval_metrics`).
ERROR_METRIC = "relative_l2_error"


def _curve(run: RunResult) -> list[list[float]]:
    """``[step, seconds, loss]`` per checkpoint, and the error metric fourth where it was recorded."""
    return [[p.step, p.time_s, p.loss, *([p.metrics[ERROR_METRIC]] if ERROR_METRIC in p.metrics else [])]
            for p in run.curve]  # fmt: skip


def error_at(curve: list[list[float]], seconds: float) -> float | None:
    """The error metric at the last checkpoint at or before ``seconds`` of training (the first one if
    none is), or None where the curve has none: each run judged at the same wall-clock time."""
    if not curve or len(curve[0]) < 4:
        return None
    before = [point for point in curve if point[1] <= seconds]
    return (before[-1] if before else curve[0])[3]


def _run_record(run: RunResult, target: float, accelerated: bool) -> dict[str, Any]:
    hit = first_reaching(run.curve, target)
    record = {
        "optimizer": run.optimizer,
        "lr": run.lr,
        "accelerated": accelerated,
        "time_to_target_s": hit.time_s if hit else None,
        "steps_to_target": hit.step if hit else None,
        "time_s": run.time_s,
        "steps": run.steps,
        "stopped": run.stopped,
        "final_loss": run.final_loss,
        "curve": _curve(run),
    }
    if accelerated:
        stats = run.stats or {}
        tried = stats.get("jumps_tried", 0)
        record["jumps_tried"] = tried
        record["jumps_accepted"] = stats.get("jumps_accepted", 0)
        record["acceptance_rate"] = record["jumps_accepted"] / tried if tried else 0.0
    else:
        record["smoothed_final_loss"] = target_loss(run, "final")
    return record


def measure_seed(task, accelerated: list[Accelerated], seed: int, *, baselines: list[str], budget: int,
                 cap_factor: float, device: torch.device, schedule: Schedule,
                 checkpoint_metrics: bool = False) -> dict[str, Any]:  # fmt: skip
    """All baselines and accelerated runs of one seed, paired by `koopsweep.pairing.run_paired`
    (interleaved); the accelerated runs train at least the budget."""
    plain = [Side(name, name, learning_rate(task, name)[0]) for name in baselines]
    jumping = [Side(acc.label, acc.optimizer, learning_rate(task, acc.optimizer)[0], acc.optimizer_params, acc.config)
               for acc in accelerated]  # fmt: skip
    pair = run_paired(task, plain, jumping, seed=seed, device=device, budget=budget, schedule=schedule,
                      cap_factor=cap_factor, min_steps=budget, checkpoint_metrics=checkpoint_metrics)  # fmt: skip
    if not math.isfinite(pair.target):
        raise KoopsweepError(f"seed {seed}: every baseline diverged; no target to measure against")
    baselines, finished, order = pair.baselines, pair.accelerated, pair.order
    times = {name: hit.time_s for name, run in baselines.items() if (hit := first_reaching(run.curve, pair.target))}
    best = min(times, key=times.get)
    goal = {"target": pair.target, "best": best, "best_time": times[best]}

    target, best, best_time = goal["target"], goal["best"], goal["best_time"]
    runs = {name: _run_record(run, target, False) for name, run in baselines.items()}
    runs.update({name: _run_record(run, target, True) for name, run in finished.items()})
    for record in runs.values():  # every run judged at the best baseline's time to the target
        record["error_at_best_time"] = error_at(record["curve"], best_time)
    speedups = {}
    for acc in accelerated:
        record = runs[acc.label]
        own = runs[acc.optimizer]["time_to_target_s"] if acc.optimizer in runs else None  # its inner optimizer alone
        t = record["time_to_target_s"]
        speedups[acc.label] = {
            "reached": t is not None,
            "speedup": best_time / t if t else None,
            "speedup_bound": best_time / (t if t else record["time_s"]),
            "vs_inner": own / t if (t and own) else None,
        }
        if acc.optimizer in baselines:
            # As `koopsweep bench` measures it: against its inner optimizer alone, at that one's own target.
            own_target = compare(baselines[acc.optimizer], finished[acc.label])
            speedups[acc.label]["vs_inner_own_target"] = {
                key: getattr(own_target, key) for key in ("speedup_bound", "reached", "step_speedup", "target_loss")
            }
    return {
        "seed": seed,
        "order": order,
        "target_loss": target,
        "best_baseline": best,
        "best_baseline_time_s": best_time,
        "runs": runs,
        "speedups": speedups,
    }


def _quartiles(values: list[float]) -> tuple[float, float, float] | None:
    """(lower quartile, median, upper quartile), or None without values."""
    q = quartiles(values)
    return None if q is None else (q[0], median(values), q[1])


def _lowest(run: dict[str, Any]) -> float:
    """The lowest evaluation loss of a run: how far short of the target one that never reached it fell."""
    return min(point[2] for point in run["curve"])


def _error_quartiles(seeds: list[dict[str, Any]], label: str) -> tuple[float, float, float] | None:
    """Quartiles over seeds of a run's error metric at the best baseline's time (None where not recorded)."""
    return _quartiles([e for s in seeds if (e := s["runs"][label].get("error_at_best_time")) is not None])


def summarize(seeds: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """Medians and quartiles over seeds. A seed where an accelerated run did not reach the target enters
    its speedup quartiles with its upper bound, as `koopsweep bench` does; "reached" says how often."""
    n = len(seeds)
    baselines = {}
    for name in (name for name, run in seeds[0]["runs"].items() if not run["accelerated"]):
        times = [s["runs"][name]["time_to_target_s"] for s in seeds]
        reached = [t for t in times if t is not None]
        baselines[name] = {
            "best_count": sum(s["best_baseline"] == name for s in seeds),
            "reached_fraction": len(reached) / n,
            "time_to_target_s": _quartiles(reached),
            "steps_to_target": median([s["runs"][name]["steps_to_target"] for s in seeds]),
            "lowest_over_target": statistics.median(_lowest(s["runs"][name]) / s["target_loss"] for s in seeds),
            "seconds_per_step": statistics.median(s["runs"][name]["time_s"] / s["runs"][name]["steps"] for s in seeds),
            "error_at_best_time": _error_quartiles(seeds, name),
        }
    accelerated = {}
    for label in labels:
        sp = [s["speedups"][label] for s in seeds]
        times = [s["runs"][label]["time_to_target_s"] for s in seeds]
        accelerated[label] = {
            "speedup": _quartiles([x["speedup_bound"] for x in sp]),
            "reached_fraction": sum(x["reached"] for x in sp) / n,
            "time_to_target_s": _quartiles([t for t in times if t is not None]),
            "steps_to_target": median([s["runs"][label]["steps_to_target"] for s in seeds]),
            "lowest_over_target": statistics.median(_lowest(s["runs"][label]) / s["target_loss"] for s in seeds),
            "seconds_per_step": statistics.median(s["runs"][label]["time_s"] / s["runs"][label]["steps"] for s in seeds),
            "vs_inner": _quartiles([x["vs_inner"] for x in sp if x["vs_inner"] is not None]),
            "vs_inner_seeds": sum(x["vs_inner"] is not None for x in sp),
            "vs_inner_own_target": _quartiles([x["vs_inner_own_target"]["speedup_bound"] for x in sp if "vs_inner_own_target" in x]),
            "vs_inner_own_target_reached": sum(x.get("vs_inner_own_target", {}).get("reached", False) for x in sp),
            "vs_inner_own_target_steps": _quartiles([x["vs_inner_own_target"]["step_speedup"] for x in sp
                                                     if x.get("vs_inner_own_target", {}).get("step_speedup") is not None]),
            "acceptance_rate": statistics.median(s["runs"][label]["acceptance_rate"] for s in seeds),
            "error_at_best_time": _error_quartiles(seeds, label),
        }
    return {
        "best_baseline_time_s": _quartiles([s["best_baseline_time_s"] for s in seeds]),
        "target_loss": _quartiles([s["target_loss"] for s in seeds]),
        "baselines": baselines,
        "accelerated": accelerated,
    }


#: What an earlier report must share with this measurement for its seeds to be kept (`measure`).
RESUME_KEYS = ("task", "task_params", "budget", "cap_factor", "baselines", "schedule", "accelerated", "device")


def measure(task_name: str, accelerated: list[Accelerated], seeds: int, *, baselines: list[str] | None = None,
            budget: int | None = None, cap_factor: float = 2.0, device: str = "cpu",
            task_params: dict[str, Any] | None = None, on_progress=None,
            checkpoint_metrics: bool = False, previous: dict[str, Any] | None = None,
            on_seed=None) -> dict[str, Any]:  # fmt: skip
    """The whole measurement of one task: every seed, then the summary. Returns the JSON-ready report.
    ``checkpoint_metrics``: record the task's error metric at every checkpoint (for the error at equal time).
    ``previous``: an earlier report of the same measurement; its seeds are kept and only seeds
    ``len(previous seeds)..seeds-1`` run (settings that differ raise). ``on_seed(report)`` gets the report
    so far after every seed, so a run cut short loses at most the seed it was on."""
    task_cls = plugins.load_task(task_name)
    task = plugins.instantiate(task_cls, task_params)
    dev = resolve_device(device)
    budget = budget or task_cls.default_budget
    schedule = task_schedule(task_cls, budget)
    baselines = list(baselines or BASELINES)
    untuned = [name for name in baselines + [a.optimizer for a in accelerated] if not learning_rate(task_cls, name)[1]]
    if untuned:
        raise UsageError(f"task {task_name!r} has no tuned learning rate for {', '.join(sorted(set(untuned)))}")
    started = time.perf_counter()
    load_before = os.getloadavg()
    labels = [a.label for a in accelerated]

    def report(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
        return {"settings": settings(per_seed), "seeds": per_seed, "summary": summarize(per_seed, labels)}

    def settings(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "task": task_name,
            "task_params": task_params or {},
            "budget": budget,
            "cap_factor": cap_factor,
            "baselines": {name: task_cls.baseline_lrs[name] for name in baselines},
            "schedule": schedule.describe(),
            "accelerated": [
                {"label": a.label, "variant": a.variant, "optimizer": a.optimizer,
                 "lr": task_cls.baseline_lrs[a.optimizer], "koopman": a.config.flat_params()}  # fmt: skip
                for a in accelerated
            ],
            "device": str(dev),
            "device_name": device_label(dev),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "wall_time_s": earlier_wall_time + time.perf_counter() - started,
            "seeds": len(per_seed),
        }

    per_seed: list[dict[str, Any]] = []
    earlier_wall_time = 0.0
    if previous is not None:
        expected = json.loads(json.dumps(settings([])))  # as the earlier report was read back: lists, not tuples
        changed = [key for key in RESUME_KEYS if previous["settings"].get(key) != expected[key]]
        if changed:
            raise UsageError(f"{task_name}: the earlier report differs in {', '.join(changed)}; "
                             "delete it or measure into another --out")  # fmt: skip
        per_seed = list(previous["seeds"][:seeds])
        earlier_wall_time = previous["settings"]["wall_time_s"]
    for seed in range(len(per_seed), seeds):
        per_seed.append(measure_seed(task, accelerated, seed, baselines=baselines, budget=budget,
                                     cap_factor=cap_factor, device=dev, schedule=schedule,
                                     checkpoint_metrics=checkpoint_metrics))  # fmt: skip
        if on_progress:
            on_progress(f"{task_name} seed {seed}: best baseline {per_seed[-1]['best_baseline']}")
        if on_seed:
            on_seed(report(per_seed))
    return report(per_seed)


def median_seed(report: dict[str, Any]) -> dict[str, Any]:
    """The seed whose speedup is the median one for the configuration with the best median speedup (the
    lower middle one for an even count), so the figure shows a typical seed, not the best."""
    acc = report["summary"]["accelerated"]
    best_label = max(acc, key=lambda label: acc[label]["speedup"][1])
    ranked = sorted(report["seeds"], key=lambda s: s["speedups"][best_label]["speedup_bound"])
    return ranked[(len(ranked) - 1) // 2]


def figure(report: dict[str, Any], path: Path) -> None:
    seed = median_seed(report)
    series = [
        (name if not run["accelerated"] else f"{name} ({run['acceptance_rate']:.0%} accepted)",
         [p[1] for p in run["curve"]], [p[2] for p in run["curve"]], run["accelerated"])  # fmt: skip
        for name, run in seed["runs"].items()
    ]
    # Baselines first, then the accelerated runs, in a fixed order (not the seed's run order).
    series.sort(key=lambda s: (s[3], s[0]))
    title = (f"{report['settings']['task']}, seed {seed['seed']} (the median seed): target = best baseline's "
             f"final loss {seed['target_loss']:.3g}")  # fmt: skip
    plots.save(plots.loss_curves(series, title, seed["target_loss"]), path)


def _fmt_q(q, unit: str = "", digits: int = 2) -> str:
    if q is None:
        return "-"
    lo, mid, hi = q
    return f"{mid:.{digits}f}{unit} ({lo:.{digits}f}-{hi:.{digits}f})"


def _fmt_steps(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def tables(report: dict[str, Any]) -> str:
    s, summ = report["settings"], report["summary"]
    n = s["seeds"]
    lines = [
        f"### {s['task']} (budget {s['budget']}, {n} seeds, target {_fmt_q(summ['target_loss'], digits=4)})",
        "",
        "| baseline | lr | time to target s, median (quartiles) | steps to target | reached | first on | lowest loss / target | ms/step | error at best's time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, b in summ["baselines"].items():
        lines.append(f"| {name} | {s['baselines'][name]:g} | {_fmt_q(b['time_to_target_s'])} | {_fmt_steps(b['steps_to_target'])} | "
                     f"{b['reached_fraction']:.0%} | {b['best_count']}/{n} seeds | {b['lowest_over_target']:.2f} | "
                     f"{b['seconds_per_step'] * 1e3:.2f} | {_fmt_q(b.get('error_at_best_time'), digits=3)} |")  # fmt: skip
    lines += [
        "",
        "| accelerated | time to target s | steps to target | speedup vs best baseline, median (quartiles) | reached | "
        "vs own inner optimizer | vs inner at its own final loss (in steps), reached | lowest loss / target | "
        "accepted | ms/step | error at best's time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, a in summ["accelerated"].items():
        inner = f"{_fmt_q(a['vs_inner'], 'x')} ({a['vs_inner_seeds']} seeds)" if a["vs_inner_seeds"] else "inner never reached it"
        own = "-"
        if a.get("vs_inner_own_target"):
            own = (f"{_fmt_q(a['vs_inner_own_target'], 'x')} ({_fmt_q(a['vs_inner_own_target_steps'], 'x')}), "
                   f"{a['vs_inner_own_target_reached']}/{n}")  # fmt: skip
        lines.append(f"| {label} | {_fmt_q(a['time_to_target_s'])} | {_fmt_steps(a['steps_to_target'])} | "
                     f"**{_fmt_q(a['speedup'], 'x')}** | {a['reached_fraction']:.0%} | {inner} | {own} | "
                     f"{a['lowest_over_target']:.2f} | {a['acceptance_rate']:.0%} | {a['seconds_per_step'] * 1e3:.2f} | "
                     f"{_fmt_q(a.get('error_at_best_time'), digits=3)} |")  # fmt: skip
    lines += ["", "Per seed (best baseline: its time; accelerated: time, speedup):", ""]
    labels = list(summ["accelerated"])
    lines.append("| seed | target | best baseline | " + " | ".join(labels) + " |")
    lines.append("|---|---|---|" + "---|" * len(labels))
    for seed in report["seeds"]:
        cells = []
        for label in labels:
            t, sp = seed["runs"][label]["time_to_target_s"], seed["speedups"][label]
            cells.append(f"{t:.2f} s, {sp['speedup']:.2f}x" if t is not None else f"not reached (<{sp['speedup_bound']:.2f}x)")
        lines.append(f"| {seed['seed']} | {seed['target_loss']:.4g} | {seed['best_baseline']} {seed['best_baseline_time_s']:.2f} s | "
                     + " | ".join(cells) + " |")  # fmt: skip
    lo, hi = s["loadavg_before"][0], s["loadavg_after"][0]
    lines += ["", f"Wall time {s['wall_time_s']:.0f} s; 1-min load average {lo:.2f} before, {hi:.2f} after; "
              f"{s['device_name']}, torch {s['torch']}, {s['torch_threads']} thread(s)."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON reports")
    parser.add_argument("--task", action="append", choices=sorted({task for configs in CONFIG_SETS.values() for task in configs}),
                        help="task to run (repeatable; default: all)")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=None, help="baseline steps (default: the task's)")
    parser.add_argument("--baselines", default=None,
                        help="comma-separated optimizer names, or 'all' for every installed one "
                             f"(default {','.join(BASELINES)}; --configs scientific: {','.join(SCIENTIFIC_BASELINES)}, "
                             f"less {' and '.join(QUASI_NEWTON)} on {', '.join(LBFGS_OVERFITS)})")  # fmt: skip
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--configs", choices=sorted(CONFIG_SETS), default="default",
                        help="which accelerated configurations (slow-weights: Koopman on Lookahead's and SNOO's "
                             "slow weights, on teacher-student, hnn-oscillator and pinn-burgers; averaged: on "
                             "ema-adam's average and its raw iterates, on teacher-student and hnn-oscillator; "
                             "schedule-free: on schedulefree-adamw's averaged point, same tasks; scientific: every "
                             "variant and the default on the PINN and neural-ODE tasks, against L-BFGS too)")  # fmt: skip
    parser.add_argument("--figures", type=Path, default=None, help="folder for the PNGs (default: --out)")
    parser.add_argument("--summarize", action="store_true", help="only print tables and draw figures from --out")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    torch.set_num_threads(1)  # two threads per process spin against each other on a shared 2-core machine
    configs = CONFIG_SETS[args.configs]
    tasks = args.task or list(configs)
    unknown = [task for task in tasks if task not in configs]
    if unknown:
        parser.error(f"--configs {args.configs} has no configurations for {', '.join(unknown)}")
    suffix = "" if args.configs == "default" else f"-{args.configs}"
    figures = args.figures or args.out
    args.out.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        chosen = args.baselines or ",".join(default_baselines(args.configs, task))
        baselines = plugins.available("optimizers") if chosen == "all" else chosen.split(",")
        path = args.out / f"best-vs-best-{task}{suffix}.json"
        previous = json.loads(path.read_text()) if path.exists() else None
        if previous is not None and (args.summarize or len(previous["seeds"]) >= args.seeds):
            report = previous
            # The summary again from the per-seed records, so a table added since the run still shows.
            report["summary"] = summarize(report["seeds"], [a["label"] for a in report["settings"]["accelerated"]])
            print(f"{task}: already measured ({path}, {len(report['seeds'])} seeds)", file=sys.stderr)
        elif args.summarize:
            print(f"{task}: no {path}", file=sys.stderr)
            continue
        else:
            if previous is not None:
                print(f"{task}: {len(previous['seeds'])} seeds in {path}; measuring the rest", file=sys.stderr)

            def save(report: dict[str, Any], path: Path = path) -> None:
                path.write_text(json.dumps(report, indent=1))

            report = measure(task, configs[task], args.seeds, baselines=baselines, budget=args.budget,
                             device=args.device, on_progress=lambda msg: print(msg, file=sys.stderr, flush=True),
                             checkpoint_metrics=args.configs == "scientific", previous=previous,
                             on_seed=save)  # fmt: skip
            save(report)
        figure(report, figures / f"best-vs-best-{task}{suffix}.png")
        print(tables(report) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KoopsweepError as exc:  # UsageError included: one line, its exit code
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
