"""Adam's diagonal preconditioner, read from an inner optimizer's state (for ``coordinates="preconditioned"``).

Adam's step is ``-lr * m / (sqrt(v) + eps)``: momentum descent in the metric ``P = diag(sqrt(v) + eps)``.
In the coordinates ``u = P ** 0.5 * w`` that step is a plain momentum step on the loss as a function of
``u``, which is where a linear operator fitted to the trajectory sees Adam's dynamics without its
per-coordinate rescaling. Every optimizer here that keeps Adam's second moment under its usual name
(``exp_avg_sq``) qualifies: torch's Adam, AdamW, NAdam and RAdam (and the Lookahead, SNOO and EMA
optimizers built on Adam), and schedule-free AdamW.
"""

from __future__ import annotations

import torch

from koopsweep.errors import ParameterError


def _adam_like_classes() -> tuple[type, ...]:
    import schedulefree

    return (torch.optim.Adam, torch.optim.AdamW, torch.optim.NAdam, torch.optim.RAdam, schedulefree.AdamWScheduleFree)


def check_adam_like(optimizer: torch.optim.Optimizer) -> None:
    """A one-line error unless ``optimizer`` keeps Adam's second moment (``exp_avg_sq``)."""
    if not isinstance(optimizer, _adam_like_classes()):
        raise ParameterError(
            "KoopmanAccelerator: coordinates='preconditioned' needs an inner optimizer that keeps Adam's second "
            f"moment (Adam, AdamW, NAdam, RAdam, their Lookahead/SNOO/EMA forms, schedule-free AdamW); "
            f"{type(optimizer).__name__} has none"
        )


@torch.no_grad()
def preconditioner_roots(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """``(sqrt(v) + eps) ** 0.5`` for each parameter, in ``param_groups`` order: the per-coordinate scale
    of Adam's metric, up to one factor for the whole model (the bias correction), which a linear fit does
    not see. Ones for a parameter before its first step."""
    roots = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            v = optimizer.state.get(param, {}).get("exp_avg_sq")
            roots.append(torch.ones_like(param) if v is None else (v.sqrt() + group.get("eps", 1e-8)).sqrt())
    return roots
