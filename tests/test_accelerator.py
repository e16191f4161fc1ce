"""KoopmanAccelerator: jump bookkeeping, exact restores, closure reuse, guards, checkpoints, options.

Most tests use small `Variant` subclasses defined here (an exact predictor for gradient descent on a
quadratic, linear extrapolation, broken predictors), so that the machinery is tested independently of
the DMD variants; one test runs the real ``dmd-global``.
"""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from koopsweep import AcceleratorStats, KoopmanAccelerator, Variant
from koopsweep.errors import ParameterError, PluginNotFoundError, UsageError
from koopsweep.fallbacks import Decision, FallbackRule


def accelerator(optimizer, variant="dmd-global", **options):
    """A `KoopmanAccelerator` under the rule and schedule these mechanics tests are written for (verify,
    every window tried, a schedule of counts, not times) unless a test names its own; the defaults
    themselves: tests/test_defaults.py."""
    options.setdefault("fallback", "verify")
    options.setdefault("backoff", 0)
    options.setdefault("max_overhead", None)
    return KoopmanAccelerator(optimizer, variant, **options)

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: a second intra-op thread only adds synchronisation (and, on a loaded
    2-core machine, spinning that made this file 20x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------------------
# problems


class Quadratic:
    """0.5 (w - w*)^T H (w - w*) with w split over several float64 tensors: plain SGD on it is exactly
    linear, x(t+1) = w* + M (x(t) - w*) with M = I - lr H."""

    def __init__(self, shapes=((2,), (2, 2), (1,)), lr=0.3, seed=0, spectrum=(0.5, 2.0)):
        g = torch.Generator().manual_seed(seed)
        self.shapes = shapes
        self.lr = lr
        n = sum(math.prod(s) for s in shapes)
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        # lr * eig(H) in [0.15, 0.6]: contraction factors 0.4..0.85, well separated, so that the Krylov
        # matrix of a short window is well conditioned (DMD fits it to ~1e-12 in float64)
        self.H = q @ torch.diag(torch.linspace(*spectrum, n, dtype=torch.float64)) @ q.T
        self.w_star = torch.randn(n, generator=g, dtype=torch.float64)
        self.init = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
        self.M = torch.eye(n, dtype=torch.float64) - lr * self.H

    def params(self):
        return [torch.nn.Parameter(t.clone()) for t in self.init]

    def flat(self, tensors):
        return torch.cat([t.detach().reshape(-1) for t in tensors])

    def split(self, flat):
        out, i = [], 0
        for s in self.shapes:
            k = math.prod(s)
            out.append(flat[i : i + k].reshape(s).clone())
            i += k
        return out

    def closure_for(self, params, optimizer, counter=None):
        def closure():
            if counter is not None:
                counter[0] += 1
            optimizer.zero_grad()
            d = self.flat_param(params) - self.w_star
            loss = 0.5 * d @ self.H @ d
            loss.backward()
            return loss

        return closure

    @staticmethod
    def flat_param(params):
        return torch.cat([p.reshape(-1) for p in params])

    def gd(self, steps):
        """Parameters after ``steps`` steps of plain SGD, run the same way as the accelerated run."""
        params = self.params()
        opt = torch.optim.SGD(params, lr=self.lr)
        closure = self.closure_for(params, opt)
        for _ in range(steps):
            opt.step(closure)
        return self.flat(params)


class ExactQuadratic(Variant):
    """Predicts the exact future of gradient descent on a `Quadratic` (one variant step = ``stride``
    optimizer steps)."""

    defaults = {"stride": 1}

    def __init__(self, problem: Quadratic, **params):
        super().__init__(**params)
        self.problem = problem
        self.fits = 0
        self.asked: list[int] = []

    def fit(self, snapshots):
        self.fits += 1
        self.last = self.problem.flat([s[-1] for s in snapshots])

    def predict(self, horizon):
        self.asked.append(horizon)
        p = self.problem
        x = p.w_star + torch.linalg.matrix_power(p.M, horizon * self.params["stride"]) @ (self.last - p.w_star)
        return p.split(x)


class Scaled(Variant):
    """Linear extrapolation of the window, ``factor`` times as far: its jump norm is exactly ``factor``
    times the accelerator's naive linear extrapolation norm."""

    defaults = {"factor": 1.0}

    def __init__(self, **params):
        super().__init__(**params)
        self.snapshots: list[list[torch.Tensor]] = []
        self.asked: list[int] = []

    def fit(self, snapshots):
        self.snapshots.append([s.clone() for s in snapshots])
        self.last = [s[-1].clone() for s in snapshots]
        self.slope = [(s[-1] - s[0]) / (s.shape[0] - 1) for s in snapshots]

    def predict(self, horizon):
        self.asked.append(horizon)
        return [x + self.params["factor"] * horizon * v for x, v in zip(self.last, self.slope)]


class Filled(Variant):
    """Predicts the last snapshot with every element of the first tensor set to ``value`` (NaN, inf,
    huge) or, with ``noise``, plus that much fixed Gaussian noise (a much worse point)."""

    defaults = {"value": None, "noise": 0.0, "one_element": False}

    def fit(self, snapshots):
        self.last = [s[-1].clone() for s in snapshots]

    def predict(self, horizon):
        g = torch.Generator().manual_seed(0)
        out = [x + self.params["noise"] * torch.randn(x.shape, generator=g, dtype=x.dtype) for x in self.last]
        if self.params["value"] is not None:
            if self.params["one_element"]:
                out[0].view(-1)[0] = self.params["value"]
            else:
                out[0].fill_(self.params["value"])
        return out


class FailingFit(Variant):
    def fit(self, snapshots):
        raise torch.linalg.LinAlgError("singular window")

    def predict(self, horizon):  # pragma: no cover - never reached
        raise AssertionError


class FailingPredict(Variant):
    def fit(self, snapshots):
        pass

    def predict(self, horizon):
        raise RuntimeError("no modes")


class NeedsFive(Variant):
    def fit(self, snapshots):
        pass

    def predict(self, horizon):  # pragma: no cover
        raise AssertionError

    def min_window(self):
        return 5


class Spy(FallbackRule):
    """Records what it is offered and rejects without evaluating (or accepts, with ``accept=True``);
    ``back_off=False`` marks its rejections as passing ones."""

    needs_closure = False
    defaults = {"accept": False, "back_off": True}

    def __init__(self, **params):
        super().__init__(**params)
        self.predictions: list[list[torch.Tensor] | None] = []

    def decide(self, jump):
        pred = jump.predict(jump.horizon)
        self.predictions.append(None if pred is None else [t.clone() for t in pred])
        if pred is None:
            return Decision.reject(jump.unusable_reason(jump.horizon))
        if self.params["accept"]:
            return Decision.accept(pred, jump.horizon)
        return Decision.reject("spy", back_off=self.params["back_off"])


class Meddler(FallbackRule):
    """Evaluates in the worst order for the bookkeeping (predictions, then loss_before, then a
    prediction again) and rejects."""

    defaults = {}

    def decide(self, jump):
        a, b = jump.predict(jump.horizon), jump.predict(max(1, jump.horizon // 2))
        jump.evaluate(a)
        _ = jump.loss_before
        jump.evaluate(b)
        jump.evaluate(a)  # cached: no closure call
        return Decision.reject("meddled")


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 5, generator=g), torch.randint(0, 3, (32,), generator=g)) for _ in range(n)]


