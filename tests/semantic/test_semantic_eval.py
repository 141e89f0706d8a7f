"""semantic.evaluate against hand-written brute-force definitions."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from viva_glyph import semantic


def data(n: int = 600, d: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = 2.0 * rng.normal(size=(6, d))
    return (c[rng.integers(0, 6, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_report_matches_brute_force(metric, tmp_path):
    x = data()
    ids = semantic.fit(x, levels=3, codebook_size=8, metric=metric, suffix_size=600)
    u = ids.unique(x)
    rep = semantic.evaluate(x, u, ids, k=10, sample=10_000)
    n = x.shape[0]
    rows = [tuple(r) for r in u[:, :3].tolist()]
    cnt = Counter(rows)
    assert rep.collision_rate == pytest.approx(1 - len(cnt) / n)
    assert rep.shared_share == pytest.approx(sum(1 for r in rows if cnt[r] > 1) / n)
    assert rep.largest_group == max(cnt.values())
    assert rep.unique_ids
    for p in range(3):
        assert rep.collisions_per_depth[p] == pytest.approx(1 - len({r[: p + 1] for r in rows}) / n)
    for j in range(3):
        c = Counter(r[j] for r in rows)
        h = -sum(v / n * math.log2(v / n) for v in c.values())
        assert rep.utilisation[j] == pytest.approx(len(c) / 8)
        assert rep.entropy_bits[j] == pytest.approx(h)
        assert rep.perplexity[j] == pytest.approx(2**h)
    xe = x.astype(np.float64)
    if metric == "cosine":
        xe = xe / np.linalg.norm(xe, axis=1, keepdims=True)
    recon = sum(ids.codebooks[j].vectors64[u[:, j]] for j in range(3))
    assert rep.mse == pytest.approx(((xe - recon) ** 2).mean(), rel=1e-9)
    first = ids.codebooks[0].vectors64[u[:, 0]]
    assert rep.mse_per_level[0] == pytest.approx(((xe - first) ** 2).mean(), rel=1e-9)
    # neighbours by a full distance matrix
    dist = ((xe[:, None, :] - xe[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(dist, np.inf)
    nn = np.argsort(dist, axis=1, kind="stable")[:, :10]
    share = np.mean([[u[i, 0] == u[j, 0] for j in nn[i]] for i in range(n)])
    common = []
    for i in range(n):
        for j in nn[i]:
            m = 0
            while m < 3 and u[i, m] == u[j, m]:
                m += 1
            common.append(m)
    assert rep.neighbour_sample == n
    assert rep.first_token_share == pytest.approx(share)
    assert rep.mean_common_prefix == pytest.approx(np.mean(common))
    back = json.loads(rep.to_json())
    assert back["collision_rate"] == rep.collision_rate
    assert "collision rate" in rep.table()
    rep.plot(tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_sampled_neighbours_and_bad_input():
    x = data(800, seed=1)
    ids = semantic.fit(x, levels=2, codebook_size=8, suffix_size=800)
    u = ids.unique(x)
    rep = semantic.evaluate(x, u, ids, sample=100)
    assert rep.neighbour_sample == 100
    assert 0 <= rep.first_token_share <= 1
    raw = semantic.evaluate(x, u[:, :2], ids, sample=50)
    assert not raw.unique_ids and raw.collision_rate == rep.collision_rate
    with pytest.raises(ValueError, match="shape"):
        semantic.evaluate(x, u[:10], ids)
    with pytest.raises(ValueError, match="k must be"):
        semantic.evaluate(x, u, ids, k=0)
