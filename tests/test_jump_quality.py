"""benchmarks/jump_quality.py: its look-ahead copy must be an independent twin of the run, or the
"true" column would be measured on a run that shares (and corrupts) the original's optimizer state."""

from __future__ import annotations


import pytest
import torch


@pytest.mark.parametrize("optimizer", ["adam", "adadelta"])
def test_the_look_ahead_copy_is_an_independent_twin(optimizer, load_benchmark):
    jq = load_benchmark("jump_quality")
    from koopsweep.plugins import load_task

    task = load_task("digits-mlp")(batch_size=64)  # minibatches: the copy must replay the stream too
    run = jq.PlainRun(task, optimizer, 0.01, seed=0, device=torch.device("cpu"))
    for _ in range(7):
        run.step()
    twin = run.copy()
    before = run.params()
    for _ in range(5):
        twin.step()
    assert all(torch.equal(a, b) for a, b in zip(before, run.params()))  # the original did not move
    for _ in range(5):
        run.step()
    # the same weights, state and batches give the same five steps
    assert all(torch.equal(a, b) for a, b in zip(run.params(), twin.params()))
    assert not all(torch.equal(a, b) for a, b in zip(before, run.params()))


def test_window_snapshots_mean_mode_averages_each_block(load_benchmark):
    jq = load_benchmark("jump_quality")
    from koopsweep.plugins import load_task

    task = load_task("digits-mlp")()
    run = jq.PlainRun(task, "adam", 0.01, seed=0, device=torch.device("cpu"))
    twin = run.copy()
    snaps = jq.window_snapshots(run, window=2, stride=3, snapshot="mean")
    iterates = []
    for _ in range(6):
        twin.step()
        iterates.append(twin.params())
    for k, snap in enumerate(snaps):
        assert snap.shape[0] == 2
        torch.testing.assert_close(snap[1], torch.stack([it[k] for it in iterates[3:]]).mean(0))
