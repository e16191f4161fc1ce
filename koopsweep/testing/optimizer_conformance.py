"""Conformance checks for `OptimizerPlugin` plugins (built-in or third-party).

An optimizer plugin must make paired runs honest: two builds from the same weights and gradients take
bit-identical steps, ``evaluation()`` leaves training exactly where it was, a checkpoint resumes exactly,
the learning rate it is given is the one a schedule scales, and `KoopmanAccelerator` can wrap what it
builds. Each ``check_optimizer_*`` function raises ``AssertionError`` naming the plugin, its parameters
and what went wrong; `check_optimizer` runs them all::

    from koopsweep.testing import check_optimizer

    def test_my_optimizer_conforms():
        check_optimizer(MyOptimizer)

or subclass `koopsweep.testing.OptimizerConformance` for one pytest test per check.

The checks train a small least-squares model (a 6x4 matrix, a bias and a 0-d scale, so matrix and
non-matrix parameters both occur) on fixed full batches, in float32.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch

from koopsweep.testing._common import as_device, label, on_device, sample_points, validated

#: Steps every check trains for (long enough for a Lookahead or SNOO outer step to happen several times).
STEPS = 24


class _Problem:
    """``y = scale * (x @ W + b)``, fitted by mean squared error to a fixed random target."""

    def __init__(self, device: torch.device, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(32, 6, generator=gen).to(device)
        self.y = torch.randn(32, 4, generator=gen).to(device)
        self.start = [0.3 * torch.randn(6, 4, generator=gen), 0.1 * torch.randn(4, generator=gen), torch.tensor(0.8)]
        self.device = device

    def params(self) -> list[torch.Tensor]:
        return [t.clone().to(self.device).requires_grad_(True) for t in self.start]

    def loss(self, params: list[torch.Tensor]) -> torch.Tensor:
        weight, bias, scale = params
        return torch.nn.functional.mse_loss(scale * (self.x @ weight + bias), self.y)

    def closure(self, optimizer: Any, params: list[torch.Tensor]):
        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = self.loss(params)
            loss.backward()
            return loss

        return closure


def _plugin(cls: type, params: Mapping[str, Any]) -> Any:
    try:
        return cls(**params)
    except Exception as exc:
        raise AssertionError(f"{label(cls, params)} could not be constructed: {type(exc).__name__}: {exc}") from exc


def _build(plugin: Any, who: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    try:
        optimizer = plugin.build(iter(params), lr)  # an iterator, as model.parameters() is
    except Exception as exc:
        raise AssertionError(f"{who}.build(params, lr={lr:g}) raised {type(exc).__name__}: {exc}") from exc
    assert isinstance(optimizer, torch.optim.Optimizer), (
        f"{who}.build() returned {type(optimizer).__name__}, not a torch.optim.Optimizer"
    )
    return optimizer


def _fresh(cls: type, params: Mapping[str, Any], device: torch.device):
    """A new problem, its starting weights, a plugin and the optimizer it built over them at
    ``default_lr``, and the label for messages."""
    who = label(cls, params)
    problem = _Problem(device)
    weights = problem.params()
    plugin = _plugin(cls, params)
    return problem, weights, plugin, _build(plugin, who, weights, cls.default_lr), who


def _train(problem: _Problem, optimizer: Any, params: list[torch.Tensor], steps: int, who: str) -> list[float]:
    losses = []
    closure = problem.closure(optimizer, params)
    for step in range(steps):
        try:
            optimizer.step(closure)
        except Exception as exc:
            raise AssertionError(f"{who}: step {step} raised {type(exc).__name__}: {exc}") from exc
        losses.append(float(problem.loss(params).detach()))
    return losses


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x.detach(), y.detach()) for x, y in zip(a, b, strict=True))


def _run(cls: type, params: Mapping[str, Any], device: torch.device, steps: int = STEPS, evaluate_every: int = 0):
    """A fresh problem, plugin and optimizer trained ``steps`` steps; evaluation contexts entered every
    ``evaluate_every`` steps (0: never). Returns (plugin, optimizer, weights, losses)."""
    problem, weights, plugin, optimizer, who = _fresh(cls, params, device)
    losses = []
    for step in range(steps):
        losses += _train(problem, optimizer, weights, 1, who)
        if evaluate_every and (step + 1) % evaluate_every == 0:
            with plugin.evaluation(optimizer):
                problem.loss(weights)
    return plugin, optimizer, weights, losses


# ------------------------------------------------------------------------------------------- checks
def check_optimizer_contract(cls: type, *, params: Mapping[str, Any] | None = None) -> None:
    """The loader accepts the class, it builds with its defaults and rejects unknown parameters."""
    validated("optimizers", cls)
    assert isinstance(cls.schedule_free, bool), f"{label(cls)}.schedule_free must be a bool"
    _plugin(cls, dict(params or {}))


def check_optimizer_search_space(cls: type, device: str | torch.device = "cpu", *, n_random: int = 3) -> None:
    """Every searched value builds an optimizer that takes finite steps."""
    device = as_device(device)
    space = cls.search_space()
    extra = sorted(set(space) - set(cls.parameters()))
    assert not extra, f"{label(cls)}.search_space() names {extra}, which are not among its parameters"
    for point in sample_points(space, n_random, seed=0):
        _, _, weights, losses = _run(cls, point, device, steps=4)
        assert all(math.isfinite(v) for v in losses), f"{label(cls, point)}: non-finite loss in 4 steps: {losses}"


def check_optimizer_build(cls: type, device: str | torch.device = "cpu", *, params: Mapping[str, Any] | None = None) -> None:
    """``build`` covers exactly the given parameters, each once, every group at the given learning rate
    (what a schedule multiplies), with its state on the parameters' device; steps lower the loss."""
    device = as_device(device)
    problem, weights, _, optimizer, who = _fresh(cls, dict(params or {}), device)
    lr = cls.default_lr
    covered = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(covered) == len(weights) and {id(p) for p in covered} == {id(p) for p in weights}, (
        f"{who}.build(): its param_groups hold {len(covered)} tensors, not exactly the {len(weights)} it was given"
    )
    rates = [group.get("lr") for group in optimizer.param_groups]
    assert all(isinstance(r, (int, float)) and math.isclose(r, lr) for r in rates), (
        f"{who}.build(lr={lr:g}): param group rates are {rates}; every group must start at the given lr, "
        "which learning-rate schedules scale"
    )
    losses = _train(problem, optimizer, weights, STEPS, who)
    assert all(math.isfinite(v) for v in losses), f"{who}: non-finite loss at its default_lr: {losses}"
    start = float(problem.loss(problem.params()).detach())
    assert losses[-1] < start, (
        f"{who}: {STEPS} steps at its default_lr {lr:g} did not lower a least-squares loss ({start:.4g} -> {losses[-1]:.4g})"
    )
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                assert on_device(value.device, device), f"{who}: optimizer state on {value.device}, parameters on {device}"


