"""How fit cost, snapshot memory and the end-to-end speedup move with the student's size on ``teacher-student``.

    OMP_NUM_THREADS=1 python benchmarks/scaling.py --out DIR [--figures docs/figures] [--skip-bench] [--quick]

1. **Cost per size** (hidden 32, 100, 320, 1024 at depth 2, input 8: about 1.4e3, 1.1e4, 1.1e5, 1.1e6
   student parameters). The student trains with Adam at the task's tuned rate on the task's full batch
   (2,048 samples, the task's default, so one step is one full-batch gradient and the cost of a step
   is a property of the size). For windows 8, 16, 32 and the variants dmd-global, dmd-layer,
   extrapolate-linear and dmd-node, on a window of that run's real snapshots: the median time of
   ``fit`` and of ``predict(100)``, each as a multiple of one Adam step timed interleaved with them
   (``variant_speed.time_one``: the same load for both sides of the ratio). dmd-node is skipped at a
   size and all larger windows once one fit takes longer than ``--node-max-s``. Memory: the snapshot
   window (window x parameters x 4 bytes), and the bytes of the tensors a real `KoopmanAccelerator`
   preallocates for its snapshots and a fitted dmd-global keeps as its reused scratch buffer.
2. **Speedup per size** (hidden 32, 100, 320): ``koopsweep.bench.run_bench`` with dmd-global, window
   8, horizon 40, the adaptive rule, against Adam and Adadelta, 3 seeds, CPU. The largest size runs a
   reduced budget (``--big-budget``, default 500 steps instead of the task's 1,000).

Every part writes its JSON into ``--out`` and is skipped when that file is already there, so a rerun
resumes; the tables and figures are then drawn from the JSONs. One torch thread: on a shared 2-core
machine two threads per process spin against each other.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling variant_speed module

from variant_speed import MLPTrainer, time_one  # noqa: E402

from koopsweep.accelerator import KoopmanAccelerator  # noqa: E402
from koopsweep.bench import BenchSettings, run_bench  # noqa: E402
from koopsweep.devices import time_call  # noqa: E402
from koopsweep.measure import quartiles  # noqa: E402
from koopsweep.plugins import load_task, load_variant  # noqa: E402

TASK = "teacher-student"
COST_HIDDEN = [32, 100, 320, 1024]
BENCH_HIDDEN = [32, 100, 320]
WINDOWS = [8, 16, 32]
VARIANTS = ["dmd-global", "dmd-layer", "extrapolate-linear", "dmd-node"]
DEVICE = torch.device("cpu")


class StudentTrainer(MLPTrainer):
    """The task's own student, data and loss, trained by Adam at the task's tuned rate (full batch).
    Only the model and the step differ from variant_speed's trainer; its ``window`` records snapshots."""

    def __init__(self, task: Any, seed: int = 0) -> None:
        # Not super().__init__(): that builds variant_speed's own MLP and data.
        self.task = task
        self.model = task.build_model(seed).to(DEVICE)
        self.params = list(self.model.parameters())
        self.batches = task.batches(seed, DEVICE)
        self.opt = torch.optim.Adam(self.params, lr=type(task).baseline_lrs["adam"])

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.task.loss(self.model, next(self.batches)).backward()
        self.opt.step()


def memory_row(trainer: StudentTrainer, snaps: list[torch.Tensor], window: int, n_params: int) -> dict[str, Any]:
    """Snapshot memory: the formula, and the bytes of the tensors a real accelerator and a fitted
    dmd-global keep (counted from the tensors themselves: on this allocator the process's resident set
    did not move when they were made, freed pages of the earlier windows were reused)."""
    acc = KoopmanAccelerator(trainer.opt, "dmd-global", window=window, horizon=40, fallback="none")
    buffers = sum(b.numel() * b.element_size() for b in acc._buffers)
    variant = load_variant("dmd-global")()
    variant.fit(snaps)
    # The scratch rows of increments that GlobalDMD keeps between fits, so that no fit page-faults.
    scratch = sum(t.numel() * t.element_size() for t in variant._workspace.values() if isinstance(t, torch.Tensor))
    return {
        "snapshot_bytes": window * n_params * 4,
        "accelerator_buffer_bytes": buffers,
        "dmd_global_scratch_bytes": scratch,
    }


