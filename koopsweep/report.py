"""`koopsweep study report`: one study as an HTML page with PNG figures beside it.

Optuna draws what it knows about (the optimization history, parameter importances, the Pareto front)
with `optuna.visualization.matplotlib`. The best trial's loss against wall-clock and its fitted
eigenvalues come from data Optuna never sees: they are drawn here from its MLflow runs (the loss
curves are metrics of the trial's and its baselines' runs, timestamped at training time, and the
eigenvalues a tag of the trial's run). The page is one file with its style inline and the figures
referenced by relative path, so the folder can be copied, archived or served as it is.

Tracking is optional for a report: when MLflow is unreachable or holds no run for the trial, the Optuna
figures are still written and the page says which figures are missing and why.
"""

from __future__ import annotations

import datetime
import html
import json
import os
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from koopsweep import plots, reporting
from koopsweep.errors import KoopsweepError, UsageError
from koopsweep.sweep import study_tracking_uri
from koopsweep.tracking import ROLE_TAG, mask_uri

HISTORY = "history.png"
IMPORTANCES = "importances.png"
PARETO = "pareto_front.png"
LOSS = "loss_vs_time.png"  # the best trial's figures, drawn from its MLflow runs
EIGENVALUES = "eigenvalues.png"
INDEX = "index.html"

#: PED-ANOVA (Optuna's default importance evaluator) compares its top-quantile trials, at least two, with
#: all completed ones; below three trials the two sets coincide and every importance comes out equal.
MIN_TRIALS_FOR_IMPORTANCES = 3

#: How long to wait for an MLflow server before reporting without it (MLflow's own client retries a
#: refused connection with backoff for minutes).
PROBE_TIMEOUT_S = 5.0


@dataclass
class Report:
    """What `write_report` wrote, and each figure it could not write with the reason."""

    study: str
    out_dir: Path
    best_trial: int
    tracking_uri: str
    written: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # figure file -> why it is missing
    notes: dict[str, str] = field(default_factory=dict)  # figure file -> where it came from, when unusual

    @property
    def index(self) -> Path:
        return self.out_dir / INDEX

    def warning_lines(self) -> list[str]:
        """One line per reason, naming the figures it left out."""
        by_reason: dict[str, list[str]] = {}
        for figure, reason in self.skipped.items():
            by_reason.setdefault(reason, []).append(figure)
        return [f"{' and '.join(figures)} not written: {reason}" for reason, figures in by_reason.items()]

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "out": str(self.out_dir),
            "index": str(self.index),
            "best_trial": self.best_trial,
            "tracking_uri": mask_uri(self.tracking_uri),
            "written": [str(p) for p in self.written],
            "skipped": [{"figure": f, "reason": r} for f, r in self.skipped.items()],
            "notes": [{"figure": f, "note": n} for f, n in self.notes.items()],
        }


# ------------------------------------------------------------------------------------------ entry
def write_report(study, spec, out_dir: str | Path, *, storage_url: str | None = None,
                 tracking_uri: str | None = None) -> Report:  # fmt: skip
    """Write ``out_dir/index.html`` and its figures for ``study`` (an `optuna.Study` made by koopsweep)."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        # Checked before anything is written: an empty folder with a broken page helps nobody.
        states = _states_text(trials)
        raise KoopsweepError(
            f"study {study.study_name!r} has no completed trials ({states}); nothing to report yet. "
            f"Run some with 'koopsweep study run {study.study_name}'"
        )
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the report folder {out}: {exc.strerror or exc}") from None

    best = _best_trial(study, spec)
    uri = tracking_uri or study_tracking_uri(study, spec)
    report = Report(study.study_name, out, best.number, uri)
    _optuna_figures(study, spec, complete, report)
    _trial_figures(study, spec, best, report)
    written = {p.name for p in report.written}
    for name in (HISTORY, IMPORTANCES, PARETO, LOSS, EIGENVALUES):
        if name not in written:
            # An earlier report's figure would sit beside a page that says it is missing.
            (out / name).unlink(missing_ok=True)
    summary = reporting.study_summary(study, spec)
    page = _page(study, spec, summary, best, report, storage_url)
    report.index.write_text(page, encoding="utf-8")
    report.written.append(report.index)
    return report


def _best_trial(study, spec):
    """The single objective's best trial, or the Pareto-optimal trial with the highest speedup."""
    if len(spec.directions) == 1:
        return study.best_trial
    return max(study.best_trials, key=lambda t: t.values[0])


