"""Cheap trajectory tricks around Adam: Lookahead, SNOO and an exponential moving average of the weights.

They are what a practitioner would try instead of a Koopman jump, so they are both baselines and inner
optimizers here. Each is a plain ``torch.optim.Adam`` with behaviour attached through torch's optimizer
hooks (``register_step_post_hook`` and the state-dict hooks), not a wrapper class: whatever takes an
optimizer (learning-rate schedulers, `KoopmanAccelerator`, checkpoints) gets a real ``torch.optim.Adam``
whose ``state_dict()`` also carries the slow weights or the average.

Why written here rather than taken from a package: pytorch-optimizer's ``Lookahead`` interpolates toward
the slow weights but has no outer momentum, so SNOO cannot be built on it, and it keeps its own counter in
the inner optimizer's ``param_groups``. One outer loop serves both: Lookahead is exactly an outer SGD step
(lr ``alpha``, no momentum) on the pseudo-gradient ``slow - fast``, and SNOO (Kallusky et al. 2025) the
same step with Nesterov momentum; the outer step is ``torch.optim.SGD`` itself. The tests check
``lookahead-adam`` against pytorch-optimizer's ``Lookahead`` step for step. The average uses torch's own
EMA update (``torch.optim.swa_utils.get_ema_multi_avg_fn``), debiased like Adam's moments so that early
averages are not pulled toward the initial weights.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Protocol

import torch

from koopsweep._params import require
from koopsweep.optimizers._base import OptimizerPlugin
from koopsweep.optimizers._schedulefree import schedule_free_average
from koopsweep.optimizers._torch import Adam


def _params_of(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def _copy_into(destination: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    with torch.no_grad():
        torch._foreach_copy_(destination, [t.to(d.device, d.dtype) for t, d in zip(saved, destination, strict=True)])


class Attachment:
    """Behaviour attached to an inner optimizer by its hooks: `after_step` runs after every step, and the
    tensors `state` returns travel in the optimizer's ``state_dict()`` under `STATE_KEY` (`restore` puts
    them back on ``load_state_dict``). The attachment is found again with `attached`."""

    STATE_KEY: str

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.params = _params_of(optimizer)
        optimizer.register_step_post_hook(lambda opt, args, kwargs: self.after_step())
        optimizer.register_state_dict_post_hook(self._save)
        optimizer.register_load_state_dict_pre_hook(self._load)
        _ATTACHED[optimizer] = self

    def after_step(self) -> None:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    def restore(self, saved: dict[str, Any]) -> None:
        raise NotImplementedError

    def _save(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        state_dict[self.STATE_KEY] = self.state()
        return state_dict

    def _load(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> dict[str, Any]:
        state_dict = dict(state_dict)  # torch's own loader must not see our key
        saved = state_dict.pop(self.STATE_KEY, None)
        if saved is None:
            raise ValueError(f"the optimizer state has no {self.STATE_KEY!r}: it was not saved by this optimizer")
        self.restore(saved)
        return state_dict


class SlowWeights(Attachment):
    """The outer loop of Lookahead and SNOO, attached to an inner optimizer.

    Every ``k`` inner steps: the pseudo-gradient ``slow - fast`` goes to an outer ``torch.optim.SGD``
    over the slow weights (``lr`` the outer rate, ``momentum`` with Nesterov when > 0), and the fast
    weights (the model's) are set to the new slow weights. ``syncs`` counts the outer steps; `slow`
    holds the slow weights (what the outer loop would report as the result).
    """

    STATE_KEY = "koopsweep.slow_weights"

    def __init__(self, optimizer: torch.optim.Optimizer, *, k: int, lr: float, momentum: float) -> None:
        super().__init__(optimizer)
        self.k = k
        with torch.no_grad():
            self.slow = [p.detach().clone() for p in self.params]
            # The pseudo-gradient lives in the slow weights' .grad, allocated once.
            for s in self.slow:
                s.grad = torch.zeros_like(s)
        self.outer = torch.optim.SGD(self.slow, lr=lr, momentum=momentum, nesterov=momentum > 0)
        self.inner_steps = 0
        self.syncs = 0

    def after_step(self) -> None:
        self.inner_steps += 1
        if self.inner_steps % self.k == 0:
            self.sync()

    @torch.no_grad()
    def sync(self) -> None:
        """One outer step: slow weights forward along the pseudo-gradient, fast weights reset to them."""
        grads = [s.grad for s in self.slow]
        torch._foreach_copy_(grads, self.slow)
        torch._foreach_sub_(grads, self.params)
        self.outer.step()
        torch._foreach_copy_(self.params, self.slow)
        self.syncs += 1

    def state(self) -> dict[str, Any]:
        slow = [s.detach().clone() for s in self.slow]
        return {"inner_steps": self.inner_steps, "syncs": self.syncs, "slow": slow, "outer": self.outer.state_dict()}

    def restore(self, saved: dict[str, Any]) -> None:
        _copy_into(self.slow, saved["slow"])
        self.outer.load_state_dict(saved["outer"])
        self.inner_steps, self.syncs = int(saved["inner_steps"]), int(saved["syncs"])


class WeightAverage(Attachment):
    """An exponential moving average of the weights after every inner step, debiased: after ``t`` steps
    the average is ``sum_i (1 - d) d^(t-i) w_i / (1 - d^t)``, a proper weighted mean of the iterates."""

    STATE_KEY = "koopsweep.weight_average"

    def __init__(self, optimizer: torch.optim.Optimizer, *, decay: float) -> None:
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        super().__init__(optimizer)
        self.decay = decay
        with torch.no_grad():
            self.raw = [torch.zeros_like(p) for p in self.params]  # the un-debiased EMA, starting at 0
        self._update = get_ema_multi_avg_fn(decay)
        self.steps = 0

    def after_step(self) -> None:
        self._update(self.raw, self.params, self.steps)
        self.steps += 1

    @torch.no_grad()
    def average(self) -> list[torch.Tensor]:
        """The debiased average (the current weights before the first step)."""
        if self.steps == 0:
            return [p.detach().clone() for p in self.params]
        return torch._foreach_div(self.raw, 1.0 - self.decay**self.steps)

    @torch.no_grad()
    def average_into(self, out: list[torch.Tensor]) -> None:
        """Write the debiased average into ``out`` (preallocated, one tensor per parameter)."""
        if self.steps == 0:
            torch._foreach_copy_(out, self.params)
            return
        torch._foreach_copy_(out, self.raw)
        torch._foreach_mul_(out, 1.0 / (1.0 - self.decay**self.steps))

    @torch.no_grad()
    def land(self, values: list[torch.Tensor], origin: list[torch.Tensor]) -> list[torch.Tensor]:
        """A jump from the average ``origin`` landed at ``values``: the debiased average becomes ``values``
        (the step count is kept) and so do the weights, which are returned for the caller to load.
        Before the first step the average is the weights themselves."""
        torch._foreach_copy_(self.raw, values)
        if self.steps:
            torch._foreach_mul_(self.raw, 1.0 - self.decay**self.steps)
        return values

    def state(self) -> dict[str, Any]:
        return {"steps": self.steps, "raw": [r.detach().clone() for r in self.raw]}

    def restore(self, saved: dict[str, Any]) -> None:
        _copy_into(self.raw, saved["raw"])
        self.steps = int(saved["steps"])


#: The attachment of each optimizer these plugins built, found again by `evaluation` and by whoever
#: wants the slow weights (weakly keyed: an optimizer's attachment dies with it).
_ATTACHED: weakref.WeakKeyDictionary[torch.optim.Optimizer, Attachment] = weakref.WeakKeyDictionary()


def slow_weights(optimizer: torch.optim.Optimizer) -> SlowWeights | None:
    """The `SlowWeights` outer loop attached to ``optimizer``, or None when it has none."""
    attached = _ATTACHED.get(optimizer)
    return attached if isinstance(attached, SlowWeights) else None


def weight_average(optimizer: torch.optim.Optimizer) -> WeightAverage | None:
    """The `WeightAverage` attached to ``optimizer``, or None when it has none."""
    attached = _ATTACHED.get(optimizer)
    return attached if isinstance(attached, WeightAverage) else None


class AveragedPoint(Protocol):
    """The averaged weights an inner optimizer is judged at, which its training weights are not: what
    averaged evaluation (``snapshot="average"``) fits, jumps from and lands. `WeightAverage` (an EMA) and
    schedule-free's ``x`` (`ScheduleFreeAverage`) are the two kinds."""

    def average(self) -> list[torch.Tensor]:
        """The averaged weights, a new tensor per parameter."""

    def average_into(self, out: list[torch.Tensor]) -> None:
        """Write the averaged weights into ``out``."""

    def land(self, values: list[torch.Tensor], origin: list[torch.Tensor]) -> list[torch.Tensor]:
        """A jump from ``origin`` (the averaged weights when it started) landed at ``values``: make
        ``values`` the averaged weights, and return the training weights the model must then hold."""


def averaged_point(optimizer: torch.optim.Optimizer) -> AveragedPoint | None:
    """The averaged weights ``optimizer`` is judged at (``ema-adam``'s average, schedule-free AdamW's
    ``x``), or None when it trains and is judged at the same weights."""
    return weight_average(optimizer) or schedule_free_average(optimizer)


@contextlib.contextmanager
def holding(params: list[torch.Tensor], values: list[torch.Tensor]) -> Iterator[None]:
    """Parameters set to ``values`` for the duration, then restored bit for bit."""
    with torch.no_grad():
        saved = [p.detach().clone() for p in params]
        torch._foreach_copy_(params, values)
    try:
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_(params, saved)


def _check_unit(plugin: OptimizerPlugin, name: str, low_open: bool, high_open: bool) -> None:
    value = plugin.params[name]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    require(ok, plugin, name, value, f"a number in {interval}")


def _check_k(plugin: OptimizerPlugin) -> None:
    k = plugin.params["k"]
    require(isinstance(k, int) and not isinstance(k, bool) and k >= 1, plugin, "k", k, "an int >= 1 (inner steps per outer step)")


class _AroundAdam(Adam):
    """A torch Adam with Adam's own parameters, plus parameters of the trick attached to it."""

    def torch_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if k in Adam.defaults}