def measure_size(
    hidden: int,
    *,
    depth: int = 2,
    input_dim: int = 8,
    windows: list[int] = WINDOWS,
    variants: list[str] = VARIANTS,
    repeats: int = 7,
    step_repeats: int = 30,
    warmup_steps: int = 30,
    node_max_s: float = 10.0,
) -> dict[str, Any]:
    """Step time, fit/predict cost per variant and window, and snapshot memory at one student size."""
    task = load_task(TASK)(hidden=hidden, depth=depth, input_dim=input_dim)
    n_params = task.n_parameters()
    trainer = StudentTrainer(task)
    assert sum(p.numel() for p in trainer.params) == n_params
    for _ in range(warmup_steps):  # past Adam's first steps, as the accelerator would see them
        trainer.step()
    steps = [time_call(trainer.step, DEVICE) for _ in range(step_repeats)]
    rows, memory = [], []
    node_too_slow = False
    for m in windows:
        snaps = trainer.window(m)
        for name in variants:
            if name == "dmd-node" and node_too_slow:
                continue
            variant = load_variant(name)()
            started = time.perf_counter()
            row = time_one(trainer, variant, snaps, repeats, DEVICE)
            row.update(variant=name, window=m, seconds=time.perf_counter() - started)
            rows.append(row)
            if name == "dmd-node" and row["fit_ms"] / 1e3 > node_max_s:
                node_too_slow = True  # the larger windows only cost more
        # After the timed fits, so that the libraries' first-use allocations are not counted as memory.
        memory.append({"window": m, **memory_row(trainer, snaps, m, n_params)})
    q1, med, q3 = statistics.quantiles(steps, n=4)
    return {
        "hidden": hidden,
        "depth": depth,
        "input_dim": input_dim,
        "n_params": n_params,
        "batch": "full (n_train = 2048)",
        "step_ms": statistics.median(steps) * 1e3,
        "step_quartiles_ms": [q1 * 1e3, q3 * 1e3],
        "rows": rows,
        "memory": memory,
        "node_skipped_after": node_too_slow,
    }


def bench_size(hidden: int, seeds: int, budget: int | None) -> dict[str, Any]:
    params = {"window": 8, "horizon": 40, "fallback": "adaptive", "task.hidden": hidden}
    settings = BenchSettings(task=TASK, variant="dmd-global", params=params, optimizers=["adam", "adadelta"],
                             seeds=seeds, device="cpu", budget=budget)  # fmt: skip
    report = run_bench(settings)
    report["n_params"] = load_task(TASK)(hidden=hidden).n_parameters()
    return report