def _states_text(trials) -> str:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no trials at all"


# ---------------------------------------------------------------------------------- Optuna figures
def _optuna_figures(study, spec, complete: list, report: Report) -> None:
    import optuna.visualization.matplotlib as ovm

    speedup_name = f"speedup vs {spec.primary_baseline}"
    two = len(spec.directions) > 1
    # A multi-objective study has no single history; the speedup's is the one people ask for.
    first = (lambda t: t.values[0]) if two else None
    history = partial(ovm.plot_optimization_history, study, target=first, target_name=speedup_name)
    _optuna_figure(report, HISTORY, history)
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCES:
        report.skipped[IMPORTANCES] = (
            f"only {len(complete)} completed trial(s); parameter importances need at least "
            f"{MIN_TRIALS_FOR_IMPORTANCES} (with fewer, Optuna's evaluator rates every parameter equally)"
        )
    else:
        # Two objectives: Optuna rates what it takes to reach the Pareto front.
        name = "reaching the Pareto front" if two else speedup_name
        _optuna_figure(report, IMPORTANCES, partial(ovm.plot_param_importances, study, target_name=name))
    if two:
        names = [speedup_name, "final-loss gap"]
        _optuna_figure(report, PARETO, partial(ovm.plot_pareto_front, study, target_names=names))


def _optuna_figure(report: Report, name: str, draw) -> None:
    """Draw one Optuna figure into the report; a figure that fails is reported, never fatal."""
    import optuna

    plt = plots._pyplot()
    try:
        # Optuna's matplotlib plots switch pyplot's global style to ggplot; keep that inside.
        with plt.style.context("default"), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ax = draw()
            fig = ax.figure
            fig.set_size_inches(7.0, 4.4)
            fig.tight_layout()
            plots.save(fig, report.out_dir / name)
    except Exception as exc:  # matplotlib and Optuna raise many types; the rest of the report still helps
        report.skipped[name] = f"Optuna could not draw it ({_error(exc)})"
        return
    report.written.append(report.out_dir / name)
    # What Optuna warns about a figure (say, importances resting on few trials) belongs beside it on the
    # page, not in a stream of Python warnings on the terminal.
    said = list(dict.fromkeys(
        _one_line(w.message) for w in caught if not issubclass(w.category, optuna.exceptions.ExperimentalWarning)
    ))  # fmt: skip
    if said:
        more = f" (and {len(said) - 1} more like it)" if len(said) > 1 else ""
        report.notes[name] = f"Optuna warned: {said[0]}{more}"


# ---------------------------------------------------------------------------- the trial's figures
def _unreachable(uri: str) -> str | None:
    """Why the tracking store cannot be read, found without waiting on MLflow's retries (None: try it)."""
    shown = mask_uri(uri)
    if uri.startswith("sqlite:///") and ":memory:" not in uri:
        path = uri.removeprefix("sqlite:///").split("?")[0]
        if not os.path.exists(path):
            # Opening it would create an empty store: not something a report should leave behind.
            return f"no MLflow store at {shown} ({path} does not exist)"
        return None
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S):
                return None
        except urllib.error.HTTPError:
            return None  # something answered; MLflow's own calls will say more if it is the wrong thing
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return f"MLflow tracking at {shown} is unreachable ({_one_line(reason)})"
    return None


