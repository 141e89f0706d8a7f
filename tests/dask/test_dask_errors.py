"""viva_glyph.dask and ``--scheduler`` against wrong addresses, and errors under ``--quiet``.

A server that answers like HTTP once crashed the CLI with "MemoryError: Unable to
allocate 3.07 EiB", one that accepts and never answers hung ``encode`` for over
600 s, and ``inproc://x`` gave "not enough values to unpack". The servers here
listen on 127.0.0.1 only and stop with the test.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

distributed = pytest.importorskip("distributed")
pytest.importorskip("dask.array")

import viva_glyph as vg  # noqa: E402
import viva_glyph.dask as vgd  # noqa: E402

HTTP_REPLY = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/html\r\n\r\n<html>bad</html>\r\n"


@contextmanager
def tcp_server(reply: bytes | None) -> Iterator[str]:
    """A TCP server on 127.0.0.1 that sends ``reply`` to each client (None: never answers).

    Yields its address as ``tcp://127.0.0.1:PORT``; stops and closes every
    connection when the block ends (and after 120 s at the latest).
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.1)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        end = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < end:
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)
            if reply is not None:
                conn.settimeout(1.0)
                try:
                    conn.recv(65536)
                    conn.sendall(reply)
                except OSError:
                    pass
        for conn in held:
            conn.close()
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(10)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dask_errors")
    x = np.random.default_rng(0).standard_normal((600, 6)).astype(np.float32)
    np.save(folder / "x.npy", x)
    vg.fit(x, num_stages=2, codebook_size=8, iterations=3).save(folder / "m.safetensors")
    x[437, 2] = np.nan
    np.save(folder / "nan.npy", x)
    return folder


def _connect(address: str, timeout: float) -> None:
    with vgd.connect(address, timeout=timeout):
        pass


# -- the library ---------------------------------------------------------------------
def test_http_server_is_not_a_scheduler() -> None:
    with tcp_server(HTTP_REPLY) as address:
        start = time.monotonic()
        with pytest.raises(ConnectionError, match=rf"{address} did not answer as a dask scheduler"):
            _connect(address, 5)
        assert time.monotonic() - start < 5


def test_silent_server_times_out() -> None:
    with tcp_server(None) as address:
        start = time.monotonic()
        with pytest.raises(
            ConnectionError, match=rf"no answer from a dask scheduler at {address} within 1.5 s"
        ):
            _connect(address, 1.5)
        assert time.monotonic() - start < 6


def test_refused_connection() -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=r"could not connect .* within 1 s"):
        _connect(f"tcp://127.0.0.1:{port}", 1)


@pytest.mark.parametrize("address", ["inproc://x", "foo", "tcp://"])
def test_bad_address(address: str) -> None:
    with pytest.raises(ValueError, match=rf"'{address}' is not a dask scheduler address"):
        _connect(address, 1)


def test_real_scheduler_connects() -> None:
    with (
        distributed.LocalCluster(
            n_workers=1, processes=False, protocol="tcp", dashboard_address=None
        ) as cluster,
        vgd.connect(cluster.scheduler_address, timeout=10) as client,
    ):
        assert client is not None
        assert client.submit(sum, [1, 2, 3]).result() == 6
    with pytest.raises(ValueError, match="timeout must be > 0"):
        _connect("tcp://127.0.0.1:1", 0)


# -- the command line -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["http", "silent"])
def test_cli_wrong_scheduler_exits_2_in_one_line(files: Path, kind: str) -> None:
    with tcp_server(HTTP_REPLY if kind == "http" else None) as address:
        start = time.monotonic()
        out = run_cli(
            "encode", str(files / "m.safetensors"), str(files / "x.npy"),
            "-o", str(files / "c.npy"), "--scheduler", address, "--connect-timeout", "2",
        )  # fmt: skip
        took = time.monotonic() - start
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    expected = "did not answer as a dask scheduler" if kind == "http" else "within 2 s"
    assert lines[0].startswith("viva-glyph: error: ") and expected in lines[0]
    assert "MemoryError" not in out.stderr and took < 30
    assert not (files / "c.npy").exists()


def test_cli_inproc_address(files: Path) -> None:
    out = run_cli(
        "fit", str(files / "x.npy"), "-o", str(files / "m2.safetensors"),
        "--scheduler", "inproc://x", "--codebook-size", "8",
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "viva-glyph: error: 'inproc://x' is not a dask scheduler address "
        "(expected tcp://HOST:PORT, e.g. tcp://head:8786): an inproc:// scheduler "
        "is reachable only from the process that runs it"
    ]


def test_cli_connect_timeout_must_be_positive(files: Path) -> None:
    out = run_cli(
        "encode", str(files / "m.safetensors"), str(files / "x.npy"), "-o",
        str(files / "c.npy"), "--scheduler", "tcp://127.0.0.1:1", "--connect-timeout", "0",
    )  # fmt: skip
    assert out.returncode == 2 and "--connect-timeout" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_dask_error_under_quiet_is_one_line(files: Path) -> None:
    out = run_cli(
        "encode", str(files / "m.safetensors"), str(files / "nan.npy"),
        "-o", str(files / "c.zarr"), "--local-cluster", "1", "--quiet",
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("viva-glyph: error: ") and "row 437" in lines[0]
    assert out.stdout == ""
