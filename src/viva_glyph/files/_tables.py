"""Tables of numbers: CSV/TSV text and Parquet, read with one set of rules.

- Every value of a data row must be a number; a missing value (an empty
  field, a Parquet null) or a non-number is an error naming the row and the
  column, never skipped or guessed.
- Text: the first row is a header exactly when none of its fields is a number
  (``header=True`` / ``False`` overrides); a UTF-8 byte-order mark is ignored.
- Parquet: one list column holding the vectors, or numeric columns, one per
  dimension; by default the only list column, else every integer or float
  column (columns of other types, e.g. an id string, are left out).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from viva_glyph.checks import optional_import

__all__ = ["ParquetRows", "is_number", "read_text"]

_CHUNK_ROWS = 1 << 14


def is_number(text: str) -> bool:
    """Whether a text field is a number: what Python's ``float()`` reads (spaces allowed)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def _bad_field(p: Path, line: int, row: Sequence[str], first: bool) -> ValueError:
    col = next(j for j, v in enumerate(row) if not is_number(v))
    value = row[col]
    what = "is empty" if not value.strip() else f"{value[:40]!r} is not a number"
    hint = " (if it is a header line, pass --header or header=True)" if first else ""
    return ValueError(
        f"{p}: line {line}, column {col + 1} {what}; every field must be a number{hint}"
    )