def mlp_closure(model, optimizer, batch, counter=None):
    x, y = batch

    def closure():
        if counter is not None:
            counter[0] += 1
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def run_mlp(make_opt, data, wrap=None, seed=0):
    """Train an MLP over ``data`` (one batch per step() call); returns (model, optimizer, losses)."""
    model = mlp(seed)
    opt = make_opt(model.parameters())
    if wrap is not None:
        opt = wrap(opt)
    losses = [opt.step(mlp_closure(model, opt, batch)) for batch in data]
    return model, opt, losses


def assert_same_params(a, b):
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


# --------------------------------------------------------------------------------------------------------
# exact jumps on linear dynamics


@pytest.mark.parametrize("fallback", ["none", "verify", "backtrack", "best-of"])
@pytest.mark.parametrize("stride, burn_in, horizon", [(1, 0, 20), (2, 3, 21), (3, 1, 9)])
def test_exact_variant_lands_where_gradient_descent_would(fallback, stride, burn_in, horizon):
    problem = Quadratic()
    params = problem.params()
    inner = torch.optim.SGD(params, lr=problem.lr)
    acc = accelerator(
        inner, ExactQuadratic(problem, stride=stride), window=4, horizon=horizon, fallback=fallback,
        stride=stride, burn_in=burn_in,
    )  # fmt: skip
    closure = problem.closure_for(params, acc)
    calls = burn_in + 2 * 4 * stride + 1  # two jump attempts
    for _ in range(calls):
        acc.step(closure)
    stats = acc.stats
    assert stats.jumps_tried == 2 and stats.jumps_accepted == 2 and stats.rejections == {}
    effective = acc.effective_horizon(horizon)
    assert effective % stride == 0 and abs(effective - horizon) <= stride // 2
    assert stats.accepted_horizon_total == 2 * effective  # the full horizon is the best and passes
    assert stats.inner_steps == calls
    expected = problem.gd(calls + stats.accepted_horizon_total)
    got = problem.flat(params)
    scale = (expected - problem.flat(problem.init)).norm()
    assert (got - expected).norm() <= 1e-10 * scale


@pytest.mark.parametrize("fallback", ["none", "verify"])
def test_dmd_global_lands_where_gradient_descent_would(fallback):
    problem = Quadratic()  # 7 parameters over three tensors
    window, horizon = problem.w_star.numel() + 4, 30
    params = problem.params()
    acc = accelerator(
        torch.optim.SGD(params, lr=problem.lr), "dmd-global", window=window, horizon=horizon, fallback=fallback,
        center="increments", dtype="float64", rank=-1,
    )  # fmt: skip
    closure = problem.closure_for(params, acc)
    calls = 2 * window + 1  # two jumps
    for _ in range(calls):
        acc.step(closure)
    assert acc.stats.jumps_accepted == 2 and acc.stats.accepted_horizon_total == 2 * horizon
    expected = problem.gd(calls + 2 * horizon)
    scale = (expected - problem.flat(problem.init)).norm()
    assert (problem.flat(params) - expected).norm() <= 1e-6 * scale
    assert acc.stats.last_spectral_radius == pytest.approx(1 - problem.lr * 0.5, rel=1e-6)


# --------------------------------------------------------------------------------------------------------
# snapshots: stride, burn-in, cycle


