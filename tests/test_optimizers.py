"""Optimizer plugins: every built-in through the conformance suite, each trick against its definition,
and the learning-rate schedules that drive baselines and inner optimizers alike."""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner

from koopsweep import plugins
from koopsweep.cli import main
from koopsweep.errors import ParameterError, UsageError
from koopsweep.optimizers._muon import CombinedOptimizer
from koopsweep.optimizers._trajectory import SlowWeights, slow_weights, weight_average
from koopsweep.schedules import FINAL_RATIO, Schedule
from koopsweep.testing import OptimizerConformance, check_optimizer_contract
from koopsweep.training import TrainingRun, build_optimizer, learning_rate

BUILT_INS = [
    "adam", "adamw", "sgd", "adagrad", "adadelta", "rmsprop", "nadam", "muon",
    "lookahead-adam", "ema-adam", "schedulefree-adamw", "snoo-adam", "lbfgs", "adam-lbfgs", "soap",
]  # fmt: skip


def test_every_built_in_is_registered_by_koopsweep_itself():
    rows = {row.name: row for row in plugins.describe(["optimizers"])}
    for name in BUILT_INS:
        assert rows[name].status == "ok", rows[name].error
        assert rows[name].distribution == "koopsweep"


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # benchmarks/gpu.sh runs them on a GPU


@pytest.mark.parametrize("device_name", DEVICES)
@pytest.mark.parametrize("name", BUILT_INS)
class TestBuiltInConformance(OptimizerConformance):
    """The shipped suite, once per built-in and device (the class attributes are set from the parameters)."""

    @pytest.fixture(autouse=True)
    def _choose(self, name, device_name):
        self.optimizer_cls = plugins.load_optimizer(name)
        self.device = device_name


def _problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 5, generator=gen), torch.randn(64, 3, generator=gen)
    start = [0.3 * torch.randn(5, 3, generator=gen), torch.zeros(3)]
    return x, y, start


def _fresh(start):
    return [t.clone().requires_grad_(True) for t in start]


def _steps(optimizer, params, x, y, n):
    trace = []
    for _ in range(n):
        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(x @ params[0] + params[1], y)
            loss.backward()
            return loss

        optimizer.step(closure)
        trace.append([p.detach().clone() for p in params])
    return trace


def test_lookahead_adam_follows_pytorch_optimizers_lookahead():
    from pytorch_optimizer import Lookahead

    x, y, start = _problem()
    ours = _fresh(start)
    _, optimizer = build_optimizer("lookahead-adam", ours, 1e-2, {"k": 4, "alpha": 0.6})
    theirs = _fresh(start)
    reference = Lookahead(torch.optim.Adam(theirs, lr=1e-2), k=4, alpha=0.6)
    for a, b in zip(_steps(optimizer, ours, x, y, 30), _steps(reference, theirs, x, y, 30)):
        for p, q in zip(a, b):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert slow_weights(optimizer).syncs == 7


def test_snoo_without_momentum_is_lookahead_and_with_it_follows_the_nesterov_recurrence():
    x, y, start = _problem(1)
    a, b = _fresh(start), _fresh(start)
    _, snoo = build_optimizer("snoo-adam", a, 1e-2, {"k": 3, "outer_lr": 0.6, "momentum": 0.0})
    _, look = build_optimizer("lookahead-adam", b, 1e-2, {"k": 3, "alpha": 0.6})
    for p, q in zip(_steps(snoo, a, x, y, 12)[-1], _steps(look, b, x, y, 12)[-1]):
        assert torch.equal(p, q)
    # With momentum, by hand: s = slow - fast; buf = mu * buf + s; slow -= eta * (s + mu * buf).
    params = [torch.tensor([1.0, -2.0], requires_grad=True)]
    inner = torch.optim.SGD(params, lr=0.1)
    outer = SlowWeights(inner, k=2, lr=0.5, momentum=0.8)
    slow, buf = params[0].detach().clone(), torch.zeros(2)
    for _ in range(3):
        fast = slow.clone()
        for _ in range(2):
            fast = fast - 0.1 * 2 * fast  # the gradient of |w|^2
        s = slow - fast
        buf = 0.8 * buf + s
        slow = slow - 0.5 * (s + 0.8 * buf)
        for _ in range(2):
            inner.zero_grad()
            (params[0] ** 2).sum().backward()
            inner.step()
        torch.testing.assert_close(params[0].detach(), slow)
        assert torch.equal(params[0].detach(), outer.slow[0])