def read_text(p: Path, delimiter: str, header: bool | None = None) -> NDArray[np.float64]:
    """Read a CSV (``","``) or TSV (``"\\t"``) file of numbers, shape (N, D), float64.

    Parameters
    ----------
    p : Path
    delimiter : str
    header : bool, optional
        Whether the first row is a header. Default: exactly when none of its
        fields is a number.

    Raises
    ------
    ValueError
        For an empty file, no data rows, rows of different lengths, a missing
        or non-numeric field (naming its line and column), text that is not
        UTF-8 or malformed CSV (such as a field longer than the csv module's
        limit of 131,072 characters).
    """
    chunks: list[NDArray[np.float64]] = []
    rows: list[list[float]] = []
    width: int | None = None
    names: list[str] | None = None
    with open(p, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            for row in reader:
                if not row:
                    continue  # a blank line
                line = reader.line_num
                if width is None and names is None:
                    is_header = not any(is_number(v) for v in row) if header is None else header
                    if is_header:
                        names = row
                        continue
                if width is None:
                    width = len(row)
                    if names is not None and len(names) != width:
                        raise ValueError(
                            f"{p}: line {line} has {width} fields, the header {len(names)}"
                        )
                if len(row) != width:
                    raise ValueError(f"{p}: line {line} has {len(row)} fields, expected {width}")
                try:
                    rows.append([float(v) for v in row])
                except ValueError:
                    first = names is None and not rows and not chunks
                    raise _bad_field(p, line, row, first) from None
                if len(rows) == _CHUNK_ROWS:
                    chunks.append(np.array(rows, dtype=np.float64))
                    rows = []
        except csv.Error as exc:
            raise ValueError(f"{p}: line {reader.line_num}: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{p}: not UTF-8 text ({exc.reason})") from None
    if width is None:
        raise ValueError(f"{p} holds a header line but no rows" if names else f"{p} is empty")
    if rows:
        chunks.append(np.array(rows, dtype=np.float64))
    return np.concatenate(chunks)


# -- Parquet ------------------------------------------------------------------------------
def _numeric(t: Any) -> bool:
    import pyarrow as pa  # type: ignore[import-untyped]

    return bool(pa.types.is_integer(t) or pa.types.is_floating(t))


def _listed(t: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


class ParquetRows:
    """Rows of Parquet data, read one row group at a time (the last one cached).

    Parameters
    ----------
    files : sequence of str
        Parquet files, read in this order (all with the chosen columns).
    columns : sequence of str, optional
        One list column, or numeric columns. Default: the only list column,
        else every numeric column.
    name : str
        What messages call the data.

    Raises
    ------
    ValueError
        Unreadable files, no usable column, several list columns and none
        chosen, a column of another type, files that disagree; while reading:
        a null or a vector of another length (naming row and column).
    """

    def __init__(self, files: Sequence[str], columns: Sequence[str] | None, name: str) -> None:
        pa = optional_import("pyarrow", "reading Parquet data")
        pq = optional_import("pyarrow.parquet", "reading Parquet data")

        self.files, self.name = list(files), name
        try:
            metas = [pq.ParquetFile(f).metadata for f in self.files]
            schemas = [m.schema.to_arrow_schema() for m in metas]
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"{name}: cannot read it as Parquet ({exc})") from None
        schema = schemas[0]
        if len(set(schema.names)) != len(schema.names):
            raise ValueError(f"{name}: repeated column names in {schema.names}")
        self.columns = self._choose(schema, columns)
        types = [schema.field(c).type for c in self.columns]
        self.listed = _listed(types[0])
        for other, f in zip(schemas, self.files, strict=True):
            if any(
                other.names.count(c) != 1 or other.field(c).type != t
                for c, t in zip(self.columns, types, strict=True)
            ):
                raise ValueError(f"{f}: its columns {self.columns} differ from {self.files[0]}'s")
        values = [types[0].value_type] if self.listed else types
        if not all(_numeric(t) for t in values):
            raise ValueError(f"{name}: column {self.columns[0]!r} holds {types[0]}, not numbers")
        self.dtype = np.result_type(*[np.dtype(t.to_pandas_dtype()) for t in values])
        self.groups = [
            (f, g)
            for meta, f in zip(metas, self.files, strict=True)
            for g in range(meta.num_row_groups)
            if meta.row_group(g).num_rows
        ]
        sizes = [
            pq_rows
            for m in metas
            for g in range(m.num_row_groups)
            if (pq_rows := m.row_group(g).num_rows)
        ]
        self.natural_rows = tuple(sizes)
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._cache: tuple[int, NDArray[Any]] | None = None
        dim = len(self.columns)
        if self.listed:
            dim = types[0].list_size if pa.types.is_fixed_size_list(types[0]) else -1
            if dim < 0 and self.groups:
                dim = self._group(0, None).shape[1]
        self.shape = (int(self.starts[-1]), int(dim))

    def _choose(self, schema: Any, columns: Sequence[str] | None) -> list[str]:
        lists = [f.name for f in schema if _listed(f.type)]
        numeric = [f.name for f in schema if _numeric(f.type)]
        if columns is not None:
            names = list(columns)
            missing = [c for c in names if c not in schema.names]
            if missing or not names:
                raise ValueError(f"{self.name}: columns {missing or names} not in {schema.names}")
            if len(names) > 1 and any(c in lists for c in names):
                raise ValueError(f"{self.name}: choose one list column or numeric columns")
            bad = [c for c in names if c not in lists + numeric]
            if bad:
                raise ValueError(f"{self.name}: column {bad[0]!r} is not a list or numeric column")
            return names
        if len(lists) > 1:
            raise ValueError(f"{self.name} has list columns {lists}: name one with --key")
        if not (lists or numeric):
            raise ValueError(f"{self.name}: no numeric or list column among {schema.names}")
        return lists or numeric

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": None}

    def _group(self, g: int, dim: int | None) -> NDArray[Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        if self._cache is not None and self._cache[0] == g:
            return self._cache[1]
        f, group = self.groups[g]
        try:
            table = pq.ParquetFile(f).read_row_group(group, columns=self.columns)
        except (pa.ArrowException, OSError) as exc:
            text = " ".join(str(exc).split())
            raise ValueError(f"{f}: row group {group} cannot be read ({text})") from None
        start = int(self.starts[g])
        if table.num_rows != self.natural_rows[g]:
            raise ValueError(
                f"{f}: row group {group} holds {table.num_rows} rows, "
                f"its metadata says {self.natural_rows[g]}"
            )
        for c in self.columns:
            col = table.column(c).combine_chunks()
            if col.null_count:
                row = start + int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                raise ValueError(f"{self.name}: column {c!r} holds a null at row {row}")
        if self.listed:
            block = self._list_block(table.column(0).combine_chunks(), start, dim)
        else:
            block = np.column_stack([table.column(c).to_numpy() for c in self.columns])
        block = block.astype(self.dtype, copy=False)
        self._cache = (g, block)
        return block

    def _list_block(self, col: Any, start: int, dim: int | None) -> NDArray[Any]:
        import pyarrow as pa
        import pyarrow.compute as pc  # type: ignore[import-untyped]

        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        dim = int(lengths[0]) if dim is None else dim
        if (wrong := lengths != dim).any():
            row = int(np.flatnonzero(wrong)[0])
            raise ValueError(
                f"{self.name}: column {self.columns[0]!r} is ragged: row {start + row} holds "
                f"{int(lengths[row])} values, expected {dim}"
            )
        if pa.types.is_fixed_size_list(col.type):
            values = col.flatten()
        else:
            values = col.values.slice(col.offsets[0].as_py(), int(lengths.sum()))
        if values.null_count:
            at = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
            raise ValueError(
                f"{self.name}: column {self.columns[0]!r} holds a null at row {start + at // dim}"
            )
        return np.asarray(values.to_numpy(zero_copy_only=False)).reshape(len(col), dim)

    def read(self, a: int, b: int) -> NDArray[Any]:
        parts = []
        g = int(np.searchsorted(self.starts, a, side="right")) - 1
        while a < b:
            block = self._group(g, self.shape[1])
            lo = a - int(self.starts[g])
            parts.append(block[lo : lo + b - a])
            a, g = a + parts[-1].shape[0], g + 1
        return np.concatenate(parts) if parts else np.empty((0, self.shape[1]), self.dtype)

    def array(self) -> NDArray[Any]:
        return self.read(0, self.shape[0])
