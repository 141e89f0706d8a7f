# mypy: disable-error-code="no-untyped-call"
# (dask and distributed ship without complete type hints.)
"""Search a collection of index shards (one file each) on a Dask cluster.

Each shard file is opened (memory-mapped) and searched by one task; one more
task merges the per-shard top-k of every query. Shards hold disjoint ids (checked:
see :func:`check_disjoint`); when
they are the consecutive parts of one index, the result equals that index's
(neighbours with equal scores come in shard order, as they come in storage
order from one index). A task whose worker dies is run again by the scheduler
on another worker (dask.distributed reschedules the tasks of lost workers);
``retries`` re-runs tasks that raise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from viva_glyph.checks import as_matrix, optional_import, positive_int, require_finite

__all__ = ["check_disjoint", "merge_results", "search_shards"]

PathLike = str | os.PathLike[str]


def _search_one(
    path: str, queries: NDArray[Any], k: int, nprobe: int
) -> tuple[str, int, NDArray[np.float32], NDArray[np.int64], tuple[int, int] | None]:
    """One shard's top k, with the range of its ids (None when it is empty)."""
    from viva_glyph.index._file import load

    index = load(path)
    probe = min(nprobe, index.nlist) if index.nlist else 1
    d, i = index.search(queries, min(k, max(len(index), 1)), nprobe=probe)  # no empty slots
    ids = index.store.ids
    span = (int(ids.min()), int(ids.max())) if len(index) else None
    return index.metric, index.dimension, d, i, span


def check_disjoint(spans: Sequence[tuple[int, int] | None], files: Sequence[str]) -> None:
    """Raise ValueError naming two shards that hold one id.

    Shards whose id ranges do not overlap (the consecutive parts of one index)
    cost nothing more; the ids of shards whose ranges overlap are read and
    sorted together (16 bytes an id).
    """
    from viva_glyph.files import same_file
    from viva_glyph.index._file import load

    order = sorted((span[0], span[1], s) for s, span in enumerate(spans) if span is not None)
    groups: list[list[int]] = []
    end = 0
    for lo, hi, s in order:
        if groups and lo <= end:
            groups[-1].append(s)
            end = max(end, hi)
        else:
            groups.append([s])
            end = hi
    for group in groups:
        if len(group) < 2:
            continue
        parts = [np.asarray(load(files[s]).store.ids) for s in group]
        ids = np.concatenate(parts)
        owner = np.repeat(np.array(group), [p.shape[0] for p in parts])
        rank = np.argsort(ids, kind="stable")
        srt = ids[rank]
        same = np.flatnonzero(srt[1:] == srt[:-1])
        if same.size:
            j = int(same[0])
            a, b = (files[int(owner[rank[j]])], files[int(owner[rank[j + 1]])])
            twice = " (the same file twice)" if same_file(a, b) else ""
            raise ValueError(
                f"shards {a} and {b} both hold id {int(srt[j])}{twice}; the shards of one "
                "search must hold disjoint ids"
            )


