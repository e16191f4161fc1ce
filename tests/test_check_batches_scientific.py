"""Check batches of the scientific tasks: fresh data the run never trains on.

The PINNs and the neural ODE train full batch, so the default check (batches from a training stream
seeded apart) would be their training data again. These tests hold each one's check data apart from its
training and evaluation data, fixed by ``data_seed`` alone, and its check loss usable where the
accelerator calls it (without gradients, though a PINN's loss differentiates the network by its inputs).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from koopsweep.tasks._allen_cahn import PINNAllenCahn
from koopsweep.tasks._burgers import PINNBurgers
from koopsweep.tasks._helmholtz import PINNHelmholtz
from koopsweep.tasks._neural_ode import NeuralODE
from koopsweep.training import KoopmanConfig, TrainingRun

CPU = torch.device("cpu")

#: Each task at a size that trains in milliseconds.
TINY: dict[type, dict[str, Any]] = {
    PINNBurgers: {"hidden": 8, "depth": 2, "n_interior": 64, "n_boundary": 16, "n_eval": 50},
    PINNAllenCahn: {"hidden": 8, "depth": 2, "n_interior": 64, "n_initial": 16, "n_eval": 50},
    PINNHelmholtz: {"hidden": 8, "depth": 2, "n_interior": 64, "n_boundary": 16, "n_eval": 50},
    NeuralODE: {"hidden": 8, "depth": 1, "n_train": 4, "n_eval": 3, "n_times": 10, "t_end": 1.8, "segment": 4},
}

tasks = pytest.mark.parametrize("cls", list(TINY), ids=lambda cls: cls.__name__)


def tensors(batch: Any) -> tuple[torch.Tensor, ...]:
    """A batch's tensors: a PINN's tuple of points, or the neural ODE's one tensor of windows."""
    return batch if isinstance(batch, tuple) else (batch,)


def training_and_evaluation(task: Any) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """The training batch's tensors and their evaluation twins."""
    data = task._data()
    keys = getattr(task, "batch_keys", ("segments",))
    return tuple(data[key] for key in keys), tuple(data["eval_" + key] for key in keys)


@tasks
def test_check_points_are_fresh_draws_fixed_by_the_data_seed(cls: type) -> None:
    task = cls(**TINY[cls])
    train, evaluation = training_and_evaluation(task)
    checks = [tensors(batch) for batch in task.check_batches(seed=3, device=CPU, n=2)]
    assert len(checks) == 2
    for check in checks:
        # the training batch's shapes, so the check weighs its terms as the training loss does
        assert [t.shape for t in check] == [t.shape for t in train]
        assert not torch.equal(check[0], train[0])
        assert check[0].shape != evaluation[0].shape or not torch.equal(check[0], evaluation[0])
    assert not torch.equal(checks[0][0], checks[1][0])
    # every run seed judges on the same data, as every run seed trains on the same data
    again = [tensors(batch) for batch in task.check_batches(seed=11, device=CPU, n=2)]
    assert all(torch.equal(a, b) for a, b in zip(checks[1], again[1]))
    other = tensors(cls(**TINY[cls], data_seed=1).check_batches(seed=3, device=CPU, n=1)[0])
    assert not torch.equal(other[0], checks[0][0])


@tasks
def test_check_loss_works_without_gradients_and_leaves_the_weights_alone(cls: type) -> None:
    task = cls(**TINY[cls])
    model = task.build_model(0)
    checks = task.check_batches(seed=0, device=CPU, n=2)
    with torch.no_grad():  # as the accelerator calls it
        loss = task.check_loss(model, checks)
    assert loss.shape == () and not loss.requires_grad and torch.isfinite(loss)
    assert all(p.grad is None for p in model.parameters())
    # the mean of the training loss on each draw
    expected = sum(float(task.loss(model, batch).detach()) for batch in checks) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-5)


@tasks
def test_a_run_judges_its_jumps_on_the_check_points(cls: type, one_thread: None) -> None:
    task = cls(**TINY[cls])
    config = KoopmanConfig(variant="dmd-global", window=4, horizon=8, fallback="verify", check_batches=1)
    run = TrainingRun(task, optimizer="adam", lr=1e-2, seed=0, device=CPU, koopman=config, eval_every=10)
    run.advance(40)
    stats = run.stepper.stats
    assert stats.jumps_tried > 0
    # each attempt evaluates the check loss before and at the jump; the closure never judges
    assert stats.evaluations == 2 * stats.jumps_tried
    assert run.curve[-1].loss < run.curve[0].loss


def test_conformance_catches_a_check_loss_that_needs_gradients() -> None:
    from koopsweep.tasks import Task
    from koopsweep.testing import check_task_check_loss

    class PlainCheck(PINNBurgers):
        """A PINN that judges jumps with the plain training loss, whose input derivatives need autograd."""

        check_loss = Task.check_loss

    check_task_check_loss(PINNBurgers, **TINY[PINNBurgers])
    with pytest.raises(AssertionError, match="without gradients"):
        check_task_check_loss(PlainCheck, **TINY[PINNBurgers])
