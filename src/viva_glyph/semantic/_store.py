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

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from viva_glyph.core.nearest import code_dtype
from viva_glyph.semantic._checks import str_keys
from viva_glyph.semantic._model import SemanticIds, rows_source
from viva_glyph.semantic._storeparts import (
    FORMAT,
    TABLES,
    VERSION,
    busy,
    check_model,
    keys_text,
    locked,
    model_fingerprint,
    same_sql,
)
from viva_glyph.semantic._unique import SuffixRangeError, glyph_keys, key_digits

__all__ = ["IdStore", "model_fingerprint"]


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
        self._lock = threading.RLock()  # one connection, shared by the threads that use it
        self._closed = False
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.number)):
            raise TypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
        if not math.isfinite(timeout) or timeout < 0:
            raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout!r}")
        timeout = float(timeout)
        try:
            self._con = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:  # a folder, a missing folder, no permission
            raise ValueError(f"cannot open the ID store {self.path}: {exc}") from None
        deadline, pause = time.monotonic() + timeout, 0.01
        while True:
            try:
                self._open()
                return
            except sqlite3.OperationalError as exc:
                # Switching to WAL or creating the schema while another process does the
                # same can say "locked" at once, without SQLite's busy handler: retry.
                if busy(exc) and time.monotonic() < deadline:
                    time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
                    pause = min(pause * 2, 0.5)
                    continue
                self._con.close()
                if busy(exc):
                    raise ValueError(
                        f"{self.path} is locked by another process (waited {timeout:g} s; "
                        "raise IdStore's timeout)"
                    ) from None
                if "unable to open" in str(exc):
                    raise ValueError(f"cannot open the ID store {self.path}: {exc}") from None
                raise ValueError(f"{self.path} is not a viva-glyph ID store: {exc}") from None
            except sqlite3.DatabaseError as exc:
                self._con.close()
                raise ValueError(f"{self.path} is not a viva-glyph ID store: {exc}") from None
            except ValueError:
                self._con.close()
                raise

    def _tables(self) -> dict[str, str | None]:
        rows = self._con.execute("SELECT name, sql FROM sqlite_master WHERE type='table'")
        return dict(rows.fetchall())

    def _foreign(self, why: str) -> ValueError:
        return ValueError(f"{self.path} is a SQLite database but not a viva-glyph ID store ({why})")

    def _open(self) -> None:
        con = self._con
        tables = self._tables()
        if tables and not {"meta", "ids"} <= set(tables):
            raise self._foreign(f"tables {sorted(tables)[:5]}")
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("BEGIN IMMEDIATE")
        try:
            tables = self._tables()  # again: another process may have made the store meanwhile
            if not tables:
                for sql in TABLES.values():
                    con.execute(sql)  # not executescript: it would commit
                con.executemany(
                    "INSERT INTO meta VALUES (?, ?)", [("format", FORMAT), ("version", VERSION)]
                )
            else:
                for name, sql in TABLES.items():
                    if not same_sql(tables.get(name), sql):
                        raise self._foreign(f"table {name} is not the ID store's")
                fmt = dict(con.execute("SELECT name, value FROM meta").fetchall())
                if fmt.get("format") != FORMAT or fmt.get("version") != VERSION:
                    raise self._foreign(
                        f"format {fmt.get('format')!r}, version {fmt.get('version')!r}"
                    )
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise

    @locked
    def close(self) -> None:
        """Close the connection (again: nothing)."""
        self._closed = True
        self._con.close()

    def __enter__(self) -> IdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @locked
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
            raise self._other_model(row[0], fp)

    def _other_model(self, stored: str, fp: str) -> ValueError:
        return ValueError(
            f"{self.path} was made with another model (fingerprint {stored[:12]}..., "
            f"this model is {fp[:12]}...): use the model the store was made with"
        )

    def _corrupt(self, why: str) -> ValueError:
        return ValueError(f"{self.path} is corrupt: {why}")

    def _stored(self, ids: SemanticIds, key: str, glyph: object, suffix: object) -> None:
        """Check one stored row read back (integers inside the model's glyph and suffix ranges)."""
        total = math.prod(ids.codebook_sizes)
        if (
            type(glyph) is not int
            or type(suffix) is not int
            or not 0 <= glyph < total
            or not 0 <= suffix < ids.suffix_size
        ):
            raise self._corrupt(
                f"key {key[:80]!r} holds glyph {glyph!r} and suffix {suffix!r}, expected "
                f"integers in [0, {total}) and [0, {ids.suffix_size})"
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
        check_model(ids)
        x = rows_source(X, ids.dimension)
        n = x.shape[0]
        names = keys_text(keys, n)
        codes, err = ids.codes_and_errors(x, balanced=balanced)
        glyph = glyph_keys(codes, ids.codebook_sizes, "the ID store (SQLite)")
        out_glyph, out_suffix = self._assign(ids, names, glyph, err)
        result = np.empty((n, ids.levels + 1), dtype=code_dtype(max(ids.radices)))
        result[:, : ids.levels] = key_digits(out_glyph, ids.codebook_sizes)
        result[:, ids.levels] = out_suffix
        return result

    @locked
    def _assign(
        self, ids: SemanticIds, names: list[str], glyph: NDArray[np.int64], err: NDArray[np.float64]
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The transaction of :meth:`assign`: (glyph, suffix) of every key."""
        n = len(names)
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
                self._stored(ids, names[pos], g, s)
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
        return out_glyph, out_suffix

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
        for g_top, s_top in top.items():
            if type(s_top) is not int or not 0 <= s_top < suffix_size:
                raise self._corrupt(f"glyph {g_top!r} holds suffix {s_top!r}")
        key_arr = str_keys([names[i] for i in new])
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

    @locked
    def get(self, keys: Sequence[str | int], ids: SemanticIds) -> NDArray[Any]:
        """Stored IDs (N, L + 1) of ``keys``; KeyError naming the first unknown key."""
        check_model(ids)
        names = keys_text(keys, len(keys))
        bound = self._con.execute("SELECT value FROM meta WHERE name = 'model'").fetchone()
        if bound is not None and bound[0] != model_fingerprint(ids):
            raise self._other_model(bound[0], model_fingerprint(ids))
        out = np.empty((len(names), ids.levels + 1), dtype=np.int64)
        for i, name in enumerate(names):
            row = self._con.execute(
                "SELECT glyph, suffix FROM ids WHERE key = ?", (name,)
            ).fetchone()
            if row is None:
                raise KeyError(f"key {name!r} is not in {self.path}")
            self._stored(ids, name, *row)
            glyph = np.array([row[0]], dtype=np.int64)
            out[i, : ids.levels] = key_digits(glyph, ids.codebook_sizes)[0]
            out[i, ids.levels] = row[1]
        return out

    @locked
    def retire(self, keys: Sequence[str | int]) -> int:
        """Forget the keys (their IDs stay taken forever); returns how many were stored."""
        names = keys_text(keys, len(keys))
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

    @locked
    def check(self) -> None:
        """Raise ValueError unless SQLite's integrity check passes and every glyph's
        suffixes are exactly 0..count-1."""
        con = self._con
        status = con.execute("PRAGMA integrity_check").fetchone()[0]
        if status != "ok":
            raise ValueError(f"{self.path} failed SQLite's integrity check: {status}")
        glyphs, suffixes = 1 << 63, 1 << 63
        layout = con.execute("SELECT value FROM meta WHERE name = 'layout'").fetchone()
        if layout is not None:
            try:
                spec = json.loads(layout[0])
                glyphs, suffixes = math.prod(spec["codebook_sizes"]), int(spec["suffix_size"])
            except (ValueError, TypeError, KeyError):
                raise self._corrupt(f"layout {layout[0][:80]!r} is not the store's") from None
        wrong = con.execute(
            "SELECT key, glyph, suffix FROM ids WHERE typeof(glyph) != 'integer' "
            "OR typeof(suffix) != 'integer' OR typeof(key) NOT IN ('text', 'null') "
            "OR glyph < 0 OR glyph >= ? OR suffix < 0 OR suffix >= ? LIMIT 1",
            (min(glyphs, (1 << 63) - 1), min(suffixes, (1 << 63) - 1)),
        ).fetchone()
        if wrong is not None:
            raise self._corrupt(
                f"key {wrong[0]!r} holds glyph {wrong[1]!r} and suffix {wrong[2]!r}, expected "
                f"integers in [0, {glyphs}) and [0, {suffixes})"
            )
        bad = con.execute(
            "SELECT glyph FROM ids GROUP BY glyph HAVING MAX(suffix) + 1 != COUNT(*) LIMIT 1"
        ).fetchone()
        if bad is not None:
            raise ValueError(f"{self.path}: glyph {bad[0]} has a gap in its suffixes")
