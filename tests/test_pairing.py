"""`koopsweep.pairing.run_paired`: the one paired measurement behind the sweep, bench and the benchmarks."""

from __future__ import annotations

import time

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
                          min_steps=30, eval_every=10, order="rotate")  # fmt: skip
        orders.append(pair.order)
        run = pair.accelerated["jumps"]
        assert run.steps >= 30 and [p.step for p in run.curve][:4] == [0, 10, 20, 30]  # one run, resumed
        assert pair.target == min(pair.targets.values())
    assert orders == [["adam", "sgd", "jumps"], ["sgd", "jumps", "adam"], ["jumps", "adam", "sgd"]]


def test_the_order_does_not_change_what_a_run_computes(task):
    baselines, accelerated = sides()
    pairs = {order: run_paired(task, baselines, accelerated, seed=2, device=CPU, budget=20, schedule=Schedule(),
                               eval_every=10, min_steps=20, order=order)
             for order in pairing.ORDERS}  # fmt: skip
    assert pairs["rotate"].order[0] == "jumps"
    assert pairs["baselines-first"].order == pairs["interleaved"].order == ["adam", "sgd", "jumps"]
    for name in ("adam", "sgd"):
        curves = {tuple((p.step, p.loss) for p in pair.baselines[name].curve) for pair in pairs.values()}
        assert len(curves) == 1
    jumps = {tuple((p.step, p.loss, p.jumps_accepted) for p in pair.accelerated["jumps"].curve) for pair in pairs.values()}
    assert len(jumps) == 1


class LoadedDigits(plugins.load_task("digits-mlp")):
    """digits-mlp on a machine where, after ``busy_after`` training steps (in both runs together), every
    step costs 10 ms more. Counted in steps, not seconds: on a machine already busy with other work the
    steps are slower, and a load that starts at a fixed time would land inside the first run too."""

    busy_after = float("inf")
    steps = 0

    def loss(self, model, batch):
        if torch.is_grad_enabled():  # a training step's loss, not an evaluation
            self.steps += 1
            if self.steps > self.busy_after:
                time.sleep(0.01)
        return super().loss(model, batch)


@pytest.mark.parametrize("order, shares_the_load", [("interleaved", True), ("baselines-first", False)])
def test_interleaving_gives_both_sides_the_same_load_and_each_clock_only_its_own_chunks(order, shares_the_load):
    # Two identical runs; the load arrives once half of the work is done. One after the other, the
    # second pays for all of it; interleaved, both pay alike.
    task = LoadedDigits()
    same = [Side("first", "adam", 3e-3), Side("second", "adam", 3e-3)]
    pairing.warm_up(task, same[0], CPU, Schedule())
    task.busy_after = task.steps + 200  # one run's budget
    started = time.perf_counter()
    pair = run_paired(task, same, [], seed=0, device=CPU, budget=200, schedule=Schedule(), eval_every=10, order=order)
    elapsed = time.perf_counter() - started
    first, second = (pair.baselines[name].time_s for name in ("first", "second"))
    assert first + second < elapsed  # each clock counts its own chunks, never the other's or the checkpoints
    if shares_the_load:
        assert 0.8 < second / first < 1.25
    else:
        assert second / first > 2
    assert [p.loss for p in pair.baselines["first"].curve] == [p.loss for p in pair.baselines["second"].curve]


def test_interleaved_hands_the_hook_the_baselines_under_way_and_stops_once_pruned(task):
    baselines, accelerated = sides()
    seen = []

    def hook(runs):
        def on_checkpoint(point):
            # The baselines' chunks up to this step ran first.
            seen.append((point.step, runs["adam"].steps, runs["sgd"].steps))
            return point.step >= 20

        return on_checkpoint

    pair = run_paired(task, baselines, accelerated, seed=0, device=CPU, budget=50, schedule=Schedule(), eval_every=10,
                      hook=hook)  # fmt: skip
    assert seen == [(10, 10, 10), (20, 20, 20)]
    assert pair.accelerated["jumps"].stopped == "pruned"
    assert pair.baselines["adam"].steps == 20  # nothing trained past the pruning


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
