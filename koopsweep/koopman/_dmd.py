"""Exact DMD by the method of snapshots, from one Gram matrix, and the jump to any horizon.

Notation (columns are snapshots, as in the DMD literature): the ``n`` basis rows ``b_0 .. b_{n-1}``
of `koopsweep.koopman._gram` become, with ``delays = d``, the Hankel states
``z_j = (b_j, ..., b_{j+d-1})`` for ``j = 0 .. n-d``; ``Z0`` holds all but the newest, ``Z1`` all but
the oldest. Nothing parameter-sized is formed here: everything is derived from the ``n x n`` Gram
``K[i, j] = <b_i, b_j>``.

* Hankel Gram: ``H[i, j] = <z_i, z_j> = sum_l K[i+l, j+l]``.
* ``G0 = Z0^T Z0 = H[:-1, :-1]``, ``C = Z0^T Z1 = H[:-1, 1:]``, ``G1 = Z1^T Z1 = H[1:, 1:]``.
* ``eigh(G0) = V diag(sigma^2) V^T`` (the right singular vectors of ``Z0``), truncated by the rank rule.
* Reduced operator ``A~ = S^-1 V^T C V S^-1`` (``r x r``), ``eig(A~) = W diag(lambda)``.
* Exact modes ``Phi = Z1 V S^-1 W`` (Tu et al.'s, without the ``1/lambda``, so ``lambda = 0`` is harmless),
  kept as the coefficient matrix ``M = V S^-1 W`` over the columns of ``Z1``.
* Amplitudes ``b`` fitted by least squares to the newest Hankel state ``z_last = Z1 e_last``:
  ``Phi = Psi W`` with the real ``Psi = Z1 V S^-1``, so ``b = W^-1 y`` with ``y`` the real least-squares
  solution of ``Psi y = z_last``, from the ``r x r`` normal equations
  ``(S^-1 V^T G1 V S^-1) y = S^-1 V^T G1[:, -1]``.
* A prediction ``Phi diag(growth(lambda)) b`` is the combination ``Z1 c`` with the real coefficients
  ``c = Re(M (growth * b))``; its newest block is ``sum_j c_j b_{j+d}``, one ``(P x n) . (n)`` product.

The ``m x m`` and ``r x r`` work is done in float64 (and complex128) whatever the Gram's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from koopsweep.koopman._rank import RankSpec, truncation_rank

EIG_POLICIES = ("clip", "drop")
#: Which fitted modes a prediction uses: all of them, or only those that describe convergence.
MODE_FILTERS = ("all", "converging")


@dataclass(frozen=True)
class GramDMD:
    """A fitted exact DMD, in coefficients over the basis rows.

    Attributes:
        eigenvalues: ``(r,)`` complex128, the fitted DMD eigenvalues (before any clipping).
        modes: ``(n, r)`` complex128; mode ``j`` is ``sum_i modes[i, j] * b_i`` over the ``n`` basis rows
            (for Hankel DMD: the newest block of the Hankel mode).
        amplitudes: ``(r,)`` complex128, fitted to the newest (Hankel) state.
    """

    eigenvalues: torch.Tensor
    modes: torch.Tensor
    amplitudes: torch.Tensor

    @property
    def rank(self) -> int:
        return int(self.eigenvalues.shape[0])

    @property
    def n_rows(self) -> int:
        return int(self.modes.shape[0])


def hankel_gram(gram: torch.Tensor, delays: int) -> torch.Tensor:
    """Gram of the Hankel states with ``delays`` blocks, from the Gram of the rows: sums along diagonals."""
    if delays == 1:
        return gram
    n_h = gram.shape[0] - delays + 1
    if n_h < 1:
        raise ValueError(f"{gram.shape[0]} rows cannot hold a Hankel state of {delays} delays")
    out = gram[:n_h, :n_h].clone()
    for lag in range(1, delays):
        out += gram[lag : lag + n_h, lag : lag + n_h]
    return out


def _empty_fit(n_rows: int, device: torch.device) -> GramDMD:
    c = torch.complex128
    return GramDMD(
        torch.zeros(0, dtype=c, device=device),
        torch.zeros(n_rows, 0, dtype=c, device=device),
        torch.zeros(0, dtype=c, device=device),
    )


def gram_dmd(
    gram: torch.Tensor,
    rank: RankSpec,
    *,
    n_features: int,
    delays: int = 1,
    gram_dtype: torch.dtype | None = None,
) -> GramDMD:
    """Fit exact (time-delay) DMD to the basis rows whose Gram is ``gram``.

    Args:
        gram: ``(n, n)`` Gram of the basis rows (any float dtype; cast to float64 here).
        rank: a validated rank rule (see `koopsweep.koopman.check_rank`).
        n_features: length of one basis row (the parameter count), for the rank rule.
        delays: Hankel depth ``d >= 1``; needs ``n >= d + 1``.
        gram_dtype: dtype the Gram was accumulated in (its rounding sets the numerical-zero floor);
            defaults to ``gram.dtype``.
    """
    gram_dtype = gram.dtype if gram_dtype is None else gram_dtype
    n = gram.shape[0]
    if n < delays + 1:
        raise ValueError(f"exact DMD with {delays} delay(s) needs at least {delays + 1} basis rows, got {n}")
    device = gram.device
    k = hankel_gram(gram.to(torch.float64), delays)
    g0 = k[:-1, :-1]
    cross = k[:-1, 1:]
    g1 = k[1:, 1:]
    n_cols = g0.shape[0]

    sq, v = torch.linalg.eigh(g0)
    sq = sq.flip(0)
    v = v.flip(1)
    r = truncation_rank(sq, rank, n_features=n_features * delays, n_samples=n_cols, gram_dtype=gram_dtype)
    if r == 0:
        return _empty_fit(n, device)
    vs = v[:, :r] / sq[:r].sqrt()  # V S^-1
    reduced = vs.T @ cross @ vs  # S^-1 V^T Z0^T Z1 V S^-1 = U^T Z1 V S^-1
    lam, w = torch.linalg.eig(reduced)
    coeff = vs.to(torch.complex128) @ w  # Phi = Z1 @ coeff

    # Amplitudes: Phi b = z_last in the least-squares sense. With Psi = Z1 V S^-1 (real) and Phi = Psi W,
    # solve the real problem min |Psi y - z_last| from its r x r normal equations (Psi^T Psi =
    # S^-1 V^T G1 V S^-1 is well conditioned: Z0 V S^-1 is orthonormal and Z1 is Z0 shifted by one step),
    # by an eigh-based pseudo-inverse, then b = W^-1 y.
    normal = vs.T @ g1 @ vs
    rhs = vs.T @ g1[:, -1]
    ev, evec = torch.linalg.eigh(normal)
    keep = ev > ev[-1].clamp(min=0) * (r * torch.finfo(torch.float64).eps)
    y = evec @ torch.where(keep, (evec.T @ rhs) / torch.where(keep, ev, torch.ones_like(ev)), torch.zeros_like(ev))
    amps = _solve_or_pinv(w, y.to(torch.complex128))

    modes = torch.zeros(n, r, dtype=torch.complex128, device=device)
    modes[delays:] = coeff  # Z1 column j (Hankel state j + 1) ends with basis row j + delays
    return GramDMD(lam, modes, amps)


def _solve_or_pinv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a^-1 b`` for the eigenvector matrix ``a``; its pseudo-inverse when ``a`` is (numerically) singular."""
    x, info = torch.linalg.solve_ex(a, b)
    if bool(((info == 0) & torch.isfinite(x).all()).item()):  # one host sync
        return x
    return torch.linalg.pinv(a) @ b