def _trial_figures(study, spec, trial, report: Report) -> None:
    """Draw the best trial's loss and eigenvalue figures from what its MLflow runs hold: the loss curves
    (metrics of the trial's and its baselines' runs) and the last fit's eigenvalues (a tag).
    Trials draw no figure themselves: that would cost a short trial almost half its time."""
    wanted = (LOSS, EIGENVALUES)
    problem = _unreachable(report.tracking_uri)
    if problem:
        report.skipped.update(dict.fromkeys(wanted, problem))
        return
    shown = mask_uri(report.tracking_uri)
    try:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=report.tracking_uri)
        found = _trial_run(client, study, spec, trial.number)
    except Exception as exc:  # MLflow raises REST, SQL and HTTP errors alike
        report.skipped.update(dict.fromkeys(wanted, f"MLflow tracking at {shown} failed ({_error(exc)})"))
        return
    if found is None:
        reason = (
            f"MLflow at {shown} has no run for trial {trial.number} in experiment {spec.name!r} "
            "(tracking was off or failed while the trial ran, or the runs live in another store: "
            "set MLFLOW_TRACKING_URI)"
        )
        report.skipped.update(dict.fromkeys(wanted, reason))
        return
    run, experiment_id = found
    for name, draw in ((LOSS, _draw_loss), (EIGENVALUES, _draw_eigenvalues)):
        try:
            why = draw(client, experiment_id, run, spec, trial, report.out_dir / name)
        except Exception as exc:
            why = f"drawing it from trial {trial.number}'s MLflow runs failed ({_error(exc)})"
        if why is None:
            report.written.append(report.out_dir / name)
        else:
            report.skipped[name] = why


def _trial_run(client, study, spec, number: int):
    """The trial's MLflow run and its experiment id: found by the trial-number tag under the study's parent
    run (a study deleted and created again under the same name reuses the experiment and the numbers)."""
    from koopsweep.sweep import PARENT_RUN_ATTR

    experiment = client.get_experiment_by_name(spec.name)
    if experiment is None:
        return None
    query = f"tags.`{ROLE_TAG}` = 'trial' and tags.`koopsweep.trial` = '{number}'"
    parent = study.user_attrs.get(PARENT_RUN_ATTR)
    if parent:
        query += f" and tags.`mlflow.parentRunId` = '{parent}'"
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=1
    )
    return (runs[0], experiment.experiment_id) if runs else None


def _draw_eigenvalues(client, experiment_id: str, run, spec, trial, dest: Path) -> str | None:
    """The last fit's eigenvalues on the unit circle, from the trial run's tag; None when drawn, else why not."""
    text = run.data.tags.get(reporting.EIGENVALUES_TAG)
    if not text:
        return f"trial {trial.number}'s MLflow run has no {reporting.EIGENVALUES_TAG} tag (the trial made no fit)"
    variant = trial.params.get("variant", "")
    pairs = json.loads(text)
    figure = plots.eigenvalues_on_circle([complex(re, im) for re, im in pairs], f"trial {trial.number}: {variant}")
    plots.save(figure, dest)
    return None


def _time_series(client, run_id: str) -> tuple[list[float], list[float]]:
    """A run's ``loss`` history as (seconds of training, loss): its points are timestamped at the training
    wall-clock, the first at 0 (`reporting.run_curves`)."""
    points = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    start = points[0].timestamp if points else 0
    return [(m.timestamp - start) / 1000 for m in points], [m.value for m in points]


