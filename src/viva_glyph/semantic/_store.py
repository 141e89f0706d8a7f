"""A persistent ID store on SQLite: stable unique IDs for items arriving over time.

Table ``ids(glyph, suffix, key)``: ``glyph`` is the item's L codes as one
mixed-radix integer, ``(glyph, suffix)`` is the primary key (so no two rows can
ever share an ID) and ``key`` is unique. IDs are never deleted (``retire``
only clears the key), and a new item of a glyph gets ``max(suffix) + 1`` of
that glyph, so no key ever gets an ID that another key has or had.

Every :meth:`IdStore.assign` that adds keys is one ``BEGIN IMMEDIATE``
transaction in WAL mode: concurrent assigners (threads or processes) queue on
SQLite's write lock, and a process killed in the middle leaves the store as it
was before that call (SQLite rolls the unfinished transaction back on the next
open). The embeddings are encoded before the lock is taken. Opening, reading
and an assign of stored keys only take no lock (WAL readers never wait for a
writer), so they also work on a store this process may not write.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.request import pathname2url

import numpy as np
from numpy.typing import ArrayLike, NDArray

from viva_glyph.core.nearest import code_dtype
from viva_glyph.files import not_regular
from viva_glyph.semantic._checks import check_codes, tie_order
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
from viva_glyph.semantic._tokens import format_tokens, parse_tokens
from viva_glyph.semantic._unique import SuffixRangeError, glyph_keys, key_digits

__all__ = ["IdStore", "model_fingerprint"]

R = TypeVar("R")


def _ranges(ids: SemanticIds) -> tuple[int, int]:
    """Number of glyphs and of suffixes of a model: the ranges of its stored rows."""
    return math.prod(ids.codebook_sizes), ids.suffix_size


def _cannot_write(exc: sqlite3.OperationalError) -> bool:
    """SQLite's errors of a file or folder this process may not write."""
    text = str(exc).lower()
    return "readonly" in text or "read-only" in text or "unable to open" in text


