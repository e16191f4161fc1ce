"""What MLflow tracking adds to a trial's wall-clock (target: at most 2%).

    python benchmarks/tracking_overhead.py [--spec studies/quickstart.toml] [--repeats 5] [--http] [--json PATH]

Runs the same trial (one fixed configuration of the spec, so every repeat does the same work) through
koopsweep's real `Objective`, with tracking off and on: a local SQLite MLflow store, and with ``--http``
also an `mlflow server` on loopback. Each repeat runs every mode once, in a rotated order, so that a
drift in the machine's load spreads over all modes.

Two figures per mode:
- **tracking s**: the wall-clock spent inside koopsweep's tracking calls during the trial (starting
  and ending its run, params, metrics, curves, baseline runs, the eigenvalues file), timed directly. The overhead is
  the median over tracked trials of tracking s / (trial s - tracking s): both parts of one trial, timed
  under the same load, so it does not drown in the load's drift between trials.
- **end to end**: the median of the paired differences (tracked trial - untracked trial of the same
  repeat) over the untracked median. On a shared machine this moves by several percent either way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

from koopsweep import plugins
from koopsweep.devices import resolve_device
from koopsweep.spec import load_spec
from koopsweep.sweep import Objective
from koopsweep.tracking import Tracker, start_ui_server, stop_server, use_http_defaults

REPO = Path(__file__).resolve().parents[1]


def fixed_params(spec, variant: str) -> dict:
    """One configuration: the variant's and the rule's defaults, the middle of the shared ranges."""
    variant_cls = plugins.load_variant(variant)
    params: dict = {"variant": variant}
    params.update({f"{variant}.{k}": variant_cls.parameters()[k] for k in variant_cls.search_space()})
    for name, field in spec.search.items():
        if field.distribution() is None:
            continue
        if field.choices:
            params[name] = field.choices[0]
        else:
            middle = (field.low * field.high) ** 0.5 if field.log else (field.low + field.high) / 2
            if isinstance(field.low, int) and isinstance(field.high, int):
                step = field.step or 1
                middle = field.low + step * round((middle - field.low) / step)
            params[name] = middle
    rule = params.get("fallback", spec.search["fallback"].fixed)
    rule_cls = plugins.load_fallback(rule)
    params.update({f"{rule}.{k}": rule_cls.defaults[k] for k in rule_cls.search_space()})
    return params


class TimedTracker:
    """Times a tracker's `guarded` calls per action; outermost ones (the trial's run, the whole of
    `log_trial`) make the total, the nested ones inside `log_trial` show where it goes."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker, self.depth = tracker, 0
        self.spent: dict[str, float] = {}  # outermost actions
        self.inner: dict[str, float] = {}  # actions nested in them
        self._guarded = tracker.guarded
        tracker.guarded = self.guarded  # log_trial reads tracker.guarded: it gets this one too

    def guarded(self, action, fn, *args, **kwargs):
        book = self.inner if self.depth else self.spent
        self.depth += 1
        start = time.perf_counter()
        try:
            return self._guarded(action, fn, *args, **kwargs)
        finally:
            self.depth -= 1
            book[action] = book.get(action, 0.0) + time.perf_counter() - start

    def take(self) -> tuple[dict[str, float], dict[str, float]]:
        taken = (self.spent, self.inner)
        self.spent, self.inner = {}, {}
        return taken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(REPO / "studies" / "quickstart.toml"))
    parser.add_argument("--variant", default="dmd-global")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--http", action="store_true", help="also log to an `mlflow server` on loopback")
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    use_http_defaults()
    spec = load_spec(args.spec)
    device = resolve_device(args.device)
    params = fixed_params(spec, args.variant)
    folder = Path(tempfile.mkdtemp(prefix="koopsweep-overhead-"))
    trackers: dict[str, TimedTracker | None] = {"off": None}
    trackers["sqlite"] = TimedTracker(Tracker(f"sqlite:///{folder / 'mlflow.db'}", spec.name))
    server = None
    if args.http:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = start_ui_server(
            f"sqlite:///{folder / 'srv.db'}", port=port, default_artifact_root=str(folder / "artifacts"), timeout=180
        )
        trackers["http"] = TimedTracker(Tracker(f"http://127.0.0.1:{port}", spec.name))
    objectives = {}
    for mode, timed in trackers.items():
        parent = timed.tracker.start_study_run(spec.name, spec.dumps(), {"task": spec.task}) if timed else None
        objectives[mode] = Objective(spec, device, timed.tracker if timed else None, parent)

    modes = list(trackers)
    walls: dict[str, list[float]] = {m: [] for m in modes}
    spent: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    inner: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    print(f"{spec.name}: {spec.task}, budget {objectives['off'].budget}, {params}", file=sys.stderr)
    try:
        # One untracked warm-up trial: first-use costs (data, kernels, imports) are nobody's overhead.
        objectives["off"](optuna.trial.FixedTrial(params, number=0))
        for repeat in range(args.repeats):
            order = modes[repeat % len(modes) :] + modes[: repeat % len(modes)]
            for mode in order:
                start = time.perf_counter()
                objectives[mode](optuna.trial.FixedTrial(params, number=repeat))
                walls[mode].append(time.perf_counter() - start)
                outer, nested = trackers[mode].take() if trackers[mode] else ({}, {})
                spent[mode].append(outer)
                inner[mode].append(nested)
            print(f"repeat {repeat + 1}/{args.repeats}: " + ", ".join(f"{m} {walls[m][-1]:.2f} s" for m in modes),
                  file=sys.stderr)  # fmt: skip
    finally:
        if server is not None:
            stop_server(server)

    rows = []
    for mode in modes:
        tracking = [sum(s.values()) for s in spent[mode]]
        own = [t / (w - t) for t, w in zip(tracking, walls[mode])]
        paired = [(w - off) / off for w, off in zip(walls[mode], walls["off"])]
        actions: dict[str, float] = {}
        for outer, nested in zip(spent[mode], inner[mode]):
            # "log the trial" less its tracking calls: building summaries.
            outer = {**outer, "log the trial (rest: summaries)": outer.get("log the trial", 0.0) - sum(nested.values())}
            outer.pop("log the trial", None)
            for action, seconds in {**outer, **nested}.items():
                actions[action] = actions.get(action, 0.0) + seconds / len(spent[mode])
        rows.append({
            "mode": mode,
            "trials": len(walls[mode]),
            "median_trial_s": statistics.median(walls[mode]),
            "median_tracking_s": statistics.median(tracking),
            "overhead_pct": 100 * statistics.median(own),
            "end_to_end_pct": 100 * statistics.median(paired) if mode != "off" else 0.0,
            "tracking_s_by_action": actions,
        })  # fmt: skip
    print("| mode | trials | median trial s | median tracking s | overhead (tracking / rest of trial) | end to end (paired) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['trials']} | {r['median_trial_s']:.2f} | {r['median_tracking_s']:.3f} | "
              f"{r['overhead_pct']:.2f}% | {r['end_to_end_pct']:+.1f}% |")  # fmt: skip
    for r in rows[1:]:
        parts = ", ".join(f"{a} {s * 1000:.0f} ms" for a, s in sorted(r["tracking_s_by_action"].items(), key=lambda x: -x[1]))
        print(f"\n{r['mode']}, mean per trial: {parts}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"params": params, "rows": rows, "walls": walls}, indent=2, default=str))


if __name__ == "__main__":
    main()