def test_ema_adam_is_judged_at_the_debiased_average_of_adams_own_iterates():
    x, y, start = _problem(2)
    ema_params, adam_params = _fresh(start), _fresh(start)
    plugin, ema = build_optimizer("ema-adam", ema_params, 1e-2, {"decay": 0.9})
    _, adam = build_optimizer("adam", adam_params, 1e-2)
    ema_trace = _steps(ema, ema_params, x, y, 15)
    adam_trace = _steps(adam, adam_params, x, y, 15)
    for p, q in zip(ema_trace[-1], adam_trace[-1]):
        assert torch.equal(p, q)  # training follows Adam exactly
    weights = [0.1 * 0.9 ** (14 - i) for i in range(15)]
    expected = [sum(w * it[j] for w, it in zip(weights, adam_trace)) / (1 - 0.9**15) for j in range(2)]
    before = [p.detach().clone() for p in ema_params]
    with plugin.evaluation(ema):
        for p, e in zip(ema_params, expected):
            torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(p, b) for p, b in zip(ema_params, before))
    assert weight_average(ema).steps == 15 and weight_average(adam) is None


def test_schedulefree_is_judged_at_the_packages_own_evaluation_point():
    import schedulefree

    x, y, start = _problem(3)
    ours, theirs = _fresh(start), _fresh(start)
    plugin, optimizer = build_optimizer("schedulefree-adamw", ours, 5e-3)
    reference = schedulefree.AdamWScheduleFree(theirs, lr=5e-3)
    reference.train()
    _steps(optimizer, ours, x, y, 10)
    _steps(reference, theirs, x, y, 10)
    training = [p.detach().clone() for p in ours]
    reference.eval()
    with plugin.evaluation(optimizer):
        for p, q in zip(ours, theirs):
            assert torch.equal(p.detach(), q.detach())
    assert all(torch.equal(p, t) for p, t in zip(ours, training))  # bit for bit, despite the lerp round trip
    assert optimizer.param_groups[0]["train_mode"]


def test_muon_takes_the_matrices_and_adamw_the_rest_in_one_optimizer():
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    _, optimizer = build_optimizer("muon", model.parameters(), 1e-3)
    assert isinstance(optimizer, CombinedOptimizer)
    muon, adamw = optimizer.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert all(p.ndim == 2 for g in muon.param_groups for p in g["params"])
    assert all(p.ndim == 1 for g in adamw.param_groups for p in g["params"])
    x = torch.randn(16, 6)
    model(x).square().mean().backward()
    optimizer.step()
    assert len(optimizer.state) == 4  # every parameter's state, in the one shared mapping
    optimizer.state.clear()  # what KoopmanAccelerator(reset_state="reset") does
    assert not muon.state and not adamw.state
    optimizer.load_state_dict(optimizer.state_dict())
    assert muon.param_groups[0] is optimizer.param_groups[0] and adamw.state is optimizer.state


def test_bad_optimizer_parameters_are_one_line_errors():
    for name, params in (
        ("adam", {"beta1": 1.5}), ("sgd", {"momentum": 0.0, "nesterov": True}), ("lookahead-adam", {"k": 0}),
        ("snoo-adam", {"outer_lr": -1.0}), ("ema-adam", {"decay": 1.0}), ("muon", {"adjust_lr_fn": "magic"}),
        ("adamw", {"betas": (0.9, 0.99)}),
    ):  # fmt: skip
        with pytest.raises(ParameterError) as info:
            plugins.load_optimizer(name)(**params)
        assert "\n" not in str(info.value)