def test_snapshot_schedule_and_last_snapshot_is_current():
    window, stride, burn_in, horizon = 3, 2, 5, 8
    variant, rule = Scaled(), Spy()
    model = mlp()
    acc = accelerator(
        torch.optim.SGD(model.parameters(), lr=0.1), variant, window=window, horizon=horizon, fallback=rule,
        stride=stride, burn_in=burn_in,
    )  # fmt: skip
    data = batches(40)
    trajectory = [[p.detach().clone() for p in model.parameters()]]  # trajectory[t]: after t inner steps
    attempts_at = []
    for call, batch in enumerate(data, start=1):
        due = acc.jump_due
        tried = acc.stats.jumps_tried
        if due:
            assert all(torch.equal(b[-1], p) for b, p in zip(acc._buffers, model.parameters()))
        acc.step(mlp_closure(model, acc, batch))
        assert (acc.stats.jumps_tried > tried) == due
        if due:
            attempts_at.append(call)
        trajectory.append([p.detach().clone() for p in model.parameters()])
    cycle = window * stride
    assert attempts_at == [burn_in + cycle + 1 + k * cycle for k in range(len(attempts_at))]
    assert len(attempts_at) == 5
    # first window: steps burn_in + stride*i; later ones start counting at the jump call's inner step
    starts = [burn_in] + [a - 1 for a in attempts_at[:-1]]
    for fitted, start in zip(variant.snapshots, starts):
        for i in range(window):
            for snap, ref in zip(fitted, trajectory[start + stride * (i + 1)]):
                assert torch.equal(snap[i], ref)
    # the variant is asked in its own units: one step per snapshot
    assert variant.asked == [horizon // stride] * 5
    assert acc.stats.snapshots_recorded == 5 * window + 2  # 5 full windows, 2 snapshots into the sixth
    assert acc.stats.rejections == {"spy": 5}


def test_mean_snapshots_average_each_stride_block():
    window, stride, burn_in = 3, 4, 2
    variant = Scaled()
    model = mlp()
    acc = accelerator(
        torch.optim.SGD(model.parameters(), lr=0.1), variant, window=window, horizon=8, fallback=Spy(),
        stride=stride, burn_in=burn_in, snapshot="mean",
    )  # fmt: skip
    trajectory = [[p.detach().clone() for p in model.parameters()]]
    for batch in batches(2 * (window * stride + 1) + burn_in):
        acc.step(mlp_closure(model, acc, batch))
        trajectory.append([p.detach().clone() for p in model.parameters()])
    assert len(variant.snapshots) == 2
    starts = [burn_in, burn_in + window * stride]  # the jump call's own inner step opens the second window
    for fitted, start in zip(variant.snapshots, starts):
        for i in range(window):
            block = trajectory[start + stride * i + 1 : start + stride * (i + 1) + 1]
            for k, snap in enumerate(fitted):
                expected = torch.stack([state[k] for state in block]).mean(0)
                torch.testing.assert_close(snap[i], expected, rtol=1e-6, atol=1e-7)
                # not the block's last iterate (what snapshot="last" records)
                assert not torch.equal(snap[i], block[-1][k])
    assert acc.snapshot == "mean" and "snapshot='mean'" in repr(acc)


def test_mean_snapshots_with_stride_one_are_the_iterates():
    def run(snapshot):
        model, variant = mlp(), Scaled()
        acc = accelerator(torch.optim.SGD(model.parameters(), lr=0.1), variant, window=4, horizon=3,
                                 fallback=Spy(), snapshot=snapshot)  # fmt: skip
        for batch in batches(10):
            acc.step(mlp_closure(model, acc, batch))
        return variant.snapshots

    for a, b in zip(run("mean"), run("last")):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("accept", [False, True])
def test_backoff_doubles_the_wait_after_rejected_jumps_and_an_accepted_one_resets_it(accept):
    window, backoff = 3, 2
    model = mlp()
    acc = accelerator(torch.optim.SGD(model.parameters(), lr=0.1), Scaled(), window=window, horizon=4,
                             fallback=Spy(accept=accept), backoff=backoff)  # fmt: skip
    attempts = []
    for call, batch in enumerate(batches(60), start=1):
        tried = acc.stats.jumps_tried
        acc.step(mlp_closure(model, acc, batch))
        if acc.stats.jumps_tried > tried:
            attempts.append(call)
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    if accept:  # every jump accepted: one window per attempt, as without backoff
        assert gaps == [window] * len(gaps) and len(gaps) >= 10
    else:  # waits of 1, 3, then 3 windows (capped at 2**backoff - 1) before each window
        assert gaps == [window * 2] + [window * 4] * 4
    assert acc.backoff == backoff and f"backoff={backoff}" in repr(acc)


def test_a_passing_rejection_neither_waits_nor_counts_towards_the_backoff():
    window = 3
    model = mlp()
    rule = Spy(back_off=False)
    acc = accelerator(torch.optim.SGD(model.parameters(), lr=0.1), Scaled(), window=window, horizon=4,
                      fallback=rule, backoff=2)  # fmt: skip
    attempts = []
    for call, batch in enumerate(batches(40), start=1):
        tried = acc.stats.jumps_tried
        if call == 20:  # from here rejections back off again, counted from the first
            rule.params["back_off"] = True
        acc.step(mlp_closure(model, acc, batch))
        if acc.stats.jumps_tried > tried:
            attempts.append(call)
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert gaps[:5] == [window] * 5  # passing rejections: the next window starts at once
    assert gaps[-2:] == [window * 2, window * 4]  # then waits of 1 and 3 windows, as after a first rejection


def test_snapshot_counts():
    model = mlp()
    acc = accelerator(torch.optim.SGD(model.parameters(), lr=0.1), Scaled(), window=4, horizon=5,
                             fallback=Spy(), stride=1, burn_in=2)  # fmt: skip
    for batch in batches(12):
        acc.step(mlp_closure(model, acc, batch))
    # 2 burn-in steps, then a snapshot after every inner step; attempts at calls 7 and 11
    assert acc.stats.snapshots_recorded == 10 and acc.stats.jumps_tried == 2 and acc.stats.inner_steps == 12
    assert acc.snapshots_filled == 2


# --------------------------------------------------------------------------------------------------------
# rejected jumps change nothing


def _bare_vs_accelerated(make_opt, variant_factory, fallback, steps=30, window=4, **options):
    data = batches(steps)
    bare_model, _, bare_losses = run_mlp(make_opt, data)
    acc_model, acc, acc_losses = run_mlp(
        make_opt, data,
        wrap=lambda opt: accelerator(opt, variant_factory(), window=window, horizon=10, fallback=fallback,
                                            **options),
    )  # fmt: skip
    return bare_model, bare_losses, acc_model, acc, acc_losses


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("fallback", ["verify", "backtrack", "best-of"])
def test_rejected_jumps_continue_exactly_like_the_bare_optimizer(optimizer, fallback):
    bare, bare_losses, model, acc, losses = _bare_vs_accelerated(
        OPTIMIZERS[optimizer], lambda: Filled(noise=5.0), fallback, explode_ratio=math.inf
    )
    assert acc.stats.jumps_tried == 7 and acc.stats.jumps_accepted == 0
    assert acc.stats.rejections == {"loss-increased": 7}
    assert_same_params(bare, model)
    assert all(torch.equal(a, b) for a, b in zip(bare_losses, losses))


def test_rejected_jump_restores_parameters_bit_for_bit_before_the_inner_step():
    model = mlp()
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    acc = accelerator(inner, Scaled(factor=3.0), window=3, horizon=7, fallback=Meddler())
    seen = []
    inner.register_step_pre_hook(lambda opt, args, kwargs: seen.append([p.detach().clone() for p in model.parameters()]))
    for batch in batches(4):
        before = [p.detach().clone() for p in model.parameters()]
        acc.step(mlp_closure(model, acc, batch))
    assert acc.stats.rejections == {"meddled": 1}
    assert acc.stats.evaluations == 3  # a, loss_before, b; the second evaluation of a is cached
    assert all(torch.equal(a, b) for a, b in zip(seen[-1], before))
    bare, _, _ = run_mlp(lambda p: torch.optim.Adam(p, lr=1e-2), batches(4))
    assert_same_params(bare, model)


def test_fit_failure_is_a_rejection_not_a_crash():
    with pytest.warns(RuntimeWarning, match="fit-failed"):
        bare, _, model, acc, _ = _bare_vs_accelerated(OPTIMIZERS["adam"], FailingFit, "verify")
    assert acc.stats.jumps_tried == 7 and acc.stats.rejections == {"fit-failed": 7}
    assert acc.stats.evaluations == 0
    assert_same_params(bare, model)


def test_predict_failure_is_a_rejection():
    with pytest.warns(RuntimeWarning, match="predict-failed"):
        bare, _, model, acc, _ = _bare_vs_accelerated(OPTIMIZERS["sgd"], FailingPredict, "backtrack")
    assert acc.stats.rejections == {"predict-failed": 7} and acc.stats.evaluations == 0
    assert_same_params(bare, model)


# --------------------------------------------------------------------------------------------------------
# unusable predictions


BAD_PREDICTIONS = [
    (lambda: Filled(value=math.nan), "non-finite"),
    (lambda: Filled(value=math.nan, one_element=True), "non-finite"),
    (lambda: Filled(value=math.inf), "non-finite"),
    (lambda: Filled(value=-math.inf, one_element=True), "non-finite"),
    (lambda: Filled(value=1e30, one_element=True), "exploding"),
    (lambda: Scaled(factor=2e3), "exploding"),
]


@pytest.mark.parametrize("fallback", ["none", "verify", "backtrack", "best-of"])
@pytest.mark.parametrize("factory, reason", BAD_PREDICTIONS)
def test_unusable_predictions_are_rejected_by_every_rule(fallback, factory, reason):
    bare, _, model, acc, _ = _bare_vs_accelerated(OPTIMIZERS["sgd-momentum"], factory, fallback, steps=14)
    assert acc.stats.jumps_tried == 3 and acc.stats.jumps_accepted == 0
    assert acc.stats.rejections == {reason: 3}
    assert acc.stats.evaluations == 0  # an unusable jump costs no closure call
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert_same_params(bare, model)


def test_unusable_prediction_without_closure():
    model = mlp()
    acc = accelerator(torch.optim.SGD(model.parameters(), lr=0.1), Filled(value=math.nan), window=3,
                             horizon=5, fallback="none")  # fmt: skip
    bare_model = mlp()
    bare = torch.optim.SGD(bare_model.parameters(), lr=0.1)
    for x, y in batches(12):
        for m, opt in ((model, acc), (bare_model, bare)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            assert opt.step() is None
    assert acc.stats.rejections == {"non-finite": 3}
    assert_same_params(bare_model, model)


def test_explode_ratio_boundary():
    for factor, accepted in ((1.5, True), (2.5, False)):
        rule = Spy()
        model = mlp()
        acc = accelerator(torch.optim.SGD(model.parameters(), lr=0.1), Scaled(factor=factor), window=4,
                                 horizon=10, fallback=rule, explode_ratio=2.0)  # fmt: skip
        for batch in batches(5):
            acc.step(mlp_closure(model, acc, batch))
        assert (rule.predictions[0] is not None) == accepted
        assert acc.stats.rejections == ({"spy": 1} if accepted else {"exploding": 1})


@pytest.mark.parametrize("stride", [1, 2])
def test_max_jump_ratio_caps_the_jump(stride):
    horizon, window = 12, 4
    jumps, linear = {}, None
    for cap in (None, 1.0, 0.25, 10.0):
        variant, rule = Scaled(factor=3.0), Spy()
        model = mlp()
        acc = accelerator(torch.optim.SGD(model.parameters(), lr=0.1), variant, window=window,
                                 horizon=horizon, fallback=rule, stride=stride, max_jump_ratio=cap)  # fmt: skip
        for batch in batches(window * stride + 1):
            acc.step(mlp_closure(model, acc, batch))
        snaps = variant.snapshots[0]
        # the naive linear extrapolation over the same horizon: h * |x_last - x_first| / steps spanned
        linear = horizon * math.sqrt(sum(float((s[-1] - s[0]).pow(2).sum()) for s in snaps)) / ((window - 1) * stride)
        jumps[cap] = torch.cat([(p - s[-1]).reshape(-1) for p, s in zip(rule.predictions[0], snaps)])
    assert float(jumps[None].norm()) == pytest.approx(3.0 * linear, rel=1e-5)
    assert torch.equal(jumps[10.0], jumps[None])  # under the cap: untouched
    assert float(jumps[1.0].norm()) == pytest.approx(linear, rel=1e-5)
    assert float(jumps[0.25].norm()) == pytest.approx(0.25 * linear, rel=1e-5)
    for cap in (1.0, 0.25):  # scaled, not redirected
        cosine = torch.nn.functional.cosine_similarity(jumps[cap], jumps[None], dim=0)
        assert float(cosine) == pytest.approx(1.0, abs=1e-5)


# --------------------------------------------------------------------------------------------------------
# the cost of verification


def _count_calls(fallback, variant_factory, steps):
    problem = Quadratic()
    params = problem.params()
    acc = accelerator(torch.optim.SGD(params, lr=problem.lr), variant_factory(problem), window=4,
                             horizon=10, fallback=fallback)  # fmt: skip
    counter = [0]
    closure = problem.closure_for(params, acc, counter)
    for _ in range(steps):
        acc.step(closure)
    return counter[0], acc, problem, params


def test_an_accepted_verified_jump_costs_exactly_one_extra_closure_call():
    calls, acc, problem, params = _count_calls("verify", ExactQuadratic, 21)
    assert acc.stats.jumps_tried == 5 and acc.stats.jumps_accepted == 5
    assert calls == 21 + 5
    assert acc.stats.evaluations == 10  # loss_before and the jumped point, per jump
    # the inner step after each jump used the gradient of the verification evaluation: still exact GD
    expected = problem.gd(21 + acc.stats.accepted_horizon_total)
    assert torch.allclose(problem.flat(params), expected, rtol=0, atol=1e-12)


def test_a_rejected_verified_jump_costs_exactly_one_extra_closure_call():
    calls, acc, _, _ = _count_calls("verify", lambda problem: Filled(noise=3.0), 21)
    assert acc.stats.jumps_tried == 5 and acc.stats.rejections == {"loss-increased": 5}
    assert calls == 21 + 5


def _run_with_check(check_factory, steps=30, window=4, variant=None):
    """A verified Adam run whose jumps are judged by ``check_factory(model)``; returns (model, acc, calls)
    with ``calls`` = {"closure": n, "check": n, "check_with_grad": n}."""
    data = batches(steps)
    model = mlp()
    acc = accelerator(torch.optim.Adam(model.parameters(), lr=1e-2), variant or Scaled(factor=0.5),
                             window=window, horizon=10, fallback="verify")  # fmt: skip
    calls = {"closure": 0, "check": 0, "check_with_grad": 0}
    judge = check_factory(model)

    def check():
        calls["check"] += 1
        calls["check_with_grad"] += torch.is_grad_enabled()
        return judge()

    counter = [0]
    for batch in data:
        acc.step(mlp_closure(model, acc, batch, counter), check=check)
    calls["closure"] = counter[0]
    return model, acc, calls


def test_a_check_judges_the_jumps_forward_only_and_the_inner_step_calls_the_closure():
    held_out = batches(1, seed=7)[0]

    def factory(model):
        return lambda: torch.nn.functional.cross_entropy(model(held_out[0]), held_out[1])

    _, acc, calls = _run_with_check(factory)
    tried = acc.stats.jumps_tried
    assert tried == 7 and acc.stats.jumps_accepted >= 1
    # two check calls per attempt (before and at the jump), none with autograd; the closure only for steps
    assert calls["check"] == 2 * tried == acc.stats.evaluations and calls["check_with_grad"] == 0
    assert calls["closure"] == 30


def test_jumps_a_check_rejects_change_nothing():
    def always_worse(model):
        answers = iter(range(1000))  # before: n, at the jump: n + 1
        return lambda: torch.tensor(float(next(answers)))

    data = batches(30)
    bare_model, _, _ = run_mlp(lambda p: torch.optim.Adam(p, lr=1e-2), data)
    model, acc, calls = _run_with_check(always_worse)
    assert acc.stats.jumps_tried == 7 and acc.stats.jumps_accepted == 0
    assert acc.stats.rejections == {"loss-increased": 7}
    assert_same_params(bare_model, model)


def test_an_accepted_blind_jump_costs_no_extra_closure_call():
    calls, acc, _, _ = _count_calls("none", ExactQuadratic, 21)
    assert acc.stats.jumps_accepted == 5 and calls == 21 and acc.stats.evaluations == 0


def test_best_of_recomputes_only_when_the_best_is_not_the_last_evaluated():
    calls, acc, _, _ = _count_calls("best-of", ExactQuadratic, 21)
    # GD on a convex quadratic: the longest horizon is the best, and it is evaluated last
    assert acc.stats.jumps_accepted == 5 and acc.stats.accepted_horizon_total == 50
    assert calls == 21 + 5 * 4  # loss_before + 4 points - the reused last one
    assert acc.stats.evaluations == 25


# --------------------------------------------------------------------------------------------------------
# optimizers, state, checkpoints


SMOKE_OPTIMIZERS = {
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adadelta": lambda p: torch.optim.Adadelta(p, lr=1.0),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.05),
}


@pytest.mark.parametrize("optimizer", sorted(SMOKE_OPTIMIZERS))
@pytest.mark.parametrize("fallback", ["none", "verify", "backtrack", "best-of"])
def test_smoke_with_common_optimizers(optimizer, fallback):
    data = batches(30)
    model, acc, losses = run_mlp(
        SMOKE_OPTIMIZERS[optimizer], data,
        wrap=lambda opt: accelerator(opt, Scaled(factor=0.5), window=4, horizon=10, fallback=fallback),
    )  # fmt: skip
    stats = acc.stats
    assert all(math.isfinite(loss.item()) for loss in losses)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert stats.inner_steps == 30 and stats.snapshots_recorded == 30
    assert stats.jumps_tried == 7
    assert stats.jumps_accepted + sum(stats.rejections.values()) == stats.jumps_tried
    assert 0.0 <= stats.acceptance_rate <= 1.0
    if fallback == "none":
        assert stats.jumps_accepted == 7 and stats.evaluations == 0 and stats.accepted_horizon_total == 70
    json.dumps(stats.to_dict())
    assert stats.fit_time_s >= 0 and stats.predict_time_s > 0
    assert (stats.verify_time_s > 0) == (fallback != "none")


@pytest.mark.parametrize("optimizer", sorted(SMOKE_OPTIMIZERS))
def test_smoke_dmd_global_with_common_optimizers(optimizer):
    data = batches(40)
    model, acc, losses = run_mlp(
        SMOKE_OPTIMIZERS[optimizer], data,
        wrap=lambda opt: accelerator(opt, "dmd-global", window=6, horizon=20, fallback="verify"),
    )  # fmt: skip
    stats = acc.stats
    assert all(math.isfinite(loss.item()) for loss in losses)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert stats.jumps_tried == 6 and stats.jumps_accepted + sum(stats.rejections.values()) == 6
    assert stats.last_spectral_radius is not None and stats.last_eigenvalues is not None
    json.dumps(stats.to_dict())


@pytest.mark.parametrize("reset_state", ["keep", "reset"])
def test_reset_state_clears_the_inner_state_after_an_accepted_jump(reset_state):
    model = mlp()
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    acc = accelerator(inner, Scaled(factor=0.5), window=3, horizon=5, fallback="none",
                             reset_state=reset_state)  # fmt: skip
    data = batches(4)
    for batch in data[:3]:
        acc.step(mlp_closure(model, acc, batch))
    assert acc.jump_due
    acc.step(mlp_closure(model, acc, data[3]))
    assert acc.stats.jumps_accepted == 1
    steps = {float(inner.state[p]["step"]) for p in model.parameters()}
    assert steps == ({1.0} if reset_state == "reset" else {4.0})


def test_reset_state_keeps_the_state_after_a_rejected_jump():
    model = mlp()
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    acc = accelerator(inner, Filled(value=math.nan), window=3, horizon=5, fallback="none",
                             reset_state="reset")  # fmt: skip
    for batch in batches(4):
        acc.step(mlp_closure(model, acc, batch))
    assert {float(inner.state[p]["step"]) for p in model.parameters()} == {4.0}


def test_accepted_jump_without_closure_skips_the_stale_gradient_step():
    model = mlp()
    acc = accelerator(torch.optim.SGD(model.parameters(), lr=0.1), Scaled(factor=0.5), window=3,
                             horizon=5, fallback="none")  # fmt: skip
    for x, y in batches(3):
        acc.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        acc.step()
    x, y = batches(1, seed=7)[0]
    acc.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    acc.step()
    assert acc.stats.jumps_accepted == 1 and acc.stats.inner_steps == 3
    predicted = acc.variant.predict(5)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), predicted))


