"""Hostile inputs to the k-means engine and its callers: each test pins a defect that a
hostile user found (it failed before its fix) or an edge that held, against an
independent reference (brute force, a hand-computed case)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from hypothesis import given, settings
from hypothesis import strategies as st

from viva_glyph import files, semantic
from viva_glyph.files import _atomic
from viva_glyph.train import kmeans
from viva_glyph.train.rows import ArrayRows


def brute_sqdist(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """(n,) float64 squared distance of each row to its nearest centroid, elementwise."""
    x64, c64 = np.asarray(x, dtype=np.float64), np.asarray(c, dtype=np.float64)
    return ((x64[:, None, :] - c64[None, :, :]) ** 2).sum(-1).min(axis=1)


def plus_plus_reference(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ on explicit float64 pairwise distances (elementwise), drawing as
    :func:`kmeans.kmeans_plus_plus` does (the first pick, then (K - 1, 2 + log K)
    uniforms u); once every squared distance is 0, the pick is row ``min(int(u_0 * n),
    n - 1)``."""
    n = x.shape[0]
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    picks = [int(rng.integers(n))]
    closest = dist[picks[0]].copy()
    for u in rng.random((k - 1, 2 + int(np.log(k)))):
        if closest.sum() == 0:
            picks.append(min(int(u[0] * n), n - 1))
            continue
        cum = np.cumsum(closest)
        cand = np.minimum(np.searchsorted(cum, u * cum[-1], side="right"), n - 1)
        best = cand[int(np.argmin([np.minimum(closest, dist[c]).sum() for c in cand]))]
        picks.append(int(best))
        closest = np.minimum(closest, dist[best])
    return x[picks]


