"""Atomic outputs: checked before work, mode kept, no temporaries left by signals or kills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import viva_glyph as vg
from viva_glyph import cli, files
from viva_glyph.files import _atomic


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Any]:
    enc = vg.from_codebooks(np.random.default_rng(0).normal(size=(2, 4, 3)).astype(np.float32))
    enc.save(tmp_path / "m.safetensors")
    x = np.random.default_rng(1).normal(size=(2000, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    return {"enc": enc, "x": x, "m": str(tmp_path / "m.safetensors"), "dir": tmp_path}


def test_output_folder_is_refused_before_any_work(
    setup: dict[str, Any], capsys: Any, monkeypatch: Any
) -> None:
    d = setup["dir"]
    (d / "c.npy").mkdir()
    (d / "f.safetensors").mkdir()

    def no_work(*args: Any) -> Any:
        raise AssertionError("data was read before the output was checked")

    monkeypatch.setattr(files.VectorFile, "blocks", no_work)
    monkeypatch.setattr(files.VectorFile, "array", no_work)
    for argv in (
        ["encode", setup["m"], str(d / "x.npy"), "-o", str(d / "c.npy")],
        ["decode", setup["m"], str(d / "x.npy"), "-o", str(d / "c.npy")],
        ["fit", str(d / "x.npy"), "-o", str(d / "f.safetensors")],
    ):
        code = cli.main(argv)
        err = capsys.readouterr().err
        assert code == 2, err
        assert f"output {argv[-1]} is a folder" in err and ".tmp" not in err
    (d / "notzarr.zarr").mkdir()
    (d / "notzarr.zarr" / "keep.txt").write_text("precious")
    argv = ["encode", setup["m"], str(d / "x.npy"), "-o", str(d / "notzarr.zarr")]
    assert cli.main(argv) == 2
    assert "is not a zarr store" in capsys.readouterr().err
    assert (d / "notzarr.zarr" / "keep.txt").read_text() == "precious"
    assert temps(d) == []


def test_replacing_an_output_keeps_its_mode(setup: dict[str, Any]) -> None:
    d = setup["dir"]
    out = d / "c.npy"
    assert cli.main(["encode", setup["m"], str(d / "x.npy"), "-o", str(out), "-q"]) == 0
    os.chmod(out, 0o640)
    assert cli.main(["encode", setup["m"], str(d / "x.npy"), "-o", str(out), "-q"]) == 0
    assert out.stat().st_mode & 0o777 == 0o640
    os.chmod(d / "m.safetensors", 0o600)
    setup["enc"].save(d / "m.safetensors")
    assert (d / "m.safetensors").stat().st_mode & 0o777 == 0o600
    mask = os.umask(0o022)
    os.umask(mask)
    files.save_array(d / "new.npy", np.zeros((2, 2)))
    assert (d / "new.npy").stat().st_mode & 0o777 == 0o666 & ~mask


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_of_dead_writers_are_removed(setup: dict[str, Any]) -> None:
    d = setup["dir"]
    host, pid = _atomic._host(), dead_pid()
    stale_file = d / f".c.npy.viva-glyph-{host}-{pid}-0-0123abcd.tmp"
    stale_dir = d / f".c.zarr.viva-glyph-{host}-{pid}-0-89abcdef.tmp"
    stale_file.write_bytes(b"half")
    stale_dir.mkdir()
    (stale_dir / "zarr.json").write_text("{}")
    keep = [
        d / "notes.tmp",  # not ours
        d / ".c.npy.abcdef.tmp",  # the old naming: not recognisable, left alone
        d / f".c.npy.viva-glyph-{host}-{os.getpid()}-0-01234567.tmp",  # a live owner
        d / f".c.npy.viva-glyph-00000000-{pid}-0-01234567.tmp",  # another host
    ]
    for p in keep:
        p.write_bytes(b"x")
    assert cli.main(["encode", setup["m"], str(d / "x.npy"), "-o", str(d / "c.npy"), "-q"]) == 0
    assert not stale_file.exists() and not stale_dir.exists()
    assert all(p.exists() for p in keep)


SLOW_CLI = textwrap.dedent(
    """
    import sys, time
    import viva_glyph as vg
    from viva_glyph import cli
    real = vg.RvqEncoder.encode
    def slow(self, *a, **k):
        time.sleep(0.05)
        return real(self, *a, **k)
    vg.RvqEncoder.encode = slow
    sys.exit(cli.main(sys.argv[1:]))
    """
)


def start_and_wait_for_temp(argv: list[str], folder: Path, script: str = SLOW_CLI) -> Any:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *argv], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not temps(folder):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no temporary file appeared"
        time.sleep(0.02)
    time.sleep(0.1)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signal_during_encode_removes_the_temp(setup: dict[str, Any], sig: int) -> None:
    d = setup["dir"]
    argv = ["encode", setup["m"], str(d / "x.npy"), "-o", str(d / "c.npy"), "--block-rows", "20"]
    proc = start_and_wait_for_temp(argv, d)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig
    assert err.strip().splitlines() == [f"viva-glyph: terminated by {signal.Signals(sig).name}"]
    assert temps(d) == [] and not (d / "c.npy").exists()


def test_killed_encode_is_cleaned_up_by_the_next_run(setup: dict[str, Any]) -> None:
    d = setup["dir"]
    argv = ["encode", setup["m"], str(d / "x.npy"), "-o", str(d / "c.npy"), "--block-rows", "20"]
    proc = start_and_wait_for_temp(argv, d)
    proc.kill()
    proc.communicate(timeout=60)
    assert len(temps(d)) == 1 and not (d / "c.npy").exists()
    assert cli.main([*argv[:5], "-q"]) == 0
    assert temps(d) == []
    np.testing.assert_array_equal(np.load(d / "c.npy"), setup["enc"].encode(setup["x"]))


SLOW_DASK = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import viva_glyph as vg
    import viva_glyph.dask as vgd
    from viva_glyph.files._atomic import removing_temps_on_signals
    enc = vg.load(sys.argv[1])
    def slow(block):
        time.sleep(0.2)
        return block
    X = vgd.from_npy(sys.argv[2], chunk_rows=50).map_blocks(slow, dtype=np.float32)
    with removing_temps_on_signals():
        vgd.write_codes(vgd.encode(enc, X), sys.argv[3])
    """
)


