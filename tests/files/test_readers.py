"""One reader per format, one set of rules: CSV header and field rules, .npz/.npy headers,
fvecs row dimensions, Parquet nulls / ragged lists / no numeric column through every path
(library, ``fit``, ``encode``, ``eval``, Dask), zarr round trips, code-array checks."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import viva_glyph as vg
from viva_glyph import cli, files
from viva_glyph.checks import check_codes


def run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(capsys: Any, *argv: str) -> str:
    """Run the CLI, expect exit 2 and one line ``viva-glyph: error: ...``; return the line."""
    code, _, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("viva-glyph: error: "), err
    return lines[0]


@pytest.fixture
def model(tmp_path: Path) -> tuple[vg.RvqEncoder, str]:
    enc = vg.from_codebooks(np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32))
    enc.save(tmp_path / "m.safetensors")
    return enc, str(tmp_path / "m.safetensors")


# -- CSV: one explicit header rule; every field of a data row a number --------------------
def read_csv(tmp_path: Path, content: bytes, **kw: Any) -> np.ndarray:
    (tmp_path / "t.csv").write_bytes(content)
    return files.open_vectors(tmp_path / "t.csv", **kw).array()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"1,NA\n3,4\n5,6\n", "line 1, column 2 'NA' is not a number"),
        (b"1,,3\n4,5,6\n7,8,9\n", "line 1, column 2 is empty"),
        (b"1,2\x00\n3,4\n", "line 1, column 2 '2\\\\x00' is not a number"),
        (b"a,1\n2,3\n", "line 1, column 1 'a' is not a number"),
        (b"1,2\n3,x\n", "line 2, column 2 'x' is not a number"),
        (b"1,2\n3\n", "line 2 has 1 fields, expected 2"),
        (b"a,b,c\n1,2\n", "line 2 has 2 fields, the header 3"),
        (b"1," + b"9" * 131_073 + b"\n", "line 1: field larger than field limit"),
        (b"\xff\xfe1,2\n", "not UTF-8 text"),
    ],
    ids=["NA", "empty", "NUL", "text-first", "text", "short-row", "header-width", "long", "utf8"],
)
def test_csv_bad_fields_name_line_and_column(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_csv(tmp_path, content)


def test_csv_header_rule_and_overrides(tmp_path: Path) -> None:
    # a header only when none of its fields is a number
    np.testing.assert_array_equal(read_csv(tmp_path, b"a,b\n1,2\n3,4\n"), [[1, 2], [3, 4]])
    np.testing.assert_array_equal(read_csv(tmp_path, b"1,2\n3,4\n"), [[1, 2], [3, 4]])
    # a UTF-8 byte-order mark is not part of the first field
    np.testing.assert_array_equal(read_csv(tmp_path, b"\xef\xbb\xbf1,2\n3,4\n"), [[1, 2], [3, 4]])
    np.testing.assert_array_equal(read_csv(tmp_path, b"\xef\xbb\xbfx,y\n3,4\n"), [[3, 4]])
    # blank lines are skipped; spaces around numbers are allowed
    np.testing.assert_array_equal(read_csv(tmp_path, b"1, 2\n\n3 ,4\n\n"), [[1, 2], [3, 4]])
    # overrides
    np.testing.assert_array_equal(read_csv(tmp_path, b"1,2\n3,4\n", header=True), [[3, 4]])
    with pytest.raises(ValueError, match="line 1, column 1 'a' is not a number"):
        read_csv(tmp_path, b"a,b\n1,2\n", header=False)
    with pytest.raises(ValueError, match="header line but no rows"):
        read_csv(tmp_path, b"a,b\n")


@given(
    arr=st.lists(
        st.lists(
            st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=3, max_size=3
        ),
        min_size=1,
        max_size=20,
    ),
    header=st.booleans(),
)
def test_csv_matches_the_csv_module_and_float(
    tmp_path_factory: Any, arr: list[list[float]], header: bool
) -> None:
    """Written with the csv module, read back bit-exactly (reference: float(repr(v)) == v)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    if header:
        writer.writerow(["x", "y", "z"])
    writer.writerows([[repr(v) for v in row] for row in arr])
    path = tmp_path_factory.mktemp("c") / "r.csv"
    path.write_text(buf.getvalue())
    np.testing.assert_array_equal(files.open_vectors(path).array(), np.array(arr))


