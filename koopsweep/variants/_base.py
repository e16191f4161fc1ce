"""The `Variant` contract: how a Koopman (or control) predictor plugs into koopsweep.

A variant is fitted to a window of weight snapshots and predicts the weights some number of optimizer
steps ahead. `KoopmanAccelerator` owns the snapshots and the decision whether to keep a jump; a variant
only does the math. Built-in and third-party variants are registered the same way, as entry points in
the group ``koopsweep.variants``.

Order of calls made by the accelerator::

    variant = VariantClass(**params)      # once; every parameter has a default
    variant.min_window()                  # once, to validate the accelerator's window
    loop:
        variant.fit(snapshots)            # a full window, oldest snapshot first
        variant.predict(k)                # k snapshot steps ahead; one or more (fallback rules may ask several)
        variant.eigenvalues               # optional diagnostics, read after fit
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch

from koopsweep._params import Configurable


class Variant(Configurable, abc.ABC):
    """Abstract base of every variant, built-in or third-party.

    Subclasses list their parameters in ``defaults``, the ones worth searching in ``search_space()``
    (a dict of ``optuna.distributions.BaseDistribution``), and implement `fit` and `predict`.
    """

    #: True when the variant recovers linear dynamics exactly given enough snapshots; the conformance
    #: suite in `koopsweep.testing` then checks it on a known linear system.
    exact: ClassVar[bool] = False

    @abc.abstractmethod
    def fit(self, snapshots: list[torch.Tensor]) -> None:
        """Fit to one tensor per parameter tensor, each of shape ``(window, *param.shape)``, oldest first."""

    @abc.abstractmethod
    def predict(self, steps: int) -> list[torch.Tensor]:
        """The parameters ``steps`` snapshot intervals after the last snapshot (same shapes, dtypes,
        devices). The unit is the variant's own time step, one snapshot: with a snapshot stride ``s`` the
        accelerator asks for ``round(h / s)`` (at least 1) to jump ``h`` optimizer steps, and records the
        jump as ``steps * s`` optimizer steps."""

    def min_window(self) -> int:
        """The smallest window this variant can fit with its current parameters."""
        return 2

    @property
    def eigenvalues(self) -> torch.Tensor | None:
        """Eigenvalues of the last fitted operator(s) (complex, 1-D), or None for non-spectral variants."""
        return None