def cached(path: Path, make: Any) -> dict[str, Any]:
    """The JSON at ``path``, or ``make()`` written there (delete the file to re-measure)."""
    if path.exists():
        print(f"{path.name}: already measured", flush=True)
        return json.loads(path.read_text())
    started = time.perf_counter()
    data = make()
    data["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    path.write_text(json.dumps(data, indent=1, default=str))
    print(f"{path.name}: {time.perf_counter() - started:.0f} s (load {' '.join(data['load_after'])})", flush=True)
    return data


# -- tables and figures ----------------------------------------------------------------------------------


def _mib(b: float) -> str:
    return f"{b / 2**20:.2f}" if abs(b) < 10 * 2**20 else f"{b / 2**20:.1f}"


def cost_tables(costs: list[dict[str, Any]]) -> str:
    # "step ms": steps timed back to back; "interleaved step ms": the steps timed between the fits, the
    # denominator of the ratios (same load as the fits, but also the caches the fits left).
    out = ["| parameters | hidden | step ms (quartiles) | variant | window | fit ms | predict(100) ms | "
           "interleaved step ms | t_fit/t_step | t_(fit+predict)/t_step |",
           "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in costs:
        q = c["step_quartiles_ms"]
        for r in c["rows"]:
            out.append(
                f"| {c['n_params']:,} | {c['hidden']} | {c['step_ms']:.2f} ({q[0]:.2f}-{q[1]:.2f}) | {r['variant']} | "
                f"{r['window']} | {r['fit_ms']:.2f} | {r['predict_ms']:.2f} | {r['step_ms']:.2f} | {r['fit_over_step']:.3f} | "
                f"{r['total_over_step']:.3f} |"
            )
    out += ["", "| parameters | window | snapshots (window x P x 4 B) MiB | accelerator buffers MiB | "
            "dmd-global scratch kept MiB | total MiB |", "|---|---|---|---|---|---|"]  # fmt: skip
    for c in costs:
        for mem in c["memory"]:
            total = mem["accelerator_buffer_bytes"] + mem["dmd_global_scratch_bytes"]
            out.append(
                f"| {c['n_params']:,} | {mem['window']} | {_mib(mem['snapshot_bytes'])} | "
                f"{_mib(mem['accelerator_buffer_bytes'])} | {_mib(mem['dmd_global_scratch_bytes'])} | {_mib(total)} |"
            )
    return "\n".join(out)


def _speedups(report: dict[str, Any], optimizer: str) -> list[float]:
    return [r["speedup_bound"] for r in report["results"] if r["optimizer"] == optimizer]


def bench_table(benches: list[dict[str, Any]]) -> str:
    out = ["| parameters | hidden | budget | vs | median speedup (quartiles) | per seed | reached | step speedup | "
           "accepted | fit/step | s/step (baseline) | baseline s | fit s | verify s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for b in benches:
        hidden = b["settings"]["task_params"]["hidden"]
        for opt, s in b["summary"].items():
            sp = _speedups(b, opt)
            rows = [r for r in b["results"] if r["optimizer"] == opt]
            per_step = statistics.median(r["seconds_per_step"] for r in rows)
            # Seconds the whole accelerated run spent fitting and verifying jumps, against the baseline's run.
            base_s = statistics.median(r["baseline_time_s"] for r in rows)
            fit_s = statistics.median(r["stats"]["fit_time_s"] + r["stats"]["predict_time_s"] for r in rows)
            verify_s = statistics.median(r["stats"]["verify_time_s"] for r in rows)
            q1, q3 = quartiles(sp)
            out.append(
                f"| {b['n_params']:,} | {hidden} | {b['settings']['budget']} | {opt} | {s['median_speedup']:.2f}x "
                f"({q1:.2f}-{q3:.2f}) | {', '.join(f'{x:.2f}' for x in sp)} | {s['reached_fraction']:.0%} | "
                f"{s['median_step_speedup']:.2f}x | {s['median_acceptance_rate']:.0%} | "
                f"{s['median_fit_over_step']:.2f} | {per_step * 1e3:.2f} ms | {base_s:.1f} | {fit_s:.2f} | {verify_s:.2f} |"
            )
    return "\n".join(out)


def draw(costs: list[dict[str, Any]], benches: list[dict[str, Any]], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    if costs:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        colors = dict(zip(VARIANTS, ("tab:blue", "tab:orange", "tab:gray", "tab:green"), strict=True))
        styles = dict(zip(WINDOWS, ("-", "--", ":"), strict=True))
        for name in VARIANTS:
            for m in WINDOWS:
                pts = [(c["n_params"], r["fit_over_step"]) for c in costs for r in c["rows"]
                       if r["variant"] == name and r["window"] == m]  # fmt: skip
                if pts:
                    x, y = zip(*pts, strict=True)
                    ax.plot(x, y, styles[m], marker="o", ms=3, color=colors[name], label=f"{name} w={m}")
        ax.axhline(1.0, color="black", lw=0.6)
        ax.set(xscale="log", yscale="log", xlabel="student parameters", ylabel="t_fit / t_step (one Adam step)",
               title="teacher-student: fit cost in Adam steps (full batch, 1 thread)")  # fmt: skip
        ax.legend(fontsize=7, ncol=2)
        fig.subplots_adjust(left=0.11, right=0.98, top=0.92, bottom=0.11)
        paths.append(folder / "scaling-fit-over-step.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    if benches:
        fig, ax = plt.subplots(figsize=(6, 4))
        for opt, color, shift in (("adam", "tab:red", 0.95), ("adadelta", "tab:purple", 1.05)):
            x, y, lo, hi = [], [], [], []
            for b in benches:
                sp = _speedups(b, opt)
                q1, q3 = quartiles(sp)
                med = statistics.median(sp)
                x.append(b["n_params"] * shift)
                y.append(med)
                lo.append(med - q1)
                hi.append(q3 - med)
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, color=color, label=f"vs {opt}")
        ax.axhline(1.0, color="black", lw=0.6)
        ax.set(xscale="log", xlabel="student parameters", ylabel="wall-clock speedup to target (median, quartiles)",
               title="dmd-global w=8 h=40 adaptive, 3 seeds")  # fmt: skip
        ax.legend()
        fig.subplots_adjust(left=0.13, right=0.97, top=0.91, bottom=0.13)
        paths.append(folder / "scaling-speedup.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON results (resumable)")
    parser.add_argument("--figures", type=Path, help="write the PNG figures here")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--big-budget", type=int, default=500, help="bench budget at the largest bench size")
    parser.add_argument("--repeats", type=int, default=7, help="timed fits per variant and window")
    parser.add_argument("--node-max-s", type=float, default=10.0, help="skip dmd-node at larger windows past this")
    parser.add_argument("--skip-bench", action="store_true", help="only the cost and memory part")
    parser.add_argument("--quick", action="store_true", help="smoke run: smallest size, window 8, 2 repeats")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    cost_hidden, windows = (COST_HIDDEN[:1], [8]) if args.quick else (COST_HIDDEN, WINDOWS)
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }
    print(", ".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    costs = []
    for h in cost_hidden:
        name = f"cost-h{h}{'-quick' if args.quick else ''}.json"
        costs.append(cached(args.out / name, lambda h=h: measure_size(
            h, windows=windows, repeats=2 if args.quick else args.repeats, node_max_s=args.node_max_s)))  # fmt: skip
    benches = []
    if not args.skip_bench and not args.quick:
        for h in BENCH_HIDDEN:
            budget = args.big_budget if h == BENCH_HIDDEN[-1] else None
            benches.append(cached(args.out / f"bench-h{h}.json", lambda h=h, b=budget: bench_size(h, args.seeds, b)))
    info["load_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    (args.out / "info.json").write_text(json.dumps(info, indent=1))
    print("\n" + cost_tables(costs))
    if benches:
        print("\n" + bench_table(benches))
    if args.figures:
        for p in draw(costs, benches, args.figures):
            print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
