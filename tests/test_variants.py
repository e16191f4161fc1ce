"""The built-in variants: exactness on known linear systems, PyDMD agreement, options, contracts."""

from __future__ import annotations

import importlib.metadata
import math
import warnings

import numpy as np
import pytest
import torch
from optuna.distributions import BaseDistribution

from koopsweep.errors import ParameterError
from koopsweep.plugins import validate
from koopsweep.variants._dmd import FixedPointDMD, GlobalDMD, HankelDMD, LayerDMD
from koopsweep.variants._linear import LinearExtrapolation
from koopsweep.variants._node import NodeDMD

F64 = torch.float64
ALL = [GlobalDMD, LayerDMD, HankelDMD, FixedPointDMD, NodeDMD, LinearExtrapolation]
ENTRY_POINTS = {
    "dmd-global": GlobalDMD,
    "dmd-layer": LayerDMD,
    "dmd-hankel": HankelDMD,
    "dmd-fixedpoint": FixedPointDMD,
    "dmd-node": NodeDMD,
    "extrapolate-linear": LinearExtrapolation,
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# -- helpers ---------------------------------------------------------------------------------------


def rotation_system(eigs, seed=0):
    """A real matrix with the given eigenvalues (complex ones stand for conjugate pairs), orthogonally mixed."""
    blocks = []
    for e in eigs:
        if isinstance(e, complex):
            r, th = abs(e), math.atan2(e.imag, e.real)
            blocks.append(
                torch.tensor([[r * math.cos(th), -r * math.sin(th)], [r * math.sin(th), r * math.cos(th)]], dtype=F64)
            )
        else:
            blocks.append(torch.tensor([[e]], dtype=F64))
    d = torch.block_diag(*blocks)
    q, _ = torch.linalg.qr(
        torch.randn(d.shape[0], d.shape[0], dtype=F64, generator=torch.Generator().manual_seed(seed))
    )
    return q @ d @ q.T, q


def trajectory(a, x0, steps, c=None):
    xs = [x0]
    for _ in range(steps - 1):
        xs.append(a @ xs[-1] + (0 if c is None else c))
    return torch.stack(xs)


def split(states, shapes):
    """Cut ``(T, n)`` states into per-tensor snapshots ``(T, *shape)``."""
    out, i = [], 0
    for shape in shapes:
        k = math.prod(shape)
        out.append(states[:, i : i + k].reshape(states.shape[0], *shape))
        i += k
    assert i == states.shape[1]
    return out


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def rel_err(pred, true):
    return float((flat(pred) - flat(true)).norm() / flat(true).norm())


# Eigenvalue exactly 1, a decaying real mode, a negative one, decaying and unit-modulus rotations.
EIGS = [1.0, 0.8, complex(0.9 * math.cos(0.6), 0.9 * math.sin(0.6)), -0.6, complex(math.cos(2.0), math.sin(2.0)),
        complex(0.95 * math.cos(1.3), 0.95 * math.sin(1.3))]  # fmt: skip
SHAPES = [(2, 2), (3,), (2,)]  # 9 states over three tensors of different shapes
WINDOW = 16
HORIZONS = [1, 7, 100, 500]


@pytest.fixture(scope="module")
def linear_system():
    a, q = rotation_system(EIGS)
    x0 = q @ torch.ones(9, dtype=F64)
    return a, trajectory(a, x0, WINDOW + max(HORIZONS))


@pytest.fixture(scope="module")
def affine_system():
    a, q = rotation_system(EIGS, seed=1)
    c = torch.randn(9, dtype=F64, generator=torch.Generator().manual_seed(5))
    x0 = q @ torch.ones(9, dtype=F64)
    return a, trajectory(a, x0, WINDOW + max(HORIZONS), c)


def check_predictions(variant, states, shapes, horizons=HORIZONS, tol=1e-5):
    variant.fit(split(states[:WINDOW], shapes))
    for h in horizons:
        true = split(states[WINDOW - 1 + h : WINDOW + h], shapes)
        err = rel_err(variant.predict(h), [t[0] for t in true])
        assert err < tol, f"horizon {h}: relative error {err:.2e}"


# -- dmd-global -------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_eig", [1.0, None])
def test_global_exact_on_linear_system_raw_states(linear_system, max_eig):
    _, states = linear_system
    check_predictions(GlobalDMD(rank=-1, dtype="float64", center="none", max_eig=max_eig), states, SHAPES)


@pytest.mark.parametrize("which", ["linear", "affine"])
def test_global_exact_on_increments(linear_system, affine_system, which):
    _, states = linear_system if which == "linear" else affine_system
    check_predictions(GlobalDMD(rank=-1, dtype="float64", center="increments"), states, SHAPES)


def test_global_eigenvalues_are_the_system_s(linear_system):
    a, states = linear_system
    v = GlobalDMD(rank=-1, dtype="float64", center="none")
    assert v.eigenvalues is None
    v.fit(split(states[:WINDOW], SHAPES))
    lam = v.eigenvalues
    assert lam.dtype == torch.complex128 and lam.ndim == 1
    np.testing.assert_allclose(
        np.sort_complex(lam.numpy()), np.sort_complex(torch.linalg.eigvals(a).numpy()), atol=1e-9
    )


def test_global_agrees_with_pydmd(linear_system):
    from pydmd import DMD

    _, states = linear_system
    window = states[:WINDOW]
    v = GlobalDMD(rank=-1, dtype="float64", center="none", max_eig=None)
    v.fit(split(window, SHAPES))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = DMD(svd_rank=-1, exact=True).fit(window.numpy().T)
    np.testing.assert_allclose(np.sort_complex(v.eigenvalues.numpy()), np.sort_complex(ref.eigs), atol=1e-9)
    for h in (1, 10, 50):
        ref.dmd_time["tend"] = WINDOW - 1 + h
        expected = ref.reconstructed_data[:, -1].real
        np.testing.assert_allclose(flat(v.predict(h)).numpy(), expected, rtol=1e-7, atol=1e-9)


def test_global_rank_truncation_limits_the_modes(linear_system):
    _, states = linear_system
    for rank, expected in [(3, 3), (-1, 9), (100, 9)]:
        v = GlobalDMD(rank=rank, dtype="float64", center="none")
        v.fit(split(states[:WINDOW], SHAPES))
        assert v.eigenvalues.shape == (expected,)
    v = GlobalDMD(rank=0.99, dtype="float64", center="none")
    v.fit(split(states[:WINDOW], SHAPES))
    assert 1 <= v.eigenvalues.shape[0] <= 9


def test_global_mean_centering_runs_and_returns_to_the_last_state(affine_system):
    _, states = affine_system
    v = GlobalDMD(dtype="float64", center="mean")
    snaps = split(states[:WINDOW], SHAPES)
    v.fit(snaps)
    torch.testing.assert_close(flat(v.predict(0)), flat([s[-1] for s in snaps]))
    assert torch.all(torch.isfinite(flat(v.predict(50))))


def test_global_default_float32_gram_still_predicts_increments_well(affine_system):
    _, states = affine_system
    v = GlobalDMD()  # float32 Gram of increments
    check_predictions(v, states, SHAPES, horizons=[1, 7], tol=1e-3)


# -- max_eig ---------------------------------------------------------------------------------------


def _unstable_states():
    a, q = rotation_system([1.1, 1.0, 0.7, complex(0.9 * math.cos(1.0), 0.9 * math.sin(1.0))], seed=3)
    x0 = q @ torch.ones(5, dtype=F64)
    return a, q, trajectory(a, x0, 12)


def test_max_eig_clip_keeps_an_unstable_mode_bounded_and_one_exact():
    _, q, states = _unstable_states()
    shapes = [(5,)]
    free = GlobalDMD(dtype="float64", center="none", max_eig=None)
    clip = GlobalDMD(dtype="float64", center="none", max_eig=1.0, eig_policy="clip")
    drop = GlobalDMD(dtype="float64", center="none", max_eig=1.0, eig_policy="drop")
    for v in (free, clip, drop):
        v.fit(split(states, shapes))
    lam = free.eigenvalues
    assert torch.isclose(lam.abs().max(), torch.tensor(1.1, dtype=F64))
    h = 500
    big = flat(free.predict(h)).norm()
    assert big > 1e15  # 1.1^500
    # In modal coordinates (q^T x): mode 0 grows by 1.1, mode 1 has eigenvalue exactly 1.
    last = q.T @ states[-1]
    for v in (clip, drop):
        modal = q.T @ flat(v.predict(h))
        assert torch.all(torch.isfinite(modal)) and modal.norm() < 10 * states.norm()
        torch.testing.assert_close(modal[1], last[1], rtol=1e-9, atol=1e-9)  # the lambda = 1 mode is untouched
        assert abs(float(modal[2])) < 1e-6  # decaying modes still decay
    torch.testing.assert_close((q.T @ flat(clip.predict(h)))[0], last[0], rtol=1e-6, atol=1e-9)  # clipped to 1: frozen
    torch.testing.assert_close((q.T @ flat(drop.predict(h)))[0], last[0], rtol=1e-6, atol=1e-9)  # dropped: frozen


def test_max_eig_clip_with_increments_stays_bounded():
    _, _, states = _unstable_states()
    v = GlobalDMD(dtype="float64", center="increments", max_eig=0.99)
    v.fit([states])
    assert torch.all(v.eigenvalues.abs() > 0)  # the raw fitted eigenvalues are reported
    far = flat(v.predict(10**5))
    assert torch.all(torch.isfinite(far))


# -- dmd-layer ---------------------------------------------------------------------------------------


def _per_tensor_system(affine: bool):
    g = torch.Generator().manual_seed(11)
    shapes = [(3, 2), (4,), (1,)]
    parts = []
    for shape, seed in zip(shapes, (1, 2, 3)):
        n = math.prod(shape)
        eigs = [1.0, 0.85, complex(0.9 * math.cos(0.5 * seed), 0.9 * math.sin(0.5 * seed)), -0.5, 0.7][:n]
        if n == 4:
            eigs = [0.95, complex(0.9 * math.cos(1.1), 0.9 * math.sin(1.1)), -0.7]
        if n == 1:
            eigs = [0.93]
        a, q = rotation_system(eigs, seed=seed)
        c = torch.randn(n, dtype=F64, generator=g) if affine else None
        parts.append(trajectory(a, q @ torch.ones(n, dtype=F64), WINDOW + 200, c))
    return shapes, torch.cat(parts, 1)


@pytest.mark.parametrize("center", ["none", "increments"])
def test_layer_exact_when_each_tensor_has_its_own_map(center):
    shapes, states = _per_tensor_system(affine=center == "increments")
    v = LayerDMD(rank=-1, dtype="float64", center=center)
    check_predictions(v, states, shapes, horizons=[1, 9, 200])
    assert v.eigenvalues.shape[0] == 6 + 4 + 1


# -- dmd-node ----------------------------------------------------------------------------------------


def _node_system(center: str):
    """Nodes of a (3, 4) layer + bias, a (2, 1, 2) 'conv' + bias, and a free vector of 2 elements."""
    g = torch.Generator().manual_seed(0)
    layer = [
        (0.6 * torch.eye(k, dtype=F64) + 0.25 * torch.randn(k, k, dtype=F64, generator=g)) / 1.1 for k in (5, 5, 5)
    ]
    conv = [(0.6 * torch.eye(3, dtype=F64) + 0.3 * torch.randn(3, 3, dtype=F64, generator=g)) / 1.2 for _ in range(2)]
    vec = torch.tensor([0.9, -0.5], dtype=F64)
    offset = torch.randn(23, dtype=F64, generator=g) if center == "increments" else torch.zeros(23, dtype=F64)
    w = torch.randn(3, 5, dtype=F64, generator=g)
    cw = torch.randn(2, 3, dtype=F64, generator=g)
    v = torch.randn(2, dtype=F64, generator=g)
    snaps: list[list[torch.Tensor]] = [[], [], [], [], []]
    for _ in range(WINDOW + 60):
        snaps[0].append(w[:, :4].clone())
        snaps[1].append(w[:, 4].clone())
        snaps[2].append(v.clone())
        snaps[3].append(cw[:, :2].reshape(2, 1, 2).clone())
        snaps[4].append(cw[:, 2].clone())
        w = torch.stack([layer[i] @ w[i] for i in range(3)]) + offset[:15].reshape(3, 5)
        cw = torch.stack([conv[i] @ cw[i] for i in range(2)]) + offset[15:21].reshape(2, 3)
        v = vec * v + offset[21:23]
    # The free vector sits between two layers so that it is not mistaken for a bias (length 2 != 3).
    return [torch.stack(s) for s in snaps]


@pytest.mark.parametrize("solver", ["svd", "gram"])
@pytest.mark.parametrize("center", ["none", "increments"])
@pytest.mark.parametrize("max_eig", [None, 10.0])
def test_node_exact_when_every_node_has_its_own_map(center, max_eig, solver):
    full = _node_system(center)
    v = NodeDMD(center=center, max_eig=max_eig, rcond=1e-12, solver=solver)
    v.fit([s[:WINDOW] for s in full])
    for h in (1, 5, 40):
        pred = v.predict(h)
        true = [s[WINDOW - 1 + h] for s in full]
        assert rel_err(pred, true) < 1e-6, h
        for p, t in zip(pred, true):
            assert p.shape == t.shape
    lam = v.eigenvalues  # every node's, plus exact zeros for directions the pseudo-inverse dropped
    assert int((lam.abs() > 1e-9).sum()) == 3 * 5 + 2 * 1 + 2 * 3


def test_node_layout_pairs_rows_with_their_bias():
    from koopsweep.variants._node import node_units

    units = node_units(
        [torch.Size([3, 4]), torch.Size([3]), torch.Size([2]), torch.Size([2, 1, 2]), torch.Size([2]), torch.Size([])],
        0,
    )
    assert [(u.weight, u.bias, u.rows, u.width) for u in units] == [
        (0, 1, 3, 5),
        (2, None, 2, 1),
        (3, 4, 2, 3),
        (5, None, 1, 1),
    ]
    units = node_units([torch.Size([2, 6]), torch.Size([2])], 3)
    assert [(u.chunk, u.n_chunks) for u in units] == [(3, 3)]


@pytest.mark.parametrize("q", [1, 3])
def test_quasi_nodes_exact_when_each_chunk_has_its_own_map(q):
    # A (2, 6) layer + bias: node state 7 = chunks [w0 w1 w2] [w3 w4 w5] [b pad pad] for q = 3.
    g = torch.Generator().manual_seed(q)
    k = 7
    n_chunks = -(-k // q)
    maps = [
        [
            (0.5 * torch.eye(q, dtype=F64) + 0.3 * torch.randn(q, q, dtype=F64, generator=g)) / 1.3
            for _ in range(n_chunks)
        ]
        for _ in range(2)
    ]
    state = torch.randn(2, n_chunks * q, dtype=F64, generator=g)
    state[:, k:] = 0
    hist = []
    for _ in range(WINDOW + 30):
        hist.append(state.clone())
        new = torch.zeros_like(state)
        for r in range(2):
            for c in range(n_chunks):
                new[r, c * q : (c + 1) * q] = maps[r][c] @ state[r, c * q : (c + 1) * q]
        new[:, k:] = 0
        state = new
    hist = torch.stack(hist)
    snaps = [hist[:, :, :6].contiguous(), hist[:, :, 6].contiguous()]
    v = NodeDMD(q=q, rcond=1e-12)
    v.fit([s[:WINDOW] for s in snaps])
    for h in (1, 4, 25):
        assert rel_err(v.predict(h), [s[WINDOW - 1 + h] for s in snaps]) < 1e-6
    # Whole nodes cannot fit this when the window is shorter than the node state (7 > 5 - 1).
    whole = NodeDMD(q=0)
    whole.fit([s[:5] for s in snaps])
    assert rel_err(whole.predict(10), [s[4 + 10] for s in snaps]) > 1e-3


def test_node_max_eig_clips_an_unstable_node():
    growth = torch.tensor([1.2, 0.5], dtype=F64)
    x = torch.tensor([1.0, 1.0], dtype=F64)
    hist = torch.stack([x * growth**k for k in range(8)])  # two element nodes
    free, clip = NodeDMD(), NodeDMD(max_eig=1.0)
    for v in (free, clip):
        v.fit([hist])
    assert float(free.predict(200)[0][0]) > 1e10
    out = clip.predict(200)[0]
    torch.testing.assert_close(out[0], hist[-1, 0])  # clipped to 1: frozen
    assert abs(float(out[1])) < 1e-12
    inc = NodeDMD(max_eig=1.0, center="increments")
    inc.fit([hist])
    last_step = hist[-1] - hist[-2]
    out = inc.predict(50)[0]
    torch.testing.assert_close(out[0], hist[-1, 0] + 50 * last_step[0])  # increments clipped to 1: constant
    torch.testing.assert_close(out[1], hist[-1, 1] + last_step[1] * 0.5 / (1 - 0.5), rtol=1e-9, atol=1e-12)


# -- dmd-hankel --------------------------------------------------------------------------------------


def _second_order(n=420):
    a, b = 2 * 0.97 * math.cos(0.4), -(0.97**2)  # x_{k+1} = a x_k + b x_{k-1}: roots 0.97 e^{+-0.4i}
    xs = [1.0, 0.3]
    for _ in range(n):
        xs.append(a * xs[-1] + b * xs[-2])
    return torch.tensor(xs, dtype=F64).reshape(-1, 1)


@pytest.mark.parametrize("center", ["none", "increments"])
def test_hankel_recovers_a_second_order_recurrence_that_global_cannot(center):
    xs = _second_order()
    m = 10
    hankel = HankelDMD(delays=2, dtype="float64", center=center)
    glob = GlobalDMD(dtype="float64", center=center)
    hankel.fit([xs[:m]])
    glob.fit([xs[:m]])
    for h in (1, 5, 40, 400):
        true = xs[m - 1 + h]
        assert abs(float(hankel.predict(h)[0] - true)) < 1e-8 * max(1.0, float(xs.abs().max()))
    errs = [abs(float(glob.predict(h)[0] - xs[m - 1 + h])) / float(xs[m - 1 + h].abs()) for h in (1, 5)]
    assert max(errs) > 0.1
    np.testing.assert_allclose(
        np.sort_complex(hankel.eigenvalues.numpy()),
        np.sort_complex(np.array([0.97 * np.exp(-0.4j), 0.97 * np.exp(0.4j)])),
        atol=1e-10,
    )


def test_hankel_with_one_delay_is_global_dmd(affine_system):
    _, states = affine_system
    snaps = split(states[:WINDOW], SHAPES)
    a, b = HankelDMD(delays=1, dtype="float64"), GlobalDMD(dtype="float64")
    a.fit(snaps)
    b.fit(snaps)
    torch.testing.assert_close(flat(a.predict(30)), flat(b.predict(30)))


def test_hankel_on_several_tensors_with_delays_exact(linear_system):
    _, states = linear_system
    check_predictions(HankelDMD(delays=3, dtype="float64", center="none"), states, SHAPES, horizons=[1, 50])


@pytest.mark.parametrize(
    "delays, center, expected", [(1, "none", 2), (2, "increments", 4), (4, "mean", 5), (3, "increments", 5)]
)
def test_hankel_min_window(delays, center, expected):
    assert HankelDMD(delays=delays, center=center).min_window() == expected


# -- dmd-fixedpoint ----------------------------------------------------------------------------------


def test_fixedpoint_finds_the_fixed_point_of_a_contracting_affine_system():
    a, q = rotation_system([0.8, complex(0.7 * math.cos(0.9), 0.7 * math.sin(0.9)), -0.5, 0.6])
    c = torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(2))
    w_star = torch.linalg.solve(torch.eye(5, dtype=F64) - a, c)
    states = trajectory(a, q @ torch.ones(5, dtype=F64), 10, c)
    shapes = [(2, 2), (1,)]
    snaps = split(states, shapes)
    full = FixedPointDMD(damping=1.0, dtype="float64")
    full.fit(snaps)
    for h in (1, 10, 1000):  # the horizon does not enter
        torch.testing.assert_close(flat(full.predict(h)), w_star, rtol=1e-8, atol=1e-8)
    half = FixedPointDMD(dtype="float64")  # damping 0.5
    half.fit(snaps)
    torch.testing.assert_close(flat(half.predict(3)), states[-1] + 0.5 * (w_star - states[-1]), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(flat(half.predict(0)), states[-1])


def test_fixedpoint_ignores_modes_near_one():
    # One direction drifts at a constant rate (eigenvalue 1 of the increments): no fixed point there.
    a = torch.diag(torch.tensor([1.0, 0.5], dtype=F64))
    c = torch.tensor([0.1, 1.0], dtype=F64)
    states = trajectory(a, torch.zeros(2, dtype=F64), 8, c)
    v = FixedPointDMD(damping=1.0, dtype="float64", margin=0.01)
    v.fit([states])
    out = v.predict(5)[0]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], torch.tensor(2.0, dtype=F64))  # 1 / (1 - 0.5)
    torch.testing.assert_close(out[0], states[-1, 0])  # the drifting direction is left where it is


