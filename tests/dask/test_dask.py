"""viva_glyph.dask on a LocalCluster of two worker processes.

References are the in-memory encoder and fit of the core (bit-for-bit for
encoding), a brute-force float64 encoder, and the numpy arrays behind every
source.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")
cloudpickle = pytest.importorskip("cloudpickle")

import viva_glyph as vg  # noqa: E402
import viva_glyph.dask as vgd  # noqa: E402
from viva_glyph import RvqConfig  # noqa: E402

# Functions of this module run on the workers, which cannot import it by name.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _data(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Clustered float32 data: 32 fixed centres (per D) plus noise drawn from ``seed``."""
    centres = np.random.default_rng(d).standard_normal((32, d))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, 32, n)] + 0.3 * rng.standard_normal((n, d))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def encoder() -> vg.RvqEncoder:
    # K = 1024, D = 16 is a case where GEMMs of different row counts round differently.
    return vg.new(RvqConfig(4, 16, 1024), seed=3)


@pytest.mark.slow
def test_encode_equals_in_memory_bit_for_bit(
    client: Any, encoder: vg.RvqEncoder, tmp_path: Path
) -> None:
    x = _data(60_000, 16)
    np.save(tmp_path / "x.npy", x)
    # Blocks deliberately not aligned to the encoder's chunk rows.
    X = vgd.from_npy(tmp_path / "x.npy", chunk_rows=7_001)
    codes = vgd.encode(encoder, X)
    assert codes.dtype == encoder.code_dtype and codes.shape == (60_000, 4)
    assert len(codes.chunks[0]) > 4 and len(codes.chunks[1]) == 1
    got = codes.compute()
    np.testing.assert_array_equal(got, encoder.encode(x))
    two = vgd.encode(encoder, X, num_stages=2).compute()
    np.testing.assert_array_equal(two, encoder.encode(x, 2))


def test_encode_matches_brute_force(client: Any) -> None:
    books = np.random.default_rng(1).standard_normal((3, 8, 5)) * [[[1.0]], [[0.5]], [[0.25]]]
    enc = vg.from_codebooks(books)  # float64
    x = np.random.default_rng(2).standard_normal((300, 5))
    codes = vgd.encode(enc, da.from_array(x, chunks=(70, 2))).compute()
    residual = x.copy()
    for s in range(3):
        dist = ((residual[:, None, :] - books[s][None]) ** 2).sum(axis=2)
        np.testing.assert_array_equal(codes[:, s], dist.argmin(axis=1))
        residual -= books[s][codes[:, s]]


def test_decode_equals_in_memory(client: Any, encoder: vg.RvqEncoder) -> None:
    codes = np.random.default_rng(4).integers(0, 1024, (5_000, 4)).astype(np.uint16)
    dc = da.from_array(codes, chunks=(1_200, 4))
    out = vgd.decode(encoder, dc)
    assert out.dtype == encoder.dtype and out.shape == (5_000, 16)
    np.testing.assert_array_equal(out.compute(), encoder.decode(codes))
    np.testing.assert_array_equal(
        vgd.decode(encoder, dc[:, :2]).compute(), encoder.decode(codes[:, :2])
    )


@given(
    sizes=st.lists(st.integers(1, 5_000), min_size=1, max_size=30),
    multiple=st.integers(1, 3_000),
)
def test_aligned_rows(sizes: list[int], multiple: int) -> None:
    out = vgd.aligned_rows(tuple(sizes), multiple)
    assert sum(out) == sum(sizes) and all(r > 0 for r in out)
    bounds = np.cumsum(out)[:-1]
    assert all(b % multiple == 0 for b in bounds)
    # Never more blocks than given; as many as possible when the blocks are long.
    assert len(out) <= len(sizes)
    if min(sizes) >= 2 * multiple:
        assert len(out) == len(sizes)


def _tasks_holding(arr: Any, encoder: vg.RvqEncoder) -> int:
    """How many graph values carry the encoder's codebook bytes."""
    needle = encoder.codebooks[-1].vectors.tobytes()[:512]
    return sum(needle in cloudpickle.dumps(v) for v in dict(arr.__dask_graph__()).values())


def test_encoder_is_one_key_of_the_graph(encoder: vg.RvqEncoder) -> None:
    X = da.zeros((50_000, 16), chunks=(2_000, 16), dtype=np.float32)
    codes = vgd.encode(encoder, X)
    assert codes.numblocks[0] > 10
    assert _tasks_holding(codes, encoder) == 1
    assert _tasks_holding(vgd.decode(encoder, codes), encoder) == 1


