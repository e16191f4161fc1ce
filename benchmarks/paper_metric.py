"""The paper's own measurements, on the paper's network: how far ahead a fitted operator predicts the
weights, and how much faster a jump is than the steps it replaces (issue #9, part 1).

    python benchmarks/paper_metric.py [--device cpu|cuda] [--window 50] [--json PATH] [--plot DIR]

On `hnn-oscillator` (the 1-10-10-2 sine network solving Hamilton's equations, 152 parameters) trained
by Adadelta at its tuned rate, in the full-batch form (a fixed grid of times) and the stochastic form
(fresh random times every step):

* **prediction-error ratio** ``median|w_pred - w_true| / median|w_true - w_last|`` over all weights, for
  each horizon ``h`` (1.0 = no better than not moving; Dogra & Redman's figure of merit), for
  ``dmd-node`` (the paper's node operators), ``dmd-global`` and the naive ``extrapolate-linear`` control,
  from windows taken at several points of training (the median over those windows is printed);
* **window-local ratio**: the time of ``h`` Adadelta steps against the time to fit on the window and
  jump ``h`` steps (fit + predict, nothing else). It leaves out the steps that filled the window, so it
  is no end-to-end speedup (``koopsweep bench`` measures that).

The steps and the fits are timed interleaved in one run, so both see the same load on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from koopsweep import plugins
from koopsweep.devices import resolve_device, time_call

HORIZONS = (10, 50, 100, 250, 500, 1000, 2500)
VARIANTS = ("dmd-node", "dmd-global", "extrapolate-linear")
FORMS = {"full-batch": {}, "stochastic": {"batch_size": 200}}


def flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in tensors])


class Trajectory:
    """Adadelta on hnn-oscillator, one step at a time, keeping every state of the weights."""

    def __init__(self, form: dict[str, Any], device: torch.device, seed: int = 0) -> None:
        task_cls = plugins.load_task("hnn-oscillator")
        self.task = task_cls(**form)
        self.task.prepare(device)
        self.model = self.task.build_model(seed).to(device)
        self.params = list(self.model.parameters())
        self.optimizer = torch.optim.Adadelta(self.params, lr=task_cls.baseline_lrs["adadelta"])
        self.batches = self.task.batches(seed, device)
        self.states: list[list[torch.Tensor]] = [self.snapshot()]

    def snapshot(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.params]

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.task.loss(self.model, next(self.batches)).backward()
        self.optimizer.step()

    def advance(self, steps: int, record: bool = True) -> None:
        for _ in range(steps):
            self.step()
            if record:
                self.states.append(self.snapshot())

    def window(self, end: int, size: int) -> list[torch.Tensor]:
        """Snapshots ``end - size + 1 .. end``, as the ``(window, *shape)`` tensors a variant fits."""
        chunk = self.states[end - size + 1 : end + 1]
        return [torch.stack([s[i] for s in chunk]) for i in range(len(self.params))]


def prediction_errors(traj: Trajectory, window: int, ends: list[int]) -> dict[str, dict[int, float]]:
    """Median over the windows ending at ``ends`` of the error ratio, per variant and horizon."""
    out: dict[str, dict[int, float]] = {}
    for name in VARIANTS:
        per_h: dict[int, list[float]] = {h: [] for h in HORIZONS}
        for end in ends:
            variant = plugins.load_variant(name)()
            variant.fit(traj.window(end, window))
            last = flat(traj.states[end])
            for h in HORIZONS:
                true = flat(traj.states[end + h])
                pred = flat(variant.predict(h))
                per_h[h].append(float((pred - true).abs().median() / (true - last).abs().median()))
        out[name] = {h: statistics.median(v) for h, v in per_h.items()}
    return out


def window_local(traj: Trajectory, window: int, device: torch.device, repeats: int) -> dict[str, dict[int, float]]:
    """Time of h steps / time of fit + predict(h), per variant and horizon, interleaved."""
    snaps = traj.window(len(traj.states) - 1, window)
    out: dict[str, dict[int, float]] = {}
    for name in VARIANTS:
        variant = plugins.load_variant(name)()
        variant.fit(snaps)  # warm-up
        ratios = {}
        for h in HORIZONS:
            t_steps, t_jump = [], []
            for _ in range(repeats):
                t_steps.append(time_call(lambda: traj.advance(h, record=False), device))

                def jump(h=h) -> None:
                    variant.fit(snaps)
                    variant.predict(h)

                t_jump.append(time_call(jump, device))
            ratios[h] = statistics.median(t_steps) / statistics.median(t_jump)
        out[name] = ratios
    return out


def table(title: str, rows: dict[str, dict[int, float]], fmt: str) -> str:
    lines = [f"\n### {title}\n", "| variant | " + " | ".join(f"h={h}" for h in HORIZONS) + " |"]
    lines.append("|" + "---|" * (1 + len(HORIZONS)))
    for name, values in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt.format(values[h]) for h in HORIZONS) + " |")
    return "\n".join(lines)


def plot(results: dict[str, Any], directory: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for key, ylabel, name in (
        ("error_ratio", "median |pred - true| / median |true - last|", "paper-error-ratio.png"),
        ("window_local", "time of h steps / time of fit + jump", "paper-window-local.png"),
    ):
        fig, axes = plt.subplots(1, len(FORMS), figsize=(10, 3.8), dpi=110, sharey=True)
        for ax, form in zip(axes, FORMS):
            for variant, values in results[form][key].items():
                ax.plot(HORIZONS, [values[h] for h in HORIZONS], marker="o", label=variant)
            ax.set_xscale("log")
            ax.set_yscale("log")
            if key == "error_ratio":
                ax.axhline(1.0, color="grey", linestyle=":", linewidth=0.8)
            ax.set_title(f"hnn-oscillator, Adadelta, {form}", fontsize=9)
            ax.set_xlabel("horizon h (optimizer steps)")
            ax.grid(True, alpha=0.3)
        axes[0].set_ylabel(ylabel, fontsize=8)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        path = directory / name
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--window", type=int, default=50, help="snapshots per fit (default 50)")
    parser.add_argument("--starts", type=int, nargs="+", default=[500, 1500, 3000],
                        help="training steps at which the windows end")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per horizon")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--plot", metavar="DIR", help="write the two figures as PNGs here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    results: dict[str, Any] = {"device": str(device), "window": args.window, "starts": args.starts}
    for form, form_params in FORMS.items():
        traj = Trajectory(form_params, device)
        traj.advance(max(args.starts) + max(HORIZONS))
        errors = prediction_errors(traj, args.window, args.starts)
        local = window_local(traj, args.window, device, args.repeats)
        results[form] = {"error_ratio": errors, "window_local": local}
        print(f"\n## hnn-oscillator, Adadelta (lr {traj.optimizer.defaults['lr']}), {form}, window {args.window}, {device}")
        print(table("prediction-error ratio (median over windows ending at steps "
                    + ", ".join(map(str, args.starts)) + "; 1.0 = standing still)", errors, "{:.3f}"))
        print(table("window-local ratio (h steps / fit + jump)", local, "{:,.0f}x"))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    if args.plot:
        for path in plot(results, Path(args.plot)):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