def _resume(model, acc, resumed_model, resumed):
    """Save the model's and the accelerator's state as a checkpoint would, load both into the copies,
    and return what was saved."""
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": acc.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed_model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["optimizer"])
    return saved


@pytest.mark.parametrize("save_after", [6, 9])  # mid-window, and with a jump due
def test_state_dict_round_trip(save_after):
    data = batches(24)

    def make(model):
        return accelerator(torch.optim.Adam(model.parameters(), lr=2e-2), Scaled(factor=0.5), window=4,
                                  horizon=10, fallback="verify", burn_in=1)  # fmt: skip

    model = mlp()
    acc = make(model)
    for batch in data[:save_after]:
        acc.step(mlp_closure(model, acc, batch))
    resumed_model = mlp()  # same initial parameters
    resumed = make(resumed_model)
    _resume(model, acc, resumed_model, resumed)
    assert resumed.snapshots_filled == acc.snapshots_filled
    for batch in data[save_after:]:
        a = acc.step(mlp_closure(model, acc, batch))
        b = resumed.step(mlp_closure(resumed_model, resumed, batch))
        assert torch.equal(a, b)
    assert_same_params(model, resumed_model)
    assert acc.stats.jumps_tried >= 4 and acc.stats.jumps_accepted >= 1

    def counters(stats):
        return {k: v for k, v in stats.to_dict().items() if not k.endswith("_time_s")}

    assert counters(acc.stats) == counters(resumed.stats)


