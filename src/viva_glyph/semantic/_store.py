"""A persistent ID store on SQLite: stable unique IDs for items arriving over time.

Table ``ids(glyph, suffix, key)``: ``glyph`` is the item's L codes as one
mixed-radix integer, ``(glyph, suffix)`` is the primary key (so no two rows can
ever share an ID) and ``key`` is unique. IDs are never deleted (``retire``
only clears the key), and a new item of a glyph gets ``max(suffix) + 1`` of
that glyph, so no key ever gets an ID that another key has or had.

Every :meth:`IdStore.assign` is one ``BEGIN IMMEDIATE`` transaction in WAL
mode: concurrent assigners (threads or processes) queue on SQLite's write
lock, and a process killed in the middle leaves the store as it was before
that call (SQLite rolls the unfinished transaction back on the next open).
The embeddings are encoded before the lock is taken.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from viva_glyph._kernels import code_dtype
from viva_glyph.semantic._model import SemanticIds, rows_source
from viva_glyph.semantic._unique import SuffixRangeError

__all__ = ["IdStore", "model_fingerprint"]

FORMAT = "viva-glyph-idstore"
VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ids (
    glyph INTEGER NOT NULL,
    suffix INTEGER NOT NULL,
    key TEXT UNIQUE,
    PRIMARY KEY (glyph, suffix)
) WITHOUT ROWID;
"""


def model_fingerprint(ids: SemanticIds) -> str:
    """SHA-256 of everything that decides an item's ID: codebooks, metric, sizes, normalisation."""
    h = hashlib.sha256()
    settings: list[Any] = [
        list(ids.codebook_sizes),
        ids.dimension,
        ids.metric,
        ids.beam_size,
        ids.suffix_size,
    ]
    if ids.normalize_residuals:  # appended only when set: older stores keep their fingerprint
        settings += [True, list(ids.residual_scales or ())]
    h.update(json.dumps(settings).encode())
    for book in ids.codebooks:
        h.update(np.ascontiguousarray(book.vectors, dtype="<f4").tobytes())
    return h.hexdigest()


def _glyphs(codes: NDArray[Any], sizes: tuple[int, ...]) -> NDArray[np.int64]:
    total = 1
    out = np.zeros(codes.shape[0], dtype=np.int64)
    for j, k in enumerate(sizes):
        total *= k
        if total >= 1 << 63:
            raise ValueError(f"the glyph space {sizes} does not fit in SQLite's 63-bit integers")
        out = out * k + codes[:, j].astype(np.int64)
    return out


def _digits(glyphs: NDArray[np.int64], sizes: tuple[int, ...]) -> NDArray[np.int64]:
    out = np.empty((glyphs.shape[0], len(sizes)), dtype=np.int64)
    rest = glyphs.copy()
    for j in range(len(sizes) - 1, -1, -1):
        out[:, j] = rest % sizes[j]
        rest //= sizes[j]
    return out