def check_optimizer_determinism(
    cls: type, device: str | torch.device = "cpu", *, params: Mapping[str, Any] | None = None
) -> None:
    """Two builds from the same weights and gradients take bit-identical steps (paired runs rely on it)."""
    device = as_device(device)
    params = dict(params or {})
    _, _, first, losses_a = _run(cls, params, device)
    _, _, second, losses_b = _run(cls, params, device)
    assert _same(first, second) and losses_a == losses_b, (
        f"{label(cls, params)}: two builds from the same start and gradients ended at different weights"
    )


def check_optimizer_evaluation(
    cls: type, device: str | torch.device = "cpu", *, params: Mapping[str, Any] | None = None
) -> None:
    """``evaluation()`` gives back the training weights bit for bit, and a run that evaluates every few
    steps trains exactly as one that never does (the clock may stop for evaluation; the trajectory may not
    change)."""
    device = as_device(device)
    params = dict(params or {})
    who = label(cls, params)
    plugin, optimizer, weights, _ = _run(cls, params, device)
    before = [w.detach().clone() for w in weights]
    try:
        with plugin.evaluation(optimizer):
            judged = [w.detach().clone() for w in weights]
    except Exception as exc:
        raise AssertionError(f"{who}.evaluation() raised {type(exc).__name__}: {exc}") from exc
    assert all(torch.isfinite(j).all() for j in judged), f"{who}.evaluation(): non-finite weights to judge"
    assert _same(weights, before), f"{who}.evaluation() did not give back the training weights bit for bit"
    _, _, plain, _ = _run(cls, params, device)
    _, _, evaluated, _ = _run(cls, params, device, evaluate_every=5)
    assert _same(plain, evaluated), f"{who}: evaluating every 5 steps changed the training trajectory"


