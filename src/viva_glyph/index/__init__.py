"""Search over RVQ codes: :class:`RvqIndex` (flat or IVF), index files, sharded search.

A vector collection is stored as RVQ codes plus what the distance needs
(``||x'||^2`` in one of several forms); a batch of queries is answered with one
GEMM for the lookup tables of all queries and a compiled scan over the codes
(FAISS ``IndexResidualQuantizer`` / ``IndexIVFResidualQuantizer`` semantics).

>>> from viva_glyph.index import RvqIndex, load          # doctest: +SKIP
>>> index = RvqIndex(encoder, metric="l2", norm="float")  # doctest: +SKIP
>>> index.add(X); index.save("vectors.vgindex")           # doctest: +SKIP
>>> D, I = load("vectors.vgindex").search(Q, 10)          # doctest: +SKIP
"""

from __future__ import annotations

from viva_glyph.index._file import IndexFormatError, load
from viva_glyph.index._index import MAX_K, METRICS, RvqIndex, save
from viva_glyph.index._norms import NORM_MODES
from viva_glyph.index._shards import merge_results, search_shards

__all__ = [
    "MAX_K",
    "METRICS",
    "NORM_MODES",
    "IndexFormatError",
    "RvqIndex",
    "load",
    "merge_results",
    "save",
    "search_shards",
]