def _busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class IdStore:
    """Persistent, process-safe unique semantic IDs on SQLite.

    Parameters
    ----------
    path : str or PathLike
        SQLite file; created when missing.
    timeout : float
        Seconds to wait for another process's write lock.

    Raises
    ------
    ValueError
        When ``path`` is not a SQLite database, or is one that is not an ID store.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 600.0) -> None:
        self.path = os.fspath(path)
        self._con = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        deadline, pause = time.monotonic() + timeout, 0.01
        while True:
            try:
                self._open()
                return
            except sqlite3.OperationalError as exc:
                # Switching to WAL or creating the schema while another process does the
                # same can say "locked" at once, without SQLite's busy handler: retry.
                if _busy(exc) and time.monotonic() < deadline:
                    time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
                    pause = min(pause * 2, 0.5)
                    continue
                self._con.close()
                if _busy(exc):
                    raise ValueError(
                        f"{self.path} is locked by another process (waited {timeout:g} s; "
                        "raise IdStore's timeout)"
                    ) from None
                raise ValueError(f"{self.path} is not a viva-glyph ID store: {exc}") from None
            except sqlite3.DatabaseError as exc:
                self._con.close()
                raise ValueError(f"{self.path} is not a viva-glyph ID store: {exc}") from None
            except ValueError:
                self._con.close()
                raise

    def _open(self) -> None:
        con = self._con
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and not {"meta", "ids"} <= tables:
            raise ValueError(
                f"{self.path} is a SQLite database but not a viva-glyph ID store "
                f"(tables {sorted(tables)[:5]})"
            )
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    con.execute(statement)  # not executescript: it would commit
            fmt = dict(con.execute("SELECT name, value FROM meta").fetchall())
            if not fmt:
                con.executemany(
                    "INSERT INTO meta VALUES (?, ?)", [("format", FORMAT), ("version", VERSION)]
                )
            elif fmt.get("format") != FORMAT or fmt.get("version") != VERSION:
                raise ValueError(
                    f"{self.path} is a SQLite database but not a viva-glyph ID store "
                    f"(format {fmt.get('format')!r}, version {fmt.get('version')!r})"
                )
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection."""
        self._con.close()

    def __enter__(self) -> IdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return int(
            self._con.execute("SELECT COUNT(*) FROM ids WHERE key IS NOT NULL").fetchone()[0]
        )

    def _check_model(self, ids: SemanticIds) -> None:
        """Inside a write transaction: bind the store to ``ids`` or check it is that model."""
        fp = model_fingerprint(ids)
        row = self._con.execute("SELECT value FROM meta WHERE name = 'model'").fetchone()
        if row is None:
            layout = json.dumps(
                {"codebook_sizes": list(ids.codebook_sizes), "suffix_size": ids.suffix_size}
            )
            self._con.executemany(
                "INSERT INTO meta VALUES (?, ?)", [("model", fp), ("layout", layout)]
            )
        elif row[0] != fp:
            raise ValueError(
                f"{self.path} was made with another model (fingerprint {row[0][:12]}..., "
                f"this model is {fp[:12]}...): use the model the store was made with"
            )

    def assign(
        self,
        ids: SemanticIds,
        X: ArrayLike,
        keys: Sequence[str | int],
        *,
        balanced: bool = False,
    ) -> NDArray[Any]:
        """Unique IDs of the items ``keys``: stored ones kept, new ones added.

        Parameters
        ----------
        ids : SemanticIds
            The model; the first assign binds the store to it.
        X : array_like, shape (N, D)
            Embeddings of the items (rows of already stored keys are not used).
        keys : sequence of str or int, length N
            Distinct item keys (ints are stored as their decimal text).
        balanced : bool
            Balanced assignment over this batch (default: each item's own codes,
            so an ID does not depend on the batch it arrived in).

        Returns
        -------
        ndarray, shape (N, L + 1)
            Codes and suffix of each key.

        Raises
        ------
        SuffixRangeError
            When a glyph would need a suffix >= ``ids.suffix_size``; nothing is stored.
        """
        x = rows_source(X, ids.dimension)
        n = x.shape[0]
        names = _keys(keys, n)
        codes, err = ids.codes_and_errors(x, balanced=balanced)
        glyph = _glyphs(codes, ids.codebook_sizes)
        out_glyph = np.empty(n, dtype=np.int64)
        out_suffix = np.empty(n, dtype=np.int64)
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            self._check_model(ids)
            con.execute("CREATE TEMP TABLE IF NOT EXISTS batch (key TEXT PRIMARY KEY, pos INTEGER)")
            con.execute("DELETE FROM batch")
            con.executemany("INSERT INTO batch VALUES (?, ?)", zip(names, range(n), strict=True))
            known = np.zeros(n, dtype=bool)
            for pos, g, s in con.execute(
                "SELECT b.pos, i.glyph, i.suffix FROM batch b JOIN ids i ON i.key = b.key"
            ):
                known[pos], out_glyph[pos], out_suffix[pos] = True, g, s
            new = np.flatnonzero(~known)
            if new.size:
                self._add(new, glyph, err, names, ids.suffix_size, out_glyph, out_suffix)
            con.execute("DELETE FROM batch")
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        result = np.empty((n, ids.levels + 1), dtype=code_dtype(max(ids.radices)))
        result[:, : ids.levels] = _digits(out_glyph, ids.codebook_sizes)
        result[:, ids.levels] = out_suffix
        return result

    def _add(
        self,
        new: NDArray[np.intp],
        glyph: NDArray[np.int64],
        err: NDArray[np.float64],
        names: list[str],
        suffix_size: int,
        out_glyph: NDArray[np.int64],
        out_suffix: NDArray[np.int64],
    ) -> None:
        con = self._con
        g = glyph[new]
        con.execute("CREATE TEMP TABLE IF NOT EXISTS want (glyph INTEGER PRIMARY KEY)")
        con.execute("DELETE FROM want")
        con.executemany("INSERT INTO want VALUES (?)", ((int(v),) for v in np.unique(g)))
        top = dict(
            con.execute(
                "SELECT i.glyph, MAX(i.suffix) FROM ids i JOIN want w ON i.glyph = w.glyph "
                "GROUP BY i.glyph"
            ).fetchall()
        )
        con.execute("DELETE FROM want")
        key_arr = np.array([names[i] for i in new])
        order = np.lexsort((key_arr, err[new], g))  # by glyph, then error, then key
        gs = g[order]
        first = np.ones(gs.size, dtype=bool)
        first[1:] = gs[1:] != gs[:-1]
        idx = np.arange(gs.size)
        rank = idx - np.maximum.accumulate(np.where(first, idx, 0))
        base = np.array([top.get(int(v), -1) + 1 for v in gs], dtype=np.int64)
        suffix = base + rank
        if suffix.max() >= suffix_size:
            worst = int(np.argmax(suffix))
            need = int(suffix[worst]) + 1
            crowded = int((gs == gs[worst]).sum())
            raise SuffixRangeError(
                f"{crowded} new items collided on one glyph that already holds "
                f"{int(base[worst])} IDs, but the suffix range is {suffix_size}: a suffix size "
                f"of {need} would work; nothing was stored"
            )
        rows = new[order]
        out_glyph[rows] = gs
        out_suffix[rows] = suffix
        con.executemany(
            "INSERT INTO ids (glyph, suffix, key) VALUES (?, ?, ?)",
            zip(gs.tolist(), suffix.tolist(), (names[i] for i in rows), strict=True),
        )

    def get(self, keys: Sequence[str | int], ids: SemanticIds) -> NDArray[Any]:
        """Stored IDs (N, L + 1) of ``keys``; KeyError naming the first unknown key."""
        names = _keys(keys, len(keys))
        out = np.empty((len(names), ids.levels + 1), dtype=np.int64)
        for i, name in enumerate(names):
            row = self._con.execute(
                "SELECT glyph, suffix FROM ids WHERE key = ?", (name,)
            ).fetchone()
            if row is None:
                raise KeyError(f"key {name!r} is not in {self.path}")
            out[i, : ids.levels] = _digits(np.array([row[0]], dtype=np.int64), ids.codebook_sizes)[
                0
            ]
            out[i, ids.levels] = row[1]
        return out

    def retire(self, keys: Sequence[str | int]) -> int:
        """Forget the keys (their IDs stay taken forever); returns how many were stored."""
        names = _keys(keys, len(keys))
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            cur = con.executemany("UPDATE ids SET key = NULL WHERE key = ?", ((k,) for k in names))
            count = cur.rowcount
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return int(count)

    def check(self) -> None:
        """Raise ValueError unless SQLite's integrity check passes and every glyph's
        suffixes are exactly 0..count-1."""
        con = self._con
        status = con.execute("PRAGMA integrity_check").fetchone()[0]
        if status != "ok":
            raise ValueError(f"{self.path} failed SQLite's integrity check: {status}")
        bad = con.execute(
            "SELECT glyph FROM ids GROUP BY glyph HAVING MAX(suffix) + 1 != COUNT(*) LIMIT 1"
        ).fetchone()
        if bad is not None:
            raise ValueError(f"{self.path}: glyph {bad[0]} has a gap in its suffixes")


def _keys(keys: Sequence[str | int], n: int) -> list[str]:
    if isinstance(keys, (str, bytes)) or not isinstance(keys, (Sequence, np.ndarray)):
        raise TypeError(f"keys must be a sequence of str or int, got {type(keys).__name__}")
    if len(keys) != n:
        raise ValueError(f"keys must hold one key per row: {n} rows, got {len(keys)} keys")
    names = []
    for i, k in enumerate(keys):
        if isinstance(k, (str, np.str_)):
            names.append(str(k))
        elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            names.append(str(int(k)))
        else:
            raise TypeError(f"key {i} must be str or int, got {type(k).__name__}")
    if len(set(names)) != n:
        seen: set[str] = set()
        dup = next(k for k in names if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"keys must be distinct: {dup!r} appears more than once")
    return names
