"""viva_glyph.sklearn.ResidualQuantizer: scikit-learn's estimator checks, a Pipeline under
GridSearchCV, agreement with the library's own fit/encode/decode, a hand-checked case."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import viva_glyph as vg
from viva_glyph.sklearn import ResidualQuantizer


def blobs(n: int = 600, d: int = 5, seed: int = 0) -> np.ndarray:
    """Gaussian clusters of unequal scales per column (so standardizing matters)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (12, d))
    x = centers[rng.integers(12, size=n)] + rng.normal(0, 0.5, (n, d))
    return x * np.geomspace(0.1, 100, d)


# Small codebooks keep the checks fast; one instance uses per-stage sizes and a beam,
# the other refinement and an int seed, so every training path meets every check.
@parametrize_with_checks(
    [
        ResidualQuantizer(num_stages=2, codebook_size=4, refine=1, random_state=0),
        ResidualQuantizer(num_stages=3, codebook_size=[2, 4, 4], beam_size=2),
    ]
)
def test_sklearn_estimator_checks(estimator: Any, check: Any, monkeypatch: Any) -> None:
    # Without this variable scikit-learn skips its array-API check (numpy namespace);
    # it only reads it at check time, so setting it here runs that check too.
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    check(estimator)


def test_matches_library_fit_encode_decode() -> None:
    x = blobs()
    for beam in (1, 3):
        rq = ResidualQuantizer(num_stages=3, codebook_size=16, beam_size=beam, random_state=7)
        codes = rq.fit_transform(x)
        enc = vg.fit(x, num_stages=3, codebook_size=16, beam_size=beam, seed=7)
        assert rq.encoder_ == enc
        assert rq.n_features_in_ == 5
        expect = enc.encode(x, beam_size=beam)
        assert codes.dtype == np.uint8 and codes.shape == (600, 3)
        np.testing.assert_array_equal(codes, expect)
        np.testing.assert_array_equal(rq.transform(x.astype(np.float32)), expect)
        decoded = rq.inverse_transform(codes)
        np.testing.assert_array_equal(decoded, enc.decode(expect))
        np.testing.assert_array_equal(rq.inverse_transform(codes[:, :2]), enc.decode(expect[:, :2]))
        mse = np.mean((x - decoded.astype(np.float64)) ** 2)
        assert rq.score(x) == pytest.approx(-mse, rel=1e-6)
        assert rq.score(x) < 0


def test_first_stages_are_the_shorter_fit() -> None:
    """The docstring's promise: greedy stage-wise training, so num_stages=8 begins with
    the codebooks that num_stages=3 trains on the same data and seed."""
    x = blobs(400, 4, seed=3)
    long = ResidualQuantizer(codebook_size=8, random_state=1).fit(x)
    short = ResidualQuantizer(num_stages=3, codebook_size=8, random_state=1).fit(x)
    assert long.encoder_.config.num_stages == 8
    np.testing.assert_array_equal(long.encoder_.codebook_array[:3], short.encoder_.codebook_array)
    codes = long.transform(x)
    np.testing.assert_array_equal(
        long.inverse_transform(codes[:, :3]), short.inverse_transform(short.transform(x))
    )


def test_hand_checked_two_stages() -> None:
    """Four 2-D points (+-10, +-1) repeated: stage 1 must find (+-10, 0) and stage 2
    (0, +-1), whatever their order; then every code and error follows by hand."""
    corners = np.array([[-10.0, -1.0], [-10.0, 1.0], [10.0, -1.0], [10.0, 1.0]])
    x = np.tile(corners, (25, 1))
    rq = ResidualQuantizer(num_stages=2, codebook_size=2, random_state=0).fit(x)
    first, second = (np.asarray(cb.vectors, dtype=np.float64) for cb in rq.encoder_.codebooks)
    np.testing.assert_allclose(first[np.argsort(first[:, 0])], [[-10, 0], [10, 0]], atol=1e-6)
    np.testing.assert_allclose(second[np.argsort(second[:, 1])], [[0, -1], [0, 1]], atol=1e-6)
    np.testing.assert_allclose(rq.inverse_transform(rq.transform(corners)), corners, atol=1e-6)
    # (9.4, 0.3): stage 1 picks (10, 0), leaving (-0.6, 0.3); stage 2 picks (0, 1) as
    # 0.36 + 0.49 < 0.36 + 1.69, so it decodes to (10, 1): squared error 0.36 + 0.49.
    # (-10.5, -2): (-10, 0), then (0, -1): (-10, -1), squared error 0.25 + 1.
    probe = np.array([[9.4, 0.3], [-10.5, -2.0]])
    codes = rq.transform(probe)
    assert first[codes[0, 0], 0] > 0 and second[codes[0, 1], 1] > 0
    assert first[codes[1, 0], 0] < 0 and second[codes[1, 1], 1] < 0
    np.testing.assert_allclose(rq.inverse_transform(codes), [[10, 1], [-10, -1]], atol=1e-6)
    assert rq.score(probe) == pytest.approx(-(0.36 + 0.49 + 0.25 + 1.0) / 4, abs=1e-6)
    assert rq.score(corners) == pytest.approx(0, abs=1e-10)


