"""``teacher-student``: regress a fixed random teacher MLP with a student MLP of any size (MSE).

The teacher, the inputs and therefore the targets depend only on ``teacher_seed``, never on the run
seed, so every run of a given configuration fits the same function on the same data; the run seed sets
the student's initial weights and the minibatch order. Sizes are parameters, so one task covers
scaling curves from ~10^3 to ~10^6 student parameters (see `TeacherStudent.n_parameters`).

Data: x ~ N(0, I) of ``input_dim``; y = teacher(x), standardised per output with the training set's
mean and standard deviation (so a constant predictor scores an MSE of about 1 at any size), plus
optional Gaussian label noise on the training targets only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from koopsweep._params import require
from koopsweep.tasks._common import ACTIVATIONS, CachedTask, generator, is_int, is_number, mlp, tensor_batches


def mlp_parameters(sizes: list[int]) -> int:
    """Weights plus biases of an MLP through ``sizes``."""
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=False))


class TeacherStudent(CachedTask):
    """Student MLP fitting a fixed random teacher MLP.

    Parameters:
        input_dim: input size (default 8).
        hidden, depth: the student's hidden width and number of hidden layers (default 64, 2).
        teacher_hidden, teacher_depth: the teacher's (default 32, 2).
        output_dim: outputs of both networks (default 1).
        activation: of both networks (default tanh: a smooth target).
        n_train, n_eval: training and evaluation samples (default 2048, 2048).
        batch_size: 0 (default) = all n_train samples every step (deterministic); > 0 = seeded minibatches.
        teacher_seed: seeds the teacher and the data (default 0), independent of the run seed.
        noise: standard deviation of label noise added to the (standardised) training targets (default 0).
    """

    default_budget: ClassVar[int] = 1000
    # Beyond the first four: benchmarks/tune_baselines.py teacher-student --seeds 3 --optimizers NAME,...
    # (adamw and ema-adam on a grid widened to 0.1 past the default grid's edge).
    baseline_lrs: ClassVar[dict[str, float]] = {
        "adam": 0.01, "adadelta": 1.0, "sgd": 0.1, "adagrad": 0.03,
        "lookahead-adam": 0.01, "snoo-adam": 0.01, "adamw": 0.03, "ema-adam": 0.03, "muon": 0.003,
        "nadam": 0.003, "rmsprop": 0.001, "schedulefree-adamw": 0.01,
    }  # fmt: skip
    defaults: ClassVar[dict[str, Any]] = {
        "input_dim": 8,
        "hidden": 64,
        "depth": 2,
        "teacher_hidden": 32,
        "teacher_depth": 2,
        "output_dim": 1,
        "activation": "tanh",
        "n_train": 2048,
        "n_eval": 2048,
        "batch_size": 0,
        "teacher_seed": 0,
        "noise": 0.0,
    }

    def validate_params(self) -> None:
        p = self.params
        for name in ("input_dim", "hidden", "depth", "teacher_hidden", "teacher_depth", "output_dim", "n_eval"):
            require(is_int(p[name]) and p[name] >= 1, self, name, p[name], "a positive int")
        require(is_int(p["n_train"]) and p["n_train"] >= 2, self, "n_train", p["n_train"], "an int >= 2")
        require(
            is_int(p["batch_size"]) and p["batch_size"] >= 0,
            self,
            "batch_size",
            p["batch_size"],
            "an int >= 0 (0 = full batch)",
        )
        require(
            is_int(p["teacher_seed"]) and p["teacher_seed"] >= 0, self, "teacher_seed", p["teacher_seed"], "an int >= 0"
        )
        require(is_number(p["noise"]) and p["noise"] >= 0, self, "noise", p["noise"], "a number >= 0")
        require(p["activation"] in ACTIVATIONS, self, "activation", p["activation"], f"one of {', '.join(ACTIVATIONS)}")

    def _student_sizes(self) -> list[int]:
        p = self.params
        return [p["input_dim"], *[p["hidden"]] * p["depth"], p["output_dim"]]

    def n_parameters(self) -> int:
        """Trainable parameters of the student (computed from the sizes, nothing is built)."""
        return mlp_parameters(self._student_sizes())

    def build_teacher(self) -> nn.Sequential:
        """The teacher: weights N(0, 1/fan_in), biases N(0, 0.1²), seeded by ``teacher_seed`` only."""
        p = self.params
        gen = generator(p["teacher_seed"], "teacher")
        sizes = [p["input_dim"], *[p["teacher_hidden"]] * p["teacher_depth"], p["output_dim"]]
        teacher = mlp(sizes, p["activation"], gen)
        with torch.no_grad():
            for layer in teacher:
                if isinstance(layer, nn.Linear):
                    layer.weight.normal_(0.0, 1.0 / math.sqrt(layer.in_features), generator=gen)
                    layer.bias.normal_(0.0, 0.1, generator=gen)
        return teacher.requires_grad_(False)

    def _make_data(self) -> dict[str, torch.Tensor]:
        p = self.params
        gen = generator(p["teacher_seed"], "data")
        teacher = self.build_teacher()
        x = torch.randn(p["n_train"] + p["n_eval"], p["input_dim"], generator=gen)
        with torch.no_grad():
            y = torch.cat([teacher(chunk) for chunk in x.split(65536)])
        train_y = y[: p["n_train"]]
        mean, std = train_y.mean(0), train_y.std(0).clamp_min(1e-8)
        y = (y - mean) / std
        y_train = y[: p["n_train"]]
        if p["noise"]:
            y_train = y_train + p["noise"] * torch.randn(y_train.shape, generator=gen)
        return {
            "x": x[: p["n_train"]].contiguous(),
            "y": y_train.contiguous(),
            "x_eval": x[p["n_train"] :].contiguous(),
            "y_eval": y[p["n_train"] :].contiguous(),
        }

    def build_model(self, seed: int) -> nn.Module:
        return mlp(self._student_sizes(), self.params["activation"], generator(seed, "init"))

    def batches(self, seed: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        data = self._on(device)
        return tensor_batches((data["x"], data["y"]), self.params["batch_size"], seed, torch.device(device))

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(model(x), y)

    def eval_loss(self, model: nn.Module, device: torch.device) -> float:
        data = self._on(device)
        with torch.no_grad():
            return float(F.mse_loss(model(data["x_eval"]), data["y_eval"]))