def test_cli_csv_rules(tmp_path: Path, model: Any, capsys: Any) -> None:
    enc, m = model
    (tmp_path / "gap.csv").write_text("1,,3\n4,5,6\n7,8,9\n")
    (tmp_path / "na.csv").write_text("1,NA,0\n3,4,0\n5,6,0\n")
    (tmp_path / "long.csv").write_text("1," + "9" * 140_000 + ",0\n")
    (tmp_path / "num.csv").write_text("1,2,3\n4,5,6\n7,8,9\n")
    out = str(tmp_path / "o.safetensors")
    fit = ["fit", "--codebook-size", "2", "--stages", "1", "-o", out]
    assert "gap.csv: line 1, column 2 is empty" in error_line(capsys, *fit, tmp_path / "gap.csv")
    assert "line 1, column 2 'NA'" in error_line(capsys, *fit, tmp_path / "na.csv")
    assert "line 1: field larger" in error_line(capsys, *fit, tmp_path / "long.csv")
    assert not Path(out).exists()
    codes = str(tmp_path / "c.npy")
    assert "line 1, column 2" in error_line(capsys, "encode", m, tmp_path / "na.csv", "-o", codes)
    assert "line 1, column 2" in error_line(capsys, "eval", m, tmp_path / "na.csv")
    # --header drops the first row, --no-header keeps it
    assert run(capsys, "encode", m, tmp_path / "num.csv", "-o", codes, "--header")[0] == 0
    x = np.array([[4, 5, 6], [7, 8, 9]], np.float64)
    np.testing.assert_array_equal(np.load(codes), enc.encode(x))
    assert run(capsys, "encode", m, tmp_path / "num.csv", "-o", codes, "--no-header")[0] == 0
    np.testing.assert_array_equal(np.load(codes), enc.encode(np.vstack([[1, 2, 3], x])))
    err = error_line(capsys, "eval", m, tmp_path / "num.csv", "--header", "--no-header")
    assert "not allowed with argument" in err


# -- binary formats: every declared shape checked against the file -----------------------
def write_vecs(path: Path, arr: np.ndarray) -> None:
    dims = np.full((arr.shape[0], 1), arr.shape[1], "<i4").view("<f4")
    path.write_bytes(np.hstack([dims, arr.astype("<f4")]).tobytes())


def test_fit_checks_every_fvecs_row(tmp_path: Path, capsys: Any) -> None:
    x = np.random.default_rng(1).normal(size=(2000, 8)).astype(np.float32)
    write_vecs(tmp_path / "x.fvecs", x)
    raw = bytearray((tmp_path / "x.fvecs").read_bytes())
    raw[1234 * 36 : 1234 * 36 + 4] = np.int32(7).tobytes()
    (tmp_path / "x.fvecs").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="row 1234 declares dimension 7"):
        files.open_vectors(tmp_path / "x.fvecs").array()
    argv = ["fit", tmp_path / "x.fvecs", "-o", tmp_path / "m.safetensors", "--codebook-size", "4"]
    assert "x.fvecs: row 1234 declares dimension 7" in error_line(capsys, *argv, "--stages", "1")
    assert not (tmp_path / "m.safetensors").exists()


