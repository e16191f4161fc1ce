"""koopsweep's plain built-in optimizers: ``torch.optim`` classes with torch's own defaults.

``adam``, ``adamw``, ``nadam``, ``rmsprop``, ``adagrad``, ``adadelta`` and ``sgd`` (with momentum 0.9, the
usual tuned-SGD baseline, where torch's default is none). Each parameter keeps torch's name and default,
except that Adam-style betas are two parameters (``beta1``, ``beta2``) so that a spec can pin or search
one of them. Their search spaces are empty: the learning rate, tuned per task, is what matters, and a
sweep that also tuned an inner optimizer's betas would credit the accelerator with that tuning.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from koopsweep._params import is_number, require
from koopsweep.optimizers._base import OptimizerPlugin

if TYPE_CHECKING:
    import torch


#: What each shared parameter name may hold, and how to say so.
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "beta1": (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "beta2": (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "momentum": (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "alpha": (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "rho": (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "eps": (lambda v: is_number(v) and v > 0, "a number > 0"),
    "weight_decay": (lambda v: is_number(v) and v >= 0, "a number >= 0"),
    "lr_decay": (lambda v: is_number(v) and v >= 0, "a number >= 0"),
    "momentum_decay": (lambda v: is_number(v) and v >= 0, "a number >= 0"),
    "nesterov": (lambda v: isinstance(v, bool), "true or false"),
}


def check_params(plugin: OptimizerPlugin) -> None:
    """Validate every parameter of ``plugin`` that `_CHECKS` knows (shared by the built-ins)."""
    for name, value in plugin.params.items():
        if name in _CHECKS:
            ok, expected = _CHECKS[name]
            require(ok(value), plugin, name, value, expected)


def torch_kwargs(params: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of a ``torch.optim`` constructor: ``beta1``/``beta2`` become ``betas``."""
    kwargs = dict(params)
    if "beta1" in kwargs:
        kwargs["betas"] = (float(kwargs.pop("beta1")), float(kwargs.pop("beta2")))
    return kwargs


class TorchOptimizer(OptimizerPlugin):
    """A ``torch.optim`` class built with the plugin's parameters as keyword arguments."""

    #: The class's name in ``torch.optim`` (resolved at build time: listing plugins imports no torch).
    torch_class: ClassVar[str]

    def validate_params(self) -> None:
        check_params(self)

    def torch_params(self) -> dict[str, Any]:
        """The parameters that go to the ``torch.optim`` class (a subclass adding its own keeps them out)."""
        return self.params

    def build(self, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        import torch

        return getattr(torch.optim, self.torch_class)(params, lr=lr, **torch_kwargs(self.torch_params()))


class Adam(TorchOptimizer):
    """``torch.optim.Adam``."""

    torch_class = "Adam"
    default_lr = 1e-3
    defaults: ClassVar[dict[str, Any]] = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}


class AdamW(TorchOptimizer):
    """``torch.optim.AdamW`` (decoupled weight decay, torch's default 0.01)."""

    torch_class = "AdamW"
    default_lr = 1e-3
    defaults: ClassVar[dict[str, Any]] = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01}


class NAdam(TorchOptimizer):
    """``torch.optim.NAdam`` (Adam with Nesterov momentum)."""

    torch_class = "NAdam"
    default_lr = 2e-3
    defaults: ClassVar[dict[str, Any]] = {
        "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "momentum_decay": 4e-3,
    }  # fmt: skip


class RMSprop(TorchOptimizer):
    """``torch.optim.RMSprop``."""

    torch_class = "RMSprop"
    default_lr = 1e-2
    defaults: ClassVar[dict[str, Any]] = {"alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0}


class Adagrad(TorchOptimizer):
    """``torch.optim.Adagrad``."""

    torch_class = "Adagrad"
    default_lr = 1e-2
    defaults: ClassVar[dict[str, Any]] = {"lr_decay": 0.0, "weight_decay": 0.0, "eps": 1e-10}


class Adadelta(TorchOptimizer):
    """``torch.optim.Adadelta`` (the optimizer of Dogra & Redman's experiments)."""

    torch_class = "Adadelta"
    default_lr = 1.0
    defaults: ClassVar[dict[str, Any]] = {"rho": 0.9, "eps": 1e-6, "weight_decay": 0.0}


class SGD(TorchOptimizer):
    """``torch.optim.SGD`` with momentum 0.9 by default (torch's default is none)."""

    torch_class = "SGD"
    default_lr = 1e-2
    defaults: ClassVar[dict[str, Any]] = {"momentum": 0.9, "nesterov": False, "weight_decay": 0.0}

    def validate_params(self) -> None:
        super().validate_params()
        require(
            not self.params["nesterov"] or self.params["momentum"] > 0,
            self, "nesterov", True, "false when momentum is 0 (Nesterov momentum needs momentum > 0)",
        )  # fmt: skip
