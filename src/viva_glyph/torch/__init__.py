"""PyTorch layer: a residual vector quantizer module for neural codecs and tokenizers.

Needs the ``torch`` extra (``pip install 'viva-glyph[torch]'``)::

    from viva_glyph.torch import ResidualVQ

    vq = ResidualVQ(dim=128, num_stages=8, codebook_size=256)
    out = vq(latents)              # latents (..., 128), channel-last
    loss = recon_loss + out.loss   # out.quantized, out.codes (..., 8) int64

Codebooks are shared with the numpy encoder: :meth:`ResidualVQ.to_encoder` and
:meth:`ResidualVQ.from_encoder`.
"""

from __future__ import annotations

from viva_glyph.checks import require_package

require_package("torch", "viva_glyph.torch")

from viva_glyph.torch._module import ResidualVQ, RvqOutput  # noqa: E402

__all__ = ["ResidualVQ", "RvqOutput"]
