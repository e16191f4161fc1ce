"""`koopsweep study`: create, run, show, verify, report, list and delete sweeps."""

from __future__ import annotations

import json

import click

from koopsweep.cli._common import JSON_OPTION, STORAGE_OPTION, quiet_optuna
from koopsweep.errors import KoopsweepError, StorageUnavailable

@click.group("study")
def study() -> None:
    """Create, run and inspect sweeps (Optuna studies made from spec files in studies/)."""


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

    quiet_optuna()
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
@click.option("--storage-retry", type=click.FloatRange(min=0), metavar="SECONDS",
              help="Ride out an outage of the study's database (a restart, a failover) for up to this long "
                   "(default 600): "
                   "every storage call is retried with backoff and the trial in flight goes on. Past it the "
                   "worker exits with code 75 and keeps its unwritten results in a local file, which the next "
                   "'study run' of the study on this machine writes first. 0: fail at once.")
@click.option("--until-total", type=int, hidden=True)
@click.option("--worker-index", type=int, default=0, hidden=True)
@click.option("--quiet", is_flag=True, hidden=True)
@STORAGE_OPTION
def study_run(
    target: str, n_trials: int | None, timeout: float | None, jobs: int, devices: str | None,
    heartbeat_interval: int | None, threads: int | None, storage_retry: float | None, until_total: int | None,
    worker_index: int, quiet: bool, storage: str | None,
) -> None:  # fmt: skip
    """Run trials of a study, creating it first when SPEC_OR_NAME is a spec file and it does not exist yet.

    With --jobs J, J worker processes share the study through its storage, each on the next device of
    --devices. Workers on other hosts join with 'koopsweep study run NAME --storage URL'.
    """
    from koopsweep import spec as specs
    from koopsweep import sweep, tracking

    quiet_optuna()
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
    if storage_retry is None:
        storage_retry = sweep.DEFAULT_STORAGE_RETRY
    study_obj, stored = sweep.load_study(
        name, url, heartbeat_interval=heartbeat_interval, worker_index=worker_index, storage_retry=storage_retry
    )  # fmt: skip
    kept = sweep.write_kept_results(study_obj, url)
    if kept:
        click.echo(f"wrote {len(kept)} result(s) kept from an earlier storage outage: trial(s) "
                   f"{', '.join(map(str, kept))}", err=True)  # fmt: skip
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
            study_obj, spec, url, remaining, n_trials, until_total, timeout, jobs, device_list, heartbeat_interval, threads,
            storage_retry,
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
                 timeout, jobs, devices, heartbeat_interval, threads: int | None,
                 storage_retry: float) -> None:  # fmt: skip
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
            heartbeat_interval=heartbeat_interval, threads=worker_threads, storage_retry=storage_retry,
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
    outage = StorageUnavailable.exit_code
    if failed and all(code == outage for code in failed):
        raise StorageUnavailable(f"{len(failed)} of {len(workers)} workers stopped because the study's storage "
                                 "stayed unreachable; see their messages above")  # fmt: skip
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

    quiet_optuna()
    study_obj, spec = sweep.load_study(name, sweep.resolve_storage(storage))
    _print_summary(study_obj, spec, as_json=as_json, wide=wide)


@study.command("verify")
@click.argument("name")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True, help="How many of the best complete trials to re-measure.")
@click.option("--seeds", type=click.IntRange(min=1), default=5, show_default=True,
              help="Fresh paired seeds per trial (the integers after the study's own seeds, the same for every trial).")
@click.option("--device", help="cpu, cuda or cuda:N (default: the spec's).")
@STORAGE_OPTION
@JSON_OPTION
def study_verify(name: str, top: int, seeds: int, device: str | None, storage: str | None, as_json: bool) -> None:
    """Re-measure the best trials of study NAME over fresh paired seeds and re-rank them.

    A one-seed sweep on a shared machine crowns noise: each of the --top best trials is run again, with
    its full configuration and the study's baselines, budget and cap, on --seeds seeds it never saw. The
    result is recorded on the trial (user attribute 'verified', shown by 'study show' and 'study
    report') and as MLflow runs under the trial's run, one per seed.
    """
    import shutil

    from rich.progress import Progress

    from koopsweep import reporting, sweep

    quiet_optuna()
    study_obj, spec = sweep.load_study(name, sweep.resolve_storage(storage))
    with Progress(transient=True, disable=as_json) as progress:
        bar = progress.add_task(f"verify {name}", total=top * seeds)
        result = sweep.verify_study(
            study_obj, spec, top=top, n_seeds=seeds, device_name=device,
            on_seed=lambda number, seed: progress.update(bar, advance=1, description=f"verify {name}: trial {number}"),
        )  # fmt: skip
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    width = shutil.get_terminal_size((80, 24)).columns
    click.echo("\n".join(reporting.verify_lines(result, width=width)))


@study.command("report")
@click.argument("name")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for index.html and the PNG figures (created if missing).")
@STORAGE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the written files and the skipped figures as JSON.")
def study_report(name: str, out_dir: str, storage: str | None, as_json: bool) -> None:
    """Write an HTML page with figures for study NAME: optimization history, parameter importances, the
    Pareto front (two objectives), and the best trial's loss curves and eigenvalues from MLflow."""
    from koopsweep import report, sweep

    quiet_optuna()
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

    quiet_optuna()
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