# -- extrapolate-linear ------------------------------------------------------------------------------


@pytest.mark.parametrize("lookback", [0, 1, 3])
def test_linear_extrapolation_matches_the_formula(lookback):
    g = torch.Generator().manual_seed(lookback)
    snaps = [torch.randn(6, 3, 2, generator=g), torch.randn(6, 4, generator=g)]
    v = LinearExtrapolation(lookback=lookback)
    v.fit(snaps)
    k = lookback or 5
    for h in (0, 1, 17):
        for p, s in zip(v.predict(h), snaps):
            torch.testing.assert_close(p, s[-1] + h * (s[-1] - s[-1 - k]) / k)
    assert v.eigenvalues is None
    assert LinearExtrapolation(lookback=4).min_window() == 5


# -- contracts: shapes, dtypes, devices, parameters -------------------------------------------------


def _variants_for_io():
    return [
        GlobalDMD(),
        GlobalDMD(dtype="float64", center="none"),
        GlobalDMD(center="mean", eig_policy="drop"),
        LayerDMD(),
        HankelDMD(delays=3),
        FixedPointDMD(),
        NodeDMD(),
        NodeDMD(q=2, center="increments", max_eig=1.0, dtype="float32"),
        NodeDMD(solver="gram", q=3),
        LinearExtrapolation(),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", _variants_for_io(), ids=repr)
def test_outputs_keep_shapes_dtypes_and_devices(variant, device):
    g = torch.Generator().manual_seed(0)
    base = [
        torch.randn(3, 4, generator=g),
        torch.randn(3, generator=g),
        torch.randn(2, 3, 2, generator=g),
        torch.randn((), generator=g),
    ]
    dtypes = [torch.float32, torch.float32, torch.float64, torch.float32]
    snaps = []
    for b, dt in zip(base, dtypes):
        steps = torch.stack([b * 0.97**k + 0.01 * k for k in range(8)])
        snaps.append(steps.to(device=device, dtype=dt))
    snaps[2] = snaps[2].transpose(1, 3).contiguous().transpose(1, 3)  # a non-contiguous snapshot
    variant.fit(snaps)
    for h in (0, 1, 25):
        out = variant.predict(h)
        assert len(out) == len(snaps)
        for o, s in zip(out, snaps):
            assert o.shape == s.shape[1:] and o.dtype == s.dtype and o.device == s.device
            assert torch.isfinite(o).all()
    lam = variant.eigenvalues
    if isinstance(variant, LinearExtrapolation):
        assert lam is None
    else:
        assert lam.ndim == 1 and lam.is_complex()


@pytest.mark.parametrize("cls", ALL)
def test_plugin_contract(cls):
    validate("variants", cls)
    space = cls.search_space()
    assert space and set(space) <= set(cls.defaults)
    assert all(isinstance(d, BaseDistribution) for d in space.values())
    v = cls()
    assert v.params == {**cls.defaults, **v.params}
    for name, dist in space.items():  # every value the search can propose is accepted
        choices = getattr(dist, "choices", None)
        values = choices if choices is not None else [dist.low, dist.high]
        for value in values:
            cls(**{name: value})


def test_entry_points_resolve_to_the_classes():
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="koopsweep.variants")}
    assert eps, "koopsweep's entry points are missing: install it with pip install -e ."
    for name, cls in ENTRY_POINTS.items():
        assert eps[name].load() is cls


