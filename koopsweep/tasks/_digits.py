"""``digits-mlp``: scikit-learn's bundled 8x8 digits, an MLP classifier; fully offline and fast.

1,797 images, standardised per pixel with the training set's statistics, split 80/20 by a fixed
permutation (the same for every run seed). Default: 64-32-10 with ReLU, full batch (deterministic).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from koopsweep.tasks._common import ClassificationTask

#: Seed of the fixed train/eval permutation (independent of the run seed).
SPLIT_SEED = 20240601
EVAL_FRACTION = 0.2


class DigitsMLP(ClassificationTask):
    """An MLP on scikit-learn's ``load_digits()`` (1,438 train / 359 eval images), cross-entropy.

    Parameters:
        hidden: hidden widths, an int (one layer) or a list (default 32: a 64-32-10 network).
        activation: relu, tanh, gelu, sigmoid or sin (default relu).
        batch_size: 0 = the whole training set every step (default); > 0 = seeded minibatches.
        eval_split: "test" (default) = loss on the held-out set; "train" = on the whole training set.
    """

    default_budget: ClassVar[int] = 300
    # lookahead-adam and snoo-adam: benchmarks/tune_baselines.py TASK --seeds 3 --optimizers lookahead-adam,snoo-adam
    baseline_lrs: ClassVar[dict[str, float]] = {
        "adam": 0.003, "adadelta": 10.0, "sgd": 0.1, "adagrad": 0.1,
        "lookahead-adam": 0.01, "snoo-adam": 0.003, "ema-adam": 0.01, "schedulefree-adamw": 0.03,
    }  # fmt: skip
    defaults: ClassVar[dict[str, Any]] = {"hidden": 32, "activation": "relu", "batch_size": 0, "eval_split": "test"}

    n_inputs = 64
    n_classes = 10

    def _make_data(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in _digits_split().items()}


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 images (float64, 64 pixels) and labels of scikit-learn's bundled digits data set.

    Reads scikit-learn's bundled ``digits.csv.gz`` directly (importing ``sklearn.datasets`` takes
    seconds); falls back to ``sklearn.datasets.load_digits`` if the file is not where it used to be.
    """
    spec = importlib.util.find_spec("sklearn")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            if table.shape == (1797, 65):
                return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.asarray(digits.data, dtype=np.float64), np.asarray(digits.target, dtype=np.int64)


@functools.lru_cache(maxsize=1)
def _digits_split() -> dict[str, torch.Tensor]:
    """The standardised split, computed once per process."""
    x, y = load_digits_arrays()
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_eval = round(EVAL_FRACTION * len(y))
    train, held = perm[n_eval:], perm[:n_eval]
    mean = x[train].mean(0)
    std = x[train].std(0)
    std[std == 0] = 1.0  # constant border pixels
    x = (x - mean) / std
    return {
        "x": torch.from_numpy(x[train]).float(),
        "y": torch.from_numpy(y[train]),
        "x_eval": torch.from_numpy(x[held]).float(),
        "y_eval": torch.from_numpy(y[held]),
    }
