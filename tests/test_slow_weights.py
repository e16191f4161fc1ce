"""Koopman on slow weights (``snapshot="slow"``): snapshots at the synchronisations of a Lookahead or
SNOO inner optimizer, exact jumps on a slow trajectory that is linear, accepted jumps that move the
slow weights, rejected ones that change nothing, and a ``state_dict`` round trip mid-window."""

from __future__ import annotations

import pytest
import torch

from koopsweep import KoopmanAccelerator, Variant
from koopsweep.errors import ParameterError
from koopsweep.optimizers._trajectory import SlowWeights, slow_weights
from koopsweep.training import build_optimizer
from koopsweep.variants._dmd import GlobalDMD

from test_accelerator import _resume, batches, mlp
from test_accelerator import mlp_closure as closure_for


class Recorded(Variant):
    """Linear extrapolation of the window ``factor`` times as far; keeps every window it was fitted on."""

    defaults = {"factor": 1.0}

    def __init__(self, **params):
        super().__init__(**params)
        self.windows: list[list[torch.Tensor]] = []
        self.predictions: list[list[torch.Tensor]] = []

    def fit(self, snapshots):
        self.windows.append([s.clone() for s in snapshots])
        self.last = [s[-1].clone() for s in snapshots]
        self.slope = [(s[-1] - s[0]) / (s.shape[0] - 1) for s in snapshots]

    def predict(self, horizon):
        pred = [x + self.params["factor"] * horizon * v for x, v in zip(self.last, self.slope)]
        self.predictions.append([p.clone() for p in pred])
        return pred


def outer_loop(name="lookahead-adam", seed=0, **params):
    model = mlp(seed)
    _, optimizer = build_optimizer(name, model.parameters(), 1e-2, params)
    return model, optimizer


def wrapped(optimizer, variant, snapshot="slow", **options):
    """The accelerator under test: every window tried, jumps kept unless a test names its rule."""
    options.setdefault("fallback", "none")
    options.setdefault("backoff", 0)
    return KoopmanAccelerator(optimizer, variant, snapshot=snapshot, **options)


def test_snapshots_are_the_slow_weights_at_each_synchronisation():
    k, window = 4, 3
    data = batches(k * window + 1)
    bare_model, bare = outer_loop(k=k)
    slow_at_syncs = []
    for batch in data[: k * window]:
        bare.step(closure_for(bare_model, bare, batch))
        if slow_weights(bare).inner_steps % k == 0:
            slow_at_syncs.append([s.clone() for s in slow_weights(bare).slow])

    model, optimizer = outer_loop(k=k)
    variant = Recorded()
    acc = wrapped(optimizer, variant, window=window, horizon=2 * k)
    assert acc.stride == k  # the outer loop's k
    for batch in data:
        acc.step(closure_for(model, acc, batch))
    [fitted] = variant.windows
    for i, slow in enumerate(slow_at_syncs):
        for row, expected in zip(fitted, slow):
            assert torch.equal(row[i], expected)
    assert acc.stats.jumps_tried == 1 and acc.effective_horizon(2 * k) == 2 * k


