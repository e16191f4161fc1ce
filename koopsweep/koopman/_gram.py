"""The window's Gram matrix over time: the only pass over parameter-sized data a global DMD fit makes.

A window of ``m`` snapshots is handed over as a list of 2-D blocks ``(m, P_t)``, one per parameter
tensor (views of the snapshots, never concatenated). The DMD works on *basis rows* ``b_i`` derived
from the states ``x_k`` according to ``center``:

* ``"none"``: ``b_k = x_k`` (``m`` rows);
* ``"mean"``: ``b_k = x_k - mean_k(x_k)`` (``m`` rows);
* ``"increments"``: ``b_k = x_{k+1} - x_k`` (``m - 1`` rows).

`window_gram` returns ``K[i, j] = <b_i, b_j>`` summed over all blocks, accumulated in the fit dtype.
The centred rows are formed explicitly (in column chunks, in a reused buffer) rather than derived from
the raw Gram, because subtracting Grams of raw weights cancels catastrophically in float32. A combination
``sum_i c_i b_i`` of basis rows is a combination ``sum_k e_k x_k`` of the states, with ``e`` given by
`state_coefficients`; predictions are computed that way, straight from the snapshots.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

CENTERS = ("none", "mean", "increments")

#: Largest scratch buffer (elements) used to form centred rows; wider tensors are processed in column
#: chunks. Whole tensors are faster than cache-sized chunks on the CPU (measured on 2 cores, 16 x 200,704
#: float32: 2.9 ms for one subtraction and one product against 5.0 ms in chunks of 32,768 columns, whose
#: small multithreaded subtractions cost more than they save), so chunks only bound the memory.
MAX_BUFFER_ELEMENTS = 1 << 24


def basis_rows(window: int, center: str) -> int:
    """Number of basis rows a window of ``window`` snapshots gives under ``center``."""
    return window - 1 if center == "increments" else window


def _buffer(workspace: dict | None, rows: int, cols: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A ``(rows, >= cols)`` scratch buffer, reused from ``workspace`` when one fits (no page faults)."""
    buf = None if workspace is None else workspace.get("buffer")
    if (
        buf is not None
        and buf.shape[0] == rows
        and buf.shape[1] >= cols
        and buf.dtype == dtype
        and buf.device == device
    ):
        return buf
    buf = torch.empty(rows, cols, dtype=dtype, device=device)
    if workspace is not None:
        workspace["buffer"] = buf  # one buffer at a time: a changed window or dtype frees the old one
    return buf


#: On the CPU, products of 16 rows or more over at least this many columns are split into `_SPLITS`
#: column groups and run as one batched product: MKL parallelises a short-and-wide ``B @ B.T`` poorly over
#: its long inner dimension (interleaved medians on 269,322 float32 columns, 2 cores: 16 rows 3.1 -> 2.4
#: ms, 32 rows 9.8 -> 7.0 ms; 8 rows 1.25 -> 1.6 ms, so those stay one product).
_SPLIT_MIN_COLUMNS = 1 << 14
_SPLITS = 8


def _accumulate(gram: torch.Tensor, b: torch.Tensor) -> None:
    """``gram += b @ b.T``."""
    cols = b.shape[1]
    if b.device.type != "cpu" or cols < _SPLIT_MIN_COLUMNS or b.shape[0] < 16:
        gram.addmm_(b, b.T)
        return
    length = cols // _SPLITS
    split = b[:, : _SPLITS * length].view(b.shape[0], _SPLITS, length).transpose(0, 1)  # no copy
    gram += torch.bmm(split, split.transpose(1, 2)).sum(0)
    if _SPLITS * length < cols:
        rest = b[:, _SPLITS * length :]
        gram.addmm_(rest, rest.T)


def window_gram(
    blocks: Sequence[torch.Tensor],
    center: str,
    dtype: torch.dtype,
    *,
    chunk: int | None = -1,
    workspace: dict | None = None,
) -> torch.Tensor:
    """Gram matrix of the window's basis rows, ``(n, n)`` in ``dtype`` on the blocks' device.

    Args:
        blocks: 2-D tensors ``(m, P_t)`` sharing ``m`` and the device (any floating dtype).
        center: one of `CENTERS`.
        dtype: accumulation dtype.
        chunk: columns per scratch buffer; ``-1`` (default) fits the centred rows of all blocks into one
            buffer of at most `MAX_BUFFER_ELEMENTS`, ``None`` always into one buffer.
        workspace: optional dict kept by the caller between fits, to reuse the scratch buffer (a fresh
            parameter-sized allocation costs page faults on every fit).
    """
    if center not in CENTERS:
        raise ValueError(f"center must be one of {CENTERS}, got {center!r}")
    m = blocks[0].shape[0]
    device = blocks[0].device
    n = basis_rows(m, center)
    on_cpu = device.type == "cpu"
    # MKL's kernels for a short-and-wide X @ X.T are up to twice as fast when the row count is a
    # multiple of 8 (15 rows measured 4.2 ms against 2.4 ms for 16 on 200k columns): pad with zero rows.
    npad = -(-n // 8) * 8 if on_cpu else n
    if chunk == -1:
        chunk = max(1 << 16, MAX_BUFFER_ELEMENTS // npad)
    gram = torch.zeros(npad, npad, dtype=dtype, device=device)
    if center == "none" and npad == n and all(x.dtype == dtype for x in blocks):
        for x in blocks:
            if x.shape[1]:
                _accumulate(gram, x)  # no copy at all
        return gram
    # Pack the centred rows of all blocks side by side into one buffer; one product per full buffer.
    total = sum(int(x.shape[1]) for x in blocks)
    width = total if chunk is None else max(1, min(chunk, total))
    buf = _buffer(workspace, npad, width, dtype, device)
    buf[n:].zero_()
    fill = 0
    for x in blocks:
        p = x.shape[1]
        start = 0
        while start < p:
            take = min(p - start, width - fill)
            y = x[:, start : start + take]
            rows = buf[:n, fill : fill + take]
            if center == "increments":
                torch.sub(y[1:], y[:-1], out=rows)
            else:
                rows.copy_(y)
                if center == "mean":
                    rows.sub_(rows.mean(0, keepdim=True))
            fill += take
            start += take
            if fill == width:
                _accumulate(gram, buf[:, :fill])
                fill = 0
    if fill:
        _accumulate(gram, buf[:, :fill])
    return gram[:n, :n]


def state_coefficients(row_coefficients: torch.Tensor, center: str, window: int) -> torch.Tensor:
    """Turn coefficients ``c`` over basis rows into ``e`` over states: ``sum c_i b_i = sum e_k x_k``."""
    c = row_coefficients
    if center == "none":
        return c
    if center == "mean":
        return c - c.sum() / window
    if center == "increments":
        e = torch.zeros(window, dtype=c.dtype, device=c.device)
        e[1:] += c
        e[:-1] -= c
        return e
    raise ValueError(f"center must be one of {CENTERS}, got {center!r}")