def test_a_broken_optimizer_plugin_is_caught_by_the_contract_check():
    class NoRate(plugins.load_optimizer("adam")):
        default_lr = 0.0

    with pytest.raises(AssertionError, match="default_lr must be a positive learning rate"):
        check_optimizer_contract(NoRate)


def test_untuned_optimizers_run_at_their_default_lr():
    task = plugins.load_task("digits-mlp")
    assert learning_rate(task, "adam") == (task.baseline_lrs["adam"], True)
    assert learning_rate(task, "nadam") == (plugins.load_optimizer("nadam").default_lr, False)
    with pytest.raises(UsageError, match="no optimizer named 'bfgs'"):
        learning_rate(task, "bfgs")


# ------------------------------------------------------------------------------------------ schedules
def test_schedule_factors():
    cosine = Schedule("cosine", warmup=10, total_steps=110)
    assert [cosine.factor(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert cosine.factor(10) == 1.0 and math.isclose(cosine.factor(60), (1 + FINAL_RATIO) / 2)
    assert math.isclose(cosine.factor(110), FINAL_RATIO) and math.isclose(cosine.factor(500), FINAL_RATIO)
    assert Schedule("constant", warmup=4).factor(100) == 1.0 and Schedule().is_constant
    assert cosine.for_optimizer(schedule_free=True) == Schedule("constant", 10, 110)
    with pytest.raises(UsageError, match="schedule 'linear'"):
        Schedule("linear")
    with pytest.raises(UsageError, match="longer than its warmup"):
        Schedule("cosine", warmup=20, total_steps=20)


@pytest.mark.parametrize("optimizer, final", [("adam", FINAL_RATIO), ("schedulefree-adamw", 1.0)])
def test_the_schedule_drives_baseline_and_inner_optimizer_alike(optimizer, final):
    from koopsweep.training import KoopmanConfig

    task = plugins.load_task("digits-mlp")()
    schedule = Schedule("cosine", warmup=5, total_steps=40)
    runs = [
        TrainingRun(task, optimizer=optimizer, lr=2e-3, seed=0, device=torch.device("cpu"), eval_every=10,
                    koopman=koopman, schedule=schedule)
        for koopman in (None, KoopmanConfig("extrapolate-linear", window=4, horizon=8))
    ]  # fmt: skip
    traces = []
    for run in runs:
        rates = []
        for _ in range(50):
            run.advance(run.steps + 1)
            rates.append(run.optimizer.param_groups[0]["lr"])
        traces.append(rates)
        assert math.isclose(rates[-1], 2e-3 * final)
    assert traces[0] == traces[1]  # jumps do not advance the schedule
    assert runs[0].result().schedule == ("cosine, warmup 5" if final < 1 else "constant, warmup 5")


def test_ema_runs_are_evaluated_at_their_average():
    task = plugins.load_task("digits-mlp")()
    run = TrainingRun(task, optimizer="ema-adam", lr=3e-3, seed=0, device=torch.device("cpu"), eval_every=20,
                      optimizer_params={"decay": 0.9})  # fmt: skip
    run.advance(20)
    with run.plugin.evaluation(run.optimizer):
        at_average = task.eval_loss(run.model, torch.device("cpu"))
    at_iterate = task.eval_loss(run.model, torch.device("cpu"))
    assert run.curve[-1].loss == at_average != at_iterate


def test_plugins_list_shows_the_optimizer_group():
    result = CliRunner().invoke(main, ["plugins", "list", "--group", "optimizers"])
    assert result.exit_code == 0, result.output
    for name in ("schedulefree-adamw", "snoo-adam", "lookahead-adam"):
        assert name in result.output
    assert "dmd-global" not in result.output
