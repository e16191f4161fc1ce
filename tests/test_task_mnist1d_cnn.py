"""``mnist1d-cnn``: the Task contract, determinism, the network's shapes, training, presets, parameters.

MNIST-1D is generated locally (never downloaded); small sample counts keep generation well under a second.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytest
import torch

from koopsweep import plugins
from koopsweep.errors import ParameterError
from koopsweep.tasks._common import count_parameters
from koopsweep.tasks._mnist1d import CNN_PRESETS, MNIST1DCNN, MNIST1DMLP, ConvNet1D
from koopsweep.testing import check_task
from rng_states import global_states, same_states

CPU = torch.device("cpu")
SMALL: dict[str, Any] = {"channels": 4, "num_samples": 500}


# --------------------------------------------------------------------------------------------------
# Contract and determinism


@pytest.mark.parametrize("batch_size", [100, 0])
def test_conforms(batch_size: int) -> None:
    check_task(MNIST1DCNN, **SMALL, batch_size=batch_size)


def test_conforms_on_the_training_split() -> None:
    check_task(MNIST1DCNN, **SMALL, eval_split="train")


def test_registered() -> None:
    assert plugins.load_task("mnist1d-cnn") is MNIST1DCNN


def test_class_attributes() -> None:
    assert MNIST1DCNN.default_optimizer == "adam"
    assert MNIST1DCNN.schedule == "constant"
    assert "adam" in MNIST1DCNN.baseline_lrs
    assert MNIST1DCNN.search_space() == {}


def test_global_random_state_untouched() -> None:
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = global_states()
    task = MNIST1DCNN(channels=4, num_samples=300)  # a size no other test generates: make_dataset runs here
    model = task.build_model(3)
    batch = next(task.batches(3, CPU))
    task.loss(model, batch).backward()
    task.eval_loss(model, CPU)
    task.eval_metrics(model, CPU)
    assert same_states(before, global_states())


def test_batches_seeded_and_shaped() -> None:
    task = MNIST1DCNN(**SMALL)
    x, y = next(task.batches(0, CPU))
    assert x.shape == (100, 1, 40) and x.dtype == torch.float32
    assert y.shape == (100,) and y.dtype == torch.int64
    again, _ = next(MNIST1DCNN(**SMALL).batches(0, CPU))
    other, _ = next(task.batches(1, CPU))
    assert torch.equal(x, again) and not torch.equal(x, other)
    full_x, full_y = next(MNIST1DCNN(**SMALL, batch_size=0).batches(0, CPU))
    assert full_x.shape == (400, 1, 40) and full_y.shape == (400,)


def test_network_follows_the_reference_cnn() -> None:
    model = ConvNet1D(25, 40, 10, torch.Generator().manual_seed(0))
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv1d)]
    assert [(c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [(5, 2, 1), (3, 2, 1), (3, 2, 1)]
    # Feature maps of lengths 19, 10, 5: the classifier sees 25 * 5 = 125 inputs, as in Greydanus's ConvBase.
    assert model.classifier.in_features == 125
    assert model(torch.zeros(7, 1, 40)).shape == (7, 10)
    # PyTorch's default bound 1/sqrt(fan_in), fan_in = in_channels * kernel.
    assert float(convs[1].weight.detach().abs().max()) <= 1 / math.sqrt(25 * 3)


def test_eval_metrics_accuracy() -> None:
    task = MNIST1DCNN(**SMALL)
    model = task.build_model(0)
    metrics = task.eval_metrics(model, CPU)
    assert set(metrics) == {"accuracy"}
    assert isinstance(metrics["accuracy"], float) and 0 <= metrics["accuracy"] <= 1
    assert metrics["accuracy"] == task.eval_accuracy(model, CPU)


# --------------------------------------------------------------------------------------------------
# Training


def test_adam_lowers_eval_loss_and_beats_chance(one_thread: None) -> None:
    task = MNIST1DCNN(channels=16, num_samples=1000)
    model = task.build_model(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    stream = task.batches(0, CPU)
    before = task.eval_loss(model, CPU)
    for _ in range(200):
        optimizer.zero_grad(set_to_none=True)
        task.loss(model, next(stream)).backward()
        optimizer.step()
    assert task.eval_loss(model, CPU) < before - 0.3
    assert task.eval_metrics(model, CPU)["accuracy"] > 0.3  # chance is 0.1


# --------------------------------------------------------------------------------------------------
# Presets and parameters


def test_size_presets() -> None:
    cpu, gpu = MNIST1DCNN(), MNIST1DCNN(size="gpu")
    assert count_parameters(gpu.build_model(0)) > 5 * count_parameters(cpu.build_model(0))
    assert {name: gpu.knob(name) for name in CNN_PRESETS["gpu"]} == CNN_PRESETS["gpu"]
    assert gpu.knob("num_samples") > 2 * cpu.knob("num_samples")


def test_explicit_knob_overrides_preset() -> None:
    task = MNIST1DCNN(size="gpu", channels=4, num_samples=500)
    assert task.knob("channels") == 4 and task.knob("num_samples") == 500
    model = task.build_model(0)
    assert count_parameters(model) == count_parameters(MNIST1DCNN(channels=4).build_model(0))
    assert task._on(CPU)["x"].shape == (400, 1, 40)


def test_mlp_unchanged() -> None:
    task = MNIST1DMLP()
    assert task.params["hidden"] == (100, 100) and task.params["num_samples"] == 5000
    assert count_parameters(task.build_model(0)) == 40 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10


@pytest.mark.parametrize(
    "params",
    [
        {"size": "tpu"},
        {"channels": 0},
        {"channels": 2.0},
        {"channels": True},
        {"batch_size": -1},
        {"batch_size": 1.5},
        {"num_samples": 99},
        {"num_samples": "5000"},
        {"eval_split": "valid"},
        {"hidden": 100},
    ],
)
def test_bad_parameters(params: dict[str, Any]) -> None:
    with pytest.raises(ParameterError) as info:
        MNIST1DCNN(**params)
    message = str(info.value)
    assert "\n" not in message and next(iter(params)) in message
