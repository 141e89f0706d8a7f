"""Model files: round trips, independent readers, atomic writes, fuzzed malformed files."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import viva_glyph as vg
from viva_glyph import files
from viva_glyph.core import io as vio
from viva_glyph.core.io import ModelFormatError
from viva_glyph.files import _safetensors

safetensors = pytest.importorskip("safetensors")


def small(dtype: Any = np.float32, seed: int = 0) -> vg.RvqEncoder:
    rng = np.random.default_rng(seed)
    return vg.from_codebooks(rng.normal(size=(3, 5, 4)).astype(dtype))


def raw_file(header: object, data: bytes = b"", *, length: int | None = None) -> bytes:
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def valid_header(m: int = 3, k: int = 5, d: int = 4, dt: str = "F32") -> dict[str, Any]:
    size = m * k * d * (4 if dt == "F32" else 8)
    return {
        "__metadata__": {
            "format": "viva-glyph-rvq",
            "format_version": "1",
            "config": json.dumps({"num_stages": m, "dimension": d, "codebook_size": k}),
            "dtype": "float32" if dt == "F32" else "float64",
            "library_version": "0.1.0",
        },
        "codebooks": {"dtype": dt, "shape": [m, k, d], "data_offsets": [0, size]},
    }


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_keeps_codebooks_bit_exact(tmp_path: Path, dtype: Any) -> None:
    enc = small(dtype)
    path = tmp_path / "m.safetensors"
    enc.save(path)
    back = vg.load(path)
    assert back == enc
    assert back.dtype == np.dtype(dtype)
    assert back.training is None
    x = np.random.default_rng(1).normal(size=(50, 4))
    np.testing.assert_array_equal(back.encode(x), enc.encode(x))


def test_file_is_plain_safetensors(tmp_path: Path) -> None:
    """The safetensors library (numpy and torch) reads the tensor and metadata directly."""
    from safetensors import safe_open

    enc = vg.new(vg.default_config(), seed=3)
    path = tmp_path / "m.safetensors"
    vg.save(enc, path)
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
        assert list(f.keys()) == ["codebooks"]
        np.testing.assert_array_equal(f.get_tensor("codebooks"), enc.codebook_array)
    assert meta["format"] == "viva-glyph-rvq"
    assert meta["format_version"] == "1"
    assert meta["dtype"] == "float32"
    assert meta["library_version"] == vg.__version__
    assert json.loads(meta["config"]) == {"num_stages": 4, "dimension": 6, "codebook_size": 256}
    torch_st = pytest.importorskip("safetensors.torch")
    t = torch_st.load_file(str(path))["codebooks"]
    np.testing.assert_array_equal(t.numpy(), enc.codebook_array)


def test_training_summary_round_trips(tmp_path: Path) -> None:
    training = pytest.importorskip("viva_glyph.train")
    x = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
    enc = training.fit(x, num_stages=2, codebook_size=8, iterations=3)
    path = tmp_path / "fit.safetensors"
    enc.save(path)
    back = vg.load(path)
    assert back == enc
    assert back.training is not None
    assert back.training.to_dict() == enc.training.to_dict()
    assert json.loads(vio.read_metadata(path)["training"]) == enc.training.to_dict()


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        vg.load(tmp_path / "nope.safetensors")


def test_save_rejects_non_encoders(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="RvqEncoder"):
        vg.save(np.zeros((1, 2, 3)), tmp_path / "x.safetensors")  # type: ignore[arg-type]


# -- atomic writes ---------------------------------------------------------------------
def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_failure_mid_write_keeps_the_old_file(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "m.safetensors"
    old = small(seed=1)
    old.save(path)
    before = path.read_bytes()
    real_open = open

    class HalfWriter:
        """A file that writes half the payload, then fails like a full disk."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.fh = real_open(*args, **kwargs)

        def __enter__(self) -> HalfWriter:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

        def write(self, data: bytes) -> int:
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(_safetensors, "open", HalfWriter, raising=False)
    with pytest.raises(OSError, match="No space left"):
        small(seed=2).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert vg.load(path) == old
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_failure_at_commit_keeps_the_old_file(tmp_path: Path, monkeypatch: Any, step: str) -> None:
    path = tmp_path / "m.safetensors"
    small(seed=1).save(path)
    before = path.read_bytes()

    def boom(*args: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(vio.os, step, boom)
    with pytest.raises(OSError):
        small(seed=2).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_save_replaces_and_keeps_usual_permissions(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    small(seed=1).save(path)
    small(seed=2).save(path)
    assert vg.load(path) == small(seed=2)
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert leftovers(tmp_path) == []


# -- malformed files: only ModelFormatError, never a large allocation ----------------
def load_bytes(tmp_path: Path, data: bytes) -> vg.RvqEncoder:
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(data)
    return vg.load(path)


class ReachedSafetensors(BaseException):
    """Raised if a malformed file got past the library's own header checks."""


def assert_rejected(tmp_path: Path, data: bytes) -> None:
    """Only ModelFormatError, raised before safetensors sees the bytes, small allocations."""
    import safetensors.numpy

    def guard(*args: object) -> None:
        raise ReachedSafetensors

    real = safetensors.numpy.load
    safetensors.numpy.load = guard
    tracemalloc.start()
    try:
        with pytest.raises(ModelFormatError):
            load_bytes(tmp_path, data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        safetensors.numpy.load = real
    assert peak < 8 << 20, f"rejecting a {len(data)}-byte file allocated {peak} bytes"


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory: Any) -> bytes:
    path = tmp_path_factory.mktemp("good") / "m.safetensors"
    small().save(path)
    return path.read_bytes()


@settings(max_examples=80)
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_truncated_files(tmp_path_factory: Any, good_bytes: bytes, cut: int) -> None:
    cut %= len(good_bytes)
    assert_rejected(tmp_path_factory.mktemp("t"), good_bytes[:cut])


@settings(max_examples=150)
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), min_size=1, max_size=4))
def test_bit_flipped_files(
    tmp_path_factory: Any, good_bytes: bytes, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(good_bytes)
    for pos, bit in flips:
        data[pos % len(data)] ^= 1 << bit
    try:
        enc = load_bytes(tmp_path_factory.mktemp("b"), bytes(data))
    except ModelFormatError:
        return
    # A flip that still loads (a float bit, a JSON space) gives a sound encoder.
    assert enc.config == vg.RvqConfig(3, 4, 5)
    assert np.isfinite(enc.codebook_array).all()


HOSTILE_TENSORS = [
    {"dtype": "F32", "shape": [3, 5, 4], "data_offsets": [0, 200]},  # wrong size vs shape
    {"dtype": "F32", "shape": [1 << 40, 1 << 40, 1 << 40], "data_offsets": [0, 240]},
    {"dtype": "F32", "shape": [3, 5, 4], "data_offsets": [0, 1 << 62]},
    {"dtype": "F16", "shape": [3, 5, 4], "data_offsets": [0, 120]},
    {"dtype": "I64", "shape": [3, 5, 4], "data_offsets": [0, 480]},
    {"dtype": "F32", "shape": [3, 5], "data_offsets": [0, 60]},
    {"dtype": "F32", "shape": [3, 5, -4], "data_offsets": [0, 240]},
    {"dtype": "F32", "shape": [3, 5, 4.0], "data_offsets": [0, 240]},
    {"dtype": "F32", "shape": [3, 5, 4], "data_offsets": [8, 248]},
    {"dtype": "F32", "shape": "3,5,4", "data_offsets": [0, 240]},
    [1, 2, 3],
]


@pytest.mark.parametrize("tensor", HOSTILE_TENSORS)
def test_hostile_tensor_entries(tmp_path: Path, tensor: Any) -> None:
    header = valid_header()
    header["codebooks"] = tensor
    assert_rejected(tmp_path, raw_file(header, b"\0" * 240))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("format", "gguf"),
        ("format_version", "2"),
        ("dtype", "float16"),
        ("config", "{not json"),
        ("config", json.dumps({"num_stages": 0, "dimension": 4, "codebook_size": 5})),
        ("config", json.dumps({"num_stages": 3, "dimension": 4})),
        ("config", json.dumps([3, 5, 4])),
        ("config", json.dumps({"num_stages": 1 << 40, "dimension": 1 << 40, "codebook_size": 5})),
        ("training", "{not json"),
        ("training", "[" * 100_000),
    ],
    ids=lambda v: v[:20] if isinstance(v, str) else str(v),
)
def test_hostile_metadata(tmp_path: Path, key: str, value: str) -> None:
    header = valid_header()
    header["__metadata__"][key] = value
    assert_rejected(tmp_path, raw_file(header, np.zeros(60, np.float32).tobytes()))


