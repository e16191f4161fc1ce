"""The numerical core (`koopsweep.koopman`): rank rule, Grams, Hankel sums, growth factors, node operators."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from koopsweep.errors import ParameterError
from koopsweep.koopman import (
    basis_rows,
    check_rank,
    displacement_rows,
    fit_node_operators,
    fixed_point_growth,
    geometric_sum,
    gram_dmd,
    hankel_gram,
    limit_eigenvalues,
    node_advance,
    node_advance_modes,
    node_modes,
    power_growth,
    state_coefficients,
    sum_growth,
    truncation_rank,
    window_gram,
)

from test_variants import rotation_system

F64 = torch.float64


# -- rank rule -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [(0, 0), (1, 1), (7, 7), (-1, -1), (0.5, 0.5), (0.999, 0.999), (np.int64(3), 3), (np.float64(0.9), 0.9)],
)
def test_check_rank_accepts_every_valid_form(value, expected):
    out = check_rank(value)
    assert out == expected
    assert type(out) is type(expected)


@pytest.mark.parametrize(
    "value",
    [True, False, -2, -7, 0.0, 1.0, 2.0, 1.5, -0.5, -1.0, float("nan"), float("inf"), "3", "0.9", None, [1], 1j],
)
def test_check_rank_rejects_invalid_values(value):
    with pytest.raises(ParameterError) as info:
        check_rank(value, "GlobalDMD")
    message = str(info.value)
    assert "GlobalDMD" in message and "rank=" in message and repr(value) in message and "expected" in message


def test_truncation_rank_energy_int_and_full():
    sq = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=F64)  # cumulative energy 0.4, 0.7, 0.9, 1.0
    assert truncation_rank(sq, 0.4, 100, 4) == 1
    assert truncation_rank(sq, 0.7, 100, 4) == 2
    assert truncation_rank(sq, 0.71, 100, 4) == 3
    assert truncation_rank(sq, 0.999, 100, 4) == 4
    assert truncation_rank(sq, 2, 100, 4) == 2
    assert truncation_rank(sq, 10, 100, 4) == 4  # capped at what is available
    assert truncation_rank(sq, -1, 100, 4) == 4


def test_truncation_rank_always_drops_numerical_zeros():
    sq = torch.tensor([1.0, 1e-3, 1e-20, -1e-18], dtype=F64)
    assert truncation_rank(sq, -1, 1000, 4) == 2
    assert truncation_rank(sq, 4, 1000, 4) == 2
    assert truncation_rank(sq, 0.9999999999, 1000, 4) == 2
    assert truncation_rank(torch.zeros(3, dtype=F64), -1, 10, 3) == 0
    # The floor follows the Gram's dtype: 1e-9 is noise for a float32 Gram, signal for a float64 one.
    sq = torch.tensor([1.0, 1e-9], dtype=F64)
    assert truncation_rank(sq, -1, 1000, 2, torch.float32) == 1
    assert truncation_rank(sq, -1, 1000, 2, torch.float64) == 2


@pytest.mark.parametrize("shape", [(200, 12), (12, 200), (40, 40), (300, 7)])
@pytest.mark.parametrize("rank", [0, 0.9, 0.99, 3, -1])
def test_truncation_rank_matches_pydmd_compute_rank(shape, rank):
    from pydmd.utils import compute_rank

    rng = np.random.default_rng(sum(shape))
    low = rng.standard_normal((shape[0], 4)) @ rng.standard_normal((4, shape[1])) * 10
    x = low + 0.1 * rng.standard_normal(shape)
    s = np.linalg.svd(x, compute_uv=False)
    ours = truncation_rank(torch.tensor(s**2), rank, n_features=shape[0], n_samples=shape[1])
    assert ours == compute_rank(x, rank)


# -- Gram, Hankel sums and coefficient maps ----------------------------------------------------------


def _rows(x: torch.Tensor, center: str) -> torch.Tensor:
    if center == "increments":
        return x[1:] - x[:-1]
    if center == "mean":
        return x - x.mean(0)
    return x


@pytest.mark.parametrize("center", ["none", "mean", "increments"])
@pytest.mark.parametrize("chunk", [None, 5, -1])
@pytest.mark.parametrize("window", [5, 8, 9])
def test_window_gram_matches_explicit_rows(center, chunk, window):
    g = torch.Generator().manual_seed(window)
    blocks = [torch.randn(window, p, dtype=F64, generator=g) + 3.0 for p in (13, 1, 4, 20_011)]
    workspace: dict = {}
    for _ in range(2):  # the second call reuses the workspace buffer
        gram = window_gram(blocks, center, F64, chunk=chunk, workspace=workspace)
        rows = _rows(torch.cat(blocks, 1), center)
        assert gram.shape == (basis_rows(window, center),) * 2
        torch.testing.assert_close(gram, rows @ rows.T, rtol=1e-12, atol=1e-8)


def test_window_gram_float32_of_float64_data_and_back():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 50, dtype=F64, generator=g)
    rows = x[1:] - x[:-1]
    torch.testing.assert_close(
        window_gram([x], "increments", torch.float32).double(), rows @ rows.T, rtol=1e-5, atol=1e-4
    )
    x32 = x.float()
    rows32 = (x32[1:] - x32[:-1]).double()
    torch.testing.assert_close(window_gram([x32], "increments", F64), rows32 @ rows32.T, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("delays", [1, 2, 3, 5])
def test_hankel_gram_is_the_gram_of_stacked_states(delays):
    g = torch.Generator().manual_seed(delays)
    rows = torch.randn(9, 4, dtype=F64, generator=g)
    n_h = rows.shape[0] - delays + 1
    hankel = torch.stack([rows[j : j + delays].reshape(-1) for j in range(n_h)])
    torch.testing.assert_close(hankel_gram(rows @ rows.T, delays), hankel @ hankel.T)


@pytest.mark.parametrize("center", ["none", "mean", "increments"])
def test_state_coefficients_reproduce_row_combinations(center):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 10, dtype=F64, generator=g)
    rows = _rows(x, center)
    c = torch.randn(rows.shape[0], dtype=F64, generator=g)
    e = state_coefficients(c, center, 7)
    torch.testing.assert_close(e @ x, c @ rows)


# -- growth factors and eigenvalue bounds ----------------------------------------------------------

LAMBDAS = torch.tensor(
    [
        1.0,
        0.0,
        -1.0,
        0.5,
        1.0 + 1e-13,
        1.0 - 1e-9,
        0.9 * complex(math.cos(0.7), math.sin(0.7)),
        complex(0, 1),
        -0.3 + 0.2j,
    ],
    dtype=torch.complex128,
)


@pytest.mark.parametrize("h", [0, 1, 2, 7, 60])
def test_growth_factors_match_direct_sums(h):
    powers = [LAMBDAS**j if j else torch.ones_like(LAMBDAS) for j in range(h + 1)]
    torch.testing.assert_close(power_growth(LAMBDAS, h), powers[h] - 1 if h else torch.zeros_like(LAMBDAS))
    direct = sum(powers[1 : h + 1], torch.zeros_like(LAMBDAS))
    torch.testing.assert_close(sum_growth(LAMBDAS, h), direct, rtol=1e-12, atol=1e-12)
    direct_geo = sum(powers[:h], torch.zeros_like(LAMBDAS))
    torch.testing.assert_close(geometric_sum(LAMBDAS, h), direct_geo, rtol=1e-12, atol=1e-12)


def test_growth_factors_are_stable_at_one_and_zero_for_huge_horizons():
    lam = torch.tensor([1.0, 0.0, 1.0 - 1e-15], dtype=torch.complex128)
    s = sum_growth(lam, 10**6)
    assert s[0] == 10**6 and s[1] == 0
    assert abs(s[2] - 10**6) < 1e-3
    assert torch.all(torch.isfinite(power_growth(lam, 10**6).real))
    assert power_growth(lam, 10**6)[0] == 0 and power_growth(lam, 10**6)[1] == -1
    torch.testing.assert_close(fixed_point_growth(torch.tensor([0.5 + 0j])), torch.tensor([1.0 + 0j]))


def test_limit_eigenvalues_clip_and_drop():
    lam = torch.tensor([1.0, 1.2, 0.99 + 0.5j, -1.0, 0.3, complex(0.6, 0.8)], dtype=torch.complex128)
    clipped, keep = limit_eigenvalues(lam, 1.0, "clip")
    assert keep is None
    assert torch.all(clipped.abs() <= 1.0 + 1e-15)
    unchanged = lam.abs() <= 1.0
    assert torch.equal(clipped[unchanged], lam[unchanged])  # bit for bit, including exactly 1
    assert clipped[0] == 1.0 and clipped[3] == -1.0
    torch.testing.assert_close(clipped[1], torch.tensor(1.0 + 0j, dtype=torch.complex128))
    torch.testing.assert_close(clipped[2].angle(), lam[2].angle())
    same, keep = limit_eigenvalues(lam, 1.0, "drop")
    assert torch.equal(same, lam)
    assert keep.tolist() == [True, False, False, True, True, True]
    assert limit_eigenvalues(lam, None) == (lam, None)


# -- exact DMD from the Gram -----------------------------------------------------------------------




def test_gram_dmd_recovers_eigenvalues_and_modes_predict_exactly():
    a, q = rotation_system([1.0, 0.8, complex(0.9 * math.cos(0.6), 0.9 * math.sin(0.6)), -0.6])
    x = [q @ torch.ones(5, dtype=F64)]
    for _ in range(11):
        x.append(a @ x[-1])
    x = torch.stack(x)  # (12, 5)
    fit = gram_dmd(x @ x.T, -1, n_features=5)
    assert fit.rank == 5
    np.testing.assert_allclose(
        np.sort_complex(fit.eigenvalues.numpy()), np.sort_complex(torch.linalg.eigvals(a).numpy()), atol=1e-10
    )
    h = 9
    c = displacement_rows(fit, power_growth(fit.eigenvalues, h))
    torch.testing.assert_close(x[-1] + c @ x, torch.linalg.matrix_power(a, h) @ x[-1])


def test_gram_dmd_with_more_snapshots_than_features_stays_finite():
    x = torch.randn(20, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    fit = gram_dmd(x @ x.T, -1, n_features=3)
    assert fit.rank == 3
    assert torch.all(torch.isfinite(fit.modes)) and torch.all(torch.isfinite(fit.amplitudes))
    empty = gram_dmd(torch.zeros(5, 5, dtype=F64), -1, n_features=10)
    assert empty.rank == 0
    assert torch.equal(displacement_rows(empty, power_growth(empty.eigenvalues, 3)), torch.zeros(5, dtype=F64))


def test_gram_dmd_needs_enough_rows_for_the_delays():
    with pytest.raises(ValueError, match="delay"):
        gram_dmd(torch.eye(3, dtype=F64), -1, n_features=4, delays=3)


def test_gram_dmd_agrees_with_pydmd_on_random_data():
    from pydmd import DMD

    g = torch.Generator().manual_seed(7)
    x = torch.randn(10, 40, dtype=F64, generator=g).cumsum(0)
    fit = gram_dmd(x @ x.T, -1, n_features=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = DMD(svd_rank=-1, exact=True).fit(x.numpy().T)
    np.testing.assert_allclose(np.sort_complex(fit.eigenvalues.numpy()), np.sort_complex(ref.eigs), atol=1e-7)


# -- node operators --------------------------------------------------------------------------------


def _explicit_operator(states: torch.Tensor) -> torch.Tensor:
    f = states[:-1].T
    f_next = states[1:].T
    return f_next @ torch.linalg.pinv(f)


@pytest.mark.parametrize("solver", ["svd", "gram"])
@pytest.mark.parametrize("window, k", [(12, 4), (5, 6), (3, 1)])
def test_node_operators_match_the_explicit_pinv_operator(window, k, solver):
    g = torch.Generator().manual_seed(window * k)
    states = torch.randn(6, window, k, dtype=F64, generator=g).cumsum(1)
    ops = fit_node_operators(states, rcond=1e-12, solver=solver)
    modes = node_modes(ops)
    for h in (1, 2, 7):
        for cumulative in (False, True):
            expected = []
            for node in states:
                u = _explicit_operator(node)
                powers = [torch.linalg.matrix_power(u, j) @ node[-1] for j in range(1, h + 1)]
                expected.append(sum(powers) if cumulative else powers[-1])
            expected = torch.stack(expected)
            scale = expected.abs().max()
            torch.testing.assert_close(node_advance(ops, h, cumulative) / scale, expected / scale, rtol=0, atol=1e-9)
            torch.testing.assert_close(
                node_advance_modes(modes, h, cumulative, None) / scale, expected / scale, rtol=0, atol=1e-8
            )
    with pytest.raises(ValueError):
        node_advance(ops, 0, False)


def test_scalar_node_geometric_sum_is_exact_and_stable():
    from koopsweep.koopman._node import _real_geometric_sum

    a = torch.tensor([1.0, 0.0, -1.0, 0.5, -0.7, 1.0 - 1e-12, 1.3], dtype=F64)
    for h in (1, 2, 9):
        direct = sum((a**j for j in range(h)), torch.zeros_like(a))
        torch.testing.assert_close(_real_geometric_sum(a, h), direct, rtol=1e-10, atol=1e-12)
    assert _real_geometric_sum(a, 10**6)[0] == 10**6


def test_node_solvers_agree_on_rank_deficient_nodes():
    g = torch.Generator().manual_seed(4)
    states = torch.randn(5, 9, 2, dtype=F64, generator=g) @ torch.randn(2, 6, dtype=F64, generator=g)  # rank 2 in R^6
    a = node_advance(fit_node_operators(states, 1e-8, "svd"), 3, False)
    b = node_advance(fit_node_operators(states, 1e-8, "gram"), 3, False)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="solver"):
        fit_node_operators(states, 1e-8, "qr")
