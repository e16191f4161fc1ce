"""`_Proposal`: the accelerator's `JumpProposal`, handed to the fallback rule for one jump attempt."""

from __future__ import annotations

import math
import warnings
from numbers import Integral
from collections.abc import Callable
from typing import Any

import torch

from koopsweep.accelerator._tensors import _foreach_copy, _global_norm
from koopsweep.errors import ParameterError, PluginValidationError, UsageError

Closure = Callable[[], Any]
_UNREAD = object()  # a lazily read value not read yet


class _Proposal:
    """The accelerator's `JumpProposal` for one jump attempt; also tracks what the model and ``.grad``
    hold, so that the accelerator can reuse the last closure evaluation and restore the weights."""

    def __init__(
        self,
        acc: Any,  # the KoopmanAccelerator making the attempt (it hands itself over)
        current: list[torch.Tensor],
        closure: Closure | None,
        check: Closure | None = None,
        origin: list[torch.Tensor] | None = None,
    ) -> None:
        self.horizon = acc.horizon
        self.steps_since_last_attempt = 0  # set by the accelerator (JumpProposal)
        self._acc = acc
        self._params = acc._params
        self._current = current  # the model's weights before the attempt (what a rejection restores)
        # Where jumps start from and are judged against: the current weights, or the weights the inner
        # optimizer is judged at (an EMA's average with snapshot="average").
        self._origin = current if origin is None else origin
        self._closure = closure
        self._check = check  # judges jumps instead of the closure, forward only; its calls leave no gradients
        self._fitted = False
        self._displacement: float | None = None  # of the fitted window; None when the fit failed
        # Each parameter tensor's share of the horizon (per-parameter consistency); None: all jump it whole.
        self._shares: list[float] | None = None
        self._predictions: dict[int, list[torch.Tensor] | None] = {}
        self._reasons: dict[int, str] = {}
        self._evaluated: dict[int, tuple[list[torch.Tensor], float]] = {}
        self._model_at: list[torch.Tensor] = current  # which weights the model holds (by identity)
        self._last: list[torch.Tensor] | None = None  # weights of the last closure call, whose grads are in .grad
        self.last_loss: Any = None  # what that closure call returned
        self._before: float | None = None
        self.loss_before_raw: Any = None
        self._before_grads: list[torch.Tensor | None] | None = None
        self._window_losses: Any = _UNREAD

    # -- JumpProposal ---------------------------------------------------------------------------------

    @property
    def window_losses(self) -> list[float] | None:
        if self._window_losses is _UNREAD:
            self._window_losses = self._acc._read_window_losses()
        return self._window_losses

    def predict(self, horizon: int) -> list[torch.Tensor] | None:
        if not isinstance(horizon, Integral) or isinstance(horizon, bool) or horizon < 1:
            raise ParameterError(f"JumpProposal.predict: horizon={horizon!r} is invalid; expected an integer >= 1")
        k = self._acc._variant_steps(int(horizon))
        if k in self._predictions:
            return self._predictions[k]
        acc = self._acc
        if not self._fitted:
            self._fitted = True
            fitted = acc._fit_window()
            if fitted is not None:
                self._displacement, self._shares = fitted
        if self._displacement is None:
            self._predictions[k], self._reasons[k] = None, "fit-failed"
            return None
        t0 = acc._clock()
        try:
            pred, reason = self._guarded(k)
        finally:
            acc.stats.predict_time_s += acc._clock() - t0
        self._predictions[k] = pred
        if reason is not None:
            self._reasons[k] = reason
        return pred

    def unusable_reason(self, horizon: int) -> str | None:
        return self._reasons.get(self._acc._variant_steps(int(horizon)))

    def evaluate(self, params: list[torch.Tensor]) -> float:
        hit = self._evaluated.get(id(params))
        if hit is not None and hit[0] is params:
            return hit[1]
        self.check_params(params, "JumpProposal.evaluate")
        self.load(params)
        value = self._call_closure()
        if self._check is None:
            self._last = params
        self._evaluated[id(params)] = (params, value)
        return value

    @property
    def loss_before(self) -> float:
        if self._before is None:
            self.load(self._origin)
            self._before = self._call_closure()
            if self._check is None:
                self._last = self._origin
                if self._origin is self._current:  # its gradients are the inner step's if the jump is rejected
                    self.loss_before_raw = self.last_loss
                    self._before_grads = [None if p.grad is None else p.grad.detach().clone() for p in self._params]
        return self._before

    # -- for the accelerator ---------------------------------------------------------------------------

    def check_params(self, params: Any, who: str) -> None:
        if not isinstance(params, (list, tuple)) or len(params) != len(self._params):
            raise PluginValidationError(
                f"{who}: expected a list of {len(self._params)} tensors (one per parameter), got {type(params).__name__}"
                + (f" of length {len(params)}" if isinstance(params, (list, tuple)) else "")
            )
        for i, (t, p) in enumerate(zip(params, self._params)):
            if not isinstance(t, torch.Tensor) or t.shape != p.shape:
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise PluginValidationError(f"{who}: tensor {i} is {got}, expected shape {tuple(p.shape)}")

    def load(self, params: list[torch.Tensor]) -> None:
        """Copy ``params`` into the model's parameters (exactly; no-op when they are already there)."""
        if self._model_at is params:
            return
        with torch.no_grad():
            _foreach_copy(self._params, params)
        self._model_at = params

    def holds_gradients_of(self, params: list[torch.Tensor]) -> bool:
        """Whether the model holds ``params`` and ``.grad`` holds their gradients (from the last closure call)."""
        last = self._last
        if last is None or self._model_at is not last:
            return False
        return params is last or (len(params) == len(last) and all(a is b for a, b in zip(params, last)))

    def restore(self) -> bool:
        """Put back the weights from before the jump, bit for bit, and the gradients measured there if
        ``loss_before`` was evaluated. Returns whether those gradients (and ``loss_before_raw``) are valid."""
        self.load(self._current)
        if self._before_grads is None:
            return False
        for p, g in zip(self._params, self._before_grads):
            p.grad = g
        self._last = self._current
        return True

    # -- internals ------------------------------------------------------------------------------------------

    def unsafe(self, params: list[torch.Tensor]) -> str | None:
        """Why accepted ``params`` must not be kept: ``"non-finite"`` weights (a prediction passed the
        guard already, but a rule may build its own) or ``"non-finite-loss"`` there; None when they are safe.

        A rule that did not evaluate ``params`` (``none``) gets the loss from the closure call that the
        inner step at ``params`` makes next anyway, so this costs no extra call when the jump is kept.
        """
        if not any(params is pred for pred in self._predictions.values()):
            with torch.no_grad():
                if not all(bool(torch.isfinite(t).all()) for t in params):
                    return "non-finite"
        if self._closure is None:
            return None  # step() without a closure: the rule cannot have measured anything, nor can we
        hit = self._evaluated.get(id(params))
        if hit is not None and hit[0] is params:
            value = hit[1]
        else:
            self.load(params)
            value = self._call_closure(verification=False)
            self._last = params
            self._evaluated[id(params)] = (params, value)
            if not math.isfinite(value):
                self._acc.stats.evaluations += 1  # wasted: it served only to reject the jump
        return None if math.isfinite(value) else "non-finite-loss"

    def _call_closure(self, verification: bool = True) -> float:
        """One closure call at the weights the model holds. A ``verification`` call is counted in the
        stats; the other kind is the inner step's own gradient computation, made a little early."""
        if self._closure is None:
            raise UsageError(
                f"the fallback rule {self._acc.fallback!r} evaluated the loss, but step() was called without a "
                "closure; pass step(closure), or set the rule's needs_closure = True so that this is caught earlier"
            )
        acc = self._acc
        t0 = acc._clock() if verification else 0.0
        judge = verification and self._check is not None
        try:
            with torch.no_grad() if judge else torch.enable_grad():
                raw = self._check() if judge else self._closure()
            try:
                value = float(raw.detach() if isinstance(raw, torch.Tensor) else raw)
            except (TypeError, ValueError, RuntimeError):
                raise UsageError(
                    f"the step() {'check' if judge else 'closure'} returned {raw!r}; it must return the loss "
                    "(a scalar tensor or number)"
                ) from None
        finally:
            if verification:
                acc.stats.verify_time_s += acc._clock() - t0
        if verification:
            acc.stats.evaluations += 1
        self.last_loss = raw
        return value if math.isfinite(value) else math.inf

    def _raw_prediction(
        self, k: int, kept: list[list[torch.Tensor]]
    ) -> tuple[list[torch.Tensor] | None, str | None]:
        """``variant.predict(k)`` in the weights' coordinates, on their device and dtype, checked, and
        copied where it aliases a prediction already made (stored ones, and those in ``kept``)."""
        acc = self._acc
        try:
            raw = acc._variant_prediction(k)
        except Exception as exc:
            if not acc._predict_warned:
                acc._predict_warned = True
                warnings.warn(
                    f"KoopmanAccelerator: {acc.variant!r}.predict({k}) raised {type(exc).__name__}: {exc}; the "
                    "prediction is treated as unusable ('predict-failed'). Later failures are only counted in "
                    "stats.rejections.",
                    RuntimeWarning,
                    stacklevel=6,
                )
            return None, "predict-failed"
        self.check_params(raw, f"{acc.variant!r}.predict({k})")
        # Predictions for other horizons must stay valid: copy a tensor that aliases an earlier one.
        earlier = [*(pred for pred in self._predictions.values() if pred), *kept]
        taken = {t.data_ptr() for pred in earlier for t in pred if t.numel()}
        pred = []
        for r, p in zip(raw, self._params):
            r = r.detach().to(device=p.device, dtype=p.dtype)
            if r.numel() and r.data_ptr() in taken:
                r = r.clone()
            pred.append(r)
        return pred, None

    def _guarded(self, k: int) -> tuple[list[torch.Tensor] | None, str | None]:
        """``variant.predict(k)`` through the per-tensor shares of the horizon, the non-finite /
        exploding guard and the jump cap."""
        acc = self._acc
        pred, reason = self._raw_prediction(k, [])
        if pred is None:
            return None, reason
        if self._shares is not None:
            if not any(self._shares):
                return None, "inconsistent"
            # Graded horizons: a tensor with share f takes the prediction f * k steps ahead (one more
            # prediction per distinct share, not another fit); share 0 keeps the origin's value.
            partial: dict[float, list[torch.Tensor]] = {}
            for share in sorted(set(self._shares) - {0.0, 1.0}):
                partial[share], reason = self._raw_prediction(max(1, round(share * k)), [pred, *partial.values()])
                if partial[share] is None:
                    return None, reason
            pred = [
                r if share == 1.0 else c if share == 0.0 else partial[share][i]
                for i, (r, c, share) in enumerate(zip(pred, self._origin, self._shares))
            ]
        jumps = [r - c for r, c in zip(pred, self._origin)]
        norm = _global_norm(jumps)
        if not math.isfinite(norm):
            if any(not bool(torch.isfinite(r).all()) for r in pred):
                return None, "non-finite"
            return None, "exploding"
        # The naive linear extrapolation over the same horizon: k snapshot intervals of the mean displacement.
        linear = k * self._displacement / (acc.window - 1)
        if norm > acc.explode_ratio * linear:
            return None, "exploding"
        cap = acc.max_jump_ratio
        if cap is not None and norm > cap * linear:
            scale = cap * linear / norm
            pred = [c.add(j, alpha=scale) for c, j in zip(self._origin, jumps)]
        return pred, None
