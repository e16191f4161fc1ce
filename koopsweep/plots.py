"""Figures: loss against wall-clock beside the baselines, and fitted eigenvalues on the unit circle.

Optuna's own figures (history, importances, Pareto front) come from `optuna.visualization.matplotlib`
in `koopsweep.report`; this module only draws what Optuna has no plot for."""

from __future__ import annotations

import math
from collections.abc import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window
    import matplotlib.pyplot as plt

    return plt


def loss_vs_time(runs: Sequence, title: str = "", target: float | None = None):
    """Evaluation loss against training wall-clock for each run (`training.RunResult`), log scale."""
    series = [(run.label, [p.time_s for p in run.curve], [p.loss for p in run.curve], bool(run.koopman)) for run in runs]
    return loss_curves(series, title, target)


def loss_curves(series: Sequence[tuple[str, Sequence[float], Sequence[float], bool]], title: str = "",
                target: float | None = None):  # fmt: skip
    """The same figure from plain curves: (label, wall-clock seconds, losses, accelerated?) per run, as
    read back from MLflow's metric histories when a trial's own figure is not there."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for label, xs, losses, accelerated in series:
        ys = [max(y, 1e-30) for y in losses]
        style = "-" if accelerated else "--"
        ax.plot(list(xs), ys, style, marker=".", markersize=3, label=label)
    if target is not None and target > 0:
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":", label="target")
    positive = all(y > 0 for _, _, losses, _ in series for y in losses)
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("training wall-clock (s, evaluation excluded)")
    ax.set_ylabel("evaluation loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    _fixed_margins(fig)
    return fig


def eigenvalues_on_circle(eigenvalues: Sequence[complex], title: str = ""):
    """The last fit's eigenvalues in the complex plane with the unit circle (|λ| > 1 grows)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.6), dpi=110)
    angles = [2 * math.pi * k / 256 for k in range(257)]
    ax.plot([math.cos(a) for a in angles], [math.sin(a) for a in angles], color="grey", linewidth=0.8)
    ax.scatter([z.real for z in eigenvalues], [z.imag for z in eigenvalues], s=10, alpha=0.7)
    ax.set_aspect("equal")
    ax.set_xlabel("Re λ")
    ax.set_ylabel("Im λ")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    _fixed_margins(fig, left=0.19)
    return fig


def _fixed_margins(fig, left: float = 0.14) -> None:
    """Margins that fit these figures' labels. Cheaper than ``tight_layout``, which measured about 40% of
    a figure's cost: the per-trial figures are drawn on the trial's clock (benchmarks/README.md)."""
    fig.subplots_adjust(left=left, right=0.97, bottom=0.12, top=0.92)


def save(fig, path, dpi: int = 110) -> None:
    """Write a figure as PNG and free it (a report draws several; pyplot keeps every open one alive)."""
    try:
        fig.savefig(path, dpi=dpi, format="png")
    finally:
        close(fig)


def close(fig) -> None:
    _pyplot().close(fig)
