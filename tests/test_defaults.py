"""The no-regret default: `KoopmanAccelerator(optimizer)` with no other argument judges jumps with
`worth-it` and backs off after rejections, so that a run whose jumps do not pay trains as the bare
optimizer would, step for step, and stops paying for attempts that keep failing."""

from __future__ import annotations

import math
import time

import torch
from test_accelerator import Filled, Scaled, assert_same_params, batches, mlp, run_mlp

from koopsweep import KoopmanAccelerator
from koopsweep.fallbacks import WorthIt
from koopsweep.knobs import KNOBS


def test_the_default_is_worth_it_with_backoff():
    model = mlp()
    acc = KoopmanAccelerator(torch.optim.Adam(model.parameters(), lr=1e-2))
    assert isinstance(acc.fallback, WorthIt) and acc.fallback.params == WorthIt.defaults
    assert acc.backoff == KNOBS["backoff"].default == 2
    assert acc.max_overhead is None  # a run stays a function of its seed (max_overhead paces by timing)
    assert acc.window == 16 and acc.horizon == 100 and type(acc.variant).__name__ == "GlobalDMD"


def test_jumps_that_keep_failing_cost_no_more_than_their_checks_and_thin_out():
    """Every jump is far worse (noise added to the weights): the default keeps none, the run is the
    bare optimizer's bit for bit, each attempt costs at most one fit and one check, and the attempts
    come further apart (2**min(k, 2) - 1 windows' wait after k rejections in a row)."""
    steps, window = 400, 4
    data = batches(steps)
    bare, _, bare_losses = run_mlp(lambda p: torch.optim.Adam(p, lr=1e-2), data)
    gaps: list[int] = []

    def wrap(opt):
        acc = KoopmanAccelerator(opt, Filled(noise=5.0), window=window, horizon=10, explode_ratio=math.inf)
        decide = acc.fallback.decide
        acc.fallback.decide = lambda jump: (gaps.append(jump.steps_since_last_attempt), decide(jump))[1]
        return acc

    model, acc, losses = run_mlp(lambda p: torch.optim.Adam(p, lr=1e-2), data, wrap=wrap)
    stats = acc.stats
    assert stats.jumps_accepted == 0
    assert_same_params(bare, model)
    assert all(torch.equal(a, b) for a, b in zip(bare_losses, losses))
    # One check per fit, and the attempts declined from the loss curve alone (the noisy minibatch curve:
    # not descending, not smooth) fit nothing.
    assert stats.rejections.get("not-descending", 0) + stats.rejections.get("not-smooth", 0) >= 1
    assert stats.fits == stats.rejections.get("loss-increased") <= stats.jumps_tried - 1
    assert stats.evaluations - stats.jumps_tried <= stats.fits  # loss_before is the inner step's own
    # The wait doubles up to 3 windows: 400 steps hold about 26 attempts, not 400 / 4 = 100.
    assert gaps[1:3] == [2 * window, 4 * window]
    assert all(g == 4 * window for g in gaps[3:])
    assert stats.jumps_tried <= 400 // (4 * window) + 2


def test_jumps_worth_their_horizon_are_still_taken():
    """On a trajectory that a linear extrapolation continues well (an MLP under plain SGD at a small
    rate) the default keeps jumps, and lands below the bare optimizer's loss at equal gradient steps."""
    data = batches(1, seed=3) * 200  # one fixed batch: full-batch training, a smooth trajectory
    sgd = lambda p: torch.optim.SGD(p, lr=0.05)  # noqa: E731
    bare, _, bare_losses = run_mlp(sgd, data)
    model, acc, losses = run_mlp(sgd, data, wrap=lambda opt: KoopmanAccelerator(opt, Scaled(), window=8, horizon=40))
    assert acc.stats.jumps_accepted >= 1
    assert losses[-1].item() < bare_losses[-1].item()
    assert "measuring" not in acc.stats.rejections  # the window's own loss curve gives the first rate


class SlowFit(Filled):
    """`Filled` (a far worse prediction, always rejected) whose fit takes 20 ms, many steps' worth."""

    def fit(self, snapshots):
        time.sleep(0.02)
        super().fit(snapshots)


def test_failing_attempts_cost_at_most_max_overhead_of_the_training_time():
    """However expensive a fit is next to a step, rejected attempts wait until their cost is at most
    ``max_overhead`` of the time spent training since; with no cap (backoff alone) they cost far more."""
    data = batches(600)
    spent = {}
    for cap in (0.05, None):
        started = time.perf_counter()
        _, acc, _ = run_mlp(
            lambda p: torch.optim.Adam(p, lr=1e-2), data,
            wrap=lambda opt: KoopmanAccelerator(opt, SlowFit(noise=5.0), window=4, horizon=10, fallback="verify",
                                                backoff=0, explode_ratio=math.inf, max_overhead=cap),
        )  # fmt: skip
        total = time.perf_counter() - started
        assert acc.stats.jumps_accepted == 0
        spent[cap] = (acc.stats.fit_time_s, total, acc.stats.fits)
    fit_s, total, fits = spent[0.05]
    # The first attempt is paid before anything is known; each later one only once it is owed.
    assert fit_s - fit_s / fits <= 0.05 * total * 1.5 + 0.02, spent
    assert spent[None][2] >= 100 and fits < spent[None][2] / 10, spent
    assert acc.stats.to_dict()["inner_steps"] == 600
