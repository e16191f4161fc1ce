"""How much a variant's fit and jump cost, measured against the optimizer step it replaces.

    python benchmarks/variant_speed.py [--device cpu|cuda] [--json PATH] [--accuracy] [--quick]

1. A 784-256-256-10 MLP (269,322 parameters), batch 128 of random data, Adam: the median time of one
   training step, then for every variant and windows 8, 16, 32 the median time of ``fit`` and of
   ``predict(100)`` on a window of real Adam snapshots, printed as milliseconds and as multiples of one
   step (``t_fit/t_step``; the target for dmd-global at window 16 is <= 1). The steps for each ratio are
   timed interleaved with the fits, so that both see the same load on a shared machine.
2. The paper's window-local figure on a 1-10-10-2 sine network (a small regression, full batch,
   Adadelta): the time of 2,500 Adadelta steps against the time to fit dmd-global on 50 snapshots and
   jump T = 2,500 steps (target >= 1000x).
3. With ``--accuracy``: the prediction-error ratio median|pred - true| / median|true - last| of several
   dmd-global settings on the MLP's Adam trajectory (the measurement behind the defaults).

Clocks are read with ``time.perf_counter`` after ``torch.cuda.synchronize()`` on CUDA. The number of
torch threads is left at its default.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable
from typing import Any

import torch

from koopsweep.devices import time_call
from koopsweep.variants._dmd import FixedPointDMD, GlobalDMD, HankelDMD, LayerDMD
from koopsweep.variants._linear import LinearExtrapolation
from koopsweep.variants._node import NodeDMD

#: (label, class, parameters): every built-in at its defaults, plus the settings the defaults were
#: chosen against.
VARIANTS: list[tuple[str, type, dict[str, Any]]] = [
    ("dmd-global", GlobalDMD, {}),
    ("dmd-global dtype=float64", GlobalDMD, {"dtype": "float64"}),
    ("dmd-global center=none float64", GlobalDMD, {"center": "none", "dtype": "float64"}),
    ("dmd-layer", LayerDMD, {}),
    ("dmd-hankel (delays=2)", HankelDMD, {}),
    ("dmd-fixedpoint", FixedPointDMD, {}),
    ("dmd-node (svd)", NodeDMD, {}),
    ("dmd-node solver=gram", NodeDMD, {"solver": "gram"}),
    ("dmd-node q=1 solver=gram", NodeDMD, {"solver": "gram", "q": 1}),
    ("extrapolate-linear", LinearExtrapolation, {}),
]


def mlp(sizes: list[int], act: type[torch.nn.Module] = torch.nn.ReLU) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return torch.nn.Sequential(*layers)


class Sin(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


class MLPTrainer:
    """The 784-256-256-10 MLP on random data (inputs from a fixed pool, labels from a random teacher)."""

    def __init__(self, device: torch.device, batch: int = 128, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.device = device
        self.net = mlp([784, 256, 256, 10]).to(device)
        teacher = mlp([784, 256, 256, 10]).to(device)
        pool = torch.randn(8192, 784, device=device)
        with torch.no_grad():
            labels = teacher(pool).argmax(1)
        g = torch.Generator().manual_seed(seed + 1)
        self.batches = []
        for _ in range(64):
            idx = torch.randint(0, pool.shape[0], (batch,), generator=g).to(device)
            self.batches.append((pool[idx], labels[idx]))
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)
        self.params = list(self.net.parameters())
        self.i = 0

    def step(self) -> None:
        x, y = self.batches[self.i % len(self.batches)]
        self.i += 1
        self.opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(self.net(x), y).backward()
        self.opt.step()

    def window(self, m: int) -> list[torch.Tensor]:
        hist = []
        for _ in range(m):
            self.step()
            hist.append([p.detach().clone() for p in self.params])
        return [torch.stack([h[i] for h in hist]) for i in range(len(self.params))]


def time_one(trainer: MLPTrainer, variant: Any, snaps: list[torch.Tensor], repeats: int, device: torch.device) -> dict:
    """Median fit and predict(100) times of one variant on one window, and of the steps between them."""

    def fit() -> None:
        variant.fit(snaps)

    def predict() -> None:
        variant.predict(100)

    t_first = time_call(fit, device)  # warm-up (allocates the workspace)
    time_call(predict, device)
    if t_first >= 0.25:  # slow variants (dmd-node on wide layers): about two seconds of repeats
        repeats = max(2, min(repeats, int(2.0 / t_first)))
    fit_t, pred_t, step_t = [], [], []
    # Steps are timed between the fits (the snapshots stay those of the window): on a shared machine
    # the ratio then compares times taken under the same load.
    for _ in range(repeats):
        step_t.append(time_call(trainer.step, device))
        fit_t.append(time_call(fit, device))
        pred_t.append(time_call(predict, device))
    row = {
        "fit_ms": statistics.median(fit_t) * 1e3,
        "predict_ms": statistics.median(pred_t) * 1e3,
        "total_ms": statistics.median([a + b for a, b in zip(fit_t, pred_t)]) * 1e3,
        "step_ms": statistics.median(step_t) * 1e3,
        "repeats": repeats,
    }
    row["fit_over_step"] = row["fit_ms"] / row["step_ms"]
    row["total_over_step"] = row["total_ms"] / row["step_ms"]
    return row


def time_variants(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    trainer = MLPTrainer(device)
    n_params = sum(p.numel() for p in trainer.params)
    for _ in range(30):
        trainer.step()
    steps = [time_call(trainer.step, device) for _ in range(args.step_repeats)]
    t_step = statistics.median(steps)
    print(f"\n## 784-256-256-10 MLP ({n_params:,} parameters), batch 128, Adam, {device}")
    q1, _, q3 = statistics.quantiles(steps, n=4)
    print(
        f"one training step: median {t_step * 1e3:.2f} ms over {len(steps)} steps "
        f"(quartiles {q1 * 1e3:.2f} / {q3 * 1e3:.2f} ms)\n"
    )
    rows = []
    header = (
        "| variant | window | fit ms | predict(100) ms | step ms | t_fit/t_step | t_(fit+predict)/t_step | repeats |"
    )
    print(header)
    print("|" + "---|" * 8)
    for m in args.windows:
        snaps = trainer.window(m)
        for label, cls, params in VARIANTS:
            if label.startswith("dmd-node (svd)") and m > args.node_svd_max_window:
                continue
            row = time_one(trainer, cls(**params), snaps, args.repeats, device)
            row.update(variant=label, params=params, window=m)
            rows.append(row)
            print(
                f"| {label} | {m} | {row['fit_ms']:.2f} | {row['predict_ms']:.2f} | {row['step_ms']:.2f} | "
                f"{row['fit_over_step']:.2f} | {row['total_over_step']:.2f} | {row['repeats']} |",
                flush=True,
            )
    return {"n_params": n_params, "t_step_ms": t_step * 1e3, "rows": rows}


def window_local(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The paper's figure: T Adadelta steps against one fit on 50 snapshots plus a jump of T."""
    torch.manual_seed(0)
    net = mlp([1, 10, 10, 2], Sin).to(device)
    t = torch.linspace(0, 2 * torch.pi, 200, device=device).unsqueeze(1)
    target = torch.cat([torch.cos(t), torch.sin(2 * t)], 1)
    opt = torch.optim.Adadelta(net.parameters())
    params = list(net.parameters())

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(net(t), target).backward()
        opt.step()

    for _ in range(200):
        step()
    horizon = 2500

    def run() -> None:
        for _ in range(horizon):
            step()

    t_steps = statistics.median(time_call(run, device) for _ in range(args.local_repeats))
    hist = []
    for _ in range(50):
        step()
        hist.append([p.detach().clone() for p in params])
    snaps = [torch.stack([h[i] for h in hist]) for i in range(len(params))]
    variant = GlobalDMD()

    def jump() -> None:
        variant.fit(snaps)
        variant.predict(horizon)

    jump()
    t_jump = statistics.median(time_call(jump, device) for _ in range(args.repeats * 3))
    ratio = t_steps / t_jump
    n = sum(p.numel() for p in params)
    print(f"\n## Window-local ratio: 1-10-10-2 sine network ({n} parameters), Adadelta, full batch of 200, {device}")
    print(
        f"{horizon} Adadelta steps: {t_steps * 1e3:.1f} ms ({t_steps / horizon * 1e3:.3f} ms/step); "
        f"dmd-global fit on 50 snapshots + jump T={horizon}: {t_jump * 1e3:.3f} ms; ratio {ratio:,.0f}x "
        f"(target >= 1000x)"
    )
    return {
        "n_params": n,
        "horizon": horizon,
        "t_steps_ms": t_steps * 1e3,
        "t_fit_jump_ms": t_jump * 1e3,
        "ratio": ratio,
    }