@pytest.mark.parametrize("how", ["term", "kill"])
def test_dask_npy_write_leaves_no_temp(setup: dict[str, Any], how: str) -> None:
    vgd = pytest.importorskip("viva_glyph.dask")
    d = setup["dir"]
    argv = [setup["m"], str(d / "x.npy"), str(d / "c.npy")]
    proc = start_and_wait_for_temp(argv, d, SLOW_DASK)
    if how == "term":
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode != 0 and "Terminated: terminated by SIGTERM" in err
        assert temps(d) == []
    else:
        proc.kill()
        proc.communicate(timeout=60)
        assert len(temps(d)) == 1
        vgd.write_codes(vgd.encode(setup["enc"], vgd.from_npy(d / "x.npy")), d / "c.npy")
        assert temps(d) == []
        np.testing.assert_array_equal(np.load(d / "c.npy"), setup["enc"].encode(setup["x"]))
    assert (d / "c.npy").exists() == (how == "kill")


@pytest.mark.parametrize("library", ["wraps", "swallows"])
def test_signal_inside_library_code_still_terminates(
    setup: dict[str, Any], monkeypatch: Any, capsys: Any, library: str
) -> None:
    """A signal's exception can surface inside library code that turns it into another
    exception (numba's lazy type set-up raised RuntimeError from it: 'unexpected error',
    exit 1) or swallows it; the run still ends as terminated, with no output and no temp."""
    d = setup["dir"]
    real = vg.RvqEncoder.encode

    def encode(self: Any, *a: Any, **k: Any) -> Any:
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, in this frame
            time.sleep(1)
        except BaseException as exc:
            if library == "wraps":
                raise RuntimeError("Error calling __set_name__") from exc
        return real(self, *a, **k)

    monkeypatch.setattr(vg.RvqEncoder, "encode", encode)
    argv = ["encode", setup["m"], str(d / "x.npy"), "-o", str(d / "c.npy"), "-q"]
    assert cli.main(argv) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines() == ["viva-glyph: terminated by SIGTERM"]
    assert temps(d) == [] and not (d / "c.npy").exists()
    monkeypatch.setattr(vg.RvqEncoder, "encode", real)
    assert cli.main(argv) == 0  # the next run in this process is not taken for terminated


def test_an_existing_output_that_is_not_a_regular_file_is_never_replaced(tmp_path: Path) -> None:
    """The atomic rename would put a regular file in the place of a pipe or a device
    (as root, ``save("/dev/null")`` replaced /dev/null); such a target is refused."""
    pipe = tmp_path / "model.safetensors"
    os.mkfifo(pipe)
    enc = vg.from_codebooks([vg.Codebook(np.eye(3), dtype=np.float32)])
    with pytest.raises(ValueError, match="not a regular file"):
        enc.save(pipe)
    assert pipe.is_fifo()
    with pytest.raises(ValueError, match="not a regular file"), files.atomic_output(pipe):
        pass
    assert pipe.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == [pipe.name]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX named pipes")
@pytest.mark.parametrize("name", ["d.parquet", "d.pq"])
def test_a_pipe_or_device_named_parquet_is_not_called_missing(tmp_path: Path, name: str) -> None:
    """A named pipe or a device with a Parquet suffix exists: it is refused naming what it
    is (the reader said "no such file")."""
    pipe = tmp_path / name
    os.mkfifo(pipe)
    device = tmp_path / f"zero-{name}"
    device.symlink_to("/dev/zero")
    for path, what in ((pipe, "named pipe"), (device, "character device")):
        with pytest.raises(ValueError, match=f"{what}.*expected a data file"):
            files.open_vectors(path)


def test_a_read_only_output_file_is_refused_before_any_work(tmp_path: Path) -> None:
    """An existing output this process may not write (mode 0o444, folder writable): refused
    by the checks before any work, naming it read-only; it failed at the very end, naming
    the temporary ("Permission denied: .o.safetensors.viva-glyph-....tmp")."""
    from conftest import unprivileged

    prefix = unprivileged()
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)
    np.save(work / "x.npy", np.random.default_rng(0).standard_normal((64, 4)))
    out = work / "o.safetensors"
    out.write_bytes(b"keep me")
    out.chmod(0o444)
    r = subprocess.run(
        [*prefix, sys.executable, "-m", "viva_glyph", "fit", "-q", str(work / "x.npy"),
         "-o", str(out), "--stages", "1", "--codebook-size", "4"],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "read-only" in r.stderr and ".tmp" not in r.stderr, r.stderr
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in work.iterdir()) == ["o.safetensors", "x.npy"]