def test_pipeline_grid_search_over_num_stages() -> None:
    """GridSearchCV's scores are the mean over folds of the negative MSE, in standardized
    units, of a scaler + quantizer fitted on the other folds, computed here by hand."""
    x = blobs(480, 4, seed=5)
    pipe = Pipeline(
        [("scale", StandardScaler()), ("rq", ResidualQuantizer(codebook_size=16, random_state=0))]
    )
    folds = KFold(n_splits=3, shuffle=True, random_state=0)
    grid = GridSearchCV(pipe, {"rq__num_stages": [1, 2, 4]}, cv=folds).fit(x)
    by_hand = []
    for m in (1, 2, 4):
        scores = []
        for train, test in folds.split(x):
            scaler = StandardScaler().fit(x[train])
            z = scaler.transform(x[train])
            enc = vg.fit(z, num_stages=m, codebook_size=16, seed=0)
            zt = scaler.transform(x[test])
            scores.append(-np.mean((zt - enc.decode(enc.encode(zt))) ** 2))
        by_hand.append(np.mean(scores))
    np.testing.assert_allclose(grid.cv_results_["mean_test_score"], by_hand, rtol=1e-6)
    assert by_hand[0] < by_hand[1] < by_hand[2]  # more stages, smaller error
    assert grid.best_params_ == {"rq__num_stages": 4}
    # The refitted pipeline round-trips through codes back to the units of X.
    codes = grid.best_estimator_.transform(x)
    assert codes.shape == (480, 4) and codes.dtype == np.uint8
    back = grid.best_estimator_.inverse_transform(codes)
    rel = np.sum((x - back) ** 2) / np.sum((x - x.mean(axis=0)) ** 2)
    assert rel < 0.05


def test_random_state_semantics() -> None:
    x = blobs(300, 3, seed=1)
    est = ResidualQuantizer(num_stages=2, codebook_size=8)

    def books(rq: ResidualQuantizer) -> np.ndarray:
        return rq.encoder_.codebook_array

    def seed(rq: ResidualQuantizer) -> int:
        return int(rq.encoder_.training.params["seed"])

    # An int is the seed of vg.fit itself: the same codebooks on every fit.
    a = clone(est).set_params(random_state=3).fit(x)
    assert seed(a) == 3
    np.testing.assert_array_equal(books(a), books(clone(a).fit(x)))
    # None draws from numpy's global RandomState: reseeding it repeats the fit.
    np.random.seed(11)  # noqa: NPY002 - the legacy global state is what None means
    b = clone(est).fit(x)
    np.random.seed(11)  # noqa: NPY002
    np.testing.assert_array_equal(books(b), books(clone(est).fit(x)))
    assert seed(b) == np.random.RandomState(11).randint(2**31 - 1)
    # A RandomState instance is drawn from: two fits with one instance use two seeds,
    # the same as a fresh instance of the same seed gives.
    rs = np.random.RandomState(5)
    c1 = clone(est).set_params(random_state=rs).fit(x)
    c2 = clone(est).set_params(random_state=rs).fit(x)
    ref = np.random.RandomState(5)
    assert (seed(c1), seed(c2)) == (ref.randint(2**31 - 1), ref.randint(2**31 - 1))
    assert seed(c1) != seed(c2)
    with pytest.raises(ValueError, match="random_state"):
        clone(est).set_params(random_state="zero").fit(x)


def test_errors_are_clear() -> None:
    x = blobs(100, 3)
    with pytest.raises(ValueError, match=r"at least codebook_size = 256 samples.*n_samples = 100"):
        ResidualQuantizer().fit(x)
    with pytest.raises(ValueError, match=r"codebook_size = 16 samples.*n_samples = 10"):
        ResidualQuantizer(num_stages=2, codebook_size=[4, 16]).fit(x[:10])
    with pytest.raises(ValueError, match="num_stages=8 contradicts the 2 sizes"):
        ResidualQuantizer(codebook_size=[4, 16]).fit(x)
    with pytest.raises(ValueError, match="num_stages must be a positive int"):
        ResidualQuantizer(num_stages=0, codebook_size=4).fit(x)
    rq = ResidualQuantizer(num_stages=2, codebook_size=4, random_state=0).fit(x)
    with pytest.raises(ValueError, match="X has 2 features, but ResidualQuantizer is expecting 3"):
        rq.transform(x[:, :2])
    with pytest.raises(ValueError, match="row 1"):
        rq.inverse_transform(np.array([[0, 1], [4, 0]]))
    with pytest.raises(TypeError, match="integer"):
        rq.inverse_transform(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"1 <= m <= 2, got \(2, 3\)"):
        rq.inverse_transform(np.zeros((2, 3), dtype=np.uint8))


def test_feature_names_out() -> None:
    x = blobs(64, 3)
    rq = ResidualQuantizer(num_stages=3, codebook_size=4, random_state=0).fit(x)
    names = rq.get_feature_names_out()
    assert list(names) == ["residualquantizer0", "residualquantizer1", "residualquantizer2"]
    assert len(names) == rq.transform(x).shape[1]
    with pytest.raises(ValueError, match="input_features"):
        rq.get_feature_names_out(["a", "b"])


def test_import_without_scikit_learn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "sklearn" or m.startswith("sklearn.")]:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import sklearn...` fail
    monkeypatch.delitem(sys.modules, "viva_glyph.sklearn")
    with pytest.raises(ImportError, match=r"pip install 'viva-glyph\[sklearn\]'"):
        import viva_glyph.sklearn  # noqa: F401


def test_a_preset_trains_and_transforms_as_fit_does() -> None:
    x = np.random.default_rng(5).normal(size=(900, 6))
    rq = ResidualQuantizer(num_stages=2, codebook_size=8, preset="quality", random_state=4)
    codes = rq.fit(x).transform(x)
    ref = vg.fit(x, num_stages=2, codebook_size=8, preset="quality", seed=4)
    assert rq.encoder_ == ref and rq.encoder_.encoding.beam_size == 32
    np.testing.assert_array_equal(codes, ref.encode(x))
