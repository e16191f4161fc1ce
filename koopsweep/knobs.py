"""The accelerator's shared knobs, defined once.

`KoopmanConfig`'s fields, the accelerator's argument checks, a study spec's ``[search]`` table,
``koopsweep bench --param`` and the plugin loader's reserved names all derive from `KNOBS`: adding a
knob here is the one change that makes every one of them know it. Pure data: nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any


@dataclass(frozen=True)
class Knob:
    """One shared knob: its default, and what a valid value is (an integer from ``minimum``, one of
    ``choices``, ``positive``: None (off) or a number > 0, or else a plugin name)."""

    name: str
    default: Any
    doc: str
    minimum: int | None = None
    choices: tuple[str, ...] | None = None
    positive: bool = False

    @property
    def is_int(self) -> bool:
        return self.minimum is not None

    @property
    def is_number(self) -> bool:
        """Whether a spec may give the knob a range (integer and positive knobs)."""
        return self.is_int or self.positive

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this knob ("expected ..."), or None when it is valid."""
        if self.is_int:
            if not isinstance(value, Integral) or isinstance(value, bool) or value < self.minimum:
                return f"expected an integer >= {self.minimum}"
        elif self.positive:
            if value is not None and (
                not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value) or value <= 0
            ):
                return "expected a number > 0 (or nothing: off)"
        elif self.choices is not None:
            if value not in self.choices:
                return f"expected one of {', '.join(self.choices)}"
        elif not isinstance(value, str) or not value:
            return "expected a plugin name"
        return None


KNOBS: dict[str, Knob] = {
    knob.name: knob
    for knob in (
        Knob("window", 16, "snapshots per fit (at least the variant's min_window)", minimum=2),
        Knob("horizon", 100, "inner optimizer steps a jump predicts ahead", minimum=1),
        Knob("fallback", "worth-it", "the fallback rule that decides what to do with a jump"),
        Knob("stride", 1, "inner steps between snapshots", minimum=1),
        Knob("snapshot", "last", "each snapshot is the last iterate of its stride block, their mean, the "
             "slow weights at each synchronisation of a Lookahead/SNOO inner optimizer, or the averaged "
             "weights of an EMA or schedule-free inner optimizer",
             choices=("last", "mean", "slow", "average")),  # fmt: skip
        Knob("burn_in", 0, "inner steps before the first snapshot", minimum=0),
        Knob("backoff", 2, "after k rejected jumps in a row, wait 2**min(k, backoff) - 1 windows", minimum=0),
        Knob("reset_state", "keep", "keep or reset the inner optimizer's state after an accepted jump",
             choices=("keep", "reset")),  # fmt: skip
        Knob("max_overhead", None, "wait after a rejected attempt until its wall-clock cost is at most this share of "
             "the training time since (off: a run stays a function of its seed)", positive=True),
        Knob("consistency", None, "jump only the parameter tensors whose last snapshot the variant, fitted on the "
             "earlier ones, predicts within this many times their last displacement", positive=True),
        Knob("layer_horizons", "uniform", "every parameter tensor jumps the whole horizon, or (graded, with "
             "consistency) a share of it that falls with the tensor's consistency miss",
             choices=("uniform", "graded")),  # fmt: skip
        Knob("coordinates", "raw", "fit the operator on the raw weights, or on Adam's preconditioned coordinates "
             "(each weight times (sqrt(v) + eps) ** 0.5, where Adam is plain momentum descent)",
             choices=("raw", "preconditioned")),  # fmt: skip
        Knob("check_batches", 0, "judge jumps on this many fixed batches from the task (0: the step's own): a "
             "sample of the training stream, or, on a full-batch scientific task, fresh data it never trains on",
             minimum=0),
    )
}

#: The knobs that are `KoopmanAccelerator` arguments (``check_batches`` belongs to the training run,
#: which draws the batches and hands the accelerator a check).
ACCELERATOR_KNOBS = tuple(name for name in KNOBS if name != "check_batches")