def limit_eigenvalues(
    eigenvalues: torch.Tensor, max_eig: float | None, policy: str = "clip"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Bound the moduli of ``eigenvalues`` by ``max_eig``.

    Returns ``(eigenvalues to use, keep mask or None)``. Eigenvalues at or below the bound are left
    untouched bit for bit (an eigenvalue exactly 1 stays 1). ``"clip"`` scales the others down to modulus
    ``max_eig``; ``"drop"`` keeps them but returns a mask that removes them from predictions.
    """
    if max_eig is None or eigenvalues.numel() == 0:
        return eigenvalues, None
    modulus = eigenvalues.abs()
    over = modulus > max_eig
    if policy == "clip":
        scale = torch.where(over, max_eig / modulus.clamp(min=torch.finfo(modulus.dtype).tiny), 1.0)
        return torch.where(over, eigenvalues * scale, eigenvalues), None
    if policy == "drop":
        return eigenvalues, ~over
    raise ValueError(f"eig_policy must be one of {EIG_POLICIES}, got {policy!r}")


def converging_modes(eigenvalues: torch.Tensor, max_angle: float) -> torch.Tensor:
    """Mask of the modes that describe convergence: real-positive decays ``0 < lambda < 1`` and the
    drift ``lambda = 1``, taken as those with ``0 < |lambda| <= 1`` (to a relative 1e-6, so that a drift
    fitted a hair above 1 stays) and ``|arg lambda| <= max_angle``.

    Dropped: oscillatory modes (both members of a conjugate pair have the same ``|arg|``, so a pair goes
    together and the prediction stays real), negative ones (a period-2 flip) and growing ones.
    """
    modulus = eigenvalues.abs()
    return (modulus > 0) & (modulus <= 1.0 + 1e-6) & (torch.angle(eigenvalues).abs() <= max_angle)


def _log_polar(eigenvalues: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``log|lambda|`` and ``arg(lambda)`` as real tensors (``-inf`` and 0 for ``lambda = 0``)."""
    return torch.log(eigenvalues.abs()), torch.angle(eigenvalues)


def _expm1_polar(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``exp(x + iy) - 1`` without cancellation near 0 (``x = -inf`` gives exactly -1)."""
    real = torch.expm1(x) * torch.cos(y) - 2.0 * torch.sin(0.5 * y) ** 2
    imag = torch.exp(x) * torch.sin(y)
    return torch.complex(real, imag)


def power_growth(eigenvalues: torch.Tensor, horizon: int) -> torch.Tensor:
    """``lambda^h - 1``: the displacement factor of a DMD fitted on states."""
    if horizon == 0:
        return torch.zeros_like(eigenvalues)
    x, y = _log_polar(eigenvalues)
    return _expm1_polar(horizon * x, horizon * y)


def geometric_sum(eigenvalues: torch.Tensor, horizon: int) -> torch.Tensor:
    """``1 + lambda + ... + lambda^(h-1)``, exact at ``lambda = 1`` (``h``) and at ``lambda = 0`` (1)."""
    if horizon == 0:
        return torch.zeros_like(eigenvalues)
    x, y = _log_polar(eigenvalues)
    num = _expm1_polar(horizon * x, horizon * y)
    den = _expm1_polar(x, y)
    at_one = den == 0  # lambda exactly 1 (any other lambda gives a non-zero expm1)
    ratio = num / torch.where(at_one, torch.ones_like(den), den)
    return torch.where(at_one, torch.full_like(ratio, float(horizon)), ratio)


def sum_growth(eigenvalues: torch.Tensor, horizon: int) -> torch.Tensor:
    """``lambda + lambda^2 + ... + lambda^h``: the displacement factor of a DMD fitted on increments."""
    return eigenvalues * geometric_sum(eigenvalues, horizon)


def fixed_point_growth(eigenvalues: torch.Tensor) -> torch.Tensor:
    """``lambda / (1 - lambda)``, the ``h -> infinity`` limit of `sum_growth` for ``|lambda| < 1``."""
    return eigenvalues / (1.0 - eigenvalues)


def displacement_rows(fit: GramDMD, growth: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Real coefficients ``c`` over the basis rows of ``Phi diag(growth) b`` (float64, length ``n``)."""
    weights = growth * fit.amplitudes
    if keep is not None:
        weights = torch.where(keep, weights, torch.zeros_like(weights))
    return (fit.modes @ weights).real