@pytest.mark.parametrize("save_after", [6, 7, 9])  # mid-block, at a block's end, with a jump due
def test_state_dict_round_trip_keeps_a_part_summed_mean_snapshot(save_after):
    data = batches(40)

    def make(model):
        return accelerator(torch.optim.Adam(model.parameters(), lr=2e-2), Scaled(factor=0.5), window=3,
                                  horizon=6, fallback="verify", stride=3, snapshot="mean", burn_in=1)  # fmt: skip

    model, resumed_model = mlp(), mlp()
    acc, resumed = make(model), make(resumed_model)
    for batch in data[:save_after]:
        acc.step(mlp_closure(model, acc, batch))
    saved = _resume(model, acc, resumed_model, resumed)
    for batch in data[save_after:]:
        acc.step(mlp_closure(model, acc, batch))
        resumed.step(mlp_closure(resumed_model, resumed, batch))
    assert_same_params(model, resumed_model)
    assert acc.stats.jumps_tried >= 3 and acc.stats.jumps_tried == resumed.stats.jumps_tried
    # a state saved with the other snapshot mode is refused, naming both
    other = accelerator(torch.optim.Adam(mlp().parameters(), lr=2e-2), Scaled(), window=3, stride=3)
    with pytest.raises(ParameterError, match="snapshot='mean'.*snapshot='last'"):
        other.load_state_dict(saved["optimizer"])


