"""From measurements to what people read: trial summaries, MLflow runs of a trial, study tables."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from koopsweep.measure import format_speedup, load_moved, median
from koopsweep.tracking import TRACKING_MISSED_ATTR, TRIAL_TAG

#: The tag of a trial's run that holds the first seed's last-fit eigenvalues (see `eigenvalues_tag`).
EIGENVALUES_TAG = "koopsweep.eigenvalues"
#: MLflow's limit on a tag's value.
MAX_TAG_CHARS = 8000
#: The trial user attribute `koopsweep study verify` writes: ``{"seeds", "speedup", "reached", "device"}``
#: (speedup and reached by baseline, over seeds the sweep did not use).
VERIFIED_ATTR = "verified"
#: The trial user attribute set when its wall-clock and step speedups disagree beyond the seeds' spread
#: (`koopsweep.measure.load_moved`): the machine's load changed while it ran.
LOAD_MOVED_ATTR = "load_moved"


def trial_summary(measurement, spec) -> dict[str, Any]:
    """The trial's figures per baseline, stored as Optuna user attributes (JSON-safe)."""
    summary: dict[str, Any] = {}
    for name in spec.baselines:
        rows = measurement.for_baseline(name)
        reached = [c for c in rows if c.reached]
        summary[f"speedup_vs_{name}"] = median([c.speedup_bound for c in rows])
        summary[f"reached_vs_{name}"] = f"{len(reached)}/{len(rows)}"
    primary = measurement.for_baseline(spec.primary_baseline)
    summary["step_speedup"] = median([c.step_speedup for c in primary])
    summary["cpu_speedup"] = median([c.cpu_speedup for c in primary])
    summary[LOAD_MOVED_ATTR] = load_moved([c.speedup for c in primary], [c.step_speedup for c in primary])
    summary["acceptance_rate"] = median([c.acceptance_rate for c in primary])
    summary["fit_over_step"] = median([c.fit_over_step for c in primary])
    summary["window_local_speedup"] = median([c.window_local_speedup for c in primary])
    summary["loss_gap"] = median([c.loss_gap for c in primary])
    summary["comparisons"] = [c.to_dict() for c in measurement.comparisons]
    return summary


def run_curves(run) -> dict[str, list[tuple[int, float, int]]]:
    """The ``loss`` curve of a run by gradient step, as `Tracker.log_run` takes it, each point timestamped
    at its training wall-clock (the run's first point at logging time): MLflow's relative-time axis is
    then the training time, and `koopsweep study report` reads it from there."""
    start_ms = int(time.time() * 1000)
    return {"loss": [(p.step, p.loss, start_ms + int(p.time_s * 1000)) for p in run.curve]}


