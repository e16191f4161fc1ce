"""koopsweep variants backed by PyDMD: optimized DMD (BOPDMD), forward-backward DMD (FbDMD) and
higher-order DMD (HODMD).

Each variant flattens the window of parameter snapshots into one float64 numpy matrix ``X`` of shape
``(P, m)`` (P parameters, m snapshots, oldest first), lets PyDMD find the eigenvalues ``Λ`` (discrete
time, one step per snapshot) and the modes ``Φ``, and predicts

    x(m-1+h) = x_last + Re(Φ (Λ^h - 1) b)

where ``b`` are the amplitudes at the last snapshot. Only the change the modes predict is added to the
last state, so the part of the weights that the truncated modes do not capture is kept as it is (not
zeroed), and ``predict(0)`` is exactly the last snapshot. Predictions go back to each parameter's
shape, dtype and device.

``svd_rank`` follows PyDMD's convention: -1 no truncation, 0 the optimal hard threshold, an int >= 1
that rank, a float in (0, 1) the smallest rank keeping that fraction of the energy. Other values are
rejected (PyDMD would silently treat them as "no truncation").
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, ClassVar

import numpy as np
import torch
from optuna.distributions import CategoricalDistribution, IntDistribution

from koopsweep import Variant
from koopsweep.errors import ParameterError

__all__ = ["ForwardBackwardDMD", "HigherOrderDMD", "OptimizedDMD"]

# PyDMD warns about the condition number of every window it is given, with the number in the message,
# so Python's show-once rule never silences it: a converging training run is ill-conditioned by nature
# and an accelerator fits hundreds of windows. Filtered once here, narrowly, rather than around each
# fit: entering warnings.catch_warnings() resets every show-once registry in the process, which would
# repeat every other warning (PyDMD's or anyone's) after each fit.
warnings.filterwarnings("ignore", message="Input data condition number", category=UserWarning, module="pydmd")


def _check(condition: bool, owner: object, name: str, value: Any, expected: str) -> None:
    if not condition:
        raise ParameterError(f"{type(owner).__name__}: parameter {name}={value!r} is invalid; expected {expected}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_svd_rank(owner: object, name: str, value: Any) -> None:
    valid = (_is_int(value) and value >= -1) or (isinstance(value, float) and 0.0 < value < 1.0)
    _check(valid, owner, name, value, "-1 (no truncation), 0 (optimal threshold), an int >= 1 or a float in (0, 1)")


class _PyDMDVariant(Variant):
    """Shared plumbing: torch snapshots to a numpy matrix, the jump, and numpy back to torch."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._layout: list[tuple[torch.Size, torch.dtype, torch.device]] = []
        self._last: np.ndarray | None = None
        self._eigs = np.zeros(0, complex)
        self._modes = np.zeros((0, 0), complex)
        self._amplitudes = np.zeros(0, complex)

    def validate_params(self) -> None:
        _check_svd_rank(self, "svd_rank", self.params["svd_rank"])

    def _decompose(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Discrete-time eigenvalues (r,), modes (P, r) and amplitudes at the last snapshot (r,) of ``x``."""
        raise NotImplementedError

    def fit(self, snapshots: list[torch.Tensor]) -> None:
        window = snapshots[0].shape[0]
        if window < self.min_window():
            raise ValueError(f"{type(self).__name__} needs at least {self.min_window()} snapshots, got {window}")
        flat = torch.cat([s.detach().reshape(window, -1).to("cpu", torch.float64) for s in snapshots], dim=1)
        x = np.ascontiguousarray(flat.numpy().T)  # (P, m), a copy: PyDMD never sees the caller's memory
        eigs, modes, amplitudes = self._decompose(x)
        # Only a fit that succeeded replaces the previous one (a failed fit leaves no half-new state).
        self._layout = [(s.shape[1:], s.dtype, s.device) for s in snapshots]
        self._last = x[:, -1].copy()
        self._eigs = np.asarray(eigs, dtype=complex)
        self._modes = np.asarray(modes, dtype=complex)
        self._amplitudes = np.asarray(amplitudes, dtype=complex)

    def predict(self, horizon: int) -> list[torch.Tensor]:
        if self._last is None:
            raise RuntimeError(f"{type(self).__name__}.predict() called before fit()")
        _check(_is_int(horizon) and horizon >= 0, self, "horizon", horizon, "an int >= 0")
        change = self._modes @ ((self._eigs**horizon - 1.0) * self._amplitudes)
        flat = self._last + change.real
        out, offset = [], 0
        for shape, dtype, device in self._layout:
            n = math.prod(shape)
            part = torch.from_numpy(flat[offset : offset + n].copy()).reshape(shape)
            out.append(part.to(device=device, dtype=dtype))
            offset += n
        return out

    @property
    def eigenvalues(self) -> torch.Tensor | None:
        return None if self._last is None else torch.from_numpy(self._eigs.copy())


class OptimizedDMD(_PyDMDVariant):
    """Optimized DMD (Askham & Kutz 2018) through PyDMD's ``BOPDMD`` without bagging.

    Variable projection fits the eigenvalues, modes and amplitudes to the whole window at once, which
    is less biased by noise than exact DMD. ``eig_constraint="stable"`` keeps every continuous-time
    eigenvalue in the left half plane (no growing modes).
    """

    defaults: ClassVar[dict[str, Any]] = {"svd_rank": 0, "eig_constraint": "none", "max_iterations": 30}
    exact: ClassVar[bool] = True

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {
            "svd_rank": IntDistribution(1, 8),
            "eig_constraint": CategoricalDistribution(["none", "stable"]),
        }

    def validate_params(self) -> None:
        super().validate_params()
        _check(self.params["eig_constraint"] in ("none", "stable"), self, "eig_constraint",
               self.params["eig_constraint"], "'none' or 'stable'")  # fmt: skip
        steps = self.params["max_iterations"]
        _check(_is_int(steps) and steps >= 1, self, "max_iterations", steps, "an int >= 1")

    def _decompose(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from pydmd import BOPDMD

        constraint = self.params["eig_constraint"]
        # A fresh BOPDMD per fit: a fitted one reuses its previous eigenvalues as the next initial
        # guess, which would make a prediction depend on every earlier window.
        dmd = BOPDMD(
            svd_rank=self.params["svd_rank"],
            eig_constraints=None if constraint == "none" else {constraint},
            # PyDMD's default tolerance (1e-6 relative residual) stops an exact fit at about 1e-6
            # accuracy; noisy windows stop on stalling or max_iterations long before either matters.
            varpro_opts_dict={"maxiter": self.params["max_iterations"], "tol": 1e-12},
        )
        times = np.arange(x.shape[1], dtype=float)
        dmd.fit(x, times)
        omega = np.asarray(dmd.eigs)  # continuous time: x(t) = Φ diag(b) exp(ω t)
        return np.exp(omega), dmd.modes, dmd.amplitudes * np.exp(omega * times[-1])


class ForwardBackwardDMD(_PyDMDVariant):
    """Forward-backward DMD (Dawson et al. 2016) through PyDMD's ``FbDMD``.

    Averages the forward and the inverted backward operator to remove the bias that noise in the
    snapshots gives exact DMD's eigenvalues. ``tlsq_rank`` > 0 adds total-least-squares denoising.

    Not ``exact``: PyDMD 2025.8's ``FbDMD`` computes the backward operator in the POD basis of the
    shifted snapshots rather than in the forward one, so on noise-free data it recovers the eigenvalues
    only when the two bases agree (a single decaying mode, for instance), not for a general linear system.
    """

    defaults: ClassVar[dict[str, Any]] = {"svd_rank": 0, "tlsq_rank": 0}
    exact: ClassVar[bool] = False

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {"svd_rank": IntDistribution(1, 8), "tlsq_rank": IntDistribution(0, 6)}

    def validate_params(self) -> None:
        super().validate_params()
        rank = self.params["tlsq_rank"]
        _check(_is_int(rank) and rank >= 0, self, "tlsq_rank", rank, "an int >= 0 (0: no total least squares)")

    def _decompose(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from pydmd import FbDMD

        # opt=-1: PyDMD fits the amplitudes to the last snapshot, which is where the jump starts.
        dmd = FbDMD(svd_rank=self.params["svd_rank"], tlsq_rank=self.params["tlsq_rank"], opt=-1)
        dmd.fit(x)
        return dmd.eigs, dmd.modes, dmd.amplitudes


class HigherOrderDMD(_PyDMDVariant):
    """Higher-order DMD (Le Clainche & Vega 2017) through PyDMD's ``HODMD``.

    DMD on ``delays`` time-delayed copies of the (optionally SVD-reduced) snapshots, which finds
    oscillations that one snapshot alone cannot resolve. PyDMD gives the eigenvalues; the modes in
    parameter space are the least-squares fit of the window to those eigenvalues' powers (a
    Vandermonde fit), since HODMD's own modes live in the reduced, delay-embedded space.

    ``delays=0`` is plain DMD; ``svd_rank_extra`` truncates the snapshots before delay embedding (same
    convention as ``svd_rank``).
    """

    defaults: ClassVar[dict[str, Any]] = {"svd_rank": 0, "delays": 2, "svd_rank_extra": 0}
    exact: ClassVar[bool] = True

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {"svd_rank": IntDistribution(1, 8), "delays": IntDistribution(0, 6)}

    def validate_params(self) -> None:
        super().validate_params()
        _check_svd_rank(self, "svd_rank_extra", self.params["svd_rank_extra"])
        delays = self.params["delays"]
        _check(_is_int(delays) and delays >= 0, self, "delays", delays, "an int >= 0")

    def min_window(self) -> int:
        # delays + 1 stacked copies leave window - delays columns; DMD needs at least one pair of them.
        return self.params["delays"] + 2

    def _decompose(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from pydmd import HODMD

        dmd = HODMD(
            svd_rank=self.params["svd_rank"],
            d=self.params["delays"] + 1,
            svd_rank_extra=self.params["svd_rank_extra"],
        )
        dmd.fit(x)
        eigs = np.asarray(dmd.eigs, dtype=complex)
        # x_k ≈ Φ Λ^(k - anchor) 1, each mode anchored where its powers stay <= 1 in modulus: decaying
        # modes at the first snapshot, growing ones at the last, so that a spurious eigenvalue far
        # outside the unit circle cannot overflow the (r, m) matrix of powers.
        last = x.shape[1] - 1
        grows = np.abs(eigs) > 1
        exponents = np.arange(last + 1)[None, :] - np.where(grows, last, 0)[:, None]
        modes = x @ np.linalg.pinv(eigs[:, None] ** exponents)
        return eigs, modes, np.where(grows, 1.0, eigs**last)
