"""The rank rule shared by every DMD variant: parsing a ``rank`` value and truncating a spectrum with it.

Convention (PyDMD's ``svd_rank``, applied strictly):

* ``0``: the optimal hard threshold of Gavish and Donoho for an unknown noise level,
  ``tau = omega(beta) * median(singular values)`` with
  ``omega(beta) ~ 0.56 beta^3 - 0.95 beta^2 + 1.82 beta + 1.43`` and ``beta`` the aspect ratio
  (shorter side / longer side) of the data matrix;
* an int ``>= 1``: keep that many (capped at what the data holds);
* a float in ``(0, 1)``: the smallest rank whose cumulative energy (sum of squared singular values)
  reaches that fraction;
* ``-1``: no truncation.

Whatever the rule, singular values that are numerically zero are always dropped, so that the inverses
taken afterwards stay finite and meaningful. The spectra here come from Gram matrices (the method of
snapshots), whose eigenvalues ``sigma^2`` carry an absolute rounding error of order
``eps * sigma_max^2`` times a factor that grows slowly with the length of the dot products: an
eigenvalue counts as zero when ``sigma^2 <= max(n_samples, sqrt(n_features)) * eps * sigma_max^2``
(``eps`` of the dtype the Gram was accumulated in). Measured on random rank-deficient data with up to
270k features, the spurious eigenvalues of a Gram stayed below ``31 eps * sigma_max^2`` in float64 and
``2 eps * sigma_max^2`` in float32 (MKL), well under this floor.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import torch

from koopsweep.errors import ParameterError

RankSpec = int | float

_RANK_EXPECTED = (
    "0 (optimal hard threshold), an int >= 1 (that rank), a float in (0, 1) (cumulative energy) or -1 (no truncation)"
)


def check_rank(value: Any, owner: object = "rank", name: str = "rank") -> RankSpec:
    """Validate a rank value and return it as a plain ``int`` or ``float``.

    Raises `ParameterError` naming ``owner`` (a string or an object whose class name is used), the
    parameter and the bad value for bools, strings, ``None``, negative ints other than -1, integral
    floats and floats outside ``(0, 1)``, and non-finite numbers.
    """
    who = owner if isinstance(owner, str) else type(owner).__name__

    def bad() -> ParameterError:
        return ParameterError(f"{who}: parameter {name}={value!r} is invalid; expected {_RANK_EXPECTED}")

    if isinstance(value, bool):
        raise bad()
    if isinstance(value, Integral):
        ivalue = int(value)
        if ivalue >= -1:
            return ivalue
        raise bad()
    if isinstance(value, Real):
        fvalue = float(value)
        if math.isfinite(fvalue) and 0.0 < fvalue < 1.0:
            return fvalue
        raise bad()
    raise bad()


def hard_threshold_omega(beta: float) -> float:
    """Gavish-Donoho's approximation of ``omega(beta)`` for an unknown noise level."""
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43


def noise_floor(n_features: int, n_samples: int, dtype: torch.dtype) -> float:
    """Relative level (of ``sigma^2 / sigma_max^2``) under which a Gram eigenvalue counts as zero."""
    return max(float(n_samples), math.sqrt(max(n_features, 1))) * torch.finfo(dtype).eps


def truncation_rank(
    sq_singular: torch.Tensor,
    rank: RankSpec,
    n_features: int,
    n_samples: int,
    gram_dtype: torch.dtype = torch.float64,
) -> int:
    """How many of the leading singular values to keep.

    Args:
        sq_singular: squared singular values (Gram eigenvalues), sorted in descending order; small
            negative values from rounding are allowed.
        rank: a value accepted by `check_rank` (already validated).
        n_features: length of one snapshot (the long side of the data matrix).
        n_samples: number of snapshots in the data matrix (the length of ``sq_singular``).
        gram_dtype: dtype the Gram was accumulated in, for the numerical-zero floor.

    Returns the rank as a Python int (one host synchronisation), at most the number of singular values
    above the numerical floor; 0 only when every singular value is numerically zero.
    """
    n = sq_singular.shape[0]
    if n == 0:
        return 0
    sq = sq_singular.clamp(min=0)
    floor = noise_floor(n_features, n_samples, gram_dtype) * sq[0]
    valid = (sq > floor).sum()
    if isinstance(rank, float):  # energy fraction in (0, 1)
        cumulative = torch.cumsum(sq, 0)
        target = rank * cumulative[-1]
        chosen = (cumulative < target).sum() + 1
    elif rank == 0:  # optimal hard threshold
        sigma = sq.sqrt()
        k = min(n, n_features)  # the data matrix has min(n_features, n_samples) singular values
        beta = min(n_features, n_samples) / max(n_features, n_samples)
        tau = hard_threshold_omega(beta) * torch.quantile(sigma[:k], 0.5)  # the mean of the middle two when k is even
        chosen = (sigma > tau).sum().clamp(min=1)
    elif rank == -1:
        chosen = valid
    else:
        chosen = torch.full_like(valid, rank)
    return int(torch.minimum(chosen, valid).item())
