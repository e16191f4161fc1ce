"""The `koopsweep` command line: parses options and calls the library; no logic of its own.

Heavy imports (torch, optuna, mlflow) happen inside the commands, so ``koopsweep --help`` and
``koopsweep plugins list`` start quickly.
"""

from __future__ import annotations

import json
import sys

import click

from koopsweep.errors import KoopsweepError, redact
from koopsweep.knobs import KNOBS


def _one_line(text: str) -> str:
    """A message on one line with every URL password masked (libraries' messages span several)."""
    return redact(" ".join(line.strip() for line in text.splitlines() if line.strip()))


class _Group(click.Group):
    """Turns a `KoopsweepError` into a one-line message and its exit code. Any other exception is a bug
    here or in a plugin: one line too, exit 1. With --debug, the full traceback instead (passwords masked
    there too)."""

    def invoke(self, ctx: click.Context):  # noqa: D102
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if ctx.find_root().params.get("debug"):
                import traceback

                click.echo(redact(traceback.format_exc()), err=True, nl=False)
            elif isinstance(exc, KoopsweepError):
                click.echo(f"Error: {_one_line(str(exc))}", err=True)
            else:
                message = f"unexpected {type(exc).__name__}: {_one_line(str(exc))}"
                click.echo(f"Error: {message} (run with --debug for the traceback)", err=True)
            ctx.exit(exc.exit_code if isinstance(exc, KoopsweepError) else 1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.version_option(package_name="koopsweep")
def main(debug: bool) -> None:
    """Search Koopman-operator training accelerators with Optuna and measure, side by side with
    Adam and Adadelta, how much wall-clock time they really save. Results go to MLflow."""


# ----------------------------------------------------------------------------------------- plugins
@main.group()
def plugins() -> None:
    """Installed variants, tasks, fallback rules and optimizers (built-in and third-party)."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--strict", is_flag=True, help="Exit with status 1 if any plugin is broken.")
@click.option(
    "--group",
    "groups",
    multiple=True,
    type=click.Choice(["variants", "tasks", "fallbacks", "optimizers"]),
    help="Only this group (repeatable).",
)
def plugins_list(as_json: bool, strict: bool, groups: tuple[str, ...]) -> None:
    """List every plugin with its distribution, version, status and search space."""
    from koopsweep import plugins as registry

    rows = registry.describe(list(groups) or None)
    broken = [row for row in rows if row.status != "ok"]
    if as_json:
        click.echo(json.dumps([row.to_json() for row in rows], indent=2))
    else:
        _print_plugin_table(rows)
        if broken:
            click.echo(
                f"{len(broken)} broken plugin(s); 'koopsweep plugins list --json' shows the full errors.", err=True
            )
    if strict and broken:
        sys.exit(1)


#: Longest error shown in the table; the full one is in --json (a traceback-like message folded into a
#: narrow column is unreadable).
_TABLE_ERROR_CHARS = 160


def _short_error(error: str) -> str:
    line = error.strip().splitlines()[0] if error.strip() else "broken"
    return line if len(line) <= _TABLE_ERROR_CHARS else line[: _TABLE_ERROR_CHARS - 1].rstrip() + "…"


def _print_plugin_table(rows: list) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="koopsweep plugins")
    for column in ("group", "name", "distribution", "status"):
        table.add_column(column, no_wrap=True)  # short: the last column takes what room is left
    table.add_column("search space / error", overflow="fold")
    for row in rows:
        if row.status == "ok":
            detail = "\n".join(f"{k} {v}" for k, v in row.search_space_summary.items()) or "-"
            status = Text("ok", style="green")
        else:
            detail = _short_error(row.error_summary or row.error or "")
            status = Text("broken", style="red")
        dist = f"{row.distribution or '?'}\n{row.version or ''}".strip()
        # Text, not markup strings: an error like "list[str]" must not be read as a style tag.
        table.add_row(Text(row.group), Text(row.name), Text(dist), status, Text(detail))
    Console().print(table)


# ------------------------------------------------------------------------------------------- study
STORAGE_OPTION = click.option(
    "--storage",
    metavar="URL",
    help="Optuna storage: sqlite:///FILE.db, postgresql://USER@HOST/DB or FILE.log (journal). "
    "Default: $KOOPSWEEP_STORAGE, else the spec's, else sqlite:///koopsweep.db.",
)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables.")


@main.group()
def study() -> None:
    """Create, run and inspect sweeps (Optuna studies made from spec files in studies/)."""


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _looks_like_spec(value: str) -> bool:
    from pathlib import Path

    return value.endswith(".toml") or Path(value).is_file()


@study.command("create")
@click.argument("spec_file", metavar="SPEC")
@STORAGE_OPTION
def study_create(spec_file: str, storage: str | None) -> None:
    """Create the study described by SPEC (a TOML file) and its MLflow parent run.

    Create it once, then start workers with 'koopsweep study run NAME'. The study's name is printed
    as the last line.
    """
    from koopsweep import spec as specs
    from koopsweep import sweep

    _quiet_optuna()
    spec = specs.load_spec(spec_file)
    url = sweep.resolve_storage(storage, spec)
    sweep.create_study(spec, url)
    click.echo(f"created study {spec.name!r} in {sweep.mask_uri(url)}", err=True)
    click.echo(spec.name)


@study.command("run")
@click.argument("target", metavar="SPEC_OR_NAME")
@click.option("--n-trials", type=click.IntRange(min=1),
              help="Trials this invocation runs, shared by its --jobs workers, whatever other workers do (as "
                   "Optuna's optimize(n_trials=)). Without it, workers run until the study holds the spec's "
                   "n_trials, its study-wide target.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Stop starting new trials after this many seconds.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Worker processes sharing the storage.")
@click.option("--devices", help="Comma-separated devices (cpu, cuda, cuda:N) given to the workers in turn (default: the spec's).")
@click.option("--heartbeat-interval", type=click.IntRange(min=1), help="Seconds between heartbeats on RDB storages (default 60): a trial whose worker died is failed and retried after twice that.")
@click.option("--threads", type=click.IntRange(min=1),
              help="Torch CPU threads per worker (default: 1 for each of several CPU workers started by --jobs, "
                   "so they do not spin against each other; else torch's own, or $OMP_NUM_THREADS).")
@click.option("--until-total", type=int, hidden=True)
@click.option("--worker-index", type=int, default=0, hidden=True)
@click.option("--quiet", is_flag=True, hidden=True)
@STORAGE_OPTION
def study_run(
    target: str, n_trials: int | None, timeout: float | None, jobs: int, devices: str | None,
    heartbeat_interval: int | None, threads: int | None, until_total: int | None, worker_index: int, quiet: bool,
    storage: str | None,
) -> None:  # fmt: skip
    """Run trials of a study, creating it first when SPEC_OR_NAME is a spec file and it does not exist yet.

    With --jobs J, J worker processes share the study through its storage, each on the next device of
    --devices. Workers on other hosts join with 'koopsweep study run NAME --storage URL'.
    """
    from koopsweep import spec as specs
    from koopsweep import sweep, tracking

    _quiet_optuna()
    given = None
    if _looks_like_spec(target):
        given = specs.load_spec(target)
        _device_list(devices or given.device)  # a mistyped device fails before the study is created
        url = sweep.resolve_storage(storage, given)
        if not sweep.study_exists(given.name, url):
            sweep.create_study(given, url)
            click.echo(f"created study {given.name!r} in {sweep.mask_uri(url)}", err=True)
        name = given.name
    else:
        url, name = sweep.resolve_storage(storage), target
    study_obj, stored = sweep.load_study(name, url, heartbeat_interval=heartbeat_interval, worker_index=worker_index)
    if given is not None and stored.dumps() != given.dumps():
        raise KoopsweepError(
            f"study {name!r} already exists with a different spec than {target}; "
            f"give the spec a new name, or 'koopsweep study delete {name}' first"
        )
    spec = stored
    device_list = _device_list(devices or spec.device)
    if until_total is None and n_trials is None:
        until_total = spec.n_trials  # the study-wide target, shared with every other worker
    if until_total is not None:
        remaining = until_total - sweep.finished_trials(study_obj)
    else:
        remaining = n_trials  # this invocation's own, whatever the study holds
    if remaining > 0:  # one line now rather than a failure inside every trial
        tracking.check_tracking(sweep.study_tracking_uri(study_obj, spec))
    if remaining <= 0:
        if not quiet:
            click.echo(f"study {spec.name!r} already has its {spec.n_trials} trials; use --n-trials N to run more", err=True)
    elif jobs == 1:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        own = None if until_total is not None else remaining
        if quiet:
            sweep.run_worker(study_obj, spec, n_trials=own, timeout=timeout, device_name=device_list[0], until_total=until_total)
        else:
            _run_with_progress(study_obj, spec, remaining, own, timeout, device_list[0], until_total)
    else:
        _run_workers(
            study_obj, spec, url, remaining, n_trials, until_total, timeout, jobs, device_list, heartbeat_interval, threads
        )  # fmt: skip
    if not quiet:
        _print_summary(study_obj, spec, as_json=False)


def _device_list(text: str) -> list[str]:
    """The comma-separated devices, each checked (exists on this machine)."""
    from koopsweep.devices import resolve_device

    names = [d.strip() for d in text.split(",") if d.strip()]
    if not names:
        raise click.BadParameter(f"{text!r} names no device", param_hint="--devices")
    for name in names:
        resolve_device(name)
    return names


def _progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[best]}"),
    )  # fmt: skip


def _best_label(study_obj, spec) -> str:
    from koopsweep.measure import format_speedup

    import optuna

    # Complete trials only: Optuna gives a pruned trial its last intermediate value, which is no result.
    complete = study_obj.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    values = [t.values[0] for t in complete if t.values]
    return f"best speedup vs {spec.primary_baseline}: {format_speedup(max(values))}" if values else ""


def _run_with_progress(study_obj, spec, expected: int, n_trials: int | None, timeout: float | None, device: str,
                       until_total: int | None) -> None:  # fmt: skip
    from koopsweep import sweep

    with _progress_bar() as progress:
        bar = progress.add_task(f"study {spec.name}", total=expected, best="")

        def on_trial(study, trial) -> None:
            progress.update(bar, advance=1, best=_best_label(study, spec))

        sweep.run_worker(
            study_obj, spec, n_trials=n_trials, timeout=timeout, device_name=device, callbacks=[on_trial],
            until_total=until_total,
        )  # fmt: skip


def _run_workers(study_obj, spec, url, expected: int, n_trials: int | None, until_total: int | None,
                 timeout, jobs, devices, heartbeat_interval, threads: int | None) -> None:  # fmt: skip
    """Start ``jobs`` worker processes and follow the shared study until they all exit: with ``n_trials``,
    they split that many trials between them; else they run until the study holds ``until_total``."""
    import os
    import subprocess
    import time

    from koopsweep import sweep

    shares = sweep.split_trials(n_trials, jobs) if n_trials is not None else [None] * jobs
    env = {**os.environ, sweep.STORAGE_ENV: url}  # the URL is not on the command line, which any local user can read
    workers = []
    for i, share in enumerate(shares):
        device = devices[i % len(devices)]
        # CPU workers that share the cores get one torch thread each, or they spin against each other.
        cpu_threads = threads or (None if os.environ.get("OMP_NUM_THREADS") else 1)
        worker_threads = cpu_threads if device == "cpu" else threads
        command = sweep.worker_command(
            spec.name, url, n_trials=share, until_total=until_total, device=device, index=i + 1, timeout=timeout,
            heartbeat_interval=heartbeat_interval, threads=worker_threads,
        )  # fmt: skip
        workers.append(subprocess.Popen(command, env=env))
    ours = {sweep.worker_label(w.pid) for w in workers}

    def done() -> int:
        return min(sweep.finished_trials(study_obj, workers=ours), expected)

    try:
        with _progress_bar() as progress:
            bar = progress.add_task(f"study {spec.name} ({len(workers)} workers)", total=expected, best="")
            while any(w.poll() is None for w in workers):
                time.sleep(1.0)
                progress.update(bar, completed=done(), best=_best_label(study_obj, spec))
            progress.update(bar, completed=done())
    except KeyboardInterrupt:
        for w in workers:
            w.terminate()
        raise
    failed = [w.returncode for w in workers if w.returncode != 0]
    if failed:
        raise KoopsweepError(f"{len(failed)} of {len(workers)} workers failed (exit codes {failed}); see their messages above")


def _print_summary(study_obj, spec, *, as_json: bool, wide: bool = False) -> None:
    import shutil

    from koopsweep import reporting

    summary = reporting.study_summary(study_obj, spec)
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    width = shutil.get_terminal_size((80, 24)).columns  # honours COLUMNS
    click.echo("\n".join(reporting.summary_lines(summary, width=width, wide=wide)))


@study.command("show")
@click.argument("name")
@STORAGE_OPTION
@JSON_OPTION
@click.option("--wide", is_flag=True, help="Show each trial's parameters in full (default: cut to the terminal's width).")
def study_show(name: str, storage: str | None, as_json: bool, wide: bool) -> None:
    """The best trials of study NAME with their speedup over each baseline, and what they say."""
    from koopsweep import sweep

    _quiet_optuna()
    study_obj, spec = sweep.load_study(name, sweep.resolve_storage(storage))
    _print_summary(study_obj, spec, as_json=as_json, wide=wide)


@study.command("report")
@click.argument("name")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for index.html and the PNG figures (created if missing).")
@STORAGE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the written files and the skipped figures as JSON.")
def study_report(name: str, out_dir: str, storage: str | None, as_json: bool) -> None:
    """Write an HTML page with figures for study NAME: optimization history, parameter importances, the
    Pareto front (two objectives), and the best trial's loss curves and eigenvalues from MLflow."""
    from koopsweep import report, sweep

    _quiet_optuna()
    url = sweep.resolve_storage(storage)
    study_obj, spec = sweep.load_study(name, url)
    result = report.write_report(study_obj, spec, out_dir, storage_url=url)
    for line in result.warning_lines():
        click.echo(f"warning: {line}", err=True)
    click.echo(json.dumps(result.to_json(), indent=2) if as_json else str(result.index))


@study.command("list")
@STORAGE_OPTION
@JSON_OPTION
def study_list(storage: str | None, as_json: bool) -> None:
    """Every study in the storage with its task and trial count."""
    import optuna

    from koopsweep import sweep

    _quiet_optuna()
    url = sweep.resolve_storage(storage)
    summaries = optuna.get_all_study_summaries(sweep.open_storage(url, create=False), include_best_trial=False)
    rows = [
        {
            "name": s.study_name,
            "n_trials": s.n_trials,
            "task": json.loads(s.user_attrs.get(sweep.SPEC_ATTR, "{}")).get("task"),
            "created": str(s.datetime_start) if s.datetime_start else None,
        }
        for s in summaries
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"studies in {sweep.mask_uri(url)}")
    for column in ("name", "task", "trials", "started"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], str(row["task"]), str(row["n_trials"]), str(row["created"] or "-"))
    Console().print(table)


