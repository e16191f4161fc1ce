"""Shared pieces of the built-in tasks: seeded MLPs, seeded batch streams, device caches.

Everything here is deterministic without touching the global random state: weights and batch orders
come from local ``torch.Generator`` objects seeded from ``(seed, purpose)``, so building a model or a
batch stream never changes what another piece of code draws from ``torch.manual_seed``.

Index streams are drawn on the CPU and shipped to the device once per epoch (or per chunk), so a
given seed yields the same batches on CPU and CUDA, and the training loop never waits on a host round
trip.
"""

from __future__ import annotations

import abc
import math
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from koopsweep._params import is_int, is_number, require
from koopsweep.tasks._base import Task

# --------------------------------------------------------------------------------------------------
# Seeds


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for ``purpose`` (e.g. ``"init"``, ``"batches"``) derived from a run ``seed``.

    Different purposes give independent streams, so the batch order does not shift when the model
    changes size, and vice versa.
    """
    entropy = [int(seed) % 2**64, zlib.crc32(purpose.encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator seeded from ``(seed, purpose)``."""
    return torch.Generator().manual_seed(derive_seed(seed, purpose))


def frozen(model: nn.Module) -> Callable[..., torch.Tensor]:
    """``model`` as a function of its inputs over detached copies of its weights (no copy of the data):
    autograd through it reaches the inputs only."""
    params: dict[str, Any] = {name: value.detach() for name, value in model.named_parameters()}
    params.update(model.named_buffers())
    return lambda *inputs: functional_call(model, params, inputs)


def frozen_loss(
    loss_of: Callable[..., torch.Tensor], model: nn.Module, points: torch.Tensor, *rest: torch.Tensor
) -> torch.Tensor:
    """``loss_of(u, points, *rest, create_graph=False)`` for a loss that differentiates ``u`` by its input
    ``points``, with ``u`` the model over frozen weights, detached (no host sync): autograd reaches the
    points only, builds no graph to the weights and touches no ``.grad``, with or without grad mode (an
    evaluation, or a check the accelerator calls under ``no_grad``)."""
    with torch.enable_grad():
        return loss_of(frozen(model), points.detach().requires_grad_(True), *rest, create_graph=False).detach()


# --------------------------------------------------------------------------------------------------
# Models


class Sine(nn.Module):
    """``sin(x)``: the activation of the paper's oscillator network."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "sin": Sine,
}


def seeded_linear(fan_in: int, fan_out: int, gen: torch.Generator) -> nn.Linear:
    """An ``nn.Linear`` with PyTorch's default initialisation, drawn from ``gen``.

    PyTorch's default (Kaiming-uniform with a=sqrt(5)) is U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the
    weights and the bias alike. The layer is created without running its own (global-RNG) init.
    """
    layer = torch.nn.utils.skip_init(nn.Linear, fan_in, fan_out)
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=gen)
        layer.bias.uniform_(-bound, bound, generator=gen)
    return layer


def mlp(sizes: Sequence[int], activation: str, gen: torch.Generator) -> nn.Sequential:
    """``Linear -> act -> ... -> Linear`` through ``sizes`` (input, hidden..., output); no final activation."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if i:
            layers.append(ACTIVATIONS[activation]())
        layers.append(seeded_linear(a, b, gen))
    return nn.Sequential(*layers)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hidden_sizes(value: Any) -> tuple[int, ...]:
    """Normalise a ``hidden`` parameter: an int is one hidden layer, a list/tuple gives each width."""
    return (int(value),) if is_int(value) else tuple(int(v) for v in value)


def valid_hidden(value: Any) -> bool:
    """True for a positive int or a non-empty list/tuple of positive ints."""
    if is_int(value):
        return value > 0
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(is_int(v) and v > 0 for v in value)


# --------------------------------------------------------------------------------------------------
# Batch streams


def device_key(device: torch.device | str) -> str:
    """A cache key that treats ``cuda`` and ``cuda:<current>`` as the same device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def index_stream(n: int, batch_size: int, seed: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Endless minibatch indices into ``range(n)``: a fresh seeded permutation per epoch, drop-last.

    A ``batch_size`` of ``n`` or more gives the whole set every step, in a shuffled order.
    """
    gen = generator(seed, "batches")
    batch_size = min(batch_size, n)
    per_epoch = n // batch_size
    while True:
        perm = torch.randperm(n, generator=gen)[: per_epoch * batch_size].to(device, non_blocking=True)
        yield from perm.split(batch_size)


