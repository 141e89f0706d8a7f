"""Pieces of the SQLite ID store: its schema, the model fingerprint, glyph numbers, keys."""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from viva_glyph.semantic._model import SemanticIds

__all__ = [
    "FORMAT",
    "TABLES",
    "VERSION",
    "busy",
    "check_model",
    "keys_text",
    "locked",
    "model_fingerprint",
    "same_sql",
]

FORMAT = "viva-glyph-idstore"
VERSION = "1"
TABLES = {
    "meta": "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "ids": """CREATE TABLE ids (
    glyph INTEGER NOT NULL,
    suffix INTEGER NOT NULL,
    key TEXT UNIQUE,
    PRIMARY KEY (glyph, suffix)
) WITHOUT ROWID""",
}


def same_sql(a: str | None, b: str) -> bool:
    return a is not None and " ".join(a.split()) == " ".join(b.split())


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


def busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def check_model(ids: object) -> None:
    if not isinstance(ids, SemanticIds):
        raise TypeError(f"ids must be a SemanticIds model, got {type(ids).__name__}")


def keys_text(keys: Sequence[str | int], n: int) -> list[str]:
    if isinstance(keys, (str, bytes)) or not isinstance(keys, (Sequence, np.ndarray)):
        raise TypeError(f"keys must be a sequence of str or int, got {type(keys).__name__}")
    if len(keys) != n:
        raise ValueError(f"keys must hold one key per row: {n} rows, got {len(keys)} keys")
    names = []
    for i, k in enumerate(keys):
        if isinstance(k, (str, np.str_)):
            try:
                k.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"key {i} {k[:40]!r} is not valid UTF-8 text ({exc.reason}), "
                    "which SQLite stores"
                ) from None
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


P = ParamSpec("P")
R = TypeVar("R")


def locked(method: Callable[Concatenate[Any, P], R]) -> Callable[Concatenate[Any, P], R]:
    """Run a store's ``method`` holding its ``_lock`` (threads share its one connection).

    SQLite's errors become an OSError (full disk, read-only file, I/O error, a lock
    held past the timeout) or a ValueError (a corrupt file, text that is not UTF-8);
    the method's own transaction has been rolled back by then.
    """

    def run(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._lock:
            if self._closed and method.__name__ != "close":
                raise ValueError(f"the ID store {self.path} is closed")
            try:
                return method(self, *args, **kwargs)
            except sqlite3.OperationalError as exc:  # full disk, read-only file, I/O error, lock
                text = str(exc)
                if "could not decode" in text.lower():  # a stored key that is not UTF-8 text
                    raise ValueError(f"{self.path} is corrupt: {text}") from None
                if busy(exc):
                    why = f" is locked by another process ({text})"
                elif "readonly" in text.lower():
                    why = f" is read-only ({text})"
                else:
                    why = f": {text}"
                raise OSError(f"ID store {self.path}{why}; nothing was changed") from None
            except sqlite3.DatabaseError as exc:
                raise ValueError(f"{self.path} is corrupt: {exc}") from None
            except UnicodeDecodeError as exc:  # a stored key that is not UTF-8 text
                raise ValueError(
                    f"{self.path} is corrupt: it holds text that is not UTF-8 ({exc.reason})"
                ) from None

    functools.update_wrapper(run, method)
    return run