def test_npz_that_is_not_a_zip(tmp_path: Path, model: Any, capsys: Any) -> None:
    (tmp_path / "x.npz").write_bytes(b"PK\x03\x04 looks like a zip but is not one")
    with pytest.raises(ValueError, match=r"not a valid \.npz file"):
        files.open_vectors(tmp_path / "x.npz")
    err = error_line(capsys, "encode", model[1], tmp_path / "x.npz", "-o", tmp_path / "c.npy")
    assert "x.npz: not a valid .npz file" in err


def npy_with_header(path: Path, shape: tuple[int, ...], payload: bytes = b"") -> None:
    with open(path, "wb") as fh:
        header = {"descr": "<f4", "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(payload)


def test_npy_and_npz_headers_are_checked(tmp_path: Path, model: Any, capsys: Any) -> None:
    npy_with_header(tmp_path / "neg.npy", (-5, 3))
    err = error_line(capsys, "encode", model[1], tmp_path / "neg.npy", "-o", tmp_path / "c.npy")
    assert "neg.npy: header declares shape (-5, 3), with a negative size" in err
    # an .npz member declaring far more data than it holds: no huge allocation, a clear error
    npy_with_header(tmp_path / "big.npy", (1 << 40, 3), b"\0" * 48)
    import zipfile

    with zipfile.ZipFile(tmp_path / "big.npz", "w") as zf:
        zf.write(tmp_path / "big.npy", "a.npy")
    with pytest.raises(ValueError, match=r"does not fit in memory|truncated"):
        files.open_vectors(tmp_path / "big.npz")
    npy_with_header(tmp_path / "small.npy", (4, 3), b"\0" * 20)
    with zipfile.ZipFile(tmp_path / "small.npz", "w") as zf:
        zf.write(tmp_path / "small.npy", "a.npy")
    with pytest.raises(ValueError, match=r"array 'a': truncated"):
        files.open_vectors(tmp_path / "small.npz")


def test_npz_reader_matches_numpy(tmp_path: Path) -> None:
    x = np.asfortranarray(np.random.default_rng(2).normal(size=(30, 4)))
    np.savez_compressed(tmp_path / "f.npz", v=x, w=np.arange(5))
    np.testing.assert_array_equal(files.open_vectors(tmp_path / "f.npz", key="v").array(), x)
    np.testing.assert_array_equal(
        files.open_vectors(tmp_path / "f.npz", key="w").array()[:, 0], np.arange(5)
    )


# -- Parquet: the same rule and message through every path -------------------------------
def parquet_cases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    x = np.random.default_rng(3).normal(size=(40, 3))
    cols = {f"c{i}": pa.array(x[:, i]) for i in range(3)}
    cols["c2"] = pa.array([None if i == 25 else v for i, v in enumerate(x[:, 2])], pa.float64())
    pq.write_table(pa.table(cols), tmp_path / "null.parquet", row_group_size=10)
    rows = [list(r) for r in x]
    rows[17] = rows[17][:2]
    pq.write_table(
        pa.table({"emb": pa.array(rows)}), tmp_path / "ragged.parquet", row_group_size=10
    )
    pq.write_table(pa.table({"name": ["a"] * 40}), tmp_path / "text.parquet")
    inner = [list(r) for r in x]
    inner[31] = [1.0, None, 2.0]
    pq.write_table(
        pa.table({"emb": pa.array(inner)}), tmp_path / "inner.parquet", row_group_size=10
    )
    return {
        "null": (tmp_path / "null.parquet", "column 'c2' holds a null at row 25"),
        "ragged": (tmp_path / "ragged.parquet", "column 'emb' is ragged: row 17 holds 2 values"),
        "text": (tmp_path / "text.parquet", "no numeric or list column among ['name']"),
        "inner": (tmp_path / "inner.parquet", "column 'emb' holds a null at row 31"),
    }


@pytest.mark.parametrize("case", ["null", "ragged", "text", "inner"])
def test_parquet_same_error_everywhere(tmp_path: Path, model: Any, capsys: Any, case: str) -> None:
    path, message = parquet_cases(tmp_path)[case]
    enc, m = model
    with pytest.raises(ValueError, match=re.escape(message)):
        files.open_vectors(path).array()
    fit = ["fit", path, "-o", tmp_path / "f.safetensors", "--codebook-size", "2", "--stages", "1"]
    assert message in error_line(capsys, *fit)
    assert message in error_line(capsys, "encode", m, path, "-o", tmp_path / "c.npy")
    assert message in error_line(capsys, "eval", m, path)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".parquet")) == [
        "m.safetensors"
    ]
    vgd = pytest.importorskip("viva_glyph.dask")
    with pytest.raises(ValueError, match=re.escape(message)):
        vgd.open_array(path).compute(scheduler="sync")
    with pytest.raises(ValueError, match=re.escape(message)):
        vgd.from_parquet(path).compute(scheduler="sync")
    out = tmp_path / "c.zarr"
    with pytest.raises(ValueError, match=re.escape(message)):
        vgd.run_encode(enc, path, out, scheduler=None, local_cluster=None, progress=False)
    assert not out.exists()


