"""`koopsweep bench`: a paired, repeated measurement of one configuration."""

from __future__ import annotations

import json

import click

from koopsweep.knobs import KNOBS
from koopsweep.spec import PAIRINGS

def _parse_param(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE read as a TOML literal (numbers, true/false, quoted strings), else a string."""
    import tomllib

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise click.BadParameter(f"{text!r} is not KEY=VALUE", param_hint="--param")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip(), value


@click.command("bench")
@click.argument("task")
@click.option("--variant", default="dmd-global", show_default=True, help="The Koopman variant to measure.")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help=f"A variant parameter, a shared knob ({', '.join(KNOBS)}), RULE.KEY for the fallback rule, "
                   "OPTIMIZER.KEY for an optimizer (both sides of the pair) or task.KEY for the task. Repeatable.")
@click.option("--optimizer", "optimizers", multiple=True, metavar="NAME",
              help="Inner optimizer and baseline: any installed optimizer plugin (koopsweep plugins list "
                   "--group optimizers). Repeatable (default: the task's own, e.g. adam or adamw).")
@click.option("--seeds", type=click.IntRange(min=1), default=5, show_default=True, help="Paired seeds per optimizer.")
@click.option("--budget", type=click.IntRange(min=1), help="Baseline gradient steps (default: the task's).")
@click.option("--schedule", type=click.Choice(["constant", "cosine"]),
              help="Learning-rate schedule of both sides (default: the task's).")
@click.option("--warmup", type=click.IntRange(min=0), help="Linear warm-up steps of the schedule (default: the task's).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--pairing", type=click.Choice(PAIRINGS), default="interleaved", show_default=True,
              help="interleaved: the two runs of a seed advance in alternating chunks of one evaluation interval, "
                   "so both see the same load; sequential: one after the other (alternating which goes first).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), help="Also write the report as JSON here.")
def bench(task: str, variant: str, params: tuple[str, ...], optimizers: tuple[str, ...], seeds: int,
          budget: int | None, schedule: str | None, warmup: int | None, device: str, pairing: str,
          json_path: str | None) -> None:  # fmt: skip
    """Measure the end-to-end speedup of one configuration on TASK against its baselines.

    Each seed runs the plain optimizer and the accelerated one side by side on the same seed, data
    order and device, in alternating chunks (see --pairing); the table shows the median and spread
    over seeds, in wall-clock time, in gradient steps and, on CPU, in process CPU time.
    """
    from rich.console import Console
    from rich.progress import Progress

    from koopsweep.bench import BenchSettings, run_bench

    settings = BenchSettings(
        task=task, variant=variant, params=dict(_parse_param(p) for p in params), optimizers=list(optimizers),
        seeds=seeds, device=device, budget=budget, schedule=schedule, warmup=warmup, pairing=pairing,
    )  # fmt: skip
    with Progress(transient=True) as progress:
        bar = progress.add_task(f"bench {task}", total=max(1, len(settings.optimizers)) * seeds)
        report = run_bench(settings, on_progress=lambda _: progress.advance(bar))
    if json_path:
        with open(json_path, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2, default=str)
    Console().print(_bench_table(report))


def _bench_table(report: dict):
    from rich.table import Table

    s = report["settings"]
    notes = [
        "speedup: the baseline's time to its final loss / the accelerated run's, median over seeds; "
        "<x: not reached by most seeds (x bounds it); steps, cpu: the same in gradient steps and in "
        "process CPU time; window: the paper's window-local figure"
    ]
    if any(row["load_moved"] for row in report["summary"].values()):
        notes.append("! load moved while it ran: the wall-clock figure parts from the step one by more than "
                     "the seeds' spread; trust the steps (and rerun with --pairing interleaved)")
    if any(not row["lr_tuned"] for row in report["summary"].values()):
        notes.append(f"* untuned: {s['task']} has no tuned rate for it, so its default_lr ran")
    table = Table(
        box=None,  # one space between columns and no rules: ten columns fit 80 characters
        padding=(0, 1, 0, 0),
        header_style="bold underline",
        title=f"{s['task']}: {s['variant']} ({s['device_name']}, {s['seeds']} seeds, budget {s['budget']}, "
        f"{s['schedule']} lr)",
        caption="\n".join(notes),
    )
    for column in ("optimizer", "lr", "speedup", "IQR", "reached", "steps", "cpu", "window", "accepted", "fit/step"):
        table.add_column(column, no_wrap=True)

    def num(value, fmt="{:.2f}"):
        return "-" if value is None else fmt.format(value)

    for optimizer, row in report["summary"].items():
        reached = row["reached_fraction"]
        speedup = row["median_speedup"]
        table.add_row(
            optimizer + ("" if row["lr_tuned"] else "*"),
            f"{row['lr']:g}",
            num(speedup, "{:.2f}x" if reached >= 0.5 else "<{:.2f}x") + ("!" if row["load_moved"] else ""),
            num(row["speedup_iqr"]),
            f"{reached:.0%}",
            num(row["median_step_speedup"], "{:.2f}x"),
            num(row["median_cpu_speedup"], "{:.2f}x"),
            num(row["window_local_speedup"], "{:.0f}x"),
            num(row["median_acceptance_rate"], "{:.0%}"),
            num(row["median_fit_over_step"]),
        )
    return table