class IdStore:
    """Persistent, process-safe unique semantic IDs on SQLite.

    Parameters
    ----------
    path : str or PathLike
        SQLite file; created when missing.
    timeout : float
        Seconds to wait for another process's write lock.
    create : bool
        Make the store when ``path`` is missing or empty (default); False only
        opens an existing store (for reading: nothing is created).

    Raises
    ------
    ValueError
        When ``path`` is not a SQLite database, or is one that is not an ID store.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, timeout: float = 600.0, create: bool = True
    ) -> None:
        self.path = os.fspath(path)
        if not isinstance(create, (bool, np.bool_)):
            raise TypeError(f"create must be a bool, got {type(create).__name__}")
        if os.path.exists(self.path):
            what = not_regular(os.stat(self.path).st_mode)
            if what is not None:
                raise ValueError(f"cannot open the ID store {self.path}: it is {what}")
        elif not create:
            raise ValueError(f"{self.path} is not a viva-glyph ID store: it does not exist")
        self._lock = threading.RLock()  # one connection, shared by the threads that use it
        self._closed = False
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.number)):
            raise TypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
        if not math.isfinite(timeout) or timeout < 0:
            raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout!r}")
        self._timeout = float(timeout)
        #: True when the store was opened read-only (a file or folder this process may not
        #: write): reads work, a write raises OSError saying so.
        self.read_only = False
        if os.path.exists(self.path) and not os.access(self.path, os.W_OK):
            # a file this process may not write: opened read-write, SQLite made a -wal and
            # a -shm beside it with the file's read-only mode, and left them there, which
            # blocked every later write once the file was writable again
            self._con = self._read_only()
        else:
            self._con = self._connect(self.path, uri=False)
        try:
            tables = self._tables()
        except sqlite3.OperationalError as exc:
            if not _cannot_write(exc):
                self._con.close()
                raise self._open_error(exc) from None
            self._con.close()  # reading a WAL store needs files beside it: read-only
            self._con = self._read_only()
            tables = self._safely(self._tables)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            self._con.close()
            raise self._open_error(exc) from None
        if not self.read_only and not os.access(self.path, os.W_OK):
            self.read_only = True
        try:
            if tables:
                self._safely(lambda: self._verify(tables))  # reads only: no lock taken
            elif not create:
                raise ValueError(f"{self.path} is not a viva-glyph ID store: it holds no tables")
            else:
                self._create()
            self._con.execute("PRAGMA synchronous=FULL")
        except BaseException:
            self._con.close()
            raise

    def _connect(self, target: str, *, uri: bool) -> sqlite3.Connection:
        try:
            return sqlite3.connect(
                target,
                timeout=self._timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=uri,
            )
        except sqlite3.Error as exc:  # a folder, a missing folder, no permission
            raise ValueError(f"cannot open the ID store {self.path}: {exc}") from None

    def _read_only(self) -> sqlite3.Connection:
        """A read-only connection to a store whose file or folder this process cannot write.

        SQLite reads a WAL store through a shared-memory file beside it; where that
        cannot be made and no write-ahead log is left, the file is read as immutable
        (no other process can write it there either)."""
        self.read_only = True
        url = "file:" + pathname2url(os.path.abspath(self.path))
        wal, shm = self.path + "-wal", self.path + "-shm"
        if (
            not os.path.exists(wal)
            and not os.path.exists(shm)
            and not os.access(self.path, os.W_OK)
        ):
            # no process has it open in WAL mode, and this one may not write it: read it as
            # is, without making side files that would outlive this connection
            return self._connect(url + "?mode=ro&immutable=1", uri=True)
        con = self._connect(url + "?mode=ro", uri=True)
        try:
            con.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            return con
        except sqlite3.OperationalError as exc:
            con.close()
            if not _cannot_write(exc):
                raise self._open_error(exc) from None
        if os.path.exists(wal) and os.path.getsize(wal) > 0:
            raise OSError(
                f"ID store {self.path} is read-only here and its write-ahead log {wal} cannot "
                "be read without writing beside it; open it where the folder is writable"
            )
        return self._connect(url + "?mode=ro&immutable=1", uri=True)

    def _safely(self, read: Callable[[], R]) -> R:
        """``read()`` with SQLite's and decoding errors of a bad file as one clear error."""
        try:
            return read()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise self._open_error(exc) from None

    def _open_error(self, exc: BaseException) -> Exception:
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and "could not decode" not in text.lower():
            if busy(exc):
                return OSError(
                    f"ID store {self.path} is locked by another process (waited "
                    f"{self._timeout:g} s; raise IdStore's timeout)"
                )
            if _cannot_write(exc):
                return OSError(f"ID store {self.path} is read-only ({text}); nothing was changed")
            if "unable to open" in text:
                return ValueError(f"cannot open the ID store {self.path}: {text}")
        if isinstance(exc, UnicodeDecodeError):
            text = f"text that is not UTF-8 in its schema or rows ({exc.reason})"
        return ValueError(f"{self.path} is not a viva-glyph ID store, or is corrupt: {text}")

    def _tables(self) -> dict[str, str | None]:
        rows = self._con.execute("SELECT name, sql FROM sqlite_master WHERE type='table'")
        return dict(rows.fetchall())

    def _foreign(self, why: str) -> ValueError:
        return ValueError(f"{self.path} is a SQLite database but not a viva-glyph ID store ({why})")

    def _verify(self, tables: dict[str, str | None]) -> None:
        """That an existing database is an ID store of this format (reads only)."""
        if not {"meta", "ids"} <= set(tables):
            raise self._foreign(f"tables {sorted(tables)[:5]}")
        for name, sql in TABLES.items():
            if not same_sql(tables.get(name), sql):
                raise self._foreign(f"table {name} is not the ID store's")
        fmt = dict(self._con.execute("SELECT name, value FROM meta").fetchall())
        if fmt.get("format") != FORMAT or fmt.get("version") != VERSION:
            raise self._foreign(f"format {fmt.get('format')!r}, version {fmt.get('version')!r}")

    def _create(self) -> None:
        """Make the schema in an empty database, waiting within the timeout for the write
        lock (another process may be making it at the same moment)."""
        if self.read_only:
            raise OSError(f"ID store {self.path} is read-only and empty: cannot make the store")
        con = self._con
        deadline, pause = time.monotonic() + self._timeout, 0.01
        while True:
            try:
                # Switching to WAL or creating the schema while another process does the
                # same can say "locked" at once, without SQLite's busy handler: retry.
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("BEGIN IMMEDIATE")
                try:
                    tables = self._tables()  # again: another process may have made it
                    if not tables:
                        for sql in TABLES.values():
                            con.execute(sql)  # not executescript: it would commit
                        con.executemany(
                            "INSERT INTO meta VALUES (?, ?)",
                            [("format", FORMAT), ("version", VERSION)],
                        )
                    else:
                        self._verify(tables)
                    con.execute("COMMIT")
                except BaseException:
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    raise
                return
            except sqlite3.OperationalError as exc:
                if busy(exc) and time.monotonic() < deadline:
                    time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
                    pause = min(pause * 2, 0.5)
                    continue
                raise self._open_error(exc) from None
            except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
                raise self._open_error(exc) from None

    @locked
    def close(self) -> None:
        """Close the connection (again: nothing)."""
        self._closed = True
        self._con.close()

    def __enter__(self) -> IdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    @locked
    def radices(self) -> tuple[int, ...] | None:
        """Ranges of the stored IDs' positions: the codebook sizes, then the suffix range,
        as the store was last bound (None before the first :meth:`assign`)."""
        layout = self._layout()
        return None if layout is None else (*layout[0], layout[1])

    def tokens(self, uids: ArrayLike) -> list[str]:
        """Token strings (``<a_3><b_12><c_0>``) of IDs, by the store's recorded ranges."""
        return format_tokens(uids, self._recorded())

    def parse(self, texts: Sequence[str] | str) -> NDArray[np.int64]:
        """IDs (N, L + 1) of token strings, by the store's recorded ranges."""
        return parse_tokens(texts, self._recorded())

    def _recorded(self) -> tuple[int, ...]:
        radices = self.radices
        if radices is None:
            raise ValueError(f"{self.path} holds no IDs yet: it records no codebook sizes")
        return radices

    @locked
    def __len__(self) -> int:
        return int(
            self._con.execute("SELECT COUNT(*) FROM ids WHERE key IS NOT NULL").fetchone()[0]
        )

    def _model_state(self, ids: SemanticIds) -> str:
        """How the store stands to the model ``ids``: ``"bound"`` to it, ``"unbound"`` (no
        model yet), or ``"resized"``: bound to the same model with another suffix range
        that numbers every stored suffix (a store may move to a wider range, as a
        :class:`SuffixRangeError` advises). ValueError for another model."""
        fp = model_fingerprint(ids)
        row = self._con.execute("SELECT value FROM meta WHERE name = 'model'").fetchone()
        if row is None:
            return "unbound"
        if row[0] == fp:
            return "bound"
        stored = self._layout()
        if (
            stored is not None
            and stored[1] != ids.suffix_size
            and model_fingerprint(ids.with_suffix_size(stored[1])) == row[0]
        ):
            top = self._con.execute("SELECT MAX(suffix) FROM ids").fetchone()[0]
            if isinstance(top, int) and top >= ids.suffix_size:
                raise ValueError(
                    f"{self.path} holds suffixes up to {top}, beyond this model's suffix range "
                    f"{ids.suffix_size}: use ids.with_suffix_size({top + 1}) or wider"
                )
            return "resized"
        raise self._other_model(row[0], fp)

    def _layout(self) -> tuple[tuple[int, ...], int] | None:
        """The codebook sizes and suffix range the store was last bound with (None: no model
        yet); ValueError when the record is not the store's."""
        row = self._con.execute("SELECT value FROM meta WHERE name = 'layout'").fetchone()
        if row is None:
            return None
        try:
            spec = json.loads(row[0])
            sizes = tuple(spec["codebook_sizes"])
            suffixes = spec["suffix_size"]
            ok = (
                sizes
                and all(type(k) is int and k > 0 for k in sizes)
                and type(suffixes) is int
                and suffixes > 0
                and math.prod(sizes) < 1 << 63
            )
        except (ValueError, TypeError, KeyError, RecursionError):
            ok = False
        if not ok:
            raise self._corrupt(f"layout {str(row[0])[:80]!r} is not the store's")
        return sizes, suffixes

    def _check_model(self, ids: SemanticIds) -> None:
        """Inside a write transaction: bind the store to ``ids`` (or, for the same model of
        another suffix range, move it to ``ids``) or check it is that model."""
        state = self._model_state(ids)
        if state == "bound":
            return
        layout = json.dumps(
            {"codebook_sizes": list(ids.codebook_sizes), "suffix_size": ids.suffix_size}
        )
        self._con.executemany(
            "INSERT OR REPLACE INTO meta VALUES (?, ?)",
            [("model", model_fingerprint(ids)), ("layout", layout)],
        )

    def _other_model(self, stored: str, fp: str) -> ValueError:
        return ValueError(
            f"{self.path} was made with another model (fingerprint {stored[:12]}..., "
            f"this model is {fp[:12]}...): use the model the store was made with"
        )

    def _corrupt(self, why: str) -> ValueError:
        return ValueError(f"{self.path} is corrupt: {why}")

    def _stored(self, ranges: tuple[int, int], key: str, glyph: object, suffix: object) -> None:
        """Check one stored row read back: integers in [0, glyphs) and [0, suffixes), the
        ``ranges`` of the model (or of the store's layout)."""
        total, suffixes = ranges
        if (
            type(glyph) is not int
            or type(suffix) is not int
            or not 0 <= glyph < total
            or not 0 <= suffix < suffixes
        ):
            raise self._corrupt(
                f"key {key[:80]!r} holds glyph {glyph!r} and suffix {suffix!r}, expected "
                f"integers in [0, {total}) and [0, {suffixes})"
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
            Distinct item keys (ints are stored as their decimal text). New items
            of one glyph are numbered as :meth:`SemanticIds.unique` numbers them:
            by error, equal errors by key (by value when every key is an int, else
            by text), so a first assign into an empty store gives unique's IDs.
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
        ties = tie_order(keys, names)
        codes, err = ids.codes_and_errors(x, balanced=balanced)
        glyph = glyph_keys(codes, ids.codebook_sizes, "the ID store (SQLite)")
        out_glyph, out_suffix = self._assign(ids, names, ties, glyph, err)
        result = np.empty((n, ids.levels + 1), dtype=code_dtype(max(ids.radices)))
        result[:, : ids.levels] = key_digits(out_glyph, ids.codebook_sizes)
        result[:, ids.levels] = out_suffix
        return result

    @locked
    def _assign(
        self,
        ids: SemanticIds,
        names: list[str],
        ties: NDArray[Any],
        glyph: NDArray[np.int64],
        err: NDArray[np.float64],
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """The transactions of :meth:`assign`: (glyph, suffix) of every key.

        Stored keys are read first without the write lock (a batch of stored keys is
        a read, also on a read-only store); new keys are added in one ``BEGIN
        IMMEDIATE`` transaction, which reads the stored keys again."""
        con = self._con
        con.execute("BEGIN")
        try:
            bound = self._model_state(ids)
            known, out_glyph, out_suffix = self._known(_ranges(ids), names)
        finally:
            if con.in_transaction:  # a read: nothing to keep
                con.execute("ROLLBACK")
        if bound != "unbound" and known.all():
            return out_glyph, out_suffix
        if self.read_only:
            raise OSError(
                f"ID store {self.path} is read-only: {int((~known).sum())} new key(s) such as "
                f"{names[int(np.argmin(known))][:80]!r} cannot be stored; nothing was changed"
            )
        con.execute("BEGIN IMMEDIATE")
        try:
            self._check_model(ids)
            known, out_glyph, out_suffix = self._known(_ranges(ids), names)
            new = np.flatnonzero(~known)
            if new.size:
                self._add(new, glyph, err, names, ties, ids.suffix_size, out_glyph, out_suffix)
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return out_glyph, out_suffix

    #: Keys looked up per query (SQLite allows at least 999 parameters).
    _QUERY_KEYS = 900

    def _known(
        self, ranges: tuple[int, int], names: list[str]
    ) -> tuple[NDArray[np.bool_], NDArray[np.int64], NDArray[np.int64]]:
        """Which keys are stored, and their (glyph, suffix) where they are (each row
        checked against ``ranges``: see :meth:`_stored`)."""
        n = len(names)
        known = np.zeros(n, dtype=bool)
        out_glyph = np.zeros(n, dtype=np.int64)
        out_suffix = np.zeros(n, dtype=np.int64)
        where = {name: i for i, name in enumerate(names)}
        step = self._QUERY_KEYS
        for a in range(0, n, step):
            part = names[a : a + step]
            marks = ",".join("?" * len(part))
            rows = self._con.execute(
                f"SELECT key, glyph, suffix FROM ids WHERE key IN ({marks})", part
            ).fetchall()
            for key, g, suffix in rows:
                pos = where[key]
                self._stored(ranges, key, g, suffix)
                known[pos], out_glyph[pos], out_suffix[pos] = True, g, suffix
        return known, out_glyph, out_suffix

    def _add(
        self,
        new: NDArray[np.intp],
        glyph: NDArray[np.int64],
        err: NDArray[np.float64],
        names: list[str],
        ties: NDArray[Any],
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
        order = np.lexsort((ties[new], err[new], g))  # by glyph, then error, then key
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
                f"of {need} would work (ids.with_suffix_size({need}) is this model with that "
                "range, and this store takes it); nothing was stored",
                needed=need,
            )
        rows = new[order]
        out_glyph[rows] = gs
        out_suffix[rows] = suffix
        con.executemany(
            "INSERT INTO ids (glyph, suffix, key) VALUES (?, ?, ?)",
            zip(gs.tolist(), suffix.tolist(), (names[i] for i in rows), strict=True),
        )

    @locked
    def get(self, keys: Sequence[str | int], ids: SemanticIds | None = None) -> NDArray[Any]:
        """The stored IDs of keys (key -> ID).

        Parameters
        ----------
        keys : sequence of str or int
        ids : SemanticIds, optional
            The store's model, checked to be it; by default the store's own record
            of its codebook sizes and suffix range is used.

        Returns
        -------
        ndarray, shape (N, L + 1), int64

        Raises
        ------
        KeyError
            Naming the first key that is not stored (or was retired).
        """
        if ids is not None:
            check_model(ids)
        names = keys_text(keys, len(keys))
        con = self._con
        con.execute("BEGIN")
        try:
            sizes, suffixes = self._ranges_of(ids)
            known, glyph, suffix = self._known((math.prod(sizes), suffixes), names)
        finally:
            if con.in_transaction:  # a read: nothing to keep
                con.execute("ROLLBACK")
        if not known.all():
            raise KeyError(f"key {names[int(np.argmin(known))]!r} is not in {self.path}")
        out = np.empty((len(names), len(sizes) + 1), dtype=np.int64)
        out[:, : len(sizes)] = key_digits(glyph, sizes)
        out[:, len(sizes)] = suffix
        return out

    @locked
    def keys_of(
        self, uids: ArrayLike | Sequence[str] | str, ids: SemanticIds | None = None
    ) -> list[str | None]:
        """The keys of stored IDs (ID -> key): None for an ID whose key was retired.

        Parameters
        ----------
        uids : array_like of int, shape (N, L + 1) or (L + 1,), or token strings
            IDs as :meth:`assign` returns them, or as ``SemanticIds.tokens`` writes
            them (``"<a_3><b_12><c_0>"``).
        ids : SemanticIds, optional
            The store's model, checked to be it; by default the store's own record
            of its codebook sizes and suffix range is used.

        Raises
        ------
        KeyError
            Naming the first ID the store never gave.
        ValueError
            For IDs of another shape or out of the ranges.
        """
        if ids is not None:
            check_model(ids)
        con = self._con
        con.execute("BEGIN")
        try:
            sizes, suffixes = self._ranges_of(ids)
            radices = (*sizes, suffixes)
            texts = [uids] if isinstance(uids, str) else uids
            if isinstance(texts, Sequence) and texts and all(isinstance(u, str) for u in texts):
                codes = parse_tokens([str(u) for u in texts], radices)
            else:
                codes = check_codes(uids, radices)
            if codes.shape[1] != len(radices):
                raise ValueError(
                    f"IDs must have {len(radices)} positions ({len(sizes)} codes and a suffix), "
                    f"got {codes.shape[1]}"
                )
            glyph = glyph_keys(codes[:, : len(sizes)], sizes, "the ID store (SQLite)")
            pairs = list(zip(glyph.tolist(), codes[:, -1].tolist(), strict=True))
            found: dict[tuple[int, int], str | None] = {}
            step = self._QUERY_KEYS // 2
            for a in range(0, len(pairs), step):
                part = pairs[a : a + step]
                values = "VALUES " + ",".join("(?, ?)" for _ in part)
                flat = [v for pair in part for v in pair]
                query = f"SELECT glyph, suffix, key FROM ids WHERE (glyph, suffix) IN ({values})"
                for g, suffix, key in con.execute(query, flat):
                    if key is not None and not isinstance(key, str):
                        raise self._corrupt(f"glyph {g} suffix {suffix} holds key {key!r}")
                    found[(g, suffix)] = key
        finally:
            if con.in_transaction:  # a read: nothing to keep
                con.execute("ROLLBACK")
        for row, pair in enumerate(pairs):
            if pair not in found:
                text = format_tokens(codes[row : row + 1], radices)[0]
                raise KeyError(f"ID {text} is not in {self.path}")
        return [found[pair] for pair in pairs]

    def _ranges_of(self, ids: SemanticIds | None) -> tuple[tuple[int, ...], int]:
        """Codebook sizes and suffix range to read rows with: the model's (checked to be
        the store's), else the store's record (one glyph of one ID for an empty store)."""
        if ids is not None:
            self._model_state(ids)
            return ids.codebook_sizes, ids.suffix_size
        layout = self._layout()
        return layout if layout is not None else ((1,), 1)

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