def eigenvalues_tag(eigenvalues: list[complex]) -> str:
    """The last fit's eigenvalues as a JSON list of ``[re, im]`` pairs (6 significant digits), as many of
    the largest as fit one MLflow tag, so they travel in the trial's single ``log_batch`` call."""
    pairs = [[float(f"{z.real:.6g}"), float(f"{z.imag:.6g}")] for z in eigenvalues]
    text = json.dumps(pairs, separators=(",", ":"))
    while len(text) > MAX_TAG_CHARS:
        pairs = pairs[: len(pairs) * 3 // 4]
        text = json.dumps(pairs, separators=(",", ":"))
    return text


@dataclass(frozen=True)
class TrialContext:
    """What every trial of one worker logs beside its own measurement (built once by the sweep)."""

    spec: Any  # StudySpec
    budget: int
    lr: float  # the inner optimizer's
    schedule: str  # Schedule.describe()
    environment: dict[str, Any]  # koopsweep.devices.environment
    task_facts: dict[str, str]  # Task.data_facts
    parent_run_id: str | None


def log_trial(tracker, context: TrialContext, number: int, run_id: str, measurement) -> None:
    """Params, metrics, curves and the last fit's eigenvalues of trial ``number`` (its run ``run_id``),
    plus a child run per baseline run; ``measurement`` is the sweep's record of what the trial measured."""
    spec, environment = context.spec, context.environment
    guarded = tracker.guarded
    params = {
        "task": spec.task,
        "optimizer": spec.optimizer,
        "lr": context.lr,
        "budget": context.budget,
        "seed": ",".join(map(str, spec.seeds)),  # the trial's seeds; a baseline run has one
        "variant": measurement.config.variant,
        "schedule": context.schedule,
        **measurement.config.flat_params(),
        **{f"{spec.optimizer}.{k}": v for k, v in measurement.optimizer_params.items()},
        **{f"task.{k}": v for k, v in spec.task_params.items()},
        **{f"task.data.{k}": v for k, v in context.task_facts.items()},
        **environment,
    }
    summary = trial_summary(measurement, spec)
    primary = measurement.for_baseline(spec.primary_baseline)
    metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None}
    metrics["time_to_target_s"] = median([c.koopman_time_s for c in primary])
    metrics["final_loss"] = median([r.final_loss for r in measurement.koopman_runs])
    metrics["reached"] = float(all(c.reached for c in primary))
    metrics.update(_median_metrics(measurement.koopman_runs))
    first = measurement.koopman_runs[0]
    # Few round trips: each run's params, metrics, curves and tags go in one log_batch call where they fit.
    # No figure is drawn here (drawing and uploading PNGs cost almost half of a short trial): the curves
    # are metrics and the last fit's eigenvalues a tag, and `koopsweep study report` draws both.
    tags = {EIGENVALUES_TAG: eigenvalues_tag(first.eigenvalues)} if first.eigenvalues else {}
    guarded("log the trial's params, metrics, curves and eigenvalues", tracker.log_run, run_id,
            params=params, metrics=metrics, curves=run_curves(first), tags=tags)  # fmt: skip
    for baseline in measurement.baseline_runs:
        child = guarded(
            "start a baseline run",
            tracker.start_child,
            context.parent_run_id,
            f"trial-{number}-{baseline.optimizer}-seed{baseline.seed}",
            "baseline",
            {TRIAL_TAG: str(number), "koopsweep.optimizer": baseline.optimizer},
        )
        if not child:
            continue
        guarded("log a baseline run", tracker.log_run, child,
                # The environment is on the trial's run, the parent of this one: each param costs a write.
                params={"task": spec.task, "optimizer": baseline.optimizer, "lr": baseline.lr,
                        "seed": baseline.seed, "budget": context.budget, "schedule": baseline.schedule,
                        **{f"{baseline.optimizer}.{k}": v for k, v in baseline.optimizer_params.items()}},
                metrics={"final_loss": baseline.final_loss, "train_time_s": baseline.time_s,
                         "seconds_per_step": baseline.seconds_per_step, **_median_metrics([baseline])},
                curves=run_curves(baseline))  # fmt: skip
        guarded("end a baseline run", tracker.finish, child, "FINISHED")


def _median_metrics(runs) -> dict[str, float | None]:
    """The task's end-of-run metrics (`Task.eval_metrics`), median over runs, as ``metric.<name>``."""
    names = dict.fromkeys(name for run in runs for name in run.metrics)
    return {f"metric.{name}": median([run.metrics.get(name) for run in runs]) for name in names}


# ----------------------------------------------------------------------------------- study view
def study_summary(study, spec, top: int = 5) -> dict[str, Any]:
    """Best trials, best configuration per variant and trial counts by state (JSON-safe)."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]

    def row(t) -> dict[str, Any]:
        values = t.values or []
        out = {
            "number": t.number,
            "variant": t.params.get("variant"),
            "params": t.params,
            "objective": values[0] if values else None,
            "duration_s": t.duration.total_seconds() if t.duration else None,
        }
        if len(values) > 1:
            out["loss_gap"] = values[1]
        for name in spec.baselines:
            out[f"speedup_vs_{name}"] = t.user_attrs.get(f"speedup_vs_{name}")
            out[f"reached_vs_{name}"] = t.user_attrs.get(f"reached_vs_{name}")
        for key in ("step_speedup", "cpu_speedup", LOAD_MOVED_ATTR, "acceptance_rate", "fit_over_step",
                    "window_local_speedup"):
            out[key] = t.user_attrs.get(key)
        if VERIFIED_ATTR in t.user_attrs:
            out[VERIFIED_ATTR] = t.user_attrs[VERIFIED_ATTR]
        return out

    if len(spec.directions) == 1:
        best = sorted(complete, key=lambda t: t.value if t.value is not None else float("-inf"), reverse=True)[:top]
    else:
        best = study.best_trials
    per_variant: dict[str, Any] = {}
    for t in sorted(complete, key=lambda t: (t.values or [float("-inf")])[0], reverse=True):
        per_variant.setdefault(t.params.get("variant"), row(t))
    untuned = sorted({name for t in trials for name in t.user_attrs.get("untuned_lrs", [])})
    return {
        "tracking_missed": sum(1 for t in trials if t.user_attrs.get(TRACKING_MISSED_ATTR)),
        "study": study.study_name,
        "task": spec.task,
        "optimizer": spec.optimizer,
        "baselines": spec.baselines,
        "untuned_lrs": untuned,  # optimizers that ran at their plugin's default_lr (no tuned rate on the task)
        "objective": spec.objective,
        "directions": spec.directions,
        "trials_by_state": states,
        "best_trials": [row(t) for t in best],
        "best_per_variant": per_variant,
    }


def speedup_cell(row: dict[str, Any], baseline: str) -> str:
    value = row.get(f"speedup_vs_{baseline}")
    reached = row.get(f"reached_vs_{baseline}") or ""
    if value is None:
        return "-"
    hits, _, total = reached.partition("/")
    if hits == total:
        return format_speedup(value)
    if hits == "0":
        return format_speedup(value, reached=False)
    return f"{value:.2f}x ({reached} reached)"


# ------------------------------------------------------------------------------- the study as text
#: Marks a speedup no seed reached (the figure is then an upper bound), and its footnote.
NOT_REACHED = "†"
#: Marks a trial whose wall-clock figure the machine's load moved (`LOAD_MOVED_ATTR`).
LOAD_MARK = "!"


def compact_speedup(row: dict[str, Any], baseline: str) -> str:
    """``2.31x``; ``<0.11x†`` when no seed reached the baseline's loss; ``1.20x (2/3)`` when some did."""
    value = row.get(f"speedup_vs_{baseline}")
    if value is None:
        return "-"
    hits, _, total = (row.get(f"reached_vs_{baseline}") or "").partition("/")
    if hits == total:
        return f"{value:.2f}x"
    if hits == "0":
        return f"<{value:.2f}x{NOT_REACHED}"
    return f"{value:.2f}x ({hits}/{total})"