def _rerank_merged(
    merged: tuple[NDArray[np.float32], NDArray[np.int64]],
    metric: str,
    queries: NDArray[np.float64],
    vectors: str,
    k: int,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Re-score the merged candidates exactly from the originals (row = id), keep k."""
    from viva_glyph.index._rerank import gather_rows, open_vectors, rerank

    arr = open_vectors(vectors, queries.shape[1])
    ids = merged[1]
    if ids.size and int(ids.max()) >= arr.shape[0]:
        raise ValueError(f"{vectors} has {arr.shape[0]} rows but id {int(ids.max())} was found")
    q = queries
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1)[:, None]

    def fetch(rows: NDArray[np.int64]) -> NDArray[np.float64]:
        return gather_rows(arr, rows, q.shape[1])

    scores, best = rerank(metric, q, ids, fetch, min(k, ids.shape[1]))
    dist = scores.astype(np.float32)
    return _pad(metric, dist if metric == "l2" else -dist, best, k)


def _top(
    parts: Sequence[tuple[str, int, NDArray[np.float32], NDArray[np.int64]]], k: int
) -> tuple[str, NDArray[np.float32], NDArray[np.int64]]:
    """The metric and the best min(k, columns) of the shards' lists, stable, empty last."""
    metrics = {(p[0], p[1]) for p in parts}
    if len(metrics) != 1:
        raise ValueError(f"shards disagree on metric/dimension: {sorted(metrics)}")
    metric = parts[0][0]
    d = np.concatenate([p[2] for p in parts], axis=1)
    i = np.concatenate([p[3] for p in parts], axis=1)
    key = d.astype(np.float64) if metric == "l2" else -d.astype(np.float64)
    key[i < 0] = np.inf
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return metric, np.take_along_axis(d, order, axis=1), np.take_along_axis(i, order, axis=1)


def _pad(
    metric: str, d: NDArray[np.float32], i: NDArray[np.int64], k: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """(nq, k) results: empty slots (-1, inf or -inf) past the columns given."""
    dist = np.full((d.shape[0], k), np.inf if metric == "l2" else -np.inf, dtype=np.float32)
    ids = np.full((d.shape[0], k), -1, dtype=np.int64)
    dist[:, : d.shape[1]], ids[:, : d.shape[1]] = d, i
    return dist, ids


def merge_results(
    parts: Sequence[tuple[str, int, NDArray[np.float32], NDArray[np.int64]]], k: int
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Merge per-shard ``(metric, dimension, distances, ids)`` into one top-k per query.

    Equal scores keep shard order (a stable sort); empty slots (-1) go last, and
    fill the columns the shards together cannot (fewer than k vectors).
    """
    return _pad(*_top(parts, k), k)


def _merge(
    parts: Sequence[tuple[str, int, NDArray[np.float32], NDArray[np.int64], Any]],
    k: int,
    files: Sequence[str],
    pad: bool,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """Check that the shards hold disjoint ids, merge their lists (padded to k or not)."""
    check_disjoint([p[4] for p in parts], files)
    metric, d, i = _top([p[:4] for p in parts], k)
    return _pad(metric, d, i, k) if pad else (d, i)


def search_shards(
    paths: Sequence[PathLike] | PathLike,
    Q: ArrayLike,
    k: int,
    *,
    nprobe: int = 1,
    rerank: int | None = None,
    vectors: PathLike | None = None,
    retries: int = 2,
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The k nearest neighbours of each query over all shards, searched in parallel.

    Parameters
    ----------
    paths : sequence of str or PathLike, or one path
        Index files (:meth:`RvqIndex.save`) with disjoint ids (two shards that
        hold one id raise ValueError, see :func:`check_disjoint`); every worker
        must be able to read them.
    Q : array_like, shape (nq, D) or (D,)
    k, nprobe, rerank :
        As :meth:`RvqIndex.search` (nprobe is capped at each shard's nlist).
    vectors : path of a ``.npy``, optional
        Originals addressed by id; needed for re-ranking, which re-scores the
        best ``rerank`` candidates of all shards together (as one index would).
    retries : int
        Times a failing shard task is re-run (dask.distributed only).

    Returns
    -------
    distances : ndarray, shape (nq, k), float32
    ids : ndarray, shape (nq, k), int64

    Runs on the current dask.distributed client, else on dask's local scheduler.
    """
    compute = optional_import("dask.base", "search_shards").compute
    delayed = optional_import("dask.delayed", "search_shards").delayed

    from viva_glyph.dask import current_client

    if isinstance(paths, (str, os.PathLike)):  # one shard (a str is no sequence of paths)
        paths = [paths]
    if isinstance(paths, bytes) or not isinstance(paths, Sequence):
        raise TypeError(
            f"paths must be a sequence of index file paths (or one path), got "
            f"{type(paths).__name__}"
        )
    files = [os.fspath(p) for p in paths]
    if not files:
        raise ValueError("search_shards needs at least one shard file, got none")
    q = np.ascontiguousarray(as_matrix(Q, None, "Q"), dtype=np.float64)
    require_finite(q, 0, "Q")
    k = positive_int(k, "k")
    nprobe = positive_int(nprobe, "nprobe")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    depth = k
    if rerank is not None:
        depth = positive_int(rerank, "rerank")
        if depth < k or vectors is None:
            raise ValueError(
                f"sharded re-ranking needs rerank >= k ({k}) and vectors= (a .npy path), "
                f"got rerank={depth}, vectors={vectors!r}"
            )
    if rerank is not None:  # refused here, before any task: a pipe, another format or width
        from viva_glyph.index._rerank import open_vectors

        open_vectors(vectors, q.shape[1])  # type: ignore[arg-type]
    shared = delayed(q, pure=True)  # one key, shipped once per worker
    search = delayed(_search_one, pure=True)
    parts = [search(f, shared, depth, nprobe) for f in files]
    merged = delayed(_merge, pure=True)(parts, depth, files, rerank is None)
    if rerank is not None:
        metric = delayed(lambda p: p[0], pure=True)(parts[0])
        final = delayed(_rerank_merged, pure=True)
        merged = final(merged, metric, shared, os.fspath(vectors), k)  # type: ignore[arg-type]
    client = current_client()
    if client is None:
        (result,) = compute(merged)
    else:
        result = client.compute(merged, retries=retries).result()
    d, i = result
    return d, i