# -- zarr: codes written by encode are read by decode and eval ---------------------------
def test_zarr_round_trip_through_the_cli(tmp_path: Path, model: Any, capsys: Any) -> None:
    zarr = pytest.importorskip("zarr")
    enc, m = model
    x = np.random.default_rng(4).normal(size=(300, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    argv = ["encode", m, tmp_path / "x.npy", "-o", tmp_path / "c.zarr", "--block-rows", "64"]
    assert run(capsys, *argv)[0] == 0
    ref = enc.encode(x)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "c.zarr"), mode="r")[:], ref)
    assert run(capsys, "decode", m, tmp_path / "c.zarr", "-o", tmp_path / "y.npy")[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), enc.decode(ref))
    assert run(capsys, "decode", m, tmp_path / "c.zarr", "-o", tmp_path / "y.zarr")[0] == 0
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "y.zarr"))[:], enc.decode(ref))
    # eval reads vectors from a zarr store exactly as from the .npy
    _, from_npy, _ = run(capsys, "eval", m, tmp_path / "x.npy", "--json")
    code, from_zarr, _ = run(capsys, "eval", m, tmp_path / "y.zarr", "--json")
    assert code == 0
    _, from_decoded_npy, _ = run(capsys, "eval", m, tmp_path / "y.npy", "--json")
    assert from_zarr.replace("y.zarr", "y.npy") == from_decoded_npy
    assert from_npy != from_zarr
    # replacing a store keeps no temporaries; a store in a zarr group is picked with --key
    assert run(capsys, *argv)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "c.zarr",
        "m.safetensors",
        "x.npy",
        "y.npy",
        "y.zarr",
    ]
    code, out, _ = run(capsys, "encode", "--help")
    assert code == 0 and ".zarr" in out
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("codes", data=ref)
    err = error_line(capsys, "decode", m, tmp_path / "g.zarr", "-o", tmp_path / "z.npy")
    assert "g.zarr is a zarr group: name an array with --key (['codes'])" in err
    argv = ["decode", m, tmp_path / "g.zarr", "--key", "codes", "-o", tmp_path / "z.npy"]
    assert run(capsys, *argv)[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "z.npy"), enc.decode(ref))


def test_zarr_codes_from_dask(tmp_path: Path, model: Any, capsys: Any) -> None:
    vgd = pytest.importorskip("viva_glyph.dask")
    da = pytest.importorskip("dask.array")
    enc, m = model
    x = np.random.default_rng(5).normal(size=(500, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    vgd.write_codes(
        vgd.encode(enc, vgd.from_npy(tmp_path / "x.npy", chunk_rows=128)), tmp_path / "c.zarr"
    )
    assert run(capsys, "decode", m, tmp_path / "c.zarr", "-o", tmp_path / "y.npy")[0] == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), enc.decode(enc.encode(x)))
    back = vgd.from_zarr(tmp_path / "c.zarr").compute(scheduler="sync")
    np.testing.assert_array_equal(back, enc.encode(x))
    assert isinstance(vgd.from_zarr(tmp_path / "c.zarr"), da.Array)