def check_optimizer_state_dict(
    cls: type, device: str | torch.device = "cpu", *, params: Mapping[str, Any] | None = None
) -> None:
    """A checkpoint (model weights + ``optimizer.state_dict()``) loaded into a fresh build resumes exactly."""
    device = as_device(device)
    params = dict(params or {})
    who = label(cls, params)
    problem = _Problem(device)
    plugin, optimizer, weights, _ = _run(cls, params, device, steps=STEPS // 2 + 1)  # mid-cycle of most outer loops
    saved_weights = [w.detach().clone() for w in weights]
    try:
        saved_state = copy.deepcopy(optimizer.state_dict())
    except Exception as exc:
        raise AssertionError(f"{who}: state_dict() raised {type(exc).__name__}: {exc}") from exc
    _train(problem, optimizer, weights, STEPS // 2, who)
    resumed = problem.params()
    with torch.no_grad():
        for r, w in zip(resumed, saved_weights):
            r.copy_(w)
    fresh = _build(_plugin(cls, params), who, resumed, cls.default_lr)
    try:
        fresh.load_state_dict(saved_state)
    except Exception as exc:
        raise AssertionError(f"{who}: load_state_dict(its own state_dict()) raised {type(exc).__name__}: {exc}") from exc
    _train(problem, fresh, resumed, STEPS // 2, who)
    assert _same(weights, resumed), f"{who}: a run resumed from a checkpoint did not continue exactly"


def check_optimizer_schedule(
    cls: type, device: str | torch.device = "cpu", *, params: Mapping[str, Any] | None = None
) -> None:
    """A ``LambdaLR`` scales every group's rate, and the optimizer steps with it."""
    problem, weights, _, optimizer, who = _fresh(cls, dict(params or {}), as_device(device))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** (step + 1))
    for _ in range(3):
        _train(problem, optimizer, weights, 1, who)
        scheduler.step()
    rates = [group["lr"] for group in optimizer.param_groups]
    assert all(math.isclose(r, cls.default_lr * 0.5**4) for r in rates), (
        f"{who}: after 3 scheduler steps of a halving LambdaLR the rates are {rates}, not {cls.default_lr * 0.5**4:g}"
    )


def check_optimizer_accelerated(
    cls: type, device: str | torch.device = "cpu", *, params: Mapping[str, Any] | None = None
) -> None:
    """`KoopmanAccelerator` wraps what ``build`` returns: jumps are tried and training stays finite."""
    from koopsweep.accelerator import KoopmanAccelerator

    problem, weights, _, inner, who = _fresh(cls, dict(params or {}), as_device(device))
    accelerator = KoopmanAccelerator(inner, "extrapolate-linear", window=4, horizon=4, fallback="verify")
    losses = _train(problem, accelerator, weights, STEPS, f"KoopmanAccelerator({who})")
    assert accelerator.stats.jumps_tried >= 2, f"KoopmanAccelerator({who}) tried {accelerator.stats.jumps_tried} jumps"
    assert all(math.isfinite(v) for v in losses), f"KoopmanAccelerator({who}): non-finite losses {losses}"


def check_optimizer(cls: type, device: str | torch.device = "cpu", *, params: Mapping[str, Any] | None = None) -> None:
    """Run every optimizer check; raise ``AssertionError`` at the first failure."""
    check_optimizer_contract(cls, params=params)
    check_optimizer_search_space(cls, device)
    check_optimizer_build(cls, device, params=params)
    check_optimizer_determinism(cls, device, params=params)
    check_optimizer_evaluation(cls, device, params=params)
    check_optimizer_state_dict(cls, device, params=params)
    check_optimizer_schedule(cls, device, params=params)
    check_optimizer_accelerated(cls, device, params=params)