def test_dmd_on_the_slow_weights_of_lookahead_sgd_lands_where_the_outer_loop_would():
    """Lookahead around gradient descent on a quadratic moves its slow weights by a fixed affine map
    per synchronisation, so DMD on them predicts later slow weights exactly."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    hessian = q @ torch.diag(torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)) @ q.T
    centre = torch.full((4,), 0.5, dtype=torch.float64)
    start = torch.randn(4, dtype=torch.float64)
    k, window, syncs_ahead = 3, 10, 8

    def lookahead_sgd():
        x = torch.nn.Parameter(start.clone())
        inner = torch.optim.SGD([x], lr=0.2)
        SlowWeights(inner, k=k, lr=0.5, momentum=0.0)

        def closure():
            inner.zero_grad()
            loss = 0.5 * (x - centre) @ hessian @ (x - centre)
            loss.backward()
            return loss

        return x, inner, closure

    x, bare, closure = lookahead_sgd()
    for _ in range(k * (window + syncs_ahead)):
        bare.step(closure)
    target = slow_weights(bare).slow[0].clone()

    x, inner, closure = lookahead_sgd()
    acc = wrapped(inner, GlobalDMD(dtype="float64"), window=window, horizon=k * syncs_ahead)
    for _ in range(k * window + 1):  # the window, then the jump and one inner step
        acc.step(closure)
    assert acc.stats.jumps_accepted == 1
    torch.testing.assert_close(slow_weights(inner).slow[0], target, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["lookahead-adam", "snoo-adam"])
def test_an_accepted_jump_moves_the_slow_weights_with_the_model(name):
    k, window = 5, 3
    model, optimizer = outer_loop(name, k=k)
    variant = Recorded(factor=2.0)
    acc = wrapped(optimizer, variant, window=window, horizon=k)
    for batch in batches(k * window + 1):
        acc.step(closure_for(model, acc, batch))
    assert acc.stats.jumps_accepted == 1
    [jumped] = variant.predictions
    # The jump step's inner step moved only the fast weights; the next sync starts from the jump.
    for slow, expected in zip(slow_weights(optimizer).slow, jumped):
        assert torch.equal(slow, expected)


def test_rejected_jumps_leave_the_outer_loop_exactly_as_without_them():
    data = batches(60)
    bare_model, bare = outer_loop("snoo-adam", k=4)
    for batch in data:
        bare.step(closure_for(bare_model, bare, batch))
    model, optimizer = outer_loop("snoo-adam", k=4)
    acc = wrapped(optimizer, Recorded(factor=-50.0), window=3, horizon=8, fallback="verify")
    for batch in data:
        acc.step(closure_for(model, acc, batch))
    assert acc.stats.jumps_tried >= 4 and acc.stats.jumps_accepted == 0
    for p, q in zip(model.parameters(), bare_model.parameters()):
        assert torch.equal(p, q)
    for s, t in zip(slow_weights(optimizer).slow, slow_weights(bare).slow):
        assert torch.equal(s, t)


@pytest.mark.parametrize("save_after", [7, 12])  # mid-window, and with a jump due
def test_state_dict_round_trip_mid_window(save_after):
    data = batches(40)

    def make():
        model, optimizer = outer_loop("snoo-adam", k=4)
        return model, wrapped(optimizer, Recorded(factor=0.5), window=3, horizon=8, fallback="verify")

    (model, acc), (resumed_model, resumed) = make(), make()
    for batch in data[:save_after]:
        acc.step(closure_for(model, acc, batch))
    _resume(model, acc, resumed_model, resumed)
    for batch in data[save_after:]:
        acc.step(closure_for(model, acc, batch))
        resumed.step(closure_for(resumed_model, resumed, batch))
    assert acc.stats.jumps_tried >= 3 and acc.stats.jumps_tried == resumed.stats.jumps_tried
    for p, q in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)


def test_slow_snapshots_need_an_outer_loop_and_its_stride():
    model = mlp()
    with pytest.raises(ParameterError, match="snapshot='slow' needs an inner optimizer with slow weights"):
        KoopmanAccelerator(torch.optim.Adam(model.parameters()), snapshot="slow")
    _, optimizer = outer_loop(k=5)
    with pytest.raises(ParameterError, match="stride=3 is invalid with snapshot='slow'.*k=5"):
        KoopmanAccelerator(optimizer, snapshot="slow", stride=3)
    assert KoopmanAccelerator(optimizer, snapshot="slow", stride=5).stride == 5


def test_a_training_run_takes_snapshot_slow_from_its_config():
    from koopsweep.plugins import instantiate, load_task
    from koopsweep.training import KoopmanConfig, train

    task = instantiate(load_task("digits-mlp"), {})
    config = KoopmanConfig(variant="dmd-global", snapshot="slow", window=4, horizon=20, fallback="verify", backoff=0)
    result = train(task, optimizer="lookahead-adam", lr=1e-2, seed=0, device=torch.device("cpu"), max_steps=45,
                   koopman=config, optimizer_params={"k": 5})  # fmt: skip
    # 45 steps: syncs at 5, 10, ..., 45; windows of 4 syncs, each attempt's step starting the next window
    assert result.stats["snapshots_recorded"] == 9 and result.stats["jumps_tried"] == 2
    with pytest.raises(ParameterError, match="snapshot='slow' needs an inner optimizer with slow weights"):
        train(task, optimizer="adam", lr=1e-2, seed=0, device=torch.device("cpu"), max_steps=5, koopman=config)
