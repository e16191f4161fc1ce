"""Global, per-layer, time-delay and fixed-point exact DMD on weight snapshots.

All four fit exact DMD by the method of snapshots from one Gram matrix over time
(`koopsweep.koopman.window_gram` and `koopsweep.koopman.gram_dmd`): the only passes over
parameter-sized data are the Gram (about ``2 P m^2`` flops) and, per prediction, one combination of
the snapshots (``P m``), whatever the horizon.

Shared numerical options (`DMDOptions`):

* ``rank``: PyDMD's convention, strictly validated (`koopsweep.koopman.check_rank`).
* ``dtype``: the dtype the Gram is accumulated in, ``"float32"`` or ``"float64"``. The small
  ``m x m`` work is float64 either way, and predictions are formed in each parameter's own dtype.
  Default ``"float32"``: on the increments of a real Adam trajectory (784-256-256-10 MLP) its predictions
  matched float64's to three digits at windows 8-32 while the fit took 2-2.5x less time
  (``benchmarks/README.md``). Exactness down to 1e-10 needs ``"float64"``; so does ``center="none"``,
  where the weights' large constant part leaves the dynamics in the last digits of a float32 Gram.
  Either way the Gram route squares the snapshot matrix's condition number: accuracy is about
  ``eps * cond^2`` (PyDMD's SVD reaches ``eps * cond``), the price of never touching the snapshots twice.
* ``center``: ``"increments"`` fits the DMD to ``x_{k+1} - x_k`` (exactly linear for affine dynamics
  such as gradient descent on a quadratic, and rid of the large constant part of the weights),
  ``"mean"`` to the states minus the window mean (common preprocessing, but not exact: centred states of
  a linear system follow an affine map, not a linear one), ``"none"`` to the raw states (the paper's
  way; exact for linear dynamics, and it needs ``dtype="float64"`` on real weights).
* ``max_eig`` / ``eig_policy``: eigenvalues of modulus above ``max_eig`` are scaled down to it
  (``"clip"``) or left out of the prediction (``"drop"``); those at or below it are untouched, so an
  eigenvalue of exactly 1 stays 1. ``None`` disables the bound.
* ``modes`` / ``max_angle`` (spectral filtering): ``"all"`` predicts with every fitted mode;
  ``"converging"`` only with the real-positive decays and the drift (``0 < |lambda| <= 1``,
  ``|arg lambda| <= max_angle`` radians), dropping oscillatory pairs, negative and growing modes
  (`koopsweep.koopman.converging_modes`).

The snapshot tensors passed to ``fit`` are kept (not copied) and read again by ``predict``: they must
not be modified in place in between.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any, ClassVar

import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from koopsweep._params import require
from koopsweep.errors import ParameterError
from koopsweep.koopman import (
    CENTERS,
    EIG_POLICIES,
    MODE_FILTERS,
    GramDMD,
    check_rank,
    converging_modes,
    displacement_rows,
    fixed_point_growth,
    gram_dmd,
    limit_eigenvalues,
    power_growth,
    state_coefficients,
    sum_growth,
    window_gram,
)
from koopsweep.variants._base import Variant

DTYPES = {"float32": torch.float32, "float64": torch.float64}

#: Rank choices offered to the search: full rank, the hard threshold, a few fixed ranks and energies.
RANK_CHOICES = (-1, 0, 2, 4, 8, 0.9, 0.99, 0.999)


# ----------------------------------------------------------------------------------------------------
# Shared helpers (also used by the node and linear variants)


def check_snapshots(owner: Variant, snapshots: Sequence[torch.Tensor]) -> int:
    """Check the window's shape and return its length; raise if it is shorter than ``min_window()``."""
    name = type(owner).__name__
    if isinstance(snapshots, torch.Tensor) or not isinstance(snapshots, Sequence) or len(snapshots) == 0:
        raise ValueError(f"{name}.fit expects a non-empty list of tensors, one per parameter tensor")
    window = None
    for i, snap in enumerate(snapshots):
        if not isinstance(snap, torch.Tensor) or snap.ndim < 1:
            raise ValueError(f"{name}.fit: snapshot {i} must be a tensor of shape (window, *param.shape)")
        if not snap.is_floating_point():
            raise ValueError(f"{name}.fit: snapshot {i} has dtype {snap.dtype}; expected a floating dtype")
        if window is None:
            window = snap.shape[0]
        elif snap.shape[0] != window:
            raise ValueError(
                f"{name}.fit: snapshot {i} holds {snap.shape[0]} states but snapshot 0 holds {window}; "
                "every parameter tensor needs the same window"
            )
    assert window is not None
    need = owner.min_window()
    if window < need:
        raise ParameterError(
            f"{name}: a window of {window} snapshot(s) is too short; min_window() is {need} with {owner.params}"
        )
    return int(window)


