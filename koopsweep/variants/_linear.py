"""Linear extrapolation: the non-Koopman control every Koopman variant has to beat.

``predict(h) = x_last + h * (x_last - x_{last-k}) / k``: the mean velocity over the last ``k`` steps,
continued for ``h`` steps. ``lookback = k`` (``0``: the whole window, ``k = m - 1``).
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, ClassVar

import torch
from optuna.distributions import CategoricalDistribution

from koopsweep._params import require
from koopsweep.variants._base import Variant
from koopsweep.variants._dmd import check_horizon, check_snapshots


class LinearExtrapolation(Variant):
    """Continue the recent mean velocity (not Koopman; a control). Its ``eigenvalues`` are None."""

    exact: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {"lookback": 0}

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {"lookback": CategoricalDistribution((0, 1, 2, 4))}

    def validate_params(self) -> None:
        k = self.params["lookback"]
        require(
            isinstance(k, Integral) and not isinstance(k, bool) and k >= 0,
            self,
            "lookback",
            k,
            "an int >= 1 (steps to average over) or 0 (the whole window)",
        )
        self.params["lookback"] = int(k)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._last: list[torch.Tensor] = []
        self._velocity: list[torch.Tensor] = []

    def min_window(self) -> int:
        return max(2, self.params["lookback"] + 1)

    def fit(self, snapshots: list[torch.Tensor]) -> None:
        window = check_snapshots(self, snapshots)
        k = self.params["lookback"] or window - 1
        self._last = [s[-1] for s in snapshots]
        self._velocity = [(s[-1] - s[-1 - k]) / k for s in snapshots]

    def predict(self, steps: int) -> list[torch.Tensor]:
        h = check_horizon(self, steps)
        if not self._last:
            raise RuntimeError(f"{type(self).__name__}.predict called before fit")
        return [torch.add(x, v, alpha=h) for x, v in zip(self._last, self._velocity)]
