"""`koopsweep.pairing.run_paired`: the one paired measurement behind the sweep, bench and the benchmarks."""

from __future__ import annotations

import pytest
import torch

from koopsweep import pairing, plugins
from koopsweep.pairing import Side, run_paired
from koopsweep.schedules import Schedule
from koopsweep.training import KoopmanConfig

CPU = torch.device("cpu")


@pytest.fixture
def task():
    return plugins.load_task("digits-mlp")()


def sides():
    koopman = KoopmanConfig("extrapolate-linear", window=4, horizon=8)
    return [Side("adam", "adam", 3e-3), Side("sgd", "sgd", 0.1)], [Side("jumps", "adam", 3e-3, koopman=koopman)]


def test_rotate_takes_turns_by_seed_and_pauses_an_accelerated_run_until_the_target_is_known(task):
    baselines, accelerated = sides()
    orders = []
    for seed in range(3):
        pair = run_paired(task, baselines, accelerated, seed=seed, device=CPU, budget=30, schedule=Schedule(),
                          min_steps=30, eval_every=10)  # fmt: skip
        orders.append(pair.order)
        run = pair.accelerated["jumps"]
        assert run.steps >= 30 and [p.step for p in run.curve][:4] == [0, 10, 20, 30]  # one run, resumed
        assert pair.target == min(pair.targets.values())
    assert orders == [["adam", "sgd", "jumps"], ["sgd", "jumps", "adam"], ["jumps", "adam", "sgd"]]


def test_the_order_does_not_change_what_a_run_computes(task):
    baselines, accelerated = sides()
    first = run_paired(task, baselines, accelerated, seed=2, device=CPU, budget=20, schedule=Schedule(), eval_every=10)
    again = run_paired(task, baselines, accelerated, seed=2, device=CPU, budget=20, schedule=Schedule(), eval_every=10,
                       order="baselines-first")  # fmt: skip
    assert again.order == ["adam", "sgd", "jumps"] and first.order[0] == "jumps"
    for name in ("adam", "sgd"):
        assert [p.loss for p in first.baselines[name].curve] == [p.loss for p in again.baselines[name].curve]


def test_a_warm_up_runs_once_per_configuration_and_the_hook_sees_the_baselines(task, monkeypatch):
    monkeypatch.setattr(pairing, "_warmed", set())
    baselines, accelerated = sides()
    seen = []

    def hook(done):
        seen.append(sorted(done))
        return None

    for seed in range(2):
        run_paired(task, baselines, accelerated, seed=seed, device=CPU, budget=10, schedule=Schedule(), hook=hook)
    assert len(pairing._warmed) == 3  # adam, sgd, and the accelerated configuration: once each
    assert seen == [["adam", "sgd"], ["adam", "sgd"]]
    with pytest.raises(ValueError, match="order 'random'"):
        run_paired(task, baselines, accelerated, seed=0, device=CPU, budget=10, schedule=Schedule(), order="random")