INVALID = [
    (GlobalDMD, "rank", True),
    (GlobalDMD, "rank", -3),
    (GlobalDMD, "rank", 1.5),
    (GlobalDMD, "dtype", "float16"),
    (GlobalDMD, "dtype", torch.float32),
    (GlobalDMD, "center", "median"),
    (GlobalDMD, "max_eig", 0),
    (GlobalDMD, "max_eig", -1.0),
    (GlobalDMD, "max_eig", "1"),
    (GlobalDMD, "max_eig", True),
    (GlobalDMD, "eig_policy", "keep"),
    (LayerDMD, "rank", "full"),
    (HankelDMD, "delays", 0),
    (HankelDMD, "delays", 2.0),
    (HankelDMD, "delays", True),
    (FixedPointDMD, "margin", 1.0),
    (FixedPointDMD, "margin", -0.1),
    (FixedPointDMD, "damping", 0),
    (FixedPointDMD, "damping", 1.5),
    (FixedPointDMD, "rank", 0.0),
    (NodeDMD, "q", -1),
    (NodeDMD, "q", 1.5),
    (NodeDMD, "rcond", -1e-3),
    (NodeDMD, "center", "mean"),
    (NodeDMD, "max_eig", 0.0),
    (NodeDMD, "dtype", "half"),
    (NodeDMD, "solver", "lstsq"),
    (LinearExtrapolation, "lookback", -1),
    (LinearExtrapolation, "lookback", 1.5),
    (LinearExtrapolation, "lookback", True),
]