def test_state_dict_keeps_the_backoff_wait():
    def make(model):
        return accelerator(torch.optim.SGD(model.parameters(), lr=0.1), Scaled(), window=3, horizon=4,
                                  fallback=Spy(), backoff=3)  # fmt: skip

    model, resumed_model = mlp(), mlp()
    acc, resumed = make(model), make(resumed_model)
    data = batches(50)
    for batch in data[:11]:  # two rejected jumps (calls 4 and 10): now waiting 3 windows
        acc.step(mlp_closure(model, acc, batch))
    _resume(model, acc, resumed_model, resumed)
    for batch in data[11:]:
        acc.step(mlp_closure(model, acc, batch))
        resumed.step(mlp_closure(resumed_model, resumed, batch))
        assert resumed.stats.jumps_tried == acc.stats.jumps_tried
    assert acc.stats.jumps_tried == 4  # calls 4, 10, 22 and 46


def test_state_dict_keeps_the_adaptive_rules_horizon_scale():
    def make(model):
        return accelerator(torch.optim.Adam(model.parameters(), lr=2e-2), Scaled(factor=0.5), window=3,
                                  horizon=4, fallback="adaptive")  # fmt: skip

    model, resumed_model = mlp(), mlp()
    acc, resumed = make(model), make(resumed_model)
    data = batches(40)
    for batch in data[:13]:  # three jump attempts: the scale has moved off 1
        acc.step(mlp_closure(model, acc, batch))
    assert acc.fallback.scale != 1.0
    _resume(model, acc, resumed_model, resumed)
    assert resumed.fallback.scale == acc.fallback.scale
    for batch in data[13:]:
        acc.step(mlp_closure(model, acc, batch))
        resumed.step(mlp_closure(resumed_model, resumed, batch))
        assert resumed.fallback.scale == acc.fallback.scale
    assert_same_params(model, resumed_model)


