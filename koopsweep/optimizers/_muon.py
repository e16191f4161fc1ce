"""``muon``: torch's Muon on the matrix parameters, AdamW on the rest, stepped as one optimizer.

``torch.optim.Muon`` only takes 2-D parameters (it orthogonalises each update matrix by Newton-Schulz
iterations); biases, norms and convolution kernels go to ``torch.optim.AdamW``. Both run at one learning
rate: Muon's ``adjust_lr_fn="match_rms_adamw"`` (the default here) scales each matrix's step so that its
RMS matches AdamW's at the same rate, which is why one tuned rate per task suffices. Embedding and output
matrices are 2-D too and go to Muon here (the plugin only sees parameters, not their roles).

`CombinedOptimizer` is written here because neither torch nor a well-kept package offers a
``torch.optim.Optimizer`` made of several optimizers over disjoint parameters, and everything downstream
(learning-rate schedulers, `KoopmanAccelerator`, checkpoints) needs one object.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch

from koopsweep._params import require
from koopsweep.errors import ParameterError
from koopsweep.optimizers._base import OptimizerPlugin
from koopsweep.optimizers._torch import check_params


class CombinedOptimizer(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters, stepped as one ``torch.optim.Optimizer``.

    Its ``param_groups`` are the inner optimizers' group dicts themselves (a scheduler that sets
    ``group["lr"]`` sets it for the optimizer that reads it), and all of them share one ``state``
    mapping, so ``state_dict()``, ``load_state_dict()`` and ``state.clear()`` act on everything at once.
    ``step(closure)`` evaluates the closure once, then steps each inner optimizer.
    """

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        if not optimizers:
            raise ValueError("CombinedOptimizer needs at least one optimizer")
        self.optimizers = list(optimizers)
        super().__init__([group for opt in self.optimizers for group in opt.param_groups], defaults={})
        self._share()

    def _share(self) -> None:
        """Point every inner optimizer at its slice of this one's groups and at the shared state."""
        start = 0
        for opt in self.optimizers:
            count = len(opt.param_groups)
            opt.param_groups = self.param_groups[start : start + count]
            opt.state = self.state
            start += count

    def step(self, closure: Any = None) -> Any:  # noqa: D102
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        super().load_state_dict(state_dict)  # replaces the group dicts and the state mapping
        self._share()


class Muon(OptimizerPlugin):
    """torch's Muon (matrices) with AdamW (everything else) at one learning rate.

    Parameters: ``momentum`` (0.95), ``nesterov`` (true), ``ns_steps`` (5 Newton-Schulz iterations) and
    ``adjust_lr_fn`` (``"match_rms_adamw"`` or ``"original"``) for Muon; ``beta1``, ``beta2`` and ``eps`` for
    AdamW; ``weight_decay`` (0.1, torch's Muon default) for both.
    """

    default_lr = 1e-3
    defaults: ClassVar[dict[str, Any]] = {
        "momentum": 0.95, "nesterov": True, "ns_steps": 5, "adjust_lr_fn": "match_rms_adamw",
        "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1,
    }  # fmt: skip

    def validate_params(self) -> None:
        if not hasattr(torch.optim, "Muon"):
            raise ParameterError(f"muon needs torch.optim.Muon (torch 2.9 or later); this is torch {torch.__version__}")
        check_params(self)
        p = self.params
        steps = p["ns_steps"]
        require(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, self, "ns_steps", steps, "an int >= 1")
        require(p["adjust_lr_fn"] in ("match_rms_adamw", "original"), self, "adjust_lr_fn", p["adjust_lr_fn"],
                '"match_rms_adamw" or "original"')  # fmt: skip

    def build(self, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        p = self.params
        params = list(params)
        matrices = [t for t in params if t.ndim == 2]
        rest = [t for t in params if t.ndim != 2]
        parts: list[torch.optim.Optimizer] = []
        if matrices:
            parts.append(
                torch.optim.Muon(
                    matrices, lr=lr, weight_decay=p["weight_decay"], momentum=p["momentum"], nesterov=p["nesterov"],
                    ns_steps=p["ns_steps"], adjust_lr_fn=p["adjust_lr_fn"],
                )  # fmt: skip
            )
        if rest:
            parts.append(
                torch.optim.AdamW(rest, lr=lr, betas=(p["beta1"], p["beta2"]), eps=p["eps"], weight_decay=p["weight_decay"])
            )
        return parts[0] if len(parts) == 1 else CombinedOptimizer(parts)
