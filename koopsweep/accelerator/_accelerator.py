"""`KoopmanAccelerator`: wrap any first-order torch optimizer and let a Koopman variant jump its weights.

The wrapper records the parameters after inner optimizer steps into a preallocated window; when the
window is full, the next ``step()`` asks the fallback rule what to do with a jump (the variant is fitted
when the rule first asks for a prediction), and then takes its own inner step from wherever the rule
left the weights::

    cycle:  [stride * window inner steps, a snapshot every `stride`]  ->  jump attempt + 1 inner step
            (the jump attempt and the first inner step of the next cycle share one call to step())

Verification is made cheap by reusing closure evaluations. A rule that evaluates the loss at the jumped
weights leaves their gradients in ``.grad``; if it accepts exactly those weights, the inner step uses them
instead of calling the closure again. A rejected jump restores the weights bit for bit and, when the rule
measured the loss before the jump, the gradients of that evaluation, so the inner optimizer continues
exactly as if no jump had been tried. The inner optimizer's state (momentum, Adam moments) is never
extrapolated; ``reset_state="reset"`` clears it after an accepted jump.

Horizons are counted in inner optimizer steps. The variant sees one time step per snapshot, i.e. per
``stride`` optimizer steps, so a horizon ``h`` becomes ``round(h / stride)`` variant steps (at least one)
and the recorded effective horizon is that count times ``stride``.

Learning-rate schedulers need a real ``torch.optim.Optimizer``: give them ``accelerator.optimizer``.
An optimizer that calls the closure several times per step at weights of its own choosing (L-BFGS)
always gets the real closure, and its state is cleared after an accepted jump; an optimizer may also ask
for no jumps for a while (adam-lbfgs in its L-BFGS phase): see `koopsweep.optimizers._base`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from numbers import Integral
from typing import Any

import torch

from koopsweep.accelerator._options import (
    _build_fallback, _build_variant, _check_optimizer, _int_option, _knob, _ratio_option,
)  # fmt: skip
from koopsweep.accelerator._proposal import _Proposal
from koopsweep.accelerator._stats import MAX_EIGENVALUES_KEPT, AcceleratorStats
from koopsweep.accelerator._tensors import _foreach_copy, _global_norm
from koopsweep.errors import ParameterError, PluginValidationError, UsageError
from koopsweep.fallbacks._base import Decision, FallbackRule
from koopsweep.knobs import KNOBS
from koopsweep.optimizers._base import reevaluates_closure, takes_jumps
from koopsweep.optimizers._preconditioner import check_adam_like, preconditioner_roots
from koopsweep.optimizers._trajectory import AveragedPoint, SlowWeights, averaged_point, slow_weights
from koopsweep.variants._base import Variant

Closure = Callable[[], Any]

RESET_STATES = KNOBS["reset_state"].choices
#: What a snapshot holds: the iterate at the end of its ``stride`` block, or the mean of the block's iterates.
SNAPSHOT_MODES = KNOBS["snapshot"].choices

_STATE_VERSION = 1


@dataclass
class LoopState:
    """Where the accelerator is in its cycle: the whole of its loop state, saved by ``state_dict``."""

    filled: int = 0  # snapshots in the window
    cycle_steps: int = 0  # inner steps since the window started
    rejected_in_a_row: int = 0
    wait_steps: int = 0  # inner steps left before the next window starts (backoff)
    last_attempt_step: int = 0  # stats.inner_steps at the previous jump attempt
    seconds_per_step: float | None = None  # plain training's wall-clock per inner step, between attempts


class KoopmanAccelerator:
    """Koopman jumps around any first-order ``torch.optim.Optimizer``.

    Args:
        optimizer: the inner optimizer (SGD, Adam, Adadelta, Adagrad, or a third-party one that calls the
            closure at most once per step). Its state is never extrapolated.
        variant: a registered variant name, built with ``**variant_params``, or a `Variant` instance.
        window: snapshots per fit (at least ``variant.min_window()``).
        horizon: inner optimizer steps a jump predicts ahead.
        fallback: a registered rule name (``none``, ``verify``, ``backtrack``, ``best-of``), built with
            ``fallback_params``, or a `FallbackRule` instance.
        stride: record a snapshot every ``stride`` inner steps.
        snapshot: ``"last"`` records the weights after every ``stride``-th step; ``"mean"`` records the mean
            of the ``stride`` iterates since the previous snapshot, which averages out minibatch noise and
            oscillation before the fit (one extra fused add per step). The jump then continues the averaged
            trajectory, whose last point lags the current weights by about ``(stride - 1) / 2`` steps.
            ``"slow"`` (Koopman on slow weights) needs a Lookahead or SNOO inner optimizer (``lookahead-adam``,
            ``snoo-adam``): a snapshot is the slow weights at each of its synchronisations, so the operator
            sees the outer loop's smoothed trajectory; the stride is the outer loop's ``k`` (leave ``stride``
            at 1 or give that ``k``), and an accepted jump moves the slow weights with the model's, so that
            the next synchronisation continues from the jump instead of pulling the model back.
            ``"average"`` (averaged evaluation) needs an inner optimizer that is judged at averaged
            weights (``ema-adam``'s EMA, ``schedulefree-adamw``'s ``x``): a snapshot is the average at the
            end of each stride block, jumps start from the average and are judged against the loss there,
            and an accepted jump lands the average (with an EMA the model lands there too; schedule-free's
            training point and ``z`` move by the same displacement). A rejected jump cannot reuse that
            check's gradients (they are the average's), so it costs one more closure call.
        burn_in: inner steps before snapshots start being recorded.
        backoff: after ``k`` rejected jumps in a row, wait ``2**min(k, backoff) - 1`` windows' worth of
            inner steps before recording the next window, so that a trajectory whose jumps keep failing
            costs fewer fits and checks; an accepted jump resets the wait, and a rejection the rule marks
            as passing (``Decision.back_off=False``) neither counts nor waits (default 2: at most 3
            windows; 0: try every window).
        reset_state: ``"keep"`` or ``"reset"`` the inner optimizer's per-parameter state after an accepted
            jump.
        max_jump_ratio: if set, scale a jump down so its norm is at most this many times the naive linear
            extrapolation over the same horizon (``h * |x_last - x_first| / steps spanned by the window``).
        explode_ratio: a prediction farther than this many times that linear extrapolation, or non-finite,
            is unusable and the jump is rejected (``math.inf`` disables the size test).
        max_overhead: after a rejected attempt, wait at least until its wall-clock cost (fit, predictions,
            checks) is at most this fraction of the inner steps' time since it, so that failing attempts
            cost at most that much however expensive a fit is next to a step (a tiny model's fit can cost
            six of its steps). The attempt's and the steps' times are measured (CUDA synchronised at
            attempts only), so the schedule, and the run once a later jump is kept, then depend on the
            machine's timing: ``None`` (the default) keeps a run a function of its seed alone.
        consistency: per-parameter consistency. If set, each attempt first fits the variant on the window
            less its last snapshot and predicts that snapshot one step ahead; a parameter tensor whose
            prediction misses by more than ``consistency`` times its own last displacement is held at its
            current value and only the others jump (none consistent: the attempt is rejected as
            ``"inconsistent"`` without a check). It costs a second, smaller fit per attempt.
        layer_horizons: per-layer horizons, with ``consistency``. ``"uniform"`` (the default): a tensor
            jumps the whole horizon or, past the tolerance, not at all. ``"graded"``: its share of the
            horizon is ``1 - miss / (consistency * displacement)``, rounded down to quarters, so a tensor
            predicted exactly jumps all of it and one nearly out of tolerance a quarter (one more
            prediction per distinct share, no more fits).
        coordinates: ``"raw"`` (the default) fits the variant on the weights; ``"preconditioned"`` on each
            weight times ``(sqrt(v) + eps) ** 0.5`` from an Adam-family inner optimizer's second moment,
            the coordinates where Adam's step is a plain momentum step, and maps predictions back.

    ``step(closure)`` returns the loss the inner step used. Without a closure, ``step()`` works only with
    rules that do not evaluate the loss (``none``); the user computed the gradients beforehand. Then an
    accepted jump skips that call's inner step, because those gradients belong to weights the jump left.

    ``step(closure, check=fn)`` has the rule judge jumps by ``fn()``, the loss at the weights the model
    holds, instead of by the closure: e.g. the loss on a fixed batch, where one noisy minibatch would
    pass jumps that do not help. ``fn`` is called without gradients (forward only), so its evaluations
    cannot double as the inner step's gradient: the inner step then always calls the closure.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        variant: str | Variant = "dmd-global",
        *,
        window: int = KNOBS["window"].default,
        horizon: int = KNOBS["horizon"].default,
        fallback: str | FallbackRule = KNOBS["fallback"].default,
        fallback_params: dict[str, Any] | None = None,
        stride: int = KNOBS["stride"].default,
        snapshot: str = KNOBS["snapshot"].default,
        burn_in: int = KNOBS["burn_in"].default,
        backoff: int = KNOBS["backoff"].default,
        reset_state: str = KNOBS["reset_state"].default,
        max_jump_ratio: float | None = None,
        explode_ratio: float = 1e3,
        max_overhead: float | None = KNOBS["max_overhead"].default,
        consistency: float | None = KNOBS["consistency"].default,
        layer_horizons: str = KNOBS["layer_horizons"].default,
        coordinates: str = KNOBS["coordinates"].default,
        **variant_params: Any,
    ) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        self._horizon = _knob("horizon", horizon)
        self._stride = _knob("stride", stride)
        self._burn_in = _knob("burn_in", burn_in)
        self._backoff = _knob("backoff", backoff)
        self._reset_state = _knob("reset_state", reset_state)
        self._snapshot = _knob("snapshot", snapshot)
        self._max_jump_ratio = _ratio_option("max_jump_ratio", max_jump_ratio, allow_none=True)
        self._explode_ratio = _ratio_option("explode_ratio", explode_ratio, allow_none=False)
        self._max_overhead = _knob("max_overhead", max_overhead)
        self._consistency = _knob("consistency", consistency)
        self._layer_horizons = _knob("layer_horizons", layer_horizons)
        if self._layer_horizons == "graded" and self._consistency is None:
            raise ParameterError(
                "KoopmanAccelerator: layer_horizons='graded' needs consistency=TOL (each tensor's share of the "
                "horizon falls with its consistency miss, to none at TOL); give consistency, e.g. 0.5"
            )
        self._coordinates = _knob("coordinates", coordinates)
        if self._coordinates == "preconditioned":
            check_adam_like(optimizer)
        self._scales: list[torch.Tensor] | None = None  # per-coordinate weights of the current fit
        self._clock_at_last_attempt: float | None = None  # when the previous attempt ended (not saved)
        self.variant = _build_variant(variant, variant_params)
        self.fallback = _build_fallback(fallback, fallback_params)
        needed = max(2, int(self.variant.min_window())) + (1 if consistency is not None else 0)
        self._window = _int_option(
            "window", window, needed,
            f" ({self.variant!r} needs at least {needed} snapshots"
            f"{', one more than its fit for the consistency check' if consistency is not None else ''}; raise window "
            "or change the variant's parameters)",
        )  # fmt: skip
        self._slow = self._slow_loop(optimizer, stride)
        self._average = self._averaged_point(optimizer)
        self._needs_closure = bool(self.fallback.needs_closure)
        self.stats = AcceleratorStats()
        self._fit_warned = False
        self._predict_warned = False
        self._setup_buffers()

    # -- configuration (read-only) ---------------------------------------------------------------------

    window = property(lambda self: self._window, doc="Snapshots per fit.")
    horizon = property(lambda self: self._horizon, doc="Inner steps a jump predicts ahead.")
    stride = property(lambda self: self._stride, doc="Inner steps between snapshots.")
    snapshot = property(lambda self: self._snapshot, doc='"last" or "mean" iterate of each stride block.')
    burn_in = property(lambda self: self._burn_in, doc="Inner steps before the first snapshot.")
    backoff = property(lambda self: self._backoff, doc="Cap on the doubling wait after rejected jumps.")
    reset_state = property(lambda self: self._reset_state, doc='"keep" or "reset".')
    max_jump_ratio = property(lambda self: self._max_jump_ratio, doc="Cap on a jump vs linear extrapolation.")
    explode_ratio = property(lambda self: self._explode_ratio, doc="Unusable beyond this ratio.")
    max_overhead = property(lambda self: self._max_overhead, doc="Cap on failing attempts' share of the time.")
    consistency = property(lambda self: self._consistency, doc="Tolerance of the per-parameter consistency check.")
    layer_horizons = property(lambda self: self._layer_horizons, doc='"uniform" or "graded" (per-tensor horizons).')
    coordinates = property(lambda self: self._coordinates, doc='"raw" or "preconditioned" (the fit\'s coordinates).')

    @property
    def jump_due(self) -> bool:
        """Whether the next `step` attempts a jump (the snapshot window is full)."""
        return self._loop.filled >= self._window

    @property
    def snapshots_filled(self) -> int:
        """Snapshots currently in the window."""
        return self._loop.filled

    # -- the torch.optim.Optimizer surface ------------------------------------------------------------

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the inner optimizer. The snapshot window restarts (the new parameters have no
        history), so the next jump comes a full cycle later."""
        self.optimizer.add_param_group(param_group)
        self._setup_buffers()

    def __repr__(self) -> str:
        return (
            f"KoopmanAccelerator({type(self.optimizer).__name__}, variant={self.variant!r}, "
            f"fallback={self.fallback!r}, window={self._window}, horizon={self._horizon}, stride={self._stride}, "
            f"snapshot={self._snapshot!r}, burn_in={self._burn_in}, backoff={self._backoff}, "
            f"reset_state={self._reset_state!r}, max_jump_ratio={self._max_jump_ratio}, "
            f"explode_ratio={self._explode_ratio}, max_overhead={self._max_overhead}, consistency={self._consistency})"
        )

    # -- snapshots ----------------------------------------------------------------------------------------

    def _averaged_point(self, optimizer: torch.optim.Optimizer) -> AveragedPoint | None:
        """For ``snapshot="average"``: the averaged weights the inner optimizer is judged at."""
        if self._snapshot != "average":
            return None
        average = averaged_point(optimizer)
        if average is None:
            raise ParameterError(
                "KoopmanAccelerator: snapshot='average' needs an inner optimizer that averages its weights "
                f"(ema-adam, schedulefree-adamw); {type(optimizer).__name__} has no average"
            )
        return average

    def _slow_loop(self, optimizer: torch.optim.Optimizer, stride: int) -> SlowWeights | None:
        """For ``snapshot="slow"``: the inner optimizer's outer loop, whose ``k`` becomes the stride."""
        if self._snapshot != "slow":
            return None
        slow = slow_weights(optimizer)
        if slow is None:
            raise ParameterError(
                f"KoopmanAccelerator: snapshot='slow' needs an inner optimizer with slow weights (lookahead-adam or "
                f"snoo-adam); {type(optimizer).__name__} has none"
            )
        if stride not in (1, slow.k):
            raise ParameterError(
                f"KoopmanAccelerator: stride={stride} is invalid with snapshot='slow'; the stride is the inner "
                f"optimizer's k={slow.k} (leave stride at 1 or give {slow.k})"
            )
        self._stride = slow.k
        return slow

    def _setup_buffers(self) -> None:
        self._params: list[torch.Tensor] = [p for group in self.optimizer.param_groups for p in group["params"]]
        self._buffers = [
            torch.zeros((self._window, *p.shape), dtype=p.dtype, device=p.device) for p in self._params
        ]
        # One list of row views per slot, built once, so that recording is a single fused copy.
        self._slots = [[buf[i] for buf in self._buffers] for i in range(self._window)]
        self._on_cuda = any(p.is_cuda for p in self._params)
        self._loop = LoopState()
        self._window_losses: list[Any] = []  # what each inner step of the window returned (None: no loss)
        self._syncs_seen = self._slow.syncs if self._slow is not None else 0

    def _after_inner_step(self, loss: Any) -> None:
        """Count the inner step that returned ``loss`` and record its snapshot and loss into the window."""
        stats = self.stats
        stats.inner_steps += 1
        if self._slow is not None:
            synced, self._syncs_seen = self._slow.syncs != self._syncs_seen, self._slow.syncs
        if stats.inner_steps <= self._burn_in:
            return
        if self._loop.wait_steps > 0:
            self._loop.wait_steps -= 1
            return
        self._loop.cycle_steps += 1
        if self._loop.filled >= self._window:
            return
        if self._snapshot == "last":
            # The loss curve along the fitted trajectory, for rules that judge its smoothness: a reference
            # per step (a detached scalar tensor stays on its device; it is read once, at the attempt).
            self._window_losses.append(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        slot = self._slots[self._loop.filled]
        if self._slow is not None:
            # At a synchronisation the model's weights are the new slow weights: record those.
            block_done = synced
            if synced:
                with torch.no_grad():
                    _foreach_copy(slot, self._params)
        else:
            block_done = self._record(slot)
        if block_done:
            self._loop.filled += 1
            stats.snapshots_recorded += 1

    def _read_window_losses(self) -> list[float] | None:
        """The losses the inner steps of the window being recorded returned, oldest first (the loss at
        the weights each step started from), or None when a step returned none (``step()`` without a
        closure) or something that is not a number, and when the snapshots are not the weights the steps
        were taken at (``snapshot`` other than ``"last"``: a mean, slow weights, an average, whose own
        losses nobody measured). Reading them waits for the device once."""
        losses = self._window_losses
        if self._snapshot != "last":
            return None
        try:
            if all(isinstance(v, torch.Tensor) and v.numel() == 1 for v in losses) and losses and all(
                v.device == losses[0].device for v in losses
            ):
                return [float(v) for v in torch.stack([v.reshape(()) for v in losses]).tolist()]
            return [float(v) for v in losses]  # None raises: no curve
        except (TypeError, ValueError, RuntimeError):
            return None

    def _record(self, slot: list[torch.Tensor]) -> bool:
        """Record this step's iterate into ``slot`` as ``snapshot`` says; whether the snapshot is complete."""
        block_done = self._loop.cycle_steps % self._stride == 0
        if self._average is not None:
            if block_done:
                self._average.average_into(slot)
            return block_done
        with torch.no_grad():
            if self._snapshot == "last" or self._stride == 1:
                if block_done:
                    _foreach_copy(slot, self._params)
            elif self._loop.cycle_steps % self._stride == 1:  # the block's first iterate starts the sum in place
                _foreach_copy(slot, self._params)
            else:
                torch._foreach_add_(slot, self._params)
                if block_done:
                    torch._foreach_mul_(slot, 1.0 / self._stride)
        return block_done

    def _summing(self) -> bool:
        """Whether a ``snapshot="mean"`` block is part-way summed into the next free slot."""
        return (
            self._snapshot == "mean" and self._loop.filled < self._window and self._loop.cycle_steps % self._stride != 0
        )

    def _clock(self) -> float:
        if self._on_cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _variant_steps(self, horizon: int) -> int:
        """Variant time steps (one per snapshot) for a horizon in inner steps, rounded half up, >= 1."""
        s = self._stride
        return max(1, (horizon + s // 2) // s)

    def effective_horizon(self, horizon: int) -> int:
        """The inner steps a jump of ``horizon`` really covers (a multiple of ``stride``)."""
        return self._variant_steps(horizon) * self._stride

    # -- step -----------------------------------------------------------------------------------------------

    def step(self, closure: Closure | None = None, check: Closure | None = None) -> Any:
        """One inner optimizer step, preceded by a jump attempt when the snapshot window is full.
        ``check``: see the class docstring."""
        if closure is None and self._needs_closure:
            raise UsageError(
                f"KoopmanAccelerator.step() was called without a closure, but the fallback rule {self.fallback!r} "
                "evaluates the loss; pass step(closure) with a closure that zeroes the gradients, computes the "
                "loss, calls backward() and returns the loss, or use fallback='none'"
            )
        if not takes_jumps(self.optimizer):
            # The optimizer asks for no jumps now: step it plainly; a window started before it asked
            # would straddle the change, so it is dropped.
            self._loop.filled = self._loop.cycle_steps = 0
            self._window_losses = []
            loss = self.optimizer.step() if closure is None else self.optimizer.step(closure)
            self.stats.inner_steps += 1
            return loss
        if self._loop.filled >= self._window:
            return self._jump_step(closure, check)
        if self._clock_at_last_attempt is None and self._max_overhead is not None:
            self._clock_at_last_attempt = self._clock()  # the first step: plain training's clock starts
        loss = self.optimizer.step() if closure is None else self.optimizer.step(closure)
        self._after_inner_step(loss)
        return loss

    def _jump_step(self, closure: Closure | None, check: Closure | None) -> Any:
        stats = self.stats
        started = self._clock() if self._max_overhead is not None else 0.0
        with torch.no_grad():
            current = [p.detach().clone() for p in self._params]
        # The variant is fitted on the rule's first predict(): a rule that declines before asking for a
        # prediction (worth-it while it measures) makes the attempt cost no fit at all.
        origin = self._average.average() if self._average is not None else None
        proposal = _Proposal(self, current, closure, check, origin)
        proposal.steps_since_last_attempt = stats.inner_steps - self._loop.last_attempt_step
        try:
            decision = self._decide(proposal)
            # Whatever the rule, weights that are not finite, or where the loss is not, are never kept.
            unsafe = proposal.unsafe(decision.params) if decision.accepted else None
            if unsafe:
                decision = Decision.reject(unsafe)
        except BaseException:
            # A closure or the rule raised mid-decision: leave the model exactly as it was before this
            # call (the window stays full, so the next step() tries again).
            proposal.restore()
            raise
        stats.jumps_tried += 1
        attempt_s = self._clock() - started if self._max_overhead is not None else 0.0

        stepped = True
        reused = False  # a rejection whose inner step reuses loss_before's gradient evaluation
        accepted = decision.accepted
        if accepted:
            stats.jumps_accepted += 1
            stats.accepted_horizon_total += self.effective_horizon(int(decision.horizon))
            replays = not reevaluates_closure(self.optimizer)  # may it step on a cached evaluation?
            if self._reset_state == "reset" or not replays:
                self.optimizer.state.clear()  # torch optimizers re-initialise state lazily, per parameter
            if self._slow is not None:
                with torch.no_grad():  # the outer loop continues from the jump (its momentum is kept)
                    _foreach_copy(self._slow.slow, decision.params)
            landing = decision.params  # the weights the model trains on from here
            if self._average is not None:  # judged where it landed, the average included
                landing = self._average.land(decision.params, origin)
            if replays and proposal.holds_gradients_of(landing):
                # The rule's last evaluation was at exactly these weights: its gradients are in .grad, and
                # that evaluation is this step's gradient computation.
                cached = proposal.last_loss
                loss = self.optimizer.step(lambda: cached)
            else:
                proposal.load(landing)
                if closure is None:
                    loss, stepped = None, False  # the user's gradients belong to the weights we left
                else:
                    loss = self.optimizer.step(closure)
        else:
            reason = str(decision.reason)
            stats.rejections[reason] = stats.rejections.get(reason, 0) + 1
            reused = proposal.restore() and not reevaluates_closure(self.optimizer)
            if reused:
                # Weights restored bit for bit, and the gradients measured there by loss_before.
                cached = proposal.loss_before_raw
                loss = self.optimizer.step(lambda: cached)
            else:
                loss = self.optimizer.step() if closure is None else self.optimizer.step(closure)

        self._loop.filled = 0
        self._loop.cycle_steps = 0
        self._window_losses = []
        self._loop.last_attempt_step = stats.inner_steps
        if accepted:
            self._loop.rejected_in_a_row = 0
        elif decision.back_off:
            self._loop.rejected_in_a_row += 1
        if self._backoff:
            doublings = min(self._loop.rejected_in_a_row, self._backoff) if decision.back_off else 0
            self._loop.wait_steps = (2**doublings - 1) * self._window * self._stride
        if self._max_overhead is not None:
            self._pay_for_attempt(started, attempt_s, proposal.steps_since_last_attempt, accepted, reused)
        if stepped:
            self._after_inner_step(loss)
        return loss

    def _pay_for_attempt(self, started: float, attempt_s: float, steps: int, accepted: bool, reused: bool) -> None:
        """After a rejected attempt, wait until its cost is at most ``max_overhead`` of the steps' time.

        Plain training's time per step is measured between two attempts (``seconds_per_step``, kept in
        the state dict); the attempt's cost is its wall-clock time less the one step's gradient
        evaluation it reused (``loss_before``). The next window's own steps count towards the wait."""
        loop = self._loop
        if self._clock_at_last_attempt is not None:  # ``steps`` less this attempt's own, since that clock
            loop.seconds_per_step = (started - self._clock_at_last_attempt) / max(steps - 1, 1)
        per_step = loop.seconds_per_step
        if not accepted and per_step:
            cost_steps = max(attempt_s / per_step - (1.0 if reused else 0.0), 0.0)
            owed = math.ceil(cost_steps / self._max_overhead) - self._window * self._stride
            loop.wait_steps = max(loop.wait_steps, owed)
        self._clock_at_last_attempt = self._clock()

    def _fit_window(self) -> tuple[float, list[bool] | None] | None:
        """Fit the variant on the full window (called by the proposal's first ``predict``): the norm of the
        window's displacement, which the prediction guard measures jumps against, and which parameter
        tensors may jump (None: all of them; see ``consistency``); None when a fit failed (the prediction
        is then unusable, ``"fit-failed"``)."""
        stats = self.stats
        displacement = _global_norm(buf[-1] - buf[0] for buf in self._buffers)
        t0 = self._clock()
        try:
            window = self._fit_coordinates()
            consistent = None if self._consistency is None else self._consistent_tensors(window)
            self.variant.fit(window)
        except Exception as exc:  # degenerate windows make linear algebra raise; never crash training
            stats.fit_time_s += self._clock() - t0
            if not self._fit_warned:
                self._fit_warned = True
                warnings.warn(
                    f"KoopmanAccelerator: {self.variant!r}.fit() raised {type(exc).__name__}: {exc}; the jump was "
                    "rejected as 'fit-failed' and training continues with the inner optimizer. Later failures are "
                    "only counted in stats.rejections['fit-failed'].",
                    RuntimeWarning,
                    stacklevel=6,
                )
            return None
        stats.fit_time_s += self._clock() - t0
        stats.fits += 1
        self._read_spectrum()
        return displacement, consistent

    def _fit_coordinates(self) -> list[torch.Tensor]:
        """The window in the coordinates the variant is fitted in: the snapshots themselves, or with
        ``coordinates="preconditioned"`` each weight times ``d = (sqrt(v) + eps) ** 0.5`` from Adam's
        second moment now (1 where a parameter has none yet). In ``u = d * w`` Adam's step is a plain
        momentum step on the loss as a function of ``u``, so the operator fits the trajectory in the
        metric that Adam descends in; predictions are divided by ``d`` again (`_variant_prediction`)."""
        if self._coordinates == "raw":
            self._scales = None
            return self._buffers
        with torch.no_grad():
            self._scales = preconditioner_roots(self.optimizer)  # in self._params' order
            return [buf * d for buf, d in zip(self._buffers, self._scales)]

    def _variant_prediction(self, steps: int) -> list[torch.Tensor]:
        """The variant's prediction ``steps`` snapshot intervals ahead, in the weights' own coordinates."""
        raw = self.variant.predict(steps)
        if self._scales is None or not isinstance(raw, (list, tuple)) or len(raw) != len(self._scales):
            return raw  # raw coordinates; a malformed prediction is reported by the proposal's checks
        with torch.no_grad():
            return [r / d if isinstance(r, torch.Tensor) else r for r, d in zip(raw, self._scales)]

    def _consistent_tensors(self, window: list[torch.Tensor]) -> list[float]:
        """Each parameter tensor's share of the horizon, from how well the variant, fitted on the snapshots
        before the last, predicts that tensor's last snapshot (one fit and one prediction): with
        ``layer_horizons="uniform"`` 1 within ``consistency`` times the tensor's last displacement and 0
        (held) beyond; with ``"graded"`` ``1 - miss / (consistency * displacement)``, in quarters, so a
        tensor predicted exactly jumps the whole horizon and one that misses by the tolerance stays."""
        earlier = [buf[:-1] for buf in window]
        self.variant.fit(earlier)
        self.stats.fits += 1
        predicted = self._variant_prediction(1)
        with torch.no_grad():
            misses = [torch.linalg.vector_norm((p.to(b.dtype) - b[-1]).reshape(-1)) for p, b in zip(predicted, self._buffers)]
            steps = [torch.linalg.vector_norm((b[-1] - b[-2]).reshape(-1)) for b in self._buffers]
            miss, allowed = torch.stack(misses), self._consistency * torch.stack(steps)
            if self._layer_horizons == "uniform":
                share = (miss <= allowed).to(miss.dtype)
            else:
                share = torch.floor(4 * (1 - miss / allowed).clamp(0, 1)) / 4
            # A tensor that did not move at all is consistent only if hit exactly.
            share = torch.where(allowed > 0, share, (miss == 0).to(miss.dtype))
            shares = share.tolist()  # one host read for all tensors
        self.stats.tensors_held += sum(1 for f in shares if f == 0)
        return shares

    def _decide(self, proposal: _Proposal) -> Decision:
        decision = self.fallback.decide(proposal)
        if not isinstance(decision, Decision):
            raise PluginValidationError(
                f"{self.fallback!r}.decide() returned {decision!r}; a FallbackRule must return a koopsweep.Decision"
            )
        if decision.accepted:
            proposal.check_params(decision.params, f"{self.fallback!r}.decide()")
            h = decision.horizon
            if not isinstance(h, Integral) or isinstance(h, bool) or h < 1:
                raise PluginValidationError(
                    f"{self.fallback!r}.decide() accepted a jump with horizon={h!r}; expected a positive int"
                )
        return decision

    def _read_spectrum(self) -> None:
        try:
            eig = self.variant.eigenvalues
        except Exception:  # diagnostics only
            eig = None
        if eig is None or not isinstance(eig, torch.Tensor) or eig.numel() == 0:
            self.stats.last_spectral_radius = None
            self.stats.last_eigenvalues = None
            return
        eig = eig.detach().reshape(-1).to("cpu", torch.complex128)
        modulus = eig.abs()
        order = torch.argsort(modulus, descending=True)[:MAX_EIGENVALUES_KEPT]
        self.stats.last_spectral_radius = float(modulus.max())
        self.stats.last_eigenvalues = eig[order].clone()

    # -- checkpointing ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state dict under ``"optimizer"``, and under ``"accelerator"`` the counters,
        the stats and the snapshots recorded so far (so that a resumed run continues mid-window)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "accelerator": {
                "version": _STATE_VERSION,
                "window": self._window,
                "stride": self._stride,
                "snapshot": self._snapshot,
                **asdict(self._loop),
                "snapshots": [buf[: self._loop.filled].clone() for buf in self._buffers],
                # snapshot="mean" mid-block: the running sum of the block so far, in the next slot.
                "partial": [buf[self._loop.filled].clone() for buf in self._buffers] if self._summing() else None,
                "window_losses": self._read_window_losses(),
                "stats": self.stats.to_dict(),
                "fallback": self.fallback.state_dict(),  # what the rule learned (the adaptive horizon scale)
            },
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what `state_dict` saved. The model's own parameters are not part of it (load the
        model's state dict as well)."""
        try:
            inner, acc = state_dict["optimizer"], state_dict["accelerator"]
            version, window, stride = acc["version"], acc["window"], acc["stride"]
            filled, cycle_steps, snapshots, stats = acc["filled"], acc["cycle_steps"], acc["snapshots"], acc["stats"]
        except (KeyError, TypeError) as exc:
            raise ParameterError(
                "KoopmanAccelerator.load_state_dict: not a KoopmanAccelerator state dict (missing "
                f"{exc}); a bare optimizer's state dict goes to accelerator.optimizer.load_state_dict"
            ) from None
        if version != _STATE_VERSION:
            raise ParameterError(f"KoopmanAccelerator.load_state_dict: unsupported state version {version!r}")
        snapshot = acc.get("snapshot", "last")
        if (window, stride, snapshot) != (self._window, self._stride, self._snapshot):
            raise ParameterError(
                f"KoopmanAccelerator.load_state_dict: the state was saved with window={window}, stride={stride}, "
                f"snapshot={snapshot!r} but this accelerator has window={self._window}, stride={self._stride}, "
                f"snapshot={self._snapshot!r}; use the same values to resume"
            )
        if len(snapshots) != len(self._buffers) or any(
            tuple(s.shape) != (filled, *b.shape[1:]) for s, b in zip(snapshots, self._buffers)
        ):
            raise ParameterError(
                "KoopmanAccelerator.load_state_dict: the saved snapshots do not match this optimizer's parameters "
                "(different model or parameter groups)"
            )
        self.optimizer.load_state_dict(inner)
        with torch.no_grad():
            for buf, saved in zip(self._buffers, snapshots):
                buf[:filled].copy_(saved)
        self._loop = LoopState(
            filled=int(filled), cycle_steps=int(cycle_steps), rejected_in_a_row=int(acc.get("rejected_in_a_row", 0)),
            wait_steps=int(acc.get("wait_steps", 0)), last_attempt_step=int(acc.get("last_attempt_step", 0)),
            seconds_per_step=acc.get("seconds_per_step"),
        )  # fmt: skip
        self._clock_at_last_attempt = None  # this process's clock starts again at the next step
        self._syncs_seen = self._slow.syncs if self._slow is not None else 0  # restored with the optimizer
        partial = acc.get("partial")
        if self._summing():
            if partial is None or len(partial) != len(self._buffers):
                raise ParameterError("KoopmanAccelerator.load_state_dict: the state lacks the running snapshot sum")
            with torch.no_grad():
                for buf, saved in zip(self._buffers, partial):
                    buf[self._loop.filled].copy_(saved)
        self.stats = AcceleratorStats.from_dict(stats)
        self.fallback.load_state_dict(acc.get("fallback") or {})
        losses = acc.get("window_losses")
        self._window_losses = [None] * int(cycle_steps) if losses is None else list(losses)
