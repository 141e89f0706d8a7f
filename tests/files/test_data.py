"""Vector files: every format read back against the array written by an independent writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from viva_glyph import files


@pytest.fixture
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(257, 5)).astype(np.float32)


def write_vecs(path: Path, arr: np.ndarray, value_dtype: Any) -> None:
    """ANN-benchmark layout, written row by row with struct-free byte concatenation."""
    with open(path, "wb") as fh:
        for row in arr:
            fh.write(np.int32(arr.shape[1]).tobytes())
            fh.write(row.astype(value_dtype).tobytes())


def read_all(vf: files.VectorFile, rows: int) -> np.ndarray:
    starts, blocks = [], []
    for start, block in vf.blocks(rows):
        starts.append(start)
        blocks.append(block)
    assert starts == list(range(0, vf.shape[0], rows))
    return np.concatenate(blocks)


def test_npy_streams_and_maps(tmp_path: Path, x: np.ndarray) -> None:
    np.save(tmp_path / "x.npy", x)
    vf = files.open_vectors(tmp_path / "x.npy")
    assert vf.shape == x.shape and vf.dtype == np.float32 and len(vf) == 257
    np.testing.assert_array_equal(read_all(vf, 100), x)
    whole = vf.array()
    assert isinstance(whole, np.memmap)
    np.testing.assert_array_equal(whole, x)
    np.testing.assert_array_equal(vf.read(250, 10_000), x[250:])


def test_npy_one_dimensional_is_a_column(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.arange(7, dtype=np.int64))
    vf = files.open_vectors(tmp_path / "v.npy")
    assert vf.shape == (7, 1)
    np.testing.assert_array_equal(read_all(vf, 3)[:, 0], np.arange(7))


@given(rows=st.integers(1, 300), n=st.integers(1, 40))
def test_blocks_cover_every_row_once(tmp_path_factory: Any, rows: int, n: int) -> None:
    arr = np.arange(n * 3, dtype=np.float64).reshape(n, 3)
    path = tmp_path_factory.mktemp("b") / "a.npy"
    np.save(path, arr)
    np.testing.assert_array_equal(read_all(files.open_vectors(path), rows), arr)


@pytest.mark.parametrize(("suffix", "dtype"), [(".fvecs", np.float32), (".bvecs", np.uint8)])
def test_vecs_formats(tmp_path: Path, suffix: str, dtype: Any) -> None:
    arr = np.random.default_rng(1).integers(0, 255, size=(33, 7)).astype(dtype)
    path = tmp_path / f"a{suffix}"
    write_vecs(path, arr, dtype)
    vf = files.open_vectors(path)
    assert vf.shape == (33, 7) and vf.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(read_all(vf, 10), arr)
    np.testing.assert_array_equal(vf.array(), arr)


def test_vecs_rejects_inconsistent_rows(tmp_path: Path) -> None:
    path = tmp_path / "bad.fvecs"
    write_vecs(path, np.ones((4, 3), np.float32), np.float32)
    raw = bytearray(path.read_bytes())
    raw[2 * 16 : 2 * 16 + 4] = np.int32(9).tobytes()  # row 2 claims dimension 9
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="row 2"):
        read_all(files.open_vectors(path), 10)
    path.write_bytes(bytes(raw[:-3]))
    with pytest.raises(ValueError, match="not a multiple"):
        files.open_vectors(path)


def test_npz_named_array(tmp_path: Path, x: np.ndarray) -> None:
    np.savez(tmp_path / "one.npz", vectors=x)
    np.testing.assert_array_equal(files.open_vectors(tmp_path / "one.npz").array(), x)
    np.savez(tmp_path / "two.npz", a=x, b=x[:3])
    with pytest.raises(ValueError, match=r"holds arrays \['a', 'b'\]"):
        files.open_vectors(tmp_path / "two.npz")
    np.testing.assert_array_equal(files.open_vectors(tmp_path / "two.npz", key="b").array(), x[:3])
    with pytest.raises(ValueError, match="no array 'c'"):
        files.open_vectors(tmp_path / "two.npz", key="c")


def test_npz_never_unpickles(tmp_path: Path) -> None:
    np.savez(tmp_path / "obj.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError):
        files.open_vectors(tmp_path / "obj.npz")


def test_csv_with_header(tmp_path: Path, x: np.ndarray) -> None:
    lines = ["a,b,c,d,e"] + [",".join(repr(float(v)) for v in row) for row in x]
    (tmp_path / "x.csv").write_text("\n".join(lines) + "\n")
    vf = files.open_vectors(tmp_path / "x.csv")
    assert vf.shape == x.shape
    np.testing.assert_array_equal(read_all(vf, 50), x.astype(np.float64))
    # a text column is not skipped: it is an error naming line and column
    lines = ["name,a,b,c,d,e"] + [
        f"row{i}," + ",".join(repr(float(v)) for v in row) for i, row in enumerate(x)
    ]
    (tmp_path / "x.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="line 2, column 1 'row0' is not a number"):
        files.open_vectors(tmp_path / "x.csv")


def test_tsv_without_header(tmp_path: Path, x: np.ndarray) -> None:
    text = "\n".join("\t".join(repr(float(v)) for v in row) for row in x)
    (tmp_path / "x.tsv").write_text(text)
    np.testing.assert_array_equal(files.open_vectors(tmp_path / "x.tsv").array(), x)


def test_parquet_list_and_numeric_columns(tmp_path: Path, x: np.ndarray) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 5)
    pq.write_table(pa.table({"id": np.arange(257), "emb": fixed}), tmp_path / "l.parquet")
    np.testing.assert_array_equal(files.open_vectors(tmp_path / "l.parquet").array(), x)
    cols = {f"c{i}": x[:, i] for i in range(5)}
    pq.write_table(pa.table({"label": ["z"] * 257, **cols}), tmp_path / "n.parquet")
    np.testing.assert_array_equal(files.open_vectors(tmp_path / "n.parquet").array(), x)
    ragged = pa.array([[1.0, 2.0], [3.0]])
    pq.write_table(pa.table({"v": ragged}), tmp_path / "r.parquet")
    with pytest.raises(ValueError, match="ragged"):
        files.open_vectors(tmp_path / "r.parquet")


def test_parquet_streams_row_groups(tmp_path: Path, x: np.ndarray) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    fixed = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 5)
    table = pa.table({"name": [str(i) for i in range(257)], "emb": fixed, "n": np.arange(257)})
    pq.write_table(table, tmp_path / "g.parquet", row_group_size=40)
    assert pq.ParquetFile(tmp_path / "g.parquet").num_row_groups == 7
    vf = files.open_vectors(tmp_path / "g.parquet", key="emb")
    for rows in (1, 33, 40, 100, 1000):
        np.testing.assert_array_equal(read_all(vf, rows), x)
    np.testing.assert_array_equal(vf.read(38, 123), x[38:123])
    np.testing.assert_array_equal(
        files.open_vectors(tmp_path / "g.parquet", key="n").array()[:, 0], np.arange(257)
    )
    with pytest.raises(ValueError, match="column 'name' is not a list or numeric column"):
        files.open_vectors(tmp_path / "g.parquet", key="name")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.txt", b"1,2", "unknown data format"),
        ("a.npy", b"\x93NUMPY garbage", "not a valid .npy"),
        ("a.csv", b"", "empty"),
        ("a.csv", b"x,y\n", "no rows"),
        ("a.csv", b"a,b\nfoo,bar\n", "line 2, column 1 'foo' is not a number"),
        ("a.fvecs", b"\x01", "too short"),
    ],
)
def test_malformed_files(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        files.open_vectors(tmp_path / name)


def test_truncated_npy_and_missing_file(tmp_path: Path, x: np.ndarray) -> None:
    np.save(tmp_path / "x.npy", x)
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(raw[:-4])
    with pytest.raises(ValueError, match="truncated"):
        files.open_vectors(tmp_path / "x.npy")
    with pytest.raises(FileNotFoundError):
        files.open_vectors(tmp_path / "missing.npy")
    np.save(tmp_path / "obj.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Python objects"):
        files.open_vectors(tmp_path / "obj.npy")


# -- writers ---------------------------------------------------------------------------
def temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_npy_writer_matches_numpy(tmp_path: Path, dtype: Any) -> None:
    arr = (np.random.default_rng(2).random((1000, 4)) * 200).astype(dtype)
    with files.open_writer(tmp_path / "o.npy", arr.shape, dtype) as out:
        for s in range(0, 1000, 333):
            out.write(arr[s : s + 333])
    back = np.load(tmp_path / "o.npy", allow_pickle=False)
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, arr)
    assert temp_files(tmp_path) == []


def test_parquet_writer_per_stage_columns(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    codes = np.random.default_rng(3).integers(0, 256, size=(500, 3)).astype(np.uint8)
    files.save_array(tmp_path / "c.parquet", codes)
    table = pq.read_table(tmp_path / "c.parquet")
    assert table.column_names == ["stage_1", "stage_2", "stage_3"]
    for i in range(3):
        np.testing.assert_array_equal(table.column(i).to_numpy(), codes[:, i])
    np.testing.assert_array_equal(files.open_vectors(tmp_path / "c.parquet").array(), codes)


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "o.npy"
    np.save(path, np.zeros((2, 2)))
    before = path.read_bytes()
    with (
        pytest.raises(RuntimeError, match="crash"),
        files.open_writer(path, (10, 2), np.float64) as out,
    ):
        out.write(np.ones((5, 2)))
        raise RuntimeError("crash")
    assert path.read_bytes() == before
    with (
        pytest.raises(ValueError, match="wrote 5 rows, expected 10"),
        files.open_writer(path, (10, 2), np.float64) as out,
    ):
        out.write(np.ones((5, 2)))
    assert path.read_bytes() == before
    assert temp_files(tmp_path) == []


def test_writer_rejects_wrong_blocks_and_suffixes(tmp_path: Path) -> None:
    with (
        pytest.raises(ValueError, match=r"shape \(n, 2\)"),
        files.open_writer(tmp_path / "o.npy", (3, 2), np.uint8) as out,
    ):
        out.write(np.ones((3, 3)))
    with (
        pytest.raises(ValueError, match="more than the 3 rows"),
        files.open_writer(tmp_path / "o.npy", (3, 2), np.uint8) as out,
    ):
        out.write(np.ones((4, 2)))
    with pytest.raises(ValueError, match=r"\.npy or \.parquet"):
        files.open_writer(tmp_path / "o.csv", (3, 2), np.uint8)
    assert list(tmp_path.iterdir()) == []
