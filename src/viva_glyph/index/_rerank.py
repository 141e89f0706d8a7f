"""Exact re-scoring of an index's best candidates, from the original vectors or decoded codes."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.files import not_regular, npy_header

__all__ = ["exact_scores", "gather_rows", "open_vectors", "rerank"]

_NPY_MAGIC = b"\x93NUMPY"


def open_vectors(path: str | os.PathLike[str], dimension: int) -> NDArray[Any]:
    """The (N, D) array of a ``.npy`` file of re-ranking vectors, memory-mapped.

    Anything but a regular file (a named pipe would block the reader forever) is
    refused without being read; the header is checked (a ``.npy`` file, numbers,
    a matrix of ``dimension`` columns, no longer than the file) before the map.

    Raises
    ------
    ValueError
        Naming the file and what it is instead.
    OSError
        When it cannot be read.
    """
    name = os.fspath(path)
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    info = os.fstat(fd)
    what = not_regular(info.st_mode)
    if what is not None:
        os.close(fd)
        raise ValueError(f"vectors {name} is {what}, not a .npy file")
    os.set_blocking(fd, True)
    with open(fd, "rb", closefd=True) as fh:
        head = fh.read(len(_NPY_MAGIC))
        if head != _NPY_MAGIC:
            raise ValueError(
                f"vectors {name} is not a .npy file (it starts with {head!r}); save the "
                "vectors with numpy.save"
            )
        fh.seek(0)
        (n, d), fortran, dtype = npy_header(fh, f"vectors {name}")
        offset = fh.tell()
        if d != dimension:
            raise ValueError(
                f"vectors {name} holds vectors of dimension {d}, but the index has dimension "
                f"{dimension}"
            )
        if info.st_size < offset + n * d * dtype.itemsize:
            raise ValueError(f"vectors {name}: truncated, shorter than its header's shape {(n, d)}")
        if n == 0:
            return np.empty((0, d), dtype=dtype)
        arr: NDArray[Any] = np.memmap(
            fh, dtype=dtype, mode="r", offset=offset, shape=(n, d), order="F" if fortran else "C"
        )
    return arr


#: float64 candidate values re-scored at once (8 MiB; their differences to the query as much).
BLOCK_ELEMENTS = 1 << 20


def gather_rows(vectors: Any, rows: NDArray[np.int64], dimension: int) -> NDArray[np.float64]:
    """``vectors[rows]`` in float64, reading each distinct row once in file order.

    Parameters
    ----------
    vectors : ndarray or memory-mapped .npy, shape (N, D)
    rows : ndarray of int64, any shape, all in [0, N)

    Returns
    -------
    ndarray, shape rows.shape + (D,), float64
    """
    uniq, inverse = np.unique(rows, return_inverse=True)
    got = np.asarray(vectors[uniq], dtype=np.float64)
    if not np.isfinite(got).all():
        bad = int(uniq[np.flatnonzero(~np.isfinite(got).all(axis=1))[0]])
        raise ValueError(f"vectors row {bad} (used for re-ranking) holds NaN or inf")
    return got[inverse.reshape(rows.shape)].reshape(*rows.shape, dimension)


def exact_scores(
    metric: str, queries: NDArray[np.float64], cand: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Scores (smaller is better) of candidates (nq, R, D) against queries (nq, D), float64.

    ``||q - v||^2`` for L2, ``-<q, v>`` for ip, ``-<q, v> / (||q|| ||v||)`` for cosine.
    """
    if metric == "l2":
        diff = cand - queries[:, None, :]
        out: NDArray[np.float64] = np.einsum("qrd,qrd->qr", diff, diff)
        return out
    ip = np.einsum("qrd,qd->qr", cand, queries)
    if metric == "ip":
        neg: NDArray[np.float64] = -ip
        return neg
    norms = np.sqrt(np.einsum("qrd,qrd->qr", cand, cand)) * np.linalg.norm(queries, axis=1)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        cos: NDArray[np.float64] = np.where(norms > 0, ip / norms, 0.0)
    return -cos


def rerank(
    metric: str,
    queries: NDArray[np.float64],
    positions: NDArray[np.int64],
    fetch: Any,
    k: int,
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Re-score candidate positions exactly and keep the k best of each row.

    Parameters
    ----------
    metric : str
    queries : ndarray, shape (nq, D), float64
    positions : ndarray, shape (nq, R), int64; -1 marks no candidate
    fetch : callable(positions (n,) int64) -> ndarray (n, D) float64
        Vectors of valid positions.
    k : int

    Returns
    -------
    scores : ndarray, shape (nq, k), float64 (inf where no candidate)
    positions : ndarray, shape (nq, k), int64 (-1 where no candidate)
    """
    nq, r = positions.shape
    d = queries.shape[1]
    scores = np.empty((nq, r), dtype=np.float64)
    # blocks of (rows, cols) candidates of D values each, BLOCK_ELEMENTS at most (a row's
    # candidates are cut too when R x D alone passes it)
    cols = max(1, min(r, BLOCK_ELEMENTS // max(1, d)))
    rows = max(1, BLOCK_ELEMENTS // (cols * max(1, d)))
    for a in range(0, nq, rows):
        for c in range(0, r, cols):
            pos = positions[a : a + rows, c : c + cols]
            valid = pos >= 0
            cand = np.zeros((*pos.shape, d), dtype=np.float64)
            cand[valid] = fetch(pos[valid])
            block = exact_scores(metric, queries[a : a + rows], cand)
            block[~valid] = np.inf
            scores[a : a + rows, c : c + cols] = block
    order = np.argsort(scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(positions, order, axis=1)