def test_load_state_dict_rejects_a_different_window():
    model = mlp()
    acc = accelerator(torch.optim.SGD(model.parameters(), lr=0.1), Scaled(), window=4, fallback="none")
    state = acc.state_dict()
    other = accelerator(torch.optim.SGD(model.parameters(), lr=0.1), Scaled(), window=5, fallback="none")
    with pytest.raises(ParameterError, match="window=4"):
        other.load_state_dict(state)
    with pytest.raises(ParameterError, match="not a KoopmanAccelerator state dict"):
        acc.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())


def test_stats_round_trip_and_eigenvalues():
    stats = AcceleratorStats(jumps_tried=3, jumps_accepted=2, accepted_horizon_total=150,
                             last_eigenvalues=torch.tensor([0.5 + 0.1j, -0.2 + 0j], dtype=torch.complex128),
                             last_spectral_radius=0.51, rejections={"exploding": 1})  # fmt: skip
    data = json.loads(json.dumps(stats.to_dict()))
    assert data["acceptance_rate"] == pytest.approx(2 / 3) and data["effective_horizon"] == 75
    assert data["last_eigenvalues"] == [[0.5, 0.1], [-0.2, 0.0]]
    again = AcceleratorStats.from_dict(data)
    assert again.to_dict() == stats.to_dict()
    assert AcceleratorStats().acceptance_rate == 0.0


