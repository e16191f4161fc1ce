"""``mnist1d-mlp``: MNIST-1D (Greydanus 2020), generated locally and deterministically; an MLP classifier.

The data set comes from ``mnist1d.data.make_dataset(get_dataset_args())``: 4,000 training and 1,000
evaluation sequences of length 40, always the same (its own seed, 42). It is never downloaded. The
generator seeds Python's and NumPy's global random state; this task saves and restores both around it.
"""

from __future__ import annotations

import functools
import random
from typing import Any, ClassVar

import numpy as np
import torch

from koopsweep._params import require
from koopsweep.tasks._common import ClassificationTask, is_int


@functools.lru_cache(maxsize=2)
def make_mnist1d(num_samples: int = 5000) -> dict[str, np.ndarray]:
    """MNIST-1D with the reference arguments, without leaving a trace in the global random state.

    Cached per process (treat the arrays as read-only): every task instance shares one generation.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        return make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


class MNIST1DMLP(ClassificationTask):
    """An MLP on MNIST-1D, cross-entropy.

    Parameters:
        hidden: hidden widths (default [100, 100]: a 40-100-100-10 network).
        activation: relu, tanh, gelu, sigmoid or sin (default relu).
        batch_size: 100 (default) = seeded minibatches, MNIST-1D's customary stochastic setting;
            0 = the whole 4,000-sample training set every step (deterministic).
        num_samples: samples generated (default 5000, the reference set; 80% train, 20% eval).
        eval_split: "test" (default) = loss on the held-out set; "train" = on the whole training set.
    """

    default_budget: ClassVar[int] = 1000
    baseline_lrs: ClassVar[dict[str, float]] = {"adam": 0.001, "adadelta": 1.0, "sgd": 0.03, "adagrad": 0.03}
    defaults: ClassVar[dict[str, Any]] = {
        "hidden": (100, 100),
        "activation": "relu",
        "batch_size": 100,
        "num_samples": 5000,
        "eval_split": "test",
    }

    n_inputs = 40
    n_classes = 10

    def validate_params(self) -> None:
        super().validate_params()
        n = self.params["num_samples"]
        require(is_int(n) and n >= 100, self, "num_samples", n, "an int >= 100")

    def _make_data(self) -> dict[str, torch.Tensor]:
        data = make_mnist1d(self.params["num_samples"])
        return {
            "x": torch.tensor(data["x"], dtype=torch.float32),
            "y": torch.tensor(data["y"], dtype=torch.int64),
            "x_eval": torch.tensor(data["x_test"], dtype=torch.float32),
            "y_eval": torch.tensor(data["y_test"], dtype=torch.int64),
        }
