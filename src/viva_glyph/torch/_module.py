"""``ResidualVQ``: the residual vector quantizer as a ``torch.nn.Module``.

Stage ``s`` quantizes what the stages before it left over (SoundStream's
Algorithm 1), with stop-gradient between stages: every stage's code is chosen
for, and its loss measured on, a residual that does not carry gradients of the
earlier codebooks. The losses' gradients are computed in closed form in the same
pass over the stages, so no autograd graph is built through the stages.
The training step and the codebook initialisation are in :mod:`._step`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from viva_glyph.checks import num_stages as stage_count
from viva_glyph.checks import positive_int
from viva_glyph.torch import _distributed as ddp
from viva_glyph.torch._checks import (
    bad_row,
    bad_row_error,
    check_codes,
    check_options,
    check_rows,
    check_sizes,
    check_state,
    flatten,
)
from viva_glyph.torch._kmeans import INIT_ROWS_PER_CODE, Gatherer
from viva_glyph.torch._ops import usage_counts
from viva_glyph.torch._output import RvqOutput, make_output
from viva_glyph.torch._pass import Pass, run_stages
from viva_glyph.torch._step import NEEDS_COUNTS, NEEDS_KMEANS, initialize, train_step

if TYPE_CHECKING:
    from viva_glyph.core.encoder import RvqEncoder

__all__ = ["ResidualVQ", "RvqOutput"]


class ResidualVQ(nn.Module):
    """Residual vector quantizer for neural codecs and tokenizers.

    Parameters
    ----------
    dim : int
        Dimension D of the vectors (the last axis of the input, channel-last).
    num_stages : int
        Number of stages M (codes per vector).
    codebook_size : int or sequence of int
        Codes per stage K, or one size per stage (``[16, 256, 256]``, as
        semantic IDs use; ``num_stages`` must then equal its length). The
        state keeps (M, K, D) tensors for the largest K: a smaller stage's
        extra codes stay zero, are never chosen (their distance is +inf), never
        counted as dead nor replaced, and its EMA smoothing uses its own K.
        ``codebook_sizes`` holds the M sizes.
    ema : bool
        True (default): codebooks follow exponential moving averages of the
        vectors assigned to them (sums and Laplace-smoothed counts). False:
        codebooks are parameters learned by your optimizer from the codebook loss.
    decay : float
        EMA decay in [0, 1).
    eps : float
        Laplace smoothing of the EMA counts.
    commitment_weight, codebook_weight : float
        Weights of the commitment loss (gradient to the input) and, in learned
        mode, of the codebook loss (gradient to the codebooks).
    kmeans_init : bool
        Initialize the codebooks by k-means (numpy's :func:`viva_glyph.fit`
        k-means, per stage on the residuals) once training batches have brought
        ``init_rows`` rows, or call :meth:`init_from_data`. Until then training
        steps quantize with the initial codebooks and update nothing. False
        keeps the random codebooks and only counts their use on the first batch.
    kmeans_iters : int
        Lloyd iterations per step of that k-means (it runs up to 6 steps).
    init_rows : int, optional
        Rows gathered over training batches before the k-means initialisation;
        default 16 K. :meth:`init_from_data` warns when given fewer.
    kmeans_max_samples : int, optional
        Rows k-means sees at most (a random subset beyond that); default
        ``max(256 K, init_rows)``.
    dead_after : int
        A code no row chose for this many consecutive training steps (on all
        ranks) is replaced in that step, its whole EMA state reset (count 1, sum
        equal to the new code): the new code lies halfway between a random stage
        input of the batch and that input's code, so it splits a used cell. The
        rule counts steps, independent of decay and batch size. 0 disables it.
    dropout : float
        Quantizer dropout probability (SoundStream): with it, a training step
        (``dropout_mode="batch"``) or each row (``"sample"``) uses only a random
        number of stages, uniform in ``[dropout_min_stages, M]``.
    dropout_mode : {"batch", "sample"}
    dropout_min_stages : int
    seed : int
        Seed of the one ``torch.Generator`` (CPU) that drives k-means seeding,
        code replacement and dropout.
    check_finite : bool
        True (default): every input batch is checked (one ``aminmax`` reduction
        and one host-device sync) and a row holding NaN, inf or a magnitude
        above 1e15 raises ValueError naming it, before any state changes.
        False skips the check: no sync, but such a row poisons the codebooks in
        training. Traced graphs (``torch.compile``, ``torch.export``) never check.

    Notes
    -----
    ``forward`` in eval mode is a pure function of the input and the codebooks:
    no initialization branch, no random draw, no collective and, with
    ``check_finite=False``, no host-device synchronisation, so it compiles
    (``fullgraph=True``) and exports. With ``torch.distributed`` initialized,
    training broadcasts k-means and replacements from rank 0 and averages the
    EMA statistics of all stages with one all-reduce per step.
    """

    codebook: Tensor
    code_valid: Tensor | None
    ema_sum: Tensor
    ema_count: Tensor
    unused_steps: Tensor
    init_state: Tensor

    def __init__(
        self,
        dim: int,
        num_stages: int,
        codebook_size: int | Sequence[int],
        *,
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        commitment_weight: float = 1.0,
        codebook_weight: float = 1.0,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        init_rows: int | None = None,
        kmeans_max_samples: int | None = None,
        dead_after: int = 20,
        dropout: float = 0.0,
        dropout_mode: str = "batch",
        dropout_min_stages: int = 1,
        seed: int = 0,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.num_stages = positive_int(num_stages, "num_stages")
        self.codebook_sizes = sizes = check_sizes(codebook_size, self.num_stages)
        self.codebook_size = max(sizes)  # the tensors' K
        opts = check_options(
            decay=decay,
            eps=eps,
            commitment_weight=commitment_weight,
            codebook_weight=codebook_weight,
            kmeans_iters=kmeans_iters,
            dead_after=dead_after,
            dropout=dropout,
            dropout_mode=dropout_mode,
            dropout_min_stages=dropout_min_stages,
            num_stages=self.num_stages,
            seed=seed,
        )
        self.ema = bool(ema)
        self.decay, self.eps = float(decay), float(eps)
        self.commitment_weight, self.codebook_weight = opts["weights"]
        self.kmeans_iters, self.dead_after = int(kmeans_iters), int(dead_after)
        k = self.codebook_size
        self.init_rows = (
            INIT_ROWS_PER_CODE * k if init_rows is None else positive_int(init_rows, "init_rows")
        )
        self.kmeans_max_samples = (
            max(256 * k, self.init_rows)
            if kmeans_max_samples is None
            else positive_int(kmeans_max_samples, "kmeans_max_samples")
        )
        if self.init_rows > self.kmeans_max_samples:
            raise ValueError(
                f"init_rows ({self.init_rows}) must be <= kmeans_max_samples "
                f"({self.kmeans_max_samples})"
            )
        self.check_finite = bool(check_finite)
        self._gathered = Gatherer()
        self.dropout, self.dropout_mode = float(dropout), dropout_mode
        self.dropout_min_stages = int(dropout_min_stages)
        self.generator = torch.Generator().manual_seed(int(seed))

        m, k, d = self.num_stages, self.codebook_size, self.dim
        books = torch.randn((m, k, d), generator=self.generator)
        valid = torch.arange(k)[None, :] < torch.tensor(sizes)[:, None]  # (M, K)
        books *= valid[..., None]  # codes beyond a stage's size are zero
        # per-stage sizes: which codes exist (not saved: it follows from the sizes)
        self.register_buffer("code_valid", None if min(sizes) == k else valid, persistent=False)
        if self.ema:
            self.register_buffer("codebook", books)
            self.register_buffer("ema_sum", books.clone())
            self.register_buffer("ema_count", valid.float())
        else:
            self.codebook = nn.Parameter(books)
        self.register_buffer("unused_steps", torch.zeros(m, k, dtype=torch.int64))
        state = NEEDS_KMEANS if kmeans_init else NEEDS_COUNTS
        self.register_buffer("init_state", torch.tensor(state, dtype=torch.int64))
        self._state = state
        self._register_load_state_dict_pre_hook(check_state, with_module=True)  # type: ignore[no-untyped-call]
        self.register_load_state_dict_post_hook(_sync_state)  # type: ignore[no-untyped-call]

    def extra_repr(self) -> str:
        mode = f"decay={self.decay}" if self.ema else "learned"
        k = self.codebook_size if self.code_valid is None else self.codebook_sizes
        return (
            f"dim={self.dim}, num_stages={self.num_stages}, "
            f"codebook_size={k}, {mode}, dead_after={self.dead_after}"
        )

    # -- initialization --------------------------------------------------------------
    @torch.no_grad()
    def init_from_data(self, x: Tensor) -> None:
        """Initialize every stage from data: numpy's k-means on its residuals.

        Stage ``s`` is fitted to what stages ``< s`` leave of ``x``; the EMA state
        starts consistent with it (count = rows assigned, sum = centroid x count).
        Warns with the figures when ``x`` has fewer than ``init_rows`` rows.
        After :meth:`from_encoder` or with ``kmeans_init=False`` the codebooks are
        kept and only the counts are taken from ``x``. In distributed training,
        call it on every rank: rank 0 computes and broadcasts.

        Parameters
        ----------
        x : Tensor, shape (..., D), floating point, at least one row, finite
        """
        x2 = flatten(x, self.dim)
        problem = self._problem(x, x2)
        if ddp.any_rank(problem is not None, x2.device):  # all ranks raise together
            raise problem or bad_row_error(x, x2, None)
        self._gathered.clear()
        initialize(self, x2)

    @classmethod
    def from_encoder(cls, encoder: RvqEncoder, **kwargs: Any) -> ResidualVQ:
        """A quantizer starting from the codebooks of a numpy :class:`~viva_glyph.RvqEncoder`.

        Parameters
        ----------
        encoder : RvqEncoder
            E.g. from :func:`viva_glyph.fit` or :func:`viva_glyph.load`.
        **kwargs
            Other :class:`ResidualVQ` options. The first training batch only
            counts code use to seed the EMA state; no k-means runs.
        """
        from viva_glyph.core.encoder import RvqEncoder

        if not isinstance(encoder, RvqEncoder):
            raise TypeError(
                f"encoder must be a viva_glyph.RvqEncoder, got {type(encoder).__name__}"
            )
        c = encoder.config
        kwargs["kmeans_init"] = False
        model = cls(c.dimension, c.num_stages, list(c.stage_sizes), **kwargs)
        books = torch.zeros_like(model.codebook.data)
        for s, cb in enumerate(encoder.codebooks):
            books[s, : cb.size] = torch.from_numpy(cb.vectors.astype("float32"))
        model.codebook.data.copy_(books)
        if model.ema:
            model.ema_sum.copy_(books)
        return model

    def to_encoder(self) -> RvqEncoder:
        """The numpy :class:`~viva_glyph.RvqEncoder` with these codebooks (float32 copies).

        It gives the same codes as :meth:`encode` on the same float32 inputs,
        up to ties within float rounding.
        """
        from viva_glyph.core.codebook import Codebook
        from viva_glyph.core.encoder import RvqEncoder

        books = self.codebook.detach().float().cpu().numpy().copy()
        return RvqEncoder(
            [Codebook(b[:k]) for b, k in zip(books, self.codebook_sizes, strict=True)]
        )

    # -- the passes ------------------------------------------------------------------
    def _rows(self, x: Tensor) -> Tensor:
        """``x`` flattened to (N, D) float32 rows, checked (see ``check_finite``)."""
        x2 = flatten(x, self.dim)
        if self.check_finite:
            check_rows(x, x2)
        return x2

    def _problem(self, x: Tensor, x2: Tensor) -> ValueError | None:
        """What is wrong with the training batch ``x`` (flattened: ``x2``), if anything."""
        if x2.shape[0] == 0:
            shape = tuple(x.shape)
            return ValueError(f"x holds no rows (shape {shape}); training needs at least one")
        row = bad_row(x2) if self.check_finite else None
        return None if row is None else bad_row_error(x, x2, row)

    def _books(self, m: int) -> Tensor:
        return self.codebook.detach()[:m].float()

    def _invalid(self, m: int) -> Tensor | None:
        """Codes of the first m stages that do not exist (per-stage sizes), or None."""
        return None if self.code_valid is None else ~self.code_valid[:m]

    def _run(self, x2: Tensor, m: int, keep: Tensor | None, *, train: bool, grad: bool) -> Pass:
        """The rows ``x2`` through the first m stages (:func:`._pass.run_stages`)."""
        books, invalid = self._books(m), self._invalid(m)
        return run_stages(books, x2, keep, self.generator, train=train, grad=grad, invalid=invalid)

    def forward(self, x: Tensor, num_stages: int | None = None) -> RvqOutput:
        """Quantize ``x``; in training mode also update the codebooks.

        Parameters
        ----------
        x : Tensor, shape (..., D), float32, bfloat16 or any floating dtype
            Distances are computed in float32.
        num_stages : int, optional
            Use only the first m <= M stages (variable bit rate).

        Returns
        -------
        RvqOutput
        """
        m = stage_count(num_stages, self.num_stages)
        if self.training:
            return train_step(self, x, flatten(x, self.dim), m)
        return self._quantize(x, self._rows(x), m, None)

    def _quantize(self, x: Tensor, x2: Tensor, m: int, grad_books: Tensor | None) -> RvqOutput:
        """The output for the current codebooks, updating nothing."""
        grad = x.requires_grad and torch.is_grad_enabled()
        p = self._run(x2, m, None, train=False, grad=grad)
        return make_output(self, x, p, m, usage_counts(p.codes, self.codebook_size), grad_books)

    # -- codes -----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor, num_stages: int | None = None) -> Tensor:
        """Codes of ``x`` (never updates the codebooks).

        Parameters
        ----------
        x : Tensor, shape (..., D), floating point
        num_stages : int, optional
            The first m <= M stages only.

        Returns
        -------
        Tensor, shape (..., m), int64
        """
        m = stage_count(num_stages, self.num_stages)
        x2 = self._rows(x)
        p = self._run(x2, m, None, train=False, grad=False)
        return p.codes.view(*x.shape[:-1], m)

    def decode(self, codes: Tensor) -> Tensor:
        """Vectors from codes: the sum of the chosen codes of the first m stages.

        Parameters
        ----------
        codes : Tensor, shape (..., m), integer, 1 <= m <= M
            Values in ``[0, K_s)`` at stage s; ``-1`` (a stage skipped by dropout) adds nothing.
            Any other value raises ValueError naming the row and the stage.

        Returns
        -------
        Tensor, shape (..., D), float32
        """
        idx = check_codes(codes, self.num_stages, self.codebook_sizes)
        out = torch.zeros((*codes.shape[:-1], self.dim), device=self.codebook.device)
        for s in range(codes.shape[-1]):
            c = idx[..., s]
            out = out + F.embedding(c.clamp_min(0), self.codebook[s]) * (c >= 0)[..., None]
        return out


def _sync_state(module: nn.Module, incompatible: Any) -> None:
    """Mirror the loaded ``init_state`` buffer in a Python int (read by training only)."""
    assert isinstance(module, ResidualVQ)
    module._state = int(module.init_state)
