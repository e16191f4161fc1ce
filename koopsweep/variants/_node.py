"""Node and quasi-node Koopman operators: Dogra & Redman (NeurIPS 2020)'s method.

A *node* is one row of a parameter tensor with two or more dimensions (its incoming weights, flattened)
plus the matching bias entry when the next tensor in the list is 1-D with as many entries as that
tensor has rows (the layer's bias). Any other 1-D (or 0-D) tensor contributes one node per element.
``q >= 1`` splits each node's state into chunks of ``q`` entries, each with its own operator
(quasi-nodes; ``q = 1`` is one scalar recurrence per weight; the last chunk is zero-padded, and a
node shorter than ``q`` stays whole). Each node gets the least-squares operator ``U = F' pinv(F)``
and jumps with ``w(t + h) = U^h w(t)``; all nodes of equal state length are fitted as one batched
computation (`koopsweep.koopman.fit_node_operators`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar

import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution

from koopsweep._params import require
from koopsweep.koopman import (
    SOLVERS,
    NodeModes,
    NodeOperators,
    fit_node_operators,
    node_advance,
    node_advance_modes,
    node_modes,
)
from koopsweep.variants._base import Variant
from koopsweep.variants._dmd import (
    DTYPES,
    check_horizon,
    check_snapshots,
    validate_center,
    validate_dtype,
    validate_max_eig,
)


@dataclass(frozen=True)
class _Unit:
    """One weight tensor (with its bias) or one tensor of element nodes, and where its nodes went."""

    weight: int  # index of the tensor whose rows (or elements) are the nodes
    bias: int | None  # index of the bias tensor appended to each row, if any
    rows: int  # number of nodes
    width: int  # node state length (fan-in, + 1 with a bias)
    chunk: int  # chunk length (= width for whole nodes)
    n_chunks: int


def node_units(shapes: list[torch.Size], q: int) -> list[_Unit]:
    """The node layout of a parameter list (see the module docstring)."""
    units = []
    i = 0
    while i < len(shapes):
        shape = shapes[i]
        bias = None
        if len(shape) >= 2:
            rows, width = shape[0], math.prod(shape[1:])
            nxt = shapes[i + 1] if i + 1 < len(shapes) else None
            if nxt is not None and len(nxt) == 1 and nxt[0] == shape[0]:
                bias = i + 1
                width += 1
        else:
            rows, width = math.prod(shape), 1
        chunk = width if q == 0 else min(q, width)
        units.append(_Unit(i, bias, rows, width, chunk, -(-width // chunk)))
        i += 1 if bias is None else 2
    return units


class NodeDMD(Variant):
    """The paper's node operators (``q = 0``) and quasi-node operators (``q >= 1``).

    Parameters: ``q`` (chunk length, 0 for whole nodes), ``rcond`` (relative singular-value cutoff of
    the pseudo-inverse), ``center`` (``"none"``, the paper's, fits the states; ``"increments"`` fits
    ``x_{k+1} - x_k`` and sums the predicted increments), ``dtype`` (of the batched SVDs), ``max_eig``
    (None, the paper's: the jump is a matrix power; a float clips the reduced operators' eigenvalue
    moduli to it, through a batched ``eig``), ``solver`` (``"svd"``, the default: a batched thin SVD per
    node, robust and faithful to the paper's ``pinv``; ``"gram"``: the same factors from the eigenvectors
    of each node's small ``(m-1) x (m-1)`` Gram, about 10x faster for wide layers on the CPU, accurate in
    float64 while a node's singular values span less than about 1e6).

    Exact when every node (or chunk) evolves by its own linear map and the window exceeds the node state
    length by at least 2 (``m - 1 > k`` states to fit a ``k x k`` map from). Not exact for dynamics that
    couple nodes (a generic linear system, as in `koopsweep.testing`'s exactness check), hence
    ``exact = False``. Expensive for wide layers: a
    fan-in of 784 means a batched SVD of 785-row matrices per node (see ``benchmarks/README.md``).
    """

    exact: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {
        "q": 0,
        "rcond": 1e-6,
        "center": "none",
        "dtype": "float64",
        "max_eig": None,
        "solver": "svd",
    }

    @classmethod
    def search_space(cls) -> dict[str, Any]:
        return {
            "q": CategoricalDistribution((0, 1, 2, 4, 8)),
            "rcond": FloatDistribution(1e-10, 1e-3, log=True),
            "center": CategoricalDistribution(("none", "increments")),
        }

    def validate_params(self) -> None:
        p = self.params
        q = p["q"]
        require(
            isinstance(q, Integral) and not isinstance(q, bool) and q >= 0, self, "q", q, "an int >= 0 (0: whole nodes)"
        )
        p["q"] = int(q)
        rc = p["rcond"]
        require(
            isinstance(rc, Real) and not isinstance(rc, bool) and 0 <= float(rc) < 1,
            self,
            "rcond",
            rc,
            "a float in [0, 1)",
        )
        p["rcond"] = float(rc)
        validate_center(self, p["center"], ("none", "increments"))
        validate_dtype(self, p["dtype"])
        validate_max_eig(self, p["max_eig"])
        if p["max_eig"] is not None:
            p["max_eig"] = float(p["max_eig"])
        require(p["solver"] in SOLVERS, self, "solver", p["solver"], '"svd" or "gram"')

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._units: list[_Unit] = []
        self._groups: dict[int, tuple[NodeOperators, NodeModes | None, torch.Tensor]] = {}
        self._last: list[torch.Tensor] = []
        self._shapes: list[torch.Size] = []

    def min_window(self) -> int:
        return 3 if self.params["center"] == "increments" else 2

    # -- layout ----------------------------------------------------------------------------------

    def _write_unit(self, unit: _Unit, snapshots: list[torch.Tensor], out: torch.Tensor) -> None:
        """Write the unit's node (chunk) states over the window into ``out`` ``(rows * n_chunks, m, chunk)``."""
        w = snapshots[unit.weight]
        m = w.shape[0]
        fan = unit.width - (1 if unit.bias is not None else 0)
        if unit.n_chunks == 1:
            nodes = out.view(unit.rows, m, unit.chunk)  # one copy, straight from the snapshots
        else:
            nodes = torch.zeros(unit.rows, m, unit.chunk * unit.n_chunks, dtype=out.dtype, device=out.device)
        nodes[:, :, :fan].copy_(w.reshape(m, unit.rows, fan).transpose(0, 1))
        if unit.bias is not None:
            nodes[:, :, fan].copy_(snapshots[unit.bias].transpose(0, 1))
        if unit.n_chunks > 1:
            chunks = nodes.view(unit.rows, m, unit.n_chunks, unit.chunk).permute(0, 2, 1, 3)
            out.view(unit.rows, unit.n_chunks, m, unit.chunk).copy_(chunks)

    # -- Variant ---------------------------------------------------------------------------------

    def fit(self, snapshots: list[torch.Tensor]) -> None:
        window = check_snapshots(self, snapshots)
        self._groups = {}
        dtype = DTYPES[self.params["dtype"]]
        device = snapshots[0].device
        self._shapes = [s.shape[1:] for s in snapshots]
        self._last = [s[-1] for s in snapshots]
        self._units = node_units(list(self._shapes), self.params["q"])
        sizes: dict[int, int] = {}
        for unit in self._units:
            sizes[unit.chunk] = sizes.get(unit.chunk, 0) + unit.rows * unit.n_chunks
        buffers = {c: torch.zeros(n, window, c, dtype=dtype, device=device) for c, n in sizes.items()}
        offsets = dict.fromkeys(sizes, 0)
        for unit in self._units:
            n = unit.rows * unit.n_chunks
            start = offsets[unit.chunk]
            offsets[unit.chunk] = start + n
            self._write_unit(unit, snapshots, buffers[unit.chunk][start : start + n])
        increments = self.params["center"] == "increments"
        for chunk, states in buffers.items():
            last = states[:, -1, :]
            if increments:
                states = states[:, 1:] - states[:, :-1]
            ops = fit_node_operators(states, self.params["rcond"], self.params["solver"])
            modes = node_modes(ops) if self.params["max_eig"] is not None else None
            self._groups[chunk] = (ops, modes, last)

    def predict(self, steps: int) -> list[torch.Tensor]:
        h = check_horizon(self, steps)
        if not self._groups:
            raise RuntimeError(f"{type(self).__name__}.predict called before fit")
        if h == 0:
            return [x.clone() for x in self._last]
        increments = self.params["center"] == "increments"
        advanced: dict[int, torch.Tensor] = {}
        for chunk, (ops, modes, last) in self._groups.items():
            if modes is None:
                step = node_advance(ops, h, cumulative=increments)
            else:
                step = node_advance_modes(modes, h, cumulative=increments, max_eig=self.params["max_eig"])
            advanced[chunk] = last + step if increments else step
        return self._scatter(advanced)

    def _scatter(self, advanced: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(self._shapes)
        offsets = dict.fromkeys(advanced, 0)
        for unit in self._units:
            n = unit.rows * unit.n_chunks
            start = offsets[unit.chunk]
            offsets[unit.chunk] = start + n
            node = advanced[unit.chunk][start : start + n].reshape(unit.rows, -1)[:, : unit.width]
            ref = self._last[unit.weight]
            if unit.bias is None:
                out[unit.weight] = node.reshape(ref.shape).to(ref.dtype)
            else:
                out[unit.weight] = node[:, :-1].reshape(ref.shape).to(ref.dtype)
                bias_ref = self._last[unit.bias]
                out[unit.bias] = node[:, -1].reshape(bias_ref.shape).to(bias_ref.dtype)
        return out  # type: ignore[return-value]

    @property
    def eigenvalues(self) -> torch.Tensor | None:
        """Eigenvalues of every node's reduced operator (complex), concatenated; None before fit.

        Each node contributes ``r`` values (``min(k, m-1)`` with the SVD solver, ``m-1`` with the Gram
        one), including exact zeros for directions the pseudo-inverse discarded.
        """
        if not self._groups:
            return None
        parts = []
        for ops, modes, _ in self._groups.values():
            lam = modes.eigenvalues if modes is not None else torch.linalg.eigvals(ops.reduced)
            parts.append(lam.reshape(-1))
        return torch.cat(parts)
