"""Shared test helpers: independent float64 brute-force references."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.load_profile("ci")


def brute_force_encode(books: Any, x: np.ndarray) -> tuple[list[int], Any]:
    """Greedy RVQ by explicit float64 distances to every code; ties to the lowest index.

    Independent of the library's GEMM kernel: it only uses elementwise arithmetic.
    Returns the indices and, per stage, the (K,) squared distances of that stage
    (an (M, K) array, or a list of (K_m,) arrays when the stage sizes differ).
    """
    residual = np.asarray(x, dtype=np.float64).copy()
    indices, stage_dists = [], []
    for book in (np.asarray(b, dtype=np.float64) for b in books):  # sizes may differ
        dists = ((residual[None, :] - book) ** 2).sum(axis=1)
        q = int(np.flatnonzero(dists == dists.min())[0])
        indices.append(q)
        stage_dists.append(dists)
        residual = residual - book[q]
    ragged = len({len(dists) for dists in stage_dists}) > 1
    return indices, stage_dists if ragged else np.array(stage_dists)


def engine(
    enc: Any,
    x: np.ndarray,
    num_stages: int,
    beam_size: int,
    *,
    lut: bool | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """The encoder's residual loop on rows x (no chunking, no checks): its first
    ``num_stages`` codebooks through :func:`viva_glyph.core.search.encode`, with the
    table path as the encoder would choose it unless ``lut`` says otherwise."""
    from viva_glyph.core.beam import use_lut
    from viva_glyph.core.search import encode

    if lut is None:
        lut = use_lut(enc.config, beam_size, enc.dtype.itemsize)
    rows = x if beam_size == 1 else x.astype(enc.dtype, copy=False)
    codes = encode(enc.codebooks[:num_stages], rows, beam_size, lut=lut, backend=backend)
    return codes.astype(enc.code_dtype)


def assert_stagewise_nearest(books: np.ndarray, x: np.ndarray, codes: np.ndarray) -> None:
    """Every stage's choice is a float64 nearest code within relative 1e-5, and where
    the nearest is 1e-5 clear of the runner-up it is exactly that code; exact float64
    ties go to the lowest index (brute force over all codes, elementwise arithmetic)."""
    books64 = [np.asarray(b, dtype=np.float64) for b in books]  # (K_m, D) each: sizes may differ
    residual = x.astype(np.float64).copy()
    rows = np.arange(len(x))
    for stage in range(codes.shape[1]):
        dists = ((residual[:, None, :] - books64[stage][None]) ** 2).sum(axis=2)
        best = dists.min(axis=1)
        chosen = dists[rows, codes[:, stage]]
        assert np.all(chosen <= best * (1 + 1e-5) + 1e-300), stage
        srt = np.sort(dists, axis=1)
        clear = srt[:, 1] > srt[:, 0] * (1 + 1e-5) if dists.shape[1] > 1 else best >= 0
        np.testing.assert_array_equal(codes[clear, stage], dists.argmin(axis=1)[clear])
        exact_tie = chosen == best
        lowest = (dists == best[:, None]).argmax(axis=1)
        np.testing.assert_array_equal(codes[exact_tie, stage], lowest[exact_tie])
        residual -= books64[stage][codes[:, stage]]


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is fastest and immune to busy cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torch_mixture(n: int, d: int, seed: int, centers: int = 24) -> Any:
    """Structured torch data: a Gaussian mixture with well separated centers, (n, d) float32."""
    import torch

    g = torch.Generator().manual_seed(99)
    mu = torch.randn(centers, d, generator=g) * 3.0
    s = torch.Generator().manual_seed(seed)
    return mu[torch.randint(centers, (n,), generator=s)] + 0.3 * torch.randn(n, d, generator=s)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A Dask LocalCluster of two single-threaded worker processes, one per test module."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    )
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def ema_step_reference(
    books: list[np.ndarray],
    counts: list[np.ndarray],
    codes: np.ndarray,
    x: np.ndarray,
    decay: float,
    eps: float,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """One EMA codebook update by hand in float64, per stage of K_s = len(books[s]) codes:
    ``(hits, new_count, new_sum, new_codebook)`` with Laplace smoothing of the counts."""
    out = []
    r = x.astype(np.float64)
    for s, book in enumerate(books):
        k = len(book)
        hits = np.bincount(codes[:, s], minlength=k).astype(np.float64)
        sums = np.zeros((k, x.shape[1]))
        np.add.at(sums, codes[:, s], r)
        new_count = decay * counts[s] + (1 - decay) * hits
        new_sum = decay * book * counts[s][:, None] + (1 - decay) * sums
        total = new_count.sum()
        smoothed = (new_count + eps) / (total + k * eps) * total
        out.append((hits, new_count, new_sum, new_sum / smoothed[:, None]))
        r = r - book[codes[:, s]]
    return out


def assert_streams_equal(ids: Any, x: np.ndarray, tmp_path: Path, da: Any) -> None:
    """Semantic IDs of ``x`` from a memory-mapped .npy and from a Dask array (512-row
    chunks) equal those of the in-memory array (reassign resolution, and raw codes)."""
    expect = ids.unique(x, resolve="reassign")
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    np.testing.assert_array_equal(ids.unique(mm, resolve="reassign"), expect)
    lazy = da.from_array(x, chunks=(512, x.shape[1]))
    np.testing.assert_array_equal(ids.unique(lazy, resolve="reassign"), expect)
    np.testing.assert_array_equal(ids.codes(lazy), ids.codes(x))


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m viva_glyph ARGS`` in a subprocess importing this checkout's package."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run(
        [sys.executable, "-m", "viva_glyph", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[list[Path]]:
    """Folders this process cannot create a file in: /proc/self (even for root) and a
    mode-0o555 folder (not for root); only those where creating a file really fails."""
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    out = []
    for folder in (Path("/proc/self"), ro):
        try:
            os.close(os.open(folder / "probe", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError:
            out.append(folder)
        else:
            os.unlink(folder / "probe")
    if not out:
        pytest.skip("no folder here refuses a new file")
    yield out
    ro.chmod(0o755)


def unprivileged() -> list[str]:
    """A command prefix that runs a child process without the right to override file modes:
    as an unprivileged user where this interpreter runs as one, else (root) with every
    capability dropped; skips the test when neither is possible here."""
    import shutil
    import tempfile

    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: cannot drop the right to override modes")
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_text("")
        probe.chmod(0o444)
        check = (
            f"import viva_glyph\ntry:\n    open({str(probe)!r}, 'a')\n"
            "except PermissionError:\n    print('denied')"
        )
        for prefix in (
            [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"],
            [setpriv, "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs"],
        ):
            res = subprocess.run(
                [*prefix, sys.executable, "-c", check],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                check=False,
            )
            if res.stdout.strip() == "denied":
                return prefix
    pytest.skip("cannot drop the right to override file modes here (setpriv failed)")
