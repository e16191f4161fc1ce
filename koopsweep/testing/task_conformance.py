"""Conformance checks for `Task` plugins (built-in or third-party).

A task must make runs comparable: the same seed gives the same initial weights and the same batches,
the loss is a finite scalar with a gradient for every parameter, the evaluation loss is a plain
float that leaves the model exactly as it found it, and the check loss (what jumps are judged by when
``check_batches`` > 0) works without gradients on fixed check batches. Each ``check_task_*`` function raises
``AssertionError`` naming the task, its parameters and what went wrong; `check_task` runs them all::

    from koopsweep.testing import check_task

    def test_my_task_conforms():
        check_task(MyTask, n_train=256)   # small task parameters keep the test fast

or subclass `koopsweep.testing.TaskConformance` for one pytest test per check.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch

from koopsweep.testing._common import as_device, label, on_device, same_structure, tensors_in

#: Batches compared by the determinism check.
N_BATCHES = 3


def _build(cls: type, params: dict[str, Any]) -> Any:
    try:
        return cls(**params)
    except Exception as exc:
        raise AssertionError(f"{label(cls, params)} could not be constructed: {type(exc).__name__}: {exc}") from exc


def _model(task: Any, who: str, seed: int, device: torch.device) -> torch.nn.Module:
    try:
        model = task.build_model(seed)
    except Exception as exc:
        raise AssertionError(f"{who}.build_model({seed}) raised {type(exc).__name__}: {exc}") from exc
    assert isinstance(model, torch.nn.Module), (
        f"{who}.build_model({seed}) returned {type(model).__name__}, not an nn.Module"
    )
    assert any(True for _ in model.parameters()), f"{who}.build_model({seed}) has no parameters to train"
    return model.to(device)


def _first_batches(task: Any, who: str, seed: int, device: torch.device, n: int = N_BATCHES) -> list[Any]:
    try:
        return list(itertools.islice(task.batches(seed, device), n))
    except Exception as exc:
        raise AssertionError(f"{who}.batches({seed}, {device}) raised {type(exc).__name__}: {exc}") from exc


def _loss(task: Any, who: str, model: torch.nn.Module, batch: Any) -> torch.Tensor:
    try:
        return task.loss(model, batch)
    except Exception as exc:
        raise AssertionError(f"{who}.loss(model, batch) raised {type(exc).__name__}: {exc}") from exc


def _validate(cls: type) -> None:
    from koopsweep import plugins
    from koopsweep.errors import PluginValidationError

    try:
        plugins.validate("tasks", cls)
    except PluginValidationError as exc:
        raise AssertionError(f"{label(cls)} fails plugin validation: {exc}") from exc


def check_task_contract(cls: type, **task_params: Any) -> None:
    """The loader accepts the class, it builds with the given parameters, and its checkpoint interval
    is a positive int."""
    _validate(cls)
    _contract(_build(cls, task_params), label(cls, task_params))


def _contract(task: Any, who: str) -> None:
    for budget in (1, type(task).default_budget):
        interval = task.checkpoint_interval(budget)
        assert isinstance(interval, int) and not isinstance(interval, bool) and interval >= 1, (
            f"{who}.checkpoint_interval({budget}) must be a positive int, got {interval!r}"
        )


def check_task_determinism(cls: type, device: str | torch.device = "cpu", **task_params: Any) -> None:
    """Same seed, same initial weights and same first batches (from one instance twice, and from a
    second instance); another seed, other initial weights."""
    _determinism(_build(cls, task_params), _build(cls, task_params), label(cls, task_params), as_device(device))


def _determinism(task: Any, other_task: Any, who: str, device: torch.device) -> None:
    reference = _model(task, who, 0, device).state_dict()
    for what, state in (
        ("a second build_model(0)", _model(task, who, 0, device).state_dict()),
        ("build_model(0) on a second instance", _model(other_task, who, 0, device).state_dict()),
    ):
        differs = same_structure(dict(reference), dict(state), "state_dict")
        assert differs is None, f"{who}: {what} gives other initial weights ({differs})"
    reseeded = _model(task, who, 1, device).state_dict()
    assert same_structure(dict(reference), dict(reseeded), "state_dict") is not None, (
        f"{who}: build_model(0) and build_model(1) give identical weights; the seed must change the initialisation"
    )
    batches = _first_batches(task, who, 0, device)
    assert len(batches) == N_BATCHES, (
        f"{who}.batches(0, {device}) stopped after {len(batches)} batches; it must be endless"
    )
    for what, again in (
        ("a second batches(0)", _first_batches(task, who, 0, device)),
        ("batches(0) on a second instance", _first_batches(other_task, who, 0, device)),
    ):
        differs = same_structure(batches, again, "batches")
        assert differs is None, f"{who}: {what} gives other first batches ({differs})"


def check_task_loss(cls: type, device: str | torch.device = "cpu", **task_params: Any) -> None:
    """Batches and the loss live on the requested device; the loss is a finite floating-point scalar
    whose backward pass gives a finite gradient to every parameter."""
    _loss_and_gradients(_build(cls, task_params), label(cls, task_params), as_device(device))


def _loss_and_gradients(task: Any, who: str, device: torch.device) -> None:
    model = _model(task, who, 0, device)
    for name, param in model.named_parameters():
        assert on_device(param.device, device), f"{who}: parameter {name} is on {param.device} after .to({device})"
    batch = _first_batches(task, who, 0, device, n=1)[0]
    for where, tensor in tensors_in(batch):
        assert on_device(tensor.device, device), f"{who}.batches(0, {device}): {where} is on {tensor.device}"
    loss = _loss(task, who, model, batch)
    assert isinstance(loss, torch.Tensor), f"{who}.loss() returned {type(loss).__name__}, not a tensor"
    assert loss.ndim == 0, f"{who}.loss() has shape {tuple(loss.shape)}; it must be a scalar (0-d) tensor"
    assert loss.is_floating_point(), f"{who}.loss() has dtype {loss.dtype}; it must be floating point"
    assert on_device(loss.device, device), f"{who}.loss() is on {loss.device}, not {device}"
    assert bool(torch.isfinite(loss)), f"{who}.loss() is {float(loss)} at the initial weights"
    assert loss.requires_grad, f"{who}.loss() does not require grad; it must depend on the model's parameters"
    model.zero_grad(set_to_none=True)
    loss.backward()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        assert param.grad is not None, f"{who}: parameter {name} gets no gradient from loss()"
        assert bool(torch.isfinite(param.grad).all()), f"{who}: parameter {name} has a non-finite gradient"


def check_task_eval(cls: type, device: str | torch.device = "cpu", **task_params: Any) -> None:
    """``eval_loss`` returns the same finite Python float twice and leaves the parameters, their
    gradients, the train/eval mode and grad mode exactly as they were."""
    _evaluation(_build(cls, task_params), label(cls, task_params), as_device(device))


def _evaluation(task: Any, who: str, device: torch.device) -> None:
    model = _model(task, who, 0, device)
    batch = _first_batches(task, who, 0, device, n=1)[0]
    _loss(task, who, model, batch).backward()
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    grads = {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}
    modes = {name: m.training for name, m in model.named_modules()}
    values = []
    for _ in range(2):
        try:
            value = task.eval_loss(model, device)
        except Exception as exc:
            raise AssertionError(f"{who}.eval_loss(model, {device}) raised {type(exc).__name__}: {exc}") from exc
        assert isinstance(value, float), (
            f"{who}.eval_loss() returned {type(value).__name__}; return a Python float (e.g. loss.item())"
        )
        assert math.isfinite(value), f"{who}.eval_loss() is {value} at the initial weights"
        values.append(value)
    assert values[0] == values[1], f"{who}.eval_loss() gave {values[0]!r} then {values[1]!r} on the same model"
    assert torch.is_grad_enabled(), f"{who}.eval_loss() left gradient computation disabled"
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), params[name]), f"{who}.eval_loss() changed parameter {name}"
        before = grads[name]
        if before is None:
            assert p.grad is None, f"{who}.eval_loss() created a gradient for parameter {name}"
        else:
            assert p.grad is not None and torch.equal(p.grad, before), (
                f"{who}.eval_loss() changed the gradient of {name}"
            )
    changed = sorted(name or "<model>" for name, m in model.named_modules() if m.training != modes[name])
    assert not changed, (
        f"{who}.eval_loss() left train/eval mode changed on {', '.join(changed)}; "
        "restore it (e.g. model.train(was_training))"
    )


def check_task_check_loss(cls: type, device: str | torch.device = "cpu", **task_params: Any) -> None:
    """``check_batches`` gives the same batches on every call, and ``check_loss`` on them, called without
    gradients as the accelerator calls it (``check_batches`` > 0), is a finite 0-dim tensor that needs no
    gradient and leaves the parameters and their gradients alone."""
    _check_loss(_build(cls, task_params), label(cls, task_params), as_device(device))


def _check_loss(task: Any, who: str, device: torch.device) -> None:
    model = _model(task, who, 0, device)
    draws = []
    for _ in range(2):
        try:
            draws.append(task.check_batches(0, device, 2))
        except Exception as exc:
            raise AssertionError(f"{who}.check_batches(0, {device}, 2) raised {type(exc).__name__}: {exc}") from exc
    assert isinstance(draws[0], list) and len(draws[0]) == 2, (
        f"{who}.check_batches(0, {device}, 2) returned {draws[0]!r:.80}; return a list of 2 batches"
    )
    for a, b in zip(*draws):
        differ = same_structure(a, b)
        assert differ is None, f"{who}.check_batches() gave different batches on two calls: {differ}"
    params = {name: p.detach().clone() for name, p in model.named_parameters()}
    try:
        with torch.no_grad():
            loss = task.check_loss(model, draws[0])
    except Exception as exc:
        raise AssertionError(
            f"{who}.check_loss(model, batches) raised {type(exc).__name__} without gradients: {exc}; a loss that "
            "needs autograd (input derivatives) must enable it inside check_loss"
        ) from exc
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0, f"{who}.check_loss() must return a 0-dim tensor"
    assert not loss.requires_grad, f"{who}.check_loss() returned a tensor that requires grad; detach it"
    assert bool(torch.isfinite(loss)), f"{who}.check_loss() is {float(loss)} at the initial weights"
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), params[name]), f"{who}.check_loss() changed parameter {name}"
        assert p.grad is None, f"{who}.check_loss() created a gradient for parameter {name}"


def check_task(cls: type, device: str | torch.device = "cpu", **task_params: Any) -> None:
    """Run every task check on ``device`` with ``task_params``; raise ``AssertionError`` at the first failure.

    Builds the task twice in all (the determinism check compares two instances), so a task whose data
    takes a while to make is made only twice.
    """
    _validate(cls)
    who, device = label(cls, task_params), as_device(device)
    task, other_task = _build(cls, task_params), _build(cls, task_params)
    _contract(task, who)
    _determinism(task, other_task, who, device)
    _loss_and_gradients(task, who, device)
    _evaluation(task, who, device)
    _check_loss(task, who, device)
