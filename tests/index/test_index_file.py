"""Index files: round trip, layout, atomic writes, corrupted and truncated files."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from viva_glyph.core.codebook import Codebook
from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.index import IndexFormatError, RvqIndex, _save, load

M, K, D = 3, 16, 6


@pytest.fixture(scope="module")
def enc() -> RvqEncoder:
    rng = np.random.default_rng(0)
    return RvqEncoder([Codebook(rng.standard_normal((K, D)) * 0.5**s) for s in range(M)])


@pytest.fixture(scope="module")
def X() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((300, D)).astype(np.float32)


def built(enc, X, **kw) -> RvqIndex:
    index = RvqIndex(enc, **kw)
    index.add(X, ids=np.arange(len(X)) * 2 + 5)
    return index


@pytest.mark.parametrize(
    "kw",
    [
        {"norm": "float"},
        {"norm": "qint8"},
        {"norm": "cqint8", "metric": "cosine"},
        {"norm": "lut"},
        {"norm": "none", "metric": "ip", "beam_size": 3},
        {"norm": "float", "nlist": 5},
        {"norm": "qint8", "nlist": 5, "metric": "ip"},
    ],
)
def test_round_trip_searches_the_same(enc, X, kw, tmp_path) -> None:
    index = built(enc, X, **kw)
    path = tmp_path / "a.vgindex"
    index.save(path)
    back = load(path)
    assert isinstance(back.store.codes, np.memmap) and isinstance(back.store.ids, np.memmap)
    assert (back.metric, back.norm, back.beam_size, back.nlist) == (
        index.metric,
        index.norm,
        index.beam_size,
        index.nlist,
    )
    assert back.encoder == enc
    q = np.random.default_rng(2).standard_normal((7, D))
    extra = {"nprobe": 3} if index.nlist else {}
    for a, b in zip(index.search(q, 6, **extra), back.search(q, 6, **extra), strict=True):
        np.testing.assert_array_equal(a, b)
    back.remove(back.ids[:10])  # a loaded (read-only, mapped) index can still change
    back.add(X[:4])
    assert len(back) == len(X) - 6


def test_file_is_codes_norms_ids_codebooks_and_safetensors(enc, X, tmp_path) -> None:
    from safetensors.numpy import load_file

    index = built(enc, X)
    path = tmp_path / "a.vgindex"
    index.save(path)
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    payload = M * K * D * enc.dtype.itemsize + len(X) * M * 1 + len(X) * 4 + len(X) * 8
    assert os.path.getsize(path) == 8 + n + payload
    tensors = load_file(path)  # the reference reader accepts it
    assert sorted(tensors) == ["codebooks", "codes", "ids", "norms"]
    np.testing.assert_array_equal(tensors["codes"], enc.encode(X))
    np.testing.assert_array_equal(tensors["ids"], np.arange(len(X)) * 2 + 5)
    dec = enc.decode(enc.encode(X)).astype(np.float64)
    np.testing.assert_allclose(tensors["norms"], (dec * dec).sum(1), rtol=1e-6)


def test_failed_write_leaves_the_old_file(enc, X, tmp_path, monkeypatch) -> None:
    index = built(enc, X)
    path = tmp_path / "a.vgindex"
    index.save(path)
    before = path.read_bytes()

    class Boom:
        shape, size, ndim, dtype = (len(index),), len(index), 1, np.dtype(np.int64)

        def __getitem__(self, item: object) -> None:
            raise OSError("disk full")

    real = _save.write_file

    def failing(path, tensors, meta):  # the ids fail after the header and the codes
        real(path, [(name, Boom() if name == "ids" else a) for name, a in tensors], meta)

    monkeypatch.setattr(_save, "write_file", failing)
    with pytest.raises(OSError, match="disk full"):
        index.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.vgindex"]


def _rewrite_header(path, edit) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n :])


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda h: h["__metadata__"].update(format="viva-glyph-rvq"), "format is"),
        (lambda h: h["__metadata__"].update(format_version="9"), "version '9'"),
        (lambda h: h["__metadata__"].update(count="299"), "shape"),
        (lambda h: h["__metadata__"].update(count="-1"), "count"),
        (lambda h: h["__metadata__"].update(norm="none"), 'norm "none"'),
        (lambda h: h["__metadata__"].update(metric="hamming"), "metric 'hamming'"),
        (lambda h: h["codes"].update(dtype="U16"), "dtype 'U16'"),
        (lambda h: h["codes"].update(shape=[300, 4]), "shape"),
        (lambda h: h["ids"].update(data_offsets=[0, 2400]), "offsets"),
        (lambda h: h.pop("norms"), "tensors"),
        (
            lambda h: h.update(extra={"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}),
            "tensors",
        ),
        (lambda h: h.update(norms=[1, 2]), "not a JSON object"),
        (lambda h: h.pop("__metadata__"), "metadata missing"),
    ],
)
def test_bad_header(enc, X, tmp_path, edit, match) -> None:
    path = tmp_path / "a.vgindex"
    built(enc, X).save(path)
    _rewrite_header(path, edit)
    with pytest.raises(IndexFormatError, match=match):
        load(path)


def test_truncated_and_garbage_files(enc, X, tmp_path) -> None:
    path = tmp_path / "a.vgindex"
    built(enc, X).save(path)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    for cut in (0, 5, 8, 8 + n // 2, 8 + n, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(IndexFormatError, match=r"a\.vgindex is not a valid viva-glyph index"):
            load(path)
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(IndexFormatError, match="header length"):
        load(path)
    path.write_bytes(struct.pack("<Q", 6) + b"{nope}")
    with pytest.raises(IndexFormatError, match="not valid JSON"):
        load(path)
    path.write_bytes(data + b"\0" * 8)
    with pytest.raises(IndexFormatError, match="expected"):
        load(path)


def test_bad_values_in_data(enc, X, tmp_path) -> None:
    path = tmp_path / "a.vgindex"
    built(enc, X).save(path)
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    codes_at = 8 + n + M * K * D * enc.dtype.itemsize
    bad = data.copy()
    bad[codes_at + 7] = K  # a code out of [0, K)
    path.write_bytes(bytes(bad))
    with pytest.raises(IndexFormatError, match=r"codes outside \[0, 16\)"):
        load(path)
    bad = data.copy()
    norms_at = codes_at + len(X) * M
    bad[norms_at : norms_at + 4] = np.array([np.nan], np.float32).tobytes()
    path.write_bytes(bytes(bad))
    with pytest.raises(IndexFormatError, match="norms hold NaN"):
        load(path)


def test_not_a_regular_file(tmp_path, enc) -> None:
    with pytest.raises(IndexFormatError, match="not a regular file"):
        load(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(IndexFormatError, match="not a regular file"):
        load(fifo)  # would block forever if it were opened
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.vgindex")
    untrained = RvqIndex(enc, nlist=3)
    with pytest.raises(ValueError, match="untrained IVF"):
        untrained.save(tmp_path / "b.vgindex")


@given(pos=st.integers(0, 10_000), value=st.integers(0, 255))
def test_any_header_byte_flip_loads_or_raises_format_error(tmp_path_factory, pos, value) -> None:
    folder = tmp_path_factory.mktemp("flip")
    rng = np.random.default_rng(0)
    enc = RvqEncoder([Codebook(rng.standard_normal((4, 2))) for _ in range(2)])
    index = RvqIndex(enc)
    index.add(rng.standard_normal((5, 2)))
    path = folder / "a.vgindex"
    index.save(path)
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[pos % (8 + n)] = value
    path.write_bytes(bytes(data))
    try:
        back = load(path)
    except IndexFormatError:
        return
    back.search(np.zeros((1, 2)), 2)


def test_build_from_memmap_equals_in_memory(enc, X, tmp_path, monkeypatch) -> None:
    from viva_glyph.index import _index

    monkeypatch.setattr(_index, "ADD_ROWS", 64)  # several blocks, pages dropped after each
    np.save(tmp_path / "x.npy", X)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    a, b = RvqIndex(enc), RvqIndex(enc)
    a.add(mapped)
    b.add(np.array(X))
    np.testing.assert_array_equal(a.store.codes, b.store.codes)
    np.testing.assert_array_equal(a.store.norms, b.store.norms)
    np.testing.assert_array_equal(mapped, X)  # still readable after its pages were dropped


def _bad_params(norm: str, how: str, p: np.ndarray) -> np.ndarray:
    p = p.copy()
    if how == "nan":
        p[3, ..., 0] = np.nan
    elif how == "huge":
        p[2, ..., 0] = 1e200
    elif how == "negative step":
        p[1, 1] = -0.5
    elif how == "negative bound":
        p[4, ..., -1] = -1.0
    elif how == "unsorted":
        p[0, :, 0] = np.linspace(1.0, -1.0, p.shape[1])
    return p


@pytest.mark.parametrize(
    ("norm", "field", "match"),
    [
        ("float", "ids", "ids hold negative values"),
        ("qint8", "nan", r"norm_params \(cross-term quantizer\) hold NaN or inf"),
        ("qint8", "huge", r"norm_params .* beyond what the codes reach"),
        ("qint8", "negative step", "norm_params .*: a qint8 step or bound is negative"),
        ("qint8", "negative bound", "norm_params .*: a qint8 step or bound is negative"),
        ("cqint8", "nan", r"norm_params \(cross-term quantizer\) hold NaN or inf"),
        ("cqint8", "huge", r"norm_params .* beyond what the codes reach"),
        ("cqint8", "negative bound", "norm_params .*: a cqint8 bound is negative"),
        ("cqint8", "unsorted", "norm_params .*: cqint8 levels of a first code are not sorted"),
    ],
)
def test_bad_ids_and_norm_params_in_data(enc, X, tmp_path, norm, field, match) -> None:
    """Values a corrupted file may hold that no index writes (re-ranking reads the rows of
    ``vectors`` by id: a negative id silently read another vector)."""
    index = built(enc, X, norm=norm)
    if field == "ids":
        index.store.ids = index.store.ids.copy()
        index.store.ids[3] = -2
    else:
        index.store.norm_params = _bad_params(norm, field, index.store.norm_params)
    path = tmp_path / "a.vgindex"
    index.save(path)
    with pytest.raises(IndexFormatError, match=match):
        load(path)


@pytest.mark.parametrize("norm", ["qint8", "cqint8"])
def test_norm_params_of_another_shape_or_dtype_are_refused(enc, X, tmp_path, norm) -> None:
    index = built(enc, X, norm=norm)
    for bad in (index.store.norm_params[:-1], index.store.norm_params.astype(np.float32)):
        index.store.norm_params = np.ascontiguousarray(bad)
        index.save(tmp_path / "a.vgindex")
        with pytest.raises(IndexFormatError, match="tensor 'norm_params' has"):
            load(tmp_path / "a.vgindex")


@pytest.mark.parametrize("norm", ["qint8", "cqint8"])
@pytest.mark.parametrize("nlist", [None, 4])
@pytest.mark.parametrize("what", ["byte", "grid"])
def test_a_norm_byte_or_bound_that_does_not_hold_is_refused(
    enc, X, tmp_path, norm, nlist, what
) -> None:
    # A byte moved to another bin, or a bound shrunk below the error it states, passed
    # every range check and silently dropped neighbours from the exact re-scoring.
    index = built(enc, X, norm=norm, nlist=nlist)
    s = index.store
    if what == "byte":
        s.norms = np.asarray(s.norms).copy()
        s.norms[7] = (int(s.norms[7]) + 128) % 256
    else:
        s.norm_params = s.norm_params.copy()
        first, byte = int(np.asarray(s.codes)[7, 0]), int(np.asarray(s.norms)[7])
        if norm == "qint8":
            s.norm_params[first, 2] = 0.0  # no bin centre is exact here
        else:  # few rows a first code: every level is exact, its bound 0; move the level
            level = s.norm_params[first, byte, 0]
            s.norm_params[first, byte, 0] = level + 1e-6 * (1.0 + abs(level))
    path = tmp_path / "a.vgindex"
    index.save(path)
    with pytest.raises(IndexFormatError, match=r"norms byte \d+ at row \d+ .* bound"):
        load(path)


def _legacy_file(enc, X, path, norm: str, nlist: int | None) -> RvqIndex:
    """An index file as the versions before ``norm_grid`` wrote it: one byte of the whole
    norm ||x'||^2 on one grid ([min, max] for qint8, 256 k-means levels for cqint8, F32),
    built here by hand from that writer's layout. Returns the float-norm index of it."""
    from viva_glyph.files import write_file
    from viva_glyph.index._kmeans1d import kmeans_1d

    ref = RvqIndex(enc, norm="float", nlist=nlist)
    ref.add(X, ids=np.arange(len(X)) * 2 + 5)
    s = ref.store
    norms = np.asarray(s.norms, dtype=np.float64)
    if norm == "qint8":
        params = np.array([norms.min(), norms.max()], np.float32)
        step = (float(params[1]) - float(params[0])) / 256
        stored = np.clip(np.floor((norms - params[0]) / step), 0, 255).astype(np.uint8)
    else:
        params = kmeans_1d(norms, 256).astype(np.float32)
        mid = (params[1:].astype(np.float64) + params[:-1]) / 2
        stored = np.searchsorted(mid, norms).astype(np.uint8)
    meta = {
        "format": "viva-glyph-index",
        "format_version": "1",
        "config": json.dumps({"num_stages": M, "dimension": D, "codebook_size": K}),
        "metric": "l2",
        "norm": norm,
        "beam_size": "1",
        "nlist": str(nlist or 0),
        "count": str(len(X)),
        "norm_seen": str(len(X)),
        "library_version": "0.9.0",
    }
    tensors = [
        ("codebooks", enc.codebook_array),
        ("codes", np.asarray(s.codes)),
        ("norms", stored),
        ("ids", np.asarray(s.ids)),
        ("norm_params", params),
    ]
    if nlist:
        tensors += [("centroids", s.centroids), ("offsets", s.offsets)]
    write_file(path, tensors, meta)
    return ref


