"""The shared safetensors reader, checked against files the safetensors library writes."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from viva_glyph.files._safetensors import DTYPES, FileKind, open_file


class KindError(ValueError):
    pass


KIND = FileKind("test-format", "1", "test file", KindError)
META = {"format": "test-format", "format_version": "1"}


def arrays() -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(0)
    return {
        "a": rng.normal(size=(3, 4)).astype(np.float32),
        "b": rng.integers(0, 255, size=7).astype(np.uint8),
        "c": rng.integers(-(1 << 40), 1 << 40, size=(2, 0, 5)).astype(np.int64),
        "d": rng.normal(size=5),
    }


def test_reads_and_maps_what_safetensors_writes(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    want = arrays()
    save_file(want, str(path), metadata=META)
    expect = {
        n: ({name for name, dt in DTYPES.items() if dt == a.dtype}, a.shape)
        for n, a in want.items()
    }
    with open_file(path, KIND) as fh:
        assert fh.metadata == META and fh.names == set(want)
        layout = fh.tensors(expect)
        for name, arr in want.items():
            np.testing.assert_array_equal(fh.read(layout[name]), arr)
            mapped = fh.memmap(layout[name])
            assert mapped.dtype == arr.dtype and mapped.shape == arr.shape
            np.testing.assert_array_equal(mapped, arr)


def raw(header: dict[str, Any], data: bytes) -> bytes:
    text = json.dumps({"__metadata__": META, **header}).encode()
    return struct.pack("<Q", len(text)) + text + data


TWO = {
    "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
    "y": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
}


@pytest.mark.parametrize(
    ("edit", "data", "match"),
    [
        ({}, b"\0" * 16, None),
        ({"y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 16, "overlap"),
        ({"y": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}}, b"\0" * 20, "gap"),
        ({}, b"\0" * 24, "24 bytes of tensor data, expected 16"),
        ({}, b"\0" * 12, "run past"),
        ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 16, "shape"),
        ({"y": {"dtype": "F64", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16, "dtype"),
        ({"y": {"dtype": "F32", "shape": [2], "data_offsets": [8, 17]}}, b"\0" * 17, "offsets"),
        ({"y": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, b"\0" * 16, "offsets"),
        ({"z": TWO["x"]}, b"\0" * 16, "tensors"),
    ],
)
def test_tensor_entries_are_checked(
    tmp_path: Path, edit: dict[str, Any], data: bytes, match: str | None
) -> None:
    path = tmp_path / "t.safetensors"
    path.write_bytes(raw({**TWO, **edit}, data))
    expect = {"x": ({"F32"}, (2,)), "y": ({"F32"}, 1)}
    with open_file(path, KIND) as fh:
        if match is None:
            layout = fh.tensors(expect)
            assert [t.start - layout["x"].start for t in layout.values()] == [0, 8]
            return
        with pytest.raises(
            KindError, match=rf"t\.safetensors is not a valid viva-glyph test file: .*{match}"
        ):
            fh.tensors(expect)


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"format": "other"}, "format is 'other', not 'test-format'"),
        ({"format_version": "2"}, "format version '2' is not supported"),
        ({"format": 3}, "metadata"),
    ],
)
def test_format_metadata_is_checked_on_open(
    tmp_path: Path, meta: dict[str, Any], match: str
) -> None:
    path = tmp_path / "t.safetensors"
    text = json.dumps({"__metadata__": {**META, **meta}}).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text)
    with pytest.raises(KindError, match=match):
        open_file(path, KIND)


def test_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KindError, match="is a folder, not a test file"):
        open_file(tmp_path, KIND)
