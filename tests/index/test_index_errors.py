"""Bad input to RvqIndex: clear errors, and the index is left as it was."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from viva_glyph.core.codebook import Codebook
from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.index import MAX_K, RvqIndex


@pytest.fixture(scope="module")
def enc() -> RvqEncoder:
    rng = np.random.default_rng(0)
    return RvqEncoder([Codebook(rng.standard_normal((16, 6)) * 0.5**s) for s in range(3)])


@pytest.fixture
def index(enc) -> RvqIndex:
    idx = RvqIndex(enc)
    idx.add(np.random.default_rng(1).standard_normal((50, 6)))
    return idx


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metric": "euclid"}, "metric must be one of"),
        ({"norm": "int4"}, "norm must be one of"),
        ({"norm": "none"}, r"norm=\"none\" keeps no .*metric='l2'"),
        ({"norm": "none", "metric": "cosine"}, "metric='cosine'"),
        ({"beam_size": 0}, "beam_size must be a positive int"),
        ({"nlist": 0}, "nlist must be a positive int"),
    ],
)
def test_bad_construction(enc, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        RvqIndex(enc, **kwargs)


def test_not_an_encoder() -> None:
    with pytest.raises(TypeError, match="encoder must be an RvqEncoder, got ndarray"):
        RvqIndex(np.zeros((3, 3)))  # type: ignore[arg-type]


def test_bad_queries(index) -> None:
    q = np.zeros((2, 6))
    with pytest.raises(ValueError, match="dimension 6"):
        index.search(np.zeros((2, 5)), 3)
    bad = q.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="row 1"):
        index.search(bad, 3)
    for k in (0, -1):
        with pytest.raises(ValueError, match="k must be a positive int"):
            index.search(q, k)
    with pytest.raises(TypeError, match="k must be a positive int"):
        index.search(q, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"k must be <= {MAX_K}"):
        index.search(q, MAX_K + 1)
    with pytest.raises(ValueError, match=r"rerank must be in \[k"):
        index.search(q, 5, rerank=4)
    with pytest.raises(ValueError, match="only used with rerank"):
        index.search(q, 5, vectors=np.zeros((50, 6)))
    with pytest.raises(ValueError, match=r"vectors has 49 rows.*id 49"):
        index.search(q, 5, rerank=10, vectors=np.zeros((49, 6)))
    with pytest.raises(ValueError, match="dimension 6"):
        index.search(q, 5, rerank=10, vectors=np.zeros((50, 7)))


def test_zero_query_with_cosine(enc) -> None:
    idx = RvqIndex(enc, metric="cosine")
    idx.add(np.ones((3, 6)))
    with pytest.raises(ValueError, match="Q row 1 is zero"):
        idx.search(np.array([[1.0] * 6, [0.0] * 6]), 1)


def test_duplicate_and_unknown_ids(index) -> None:
    x = np.ones((3, 6))
    with pytest.raises(ValueError, match=r"duplicate id 7 in ids \(again at row 2\)"):
        index.add(x, ids=[7, 100, 7])
    with pytest.raises(ValueError, match=r"id 3 \(row 1\) is already in the index"):
        index.add(x, ids=[200, 3, 201])
    with pytest.raises(ValueError, match=r"ids must have shape \(3,\)"):
        index.add(x, ids=[1, 2])
    with pytest.raises(TypeError, match="ids must be integers"):
        index.add(x, ids=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"not in the index, e.g. \[50, 99\]"):
        index.remove([3, 50, 99])
    assert len(index) == 50  # nothing added or removed by the failures


def test_nan_in_a_later_block_adds_nothing(index, monkeypatch) -> None:
    from viva_glyph.index import _index

    monkeypatch.setattr(_index, "ADD_ROWS", 4)
    x = np.ones((10, 6))
    x[9, 0] = np.inf
    with pytest.raises(ValueError, match="row 9"):
        index.add(x)
    assert len(index) == 50 and index.ids.max() == 49


def test_bad_codes(index) -> None:
    with pytest.raises(ValueError, match=r"codes must be in \[0, 16\), got \[0, 16, 0\] at row 1"):
        index.add_codes(np.array([[0, 0, 0], [0, 16, 0]]))
    with pytest.raises(ValueError, match=r"codes must have shape \(N, 3\)"):
        index.add_codes(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(TypeError, match="codes must be integers"):
        index.add_codes(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"norms must be finite and >= 0, got -1\.0 at row 1"):
        index.add_codes(np.zeros((2, 3), dtype=np.int64), norms=[1.0, -1.0])
    with pytest.raises(ValueError, match="lists are only for IVF"):
        index.add_codes(np.zeros((2, 3), dtype=np.int64), lists=[0, 0])


def test_ivf_errors(enc) -> None:
    idx = RvqIndex(enc, nlist=4)
    with pytest.raises(ValueError, match="train the IVF index"):
        idx.add_codes(np.zeros((2, 3), dtype=np.int64), lists=[0, 1])
    with pytest.raises(ValueError, match="needs >= 4 rows, got 3"):
        idx.add(np.ones((3, 6)))
    idx.add(np.random.default_rng(0).standard_normal((40, 6)))
    with pytest.raises(ValueError, match="nprobe must be <= nlist = 4, got 5"):
        idx.search(np.zeros((1, 6)), 1, nprobe=5)
    with pytest.raises(ValueError, match="needs lists="):
        idx.add_codes(np.zeros((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"lists\[1\] = 4 is outside \[0, 4\)"):
        idx.add_codes(np.zeros((2, 3), dtype=np.int64), lists=[0, 4])
    with pytest.raises(ValueError, match="cannot change once vectors are stored"):
        idx.train(np.ones((10, 6)))


def test_given_centroids(enc) -> None:
    cent = np.random.default_rng(3).standard_normal((5, 6))
    idx = RvqIndex(enc, centroids=cent)
    assert idx.nlist == 5 and idx.is_trained
    np.testing.assert_array_equal(idx.store.centroids, cent)
    with pytest.raises(ValueError, match="nlist = 4 but 5 centroids"):
        RvqIndex(enc, nlist=4, centroids=cent)
    with pytest.raises(ValueError, match="dimension 6"):
        RvqIndex(enc, centroids=np.zeros((5, 3)))
    cent[2, 1] = np.nan
    with pytest.raises(ValueError, match="row 2"):
        RvqIndex(enc, centroids=cent)


def test_queries_too_large_for_float32_scores(index) -> None:
    """Finite but huge queries overflowed the float32 tables: inf distances, arbitrary ids."""
    q = np.zeros((3, 6))
    q[2, 0] = 1e20  # ||q||^2 = 1e40 > float32 max
    with pytest.raises(ValueError, match=r"Q row 2 has norm 1e\+20, above the limit"):
        index.search(q, 3)
    q[2, 0] = 1e18  # within the limit: finite distances
    d, _ = index.search(q, 3)
    assert np.isfinite(d).all()


def test_codebooks_too_large_for_float32_scores() -> None:
    """A float64 model may hold vectors whose squared norm no float32 score can hold."""
    rng = np.random.default_rng(0)
    books = [Codebook(rng.standard_normal((4, 3)) * 1e19), Codebook(rng.standard_normal((4, 3)))]
    with pytest.raises(ValueError, match=r"reconstruct vectors of norm up to .* float32"):
        RvqIndex(RvqEncoder(books))


def test_negative_ids_are_refused(enc) -> None:
    """-1 marks 'no result' and ids address the rows of re-ranking vectors: no negatives."""
    x = np.random.default_rng(2).standard_normal((3, 6))
    idx = RvqIndex(enc)
    with pytest.raises(ValueError, match=r"ids must be >= 0 .*got -1 at row 1"):
        idx.add(x, ids=[4, -1, 5])
    with pytest.raises(ValueError, match=r"ids must be >= 0 .*got -7 at row 0"):
        idx.add_codes(np.zeros((1, 3), dtype=np.int64), ids=[-7])
    assert len(idx) == 0


def test_default_ids_past_the_int64_maximum(enc) -> None:
    x = np.random.default_rng(3).standard_normal((2, 6))
    idx = RvqIndex(enc)
    idx.add(x[:1], ids=[np.iinfo(np.int64).max])
    with pytest.raises(ValueError, match=r"no room for 1 more ids after .*pass ids="):
        idx.add(x[1:])
    assert len(idx) == 1


def test_remove_nothing(index) -> None:
    n = len(index)
    assert index.remove([]) == 0
    assert index.remove(np.array([], dtype=np.int64)) == 0
    assert len(index) == n


def test_nlist_is_bounded(enc) -> None:
    """nlist sizes arrays at construction (the list offsets): 10**12 asked for 7 TiB."""
    top = 1 << 24  # as index files allow
    with pytest.raises(ValueError, match=f"nlist must be <= {top}, got {10**12}"):
        RvqIndex(enc, nlist=10**12)
    assert RvqIndex(enc, nlist=top).nlist == top


HANG = """
import os, sys, numpy as np
from viva_glyph.core.codebook import Codebook
from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.index import RvqIndex, search_shards
rng = np.random.default_rng(0)
index = RvqIndex(RvqEncoder([Codebook(rng.standard_normal((8, 6))) for _ in range(2)]))
index.add(rng.standard_normal((50, 6)))
index.save(sys.argv[2])
try:
    if sys.argv[1] == "index":
        index.search(np.zeros((1, 6)), 5, rerank=10, vectors=sys.argv[3])
    else:
        search_shards([sys.argv[2]], np.zeros((1, 6)), 5, rerank=10, vectors=sys.argv[3])
