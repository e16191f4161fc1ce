"""What the PyDMD variants add beyond the conformance suite: linear systems recovered, parameters
checked, and registration through koopsweep's loader."""

import numpy as np
import pytest
import torch

from koopsweep import plugins
from koopsweep.errors import ParameterError
from koopsweep.testing import linear_system
from koopsweep_pydmd.variants import ForwardBackwardDMD, HigherOrderDMD, OptimizedDMD

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydmd", "ignore::RuntimeWarning:pydmd")


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _relative_error(variant, a, snapshots, horizon):
    last = _flat([s[-1] for s in snapshots])
    truth = torch.linalg.matrix_power(a, horizon) @ last
    return float((_flat(variant.predict(horizon)) - truth).norm() / truth.norm())


@pytest.mark.parametrize(
    "variant",
    [OptimizedDMD(svd_rank=6), HigherOrderDMD(svd_rank=6, svd_rank_extra=-1, delays=1)],
    ids=["optimized", "hodmd"],
)
def test_recovers_a_linear_system_with_complex_eigenvalues(variant):
    a, snapshots = linear_system(20)
    variant.fit(snapshots)
    for horizon in (1, 10):
        assert _relative_error(variant, a, snapshots, horizon) < 1e-8
    found = np.sort_complex(variant.eigenvalues.numpy())
    np.testing.assert_allclose(found, np.sort_complex(torch.linalg.eigvals(a).numpy()), atol=1e-8)


def _decaying_mode(n_snapshots, rate=0.9):
    """x_k = v rate^k: one real mode spread over a (2, 2) and a (2,) tensor."""
    v = torch.randn(6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a = rate * torch.outer(v, v) / v.dot(v)  # x_{k+1} = A x_k on the line through v
    traj = torch.stack([v * rate**k for k in range(n_snapshots)])
    return a, [traj[:, :4].reshape(-1, 2, 2), traj[:, 4:]]


@pytest.mark.parametrize("cls", [OptimizedDMD, ForwardBackwardDMD, HigherOrderDMD])
def test_recovers_a_decaying_mode(cls):
    a, snapshots = _decaying_mode(12)
    variant = cls(svd_rank=1)
    variant.fit(snapshots)
    assert _relative_error(variant, a, snapshots, 5) < 1e-8
    assert abs(complex(variant.eigenvalues[0]) - 0.9) < 1e-8


def test_forward_backward_is_not_exact_with_this_pydmd():
    # PyDMD's FbDMD computes its backward operator in another POD basis, so it misses the eigenvalues
    # of a general linear system; ForwardBackwardDMD therefore does not claim exactness. When this
    # assertion starts failing, PyDMD fixed FbDMD: set ForwardBackwardDMD.exact = True and flip it.
    a, snapshots = linear_system(20)
    variant = ForwardBackwardDMD(svd_rank=-1)
    variant.fit(snapshots)
    assert _relative_error(variant, a, snapshots, 1) > 1e-3
    assert ForwardBackwardDMD.exact is False


@pytest.mark.parametrize("cls", [OptimizedDMD, ForwardBackwardDMD, HigherOrderDMD])
def test_truncated_fit_moves_only_along_its_modes(cls):
    # Rank 2 captures one complex pair: the jump stays in that plane and the rest of the last state
    # is kept as it is, not zeroed.
    _, snapshots = linear_system(20)
    variant = cls(svd_rank=2)
    variant.fit(snapshots)
    last = _flat([s[-1] for s in snapshots])
    assert torch.equal(_flat(variant.predict(0)), last)
    jumps = torch.stack([_flat(variant.predict(h)) - last for h in (1, 2, 3, 7)])
    assert torch.linalg.matrix_rank(jumps, rtol=1e-9) <= 2
    assert float(jumps.norm()) > 0


@pytest.mark.parametrize("bad", [-2, 1.0, 1.5, True, "3", None])
@pytest.mark.parametrize("cls", [OptimizedDMD, ForwardBackwardDMD, HigherOrderDMD])
def test_invalid_svd_rank_is_rejected(cls, bad):
    with pytest.raises(ParameterError, match="svd_rank"):
        cls(svd_rank=bad)


def test_other_parameters_are_checked():
    with pytest.raises(ParameterError, match="eig_constraint"):
        OptimizedDMD(eig_constraint="unstable")
    with pytest.raises(ParameterError, match="delays"):
        HigherOrderDMD(delays=-1)
    with pytest.raises(ParameterError, match="tlsq_rank"):
        ForwardBackwardDMD(tlsq_rank=0.5)
    assert HigherOrderDMD(delays=3).min_window() == 5


def test_dtype_and_device_round_trip():
    _, snapshots = linear_system(10)
    snapshots = [snapshots[0].float(), snapshots[1]]
    variant = HigherOrderDMD()
    variant.fit(snapshots)
    out = variant.predict(2)
    assert [t.dtype for t in out] == [torch.float32, torch.float64]
    assert [tuple(t.shape) for t in out] == [(2, 2), (2,)]


def test_registered_through_koopsweeps_loader():
    assert {"pydmd-optimized", "pydmd-fb", "pydmd-hodmd"} <= set(plugins.available("variants"))
    assert plugins.load_variant("pydmd-optimized") is OptimizedDMD
    assert plugins.load_variant("pydmd-fb") is ForwardBackwardDMD
    assert plugins.load_variant("pydmd-hodmd") is HigherOrderDMD
    rows = {row.name: row for row in plugins.describe(["variants"]) if row.name.startswith("pydmd-")}
    assert {name: row.status for name, row in rows.items()} == dict.fromkeys(rows, "ok")
    assert {row.distribution for row in rows.values()} == {"koopsweep-pydmd"}
    assert set(rows["pydmd-hodmd"].search_space) == {"svd_rank", "delays"}
