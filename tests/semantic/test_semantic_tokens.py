"""Token strings, vocabulary and the prefix trie against brute-force scans."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from viva_glyph.semantic import PrefixTrie
from viva_glyph.semantic._tokens import format_tokens, parse_tokens, vocabulary

RADICES = (5, 3, 7, 4)


def random_ids(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # skewed, so that some prefixes are dense and others empty
    cols = [np.minimum(rng.geometric(0.45, n) - 1, r - 1) for r in RADICES]
    return np.stack(cols, axis=1)


def brute_allowed(ids: np.ndarray, prefix: list[int]) -> list[int]:
    p = len(prefix)
    if p == ids.shape[1]:
        return []
    return sorted({int(row[p]) for row in ids.tolist() if row[:p] == prefix})


@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 300),
    prefix=st.lists(st.integers(0, 6), max_size=4),
)
def test_allowed_matches_brute_force(seed, n, prefix):
    ids = random_ids(seed, n)
    prefix = [min(v, RADICES[j] - 1) for j, v in enumerate(prefix)]
    trie = PrefixTrie(ids, RADICES)
    got = trie.allowed(prefix)
    assert got.tolist() == brute_allowed(ids, prefix)
    assert trie.count(prefix) == len({tuple(r) for r in ids.tolist() if r[: len(prefix)] == prefix})
    assert len(trie) == np.unique(ids, axis=0).shape[0]


def test_allowed_on_prefixes_of_real_ids_and_membership():
    ids = random_ids(1, 500)
    trie = PrefixTrie(ids, RADICES)
    rng = np.random.default_rng(2)
    for i in rng.integers(0, 500, 50):
        for p in range(5):
            prefix = ids[i, :p].tolist()
            assert trie.allowed(prefix).tolist() == brute_allowed(ids, prefix)
        assert tuple(ids[i]) in trie
    absent = next(r for r in np.ndindex(*RADICES) if not (ids == np.array(r)).all(axis=1).any())
    assert absent not in trie
    with pytest.raises(ValueError, match="must be in"):
        trie.allowed([5])
    with pytest.raises(ValueError, match="longer"):
        trie.allowed([0, 0, 0, 0, 0])
    assert PrefixTrie.from_keys(trie.keys, RADICES).allowed([0]).tolist() == brute_allowed(ids, [0])
    with pytest.raises(ValueError, match="sorted"):
        PrefixTrie.from_keys(trie.keys[::-1].copy(), RADICES)


def test_tokens_round_trip_and_vocabulary():
    ids = random_ids(3, 40)
    texts = format_tokens(ids, RADICES)
    assert texts[0] == "".join(f"<{ch}_{v}>" for ch, v in zip("abcd", ids[0].tolist(), strict=True))
    np.testing.assert_array_equal(parse_tokens(texts, RADICES), ids)
    voc = vocabulary(RADICES)
    assert len(voc) == sum(RADICES) == len(set(voc))
    assert {t for s in texts for t in s.replace("><", ">\n<").split("\n")} <= set(voc)
    for bad, why in [
        ("<a_1><c_2>", "positions"),
        ("<a_1> <b_2>", "run of"),
        ("<a_9>", "must be in"),
        ("", "run of"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_tokens([bad], RADICES)
    with pytest.raises(ValueError, match="tokens"):
        parse_tokens(["<a_1><b_2>", "<a_1>"], RADICES)


@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 200),
    k=st.integers(1, 4),
    keyed=st.booleans(),
)
def test_suffix_ranks_match_brute_force(seed, n, k, keyed):
    from viva_glyph.semantic._unique import suffix_ranks

    rng = np.random.default_rng(seed)
    codes = rng.integers(0, k, size=(n, 3))
    err = rng.integers(0, 3, n).astype(np.float64)  # many ties
    keys = np.array([f"x{v}" for v in rng.permutation(n)]) if keyed else None
    rank, size = suffix_ranks(codes, err, keys)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(codes.tolist()):
        groups.setdefault(tuple(row), []).append(i)
    for members in groups.values():
        tie = (lambda i: keys[i]) if keys is not None else (lambda i: i)
        ordered = sorted(members, key=lambda i: (err[i], tie(i)))
        assert [int(rank[i]) for i in ordered] == list(range(len(members)))
        assert all(int(size[i]) == len(members) for i in members)