def test_non_finite_codebooks_are_rejected(tmp_path: Path) -> None:
    values = np.zeros(60, np.float32)
    values[17] = np.nan
    with pytest.raises(ModelFormatError, match="NaN or inf"):
        load_bytes(tmp_path, raw_file(valid_header(), values.tobytes()))


def test_valid_handmade_file_loads(tmp_path: Path) -> None:
    """The checks accept a file written without the library (guards against over-rejection)."""
    values = np.arange(60, dtype=np.float64) / 7
    enc = load_bytes(tmp_path, raw_file(valid_header(dt="F64"), values.tobytes()))
    np.testing.assert_array_equal(enc.codebook_array, values.reshape(3, 5, 4))
    assert enc.dtype == np.float64


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        struct.pack("<Q", 1 << 63) + b"{}",
        struct.pack("<Q", 1 << 19) + b"{}",
        raw_file("{", b""),
        raw_file("null"),
        raw_file("\xff\xfe"),
        raw_file("[" * 200_000),
        raw_file({"codebooks": valid_header()["codebooks"]}, b"\0" * 240),
        raw_file({**valid_header(), "extra": valid_header()["codebooks"]}, b"\0" * 240),
        raw_file({**valid_header(), "__metadata__": {"format": 1}}, b"\0" * 240),
    ],
    ids=lambda v: repr(v[:12]),
)
def test_hostile_framing(tmp_path: Path, data: bytes) -> None:
    assert_rejected(tmp_path, data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@pytest.mark.slow
@settings(max_examples=120)
@given(
    shape=st.lists(st.integers(-5, 1 << 62), min_size=0, max_size=4),
    dtype=st.sampled_from(["F32", "F64", "F16", "BF16", "I8", "U8", "BOOL", "bogus"]),
    offsets=st.lists(st.integers(-5, 1 << 62), min_size=0, max_size=3),
    extra=json_values,
    data_len=st.integers(0, 600),
)
def test_random_hostile_headers(
    tmp_path_factory: Any,
    shape: list[int],
    dtype: str,
    offsets: list[int],
    extra: object,
    data_len: int,
) -> None:
    header = valid_header()
    header["codebooks"] = {"dtype": dtype, "shape": shape, "data_offsets": offsets, "x": extra}
    data = raw_file(header, b"\x01" * data_len)
    folder = tmp_path_factory.mktemp("h")
    try:
        enc = load_bytes(folder, data)
    except ModelFormatError:
        return
    # Only a self-consistent header can load: the valid shape, dtype and offsets.
    assert (shape, dtype, offsets) == ([3, 5, 4], "F32", [0, 240])
    assert enc.config == vg.RvqConfig(3, 4, 5)


@settings(max_examples=60)
@given(header=json_values)
def test_random_json_headers(tmp_path_factory: Any, header: object) -> None:
    assert_rejected(tmp_path_factory.mktemp("j"), raw_file(header, b"\0" * 16))


# -- files that are not model files, non-regular files, memory (issue 11) -------------
def run_cli(
    *argv: str, timeout: float = 60, memory: int = 1 << 30
) -> subprocess.CompletedProcess[str]:
    """``python -m viva_glyph ARGV`` in a subprocess held to ``memory`` bytes of address space."""

    def limit() -> None:  # a regression must not exhaust the machine
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    return subprocess.run(
        [sys.executable, "-m", "viva_glyph", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit if os.name == "posix" else None,
        check=False,
    )


def other_formats(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files of other formats and what the error should call them."""
    np.save(folder / "vectors.npy", np.ones((1000, 8), np.float32))
    np.savez(folder / "vectors.npz", x=np.ones((3, 2)))
    (folder / "vectors.csv").write_text("1.0,2.0\n3.0,4.0\n")
    (folder / "x.parquet").write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1")
    (folder / "pickled.pt").write_bytes(b"\x80\x04\x95" + b"\0" * 40)
    (folder / "empty.safetensors").write_bytes(b"")
    (folder / "tiny.safetensors").write_bytes(b"\x01\x02")
    return {
        "npy": (folder / "vectors.npy", "NumPy .npy"),
        "npz": (folder / "vectors.npz", "zip"),
        "csv": (folder / "vectors.csv", "text"),
        "parquet": (folder / "x.parquet", "Parquet"),
        "pickle": (folder / "pickled.pt", "pickle"),
        "empty": (folder / "empty.safetensors", "empty"),
        "tiny": (folder / "tiny.safetensors", "2 bytes"),
    }


def test_other_formats_are_called_not_a_model_file(tmp_path: Path) -> None:
    for name, (path, found) in other_formats(tmp_path).items():
        with pytest.raises(ModelFormatError) as info:
            vg.load(path)
        text = str(info.value)
        assert f"{path} is not a viva-glyph model file" in text, (name, text)
        assert found in text, (name, text)
        assert "header length" not in text, (name, text)


def test_info_on_a_numpy_file_exits_2_with_one_line(tmp_path: Path) -> None:
    path, _ = other_formats(tmp_path)["npy"]
    res = run_cli("info", str(path))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1
    assert "is not a viva-glyph model file" in res.stderr and "NumPy .npy" in res.stderr


def test_another_safetensors_file_is_not_a_model_file(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"w": np.ones((2, 3), np.float32)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelFormatError, match="is not a viva-glyph model file"):
        vg.load(path)


def test_a_folder_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="is a folder, not a model file"):
        vg.load(tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX named pipes")
def test_a_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "m.safetensors"
    os.mkfifo(fifo)
    res = run_cli("info", str(fifo), timeout=30)
    assert res.returncode == 2, res.stderr
    assert "is a named pipe (FIFO), not a model file" in res.stderr


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_device_is_refused_without_reading_it() -> None:
    res = run_cli("info", "/dev/zero", timeout=30)
    assert res.returncode == 2, res.stderr
    assert "/dev/zero is a character device, not a model file" in res.stderr


def traced_peak(fn: Any, *args: Any) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        try:
            result: Any = fn(*args)
        except ValueError as exc:
            result = exc
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak


@pytest.mark.parametrize(
    "head",
    [
        b"\x93NUMPY\x01\x00v\x00",  # an .npy file
        struct.pack("<Q", 60) + b'{"__metadata__": ' + b" " * 43,  # a header that never closes
        raw_file(valid_header()),  # a valid header, then far too much data
    ],
    ids=["npy", "open-header", "long-data"],
)
def test_large_files_are_rejected_from_their_header(tmp_path: Path, head: bytes) -> None:
    """A 64 MiB file (sparse) is refused after reading its header, not the whole file."""
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as fh:
        fh.write(head)
        fh.truncate(64 << 20)
    result, peak = traced_peak(vg.load, path)
    assert isinstance(result, ModelFormatError)
    assert peak < 8 << 20, f"rejecting a 64 MiB file allocated {peak} bytes"


def test_loading_reads_the_tensor_into_one_buffer(tmp_path: Path) -> None:
    """Reading a valid file allocates the tensor it declares plus less than 8 MiB."""
    m, k, d = 4, 1024, 1024  # 16 MiB of float32
    values = np.random.default_rng(0).normal(size=(m, k, d)).astype(np.float32)
    path = tmp_path / "large.safetensors"
    path.write_bytes(raw_file(valid_header(m, k, d), values.tobytes()))
    (stack, config, meta), peak = traced_peak(vio.read_model, path)
    np.testing.assert_array_equal(stack, values)
    assert config == vg.RvqConfig(m, d, k) and meta["dtype"] == "float32"
    assert peak < values.nbytes + (8 << 20), f"read {values.nbytes} bytes with a peak of {peak}"


def test_hostile_headers_allocate_little(tmp_path: Path) -> None:
    """JSON bombs filling the largest header allowed stay well under 8 MiB."""
    n = files.MAX_HEADER_BYTES
    bombs = {
        "lists": "[" + ",".join(["[]"] * (n // 3 - 1)) + "]",
        "strings": "[" + ",".join(['"ab"'] * (n // 5 - 1)) + "]",
        "keys": "{" + ",".join(f'"{i:x}":0' for i in range(n // 10)) + "}",
        "deep": "[" * (n - 2),
    }
    for name, text in bombs.items():
        data = raw_file(text[:n], b"\0" * 240)
        result, peak = traced_peak(load_bytes, tmp_path, data)
        assert isinstance(result, ModelFormatError), name
        assert peak < 8 << 20, f"{name}: {peak} bytes"


# -- nesting: what load accepts, info and save handle ------------------------------------
def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth - 1):
        value = [value]
    return value


def training_file(tmp_path: Path, params: object, **meta: str) -> Path:
    header = valid_header()
    summary = {"stage_mse": [1.0, 0.5, 0.25], "iterations": [3, 3, 3], "seconds": 0.1}
    header["__metadata__"]["training"] = json.dumps({**summary, "params": {"p": params}})
    header["__metadata__"].update(meta)
    path = tmp_path / "m.safetensors"
    path.write_bytes(raw_file(header, np.ones(60, np.float32).tobytes()))
    return path


def test_deeply_nested_training_params_are_refused_at_load(tmp_path: Path) -> None:
    path = training_file(tmp_path, nested(500))
    with pytest.raises(ModelFormatError, match=r"nests 501 deep \(at most 32\)"):
        vg.load(path)
    res = run_cli("info", str(path))
    assert res.returncode == 2 and "nests 501 deep" in res.stderr
    with pytest.raises(ModelFormatError, match=r"nests 33 deep"):
        vg.load(training_file(tmp_path, nested(files.MAX_JSON_DEPTH)))


def test_whatever_load_accepts_info_and_save_handle(tmp_path: Path) -> None:
    from viva_glyph import cli

    path = training_file(tmp_path, nested(files.MAX_JSON_DEPTH - 1))  # summary, params: depth 32
    enc = vg.load(path)
    for argv in (["info", str(path)], ["info", str(path), "--json"]):
        assert cli.main(argv) == 0
    enc.save(tmp_path / "again.safetensors")
    assert vg.load(tmp_path / "again.safetensors").training == enc.training


def test_save_refuses_what_load_would_refuse(tmp_path: Path) -> None:
    from viva_glyph.core import TrainingSummary

    deep = TrainingSummary((1.0,), (1,), 0.1, params={"p": nested(600)})
    enc = vg.RvqEncoder(small().codebooks, training=deep)
    with pytest.raises(ValueError, match="nests"):
        enc.save(tmp_path / "m.safetensors")
    big = TrainingSummary((1.0,), (1,), 0.1, refine_mse=(0.123456789,) * 100_000)
    enc = vg.RvqEncoder(small().codebooks, training=big)
    with pytest.raises(ValueError, match="header"):
        enc.save(tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


# -- info prints metadata escaped ---------------------------------------------------------
def test_info_escapes_control_characters(tmp_path: Path) -> None:
    evil = "0.1\x1b[2J\x1b[31mpwned\x07\r\nfake: line\u202e"
    path = training_file(tmp_path, "\x1b]0;title\x07", library_version=evil)
    for extra in ([], ["--json"]):
        res = run_cli("info", str(path), *extra)
        assert res.returncode == 0, res.stderr
        assert not any(c in res.stdout for c in "\x1b\x07\r\u202e"), repr(res.stdout)
        if not extra:
            assert "0.1\\x1b[2J\\x1b[31mpwned\\x07\\r\\nfake: line\\u202e" in res.stdout
            assert len(res.stdout.splitlines()) == 13  # 12 keys + training, one line each
    info = json.loads(run_cli("info", str(path), "--json").stdout)
    assert info["library_version"] == evil  # JSON keeps the value, escaped by the encoder


# -- fuzzing: a bounded run in CI ---------------------------------------------------------
def mutations(good: bytes, rng: np.random.Generator) -> bytes:
    """One hostile variant of a valid file: random bytes, cuts, flips, header lies."""
    kind = int(rng.integers(8))
    n_head = struct.unpack("<Q", good[:8])[0]
    if kind == 0:
        return rng.bytes(int(rng.integers(0, 600)))
    if kind == 1:
        return good[: int(rng.integers(0, len(good)))]
    if kind == 2:
        data = bytearray(good)
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
            data[pos] ^= 1 << int(rng.integers(8))
        return bytes(data)
    if kind == 3:  # a lying header length
        lengths = [0, 1, n_head - 1, n_head + 1, 1 << 20, 1 << 40, (1 << 64) - 1]
        length = lengths[int(rng.integers(len(lengths)))]
        return struct.pack("<Q", length) + good[8:]
    if kind == 4:  # splice random bytes into the JSON header
        pos = int(rng.integers(8, 8 + n_head))
        return good[:pos] + rng.bytes(int(rng.integers(1, 16))) + good[pos:]
    header = valid_header()
    entry = header["codebooks"]
    if kind == 5:  # dtype / shape / offset lies
        field = ["dtype", "shape", "data_offsets"][int(rng.integers(3))]
        entry[field] = [
            "F16",
            "F64",
            [3, 5, 4, 1],
            [0, 1 << 62],
            [3, 5, int(rng.integers(-3, 1 << 40))],
            [int(rng.integers(0, 300)), 240],
            None,
        ][int(rng.integers(7))]
    elif kind == 6:  # JSON bombs in metadata values
        depth = int(rng.integers(1, 3000))
        key = ["training", "config", "library_version"][int(rng.integers(3))]
        header["__metadata__"][key] = "[" * depth + "]" * int(rng.integers(0, depth + 1))
    else:  # config lies against the tensor
        cfg = {"num_stages": 3, "dimension": 4, "codebook_size": 5}
        lie = [0, 2, 6, 1 << 31, 1 << 62][int(rng.integers(5))]
        cfg[["num_stages", "dimension", "codebook_size"][int(rng.integers(3))]] = lie
        header["__metadata__"]["config"] = json.dumps(cfg)
    return raw_file(header, good[8 + n_head :])


def test_fuzz_model_loader(tmp_path: Path, good_bytes: bytes) -> None:
    """1,000 hostile files: each loads as a sound encoder or raises ModelFormatError."""
    rng = np.random.default_rng(2026)
    path = tmp_path / "fuzz.safetensors"
    loaded = 0
    for i in range(1000):
        data = mutations(good_bytes, rng)
        path.write_bytes(data)
        try:
            enc = vg.load(path)
        except ModelFormatError:
            continue
        except Exception as exc:  # pragma: no cover - the failure report
            message = f"case {i}: {type(exc).__name__}: {exc} for {data[:80]!r}"
            raise AssertionError(message) from exc
        loaded += 1
        assert enc.config == vg.RvqConfig(3, 4, 5) and np.isfinite(enc.codebook_array).all()
    assert loaded < 1000


@pytest.mark.parametrize("length", [0x0280, 0x0380, 0x8B1F])
def test_header_lengths_that_look_like_magic_numbers(tmp_path: Path, length: int) -> None:
    """A header of 640 bytes starts b'\\x80\\x02' like a pickle; it is still a model file."""
    text = json.dumps(valid_header())
    values = np.arange(60, dtype=np.float32)
    path = tmp_path / "m.safetensors"
    path.write_bytes(raw_file(text + " " * (length - len(text)), values.tobytes()))
    np.testing.assert_array_equal(vg.load(path).codebook_array.ravel(), values)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB")
def test_rejecting_a_300_mb_file_keeps_rss_flat(tmp_path: Path) -> None:
    """The issue's case: a 300 MB file of garbage once peaked at 336 MB RSS."""
    script = (
        "import resource, sys, viva_glyph as vg\n"
        "try:\n    vg.load(sys.argv[1])\nexcept ValueError:\n    pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"  # KiB on Linux
    )
    rss = {}
    for name, size in (("small", 64), ("large", 300 << 20)):
        path = tmp_path / f"{name}.safetensors"
        with open(path, "wb") as fh:
            fh.write(b"\x93NUMPY\x01\x00v\x00")
            fh.truncate(size)  # sparse: nothing is written
        res = subprocess.run(
            [sys.executable, "-c", script, str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        rss[name] = int(res.stdout.split()[-1]) * 1024
    assert rss["large"] - rss["small"] < 8 << 20, rss


def test_codebook_value_that_would_overflow_distances_is_a_format_error(tmp_path: Path) -> None:
    """A finite 3e38 in a file is refused at load as a model-file error naming the stage."""
    books = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
    books[1, 2, 0] = 3e38
    path = tmp_path / "m.safetensors"
    path.write_bytes(raw_file(valid_header(), books.tobytes()))
    with pytest.raises(ModelFormatError, match=r"stage 1: .*code 2 has norm 3e\+38"):
        vg.load(path)
    res = run_cli("info", str(path))
    assert res.returncode == 2 and "stage 1" in res.stderr
