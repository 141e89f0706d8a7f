"""Executors of the k-means and training passes: a matrix as leaves, a map, a tree.

A :class:`Rows` is an (n, w) matrix held as *leaves* of a fixed number of rows
(the last may be shorter), with a map over the leaves and a reduction of
their results in a fixed tree (:func:`tree_reduce`, fan-in :data:`FANIN`).
Algorithms written against it (:mod:`viva_glyph.train.kmeans`,
:mod:`viva_glyph.train.stages`) run the same arithmetic on any executor:
:class:`ArrayRows` runs the leaves on the in-process thread pool;
``viva_glyph.dask`` runs blocks of ``FANIN**j`` whole leaves on a cluster and
the upper levels of the same tree as a graph.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from viva_glyph.threads import default_threads, parallel_map, single_blas_thread

__all__ = ["FANIN", "ArrayRows", "Rows", "add_all", "map_leaves", "tree_reduce"]

T = TypeVar("T")
R = TypeVar("R")

#: Children per node of the reduction tree over leaves.
FANIN = 8


def tree_reduce(parts: Sequence[T], merge: Callable[..., T]) -> T:
    """Reduce ``parts`` level by level, ``merge`` taking up to :data:`FANIN` neighbours."""
    level = list(parts)
    while len(level) > 1:
        level = [merge(*level[i : i + FANIN]) for i in range(0, len(level), FANIN)]
    return level[0]


def map_leaves(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``[fn(item) for item in items]`` on the thread pool, BLAS held to one thread."""
    with single_blas_thread():
        return parallel_map(fn, items, default_threads())


class Rows(Protocol):
    """An (n, w) matrix held as leaves of a fixed row count (the last may be shorter)."""

    @property
    def shape(self) -> tuple[int, int]:
        """(n, w)."""
        ...

    def map(self, fn: Callable[[NDArray[Any]], NDArray[np.float32]], width: int) -> Rows:
        """The matrix of ``fn(leaf)`` for every leaf, (n, width) float32, same leaves."""
        ...

    def reduce(self, fn: Callable[[NDArray[Any]], T], merge: Callable[..., T]) -> T:
        """:func:`tree_reduce` of ``fn(leaf)`` over the leaves in order."""
        ...

    def take(self, rows: NDArray[np.intp]) -> NDArray[Any]:
        """Rows ``rows`` (sorted global indices) as an ndarray."""
        ...


class ArrayRows:
    """:class:`Rows` in memory: a list of leaf arrays, run on the thread pool."""

    def __init__(self, leaves: Sequence[NDArray[Any]], leaf: int) -> None:
        self.leaves = list(leaves)
        self.leaf = leaf

    @classmethod
    def of(cls, x: NDArray[Any], leaf: int) -> ArrayRows:
        """Leaves of ``leaf`` rows of ``x`` (views)."""
        return cls([x[s : s + leaf] for s in range(0, x.shape[0], leaf)], leaf)

    @property
    def shape(self) -> tuple[int, int]:
        return sum(len(v) for v in self.leaves), int(self.leaves[0].shape[1])

    def map(self, fn: Callable[[NDArray[Any]], NDArray[np.float32]], width: int) -> ArrayRows:
        return ArrayRows(map_leaves(fn, self.leaves), self.leaf)

    def reduce(self, fn: Callable[[NDArray[Any]], T], merge: Callable[..., T]) -> T:
        return tree_reduce(map_leaves(fn, self.leaves), merge)

    def take(self, rows: NDArray[np.intp]) -> NDArray[Any]:
        which, at = np.divmod(rows, self.leaf)
        out = np.empty((len(rows), self.shape[1]), dtype=self.leaves[0].dtype)
        for i in np.unique(which):
            sel = which == i
            out[sel] = self.leaves[int(i)][at[sel]]
        return out


def add_all(*parts: Any) -> Any:
    """Sum of ``parts`` from left to right (a node of the reduction tree)."""
    return functools.reduce(lambda a, b: a + b, parts)
