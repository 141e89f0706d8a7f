"""The RVQ encoder: one codebook per stage, and encoding and decoding of arrays.

Encoding streams (N, D) inputs in row chunks through the residual loop of
:mod:`viva_glyph.core.search` (greedy, or beam search).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from viva_glyph.checks import (
    as_matrix,
    as_vector,
    check_codes,
    check_norms,
    norm_limit,
    positive_int,
)
from viva_glyph.checks import num_stages as stage_count
from viva_glyph.core import glyph
from viva_glyph.core.beam import EncoderTables, check_beam_size, use_lut
from viva_glyph.core.codebook import Codebook
from viva_glyph.core.config import EncodeSettings, RvqConfig
from viva_glyph.core.io import read_parts, write_model
from viva_glyph.core.nearest import VectorStage, chunk_rows, code_dtype
from viva_glyph.core.search import encode, greedy, greedy_vector
from viva_glyph.core.summary import TrainingSummary

__all__ = ["RvqEncoder", "load", "save"]


#: Squared norm limits (:func:`~viva_glyph.checks.norm_limit`, with a margin for the
#: rounding of ``x @ x``) by compute itemsize: the lean one-vector path's check.
_SQ_LIMITS = {n: norm_limit(t) ** 2 * (1.0 - 1e-9) for n, t in ((4, np.float32), (8, np.float64))}


class _Tokens(Protocol):
    """What :meth:`RvqEncoder.glyph_id` reads of ``RvqTokens``: its indices."""

    @property
    def indices(self) -> Sequence[int]: ...


#: Encoding hands the engine chunks of this many cache-sized row blocks at a time
#: (the engine splits them into pieces over its threads).
ENGINE_CHUNKS = 4


class RvqEncoder:
    """RVQ encoder: one codebook per stage.

    Parameters
    ----------
    codebooks : sequence of Codebook
        One per stage, all of the same dimension D and dtype. Their sizes may
        differ (e.g. 16, 256, 256 for semantic IDs): the config then carries
        them as ``codebook_sizes`` and codes take the dtype of the largest.
    config : RvqConfig, optional
        Must agree with the codebooks; derived from them when omitted.
    training : TrainingSummary, optional
        What fitting recorded (set by :func:`viva_glyph.fit`).
    encoding : EncodeSettings, optional
        How :meth:`encode` encodes when a call does not say (default: greedy); a fit
        records the settings it trained for.

    Attributes
    ----------
    codebooks : tuple of Codebook
    config : RvqConfig
    training : TrainingSummary or None
    encoding : EncodeSettings
    """

    __slots__ = (
        "_scaled",
        "_shift",
        "_stack",
        "_tables",
        "_vector_stages",
        "codebooks",
        "config",
        "encoding",
        "training",
    )

    def __init__(
        self,
        codebooks: Sequence[Codebook],
        config: RvqConfig | None = None,
        *,
        training: TrainingSummary | None = None,
        encoding: EncodeSettings | None = None,
    ) -> None:
        books = tuple(codebooks)
        if not books:
            raise ValueError("an RVQ encoder needs at least one codebook, got none")
        for i, cb in enumerate(books):
            if not isinstance(cb, Codebook):
                raise TypeError(f"codebooks[{i}] must be a Codebook, got {type(cb).__name__}")
        first = books[0]
        for i, cb in enumerate(books[1:], start=1):
            if (cb.dimension, cb.dtype) != (first.dimension, first.dtype):
                raise ValueError(
                    f"codebooks[{i}] is {cb.size} x {cb.dimension} {cb.dtype}, but codebooks[0] "
                    f"is {first.size} x {first.dimension} {first.dtype}: all must match in "
                    "dimension and dtype"
                )
        sizes = tuple(cb.size for cb in books)
        derived = RvqConfig(len(books), first.dimension, max(sizes), codebook_sizes=sizes)
        if config is not None and config != derived:
            raise ValueError(f"config {config} does not match the codebooks ({derived})")
        self.codebooks = books
        self.config = derived
        self.training = training
        if encoding is not None and not isinstance(encoding, EncodeSettings):
            raise TypeError(
                f"encoding must be EncodeSettings or None, got {type(encoding).__name__}"
            )
        self.encoding = EncodeSettings() if encoding is None else encoding
        stack: NDArray[np.floating[Any]] | None = None
        if derived.uniform:
            stack = np.stack([cb.vectors for cb in books])
            stack.setflags(write=False)
        self._stack = stack
        self._tables: EncoderTables | None = None  # built by the first table-path beam search
        self._vector_stages: tuple[VectorStage, ...] | None = None  # by the first lone vector
        # Codebooks so small that squared distances would underflow are searched scaled
        # by a power of two (exact), their inputs too: the same codes as at scale 1.
        self._shift = _tiny_shift(books)
        self._scaled: RvqEncoder | None = None
        if self._shift:
            self._scaled = RvqEncoder(
                [Codebook(np.ldexp(cb.vectors, self._shift), dtype=cb.dtype) for cb in books]
            )

    # -- properties ---------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype[Any]:
        """Compute dtype of the codebooks (float32 or float64)."""
        return self.codebooks[0].dtype

    @property
    def code_dtype(self) -> np.dtype[Any]:
        """dtype of codes: uint8 for K <= 256, uint16 for K <= 65536, else int32
        (K the largest codebook size)."""
        return code_dtype(self.config.codebook_size)

    @property
    def codebook_array(self) -> NDArray[np.floating[Any]]:
        """All codebooks as one read-only array, shape (M, K, D).

        Raises
        ------
        ValueError
            When the stages have different sizes (use :attr:`codebooks`).
        """
        if self._stack is None:
            raise ValueError(
                f"codebooks of sizes {self.config.codebook_sizes} do not stack into one "
                "(M, K, D) array: use .codebooks (one (K_m, D) codebook per stage)"
            )
        return self._stack

    def __repr__(self) -> str:
        c = self.config
        sizes = "" if c.uniform else f", codebook_sizes={c.codebook_sizes}"
        beam = "" if self.encoding.beam_size == 1 else f", beam_size={self.encoding.beam_size}"
        return (
            f"RvqEncoder(num_stages={c.num_stages}, dimension={c.dimension}, "
            f"codebook_size={c.codebook_size}{sizes}, dtype={self.dtype}{beam})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RvqEncoder):
            return NotImplemented
        return (
            self.config == other.config
            and self.codebooks == other.codebooks
            and self.encoding == other.encoding
        )

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # The codebooks and the record alone: the stacked array and the table-path cache
        # are rebuilt where they are needed, not shipped (Dask sends encoders to workers).
        return (_rebuild, (self.codebooks, self.training, self.encoding))

    def _row_chunks(self, n: int, scale: int = 1) -> Iterator[slice]:
        rows = chunk_rows(self.config.codebook_size, self.config.dimension, self.dtype.itemsize)
        rows *= scale
        for start in range(0, n, rows):
            yield slice(start, min(start + rows, n))

    # -- encoding -----------------------------------------------------------------
    def encode(
        self, X: ArrayLike, num_stages: int | None = None, *, beam_size: int | None = None
    ) -> NDArray[Any]:
        """Residual codes of each vector (greedy, or beam search).

        Parameters
        ----------
        X : array_like, shape (N, D) or (D,)
            Any real dtype; memory maps are streamed, never loaded whole.
        num_stages : int, optional
            Encode only the first m <= M stages.
        beam_size : int, optional
            1 is the greedy encoder; B > 1 keeps the B best partial reconstructions
            per vector at every stage (:mod:`viva_glyph.core.beam`). Default: the
            model's :attr:`encoding` (what it was trained for; greedy when it was
            fitted greedy or not fitted here).

        Returns
        -------
        codes : ndarray, shape (N, m) or (m,), dtype :attr:`code_dtype`
        """
        beam = self.encoding.beam_size if beam_size is None else beam_size
        if num_stages is None and type(beam) is int and beam == 1:
            quick = self._quick_vector(X, rows=True)
            if quick is not None:  # one vector, greedy: the lean path
                found = greedy_vector(quick[0], quick[1], self._vector_plan())[0]
                codes1 = np.array(found, dtype=self.code_dtype)
                return codes1 if quick[2] else codes1[None, :]
        codes, _ = self._encode(X, num_stages, beam_size, errors=False)
        return codes[0] if np.ndim(X) == 1 else codes

    def _quick_vector(
        self, X: object, *, rows: bool = False
    ) -> tuple[NDArray[np.float64], float, bool] | None:
        """``X`` as one float64 vector followed by a 1 (D + 1,), ``||x||^2`` and whether
        ``X`` was 1-D, when it plainly is one vector: a list, tuple or array of real numbers
        of shape (D,) (or (1, D) with ``rows``), finite and well within the norm limit, for
        a model searched unscaled. None sends it to the full checks (which name what is
        wrong, if anything)."""
        d = self.config.dimension
        if self._shift:
            return None
        if isinstance(X, np.ndarray):
            arr = X
        elif isinstance(X, (list, tuple)) and (len(X) == d or (rows and len(X) == 1)):
            try:  # a list of many rows is not converted here, only by the full checks
                arr = np.asarray(X)
            except (ValueError, TypeError):
                return None
        else:
            return None
        flat = arr.shape == (d,)
        if arr.dtype.kind not in "iuf" or not (flat or (rows and arr.shape == (1, d))):
            return None
        x = np.empty(d + 1)  # the vector in float64, then a 1 (greedy_vector's form)
        x[:d] = arr.reshape(d)
        x[d] = 1.0
        with np.errstate(over="ignore", invalid="ignore"):  # huge values: inf, refused below
            sq = float(x[:d].dot(x[:d]))
        if not sq <= _SQ_LIMITS[self.dtype.itemsize]:  # NaN, inf, or near the norm limit
            return None
        return x, sq, flat

    def _vector_plan(self) -> tuple[VectorStage, ...]:
        """The stages of :func:`~viva_glyph.core.search.greedy_vector`, built once."""
        if self._vector_stages is None:
            self._vector_stages = tuple(VectorStage(cb) for cb in self.codebooks)
        return self._vector_stages

    def encode_vector(self, x: ArrayLike) -> tuple[tuple[int, ...], float]:
        """Greedy codes of one vector and its error ``||x - decode(codes)||``: the
        lean path of one vector at a time (no chunks, no thread pool).

        Parameters
        ----------
        x : array_like, shape (D,)
            Any real dtype; finite, within the norm limit.

        Returns
        -------
        codes : tuple of int
            One code per stage.
        error : float
        """
        quick = self._quick_vector(x)
        if quick is not None:
            codes1, sq_error = greedy_vector(quick[0], quick[1], self._vector_plan())
            return tuple(codes1), math.sqrt(sq_error)
        row = as_vector(x, self.config.dimension)[None, :]  # float64, finite
        row = self._search_rows(row, 0, "input")
        codes, residual = greedy(row, self._engine.codebooks)
        error = float(np.ldexp(np.sqrt(residual.sq_errors()[0]), -self._shift))
        return tuple(codes[0].tolist()), error

    def encode_with_errors(
        self, X: ArrayLike, num_stages: int | None = None, *, beam_size: int | None = None
    ) -> tuple[NDArray[Any], NDArray[np.float64]]:
        """Codes and per-vector errors ``||x - decode(codes)||`` in one pass.

        Parameters are those of :meth:`encode`.

        Returns
        -------
        codes : ndarray, shape (N, m), dtype :attr:`code_dtype`
        errors : ndarray, shape (N,), float64
        """
        codes, errors = self._encode(X, num_stages, beam_size, errors=True)
        assert errors is not None
        return codes, errors

    def _encode(
        self, X: ArrayLike, num_stages: int | None, beam_size: int | None, *, errors: bool
    ) -> tuple[NDArray[Any], NDArray[np.float64] | None]:
        x = as_matrix(X, self.config.dimension)
        if beam_size is None:
            beam_size = self.encoding.beam_size
        m = stage_count(num_stages, self.config.num_stages)
        engine = self._engine
        books = engine.codebooks[:m]
        beam = check_beam_size(self.config, positive_int(beam_size, "beam_size"), m, self.dtype)
        n = x.shape[0]
        codes = np.empty((n, m), dtype=self.code_dtype)
        errs = np.empty(n, dtype=np.float64) if errors else None
        lut = beam > 1 and use_lut(self.config, beam, self.dtype.itemsize)
        if lut and engine._tables is None:
            engine._tables = EncoderTables(engine.codebooks)
        for rows in self._row_chunks(n, ENGINE_CHUNKS):
            chunk = self._search_rows(x[rows], rows.start)
            if beam == 1:  # greedy: exact decisions, float64 errors
                out = None if errs is None else errs[rows]
                codes[rows] = encode(books, chunk, 1, sq_errors=out)
                if out is not None:
                    np.sqrt(out, out=out)
                    if self._shift:
                        np.ldexp(out, -self._shift, out=out)
                continue
            chunk = chunk.astype(self.dtype, copy=False)
            codes[rows] = encode(books, chunk, beam, lut=lut, tables=engine._tables)
            if errs is not None:
                diff = chunk.astype(np.float64) - engine._decode_rows(codes[rows], np.float64)
                errs[rows] = np.ldexp(np.sqrt(np.einsum("nd,nd->n", diff, diff)), -self._shift)
        return codes, errs

    @property
    def _engine(self) -> RvqEncoder:
        """The encoder that searches: this one, or its copy scaled by 2^_shift."""
        return self if self._scaled is None else self._scaled

    def _search_rows(self, chunk: NDArray[Any], start: int, name: str = "X") -> NDArray[Any]:
        """Rows checked (finite, within the norm limit of the codebooks' dtype) and, for
        a model searched scaled by 2^_shift, scaled alike (exact) within that limit."""
        check_norms(chunk, start, self.dtype, name)
        if not self._shift:
            return chunk
        rows64 = np.asarray(chunk, dtype=np.float64)
        limit = float(np.ldexp(norm_limit(self.dtype), -self._shift))
        scale = np.abs(rows64).max(axis=1)
        if float(scale.max(initial=0.0)) * np.sqrt(rows64.shape[1]) > limit:
            unit = np.divide(rows64, scale[:, None], out=np.zeros_like(rows64),
                             where=scale[:, None] > 0)  # fmt: skip
            norms = scale * np.sqrt(np.einsum("nd,nd->n", unit, unit))  # no overflow
            bad = np.flatnonzero(norms > limit)
            if bad.size:
                row = int(bad[0])
                raise ValueError(
                    f"{name} row {start + row} has norm {norms[row]:.4g}, above the limit "
                    f"{limit:.4g} of this model, whose codes are searched scaled by "
                    f"2^{self._shift} (its largest code entry is "
                    f"{_top_entry(self.codebooks):.4g}), beyond which squared distances overflow"
                )
        return np.ldexp(rows64, self._shift)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this encoder to a model file (safetensors), atomically: a temporary
        file in the same folder, renamed once complete (see :mod:`viva_glyph.core.io`).

        Raises
        ------
        ValueError
            The training summary is beyond the format's limits.
        OSError
            The file cannot be written (nothing is left behind).
        """
        write_model(path, self.config, self.codebooks, self.training, self.encoding)

    # -- glyph ids ----------------------------------------------------------------
    def glyph_id(self, tokens: _Tokens | Sequence[int] | ArrayLike) -> int:
        """Glyph id of one token sequence, the codebook sizes taken from this encoder.

        ``encoder.glyph_id(tokens)`` equals ``tokens.to_glyph_id(K)`` (or the
        per-stage sizes) for this encoder's K: the indices read as a mixed-radix
        number, stage 1 most significant (see :mod:`viva_glyph.core.glyph`).

        Parameters
        ----------
        tokens : RvqTokens, sequence of int or array_like of int, shape (m,), 1 <= m <= M
            Fewer than M indices are the first m stages (as ``encode(...,
            num_stages=m)`` gives them); their id uses the first m sizes.

        Returns
        -------
        int
            Exact, in ``[0, K_1 * ... * K_m)`` (a Python int, never truncated).

        Raises
        ------
        ValueError
            More indices than stages, or an index outside its stage's codebook.
        TypeError
            Non-integer indices.
        """
        arr = np.asarray(getattr(tokens, "indices", tokens))
        if arr.ndim != 1:
            raise ValueError(
                f"tokens must be one sequence of indices, shape (m,), got shape {arr.shape} "
                "(glyph_ids takes (N, m) codes)"
            )
        c = self.config
        row = check_codes(arr, c.num_stages, c.stage_sizes, "tokens", vector=True)[0]
        return glyph.glyph_id(row.tolist(), c.stage_sizes[: len(row)])

    def glyph_ids(self, codes: ArrayLike) -> NDArray[np.uint64]:
        """Glyph ids of many token sequences, the codebook sizes taken from this encoder.

        Equals ``viva_glyph.core.glyph.codes_to_glyph_ids(codes, sizes)`` with this
        encoder's per-stage sizes (their first m for m columns).

        Parameters
        ----------
        codes : array_like of int, shape (N, m), 1 <= m <= M
            As :meth:`encode` gives them.

        Returns
        -------
        ndarray, shape (N,), uint64

        Raises
        ------
        ValueError
            A code outside its stage's codebook (naming the row), more columns
            than stages, or ids beyond uint64 (a product of sizes above 2**64:
            use :func:`viva_glyph.core.glyph.pack_codes`).
        """
        arr = check_codes(codes, self.config.num_stages, self.config.stage_sizes)
        return glyph.codes_to_glyph_ids(arr, self.config.stage_sizes[: arr.shape[1]])

    def codes_from_glyph_ids(self, ids: ArrayLike, num_stages: int | None = None) -> NDArray[Any]:
        """Codes of glyph ids: the inverse of :meth:`glyph_ids`.

        Parameters
        ----------
        ids : array_like of int, shape (N,)
        num_stages : int, optional
            m, when the ids were made from the first m stages only (default M).

        Returns
        -------
        codes : ndarray, shape (N, m), dtype :attr:`code_dtype`

        Raises
        ------
        ValueError
            An id outside ``[0, K_1 * ... * K_m)``.
        TypeError
            Ids that are not a 1-D integer array.
        """
        sizes = self.config.stage_sizes[: stage_count(num_stages, self.config.num_stages)]
        return glyph.glyph_ids_to_codes(ids, sizes).astype(self.code_dtype, copy=False)

    # -- decoding -----------------------------------------------------------------
    def decode(
        self, codes: ArrayLike, *, dtype: DTypeLike | None = None
    ) -> NDArray[np.floating[Any]]:
        """Vectors from codes; fewer than M columns decodes the first stages only.

        Parameters
        ----------
        codes : array_like of int, shape (N, m) or (m,), 1 <= m <= M
        dtype : float32 or float64, optional
            dtype the entries are summed in and returned; default :attr:`dtype`
            (float64 sums a float32 model's entries without rounding).

        Returns
        -------
        ndarray, shape (N, D) or (D,), dtype ``dtype``
        """
        arr = self._check_codes(codes)
        dt = self.dtype if dtype is None else np.dtype(dtype)
        if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64, got {dt}")
        out = np.empty((arr.shape[0], self.config.dimension), dtype=dt)
        for rows in self._row_chunks(arr.shape[0]):
            out[rows] = self._decode_rows(arr[rows], dt)
        return out[0] if np.ndim(codes) == 1 else out

    def decode_vector(self, codes: Sequence[int]) -> NDArray[np.float64]:
        """One vector from its codes, summed in float64: the lean path of one vector at a
        time (``decode(codes, dtype=np.float64)`` of one row, the same sums).

        Parameters
        ----------
        codes : sequence of int, length 1 <= m <= M
            One code per stage, for the first m stages.

        Returns
        -------
        ndarray, shape (D,), float64
        """
        books = self.codebooks
        if (
            isinstance(codes, (list, tuple))
            and 0 < len(codes) <= len(books)
            and all(
                type(i) is int and 0 <= i < cb.size for i, cb in zip(codes, books, strict=False)
            )
        ):
            out = books[0].vectors64[codes[0]].copy()
            for cb, i in zip(books[1:], codes[1:], strict=False):
                out += cb.vectors64[i]
            return out
        given: ArrayLike = codes
        if isinstance(codes, (list, tuple)) and all(type(i) is int for i in codes):
            given = np.array(codes, dtype=np.int64)  # (0,) too: the checks name the count
        decoded = self.decode(given, dtype=np.float64)  # names what is wrong
        if decoded.ndim != 1:
            raise ValueError(f"codes must be one row of codes, got shape {np.shape(codes)}")
        return decoded.astype(np.float64, copy=False)

    def _check_codes(self, codes: ArrayLike) -> NDArray[Any]:
        c = self.config
        sizes = c.codebook_size if c.uniform else c.stage_sizes
        return check_codes(codes, c.num_stages, sizes, vector=True)

    def _decode_rows(self, codes: NDArray[Any], dtype: DTypeLike) -> NDArray[Any]:
        """Sum of the chosen entries, accumulated in ``dtype``, shape (n, D)."""
        wide = np.dtype(dtype) != self.dtype  # float64 sums of a float32 model
        stack = [cb.vectors64 if wide else cb.vectors for cb in self.codebooks]
        out: NDArray[Any] = stack[0][codes[:, 0]]
        for stage in range(1, codes.shape[1]):
            out += stack[stage][codes[:, stage]]
        return out


def load(path: str | os.PathLike[str]) -> RvqEncoder:
    """Read an encoder written by :meth:`RvqEncoder.save`.

    Parameters
    ----------
    path : str or PathLike

    Returns
    -------
    RvqEncoder
        Codebooks in the stored dtype; ``training`` restored when present.

    Raises
    ------
    ModelFormatError
        For anything that is not a sound model file: another format, a folder,
        pipe or device, truncated or corrupted, another version, shapes that
        disagree with the config, non-finite values, JSON nested too deep.
    OSError
        When the file cannot be read (missing, no permission).
    """
    books, config, training, encoding = read_parts(path)
    return RvqEncoder(books, config, training=training, encoding=encoding)


def save(encoder: RvqEncoder, path: str | os.PathLike[str]) -> None:
    """Write ``encoder`` to a model file, atomically (:meth:`RvqEncoder.save`).

    Raises
    ------
    TypeError
        ``encoder`` is not an RvqEncoder.
    """
    if not isinstance(encoder, RvqEncoder):
        raise TypeError(f"encoder must be an RvqEncoder, got {type(encoder).__name__}")
    encoder.save(path)


def _rebuild(
    codebooks: tuple[Codebook, ...], training: TrainingSummary | None, encoding: EncodeSettings
) -> RvqEncoder:
    """An encoder from its pickled parts (see ``RvqEncoder.__reduce__``)."""
    return RvqEncoder(codebooks, training=training, encoding=encoding)


def _tiny_shift(books: Sequence[Codebook]) -> int:
    """0, or the power of two that brings the largest code entry's magnitude into [0.5, 1)
    when it is so small (below 2^(min_exp / 4): 2^-255 for float64, 2^-31 for float32)
    that squared distances would lose bits to underflow."""
    top = _top_entry(books)
    if top == 0.0 or top >= 2.0 ** (np.finfo(books[0].dtype).minexp / 4):
        return 0
    return -int(np.frexp(top)[1])


def _top_entry(books: Sequence[Codebook]) -> float:
    """Largest magnitude of a code entry (norms of tiny codes underflow, entries do not)."""
    return max(float(np.abs(cb.vectors).max()) for cb in books)