@study.command("delete")
@click.argument("name")
@STORAGE_OPTION
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def study_delete(name: str, storage: str | None, yes: bool) -> None:
    """Delete study NAME and all its trials from the storage (MLflow runs are kept)."""
    from koopsweep import sweep

    url = sweep.resolve_storage(storage)
    if not yes:
        click.confirm(f"Delete study {name!r} and all its trials from {sweep.mask_uri(url)}?", abort=True)
    sweep.delete_study(name, url)
    click.echo(f"deleted study {name!r}")


# ------------------------------------------------------------------------------------------- bench
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


@main.command("bench")
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
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), help="Also write the report as JSON here.")
def bench(task: str, variant: str, params: tuple[str, ...], optimizers: tuple[str, ...], seeds: int,
          budget: int | None, schedule: str | None, warmup: int | None, device: str,
          json_path: str | None) -> None:  # fmt: skip
    """Measure the end-to-end speedup of one configuration on TASK against its baselines.

    Each seed runs the plain optimizer and the accelerated one back to back on the same seed, data
    order and device, alternating which goes first; the table shows the median and spread over seeds.
    """
    from rich.console import Console
    from rich.progress import Progress

    from koopsweep.bench import BenchSettings, run_bench

    settings = BenchSettings(
        task=task, variant=variant, params=dict(_parse_param(p) for p in params), optimizers=list(optimizers),
        seeds=seeds, device=device, budget=budget, schedule=schedule, warmup=warmup,
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
        "<x: not reached by most seeds (x bounds it); window: the paper's window-local figure"
    ]
    if any(not row["lr_tuned"] for row in report["summary"].values()):
        notes.append(f"* untuned: {s['task']} has no tuned rate for it, so its default_lr ran")
    table = Table(
        box=None,  # one space between columns and no rules: nine columns fit 80 characters
        padding=(0, 1, 0, 0),
        header_style="bold underline",
        title=f"{s['task']}: {s['variant']} ({s['device_name']}, {s['seeds']} seeds, budget {s['budget']}, "
        f"{s['schedule']} lr)",
        caption="\n".join(notes),
    )
    for column in ("optimizer", "lr", "speedup", "IQR", "reached", "steps", "window", "accepted", "fit/step"):
        table.add_column(column, no_wrap=True)

    def num(value, fmt="{:.2f}"):
        return "-" if value is None else fmt.format(value)

    for optimizer, row in report["summary"].items():
        reached = row["reached_fraction"]
        speedup = row["median_speedup"]
        table.add_row(
            optimizer + ("" if row["lr_tuned"] else "*"),
            f"{row['lr']:g}",
            num(speedup, "{:.2f}x" if reached >= 0.5 else "<{:.2f}x"),
            num(row["speedup_iqr"]),
            f"{reached:.0%}",
            num(row["median_step_speedup"], "{:.2f}x"),
            num(row["window_local_speedup"], "{:.0f}x"),
            num(row["median_acceptance_rate"], "{:.0%}"),
            num(row["median_fit_over_step"]),
        )
    return table