def conclusion(summary: dict[str, Any]) -> str:
    """What the shown trials say against each baseline, a sentence per baseline."""
    rows = summary["best_trials"]
    if not rows:
        return "No trial has finished yet."
    parts = []
    for baseline in summary["baselines"]:
        scored = [r for r in rows if r.get(f"speedup_vs_{baseline}") is not None]
        if not scored:
            continue
        best = max(scored, key=lambda r: r[f"speedup_vs_{baseline}"])
        value = best[f"speedup_vs_{baseline}"]
        hits = (best.get(f"reached_vs_{baseline}") or "0/").partition("/")[0]
        who = f"trial {best['number']} ({best['variant']})"
        if hits == "0":
            parts.append(f"Against {baseline}: no trial gets down to its final loss.")
        elif value > 1:
            parts.append(f"Against {baseline}: {who} reaches its loss {value:.2f}x sooner.")
        else:
            parts.append(f"Against {baseline}: no trial is faster (best: {who}, {value:.2f}x).")
    return " ".join(parts) or "No trial has a speedup yet."


def summary_lines(summary: dict[str, Any], width: int = 80, wide: bool = False) -> list[str]:
    """`koopsweep study show` as lines of at most ``width`` characters: one line per trial, its
    parameters on the line under it (cut to the width unless ``wide``), footnotes and a conclusion."""
    import textwrap

    baselines, untuned = summary["baselines"], summary["untuned_lrs"]
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary["trials_by_state"].items())) or "no trials"
    header = ["trial", "variant", *[f"vs {b}{'*' if b in untuned else ''}" for b in baselines], "steps",
              "accepted", "fit/step"]  # fmt: skip
    table = [header]
    for row in summary["best_trials"]:
        accepted, fit, steps = row.get("acceptance_rate"), row.get("fit_over_step"), row.get("step_speedup")
        mark = LOAD_MARK if row.get(LOAD_MOVED_ATTR) else ""
        speedups = [compact_speedup(row, b) + (mark if i == 0 else "") for i, b in enumerate(baselines)]
        table.append([
            str(row["number"]), str(row["variant"]), *speedups, "-" if steps is None else f"{steps:.2f}x",
            "-" if accepted is None else f"{accepted:.0%}", "-" if fit is None else f"{fit:.2f}",
        ])  # fmt: skip
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [f"study {summary['study']} ({summary['task']}, inner {summary['optimizer']}): {states}", ""]
    for i, cells in enumerate(table):
        lines.append(_aligned(cells, widths))
        if i:
            row = summary["best_trials"][i - 1]
            # The variant's own parameters are named "<variant>.<param>": shown without the prefix.
            params = "  " + " ".join(
                f"{k.removeprefix(str(row['variant']) + '.')}={_short(v)}" for k, v in row["params"].items() if k != "variant"
            )
            indent = " " * (widths[0] + 2)
            text = indent + params.strip()
            if not wide and len(text) > width:
                text = text[: width - 1] + "…"
            lines.append(text)
            if row.get(VERIFIED_ATTR):
                lines.append(indent + verified_text(row[VERIFIED_ATTR], baselines))
    notes = ["speedup: the baseline's time to its final loss / the accelerated run's time to the same loss, median "
             f"over seeds; steps: the same against {baselines[0]} in gradient steps, which load cannot move."]
    if any(row.get(LOAD_MOVED_ATTR) for row in summary["best_trials"]):
        notes.append(
            f"{LOAD_MARK} load moved while it ran: the trial's wall-clock figure parts from its step figure by more "
            "than its seeds' spread, so the machine's load changed between its runs; trust the steps, or re-measure "
            "it with 'koopsweep study verify' (pairing 'interleaved' shares the load between the sides)."
        )
    if any(NOT_REACHED in cell for r in table[1:] for cell in r):
        notes.append(
            f"{NOT_REACHED} not reached: the accelerated run never got down to that baseline's final loss within "
            "cap_factor times the baseline's steps and time, so the figure only bounds the speedup. The baseline "
            "ends lower than this inner optimizer gets: compare against it as the inner optimizer, or raise "
            "the budget or cap_factor."
        )
    if untuned:
        notes.append(f"* untuned: {summary['task']} has no tuned rate for {', '.join(untuned)}, so its default_lr ran.")
    missed = summary.get("tracking_missed", 0)
    if missed:
        notes.append(
            f"{missed} trial(s) ran while MLflow tracking failed: their results are here (Optuna has them) but "
            f"part or all of them is missing from MLflow (user attribute {TRACKING_MISSED_ATTR})."
        )
    lines.append("")
    for note in notes:
        lines += textwrap.wrap(note, width)
    lines += [""] + textwrap.wrap(conclusion(summary), width)
    return lines