def _draw_loss(client, experiment_id: str, run, spec, trial, dest: Path) -> str | None:
    """The first seed's loss against training time, the accelerated run beside its baselines and the
    primary baseline's target, from the runs' metric histories; None when drawn, else why not."""
    times, losses = _time_series(client, run.info.run_id)
    if not times:
        return f"trial {trial.number}'s MLflow run has no loss history to draw it from"
    seed = spec.seeds[0]
    series = [(f"koopman-{spec.optimizer}", times, losses, True)]
    query = (
        f"tags.`{ROLE_TAG}` = 'baseline' and tags.`koopsweep.trial` = '{trial.number}'"
        f" and tags.`mlflow.parentRunId` = '{run.data.tags.get('mlflow.parentRunId', '')}'"
    )
    baselines = client.search_runs([experiment_id], filter_string=query, max_results=100)
    order = {name: i for i, name in enumerate(spec.baselines)}
    for base in sorted(baselines, key=lambda r: order.get(r.data.tags.get("koopsweep.optimizer"), len(order))):
        if base.data.params.get("seed") != str(seed):
            continue
        label = base.data.tags.get("koopsweep.optimizer", base.info.run_name)
        series.append((label, *_time_series(client, base.info.run_id), False))
    target = next(
        (c.get("target_loss") for c in trial.user_attrs.get("comparisons", [])
         if c.get("baseline") == spec.primary_baseline and c.get("seed") == seed),
        None,
    )  # fmt: skip
    variant = trial.params.get("variant", "")
    plots.save(plots.loss_curves(series, f"trial {trial.number}: {variant}", target), dest)
    return None


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_one_line(exc)}"


