"""The paths that must also hold on a GPU: placement, host syncs, timing, the bench.

Every test runs on the CPU, and again on CUDA where a GPU is present (``benchmarks/gpu.sh`` runs this
file on one), so a CPU-only machine exercises the same code with no skipped cases.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from koopsweep import KoopmanAccelerator, plugins
from koopsweep.bench import BenchSettings, run_bench
from koopsweep.devices import Stopwatch
from koopsweep.training import KoopmanConfig, learning_rate, task_schedule, train

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

#: Built-in tasks that need no data folder, with parameters that keep them small.
OFFLINE_TASKS = {
    "charlm-transformer": {"d_model": 16, "n_layers": 1, "n_heads": 2, "context": 16, "eval_windows": 8},
    "mnist1d-cnn": {"channels": 8, "num_samples": 400},
    "pinn-burgers": {"hidden": 8, "depth": 2, "n_interior": 200, "n_boundary": 40, "n_eval": 100},
    "digits-mlp": {},
    "hnn-oscillator": {},
    "mnist1d-mlp": {"num_samples": 400},
    "teacher-student": {},
}


@contextlib.contextmanager
def no_host_syncs(device: torch.device):
    """Turn any synchronizing CUDA call (``.item()``, a blocking copy to the host) into an error."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def small_model(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).to(device)


def closure_for(model, acc, x, y):
    def closure():
        acc.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("stride, snapshot", [(1, "last"), (3, "mean")])
def test_recording_snapshots_never_waits_for_the_device(device, stride, snapshot):
    """Between jumps the accelerator only queues copies (and sums, for mean snapshots): no step may
    block on the GPU."""
    device = torch.device(device)
    model = small_model(device)
    acc = KoopmanAccelerator(torch.optim.Adam(model.parameters(), lr=1e-2), "dmd-global", window=8, horizon=20,
                             stride=stride, snapshot=snapshot)  # fmt: skip
    x, y = torch.randn(32, 6, device=device), torch.randn(32, 1, device=device)
    with no_host_syncs(device):
        for _ in range(acc.window * stride):
            acc.step(closure_for(model, acc, x, y))
    assert acc.snapshots_filled == acc.window and acc.jump_due
    acc.step(closure_for(model, acc, x, y))  # the jump itself may sync: it decides on a loss
    assert acc.stats.jumps_tried == 1
    assert all(p.device.type == device.type for p in model.parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["dmd-global", "dmd-layer", "dmd-hankel", "dmd-fixedpoint", "dmd-node", "extrapolate-linear"])
def test_every_variant_jumps_on_the_device_and_keeps_dtypes(device, variant):
    device = torch.device(device)
    model = small_model(device)
    before = {n: (p.dtype, p.device.type) for n, p in model.named_parameters()}
    acc = KoopmanAccelerator(torch.optim.SGD(model.parameters(), lr=0.05), variant, window=8, horizon=10, fallback="none")
    x = torch.randn(64, 6, device=device)
    y = x.sum(1, keepdim=True).tanh()
    for _ in range(3 * acc.window):
        acc.step(closure_for(model, acc, x, y))
    assert acc.stats.jumps_tried == 2
    assert {n: (p.dtype, p.device.type) for n, p in model.named_parameters()} == before
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("task", sorted(OFFLINE_TASKS))
def test_every_offline_task_trains_with_jumps_on_the_device(device, task):
    device = torch.device(device)
    task_obj = plugins.load_task(task)(**OFFLINE_TASKS[task])
    config = KoopmanConfig(variant="dmd-global", window=6, horizon=12, fallback="verify")
    optimizer = task_obj.default_optimizer
    result = train(task_obj, optimizer=optimizer, lr=learning_rate(task_obj, optimizer)[0], seed=0, device=device,
                   max_steps=30, koopman=config, eval_every=10, schedule=task_schedule(task_obj, 30, warmup=5))  # fmt: skip
    assert result.device.startswith(device.type)
    assert [c.step for c in result.curve] == [0, 10, 20, 30]
    assert all(math.isfinite(c.loss) for c in result.curve)
    assert result.stats["jumps_tried"] >= 3
    assert result.curve[-1].time_s > 0


@pytest.mark.parametrize("device", DEVICES)
def test_stopwatch_charges_queued_work_to_the_running_clock(device):
    """Kernels launched while the clock runs are waited for before it is read (CUDA is asynchronous)."""
    device = torch.device(device)
    a = torch.randn(1024, 1024, device=device)
    clock = Stopwatch(device)
    if device.type == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        clock.start()
        begin.record()
        for _ in range(50):
            a = (a @ a).tanh()
        end.record()
        elapsed = clock.pause()
        end.synchronize()
        assert elapsed >= 0.9 * begin.elapsed_time(end) / 1e3
    else:
        clock.start()
        for _ in range(5):
            a = (a @ a).tanh()
        elapsed = clock.pause()
        assert elapsed > 0
    assert clock.elapsed == elapsed  # paused: no time accrues
    assert torch.isfinite(a).all()


@pytest.mark.parametrize("device", DEVICES)
def test_bench_measures_on_the_device(device):
    settings = BenchSettings(task="digits-mlp", params={"window": 6, "horizon": 12}, optimizers=["adam"],
                             seeds=1, device=device, budget=40)  # fmt: skip
    report = run_bench(settings)
    assert report["settings"]["device"].startswith(device)
    [row] = report["results"]
    assert row["optimizer"] == "adam" and row["seed"] == 0
    assert row["baseline_time_s"] > 0 and row["koopman_time_s"] > 0
    assert row["speedup_bound"] > 0 and row["stats"]["jumps_tried"] >= 1
    assert set(report["summary"]) == {"adam"}