def accuracy(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Prediction-error ratios of dmd-global settings on the MLP's Adam trajectory."""
    trainer = MLPTrainer(device, seed=1)
    for _ in range(200):
        trainer.step()
    starts, horizons = (31, 81, 131), (10, 50, 100)
    hist = [[p.detach().clone() for p in trainer.params]]
    for _ in range(max(starts) + max(horizons)):
        trainer.step()
        hist.append([p.detach().clone() for p in trainer.params])

    def flat(ts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([x.reshape(-1).double() for x in ts])

    settings: list[tuple[str, Callable[[], Any]]] = [("extrapolate-linear", LinearExtrapolation)]
    for center, dtypes in (
        ("increments", ("float32", "float64")),
        ("none", ("float32", "float64")),
        ("mean", ("float64",)),
    ):
        for dtype in dtypes:
            for rank in (-1, 0, 0.999, 4):
                if dtype == "float32" and center == "none" and rank != -1:
                    continue
                name = f"dmd-global center={center} dtype={dtype} rank={rank}"
                settings.append((name, lambda c=center, d=dtype, r=rank: GlobalDMD(center=c, dtype=d, rank=r)))
    settings.append(("dmd-hankel delays=2", HankelDMD))
    settings.append(("dmd-layer", LayerDMD))
    print(
        f"\n## Prediction error on the MLP's Adam trajectory ({device}): median|pred-true| / median|true-last|,"
        f" mean over {len(starts)} windows (1.0 = no better than standing still)\n"
    )
    print("| setting | window | " + " | ".join(f"h={h}" for h in horizons) + " |")
    print("|" + "---|" * (2 + len(horizons)))
    rows = []
    for m in args.windows:
        for label, make in settings:
            errs: dict[int, list[float]] = {h: [] for h in horizons}
            for t in starts:
                snaps = [torch.stack([h[i] for h in hist[t - m + 1 : t + 1]]) for i in range(len(trainer.params))]
                v = make()
                v.fit(snaps)
                last = flat(hist[t])
                for h in horizons:
                    true = flat(hist[t + h])
                    pred = flat(v.predict(h))
                    errs[h].append(float((pred - true).abs().median() / (true - last).abs().median()))
            mean = {h: sum(e) / len(e) for h, e in errs.items()}
            rows.append({"setting": label, "window": m, **{f"h{h}": v for h, v in mean.items()}})
            print(f"| {label} | {m} | " + " | ".join(f"{mean[h]:.3f}" for h in horizons) + " |", flush=True)
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    parser.add_argument("--windows", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--repeats", type=int, default=11, help="timed repeats per variant and window")
    parser.add_argument("--step-repeats", type=int, default=60)
    parser.add_argument("--local-repeats", type=int, default=3, help="repeats of the 2,500-step run")
    parser.add_argument("--node-svd-max-window", type=int, default=32, help="skip dmd-node (svd) above this window")
    parser.add_argument("--accuracy", action="store_true", help="also run the prediction-error study")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (window 8, few repeats)")
    args = parser.parse_args(argv)
    if args.quick:
        args.windows, args.repeats, args.step_repeats, args.local_repeats = [8], 2, 10, 1
    device = torch.device(args.device)
    info = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "torch": torch.__version__,
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    print("# koopsweep variant speed")
    print(", ".join(f"{k}: {v}" for k, v in info.items()))
    out: dict[str, Any] = {"info": info}
    out["mlp"] = time_variants(args, device)
    out["window_local"] = window_local(args, device)
    if args.accuracy:
        out["accuracy"] = accuracy(args, device)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
