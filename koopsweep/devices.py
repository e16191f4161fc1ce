"""Device choice and honest wall-clock timing on CPU and CUDA."""

from __future__ import annotations

import time

import torch

from koopsweep.errors import UsageError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA device when there is one, else the CPU; ``cuda:N`` is checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {name!r} asked for, but this machine has no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise UsageError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock read after it includes that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device) -> float:
    """Wall-clock seconds of ``fn()``, with the device synchronized before and after (for benchmarks)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def device_label(device: torch.device) -> str:
    """``cpu`` or the GPU's product name, for logs and result tables."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


class Stopwatch:
    """Accumulates wall-clock and process CPU time while running; pausing excludes work such as
    evaluation checkpoints.

    Every transition synchronizes the device, so asynchronous CUDA kernels are charged to the side
    of the pause that launched them. The CPU time (``time.process_time``, all of this process's
    threads) barely moves when other processes take the cores, which makes it a second figure beside
    the wall-clock one on a shared machine; on CUDA it only counts the host's side of the work.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._elapsed = 0.0
        self._cpu_elapsed = 0.0
        self._started: float | None = None
        self._cpu_started = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self._started = time.perf_counter()
        self._cpu_started = time.process_time()

    def pause(self) -> float:
        """Stop the clock; returns the wall-clock seconds run so far."""
        synchronize(self.device)
        if self._started is not None:
            self._elapsed += time.perf_counter() - self._started
            self._cpu_elapsed += time.process_time() - self._cpu_started
            self._started = None
        return self._elapsed

    @property
    def elapsed(self) -> float:
        if self._started is None:
            return self._elapsed
        synchronize(self.device)
        return self._elapsed + time.perf_counter() - self._started

    @property
    def cpu_elapsed(self) -> float:
        """Process CPU seconds while the clock ran (up to the last pause)."""
        return self._cpu_elapsed


def environment(device: torch.device) -> dict[str, str | int]:
    """Where a measurement ran, for its records: the device, the versions that shape its numbers, the host."""
    import platform

    import optuna

    return {
        "device": str(device),
        "device_name": device_label(device),
        "gpu_name": device_label(device) if device.type == "cuda" else "none",
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "optuna_version": optuna.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }
