"""Conformance checks for `Variant` plugins (built-in or third-party).

Each ``check_variant_*`` function is a plain function that raises ``AssertionError`` with a message
naming the variant, the parameters it was built with and what went wrong; `check_variant` runs them
all. A plugin author's whole test can be one line::

    from koopsweep.testing import check_variant

    def test_my_variant_conforms():
        check_variant(MyVariant)

or, for one pytest test per check, subclass `koopsweep.testing.VariantConformance`.

The snapshots the checks feed a variant look like a training run: each coordinate relaxes towards a
fixed point along a few damped, oscillating modes, with a little noise, spread over tensors of several
shapes (including a 0-d one) in float32, float64 and both mixed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from koopsweep.testing._common import as_device, label, on_device, sample_points, validated

#: Shapes of the parameter tensors the checks fit on: a matrix, a vector, a 3-d tensor and a scalar.
SHAPES: tuple[tuple[int, ...], ...] = ((6, 4), (5,), (2, 3, 2), ())

#: Horizons every variant is asked to predict.
HORIZONS: tuple[int, ...] = (1, 3, 10)

#: Window used unless the variant needs more (``min_window()``).
WINDOW = 10

_DTYPE_SETS: dict[str, tuple[torch.dtype, ...]] = {
    "float32": (torch.float32,) * len(SHAPES),
    "float64": (torch.float64,) * len(SHAPES),
    "mixed float32/float64": tuple(torch.float32 if i % 2 else torch.float64 for i in range(len(SHAPES))),
}


# -------------------------------------------------------------------------------------------- data
def training_like_snapshots(
    window: int,
    *,
    shapes: Sequence[tuple[int, ...]] = SHAPES,
    dtypes: Sequence[torch.dtype] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    start: int = 0,
) -> list[torch.Tensor]:
    """One ``(window, *shape)`` tensor per shape: a smooth, converging trajectory with a little noise.

    ``start`` shifts the window along the same trajectory (a later window of the same run).
    """
    dtypes = tuple(dtypes or (torch.float32,) * len(shapes))
    sizes = [math.prod(shape) for shape in shapes]
    n = sum(sizes)
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    fixed_point = torch.randn(n, generator=gen, dtype=f64)
    k = torch.arange(start, start + window, dtype=f64)[:, None]
    x = fixed_point.expand(window, n).clone()
    for rate, angle in ((0.97, 0.0), (0.9, 0.25), (0.8, 0.6)):
        a, b = torch.randn(2, n, generator=gen, dtype=f64)
        x += rate**k * (torch.cos(angle * k) * a + torch.sin(angle * k) * b)
    x += 1e-4 * torch.randn(window, n, generator=gen, dtype=f64)
    out = []
    for chunk, shape, dtype in zip(x.split(sizes, dim=1), shapes, dtypes, strict=True):
        out.append(chunk.reshape(window, *shape).to(device=as_device(device), dtype=dtype).contiguous())
    return out


def linear_system(n_snapshots: int, *, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A stable 6-d linear system ``x_{k+1} = A x_k`` and ``n_snapshots`` of it, in float64.

    ``A`` has two complex pairs (``0.97 e^{±0.3i}``, ``0.9 e^{±0.8i}``) and two real eigenvalues (0.95,
    0.85), in a random orthonormal basis, so every coordinate mixes every mode. The state is split over
    two tensors, of shapes ``(2, 2)`` and ``(2,)``. Returns ``A`` and the snapshots.
    """
    f64 = torch.float64
    gen = torch.Generator().manual_seed(seed)
    blocks = []
    for radius, angle in ((0.97, 0.3), (0.9, 0.8)):
        c, s = radius * math.cos(angle), radius * math.sin(angle)
        blocks.append(torch.tensor([[c, -s], [s, c]], dtype=f64))
    blocks += [torch.tensor([[0.95]], dtype=f64), torch.tensor([[0.85]], dtype=f64)]
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=f64))
    a = q @ torch.block_diag(*blocks) @ q.T
    x = torch.randn(6, generator=gen, dtype=f64)
    states = []
    for _ in range(n_snapshots):
        states.append(x)
        x = a @ x
    traj = torch.stack(states)
    return a, [traj[:, :4].reshape(n_snapshots, 2, 2).contiguous(), traj[:, 4:].contiguous()]


LINEAR_SYSTEM_EIGENVALUES = (
    0.97 * complex(math.cos(0.3), math.sin(0.3)),
    0.97 * complex(math.cos(0.3), -math.sin(0.3)),
    0.9 * complex(math.cos(0.8), math.sin(0.8)),
    0.9 * complex(math.cos(0.8), -math.sin(0.8)),
    0.95,
    0.85,
)


# ------------------------------------------------------------------------------------------ helpers
def _build(cls: type, params: Mapping[str, Any]) -> Any:
    try:
        return cls(**params)
    except Exception as exc:
        raise AssertionError(f"{label(cls, params)} could not be constructed: {type(exc).__name__}: {exc}") from exc


def _window(variant: Any, who: str, wanted: int = WINDOW) -> int:
    smallest = variant.min_window()
    assert isinstance(smallest, int) and not isinstance(smallest, bool) and smallest >= 1, (
        f"{who}.min_window() must return a positive int, got {smallest!r}"
    )
    return max(smallest, wanted)


def _fit_predict(variant: Any, who: str, snapshots: list[torch.Tensor], horizon: int) -> list[torch.Tensor]:
    """Fit, predict ``horizon`` ahead and check the prediction's form (not its accuracy)."""
    window = snapshots[0].shape[0]
    before = [s.clone() for s in snapshots]
    try:
        variant.fit([s for s in snapshots])
    except Exception as exc:
        raise AssertionError(
            f"{who}.fit() on a window of {window} snapshots raised {type(exc).__name__}: {exc}"
        ) from exc
    try:
        prediction = variant.predict(horizon)
    except Exception as exc:
        raise AssertionError(
            f"{who}.predict({horizon}) after a window of {window} raised {type(exc).__name__}: {exc}"
        ) from exc
    assert isinstance(prediction, (list, tuple)), (
        f"{who}.predict({horizon}) must return a list of tensors, got {type(prediction).__name__}"
    )
    assert len(prediction) == len(snapshots), (
        f"{who}.predict({horizon}) returned {len(prediction)} tensors for {len(snapshots)} parameter tensors"
    )
    for i, (pred, snap) in enumerate(zip(prediction, snapshots)):
        where = f"{who}.predict({horizon})[{i}] (window {window})"
        assert isinstance(pred, torch.Tensor), f"{where} is a {type(pred).__name__}, not a tensor"
        assert pred.shape == snap.shape[1:], (
            f"{where} has shape {tuple(pred.shape)}; the parameter's shape is {tuple(snap.shape[1:])}"
        )
        assert pred.dtype == snap.dtype, f"{where} has dtype {pred.dtype}; the parameter's dtype is {snap.dtype}"
        assert on_device(pred.device, snap.device), (
            f"{where} is on {pred.device}; the parameter is on {snap.device}"
        )
        assert bool(torch.isfinite(pred).all()), (
            f"{where} has non-finite values on a smooth, converging trajectory"
        )
    for i, (snap, kept) in enumerate(zip(snapshots, before)):
        assert torch.equal(snap, kept), f"{who}.fit()/predict() modified snapshot tensor {i} in place"
    eigs = variant.eigenvalues
    if eigs is not None:
        assert isinstance(eigs, torch.Tensor) and eigs.ndim == 1, (
            f"{who}.eigenvalues must be None or a 1-d tensor, got {type(eigs).__name__} "
            f"{tuple(eigs.shape) if isinstance(eigs, torch.Tensor) else ''}"
        )
    return list(prediction)


# ------------------------------------------------------------------------------------------- checks
def check_variant_contract(cls: type, *, params: Mapping[str, Any] | None = None) -> None:
    """The loader accepts the class, it builds with its defaults and rejects unknown parameters."""
    validated("variants", cls)
    assert isinstance(cls.exact, bool), f"{label(cls)}.exact must be a bool, got {cls.exact!r}"
    params = dict(params or {})
    variant = _build(cls, params)
    _window(variant, label(cls, params))


def check_variant_search_space(
    cls: type, device: str | torch.device = "cpu", *, n_random: int = 3, seed: int = 0
) -> None:
    """Every searched value is a valid parameter: both ends of each range and a few random points
    build an instance that fits and predicts finite values of the right form."""
    space = cls.search_space()
    extra = sorted(set(space) - set(cls.parameters()))
    assert not extra, f"{label(cls)}.search_space() names {extra}, which are not among its parameters"
    for point in sample_points(space, n_random, seed):
        who = label(cls, point)
        variant = _build(cls, point)
        window = _window(variant, who)
        snapshots = training_like_snapshots(window, device=device, seed=seed)
        _fit_predict(variant, who, snapshots, 1)


def check_variant_outputs(
    cls: type, device: str | torch.device = "cpu", *, params: Mapping[str, Any] | None = None
) -> None:
    """Predictions keep each parameter's shape, dtype and device, are finite, leave the snapshots alone,
    at the smallest window the variant accepts and at a longer one, in float32, float64 and mixed."""
    params = dict(params or {})
    who = label(cls, params)
    variant = _build(cls, params)
    smallest = _window(variant, who, wanted=1)
    for dtype_name, dtypes in _DTYPE_SETS.items():
        for window in sorted({smallest, max(smallest, WINDOW)}):
            snapshots = training_like_snapshots(window, dtypes=dtypes, device=device)
            for horizon in HORIZONS:
                try:
                    _fit_predict(variant, who, snapshots, horizon)
                except AssertionError as exc:
                    raise AssertionError(f"[{dtype_name} snapshots] {exc}") from exc.__cause__


def check_variant_determinism(
    cls: type, device: str | torch.device = "cpu", *, params: Mapping[str, Any] | None = None
) -> None:
    """The same window gives bit-identical predictions: twice from one fit, from a fresh instance, and
    after the instance was refitted on another window (no state leaks from one fit into the next)."""
    params = dict(params or {})
    who = label(cls, params)
    first, second = _build(cls, params), _build(cls, params)
    window = _window(first, who)
    window_a = training_like_snapshots(window, device=device, dtypes=_DTYPE_SETS["float32"])
    window_b = training_like_snapshots(window, device=device, dtypes=_DTYPE_SETS["float32"], start=window)
    reference = _fit_predict(first, who, window_a, 3)
    again = first.predict(3)
    fresh = _fit_predict(second, who, window_a, 3)
    _fit_predict(first, who, window_b, 3)
    refitted = _fit_predict(first, who, window_a, 3)
    for what, other in (
        ("a second predict(3) after the same fit", again),
        ("a fresh instance fitted on the same window", fresh),
        ("the same instance refitted on the same window after another window", refitted),
    ):
        for i, (a, b) in enumerate(zip(reference, other)):
            assert torch.equal(a, b), (
                f"{who} is not deterministic: {what} gives a different tensor {i} "
                f"(max difference {float((a.double() - b.double()).abs().max()):.3g})"
            )


def check_variant_horizons(
    cls: type, device: str | torch.device = "cpu", *, params: Mapping[str, Any] | None = None
) -> None:
    """``predict(0)`` either refuses with a ValueError or returns (close to) the last snapshot."""
    params = dict(params or {})
    who = label(cls, params)
    variant = _build(cls, params)
    window = _window(variant, who)
    snapshots = training_like_snapshots(window, device=device, dtypes=_DTYPE_SETS["float64"])
    _fit_predict(variant, who, snapshots, 1)
    try:
        zero = variant.predict(0)
    except ValueError:  # koopsweep's ParameterError is a ValueError: declining h=0 is allowed
        return
    except Exception as exc:
        raise AssertionError(
            f"{who}.predict(0) raised {type(exc).__name__}; return the last snapshot or raise ValueError: {exc}"
        ) from exc
    last = torch.cat([s[-1].reshape(-1) for s in snapshots])
    moved = float((last - torch.cat([s[0].reshape(-1) for s in snapshots])).norm())
    got = torch.cat([p.reshape(-1).double() for p in zero])
    off = float((got - last).norm())
    assert off <= 0.1 * moved + 1e-9 * float(last.norm()), (
        f"{who}.predict(0) is {off:.3g} away from the last snapshot, while the whole window moved "
        f"{moved:.3g}; predict(0) should be (close to) the last snapshot"
    )


def check_variant_exact(
    cls: type,
    device: str | torch.device = "cpu",
    *,
    params: Mapping[str, Any] | None = None,
    rtol: float = 1e-6,
) -> None:
    """For a variant that claims ``exact = True``: fitted on a known linear system (see
    `linear_system`) in float64, it predicts ``A^h x_last`` to ``rtol`` and, if it reports
    eigenvalues, finds the system's six among them. Does nothing for other variants.

    ``params`` are the parameters to check exactness with (e.g. no rank truncation), when the
    defaults deliberately are not exact.
    """
    if not cls.exact:
        return
    params = dict(params or {})
    who = label(cls, params)
    variant = _build(cls, params)
    window = _window(variant, who, wanted=24)
    a, snapshots = linear_system(window)
    snapshots = [s.to(as_device(device)) for s in snapshots]
    last = torch.cat([s[-1].reshape(-1) for s in snapshots]).cpu()
    for horizon in (1, 4, 16):
        prediction = _fit_predict(variant, who, snapshots, horizon)
        got = torch.cat([p.reshape(-1).cpu() for p in prediction])
        truth = torch.linalg.matrix_power(a, horizon) @ last
        error = float((got - truth).norm() / truth.norm())
        assert error <= rtol, (
            f"{who} claims exact = True, but on the linear system x_(k+1) = A x_k (6 states over 2 tensors, "
            f"{window} float64 snapshots) predict({horizon}) is off by {error:.3g} relative (tolerance {rtol:g}). "
            f"If its default parameters truncate on purpose, pass the exact ones as params"
        )
    eigs = variant.eigenvalues
    if eigs is not None:
        found = eigs.detach().cpu().to(torch.complex128)
        for wanted in LINEAR_SYSTEM_EIGENVALUES:
            distance = float((found - wanted).abs().min()) if found.numel() else math.inf
            assert distance <= 1e-5, (
                f"{who} claims exact = True, but its eigenvalues {found.tolist()} miss the system's "
                f"eigenvalue {wanted:.6g} (nearest is {distance:.3g} away)"
            )


def check_variant(
    cls: type,
    device: str | torch.device = "cpu",
    *,
    params: Mapping[str, Any] | None = None,
    exact_params: Mapping[str, Any] | None = None,
) -> None:
    """Run every variant check; raise ``AssertionError`` at the first failure.

    ``params`` (default: the class's defaults) are used for the shape, determinism and horizon checks;
    ``exact_params`` for the linear-system check when ``cls.exact`` is True (default: ``params``).
    """
    check_variant_contract(cls, params=params)
    check_variant_search_space(cls, device)
    check_variant_outputs(cls, device, params=params)
    check_variant_determinism(cls, device, params=params)
    check_variant_horizons(cls, device, params=params)
    check_variant_exact(cls, device, params=exact_params if exact_params is not None else params)