def use_backend(monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    if backend == "numba":
        pytest.importorskip("numba")
    monkeypatch.setenv("VIVA_GLYPH_NUMBA", "1" if backend == "numba" else "0")


# -- k-means++ -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("d", [3, 40])  # numba: products in the kernel, a Gram matrix
@pytest.mark.parametrize("exp", [-100, 70])  # |x| ~ 1e-30, 1e21
def test_kmeans_plus_plus_at_extreme_magnitudes(
    backend: str, d: int, exp: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Scaling the rows by a power of two scales every distance exactly (float64, and the
    # numpy path's float32 products, which it computes on rows scaled to |x| < 1), so
    # the seeds are the same rows as unscaled, the same arithmetic in the same order.
    # The float32 products overflowed at 2^70 (every distance 0: uniform picks, 2
    # distinct seeds of 10) and underflowed at 2^-100 (distances ||a||^2 + ||b||^2).
    use_backend(monkeypatch, backend)
    x = np.random.default_rng(7).standard_normal((400, d))
    plain = kmeans.kmeans_plus_plus(x, 25, np.random.default_rng(11))
    got = kmeans.kmeans_plus_plus(np.ldexp(x, exp), 25, np.random.default_rng(11))
    np.testing.assert_array_equal(got, np.ldexp(plain, exp))
    assert len({tuple(r) for r in got}) == 25


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@given(
    n=st.integers(1, 60),
    d=st.integers(1, 12),  # numba: products in the kernel up to 8, then a Gram matrix
    k_frac=st.floats(0, 1),
    values=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=80, deadline=None)
def test_kmeans_plus_plus_on_small_integers_equals_the_reference(
    backend: str, n: int, d: int, k_frac: float, values: int, seed: int
) -> None:
    # Small integer coordinates: every product and sum is exact in float32 and float64,
    # so both paths must pick exactly the reference's rows, whatever the ties (values=1:
    # all rows identical; few values: fewer distinct rows than K; K = 1 and K = N).
    if backend == "numba":
        pytest.importorskip("numba")
    k = 1 + int(k_frac * (n - 1))
    rng = np.random.default_rng(seed)
    x = rng.integers(-(values // 2), values - values // 2, (n, d)).astype(np.float64)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VIVA_GLYPH_NUMBA", "1" if backend == "numba" else "0")
        got = kmeans.kmeans_plus_plus(x, k, np.random.default_rng(seed))
    np.testing.assert_array_equal(got, plus_plus_reference(x, k, np.random.default_rng(seed)))


@pytest.mark.parametrize("d", [8, 9])  # DIRECT_DIMS = 8: products in the kernel up to 8
@pytest.mark.parametrize("spare", [0, -1])  # Gram matrix of exactly GRAM_BYTES; 1 byte over
def test_kmeans_plus_plus_at_the_route_boundaries(
    d: int, spare: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_backend(monkeypatch, "numba")
    n = 45
    monkeypatch.setattr(kmeans, "GRAM_BYTES", n * n * 8 + spare)
    from viva_glyph.train import _numba

    routes: list[str] = []
    real = _numba.plus_plus_kernel

    def spy(x, sq, gram, first, draws):  # type: ignore[no-untyped-def]
        routes.append("direct" if gram is None else "gram")
        return real(x, sq, gram, first, draws)

    monkeypatch.setattr(_numba, "plus_plus_kernel", spy)
    x = np.random.default_rng(d).integers(-3, 4, (n, d)).astype(np.float64)
    for k in (1, 7, n):
        got = kmeans.kmeans_plus_plus(x, k, np.random.default_rng(k))
        np.testing.assert_array_equal(got, plus_plus_reference(x, k, np.random.default_rng(k)))
    expect = "direct" if d <= 8 else ("gram" if spare == 0 else None)
    assert routes == ([] if expect is None else [expect] * 3)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize("d", [3, 12])
def test_kmeans_plus_plus_reads_any_layout_and_dtype(
    backend: str, d: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_backend(monkeypatch, backend)
    x = np.random.default_rng(8).integers(-50, 50, (300, d)).astype(np.int16)
    np.save(tmp_path / "x.npy", x)
    ref = plus_plus_reference(x.astype(np.float64), 20, np.random.default_rng(3))
    wide = np.zeros((300, 2 * d), dtype=np.float32)
    wide[:, ::2] = x
    for view in (
        x,
        x.astype(np.float16),
        np.asfortranarray(x.astype(np.float32)),
        wide[:, ::2],
        np.load(tmp_path / "x.npy", mmap_mode="r"),
    ):
        got = kmeans.kmeans_plus_plus(view, 20, np.random.default_rng(3))
        assert got.dtype == np.float64 and type(got) is np.ndarray
        np.testing.assert_array_equal(got, ref)


def test_numba_kernels_work_where_numba_cannot_cache(tmp_path: Path) -> None:
    # A read-only install without a writable user cache folder: numba's cache=True raised
    # "RuntimeError: cannot cache function '_kernel': no locator available" when
    # viva_glyph.train._numba was imported, so every k-means call failed (the loader only
    # falls back on ImportError). NUMBA_CACHE_LOCATOR_CLASSES (numba >= 0.61) with a
    # locator that never applies outside IPython stands in for that machine.
    numba = pytest.importorskip("numba")
    if tuple(int(v) for v in numba.__version__.split(".")[:2]) < (0, 61):
        pytest.skip("NUMBA_CACHE_LOCATOR_CLASSES needs numba >= 0.61")
    script = (
        "import numpy as np\n"
        "from viva_glyph.train import kmeans\n"
        "from viva_glyph.core.nearest import numba_module\n"
        "assert numba_module('viva_glyph.train._numba') is not None\n"
        "x = np.arange(120.0).reshape(40, 3) % 7\n"
        "print(kmeans.kmeans_plus_plus(x, 5, np.random.default_rng(1)).tolist())\n"
    )
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(sys.path),
        NUMBA_CACHE_LOCATOR_CLASSES="IPythonCacheLocator",
        VIVA_GLYPH_NUMBA="1",
    )
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr
    x = np.arange(120.0).reshape(40, 3) % 7
    expect = plus_plus_reference(x, 5, np.random.default_rng(1))
    assert res.stdout.strip() == str(expect.tolist())


# -- accumulate: numba and bincount ----------------------------------------------------


def test_accumulate_gives_the_same_bits_with_and_without_numba() -> None:
    # More rows than one bincount piece (2^20 entries; refine's least squares passes all
    # training rows): the numpy path summed each piece from zero and added it, numba
    # one running sum, and float64 rows of mixed magnitudes came out different (5e-13).
    pytest.importorskip("numba")
    rng = np.random.default_rng(6)
    n, d, k = 10_000, 256, 5  # 2.4 pieces of 4,096 rows
    x = rng.standard_normal((n, d)) * 10.0 ** rng.integers(-6, 4, (n, 1))
    lab = rng.integers(0, k, n)
    got = []
    for backend in ("1", "0"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("VIVA_GLYPH_NUMBA", backend)
            got.append(kmeans.accumulate(x, lab, k))
    np.testing.assert_array_equal(got[0][0], got[1][0])
    np.testing.assert_array_equal(got[0][1], got[1][1])
    ref = np.zeros((k, d))
    np.add.at(ref, lab, x)
    np.testing.assert_allclose(got[0][0], ref, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(got[0][1], np.bincount(lab, minlength=k))


# -- Lloyd's loop: a split in the last iteration ---------------------------------------


@pytest.mark.parametrize("scale", [1e-8, 1.0, 1e6])
def test_lloyd_on_identical_rows_returns_their_value(scale: float) -> None:
    # Every row equal: one cluster holds all and the others are re-seeded in every
    # iteration, so the loop always ends on a split. The split moved the full cluster
    # off its mean by a perturbation of absolute size 1/1024 (the spread is 0): at
    # scale 1e-8 no centroid was within 1e-3 of the data.
    x = np.full((100, 3), scale)
    cent, _, _ = kmeans.lloyd(x, 4, iterations=3, rng=np.random.default_rng(0), dtype=np.float64)
    # the mean of 100 equal floats is that float to within a few ulps
    assert brute_sqdist(x, cent).max() <= 1e-24 * 3 * scale**2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lloyd_with_fewer_distinct_points_than_k_has_zero_inertia(dtype: type) -> None:
    # 3 distinct points, K = 8: the means of the 3 clusters are the points; the
    # split of the last iteration left every row off its centroid.
    rng = np.random.default_rng(1)
    pts = rng.standard_normal((3, 5))
    x = np.repeat(pts, 40, axis=0)
    cent, n_iter, _ = kmeans.lloyd(x, 8, iterations=5, rng=np.random.default_rng(2), dtype=dtype)
    # empty clusters in every iteration; it ends (before 5 since a re-seed that gains
    # nothing stops it) on an iteration that split
    assert n_iter <= 5
    assert brute_sqdist(x, cent).max() <= 1e-24  # means of equal rows: a few ulps


def test_lloyd_without_empty_clusters_is_unchanged_by_the_split_fix() -> None:
    # Hand-checked step: two clusters, never empty, one iteration = the means.
    x = np.array([[0.0], [1.0], [10.0], [12.0]])
    cent, _, inertia = kmeans.lloyd(
        x, 2, iterations=1, rng=np.random.default_rng(0), init=np.array([[0.0], [10.0]])
    )
    np.testing.assert_array_equal(cent, [[0.5], [11.0]])
    assert inertia == pytest.approx(1.0 + 4.0)


def test_progressive_kmeans_on_duplicates_reaches_zero_inertia() -> None:
    rng = np.random.default_rng(3)
    x = np.repeat(rng.standard_normal((5, 12)).astype(np.float32), 30, axis=0)
    rows = ArrayRows.of(x, kmeans.leaf_rows(9, 12))
    cent, _ = kmeans.progressive_kmeans(rows, 9, 4, np.random.default_rng(0))
    assert brute_sqdist(x, cent).max() <= 1e-24


@pytest.mark.parametrize("beam", [1, 3])
def test_core_fit_of_duplicates_reconstructs_them(beam: int) -> None:
    # viva_glyph.fit runs the same Lloyd loop: 5 distinct rows, K = 16, one stage
    # left every row 1e-6 off (the last iteration's split).
    import viva_glyph

    base = np.random.default_rng(9).standard_normal((5, 40)).astype(np.float32)
    x = np.repeat(base, 40, axis=0)
    enc = viva_glyph.fit(x, num_stages=2, codebook_size=16, beam_size=beam, seed=1)
    rec = enc.decode(enc.encode(base))
    np.testing.assert_allclose(rec, base, rtol=0, atol=1e-6)
    assert brute_sqdist(base, enc.codebooks[0].vectors).max() <= 1e-12


@given(
    n=st.integers(1, 40),
    d=st.integers(1, 70),  # 1-D first steps (D < 58 at 10 steps) and wider ones
    plus_plus=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=40, deadline=None)
def test_progressive_kmeans_with_as_many_centroids_as_distinct_rows(
    n: int, d: int, plus_plus: bool, seed: int
) -> None:
    # K = N distinct rows (then K = the number of distinct rows of duplicated data):
    # every row ends on a centroid of its own.
    rng = np.random.default_rng(seed)
    x = np.unique(rng.integers(-20, 21, (n, d)).astype(np.float32), axis=0)
    k = x.shape[0]
    for data in (x, np.repeat(x, 3, axis=0)):
        rows = ArrayRows.of(data, kmeans.leaf_rows(k, d))
        cent, _ = kmeans.progressive_kmeans(
            rows, k, 10, np.random.default_rng(seed), plus_plus=plus_plus
        )
        assert cent.shape == (k, d)
        assert brute_sqdist(data, cent).max() == 0.0


# -- semantic.fit through the public API -----------------------------------------------


def test_semantic_fit_of_heavy_duplicates_is_exact() -> None:
    # 10,000 copies of each of 3 vectors with K = 8: every level can reconstruct exactly.
    # Before the fix level 0 left MSE 6.7e-7 and level 1 did not remove it.
    base = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    x = np.repeat(base, 10_000, axis=0)
    ids = semantic.fit(x, levels=2, codebook_size=8, seed=0)
    assert ids.training["level_mse"] == [0.0, 0.0]
    np.testing.assert_array_equal(ids.decode(ids.codes(base)), base.astype(np.float64))


@pytest.mark.parametrize(("n", "d"), [(16, 5), (256, 2)])
def test_semantic_fit_levels_after_an_exact_level_stay_exact(n: int, d: int) -> None:
    # N distinct rows, K = N: level 0 is exact, so every later level's residual is
    # exactly zero. The later levels turned the zero residual into MSE 1e-6.
    x = np.random.default_rng(4).standard_normal((n, d)).astype(np.float32)
    x = np.repeat(x, 3, axis=0)
    ids = semantic.fit(x, levels=3, codebook_size=n, seed=np.int64(7))
    assert ids.training["level_mse"] == [0.0, 0.0, 0.0]


def test_semantic_fit_normalized_residuals_that_are_all_zero(tmp_path: Path) -> None:
    # cosine + normalize_residuals where level 0 is exact (3 directions, K = 8): the mean
    # residual norm of level 1 is 0, and fit raised "residual_scales must be 3 finite
    # positive floats, got [1.0, 0.0, 0.0]" (the model's own check of its scales).
    base = np.random.default_rng(5).standard_normal((3, 6)).astype(np.float32)
    x = np.repeat(base, 700, axis=0)
    ids = semantic.fit(
        x, levels=3, codebook_size=8, metric="cosine", normalize_residuals=True, seed=0
    )
    assert ids.training["level_mse"] == [0.0, 0.0, 0.0]
    unit = base.astype(np.float64) / np.linalg.norm(base.astype(np.float64), axis=1)[:, None]
    np.testing.assert_allclose(ids.decode(ids.codes(base)), unit, rtol=0, atol=1e-7)
    path = tmp_path / "ids.vgsem"
    ids.save(path)
    again = semantic.load(path)
    np.testing.assert_array_equal(again.codes(x), ids.codes(x))
    np.testing.assert_array_equal(again.decode(again.codes(base)), ids.decode(ids.codes(base)))


@pytest.mark.parametrize("d", [1, 2])
def test_semantic_fit_with_a_one_code_level_and_n_equal_to_k(d: int) -> None:
    # sizes (1, 256, 2) and N = 256: level 0 is the mean, level 1 exact, level 2 adds
    # nothing; numpy integer seeds give the same model as Python ints.
    x = np.random.default_rng(d).standard_normal((256, d)).astype(np.float32)
    ids = semantic.fit(x, levels=3, codebook_size=(1, 256, 2), seed=np.uint16(3))
    same = semantic.fit(x, levels=3, codebook_size=(1, 256, 2), seed=3)
    for a, b in zip(ids.codebooks, same.codebooks, strict=True):
        np.testing.assert_array_equal(a.vectors, b.vectors)
    mean = x.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(ids.codebooks[0].vectors64[0], mean, rtol=1e-6, atol=1e-7)
    level0 = ((x - ids.codebooks[0].vectors64[0]) ** 2).mean()
    assert ids.training["level_mse"][0] == pytest.approx(level0, rel=1e-9)
    # exact up to the float32 rounding of the float64 residuals that level 1 clusters
    assert max(ids.training["level_mse"][1:]) < 1e-14


def test_semantic_fit_balance_zero_with_n_not_divisible_by_k() -> None:
    x = np.random.default_rng(3).standard_normal((1001, 6)).astype(np.float32)
    ids = semantic.fit(x, levels=2, codebook_size=16, balance=0.0, seed=np.int64(1))
    assert ids.training["largest_cluster"] == [63, 63]  # ceil(1001 / 16)
    codes = ids.codes(x, balanced=True)
    assert max(np.bincount(codes[:, j]).max() for j in range(2)) <= 63


def test_semantic_fit_is_the_same_for_any_layout_of_the_rows(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((3000, 24)).astype(np.float32)
    ref = semantic.fit(x, levels=2, codebook_size=32, seed=4)
    np.save(tmp_path / "x.npy", x)
    wide = np.zeros((3000, 48), dtype=np.float32)
    wide[:, ::2] = x
    for view in (
        np.asfortranarray(x),
        wide[:, ::2],
        np.load(tmp_path / "x.npy", mmap_mode="r"),
        x.astype(np.float64),
    ):
        ids = semantic.fit(view, levels=2, codebook_size=32, seed=4)
        for a, b in zip(ids.codebooks, ref.codebooks, strict=True):
            np.testing.assert_array_equal(a.vectors, b.vectors)


# -- outputs: check_output and atomic writes -------------------------------------------


def test_check_output_refuses_a_folder_it_cannot_write_in(unwritable: list[Path]) -> None:
    # "Check, before any work": an unwritable folder passed, the work ran, and the write
    # failed at the end naming the temporary file ("no such file: /proc/self/.m...tmp").
    for folder in unwritable:
        with pytest.raises(ValueError, match=f"output folder {folder} is not writable"):
            files.check_output(folder / "model.safetensors")


def test_cli_refuses_an_unwritable_output_folder_before_fitting(
    unwritable: list[Path], tmp_path: Path
) -> None:
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).standard_normal((300, 4)).astype(np.float32))
    out = unwritable[0] / "m.safetensors"
    res = run_cli("fit", str(data), "-o", str(out), "--stages", "1", "--codebook-size", "4")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "not writable" in lines[0] and ".tmp" not in lines[0]


def test_check_output_follows_symlinks_to_what_it_refuses(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    for name, target in [
        ("to-pipe", fifo),
        ("to-null", Path(os.devnull)),
        ("to-dir", tmp_path / "folder"),
    ]:
        (tmp_path / name).symlink_to(target)
    for name in ("to-pipe", "to-null"):
        with pytest.raises(ValueError, match="not a regular file"):
            files.check_output(tmp_path / name)
    with pytest.raises(ValueError, match="is a folder"):
        files.check_output(tmp_path / "to-dir")
    for missing in (tmp_path / "nothere" / "m.npy", tmp_path / "file" / "m.npy"):
        with pytest.raises(FileNotFoundError, match="output folder does not exist"):
            files.check_output(missing)
    assert files.check_output(tmp_path / "new.npy") == tmp_path / "new.npy"


def test_check_output_refuses_a_nul_character(tmp_path: Path) -> None:
    # passed, and the write failed at the end ("embedded null byte")
    with pytest.raises(ValueError, match="NUL character"):
        files.check_output(str(tmp_path / "out\0.npy"))


@pytest.mark.parametrize(
    "name",
    ["b" * 246 + ".npy", "é" * 123 + ".npy", "c" * 251 + ".npy"],
    ids=["ascii-250", "utf8-250", "ascii-255"],
)
def test_atomic_output_writes_a_name_of_up_to_255_bytes(tmp_path: Path, name: str) -> None:
    # The temporary ".<name>.viva-glyph-<host>-<pid>-<start>-<random>.tmp" is ~45 bytes
    # longer than the name: a valid 250-byte name passed check_output, the work ran, and
    # the write failed with "File name too long: .../.bbb...tmp".
    assert len(os.fsencode(name)) <= 255
    target = tmp_path / name
    with files.atomic_output(target, suffix=".npy") as tmp:
        assert tmp.name.endswith(".npy.tmp") and _atomic._TEMP.match(tmp.name)
        with open(tmp, "wb") as fh:
            np.save(fh, np.arange(3))
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == [name]


@pytest.mark.parametrize("dangling", [False, True])
def test_atomic_folder_replaces_a_symlink_in_the_place_of_a_store(
    tmp_path: Path, dangling: bool
) -> None:
    # check_output let a link to a zarr store (or a dangling link) pass; the work ran and
    # the final rename failed: "NotADirectoryError: ... .link.zarr.viva-glyph-...tmp ->
    # link.zarr". Now the link is replaced, as atomic_output replaces a link to a file.
    real = tmp_path / "real.zarr"
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    if not dangling:
        real.mkdir()
        (real / "zarr.json").write_text("old")
    with files.atomic_folder(link) as tmp:
        tmp.mkdir()
        (tmp / "zarr.json").write_text("new")
    assert not link.is_symlink() and (link / "zarr.json").read_text() == "new"
    assert dangling or (real / "zarr.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.zarr"] + ["real.zarr"] * (
        not dangling
    )


# -- reassign: blocks and occupancy ----------------------------------------------------


def reassign_brute(
    codes: np.ndarray, rank: np.ndarray, dist: np.ndarray, candidates: int
) -> tuple[np.ndarray, list[int]]:
    """Item by item: rank 1 items first, then rank 2, ... (ties by row); each takes the
    first of its `candidates` nearest last codes (ties to the lower code) whose glyph
    no item holds."""
    out = codes.astype(np.int64).copy()
    held = {tuple(r) for r in out[rank == 0]}
    moved = []
    for i in sorted(np.flatnonzero(rank > 0).tolist(), key=lambda i: (rank[i], i)):
        for c in sorted(range(dist.shape[1]), key=lambda c: (dist[i, c], c))[:candidates]:
            glyph = (*out[i, :-1], c)
            if glyph not in held:
                held.add(glyph)
                out[i, -1] = c
                moved.append(i)
                break
    return out, moved


@given(
    n=st.integers(1, 60),
    radices=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    block=st.integers(1, 9),
    candidates=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=150, deadline=None)
def test_reassign_in_blocks_matches_the_item_by_item_rule(
    n: int, radices: list[int], block: int, candidates: int, seed: int
) -> None:
    # Few codes and distances in {0, 1, 2}: many collisions, ties, and items that
    # collide with each other across a block boundary.
    from viva_glyph.semantic import _unique

    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, r, n) for r in radices], axis=1)
    _, first = np.unique(codes, axis=0, return_index=True)
    rank = np.ones(n, dtype=np.int64) + rng.integers(0, 3, n)
    rank[first] = 0  # one keeper per glyph; the others ranked 1..3 in any order
    dist = rng.integers(0, 3, (n, radices[-1])).astype(np.float64)
    calls: list[int] = []

    def last_distances(rows: np.ndarray) -> np.ndarray:
        calls.append(rows.size)
        return dist[rows]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_unique, "REASSIGN_ROWS", block)
        out, moved, cand = _unique.reassign(codes, rank, last_distances, tuple(radices), candidates)
    expect, expect_moved = reassign_brute(codes, rank, dist, candidates)
    np.testing.assert_array_equal(out, expect)
    assert sorted(moved.tolist()) == sorted(expect_moved)
    assert max(calls, default=0) <= block
    order = np.argsort(dist[moved], axis=1, kind="stable")
    np.testing.assert_array_equal(order[np.arange(moved.size), cand], out[moved, -1])


def test_reassign_bounds_the_bytes_of_a_block_for_large_last_levels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Blocks of REASSIGN_ROWS rows whatever K_L: 65,536 rows of 65,536 last-level codes
    # held 32 GB of distances and as much of their order. Scaled down: K_L = 64 and a
    # budget of 5 rows' distances and order.
    from viva_glyph.semantic import _unique

    k = 64
    monkeypatch.setattr(_unique, "REASSIGN_BYTES", 5 * 16 * k, raising=False)
    rng = np.random.default_rng(2)
    codes = np.stack([rng.integers(0, 3, 400), rng.integers(0, k, 400)], axis=1)
    _, first = np.unique(codes, axis=0, return_index=True)
    codes = np.concatenate([codes[first], np.repeat(codes[first][:4], 30, axis=0)])
    rank = np.zeros(codes.shape[0], dtype=np.int64)
    rank[first.size :] = np.tile(np.arange(1, 31), 4)
    dist = rng.random((codes.shape[0], k))
    calls: list[int] = []

    def last_distances(rows: np.ndarray) -> np.ndarray:
        calls.append(rows.size)
        return dist[rows]

    out, moved, _ = _unique.reassign(codes, rank, last_distances, (3, k), 8)
    assert max(calls) <= 5 and sum(calls) == 120
    expect, expect_moved = reassign_brute(codes, rank, dist, 8)
    np.testing.assert_array_equal(out, expect)
    assert sorted(moved.tolist()) == sorted(expect_moved)


def test_reassign_holds_no_table_of_every_prefix_and_last_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The occupancy was a dense bool table (prefixes in use, K_L): 65,536 prefixes of a
    # 65,536-code last level held 4 GB. Scaled down: 1,000 prefixes x 2^14 codes (16 MB)
    # must not be allocated for 2,000 items (distances in blocks of 4 rows).
    import tracemalloc

    from viva_glyph.semantic import _unique

    k = 1 << 14
    monkeypatch.setattr(_unique, "REASSIGN_BYTES", 4 * 16 * k, raising=False)
    prefix = np.repeat(np.arange(1000), 2)
    codes = np.stack([prefix, (prefix * 7) % k], axis=1)  # pairs: one glyph each
    rank = np.tile([0, 1], 1000)
    rows_seen: list[int] = []

    def last_distances(rows: np.ndarray) -> np.ndarray:
        rows_seen.append(rows.size)
        return np.abs(np.arange(k)[None, :] - codes[rows, 1:]).astype(np.float64)

    tracemalloc.start()
    try:
        out, moved, cand = _unique.reassign(codes, rank, last_distances, (1000, k), 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak
    # each second item takes the code one below its own (distance 1, ties to the lower
    # code; code 0: code 1)
    np.testing.assert_array_equal(moved, np.arange(1, 2000, 2))
    np.testing.assert_array_equal(cand, np.ones(1000, dtype=np.int64))
    expect = codes[1::2, 1] - 1
    expect[expect < 0] = 1
    np.testing.assert_array_equal(out[1::2, 1], expect)
    assert max(rows_seen) <= 4


def test_lloyd_stops_when_re_seeding_gains_nothing() -> None:
    """3 distinct vectors, K = 8: every re-seed splits a cluster of identical rows, which
    move together to one of the two copies, so the same number of clusters stays empty.
    Lloyd ran all its iterations (semantic.fit of 3 x 10,000 rows: 3.8 s against 1.6 s
    for random rows); it now stops when a re-seed gains no cluster and no error."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 5)).astype(np.float32)
    x = np.repeat(base, 400, axis=0)
    rows = ArrayRows.of(x, kmeans.leaf_rows(8, 5))
    init = np.vstack([base, rng.normal(size=(5, 5)) * 10])
    cent, n_iter, _ = kmeans.lloyd_rows(rows, init, iterations=100, tol=1e-4, rng=rng)
    assert n_iter <= 4
    for b in base.astype(np.float64):  # every vector is a centroid, exactly
        assert (cent == b).all(axis=1).any()