class LookaheadAdam(_AroundAdam):
    """Lookahead (Zhang et al. 2019) around Adam: every ``k`` Adam steps the slow weights move a fraction
    ``alpha`` of the way to the fast ones, and the fast weights restart from there. Judged at the fast
    weights (the model's), which equal the slow ones right after each synchronisation."""

    defaults: ClassVar[dict[str, Any]] = {**Adam.defaults, "k": 5, "alpha": 0.5}

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution, IntDistribution

        return {"k": IntDistribution(2, 20), "alpha": FloatDistribution(0.2, 0.9)}

    def validate_params(self) -> None:
        super().validate_params()
        _check_k(self)
        _check_unit(self, "alpha", low_open=True, high_open=False)

    def build(self, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        inner = super().build(params, lr)
        SlowWeights(inner, k=self.params["k"], lr=self.params["alpha"], momentum=0.0)
        return inner


class SNOOAdam(_AroundAdam):
    """SNOO (Kallusky et al. 2025) around Adam: Lookahead whose outer step is Nesterov momentum on the
    slow-weight displacement ``slow - fast`` over ``k`` Adam steps (outer rate ``outer_lr``, momentum
    ``momentum``). With momentum 0 it is Lookahead with ``alpha = outer_lr``."""

    defaults: ClassVar[dict[str, Any]] = {**Adam.defaults, "k": 10, "outer_lr": 0.7, "momentum": 0.5}

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution, IntDistribution

        return {
            "k": IntDistribution(2, 50, log=True),
            "outer_lr": FloatDistribution(0.1, 1.5),
            "momentum": FloatDistribution(0.0, 0.95),
        }

    def validate_params(self) -> None:
        super().validate_params()
        _check_k(self)
        outer = self.params["outer_lr"]
        ok = isinstance(outer, (int, float)) and not isinstance(outer, bool) and math.isfinite(outer) and outer > 0
        require(ok, self, "outer_lr", outer, "a number > 0")
        _check_unit(self, "momentum", low_open=False, high_open=True)

    def build(self, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        inner = super().build(params, lr)
        p = self.params
        SlowWeights(inner, k=p["k"], lr=p["outer_lr"], momentum=p["momentum"])
        return inner


class EMAAdam(_AroundAdam):
    """Adam, judged at an exponential moving average of its iterates (``decay`` per step, debiased),
    the averaging that LAWA/EMA studies report cuts steps to target on tuned Adam. Training continues
    from Adam's own iterates; only evaluation sees the average."""

    defaults: ClassVar[dict[str, Any]] = {**Adam.defaults, "decay": 0.99}

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution

        return {"decay": FloatDistribution(0.9, 0.999)}

    def validate_params(self) -> None:
        super().validate_params()
        _check_unit(self, "decay", low_open=False, high_open=True)

    def build(self, params: Iterable[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        inner = super().build(params, lr)
        WeightAverage(inner, decay=self.params["decay"])
        return inner

    @contextlib.contextmanager
    def evaluation(self, optimizer: torch.optim.Optimizer) -> Iterator[None]:  # noqa: D102
        average = weight_average(optimizer)
        if average is None:
            raise ValueError(f"{self!r}.evaluation() got an optimizer it did not build")
        with holding(average.params, average.average()):
            yield