def check_horizon(owner: Variant, horizon: Any) -> int:
    if isinstance(horizon, bool) or not isinstance(horizon, Integral) or horizon < 0:
        raise ValueError(f"{type(owner).__name__}.predict: horizon must be an int >= 0, got {horizon!r}")
    return int(horizon)


def flat_blocks(snapshots: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``(m, P_t)`` views of the snapshots (a copy only for non-contiguous inputs)."""
    return [s.reshape(s.shape[0], -1) for s in snapshots]


def combine(
    blocks: Sequence[torch.Tensor], shapes: Sequence[torch.Size], coefficients: torch.Tensor
) -> list[torch.Tensor]:
    """``x_last + sum_k e_k x_k`` per parameter tensor, in its own dtype, device and shape.

    ``coefficients`` ``e`` (float64, one per snapshot) describe a displacement, so they sum to zero:
    the product is taken in the parameter's dtype, without any parameter-sized copy.
    """
    out = []
    converted: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}  # one host-to-device copy each
    for x, shape in zip(blocks, shapes):
        key = (x.device, x.dtype)
        if key not in converted:
            converted[key] = coefficients.to(device=x.device, dtype=x.dtype)
        out.append(torch.addmv(x[-1], x.T, converted[key]).reshape(shape))
    return out


def validate_dtype(owner: Variant, value: Any) -> None:
    require(value in DTYPES, owner, "dtype", value, '"float32" or "float64"')


def validate_center(owner: Variant, value: Any, allowed: Sequence[str] = CENTERS) -> None:
    require(value in allowed, owner, "center", value, "one of " + ", ".join(f'"{c}"' for c in allowed))


def validate_max_eig(owner: Variant, value: Any) -> None:
    ok = value is None or (
        isinstance(value, Real) and not isinstance(value, bool) and float(value) > 0 and float(value) < float("inf")
    )
    require(ok, owner, "max_eig", value, "a finite float > 0, or None for no bound")


def _not_fitted(owner: Variant) -> RuntimeError:
    return RuntimeError(f"{type(owner).__name__}.predict called before fit")


# ----------------------------------------------------------------------------------------------------


class DMDOptions(Variant):
    """Base of the Gram-based DMD variants: the shared options, their validation and the fit pipeline.

    Subclasses set ``defaults`` (any of ``rank``, ``dtype``, ``center``, ``max_eig``, ``eig_policy``;
    those absent use the class attributes below) and implement `fit` and `predict`.
    """

    #: Fixed values for options a subclass does not expose as parameters.
    fixed_center: ClassVar[str | None] = None

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._workspace: dict = {}

    def validate_params(self) -> None:
        p = self.params
        if "rank" in p:
            p["rank"] = check_rank(p["rank"], self)
        if "dtype" in p:
            validate_dtype(self, p["dtype"])
        if "center" in p:
            validate_center(self, p["center"])
        if "max_eig" in p:
            validate_max_eig(self, p["max_eig"])
            if p["max_eig"] is not None:
                p["max_eig"] = float(p["max_eig"])
        if "eig_policy" in p:
            require(p["eig_policy"] in EIG_POLICIES, self, "eig_policy", p["eig_policy"], '"clip" or "drop"')
        if "modes" in p:
            require(p["modes"] in MODE_FILTERS, self, "modes", p["modes"], '"all" or "converging"')
        if "max_angle" in p:
            a = p["max_angle"]
            ok = isinstance(a, Real) and not isinstance(a, bool) and 0 <= float(a) <= math.pi
            require(ok, self, "max_angle", a, "a float in [0, pi] (radians)")
            p["max_angle"] = float(a)

    # Option accessors (parameters when declared, fixed values otherwise).
    @property
    def center(self) -> str:
        return self.fixed_center if self.fixed_center is not None else self.params["center"]

    @property
    def fit_dtype(self) -> torch.dtype:
        return DTYPES[self.params["dtype"]]

    @property
    def delays(self) -> int:
        return int(self.params.get("delays", 1))

    def min_window(self) -> int:
        # The Hankel states need delays + 1 basis rows; increments cost one snapshot more.
        return self.delays + 1 + (1 if self.center == "increments" else 0)

    def _gram(self, blocks: Sequence[torch.Tensor]) -> torch.Tensor:
        """The window's Gram, on the snapshots' device: the only parameter-sized work of a fit."""
        return window_gram(blocks, self.center, self.fit_dtype, workspace=self._workspace)

    def _dense_fit(self, gram: torch.Tensor, n_features: int) -> GramDMD:
        """The ``m x m`` part of the fit, from a Gram that is already on the CPU.

        The Gram is moved to the CPU by the callers, once per fit: a dozen LAPACK calls on a 16 x 16
        matrix cost microseconds each on the host, but each is a launch (and ``eig`` a host round trip
        of its own) on a GPU, so the small work is faster on the host whatever the snapshots' device.
        """
        return gram_dmd(gram, self.params["rank"], n_features=n_features, delays=self.delays, gram_dtype=self.fit_dtype)

    def _fit_blocks(self, blocks: Sequence[torch.Tensor]) -> GramDMD:
        n_features = sum(int(b.shape[1]) for b in blocks)
        return self._dense_fit(self._gram(blocks).cpu(), n_features)

    def _state_coefficients(self, fit: GramDMD, horizon: int, window: int) -> torch.Tensor:
        lam, keep = limit_eigenvalues(
            fit.eigenvalues, self.params.get("max_eig"), self.params.get("eig_policy", "clip")
        )
        if self.params.get("modes", "all") == "converging":
            converging = converging_modes(fit.eigenvalues, self.params["max_angle"])
            keep = converging if keep is None else keep & converging
        growth = sum_growth(lam, horizon) if self.center == "increments" else power_growth(lam, horizon)
        return state_coefficients(displacement_rows(fit, growth, keep), self.center, window)


class GlobalDMD(DMDOptions):
    """Exact DMD on the whole flattened parameter vector (Redman et al.'s global operator).

    ``predict(h)`` is ``x_last + Phi g(Lambda) b`` with ``g = lambda^h - 1`` (``center`` "none"/"mean") or
    ``g = lambda + ... + lambda^h`` ("increments"), amplitudes fitted to the newest state (or increment).

    Defaults, measured on a 784-256-256-10 MLP trained with Adam (``benchmarks/README.md``): ``center =
    "increments"`` (as good as ``"none"`` in float64, and the only one that works in float32; ``"mean"``
    was worse than standing still), ``rank = -1`` (full rank: the energy cut-offs 0.99/0.999 tied with it,
    the hard threshold and rank 4 were worse at windows 16-32), ``dtype = "float32"`` (see above),
    ``max_eig = 1.0`` with ``"clip"`` (no growing modes; an eigenvalue of exactly 1, a drift, is kept).
    """

    exact: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {
        "rank": -1,
        "dtype": "float32",
        "center": "increments",
        "max_eig": 1.0,
        "eig_policy": "clip",
        "modes": "all",
        "max_angle": 0.1,
    }

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {
            "rank": CategoricalDistribution(RANK_CHOICES),
            "center": CategoricalDistribution(CENTERS),
            "max_eig": FloatDistribution(0.9, 1.0),
            "eig_policy": CategoricalDistribution(EIG_POLICIES),
        }  # modes (spectral filtering) is not searched: measured, it lost the PINN's gains

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._fit: GramDMD | None = None
        self._blocks: list[torch.Tensor] = []
        self._shapes: list[torch.Size] = []

    def fit(self, snapshots: list[torch.Tensor]) -> None:
        check_snapshots(self, snapshots)
        self._fit = None
        self._blocks = flat_blocks(snapshots)
        self._shapes = [s.shape[1:] for s in snapshots]
        self._fit = self._fit_blocks(self._blocks)

    def predict(self, steps: int) -> list[torch.Tensor]:
        h = check_horizon(self, steps)
        if self._fit is None:
            raise _not_fitted(self)
        if h == 0:
            return [x[-1].clone().reshape(s) for x, s in zip(self._blocks, self._shapes)]
        e = self._state_coefficients(self._fit, h, self._blocks[0].shape[0])
        return combine(self._blocks, self._shapes, e)

    @property
    def eigenvalues(self) -> torch.Tensor | None:
        """The fitted DMD eigenvalues (complex, before clipping), or None before the first fit."""
        return None if self._fit is None else self._fit.eigenvalues


class HankelDMD(GlobalDMD):
    """Time-delay (Hankel) exact DMD: each state stacks ``delays`` consecutive snapshots (or increments).

    The Hankel Gram is summed from the snapshot Gram along its diagonals (no ``delays * P`` matrix is
    formed), and the prediction reads the newest block of the predicted Hankel state. ``delays = 1`` is
    plain `GlobalDMD`. It recovers scalar recurrences of order up to ``delays`` (e.g. heavy-ball
    momentum, ``x_{k+1} = a x_k + b x_{k-1}``), which one-step DMD cannot.
    """

    defaults: ClassVar[dict[str, Any]] = {**GlobalDMD.defaults, "delays": 2}

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {**super().search_space(), "delays": IntDistribution(1, 4)}

    def validate_params(self) -> None:
        super().validate_params()
        d = self.params["delays"]
        require(isinstance(d, Integral) and not isinstance(d, bool) and d >= 1, self, "delays", d, "an int >= 1")
        self.params["delays"] = int(d)


class LayerDMD(DMDOptions):
    """One independent exact DMD per parameter tensor (same options and rank rule as `GlobalDMD`).

    Exact when each tensor evolves by its own linear map; couplings between tensors are not modelled.
    """

    exact: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = dict(GlobalDMD.defaults)

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return GlobalDMD.search_space()

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._fits: list[GramDMD] | None = None
        self._blocks: list[torch.Tensor] = []
        self._shapes: list[torch.Size] = []

    def fit(self, snapshots: list[torch.Tensor]) -> None:
        check_snapshots(self, snapshots)
        self._fits = None
        self._blocks = flat_blocks(snapshots)
        self._shapes = [s.shape[1:] for s in snapshots]
        grams = torch.stack([self._gram([b]) for b in self._blocks]).cpu()  # one transfer for all tensors
        self._fits = [self._dense_fit(g, int(b.shape[1])) for g, b in zip(grams, self._blocks)]

    def predict(self, steps: int) -> list[torch.Tensor]:
        h = check_horizon(self, steps)
        if self._fits is None:
            raise _not_fitted(self)
        window = self._blocks[0].shape[0]
        out = []
        for fit, x, shape in zip(self._fits, self._blocks, self._shapes):
            if h == 0:
                out.append(x[-1].clone().reshape(shape))
            else:
                out.extend(combine([x], [shape], self._state_coefficients(fit, h, window)))
        return out

    @property
    def eigenvalues(self) -> torch.Tensor | None:
        """All tensors' fitted eigenvalues, concatenated in parameter order."""
        if self._fits is None:
            return None
        return torch.cat([f.eigenvalues for f in self._fits])


class FixedPointDMD(GlobalDMD):
    """Jump toward the fixed point predicted by increment DMD (Redman et al.'s fixed-point use of DMD).

    Fits exact DMD to the increments, keeps the modes with ``|lambda| < 1 - margin`` and forms the fixed
    point ``w_inf = x_last + Phi diag(lambda / (1 - lambda)) b`` (the sum of all future increments).
    ``predict(h)`` returns ``x_last + damping * (w_inf - x_last)`` for every ``h > 0``: **the horizon does
    not enter** (the jump is always toward the same point); ``predict(0)`` returns the last snapshot.
    """

    exact: ClassVar[bool] = False
    fixed_center: ClassVar[str | None] = "increments"
    defaults: ClassVar[dict[str, Any]] = {"rank": -1, "dtype": "float32", "margin": 0.01, "damping": 0.5}

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {
            "rank": CategoricalDistribution(RANK_CHOICES),
            "margin": FloatDistribution(1e-4, 0.1, log=True),
            "damping": FloatDistribution(0.1, 1.0),
        }

    def validate_params(self) -> None:
        super().validate_params()
        m = self.params["margin"]
        require(
            isinstance(m, Real) and not isinstance(m, bool) and 0 <= float(m) < 1,
            self,
            "margin",
            m,
            "a float in [0, 1)",
        )
        d = self.params["damping"]
        require(
            isinstance(d, Real) and not isinstance(d, bool) and 0 < float(d) <= 1,
            self,
            "damping",
            d,
            "a float in (0, 1]",
        )
        self.params["margin"] = float(m)
        self.params["damping"] = float(d)

    def _state_coefficients(self, fit: GramDMD, horizon: int, window: int) -> torch.Tensor:
        # The horizon does not enter: every decaying mode is summed to its limit, then damped.
        lam = fit.eigenvalues
        keep = lam.abs() < 1.0 - self.params["margin"]
        growth = fixed_point_growth(torch.where(keep, lam, torch.zeros_like(lam)))
        rows = displacement_rows(fit, growth * self.params["damping"], keep)
        return state_coefficients(rows, "increments", window)