except ValueError as exc:
    print(exc)
"""


@pytest.mark.parametrize("where", ["index", "shards"])
def test_a_named_pipe_as_vectors_is_refused_without_blocking(tmp_path, where) -> None:
    # search(..., rerank=10, vectors="f.npy") with f.npy a FIFO blocked forever.
    fifo = tmp_path / "f.npy"
    os.mkfifo(fifo)
    res = subprocess.run(
        [sys.executable, "-c", HANG, where, str(tmp_path / "a.vgindex"), str(fifo)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert res.returncode == 0, res.stderr
    assert "named pipe" in res.stdout and "not a .npy file" in res.stdout, res.stdout


@pytest.mark.parametrize("where", ["index", "shards"])
def test_vectors_files_that_are_no_npy_say_so(index, tmp_path, where) -> None:
    # A text file as vectors gave numpy's "allow_pickle" message; a file of the wrong
    # dimension gave "cannot reshape array of size 140".
    from viva_glyph.index import search_shards

    path = tmp_path / "a.vgindex"
    index.save(path)

    def search(vectors):
        if where == "index":
            return index.search(np.zeros((1, 6)), 5, rerank=10, vectors=vectors)
        return search_shards([path], np.zeros((1, 6)), 5, rerank=10, vectors=vectors)

    (tmp_path / "t.npy").write_text("0.5 0.25\n" * 60)
    with pytest.raises(ValueError, match=r"t\.npy is not a \.npy file") as info:
        search(tmp_path / "t.npy")
    assert "pickle" not in str(info.value)
    np.save(tmp_path / "wide.npy", np.zeros((50, 7), np.float32))
    with pytest.raises(ValueError, match=r"wide\.npy holds vectors of dimension 7.*dimension 6"):
        search(tmp_path / "wide.npy")
    np.save(tmp_path / "right.npy", np.zeros((50, 6), np.float32))
    (tmp_path / "short.npy").write_bytes((tmp_path / "right.npy").read_bytes()[:300])
    with pytest.raises(ValueError, match=r"short\.npy.*truncated"):
        search(tmp_path / "short.npy")
    with pytest.raises(ValueError, match=r"is a folder"):
        search(tmp_path)
