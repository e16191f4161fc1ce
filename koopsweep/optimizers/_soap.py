"""``soap``: SOAP (Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam") from the
``pytorch-optimizer`` package.

SOAP runs Adam in the eigenbasis of Shampoo's preconditioner (refreshed every
``precondition_frequency`` steps), a second-order-flavoured method that the PINN literature reports
to train physics-informed networks well where Adam stalls. Taken from ``pytorch-optimizer`` (maintained,
with the authors' algorithm) rather than written here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from koopsweep._params import is_int, require
from koopsweep.optimizers._base import OptimizerPlugin
from koopsweep.optimizers._torch import check_params

if TYPE_CHECKING:
    import torch


class SOAP(OptimizerPlugin):
    """``pytorch_optimizer.SOAP`` with the package's defaults: ``beta1`` = ``beta2`` = 0.95, ``eps``,
    ``weight_decay`` (0.01, decoupled), ``precondition_frequency`` (10 steps) and ``max_precondition_dim``
    (10,000: larger dimensions are left unrotated)."""

    default_lr = 3e-3
    defaults: ClassVar[dict[str, Any]] = {
        "beta1": 0.95, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.01,
        "precondition_frequency": 10, "max_precondition_dim": 10000,
    }  # fmt: skip

    def validate_params(self) -> None:
        check_params(self)
        for name in ("precondition_frequency", "max_precondition_dim"):
            value = self.params[name]
            require(is_int(value) and value >= 1, self, name, value, "an int >= 1")

    def build(self, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        import pytorch_optimizer

        p = self.params
        return pytorch_optimizer.SOAP(
            params, lr=lr, betas=(p["beta1"], p["beta2"]), eps=p["eps"], weight_decay=p["weight_decay"],
            precondition_frequency=p["precondition_frequency"], max_precondition_dim=p["max_precondition_dim"],
        )  # fmt: skip