@pytest.mark.parametrize("nlist", [None, 4])
@pytest.mark.parametrize("norm", ["qint8", "cqint8"])
def test_files_of_the_whole_norm_format_load_and_search_exactly(
    enc, X, tmp_path, norm, nlist
) -> None:
    ref = _legacy_file(enc, X, tmp_path / "old.vgindex", norm, nlist)
    back = load(tmp_path / "old.vgindex")
    assert back.norm == norm and back.store.norm_params.shape[0] == K
    Q = np.random.default_rng(9).standard_normal((25, D))
    probe = 4 if nlist else 1
    d, i = back.search(Q, 10, nprobe=probe)
    d0, i0 = ref.search(Q, 10, nprobe=probe)
    np.testing.assert_array_equal(i, i0)
    np.testing.assert_allclose(d, d0, rtol=1e-5, atol=1e-5)
    back.save(tmp_path / "new.vgindex")  # written again in the current format
    again = load(tmp_path / "new.vgindex")
    np.testing.assert_array_equal(again.search(Q, 10, nprobe=probe)[1], i0)
    np.testing.assert_array_equal(again.store.norm_params, back.store.norm_params)
    back.add(X[:20] + 0.5)  # and grows like any index
    assert len(back) == len(X) + 20


def _hostile(enc, X, tmp_path, what):
    """An index file holding one value that the constructor, add or add_codes refuses."""
    norm = {"qint8_params": "qint8", "cqint8_params": "cqint8"}.get(what, "float")
    nlist = 4 if what == "centroids" else None
    index = built(enc, X, norm=norm, nlist=nlist)
    s = index.store
    if what in ("negative norm", "inf norm"):
        s.norms = s.norms.copy()
        s.norms[7] = -100.0 if what == "negative norm" else np.inf
    elif what == "duplicate ids":
        s.ids = s.ids.copy()
        s.ids[11] = s.ids[200]
    elif what == "centroids":
        s.centroids = s.centroids.copy()
        s.centroids[1, 2] = 1e30
    elif what == "qint8_params":
        s.norm_params = _bad_params("qint8", "negative step", s.norm_params)
    elif what == "cqint8_params":
        s.norm_params = _bad_params("cqint8", "negative bound", s.norm_params)
    elif what == "codebooks":  # each code under the encoder's limit, their sum over it
        big = np.full((M, K, D), 3e18 / np.sqrt(D), np.float32)
        index.encoder = RvqEncoder([Codebook(b) for b in big])
    path = tmp_path / "a.vgindex"
    index.save(path)
    return path


