"""koopsweep: search Koopman-operator training accelerators with Optuna and measure what they save.

The public names are imported lazily, so that ``import koopsweep`` (and ``koopsweep --help``) stays
fast: torch is only imported when one of them is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "KoopmanAccelerator": "koopsweep.accelerator",
    "AcceleratorStats": "koopsweep.accelerator",
    "Variant": "koopsweep.variants._base",
    "Task": "koopsweep.tasks._base",
    "OptimizerPlugin": "koopsweep.optimizers._base",
    "FallbackRule": "koopsweep.fallbacks._base",
    "Decision": "koopsweep.fallbacks._base",
    "JumpProposal": "koopsweep.fallbacks._base",
    "KoopsweepError": "koopsweep.errors",
    "PluginValidationError": "koopsweep.errors",
}

__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:
    from koopsweep.accelerator import AcceleratorStats, KoopmanAccelerator
    from koopsweep.errors import KoopsweepError, PluginValidationError
    from koopsweep.fallbacks._base import Decision, FallbackRule, JumpProposal
    from koopsweep.optimizers._base import OptimizerPlugin
    from koopsweep.tasks._base import Task
    from koopsweep.variants._base import Variant


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'koopsweep' has no attribute {name!r}")
