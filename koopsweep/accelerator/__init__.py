"""`KoopmanAccelerator`: Koopman jumps around any first-order ``torch.optim.Optimizer``.

One concern per module: `_accelerator` (the wrapper and its loop), `_proposal` (the jump a fallback
rule judges), `_stats` (what it did), `_options` (its arguments, checked up front), `_tensors`.
"""

from koopsweep.accelerator._accelerator import RESET_STATES, SNAPSHOT_MODES, KoopmanAccelerator, LoopState
from koopsweep.accelerator._stats import MAX_EIGENVALUES_KEPT, AcceleratorStats

__all__ = ["MAX_EIGENVALUES_KEPT", "RESET_STATES", "SNAPSHOT_MODES", "AcceleratorStats", "KoopmanAccelerator", "LoopState"]