def test_spectrum_is_recorded():
    class Spectral(Scaled):
        @property
        def eigenvalues(self):
            return torch.tensor([0.9, 0.3 + 0.4j, -1.2], dtype=torch.complex64)

    model = mlp()
    acc = accelerator(torch.optim.SGD(model.parameters(), lr=0.1), Spectral(factor=0.5), window=3,
                             horizon=4, fallback="none")  # fmt: skip
    for batch in batches(4):
        acc.step(mlp_closure(model, acc, batch))
    assert acc.stats.last_spectral_radius == pytest.approx(1.2)
    assert acc.stats.last_eigenvalues[0] == pytest.approx(-1.2)


def test_wrapper_surface():
    model = mlp()
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    acc = accelerator(inner, Scaled(), window=3, horizon=4, fallback="none")
    assert acc.optimizer is inner and acc.param_groups is inner.param_groups and acc.state is inner.state
    for batch in batches(2):
        acc.step(mlp_closure(model, acc, batch))
    acc.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    extra = torch.nn.Parameter(torch.zeros(3))
    acc.add_param_group({"params": [extra], "lr": 0.5})
    assert len(inner.param_groups) == 2 and acc.snapshots_filled == 0 and len(acc._buffers) == 5
    assert "KoopmanAccelerator(SGD" in repr(acc)


# --------------------------------------------------------------------------------------------------------
# options


def _sgd():
    return torch.optim.SGD(mlp().parameters(), lr=0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"window": 4}, "window=4"),
        ({"window": 2.5}, "window"),
        ({"horizon": 0}, "horizon=0"),
        ({"horizon": True}, "horizon"),
        ({"stride": 0}, "stride=0"),
        ({"burn_in": -1}, "burn_in=-1"),
        ({"backoff": -1}, "backoff=-1"),
        ({"reset_state": "clear"}, "reset_state='clear'"),
        ({"snapshot": "median"}, "snapshot='median'"),
        ({"max_jump_ratio": 0.0}, "max_jump_ratio"),
        ({"max_jump_ratio": -1}, "max_jump_ratio"),
        ({"explode_ratio": 0}, "explode_ratio"),
        ({"explode_ratio": math.nan}, "explode_ratio"),
        ({"explode_ratio": None}, "explode_ratio"),
        ({"fallback": 3}, "fallback=3"),
        ({"fallback": "verify", "fallback_params": {"tol": -1.0}}, "tol"),
        ({"fallback": "verify", "fallback_params": {"points": 2}}, "points"),
        ({"fallback_params": [1]}, "fallback_params"),
    ],
)
def test_invalid_options(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        accelerator(_sgd(), NeedsFive(), **{"window": 8, **kwargs})


def test_window_below_the_variants_minimum_names_it():
    with pytest.raises(ParameterError, match="at least 5"):
        accelerator(_sgd(), NeedsFive(), window=4)
    accelerator(_sgd(), NeedsFive(), window=5)
    with pytest.raises(ParameterError, match="at least 2"):
        accelerator(_sgd(), Scaled(), window=1)


def test_invalid_variant_and_rule_arguments():
    with pytest.raises(ParameterError, match="Variant instance"):
        accelerator(_sgd(), Scaled(), factor=2.0)
    with pytest.raises(ParameterError, match="FallbackRule instance"):
        accelerator(_sgd(), Scaled(), fallback=Spy(), fallback_params={"accept": True})
    with pytest.raises(ParameterError, match="variant=42"):
        accelerator(_sgd(), 42)
    with pytest.raises(PluginNotFoundError, match="no-such-variant"):
        accelerator(_sgd(), "no-such-variant")
    with pytest.raises(PluginNotFoundError, match="no-such-rule"):
        accelerator(_sgd(), Scaled(), fallback="no-such-rule")
    with pytest.raises(ParameterError, match="not a torch.optim.Optimizer"):
        accelerator(object(), Scaled())
    acc = accelerator(_sgd(), Scaled(), fallback="backtrack", fallback_params={"max_halvings": 1})
    assert acc.fallback.params["max_halvings"] == 1


def test_a_rule_that_needs_a_closure_refuses_step_without_one():
    model = mlp()
    acc = accelerator(torch.optim.SGD(model.parameters(), lr=0.1), Scaled(), window=3, fallback="verify")
    x, y = batches(1)[0]
    torch.nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(UsageError, match="without a closure"):
        acc.step()


def test_a_rule_raising_leaves_the_model_untouched():
    class Broken(FallbackRule):
        defaults = {}

        def decide(self, jump):
            jump.evaluate(jump.predict(jump.horizon))
            raise RuntimeError("rule bug")

    model = mlp()
    acc = accelerator(torch.optim.SGD(model.parameters(), lr=0.1), Scaled(), window=3, fallback=Broken())
    data = batches(4)
    for batch in data[:3]:
        acc.step(mlp_closure(model, acc, batch))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="rule bug"):
        acc.step(mlp_closure(model, acc, data[3]))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert acc.jump_due and acc.stats.jumps_tried == 0 and acc.stats.inner_steps == 3