def tensor_batches(
    tensors: Sequence[torch.Tensor], batch_size: int, seed: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Endless batches of ``tensors`` (already on ``device``, first dimension shared).

    ``batch_size == 0``: the same tuple of full tensors every step (no copies, no randomness).
    ``batch_size > 0``: seeded minibatches, drawn by `index_stream`.
    """
    tensors = tuple(tensors)
    if batch_size == 0:

        def full() -> Iterator[tuple[torch.Tensor, ...]]:
            while True:
                yield tensors

        return full()

    def mini() -> Iterator[tuple[torch.Tensor, ...]]:
        for idx in index_stream(tensors[0].shape[0], batch_size, seed, device):
            yield tuple(t.index_select(0, idx) for t in tensors)

    return mini()


# --------------------------------------------------------------------------------------------------
# Task bases


class CachedTask(Task):
    """A task whose data is produced lazily, once, and cached per device on the instance.

    ``_data()`` builds the CPU tensors on first use; ``_on(device)`` caches their copies on a device.
    `prepare` does both ahead of time, so a runner can load data before it starts a clock. Caches are
    dropped when the task is pickled (a worker process rebuilds them on first use).
    """

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._cpu: dict[str, torch.Tensor] | None = None
        self._device_cache: dict[str, dict[str, torch.Tensor]] = {}

    @abc.abstractmethod
    def _make_data(self) -> dict[str, torch.Tensor]:
        """The task's tensors on the CPU (e.g. ``x``, ``y``, ``x_eval``, ``y_eval``)."""

    def _data(self) -> dict[str, torch.Tensor]:
        if self._cpu is None:
            self._cpu = self._make_data()
        return self._cpu

    def _on(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        key = device_key(device)
        if key not in self._device_cache:
            data = self._data()
            self._device_cache[key] = {k: v.to(device) for k, v in data.items()}
        return self._device_cache[key]

    def prepare(self, device: torch.device | str = "cpu") -> None:
        """Load or generate the data and copy it to ``device`` now (otherwise done on first use)."""
        self._on(device)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cpu"] = None
        state["_device_cache"] = {}
        return state


class ClassificationTask(CachedTask):
    """An MLP classifier on a fixed train/eval split, cross-entropy loss.

    Subclasses provide ``_make_data()`` returning float32 ``x``/``x_eval`` (flattened) and int64
    ``y``/``y_eval``, and the input/output sizes via ``n_inputs``/``n_classes``. Parameters shared by
    all classification tasks: ``hidden``, ``activation``, ``batch_size`` and ``eval_split`` ("test":
    evaluate on the held-out set; "train": on the whole training set, which measures optimisation
    progress alone, free of overfitting).
    """

    n_inputs: int
    n_classes: int

    def validate_params(self) -> None:
        p = self.params
        require(valid_hidden(p["hidden"]), self, "hidden", p["hidden"], "a positive int or a list of positive ints")
        require(p["activation"] in ACTIVATIONS, self, "activation", p["activation"], f"one of {', '.join(ACTIVATIONS)}")
        require(
            is_int(p["batch_size"]) and p["batch_size"] >= 0,
            self,
            "batch_size",
            p["batch_size"],
            "an int >= 0 (0 = full batch)",
        )
        require(p["eval_split"] in ("test", "train"), self, "eval_split", p["eval_split"], '"test" or "train"')

    def _eval_set(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        data = self._on(device)
        if self.params["eval_split"] == "train":
            return data["x"], data["y"]
        return data["x_eval"], data["y_eval"]

    def _input_size(self) -> int:
        return self.n_inputs

    def build_model(self, seed: int) -> nn.Module:
        sizes = (self._input_size(), *hidden_sizes(self.params["hidden"]), self.n_classes)
        return mlp(sizes, self.params["activation"], generator(seed, "init"))

    def batches(self, seed: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data = self._on(device)  # eager: the data moves to the device before the first step is timed
        return tensor_batches((data["x"], data["y"]), self.params["batch_size"], seed, torch.device(device))

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def eval_loss(self, model: nn.Module, device: torch.device) -> float:
        x, y = self._eval_set(device)
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))

    def eval_accuracy(self, model: nn.Module, device: torch.device) -> float:
        """Fraction of the evaluation set classified correctly (not part of the Task contract)."""
        x, y = self._eval_set(device)
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean())