@pytest.mark.parametrize("cls, name, value", INVALID, ids=[f"{c.__name__}-{n}-{v!r}" for c, n, v in INVALID])
def test_invalid_parameters_are_rejected_with_a_clear_message(cls, name, value):
    with pytest.raises(ParameterError) as info:
        cls(**{name: value})
    message = str(info.value)
    assert cls.__name__ in message and f"{name}=" in message and repr(value) in message and "expected" in message


def test_unknown_parameters_are_rejected():
    with pytest.raises(ParameterError, match="unknown parameter"):
        GlobalDMD(delays=2)


@pytest.mark.parametrize(
    "variant, expected",
    [
        (GlobalDMD(center="none"), 2),
        (GlobalDMD(center="increments"), 3),
        (GlobalDMD(center="mean"), 2),
        (LayerDMD(), 3),
        (FixedPointDMD(), 3),
        (NodeDMD(), 2),
        (NodeDMD(center="increments"), 3),
        (LinearExtrapolation(), 2),
    ],
    ids=repr,
)
def test_short_windows_are_refused(variant, expected):
    assert variant.min_window() == expected
    snaps = [torch.randn(expected - 1, 3)]
    with pytest.raises(ParameterError, match="too short"):
        variant.fit(snaps)
    variant.fit([torch.randn(expected, 3)])


@pytest.mark.parametrize("cls", ALL)
def test_predict_before_fit_and_bad_horizons(cls):
    v = cls()
    with pytest.raises(RuntimeError, match="before fit"):
        v.predict(1)
    v.fit([torch.randn(6, 3)])
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="horizon"):
            v.predict(bad)
    with pytest.raises(ValueError):
        v.fit([torch.randn(6, 3), torch.randn(5, 2)])