# -- one validator for code arrays --------------------------------------------------------
def test_check_codes_names_the_row() -> None:
    codes = np.zeros((10, 3), np.int64)
    codes[6, 1] = 300
    with pytest.raises(ValueError, match=r"expected \[0, 256\), codes row 6 holds 300"):
        check_codes(codes, 4, 256)
    with pytest.raises(ValueError, match=r"codes row 106 holds 300"):
        check_codes(codes, 4, 256, start_row=100)
    with pytest.raises(ValueError, match=r"1 <= m <= 2"):
        check_codes(codes, 2, 256)
    with pytest.raises(TypeError, match="integers"):
        check_codes(codes.astype(float), 4, 256)
    assert check_codes(np.array([1, 2]), 2, 4, vector=True).shape == (1, 2)


def test_cli_decode_names_the_row(tmp_path: Path, model: Any, capsys: Any) -> None:
    codes = np.zeros((200, 2), np.int64)
    codes[150, 1] = 9
    np.save(tmp_path / "c.npy", codes)
    argv = ["decode", model[1], tmp_path / "c.npy", "-o", tmp_path / "y.npy", "--block-rows", "64"]
    assert "c.npy row 150 holds 9" in error_line(capsys, *argv)
    floats = codes.astype(np.float64)
    floats[150, 1] = 0.5
    np.savetxt(tmp_path / "c.csv", floats, delimiter=",")
    argv[2] = tmp_path / "c.csv"
    assert "c.csv row 150: codes must be integers, got 0.5" in error_line(capsys, *argv)


# -- the Dask path reads every format through the same reader ----------------------------
def test_dask_reads_every_format_like_open_vectors(tmp_path: Path) -> None:
    vgd = pytest.importorskip("viva_glyph.dask")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    zarr = pytest.importorskip("zarr")
    x = np.random.default_rng(6).normal(size=(97, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    write_vecs(tmp_path / "x.fvecs", x)
    np.savez(tmp_path / "x.npz", v=x)
    np.savetxt(tmp_path / "x.csv", x, delimiter=",", fmt="%.9g", header="a,b,c,d", comments="")
    emb = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 4)
    pq.write_table(
        pa.table({"id": np.arange(97), "emb": emb}), tmp_path / "x.parquet", row_group_size=30
    )
    zarr.create_array(str(tmp_path / "x.zarr"), data=x, chunks=(40, 4))
    for name in ("x.npy", "x.fvecs", "x.npz", "x.csv", "x.parquet", "x.zarr"):
        ref = files.open_vectors(tmp_path / name).array()
        # the writers' reference; 9 digits in the CSV round-trip float32 exactly
        np.testing.assert_array_equal(ref.astype(np.float32), x)
        for chunk_rows in (None, 13):
            arr = vgd.open_array(tmp_path / name, chunk_rows=chunk_rows)
            assert arr.dtype == ref.dtype and arr.shape == ref.shape
            np.testing.assert_array_equal(arr.compute(scheduler="sync"), ref)
    assert vgd.open_array(tmp_path / "x.parquet").chunks[0] == (30, 30, 30, 7)
    assert vgd.from_zarr(tmp_path / "x.zarr").chunks[0] == (40, 40, 17)


def test_not_a_data_file(tmp_path: Path, model: Any, capsys: Any) -> None:
    (tmp_path / "folder").mkdir()
    err = error_line(capsys, "encode", model[1], tmp_path / "folder", "-o", tmp_path / "c.npy")
    assert "folder is a folder; expected a data file" in err
    with pytest.raises(FileNotFoundError):
        files.open_vectors(tmp_path / "missing.csv")
