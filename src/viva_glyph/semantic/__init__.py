"""Semantic IDs: short, unique, prefix-meaningful token IDs for items.

Residual k-means over item embeddings gives every item L codes (coarse to
fine); a suffix token (or moving items to free last-level codes) makes the
IDs unique. Also: token strings for language models, a prefix trie for
constrained decoding, the metrics recommender teams report, and a persistent
SQLite ID store for items that arrive later.

>>> import numpy as np
>>> from viva_glyph import semantic
>>> X = np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float32)
>>> ids = semantic.fit(X, levels=2, codebook_size=16)
>>> uids = ids.unique(X)
>>> uids.shape
(2000, 3)
>>> len(np.unique(uids, axis=0))
2000
"""

from __future__ import annotations

from viva_glyph.semantic._api import fit
from viva_glyph.semantic._eval import SemanticReport, evaluate
from viva_glyph.semantic._file import load
from viva_glyph.semantic._model import SemanticIds
from viva_glyph.semantic._store import IdStore
from viva_glyph.semantic._tokens import PrefixTrie
from viva_glyph.semantic._unique import ResolveReport, SuffixRangeError

__all__ = [
    "IdStore",
    "PrefixTrie",
    "ResolveReport",
    "SemanticIds",
    "SemanticReport",
    "SuffixRangeError",
    "evaluate",
    "fit",
    "load",
]
