"""``lbfgs``, ``adam-lbfgs`` and ``soap`` against their definitions, and `KoopmanAccelerator` around
optimizers whose step evaluates the closure several times (L-BFGS) or that stop taking jumps (adam-lbfgs)."""

from __future__ import annotations

import pytest
import torch

from koopsweep import plugins
from koopsweep.accelerator import KoopmanAccelerator
from koopsweep.errors import ParameterError
from koopsweep.optimizers._base import reevaluates_closure, takes_jumps
from koopsweep.testing import check_optimizer_state_dict
from koopsweep.training import build_optimizer


def _problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 5, generator=gen), torch.randn(64, 3, generator=gen)
    params = [(0.3 * torch.randn(5, 3, generator=gen)).requires_grad_(True), torch.zeros(3, requires_grad=True)]
    return x, y, params


class Counted:
    """A closure (tanh regression, so L-BFGS has curvature to learn) that counts its calls."""

    def __init__(self, optimizer, x, y, params) -> None:
        self.optimizer, self.x, self.y, self.params, self.calls = optimizer, x, y, params, 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        self.optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(torch.tanh(self.x @ self.params[0] + self.params[1]), self.y)
        loss.backward()
        return loss


def test_one_lbfgs_step_is_one_torch_lbfgs_iteration():
    """Ten koopsweep steps land bit for bit where one torch L-BFGS call of ten iterations does, with
    the line-search budget of the plugin's max_eval (torch's default would give one iteration none)."""
    x, y, ours = _problem()
    _, optimizer = build_optimizer("lbfgs", ours, 1.0)
    closure = Counted(optimizer, x, y, ours)
    for _ in range(10):
        optimizer.step(closure)
    x, y, theirs = _problem()
    reference = torch.optim.LBFGS(theirs, lr=1.0, max_iter=10, max_eval=260, history_size=50,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-9, tolerance_change=1e-12)  # fmt: skip
    reference.step(Counted(reference, x, y, theirs))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert closure.calls > 10  # the line search evaluates beyond each iteration's first call
    assert reevaluates_closure(optimizer) and takes_jumps(optimizer)


def test_lbfgs_beats_adam_on_a_smooth_full_batch_problem():
    losses = {}
    for name, lr in (("lbfgs", 1.0), ("adam", 1e-2)):
        x, y, params = _problem()
        _, optimizer = build_optimizer(name, params, lr)
        closure = Counted(optimizer, x, y, params)
        for _ in range(30):
            optimizer.step(closure)
        losses[name] = float(closure().detach())
    assert losses["lbfgs"] < losses["adam"]


def test_adam_lbfgs_is_adam_then_lbfgs_from_adams_weights():
    x, y, combined = _problem()
    _, optimizer = build_optimizer("adam-lbfgs", combined, 1e-2, {"switch_step": 5})
    closure = Counted(optimizer, x, y, combined)
    phases = []
    for _ in range(12):
        phases.append((takes_jumps(optimizer), reevaluates_closure(optimizer)))
        optimizer.step(closure)
    assert phases[:5] == [(True, False)] * 5 and phases[5:] == [(False, True)] * 7

    x, y, reference = _problem()
    adam = torch.optim.Adam(reference, lr=1e-2)
    for _ in range(5):
        adam.step(Counted(adam, x, y, reference))
    _, lbfgs = build_optimizer("lbfgs", reference, 1.0)
    for _ in range(7):
        lbfgs.step(Counted(lbfgs, x, y, reference))
    assert all(torch.equal(a, b) for a, b in zip(combined, reference))


def test_adam_lbfgs_checkpoint_resumes_across_the_switch():
    # The conformance check saves at step 13 of 24: in the L-BFGS phase with a switch at 7.
    check_optimizer_state_dict(plugins.load_optimizer("adam-lbfgs"), params={"switch_step": 7})


def test_a_schedule_scales_adams_rate_in_adam_lbfgs():
    _, optimizer = build_optimizer("adam-lbfgs", _problem()[2], 1e-2, {"switch_step": 5})
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert optimizer.adam.param_groups[0]["lr"] == pytest.approx(5e-3)
    assert optimizer.lbfgs.param_groups[0]["lr"] == 1.0


@pytest.mark.parametrize(
    "name, params",
    [("lbfgs", {"max_iter": 0}), ("lbfgs", {"line_search": "armijo"}), ("adam-lbfgs", {"switch_step": -1}),
     ("adam-lbfgs", {"lbfgs_history_size": 0}), ("soap", {"precondition_frequency": 0})],
)  # fmt: skip
def test_bad_parameters_are_one_line_errors(name, params):
    with pytest.raises(ParameterError, match=next(iter(params))):
        plugins.instantiate(plugins.load_optimizer(name), params)


def test_soap_is_the_packages_soap():
    import pytorch_optimizer

    x, y, ours = _problem()
    _, optimizer = build_optimizer("soap", ours, 3e-3)
    assert isinstance(optimizer, pytorch_optimizer.SOAP)
    for _ in range(15):
        optimizer.step(Counted(optimizer, x, y, ours))
    x, y, theirs = _problem()
    reference = pytorch_optimizer.SOAP(theirs, lr=3e-3)
    for _ in range(15):
        reference.step(Counted(reference, x, y, theirs))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_accelerated_lbfgs_gets_real_closures_and_restarts_after_a_kept_jump():
    x, y, params = _problem()
    _, inner = build_optimizer("lbfgs", params, 1.0)
    accelerator = KoopmanAccelerator(inner, "extrapolate-linear", window=4, horizon=4, fallback="none")
    closure = Counted(accelerator, x, y, params)
    seen = []
    for _ in range(5):  # four steps fill the window; the fifth jumps, then steps
        before = closure.calls
        accelerator.step(closure)
        seen.append(closure.calls - before)
    assert accelerator.stats.jumps_accepted == 1
    # The step after the jump was a fresh L-BFGS start: its history holds at most that one step.
    state = inner.state[inner._params[0]]
    assert state["n_iter"] == 1 and len(state["old_dirs"]) == 0
    assert min(seen) >= 2  # every step ran its own line search on real evaluations


def test_accelerated_adam_lbfgs_jumps_in_the_adam_phase_only():
    x, y, params = _problem()
    _, inner = build_optimizer("adam-lbfgs", params, 1e-2, {"switch_step": 20})
    accelerator = KoopmanAccelerator(inner, "extrapolate-linear", window=4, horizon=4, fallback="none")
    closure = Counted(accelerator, x, y, params)
    tried = []
    for _ in range(40):
        accelerator.step(closure)
        tried.append(accelerator.stats.jumps_tried)
    assert tried[19] >= 3 and tried[-1] == tried[20]
    assert accelerator.stats.inner_steps == 40 and inner.steps == 40
