"""Per-level codebook sizes on dask arrays: fit, encode and decode equal the in-memory ones."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

import viva_glyph as vg  # noqa: E402
import viva_glyph.dask as vgd  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _data(n: int, d: int, seed: int) -> np.ndarray:
    centres = np.random.default_rng(d).standard_normal((32, d))
    rng = np.random.default_rng(seed)
    return (centres[rng.integers(0, 32, n)] + 0.3 * rng.standard_normal((n, d))).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize(("beam", "persist", "chunk"), [(1, None, 7_000), (3, False, 5_000)])
def test_fit_with_mixed_sizes_equals_in_memory_fit(
    client: Any, tmp_path: Path, beam: int, persist: bool | None, chunk: int
) -> None:
    # trained where the rows lie (gathered, it is the in-memory fit's code: test_dask.py)
    """Bit-identical codebooks, as for equal sizes (test_dask.py): one stage loop, one
    Lloyd loop, the same leaves (sized by the largest K) and the same reduction tree."""
    x = _data(30_000, 8, seed=9)
    np.save(tmp_path / "x.npy", x)
    kw: dict[str, Any] = dict(codebook_size=[8, 64, 16], beam_size=beam, iterations=4, seed=11)
    ref = vg.fit(x, **kw)
    X = vgd.from_npy(tmp_path / "x.npy", chunk_rows=chunk)
    got = vgd.fit(X, persist=persist, gather=False, **kw)
    assert got.config == ref.config and got.config.stage_sizes == (8, 64, 16)
    assert got == ref  # every codebook bit for bit
    assert got.training is not None and ref.training is not None
    assert got.training.stage_mse == ref.training.stage_mse
    assert got.training.params["codebook_size"] == [8, 64, 16]
    # and the codes of the dask encoder are the in-memory ones
    X = vgd.from_npy(tmp_path / "x.npy", chunk_rows=7_001)
    codes = vgd.encode(got, X, beam_size=beam).compute()
    np.testing.assert_array_equal(codes, ref.encode(x, beam_size=beam))
    out = vgd.decode(got, da.from_array(codes, chunks=(4_000, 3))).compute()
    np.testing.assert_array_equal(out, ref.decode(codes))
