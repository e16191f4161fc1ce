"""``lbfgs`` and ``adam-lbfgs``: torch's L-BFGS with a strong-Wolfe line search, alone or after Adam.

Scientific-ML users train physics-informed networks and neural ODEs full batch, and finish with L-BFGS
(often after a first phase of Adam): the quasi-Newton step uses the curvature that first-order methods
ignore, and full batches make its line search meaningful. Both plugins build ``torch.optim.LBFGS``.

One koopsweep step is one L-BFGS iteration (``max_iter=1``), so that step counts, evaluation intervals
and the accelerator's snapshots mean the same as for every other optimizer: one update of the weights.
An iteration calls the closure once at its start and then as often as its line search needs (usually
once or twice more), at weights of its own choosing; the clock pays for every call. torch's own
``max_eval`` default (``max_iter * 5 // 4``) would give a one-iteration step no line-search budget at
all, so ``max_eval`` here is ``max_iter * (1 + max_ls)``.

Koopman jumps around L-BFGS: the accelerator never hands L-BFGS a cached closure (its line search must
evaluate at the weights it picks), and after an accepted jump it clears L-BFGS's curvature pairs, which
were measured at the weights the jump left (`koopsweep.optimizers._base.reevaluates_closure`). Around
``adam-lbfgs`` the accelerator jumps during the Adam phase only (``takes_jumps``).

GPU note: torch's L-BFGS reads the loss and a few dot products on the host every iteration (its line
search branches on them); that is inherent to the algorithm as torch implements it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch

from koopsweep._params import is_int, is_number, require
from koopsweep.optimizers._base import OptimizerPlugin
from koopsweep.optimizers._torch import Adam, check_params, torch_kwargs

LBFGS_DEFAULTS: dict[str, Any] = {
    "max_iter": 1,
    "history_size": 50,
    "max_ls": 25,
    "line_search": "strong_wolfe",
    "tolerance_grad": 1e-9,
    "tolerance_change": 1e-12,
}


def _check_lbfgs(plugin: OptimizerPlugin, prefix: str = "") -> None:
    p = plugin.params
    for name, low in (("max_iter", 1), ("history_size", 1), ("max_ls", 1)):
        key = prefix + name
        require(is_int(p[key]) and p[key] >= low, plugin, key, p[key], f"an int >= {low}")
    key = prefix + "line_search"
    require(p[key] in ("strong_wolfe", "none"), plugin, key, p[key], '"strong_wolfe" or "none"')
    for name in ("tolerance_grad", "tolerance_change"):
        key = prefix + name
        require(is_number(p[key]) and p[key] >= 0, plugin, key, p[key], "a number >= 0")


def build_lbfgs(params: Iterable[torch.Tensor], lr: float, options: dict[str, Any]) -> torch.optim.LBFGS:
    """``torch.optim.LBFGS`` from `LBFGS_DEFAULTS`-style ``options`` (see the module docstring for max_eval)."""
    return torch.optim.LBFGS(
        params,
        lr=lr,
        max_iter=options["max_iter"],
        max_eval=options["max_iter"] * (1 + options["max_ls"]),
        history_size=options["history_size"],
        tolerance_grad=float(options["tolerance_grad"]),
        tolerance_change=float(options["tolerance_change"]),
        line_search_fn=None if options["line_search"] == "none" else options["line_search"],
    )


class LBFGS(OptimizerPlugin):
    """``torch.optim.LBFGS``, one iteration per step, strong-Wolfe line search by default.

    Parameters: ``max_iter`` (iterations per step, 1), ``history_size`` (curvature pairs kept, 50, a
    common PINN choice; torch's default is 100), ``max_ls`` (line-search evaluations per iteration, 25),
    ``line_search`` (``"strong_wolfe"`` or ``"none"``: fixed steps of ``lr``), ``tolerance_grad`` and
    ``tolerance_change`` (torch's stopping tests, set low: a run's budget, not L-BFGS, decides when it
    stops). The learning rate is the line search's first trial step (1 is the classical choice).
    """

    default_lr = 1.0
    defaults: ClassVar[dict[str, Any]] = dict(LBFGS_DEFAULTS)

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        from optuna.distributions import IntDistribution

        return {"history_size": IntDistribution(5, 100, log=True)}

    def validate_params(self) -> None:
        _check_lbfgs(self)

    def build(self, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        return build_lbfgs(params, lr, self.params)


class AdamThenLBFGS(torch.optim.Optimizer):
    """Adam for ``switch_step`` steps, then L-BFGS from wherever Adam left the weights.

    ``param_groups`` and ``state`` are Adam's (a schedule scales Adam's rate; L-BFGS keeps its own
    ``lbfgs_lr``); L-BFGS's state lives in ``self.lbfgs``. ``state_dict()`` holds both and the step
    count, so a checkpoint resumes in the right phase.
    """

    def __init__(self, params: Iterable[torch.Tensor], adam: torch.optim.Optimizer, lbfgs_lr: float,
                 lbfgs_options: dict[str, Any], switch_step: int) -> None:  # fmt: skip
        params = list(params)
        self.adam = adam
        super().__init__(adam.param_groups, defaults={})
        self.adam.param_groups, self.adam.state = self.param_groups, self.state
        self.lbfgs = build_lbfgs(params, lbfgs_lr, lbfgs_options)
        self.switch_step = switch_step
        self.steps = 0

    @property
    def in_lbfgs_phase(self) -> bool:
        return self.steps >= self.switch_step

    # Read by KoopmanAccelerator (koopsweep.optimizers._base): jumps during the Adam phase only,
    # and L-BFGS's line search needs real closures.
    takes_jumps = property(lambda self: not self.in_lbfgs_phase)
    reevaluates_closure = property(lambda self: self.in_lbfgs_phase)

    def step(self, closure: Any = None) -> Any:  # noqa: D102
        phase = self.lbfgs if self.in_lbfgs_phase else self.adam
        if closure is None and phase is self.lbfgs:
            raise RuntimeError("adam-lbfgs needs a closure in its L-BFGS phase")
        self.steps += 1
        return phase.step(closure)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {"steps": self.steps, "adam": self.adam.state_dict(), "lbfgs": self.lbfgs.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        self.adam.load_state_dict(state_dict["adam"])  # replaces Adam's group dicts and state
        self.param_groups, self.state = self.adam.param_groups, self.adam.state
        self.lbfgs.load_state_dict(state_dict["lbfgs"])
        self.steps = int(state_dict["steps"])


class AdamLBFGS(OptimizerPlugin):
    """Adam (at the run's learning rate) for ``switch_step`` steps, then L-BFGS (at ``lbfgs_lr``).

    Parameters: Adam's ``beta1``, ``beta2``, ``eps``, ``weight_decay``; ``switch_step`` (500; searched
    on a log scale); ``lbfgs_lr`` (1) and the `LBFGS` plugin's parameters prefixed ``lbfgs_``.
    """

    default_lr = 1e-3
    defaults: ClassVar[dict[str, Any]] = {
        **Adam.defaults, "switch_step": 500, "lbfgs_lr": 1.0, **{f"lbfgs_{k}": v for k, v in LBFGS_DEFAULTS.items()},
    }  # fmt: skip

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        from optuna.distributions import IntDistribution

        return {"switch_step": IntDistribution(50, 5000, log=True)}

    def validate_params(self) -> None:
        check_params(self)
        _check_lbfgs(self, "lbfgs_")
        p = self.params
        require(is_int(p["switch_step"]) and p["switch_step"] >= 0, self, "switch_step", p["switch_step"], "an int >= 0")
        require(is_number(p["lbfgs_lr"]) and p["lbfgs_lr"] > 0, self, "lbfgs_lr", p["lbfgs_lr"], "a number > 0")

    def build(self, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        params = list(params)
        adam_params = {k: v for k, v in self.params.items() if k in Adam.defaults}
        adam = torch.optim.Adam(params, lr=lr, **torch_kwargs(adam_params))
        lbfgs_options = {k: self.params[f"lbfgs_{k}"] for k in LBFGS_DEFAULTS}
        return AdamThenLBFGS(params, adam, float(self.params["lbfgs_lr"]), lbfgs_options, self.params["switch_step"])