@pytest.mark.parametrize(
    ("what", "match"),
    [
        ("negative norm", r"norms hold -100 at row 7"),
        ("inf norm", r"norms hold inf at row 7"),
        ("duplicate ids", r"ids hold 405 twice"),
        ("centroids", r"centroids"),
        ("qint8_params", r"norm_params"),
        ("cqint8_params", r"norm_params"),
        ("codebooks", r"codebooks"),
    ],
)
def test_load_refuses_the_values_that_add_refuses(enc, X, tmp_path, what, match) -> None:
    # A centroid coordinate of 1e30 gave L2 distances of -2.5e29 and garbage neighbours, a
    # norm of -100 ranked its vector first for every query, duplicate ids loaded and then
    # remove([id]) removed two rows.
    path = _hostile(enc, X, tmp_path, what)
    with pytest.raises(IndexFormatError, match=match):
        load(path)


@pytest.mark.parametrize("norm", ["float", "qint8", "cqint8"])
@given(flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=4))
def test_any_data_byte_flip_loads_a_sound_index_or_raises_format_error(
    tmp_path_factory, norm, flips
) -> None:
    """Flipped bytes in the tensors (not the header): the file is refused, or what loads
    searches to distinct stored ids at finite distances, and removes one row per id."""
    folder = tmp_path_factory.mktemp("flip")
    rng = np.random.default_rng(0)
    enc = RvqEncoder([Codebook(rng.standard_normal((4, 3))) for _ in range(2)])
    index = RvqIndex(enc, norm=norm, centroids=rng.standard_normal((2, 3)))
    index.add(rng.standard_normal((20, 3)), ids=np.arange(20) * 3)
    path = folder / "a.vgindex"
    index.save(path)
    data = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    for pos, value in flips:
        data[8 + n + pos % (len(data) - 8 - n)] = value
    path.write_bytes(bytes(data))
    try:
        back = load(path)
    except IndexFormatError:
        return
    dist, ids = back.search(rng.standard_normal((5, 3)), 20, nprobe=2)
    assert np.isfinite(dist).all()
    assert (ids >= 0).all() and all(len(set(row)) == 20 for row in ids.tolist())
    assert set(ids.ravel().tolist()) == set(back.ids.tolist())
    assert back.remove(back.ids[:1]) == 1 and len(back) == 19


def test_a_named_pipe_is_not_an_index_file(tmp_path) -> None:
    # "... is a named pipe (FIFO), not a index file"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(IndexFormatError, match=r"named pipe \(FIFO\), not an index file"):
        load(fifo)