# -------------------------------------------------------------------------------------------- data
@main.group()
def data() -> None:
    """Data sets that some tasks read from a folder (nothing downloads unless you ask here)."""


@data.command("download")
@click.argument("dataset", type=click.Choice(["mnist"]))
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where to put the files (default: $KOOPSWEEP_DATA/mnist, else ./data/mnist).")
@click.option("--overwrite", is_flag=True, help="Download again even when the files are there.")
def data_download(dataset: str, data_dir: str | None, overwrite: bool) -> None:
    """Download DATASET's files (the four MNIST IDX files, checked against their MD5 sums)."""
    from koopsweep.tasks.mnist import download_mnist, resolve_mnist_dir

    folder = resolve_mnist_dir(data_dir or "")
    paths = download_mnist(folder, overwrite=overwrite, log=lambda message: click.echo(message, err=True))
    click.echo(f"{len(paths)} files in {folder}")


# ---------------------------------------------------------------------------------------------- ui
@main.command("ui")
@click.argument("name", required=False)
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Port of the MLflow UI.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless you say otherwise).")
@STORAGE_OPTION
def ui(name: str | None, port: int, host: str, storage: str | None) -> None:
    """Start the MLflow UI on the tracking store and print the runs page of study NAME.

    The tracking store is MLFLOW_TRACKING_URI, else the study spec's tracking_uri, else
    sqlite:///mlflow.db here. When it is already an MLflow server (http://...), only the URL is printed.
    Stop the UI with Ctrl-C.
    """
    from koopsweep import sweep, tracking

    spec_uri = None
    if name:
        _quiet_optuna()
        _, spec = sweep.load_study(name, sweep.resolve_storage(storage))
        spec_uri = spec.tracking_uri
    uri = tracking.resolve_tracking_uri(spec_uri)
    if uri.startswith(("http://", "https://")):
        click.echo(tracking.runs_page_url(uri.rstrip("/"), uri, name))
        return
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    # Ctrl-C or a plain `kill` stops the server too (a shell may start us with SIGINT ignored).
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    server = tracking.start_ui_server(uri, host=host, port=port)
    try:
        click.echo(tracking.runs_page_url(f"http://{host}:{port}", uri, name))
        click.echo("MLflow UI running; press Ctrl-C to stop it.", err=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        tracking.stop_server(server)
