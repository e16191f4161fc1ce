"""Node operators (Dogra & Redman, 2020): one least-squares linear map per node, batched.

A batch of ``N`` nodes with state length ``k`` arrives as ``states`` of shape ``(N, s, k)``, rows
being times, oldest first. Per node, with ``F`` the states ``0 .. s-2`` and ``F'`` the states
``1 .. s-1`` as columns, the paper's operator is ``U = F' pinv(F)``. It is never formed: with the thin
SVD ``F = U_F S V^T`` (pseudo-inverse cutoff ``rcond * s_max``),

    U = P Q,   P = F' V S^+  (k x r),   Q = U_F^T  (r x k),
    U^h w = P A~^(h-1) Q w   with the small   A~ = Q P = U_F^T F' V S^+  (r x r),   r <= s-1.

``P`` is kept as ``F' (V S^+)``, so a jump costs a batched ``r x r`` matrix power (``log2 h`` products)
and one ``(k x (s-1))`` product per node. Sums of powers (for fits on increments) use the block identity
``[[A, I], [0, I]]^h = [[A^h, I + A + ... + A^(h-1)], [0, I]]``. When eigenvalues are to be clipped,
``A~ = W diag(lambda) W^-1`` is diagonalised instead (batched ``eig``). Everything is batched with
``torch.linalg`` (SVD- or eigh-based pseudo-inverses, since CUDA's ``lstsq`` only takes full-rank tall
systems).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from koopsweep.koopman._dmd import geometric_sum, limit_eigenvalues
from koopsweep.koopman._rank import noise_floor


@dataclass(frozen=True)
class NodeOperators:
    """Factored node operators for a batch of ``N`` nodes (see the module docstring).

    ``P = F' V S^+`` is kept as ``basis @ coef`` (``F'`` is a view of the states, so the fit makes no
    parameter-sized product beyond what the solver needs).

    Attributes:
        basis: ``(N, k, s-1)``, ``F'`` (the states ``1 .. s-1`` as columns).
        coef: ``(N, s-1, r)``, ``V S^+``.
        reduced: ``(N, r, r)``, ``A~ = U_F^T P``.
        start: ``(N, r)``, ``Q w = U_F^T w`` for the newest state ``w``.
    """

    basis: torch.Tensor
    coef: torch.Tensor
    reduced: torch.Tensor
    start: torch.Tensor

    def left(self, vectors: torch.Tensor) -> torch.Tensor:
        """``P @ vectors`` for ``vectors`` ``(N, r, c)``: ``(N, k, c)``."""
        if self.basis.shape[1] == 1 and self.coef.shape[2] == 1:  # scalar nodes: elementwise
            p = (self.basis[:, 0, :] * self.coef[:, :, 0]).sum(1)
            return p.reshape(-1, 1, 1) * vectors
        return self.basis @ (self.coef @ vectors)


SOLVERS = ("svd", "gram")


def fit_node_operators(states: torch.Tensor, rcond: float, solver: str = "svd") -> NodeOperators:
    """Fit ``U = F' pinv(F)`` for every node of ``states`` ``(N, s, k)`` (``s >= 2``) at once.

    ``solver="svd"`` takes a batched thin SVD of ``F``. ``"gram"`` works from each node's small Gram
    over time ``K = S S^T`` (``s x s``, one batched product over the parameters, then everything is
    ``s``-sized, like the global DMD's method of snapshots): an order of magnitude faster for wide nodes
    on the CPU, at the price of the squared condition number (use it in float64). Singular values below
    ``rcond * s_max`` (and, for the Gram, below its rounding floor) are treated as zero.
    """
    f_next = states[:, 1:, :].transpose(1, 2)  # (N, k, s-1): states 1..s-1 as columns
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if states.shape[2] == 1:
        # Scalar nodes (q = 1, free biases): U = <f, f'> / |f|^2 elementwise, no per-node LAPACK call.
        f = states[:, :-1, 0]
        sq = (f * f).sum(1, keepdim=True)  # |f|^2 = s_max^2: the cutoff rcond * s_max never drops it
        inv = torch.where(sq > 0, 1.0 / torch.where(sq > 0, sq, torch.ones_like(sq)), torch.zeros_like(sq))
        coef = (f * inv).unsqueeze(-1)  # V S^+ with U_F = 1: (N, s-1, 1)
        reduced = (f_next @ coef).reshape(-1, 1, 1)  # <f', f> / |f|^2
        start = states[:, -1, :]  # U_F^T w = w
        return NodeOperators(f_next, coef, reduced, start)
    if solver == "svd":
        f = states[:, :-1, :].transpose(1, 2)  # (N, k, s-1): states 0..s-2
        u, sv, vh = torch.linalg.svd(f, full_matrices=False)  # u (N,k,r), sv (N,r), vh (N,r,s-1)
        keep = sv > rcond * sv[:, :1]
        inv = torch.where(keep, 1.0 / torch.where(keep, sv, torch.ones_like(sv)), torch.zeros_like(sv))
        coef = vh.transpose(1, 2) * inv.unsqueeze(1)  # V S^+
        ut = u.transpose(1, 2)
        reduced = (ut @ f_next) @ coef  # U_F^T F' V S^+
        start = (ut @ states[:, -1, :].unsqueeze(-1)).squeeze(-1)
    else:  # "gram"
        gram = states @ states.transpose(1, 2)  # (N, s, s)
        sq, v = torch.linalg.eigh(gram[:, :-1, :-1])  # ascending
        sq, v = sq.flip(-1), v.flip(-1)
        top = sq[:, :1].clamp(min=0)
        floor = noise_floor(states.shape[2], states.shape[1] - 1, states.dtype) * top
        keep = (sq > floor) & (sq > (rcond**2) * top)
        inv = torch.where(keep, torch.where(keep, sq, torch.ones_like(sq)).rsqrt(), torch.zeros_like(sq))
        coef = v * inv.unsqueeze(1)  # V S^+, and U_F = F V S^+
        reduced = coef.transpose(1, 2) @ gram[:, :-1, 1:] @ coef  # S^+ V^T F^T F' V S^+
        start = (coef.transpose(1, 2) @ gram[:, :-1, -1:]).squeeze(-1)  # S^+ V^T F^T w
    return NodeOperators(f_next, coef, reduced, start)


def _real_geometric_sum(a: torch.Tensor, horizon: int) -> torch.Tensor:
    """``1 + a + ... + a^(h-1)`` elementwise for real ``a``, without cancellation near ``a = 1``."""
    pos = a > 0
    log_a = torch.log(torch.where(pos, a, torch.ones_like(a)))
    num = torch.where(pos, -torch.expm1(horizon * log_a), 1.0 - a.pow(horizon))  # 1 - a^h
    den = torch.where(pos, -torch.expm1(log_a), 1.0 - a)  # 1 - a
    return torch.where(
        den == 0, torch.full_like(a, float(horizon)), num / torch.where(den == 0, torch.ones_like(den), den)
    )


def _sum_of_powers(a: torch.Tensor, horizon: int) -> torch.Tensor:
    """``I + A + ... + A^(h-1)`` for a batch of square matrices, via one block matrix power."""
    n, r, _ = a.shape
    eye = torch.eye(r, dtype=a.dtype, device=a.device).expand(n, r, r)
    block = torch.zeros(n, 2 * r, 2 * r, dtype=a.dtype, device=a.device)
    block[:, :r, :r] = a
    block[:, :r, r:] = eye
    block[:, r:, r:] = eye
    return torch.linalg.matrix_power(block, horizon)[:, :r, r:]


def node_advance(ops: NodeOperators, horizon: int, cumulative: bool) -> torch.Tensor:
    """``U^h w`` (``cumulative=False``) or ``U w + U^2 w + ... + U^h w`` (``cumulative=True``), ``(N, k)``.

    ``horizon`` must be >= 1 (``U^0 w = w`` is not held by the factors: callers return ``w`` itself).
    """
    if horizon < 1:
        raise ValueError(f"node_advance needs horizon >= 1, got {horizon}")
    if ops.reduced.shape[-1] == 1:  # scalar operators: elementwise powers, no batched 1 x 1 products
        a = ops.reduced.reshape(-1, 1)
        if cumulative:
            power = _real_geometric_sum(a, horizon)
        else:
            power = a.pow(horizon - 1)
        return ops.left((power * ops.start).unsqueeze(-1)).squeeze(-1)
    if cumulative:
        power = _sum_of_powers(ops.reduced, horizon)
    else:
        power = torch.linalg.matrix_power(ops.reduced, horizon - 1)
    return ops.left(power @ ops.start.unsqueeze(-1)).squeeze(-1)


@dataclass(frozen=True)
class NodeModes:
    """Node operators diagonalised: ``U^j w = Re(P W diag(lambda^(j-1)) amplitudes)``."""

    ops: NodeOperators
    eigenvalues: torch.Tensor  # (N, r) complex
    vectors: torch.Tensor  # (N, r, r) complex, W
    amplitudes: torch.Tensor  # (N, r) complex, W^-1 Q w


def node_modes(ops: NodeOperators) -> NodeModes:
    """Diagonalise the reduced operators (batched ``eig``; a pseudo-inverse of ``W`` for safety)."""
    if ops.reduced.shape[-1] == 1:  # scalar operators are their own eigenvalues
        lam = ops.reduced.reshape(-1, 1).to(torch.complex128 if ops.reduced.dtype == torch.float64 else torch.complex64)
        return NodeModes(ops, lam, torch.ones_like(lam).unsqueeze(-1), ops.start.to(lam.dtype))
    lam, w = torch.linalg.eig(ops.reduced)
    amps = (torch.linalg.pinv(w) @ ops.start.to(w.dtype).unsqueeze(-1)).squeeze(-1)
    return NodeModes(ops, lam, w, amps)


def node_advance_modes(nm: NodeModes, horizon: int, cumulative: bool, max_eig: float | None) -> torch.Tensor:
    """Like `node_advance`, through the eigenvalues, with moduli above ``max_eig`` clipped to it.

    In modal form ``U^j w = sum_i lambda_i^j alpha_i phi_i`` with ``phi = P W`` and
    ``alpha = beta / lambda`` (``beta = W^-1 Q w``), so a mode clipped to ``lambda' = s lambda``
    contributes ``s^h lambda^(h-1) beta`` to ``U^h w`` and ``s (lambda' + ... + lambda'^h) / lambda'``
    times ``beta`` to the sum of powers; unclipped modes (``s = 1``) reduce to the exact matrix power.
    """
    if horizon < 1:
        raise ValueError(f"node_advance_modes needs horizon >= 1, got {horizon}")
    lam = nm.eigenvalues
    clipped, _ = limit_eigenvalues(lam, max_eig, "clip")
    modulus = lam.abs()
    scale = torch.where(modulus > 0, clipped.abs() / torch.where(modulus > 0, modulus, torch.ones_like(modulus)), 1.0)
    if cumulative:
        growth = scale * geometric_sum(clipped, horizon)
    else:
        growth = torch.polar(modulus.pow(horizon - 1) * scale.pow(horizon), lam.angle() * (horizon - 1))
    if nm.vectors.shape[-1] == 1:
        weights = (growth * nm.amplitudes).real.unsqueeze(-1)
    else:
        weights = (nm.vectors @ (growth * nm.amplitudes).unsqueeze(-1)).real  # real: conjugate pairs cancel
    return nm.ops.left(weights.to(nm.ops.coef.dtype)).squeeze(-1)
