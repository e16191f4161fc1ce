"""`AcceleratorStats`: what the accelerator did, for logging and checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

#: At most this many eigenvalues (the largest in modulus) are kept in ``stats.last_eigenvalues``.
MAX_EIGENVALUES_KEPT = 256


@dataclass
class AcceleratorStats:
    """What the accelerator did, for logging. All counters are cumulative over the run.

    ``evaluations`` counts only the closure calls made for verification (the inner optimizer's own calls
    are not included); the times are wall-clock seconds, with CUDA synchronised before each reading.
    """

    inner_steps: int = 0
    snapshots_recorded: int = 0
    jumps_tried: int = 0
    jumps_accepted: int = 0
    #: Variant fits made: an attempt whose rule declined before asking for a prediction fits nothing.
    fits: int = 0
    accepted_horizon_total: int = 0
    #: Parameter tensors held at their current value by the per-parameter consistency check, over its fits.
    tensors_held: int = 0
    evaluations: int = 0
    fit_time_s: float = 0.0
    predict_time_s: float = 0.0
    verify_time_s: float = 0.0
    last_spectral_radius: float | None = None
    #: Eigenvalues of the last fit (complex128, CPU, at most `MAX_EIGENVALUES_KEPT`, largest first).
    last_eigenvalues: torch.Tensor | None = None
    rejections: dict[str, int] = field(default_factory=dict)

    @property
    def acceptance_rate(self) -> float:
        """Accepted / tried jumps (0.0 before the first attempt)."""
        return self.jumps_accepted / self.jumps_tried if self.jumps_tried else 0.0

    @property
    def effective_horizon(self) -> float:
        """Mean horizon of the accepted jumps, in inner optimizer steps (0.0 when none was accepted)."""
        return self.accepted_horizon_total / self.jumps_accepted if self.jumps_accepted else 0.0

    _COUNTERS = (
        "inner_steps", "snapshots_recorded", "jumps_tried", "jumps_accepted", "fits", "accepted_horizon_total",
        "tensors_held", "evaluations", "fit_time_s", "predict_time_s", "verify_time_s", "last_spectral_radius",
    )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (eigenvalues as ``[real, imag]`` pairs), with the derived rates."""
        out: dict[str, Any] = {name: getattr(self, name) for name in self._COUNTERS}
        out["last_eigenvalues"] = (
            None
            if self.last_eigenvalues is None
            else [[float(z.real), float(z.imag)] for z in (complex(v) for v in self.last_eigenvalues.tolist())]
        )
        out["rejections"] = dict(self.rejections)
        out["acceptance_rate"] = self.acceptance_rate
        out["effective_horizon"] = self.effective_horizon
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AcceleratorStats:
        """Inverse of `to_dict` (derived keys are ignored)."""
        stats = cls(**{name: data[name] for name in cls._COUNTERS if name in data})
        eig = data.get("last_eigenvalues")
        if eig is not None:
            stats.last_eigenvalues = torch.tensor([complex(re, im) for re, im in eig], dtype=torch.complex128)
        stats.rejections = {str(k): int(v) for k, v in dict(data.get("rejections") or {}).items()}
        return stats