def test_beam_search_blocks(client: Any, encoder: vg.RvqEncoder) -> None:
    pytest.importorskip("viva_glyph.core")
    x = _data(3_000, 16, seed=5)
    got = vgd.encode(encoder, da.from_array(x, chunks=(1_000, 16)), beam_size=4).compute()
    np.testing.assert_array_equal(got, encoder.encode(x, beam_size=4))


def test_zarr_source_and_sinks(client: Any, encoder: vg.RvqEncoder, tmp_path: Path) -> None:
    x = _data(20_000, 16, seed=6)
    zarr.create_array(str(tmp_path / "x.zarr"), data=x, chunks=(3_000, 16))
    X = vgd.from_zarr(tmp_path / "x.zarr")
    np.testing.assert_array_equal(X.compute(), x)
    ref = encoder.encode(x)
    codes = vgd.encode(encoder, X)
    vgd.write_codes(codes, tmp_path / "codes.zarr")
    vgd.write_codes(codes, tmp_path / "codes.npy", progress=True)
    z = zarr.open_array(str(tmp_path / "codes.zarr"), mode="r")
    assert z.dtype == encoder.code_dtype and z.shape == ref.shape
    assert z.chunks[0] < 20_000 and z.compressors  # chunked and compressed
    np.testing.assert_array_equal(z[:], ref)
    np.testing.assert_array_equal(np.load(tmp_path / "codes.npy", allow_pickle=False), ref)
    # Overwriting works and leaves no temporary files behind.
    vgd.write_codes(vgd.encode(encoder, X, num_stages=1), tmp_path / "codes.zarr")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "codes.zarr"))[:], ref[:, :1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.npy", "codes.zarr", "x.zarr"]


def test_parquet_sources(client: Any, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    x = _data(1_000, 6, seed=7)
    lists = pa.table({"id": np.arange(1_000), "emb": pa.array(list(x), pa.list_(pa.float32(), 6))})
    pq.write_table(lists, tmp_path / "lists.parquet", row_group_size=300)
    X = vgd.from_parquet(tmp_path / "lists.parquet", columns=["emb"])
    assert X.chunks[0] == (300, 300, 300, 100) and X.dtype == np.float32
    np.testing.assert_array_equal(X.compute(), x)
    np.testing.assert_array_equal(X[250:650].compute(), x[250:650])
    folder = tmp_path / "cols"
    folder.mkdir()
    for i, part in enumerate(np.array_split(x.astype(np.float64), 2)):
        table = pa.table({f"c{j}": part[:, j] for j in range(6)})
        pq.write_table(table, folder / f"part{i}.parquet", row_group_size=200)
    Y = vgd.open_array(folder)
    np.testing.assert_array_equal(Y.compute(), x.astype(np.float64))
    with pytest.raises(ValueError, match="not in"):
        vgd.from_parquet(tmp_path / "lists.parquet", columns=["nope"])


def test_bad_input(encoder: vg.RvqEncoder, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="dask array"):
        vgd.encode(encoder, np.zeros((4, 16), np.float32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dimension 8"):
        vgd.encode(encoder, da.zeros((4, 8), chunks=2))
    with pytest.raises(TypeError, match="real numbers"):
        vgd.encode(encoder, da.zeros((4, 16), dtype=bool, chunks=2))
    with pytest.raises(ValueError, match="num_stages"):
        vgd.encode(encoder, da.zeros((4, 16), chunks=2), num_stages=5)
    with pytest.raises(ValueError, match="shape"):
        vgd.decode(encoder, da.zeros((4, 5), dtype=np.uint16, chunks=2))
    with pytest.raises(ValueError, match=r"\.npy file or a \.zarr"):
        vgd.write_codes(da.zeros((4, 2), dtype=np.uint8, chunks=2), tmp_path / "c.csv")
    (tmp_path / "x.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"unknown data format '\.txt'"):
        vgd.open_array(tmp_path / "x.txt")
    x = np.ones((10, 16), np.float32)
    x[7, 3] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        vgd.encode(encoder, da.from_array(x, chunks=(5, 16))).compute(scheduler="sync")


def _slow(block: np.ndarray) -> np.ndarray:
    time.sleep(0.1)
    return block


async def _crash() -> None:
    os._exit(1)  # a hard crash: no cleanup, the nanny notices and restarts the worker


@pytest.mark.slow
def test_worker_killed_mid_encode(client: Any, encoder: vg.RvqEncoder, tmp_path: Path) -> None:
    x = _data(48_000, 16, seed=8)
    np.save(tmp_path / "x.npy", x)
    rows = vgd.rows_per_chunk(encoder)
    X = vgd.from_npy(tmp_path / "x.npy", chunk_rows=rows).map_blocks(_slow, dtype=x.dtype)
    assert X.numblocks[0] >= 30
    codes = vgd.encode(encoder, X)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            vgd.write_codes(codes, tmp_path / "codes.zarr")
        except BaseException as exc:
            errors.append(exc)

    before = set(client.scheduler_info()["workers"])
    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.8)  # about a third of the blocks are done
    assert writer.is_alive()
    victim = sorted(before)[0]
    client.run(_crash, workers=[victim], wait=False)
    writer.join(timeout=60)
    assert not writer.is_alive() and not errors
    client.wait_for_workers(2, timeout=30)
    after = set(client.scheduler_info()["workers"])
    assert victim not in after and len(after) == 2  # the nanny replaced it
    got = zarr.open_array(str(tmp_path / "codes.zarr"), mode="r")[:]
    np.testing.assert_array_equal(got, encoder.encode(x))


def _heldout_mse(enc: vg.RvqEncoder, h: np.ndarray, beam: int) -> float:
    diff = h.astype(np.float64) - enc.decode(enc.encode(h, beam_size=beam))
    return float(np.mean(diff**2))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("beam", "persist", "max_samples", "chunk", "gather"),
    [
        (1, None, None, 50_000, False),
        (2, False, 30_000, 5_000, False),
        (3, True, None, 7_000, False),
        (1, None, None, 7_000, None),  # the default: gathered, trained in memory
        (3, None, 30_000, 5_000, True),
    ],
)
def test_fit_equals_in_memory_fit(
    client: Any,
    tmp_path: Path,
    beam: int,
    persist: bool | None,
    max_samples: int | None,
    chunk: int,
    gather: bool | None,
) -> None:
    """The distributed fit IS the in-memory fit: bit-identical codebooks.

    Gathered (the default for a sample that fits in memory), the sample the cluster
    draws is trained by the in-memory fit's own code. Trained where it lies, both
    run one stage loop and one Lloyd loop on the same leaves of the sampled
    rows (same GEMM shapes) and reduce their partial sums in the same fan-in-8 tree
    (same order), so the arithmetic is identical whatever the input's chunking, as
    long as client and workers use the same BLAS library and settings (here they
    are one machine and one environment). 40,000 rows are 10 leaves: two levels of
    the tree, split between blocks (chunk 50,000: 8 leaves per block) or not (5,000
    and 7,000: one leaf per block), and with the beam's table path (B = 2, 3).
    """
    x, h = _data(40_000, 8, seed=9), _data(4_000, 8, seed=10)
    np.save(tmp_path / "x.npy", x)
    kw: dict[str, Any] = dict(
        num_stages=2, codebook_size=32, beam_size=beam, iterations=4, seed=11,
        max_samples=max_samples,
    )  # fmt: skip
    ref = vg.fit(x, **kw)
    X = vgd.from_npy(tmp_path / "x.npy", chunk_rows=chunk)
    got = vgd.fit(X, persist=persist, gather=gather, **kw)
    assert got.config == ref.config and got.dtype == np.float32
    assert got.training is not None and ref.training is not None
    assert got.training.params["distributed"] is True
    assert got.training.params["gathered"] is (gather is not False)
    assert got.training.params["samples_used"] == ref.training.params["samples_used"]
    assert got.codebook_array.tobytes() == ref.codebook_array.tobytes()
    assert got.training.stage_mse == ref.training.stage_mse
    assert got.training.iterations == ref.training.iterations
    # Training did something: far better than the data's own spread.
    assert _heldout_mse(got, h, beam) < 0.2 * float(np.var(h, axis=0).mean())


def test_fit_bad_parameters(encoder: vg.RvqEncoder) -> None:
    X = da.zeros((100, 4), chunks=50)
    with pytest.raises(ValueError, match="codebook_size = 256"):
        vgd.fit(X, num_stages=1, codebook_size=256)
    with pytest.raises(ValueError, match="refine > 0 needs the sample in memory"):
        vgd.fit(X, num_stages=1, codebook_size=4, refine=1, gather=False)
    with pytest.raises(TypeError, match="gather must be a bool"):
        vgd.fit(X, num_stages=1, codebook_size=4, gather="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dimension"):
        vgd.fit(X, RvqConfig(2, 5, 4))
    with pytest.raises(TypeError, match="dask array"):
        vgd.fit(np.zeros((100, 4)))  # type: ignore[arg-type]
    big = np.random.default_rng(0).standard_normal((300, 4))
    big[201, 3] = 1e20
    with pytest.raises(ValueError, match="row 201 holds a value of magnitude 1e"):
        vgd.fit(da.from_array(big, chunks=100), num_stages=1, codebook_size=4)
    with pytest.raises(ValueError, match=r"largest magnitude is [0-9.]+e-25"):
        vgd.fit(da.from_array(big[:200] * 1e-25, chunks=100), num_stages=1, codebook_size=4)


def test_run_fit_and_run_encode(tmp_path: Path) -> None:
    x = _data(6_000, 8, seed=12)
    np.save(tmp_path / "x.npy", x)
    enc = vgd.run_fit(
        tmp_path / "x.npy", scheduler=None, local_cluster=None, progress=False,
        num_stages=2, codebook_size=16, iterations=5,
    )  # fmt: skip
    assert enc.config == RvqConfig(2, 8, 16) and enc.training is not None
    vgd.run_encode(
        enc, tmp_path / "x.npy", tmp_path / "codes.npy", scheduler=None, local_cluster=None,
        progress=False, num_stages=1,
    )  # fmt: skip
    np.testing.assert_array_equal(np.load(tmp_path / "codes.npy"), enc.encode(x, 1))
    with pytest.raises(ValueError, match="not both"):
        vgd.run_encode(
            enc, tmp_path / "x.npy", tmp_path / "c.npy", scheduler="tcp://x:1",
            local_cluster=2, progress=False,
        )  # fmt: skip


def test_worker_environ_sets_malloc_and_threads_for_new_workers() -> None:
    import dask

    key = "distributed.nanny.pre-spawn-environ"
    before, env_before = dict(dask.config.get(key)), dict(os.environ)
    with vgd.worker_environ():
        inside = dict(dask.config.get(key))
        assert os.environ["MALLOC_MMAP_THRESHOLD_"] == str(16 << 20)
    assert inside["MALLOC_MMAP_THRESHOLD_"] == 16 << 20
    assert inside["MALLOC_TRIM_THRESHOLD_"] == 64 << 20
    assert inside["VIVA_GLYPH_NUM_THREADS"] == 1
    ours = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "VIVA_GLYPH_NUM_THREADS")
    assert {k: v for k, v in inside.items() if k not in ours} == {
        k: v for k, v in before.items() if k not in ours
    }
    assert dict(dask.config.get(key)) == before and dict(os.environ) == env_before


def test_gathered_fit_refines_as_in_memory(client: Any, tmp_path: Path) -> None:
    """Refinement needs the sample in memory: gathered, it is the in-memory fit's."""
    x = _data(6_000, 8, seed=12)
    np.save(tmp_path / "x.npy", x)
    kw: dict[str, Any] = dict(num_stages=2, codebook_size=16, refine=2, iterations=3, seed=5)
    ref = vg.fit(x, **kw)
    got = vgd.fit(vgd.from_npy(tmp_path / "x.npy", chunk_rows=1_000), **kw)
    assert got == ref and got.training is not None and ref.training is not None
    assert got.training.refine_mse == ref.training.refine_mse


@pytest.mark.parametrize("shape", [(8, 256, 768), (16, 512, 768)])
def test_a_large_encoder_goes_to_the_workers_without_a_large_graph(
    client: Any, tmp_path: Path, shape: tuple[int, int, int]
) -> None:
    # Encoding with a large encoder printed dask's 7-line "Sending large graph of size
    # 24.02 MiB" warning: the encoder rode in the graph. One of 6 MiB (its pickled
    # codebooks) stays in the graph; one of 24 MiB is scattered to the workers once,
    # outside the graph.
    import pickle
    import warnings

    rng = np.random.default_rng(0)
    big = vg.from_codebooks(rng.normal(size=shape).astype(np.float32))
    assert len(pickle.dumps(big)) < np.prod(shape) * 4 + (1 << 16)
    x = _data(2_000, 768, seed=2)
    np.save(tmp_path / "x.npy", x)  # read by the workers: the data is not in the graph either
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        codes = vgd.encode(big, vgd.from_npy(tmp_path / "x.npy", chunk_rows=500)).compute()
        back = vgd.decode(big, da.from_array(codes, chunks=(500, shape[0]))).compute()
    assert not [w for w in caught if "large graph" in str(w.message)], [
        str(w.message) for w in caught
    ]
    np.testing.assert_array_equal(codes, big.encode(x))
    np.testing.assert_array_equal(back, big.decode(codes))
