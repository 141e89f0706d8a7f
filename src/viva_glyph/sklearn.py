"""A scikit-learn estimator: residual vector quantization as a transformer.

Needs the ``sklearn`` extra (``pip install 'viva-glyph[sklearn]'``)::

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from viva_glyph.sklearn import ResidualQuantizer

    pipe = make_pipeline(StandardScaler(), ResidualQuantizer(num_stages=4, random_state=0))
    codes = pipe.fit_transform(X)          # (N, 4) uint8 codes
    X_hat = pipe.inverse_transform(codes)  # (N, D) back in the units of X

:class:`ResidualQuantizer` trains with :func:`viva_glyph.fit` and encodes and
decodes with the fitted :class:`~viva_glyph.RvqEncoder` (``encoder_``), so its
codes are exactly those of the rest of the library.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

try:
    from sklearn.base import (  # type: ignore[import-untyped]
        BaseEstimator,
        ClassNamePrefixFeaturesOutMixin,
        TransformerMixin,
    )
    from sklearn.utils import check_random_state  # type: ignore[import-untyped]
    from sklearn.utils.validation import (  # type: ignore[import-untyped]
        check_array,
        check_is_fitted,
        validate_data,
    )
except ImportError as exc:  # tests/test_sklearn.py hides scikit-learn to check this
    raise ImportError(
        "viva_glyph.sklearn needs scikit-learn >= 1.6: pip install 'viva-glyph[sklearn]'"
    ) from exc

from viva_glyph.core.encoder import RvqEncoder
from viva_glyph.train import ITERATIONS, fit

__all__ = ["ResidualQuantizer"]

#: Seeds drawn from a RandomState (random_state None or an instance) lie in [0, this).
_SEED_RANGE = 2**31 - 1


class ResidualQuantizer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Residual vector quantization as a scikit-learn transformer.

    ``fit`` trains one codebook per stage with :func:`viva_glyph.fit`;
    ``transform`` gives each row its codes, one integer per stage, coarse to
    fine; ``inverse_transform`` sums the chosen codebook entries back into
    vectors; ``score`` is the negative mean squared error of that round trip,
    so ``GridSearchCV`` prefers the most faithful setting.

    Parameters
    ----------
    num_stages : int, default 8
        M, the number of codebooks and of codes per row. The default is 8,
        not the 4 of :func:`viva_glyph.fit`: that default belongs to a 6-D
        latent, while this estimator is meant for general feature matrices of
        tens to hundreds of columns, where 8 stages of 256 codes (64 bits a
        row) is a common starting point. Stages are trained one after the
        other, so with ``beam_size=1`` and ``refine=0`` the first m stages of
        a fit are the codebooks that ``num_stages=m`` would have trained on
        the same data and seed; ``inverse_transform`` of the first m code
        columns gives that coarser reconstruction.
    codebook_size : int or sequence of int, default 256
        K, the codes per stage (codes are uint8 up to 256, uint16 up to
        65536, else int32), or one size per stage (then ``num_stages`` must
        equal its length). ``fit`` needs at least K rows.
    beam_size : int, optional
        1: greedy residual k-means and greedy encoding. B > 1 trains each
        stage on the residuals of a B-beam encoding and ``transform``
        encodes with the same beam (better codes, about B times slower).
        Default: the preset's (1 for ``"fast"``).
    iterations : int, default 10
        Most Lloyd iterations of each dimension step of a stage's k-means
        (see :func:`viva_glyph.fit`).
    refine : int, default 0
        Rounds of joint least-squares refinement of all codebooks after the
        stage-wise training (0: none); needs equal codebook sizes.
    max_samples : int, optional
        Train on a uniform random sample of at most this many rows
        (default ``256 * codebook_size``); all rows are encoded.
    preset : {"fast", "balanced", "quality"}, optional
        What to train for (:func:`viva_glyph.fit`; default ``"fast"``):
        ``"balanced"`` and ``"quality"`` give lower errors for slower encoding;
        ``transform`` encodes as the fitted model records.
    random_state : int, RandomState instance or None, default None
        Sampling and k-means seeding. An int gives the same codebooks on
        every fit, those of ``viva_glyph.fit(X, ..., seed=random_state)``.
        None draws a fresh seed from numpy's global random state at each
        fit; a ``numpy.random.RandomState`` draws it from that instance.

    Attributes
    ----------
    encoder_ : RvqEncoder
        The fitted encoder, float32 codebooks; ``encoder_.training`` holds
        the training summary (the seed used among its ``params``).
    n_features_in_ : int
        D, the number of columns seen in ``fit``.
    feature_names_in_ : ndarray of str, shape (D,)
        Column names of ``X`` in ``fit``, when it had string column names.

    Examples
    --------
    >>> import numpy as np
    >>> from viva_glyph.sklearn import ResidualQuantizer
    >>> X = np.random.default_rng(0).normal(size=(500, 8))
    >>> rq = ResidualQuantizer(num_stages=2, codebook_size=16, random_state=0).fit(X)
    >>> rq.transform(X[:3]).shape
    (3, 2)
    >>> rq.get_feature_names_out()
    array(['residualquantizer0', 'residualquantizer1'], dtype=object)
    """

    def __init__(
        self,
        num_stages: int = 8,
        codebook_size: int | Sequence[int] = 256,
        beam_size: int | None = None,
        iterations: int = ITERATIONS,
        refine: int = 0,
        max_samples: int | None = None,
        preset: str | None = None,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.num_stages = num_stages
        self.codebook_size = codebook_size
        self.beam_size = beam_size
        self.iterations = iterations
        self.refine = refine
        self.max_samples = max_samples
        self.preset = preset
        self.random_state = random_state

    def _seed(self) -> int:
        """The seed of :func:`viva_glyph.fit`: an int ``random_state`` itself, else a
        draw from the global or given ``RandomState``."""
        state = self.random_state
        try:
            rng = check_random_state(state)
        except ValueError as exc:
            raise ValueError(
                "random_state must be None, an int in [0, 2**32) or a numpy.random.RandomState, "
                f"got {state!r}"
            ) from exc
        if isinstance(state, numbers.Integral) and not isinstance(state, bool):
            return int(state)
        return int(rng.randint(_SEED_RANGE))

    def fit(self, X: ArrayLike, y: object = None) -> ResidualQuantizer:
        """Train the codebooks on X.

        Parameters
        ----------
        X : array_like, shape (N, D)
            Training vectors, finite; any real dtype (float32 trains them).
            N must be at least the largest codebook size.
        y : None
            Ignored; present for the scikit-learn API.

        Returns
        -------
        ResidualQuantizer
            This estimator, fitted.

        Raises
        ------
        ValueError
            Fewer rows than codebook_size, NaN or inf, empty or sparse input,
            or a bad parameter.
        TypeError
            A parameter of the wrong type.
        """
        x = validate_data(self, X, dtype=[np.float64, np.float32])
        sizes = (
            list(self.codebook_size)
            if isinstance(self.codebook_size, Sequence)
            else [self.codebook_size]
        )
        largest = max((k for k in sizes if isinstance(k, numbers.Integral)), default=1)
        n = x.shape[0]
        if n < largest:
            raise ValueError(
                f"{type(self).__name__} needs at least codebook_size = {largest} samples to "
                f"fit {largest} codes per stage, got n_samples = {n}: give more rows or a "
                "smaller codebook_size"
            )
        self.encoder_ = fit(
            x,
            num_stages=self.num_stages,
            codebook_size=self.codebook_size,
            beam_size=self.beam_size,
            iterations=self.iterations,
            refine=self.refine,
            max_samples=self.max_samples,
            seed=self._seed(),
            preset=self.preset,
        )
        return self

    @property
    def _n_features_out(self) -> int:
        """Number of code columns (M); AttributeError before ``fit``."""
        encoder: RvqEncoder = self.encoder_
        return encoder.config.num_stages

    def transform(self, X: ArrayLike) -> NDArray[Any]:
        """Codes of each row, one per stage, coarse to fine.

        Parameters
        ----------
        X : array_like, shape (N, D)

        Returns
        -------
        codes : ndarray, shape (N, M), uint8 for K <= 256, uint16 for K <= 65536,
            else int32 (``encoder_.code_dtype``)
        """
        check_is_fitted(self)
        x = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        return self.encoder_.encode(x)  # as the model records (its beam)

    def inverse_transform(self, X: ArrayLike) -> NDArray[np.floating[Any]]:
        """Vectors from codes: the sum of the chosen codebook entries.

        Parameters
        ----------
        X : array_like of int, shape (N, m), 1 <= m <= M
            Codes as :meth:`transform` gives them; fewer than M columns decode
            the first m stages only (a coarser reconstruction).

        Returns
        -------
        ndarray, shape (N, D), float32 (the codebooks' dtype)

        Raises
        ------
        TypeError
            Codes of a non-integer dtype.
        ValueError
            A code outside ``[0, codebook_size)`` (naming its row), more than M
            columns, or not a 2-D array.
        """
        check_is_fitted(self)
        codes = check_array(X, dtype=None)
        return self.encoder_.decode(codes)

    def score(self, X: ArrayLike, y: object = None) -> float:
        """Negative mean squared error per component of encoding and decoding X.

        Parameters
        ----------
        X : array_like, shape (N, D)
        y : None
            Ignored; present for the scikit-learn API.

        Returns
        -------
        float
            ``-mean((X - inverse_transform(transform(X))) ** 2)`` over all N * D
            components, in float64: 0 is perfect, higher is better.
        """
        check_is_fitted(self)
        x = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        _, errors = self.encoder_.encode_with_errors(x)
        return -float(np.sum(errors**2) / x.size)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = []  # codes are integers, whatever X is
        return tags