def _one_line(value: Any, limit: int = 200) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ------------------------------------------------------------------------------------------ page
_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta { color: #555; } table { border-collapse: collapse; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.name { white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.params { font-size: .9em; max-width: 40em; }
figure { display: inline-block; margin: .5em 1em 1em 0; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #eee; } figcaption { color: #555; font-size: .9em; max-width: 40em; }
.missing { background: #fff6e0; border-left: 4px solid #e0a800; padding: .5em 1em; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any, fmt: str = "{:.4g}") -> str:
    return "-" if value is None else fmt.format(value) if isinstance(value, (int, float)) else str(value)


def _params_text(row: dict[str, Any]) -> str:
    prefix = f"{row.get('variant')}."
    return ", ".join(
        f"{k.removeprefix(prefix)}={_number(v, '{:.3g}') if isinstance(v, float) else v}"
        for k, v in row["params"].items()
        if k != "variant"
    )


def _summary_table(rows: list[dict[str, Any]], spec) -> str:
    """The table `koopsweep study show` prints, as HTML."""
    two = len(spec.directions) > 1
    verified = any(row.get(reporting.VERIFIED_ATTR) for row in rows)  # `study verify` ran: its column
    head = ["trial", "variant", *[f"vs {b}" for b in spec.baselines], *(["verified"] if verified else []),
            *(["loss gap"] if two else []), "accepted", "fit/step", "parameters"]  # fmt: skip
    lines = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = [f"<td class=num>{_e(row['number'])}</td>", f"<td class=name>{_e(row['variant'])}</td>"]
        cells += [f"<td class=num>{_e(reporting.speedup_cell(row, b))}</td>" for b in spec.baselines]
        if verified:
            check = row.get(reporting.VERIFIED_ATTR)
            cells.append(f"<td class=name>{_e(reporting.verified_text(check, spec.baselines) if check else '-')}</td>")
        if two:
            cells.append(f"<td class=num>{_e(_number(row.get('loss_gap')))}</td>")
        accepted = row.get("acceptance_rate")
        cells.append(f"<td class=num>{_e('-' if accepted is None else f'{accepted:.0%}')}</td>")
        cells.append(f"<td class=num>{_e(_number(row.get('fit_over_step'), '{:.2f}'))}</td>")
        cells.append(f"<td class=params>{_e(_params_text(row))}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _all_trials_table(study, spec) -> str:
    head = ["trial", "state", "variant", *[f"vs {b}" for b in spec.baselines], "objective value(s)", "duration (s)"]
    lines = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        row = {f"speedup_vs_{b}": t.user_attrs.get(f"speedup_vs_{b}") for b in spec.baselines}
        row.update({f"reached_vs_{b}": t.user_attrs.get(f"reached_vs_{b}") for b in spec.baselines})
        values = ", ".join(_number(v) for v in t.values) if t.values else "-"
        duration = _number(t.duration.total_seconds(), "{:.1f}") if t.duration else "-"
        cells = [_e(t.number), _e(t.state.name.lower()), _e(t.params.get("variant", "-"))]
        cells += [_e(reporting.speedup_cell(row, b)) for b in spec.baselines]
        cells += [_e(values), _e(duration)]
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _captions(spec, best) -> dict[str, str]:
    variant = best.params.get("variant", "?")
    primary = spec.primary_baseline
    two = len(spec.directions) > 1
    return {
        HISTORY: f"Optimization history: each completed trial's speedup over {primary} and the best so far (Optuna).",
        IMPORTANCES: "Parameter importances (Optuna's default evaluator, PED-ANOVA)"
        + (": what it takes to reach the Pareto front." if two else f" for the speedup over {primary}."),
        PARETO: f"Pareto front: speedup over {primary} (higher is better) against the final-loss gap "
        "(lower is better).",
        LOSS: f"Best trial {best.number} ({variant}): evaluation loss against training wall-clock beside its "
        f"baselines, first seed (from its MLflow run).",
        EIGENVALUES: f"Best trial {best.number} ({variant}): the last fit's eigenvalues and the unit circle "
        "(outside it a mode grows).",
    }


def _page(study, spec, summary: dict[str, Any], best, report: Report, storage_url: str | None) -> str:
    import optuna

    name = study.study_name
    states = ", ".join(f"{n} {s.lower()}" for s, n in sorted(summary["trials_by_state"].items()))
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    meta = [
        f"task <b>{_e(spec.task)}</b>, inner optimizer <b>{_e(spec.optimizer)}</b>, "
        f"baselines {_e(', '.join(spec.baselines))}",
        f"objective {_e(spec.objective)} ({_e(', '.join(spec.directions))}); trials: {_e(states)}",
        f"storage {_e(mask_uri(storage_url)) if storage_url else '-'}; tracking {_e(mask_uri(report.tracking_uri))}",
        f"written {_e(when)} by koopsweep with Optuna {_e(optuna.__version__)}",
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>koopsweep study {_e(name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Study {_e(name)}</h1>",
        f"<p>{_e(spec.description)}</p>" if spec.description else "",
        '<p class="meta">' + "<br>".join(meta) + "</p>",
    ]
    if report.skipped:
        items = "".join(f"<li><b>{_e(f)}</b>: {_e(r)}</li>" for f, r in report.skipped.items())
        parts.append(f'<div class="missing"><b>Figures not in this report</b><ul>{items}</ul></div>')
    heading = "Pareto-optimal trials" if len(spec.directions) > 1 else "Best trials"
    parts += [
        f"<h2>{heading}</h2>",
        "<p>Speedup: the baseline's time to its final loss over the accelerated run's time to the same loss, "
        "median over the trial's seeds.</p>",
        _summary_table(summary["best_trials"], spec),
        "<h2>Best configuration per variant</h2>",
        _summary_table(list(summary["best_per_variant"].values()), spec),
        "<h2>Figures</h2>",
    ]
    captions = _captions(spec, best)
    written = {p.name for p in report.written}
    for figure in (HISTORY, IMPORTANCES, PARETO, LOSS, EIGENVALUES):
        if figure in written:
            note = report.notes.get(figure)
            caption = captions[figure] + (f" Note: {note.rstrip('.')}." if note else "")
            parts.append(
                f'<figure><img src="{_e(figure)}" alt="{_e(figure)}"><figcaption>{_e(caption)}</figcaption></figure>'
            )
        elif figure in report.skipped:
            parts.append(f'<p class="missing">{_e(figure)} is missing: {_e(report.skipped[figure])}</p>')
    parts += [
        "<h2>All trials</h2>",
        _all_trials_table(study, spec),
        "<h2>Spec</h2>",
        "<details><summary>the spec stored in the study</summary>",
        f"<pre>{_e(json.dumps(spec.to_json(), indent=2))}</pre></details>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"