def _aligned(cells: list[str], widths: list[int]) -> str:
    """One row of a text table: the trial number right-aligned, the other cells left-aligned."""
    return "  ".join(c.rjust(w) if j == 0 else c.ljust(w) for j, (c, w) in enumerate(zip(cells, widths))).rstrip()


def verified_text(verified: dict[str, Any], baselines: list[str]) -> str:
    """``verified over 5 seeds: 0.98x vs adam, <0.12x† vs adadelta`` (one line of `study show`)."""
    cells = [f"{compact_speedup(_as_row(verified, b), b)} vs {b}" for b in baselines if b in verified["speedup"]]
    return f"verified over {len(verified['seeds'])} seeds: " + ", ".join(cells)


def _as_row(verified: dict[str, Any], baseline: str) -> dict[str, Any]:
    """A verification's figures for one baseline in the shape `compact_speedup` reads."""
    return {f"speedup_vs_{baseline}": verified["speedup"].get(baseline),
            f"reached_vs_{baseline}": verified["reached"].get(baseline)}  # fmt: skip


def verify_lines(result: dict[str, Any], width: int = 80) -> list[str]:
    """`koopsweep study verify` as lines: the trials re-ranked by their verified speedup, each beside the
    figure the sweep measured."""
    import textwrap

    baselines, seeds = result["baselines"], result["seeds"]
    header = ["trial", "variant", *[f"vs {b}" for b in baselines], *[f"sweep {b}" for b in baselines]]
    table = [header]
    for trial in result["trials"]:
        verified = {"speedup": trial["speedup"], "reached": trial["reached"]}
        original = {"speedup": trial["original_speedup"], "reached": trial["original_reached"]}
        table.append([
            str(trial["number"]), str(trial["variant"]),
            *[compact_speedup(_as_row(verified, b), b) for b in baselines],
            *[compact_speedup(_as_row(original, b), b) for b in baselines],
        ])  # fmt: skip
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    title = (f"study {result['study']} ({result['task']}): the {len(result['trials'])} best trials re-measured "
             f"over {len(seeds)} fresh paired seeds ({seeds[0]}-{seeds[-1]}) on {result['device']}")  # fmt: skip
    lines = textwrap.wrap(title, width) + [""]
    lines += [_aligned(cells, widths) for cells in table]
    notes = [f"vs: the median over the fresh seeds; sweep: the figure the trial's own seeds "
             f"({', '.join(map(str, result['trials'][0]['original_seeds']))}) gave."]  # fmt: skip
    if any(NOT_REACHED in cell for r in table[1:] for cell in r):
        notes.append(f"{NOT_REACHED} not reached by any seed: the figure only bounds the speedup.")
    lines.append("")
    for note in notes:
        lines += textwrap.wrap(note, width)
    return lines


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
