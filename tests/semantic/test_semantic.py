"""Semantic IDs: fit, codes, unique IDs (suffix and reassign), balance, model files."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_streams_equal
from scipy.optimize import linear_sum_assignment

from viva_glyph import semantic
from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.core.io import ModelFormatError
from viva_glyph.semantic._balance import balanced_assign, capacity, sq_distances


def clustered(n: int, d: int = 16, centers: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = 3.0 * rng.normal(size=(centers, d))
    return (c[rng.integers(0, centers, n)] + rng.normal(size=(n, d))).astype(np.float32)


def greedy_reference(books: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """Greedy residual codes by explicit float64 distances (ties to the lowest)."""
    r = x.astype(np.float64).copy()
    out = np.empty((x.shape[0], len(books)), dtype=np.int64)
    for j, b in enumerate(books):
        d = ((r[:, None, :] - b.astype(np.float64)[None]) ** 2).sum(axis=2)
        out[:, j] = d.argmin(axis=1)
        r -= b[out[:, j]]
    return out


def assert_unique(u: np.ndarray) -> None:
    assert np.unique(u, axis=0).shape[0] == u.shape[0]


@pytest.fixture(scope="module")
def model() -> tuple[semantic.SemanticIds, np.ndarray]:
    x = clustered(3000)
    return semantic.fit(x, levels=3, codebook_size=16, suffix_size=64), x


def test_codes_are_the_core_encoders_codes(model):
    ids, x = model
    enc = RvqEncoder(ids.codebooks)
    np.testing.assert_array_equal(ids.codes(x), enc.encode(x))
    assert ids.codes(x).shape == (3000, 3)


def test_suffix_orders_each_glyph_by_error_then_key(model):
    ids, x = model
    keys = [f"k{(i * 7919) % 3000:05d}" for i in range(3000)]
    u = ids.unique(x, keys=keys)
    assert_unique(u)
    codes = ids.codes(x)
    np.testing.assert_array_equal(u[:, :3], codes)
    err = ((x.astype(np.float64) - ids.decode(codes)) ** 2).sum(axis=1)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(codes.tolist()):
        groups.setdefault(tuple(row), []).append(i)
    for members in groups.values():
        expected = sorted(members, key=lambda i: (err[i], keys[i]))
        assert [int(u[i, 3]) for i in expected] == list(range(len(members)))


def test_ties_broken_by_key_on_duplicates():
    x = np.repeat(clustered(50, seed=3), 3, axis=0)
    ids = semantic.fit(x, levels=2, codebook_size=8).with_suffix_size(150)
    keys = np.array([f"item{(i * 37) % 150:03d}" for i in range(150)])
    u = ids.unique(x, keys=keys)
    assert_unique(u)
    for i in range(0, 150, 3):  # exact duplicates: suffix order follows the keys
        trio = [i, i + 1, i + 2]
        by_key = sorted(trio, key=lambda j: keys[j])
        assert [int(u[j, 2]) for j in by_key] == sorted(int(u[j, 2]) for j in trio)


def test_per_level_sizes_match_greedy_reference():
    x = clustered(1500, d=8, seed=1)
    ids = semantic.fit(x, levels=3, codebook_size=[4, 16, 8], suffix_size=64)
    assert ids.codebook_sizes == (4, 16, 8)
    ref = greedy_reference([b.vectors64 for b in ids.codebooks], x)
    np.testing.assert_array_equal(ids.codes(x), ref)
    u = ids.unique(x)
    assert_unique(u)
    assert ids.suffix_size == 64
    assert semantic.fit(x, levels=2, codebook_size=[4, 8]).suffix_size == 8
    with pytest.raises(ValueError, match="one per level"):
        semantic.fit(x, levels=3, codebook_size=[4, 16])
    with pytest.raises(ValueError, match="beam_size > 1 needs balance=None"):
        semantic.fit(x, levels=3, codebook_size=[4, 16, 8], beam_size=2, balance=0.5)


def test_cosine_is_scale_invariant_and_rejects_zero_rows():
    x = clustered(1000, seed=2)
    ids = semantic.fit(x, levels=2, codebook_size=16, metric="cosine")
    scale = np.random.default_rng(0).uniform(0.1, 10, size=(1000, 1)).astype(np.float32)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref = greedy_reference([b.vectors64 for b in ids.codebooks], unit.astype(np.float64))
    np.testing.assert_array_equal(ids.codes(x), ref)
    np.testing.assert_array_equal(ids.codes(x * scale), ids.codes(x))
    bad = x.copy()
    bad[7] = 0
    with pytest.raises(ValueError, match="row 7 is all zeros"):
        ids.codes(bad)


@pytest.mark.parametrize("resolve", ["suffix", "reassign"])
def test_adversarial_sets_unique_or_clear_error(resolve):
    rng = np.random.default_rng(5)
    base = clustered(2000, seed=4)
    ids = semantic.fit(base, levels=2, codebook_size=16)
    copies = np.repeat(base[:1], 10_000, axis=0)
    need = 10_000 if resolve == "suffix" else 10_000 - 15  # 15 free leaves under the prefix
    with pytest.raises(semantic.SuffixRangeError, match=f"{need} items collided.*size of {need} "):
        ids.unique(copies, resolve=resolve)
    big = ids.with_suffix_size(need)
    assert_unique(big.unique(copies, resolve=resolve))
    tight = np.concatenate(
        [base[0] + 1e-6 * rng.normal(size=(500, 16)), base[1] + 1e-6 * rng.normal(size=(500, 16))]
    ).astype(np.float32)
    try:
        assert_unique(ids.unique(tight, resolve=resolve))
    except semantic.SuffixRangeError as exc:
        assert "would work" in str(exc)
        need = int(str(exc).split("suffix size of ")[1].split()[0])
        assert_unique(ids.with_suffix_size(need).unique(tight, resolve=resolve))
    # one cluster larger than K^L = 4 glyphs
    small = semantic.fit(base, levels=2, codebook_size=2)
    blob = (base[0] + 0.01 * rng.normal(size=(300, 16))).astype(np.float32)
    with pytest.raises(semantic.SuffixRangeError) as info:
        small.unique(blob, resolve=resolve)
    need = int(str(info.value).split("suffix size of ")[1].split()[0])
    u = small.with_suffix_size(need).unique(blob, resolve=resolve)
    assert_unique(u)
    assert int(u[:, 2].max()) == need - 1
    with pytest.raises(semantic.SuffixRangeError):
        small.with_suffix_size(need - 1).unique(blob, resolve=resolve)


def test_reassign_moves_to_free_leaves_keeping_prefix(model):
    ids, x = model
    raw = ids.codes(x).astype(np.int64)
    u, rep = ids.unique(x, resolve="reassign", report=True)
    assert_unique(u)
    np.testing.assert_array_equal(u[:, :2], raw[:, :2])  # prefix kept
    moved = np.flatnonzero(u[:, 2] != raw[:, 2])
    assert rep.moved == moved.size > 0
    # every moved item took a leaf no other item holds
    glyphs = {tuple(r) for r in u[:, :3].tolist()}
    counts: dict[tuple[int, ...], int] = {}
    for r in u[:, :3].tolist():
        counts[tuple(r)] = counts.get(tuple(r), 0) + 1
    assert all(counts[tuple(u[i, :3].tolist())] == 1 for i in moved)
    assert len(glyphs) > np.unique(raw, axis=0).shape[0]
    # the extra error reported is the real one
    before = ((x.astype(np.float64) - ids.decode(raw)) ** 2).sum(axis=1)
    after = ((x.astype(np.float64) - ids.decode(u[:, :3])) ** 2).sum(axis=1)
    assert rep.extra_error == pytest.approx((after - before)[moved].mean(), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("balance", [0.0, 0.2])
def test_balanced_assignment_bound_and_cost_vs_exact(seed, balance):
    rng = np.random.default_rng(seed)
    n, k = 600, 12
    x = rng.normal(size=(n, 6))
    x[: n // 3] *= 0.2  # a dense region: nearest-centroid counts are far from even
    c = x[rng.choice(n, k, replace=False)]
    cap = capacity(n, k, balance)
    labels = balanced_assign(x, c, cap)
    assert np.bincount(labels, minlength=k).max() <= cap
    d = sq_distances(x, c)
    cost = d[np.arange(n), labels].sum()
    big = np.repeat(d, cap, axis=1)  # min-cost flow as an assignment to cap slots per cluster
    r, cols = linear_sum_assignment(big)
    opt = big[r, cols].sum()
    assert opt <= cost * (1 + 1e-9)
    assert cost <= 1.12 * opt


def test_balanced_fit_and_unique_bound_every_level():
    x = clustered(4000, seed=6, centers=5)
    x[:1000] = x[0]  # 1,000 copies of one item: unconstrained, they share one code at every level
    ids = semantic.fit(x, levels=2, codebook_size=16, balance=0.25, suffix_size=4000)
    cap_train = capacity(ids.training["samples"], 16, 0.25)
    assert max(ids.training["largest_cluster"]) <= cap_train
    u = ids.unique(x)
    assert_unique(u)
    cap = capacity(4000, 16, 0.25)
    for j in range(2):
        assert np.bincount(u[:, j], minlength=16).max() <= cap
    free = ids.codes(x)  # unconstrained codes: the dense clusters overflow
    assert np.bincount(free[:, 0], minlength=16).max() > cap


def test_save_load_round_trip_with_trie(tmp_path, model):
    ids, x = model
    u = ids.unique(x)
    ids2 = ids.with_suffix_size(ids.suffix_size)
    ids2.build_trie(u)
    path = tmp_path / "ids.safetensors"
    ids2.save(path)
    back = semantic.load(path)
    assert back.codebook_sizes == ids.codebook_sizes and back.metric == "l2"
    np.testing.assert_array_equal(back.unique(x), u)
    assert back.trie is not None
    np.testing.assert_array_equal(back.trie.keys, ids2.trie.keys)
    data = path.read_bytes()
    (path.parent / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(ModelFormatError):
        semantic.load(path.parent / "cut.safetensors")
    (path.parent / "junk.safetensors").write_bytes(b"\x10" + data[1:])
    with pytest.raises(ModelFormatError):
        semantic.load(path.parent / "junk.safetensors")
    core = tmp_path / "core.safetensors"
    RvqEncoder(ids.codebooks).save(core)
    with pytest.raises(ModelFormatError, match="format"):
        semantic.load(core)


def test_bad_input(model):
    ids, x = model
    with pytest.raises(ValueError, match="distinct"):
        ids.unique(x[:3], keys=["a", "b", "a"])
    with pytest.raises(ValueError, match="3 keys"):
        ids.unique(x[:3], keys=["a", "b"])
    bad = x[:10].copy()
    bad[4, 2] = np.nan
    with pytest.raises(ValueError, match="row 4"):
        ids.unique(bad)
    with pytest.raises(ValueError, match="dimension"):
        ids.codes(x[:, :5])
    with pytest.raises(ValueError, match="resolve"):
        ids.unique(x, resolve="wrap")
    with pytest.raises(ValueError, match="metric"):
        semantic.fit(x, metric="dot")
    with pytest.raises(ValueError, match="balance"):
        semantic.fit(x, balance=-1.0)
    with pytest.raises(ValueError, match="balanced=True"):
        ids.codes(x, balanced=True)


@pytest.mark.parametrize("beam", [1, 3])
def test_fit_rejects_magnitudes_float32_training_cannot_handle(beam: int) -> None:
    """As the core fit: a clear error naming the row (huge) or the scale (tiny), before
    any training, instead of overflowing distances or a late codebook error; cosine
    scales rows to unit length first, so any finite non-zero magnitude works."""
    x = clustered(600)
    huge = x.copy()
    huge[37, 3] = 3e20
    with pytest.raises(ValueError, match=r"row 37 .*scale the data down"):
        semantic.fit(huge, levels=2, codebook_size=16, beam_size=beam)
    with pytest.raises(ValueError, match=r"underflow.*multiply the data"):
        semantic.fit(x * 1e-30, levels=2, codebook_size=16, beam_size=beam)
    if beam == 1:  # cosine: beam_size > 1 is the core's l2 fit
        a = semantic.fit(x * 1e20, levels=2, codebook_size=16, metric="cosine")
        b = semantic.fit(x, levels=2, codebook_size=16, metric="cosine")
        np.testing.assert_array_equal(a.codes(x * 1e20), b.codes(x))


def test_memmap_and_dask_inputs_stream_to_the_same_ids(tmp_path, model, monkeypatch):
    import viva_glyph.semantic._model as m

    da = pytest.importorskip("dask.array")
    ids, x = model
    monkeypatch.setattr(m, "BLOCK_ROWS", 700)  # several blocks
    assert_streams_equal(ids, x, tmp_path, da)
    bad = x.copy()
    bad[1500, 3] = np.inf
    with pytest.raises(ValueError, match="row 1500"):
        ids.codes(da.from_array(bad, chunks=(512, 16)))


def test_balanced_assignment_when_all_candidates_are_full(monkeypatch):
    # 64 clusters, 32 candidates per point: the dense blob's candidates fill up, so the
    # repair has to search every cluster for room
    rng = np.random.default_rng(7)
    x = np.concatenate([0.01 * rng.normal(size=(1800, 4)), 5 + rng.normal(size=(200, 4))])
    c = np.concatenate([0.01 * rng.normal(size=(40, 4)), 5 + rng.normal(size=(24, 4))])
    cap = capacity(2000, 64, 0.0)
    calls = []
    import viva_glyph.semantic._balance as b

    real = b.sq_distances

    def counting(a, cc):
        calls.append(a.shape[0])
        return real(a, cc)

    monkeypatch.setattr(b, "sq_distances", counting)
    labels = balanced_assign(x, c, cap)
    assert np.bincount(labels, minlength=64).max() <= cap
    assert any(n == 1 for n in calls)  # the one-row full scan ran


def test_levels_of_different_sizes_run_on_the_core_engine_greedy_and_beam() -> None:
    """Per-level sizes (16, 64, 32) through the core stack: fit, greedy and beam codes."""

    x = clustered(2000, d=8, seed=3)
    ids = semantic.fit(x, levels=3, codebook_size=[16, 64, 32], suffix_size=64)
    assert ids.codebook_sizes == (16, 64, 32)
    books = [b.vectors for b in ids.codebooks]
    np.testing.assert_array_equal(ids.codes(x), greedy_reference(books, x))
    beam = semantic.fit(x, levels=3, codebook_size=[4, 8, 4], beam_size=3, suffix_size=64)
    assert beam.codebook_sizes == (4, 8, 4)
    # the core engine's beam search with per-level sizes (its exhaustive-search tests
    # are in test_levels.py), and a beam of 4 x 8 = 32 prefixes is exhaustive here
    np.testing.assert_array_equal(
        beam.codes(x[:300]), RvqEncoder(beam.codebooks).encode(x[:300], beam_size=3)
    )
    full = semantic.fit(x, levels=3, codebook_size=[4, 8, 4], beam_size=32, suffix_size=64)
    full_books = [b.vectors64 for b in full.codebooks]
    codes = full.codes(x[:300])
    err = ((x[:300].astype(np.float64) - full.decode(codes)) ** 2).sum(axis=1)
    grid = np.stack(np.meshgrid(*[np.arange(k) for k in (4, 8, 4)], indexing="ij"), -1)
    grid = grid.reshape(-1, 3)
    recon = sum(full_books[j][grid[:, j]] for j in range(3))
    best = ((x[:300, None, :].astype(np.float64) - recon[None]) ** 2).sum(axis=2).min(axis=1)
    np.testing.assert_allclose(err, best, rtol=1e-9, atol=1e-9)


def test_later_levels_keep_the_centroids_with_the_lower_squared_error(monkeypatch) -> None:
    """Level 1 is trained twice (converged full-dimension k-means, progressive k-means);
    the one with the lower squared error on the level's residuals (by brute force) is
    polished by Lloyd's iterations, which do not raise its error."""
    from viva_glyph.semantic import _fit

    seen: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    real_inertia, real_lloyd = _fit.inertia, _fit.lloyd_rows

    def spy_inertia(rows, centroids):  # type: ignore[no-untyped-def]
        seen.append(np.array(centroids, dtype=np.float64))
        return real_inertia(rows, centroids)

    def spy_lloyd(rows, init, **kw):  # type: ignore[no-untyped-def]
        starts.append(np.array(init, dtype=np.float64))
        return real_lloyd(rows, init, **kw)

    monkeypatch.setattr(_fit, "inertia", spy_inertia)
    monkeypatch.setattr(_fit, "lloyd_rows", spy_lloyd)
    x = np.random.default_rng(2).normal(size=(600, 12)).astype(np.float32)
    x[:300] *= np.linspace(0.2, 3.0, 12, dtype=np.float32)  # two populations, uneven spectrum
    ids = semantic.fit(x, levels=2, codebook_size=16, seed=0)
    assert len(seen) == 2  # level 0 trains once, level 1 twice
    b0 = ids.codebooks[0].vectors64
    r = x.astype(np.float64) - b0[greedy_reference([b0], x)[:, 0]]

    def sq_error(c: np.ndarray) -> float:
        return float(((r[:, None, :] - c[None]) ** 2).sum(-1).min(axis=1).sum())

    errors = [sq_error(c) for c in seen]
    assert abs(errors[0] - errors[1]) > 1e-3 * min(errors)  # a real choice
    np.testing.assert_array_equal(starts[-1], seen[int(np.argmin(errors))])  # the polish start
    assert sq_error(ids.codebooks[1].vectors64) <= min(errors) * (1 + 1e-6)
