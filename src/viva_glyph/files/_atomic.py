"""Atomic outputs: every file or store this library writes appears whole or not at all.

A writer works on a temporary file (or folder, for a zarr store) beside the
destination, named ``.<name>.viva-glyph-<host>-<pid>-<start>-<random><suffix>.tmp``;
when complete it is fsynced, renamed over the destination with :func:`os.replace`
and the folder is fsynced. On an exception, on Ctrl-C and (under
:func:`removing_temps_on_signals`, which the command line installs) on SIGTERM or
SIGHUP the temporary is removed. A temporary left by a process that was killed
outright (SIGKILL, power loss) is removed by the next writer into that folder:
the name says which host and process owned it, and it is removed only when that
process is gone. Nobody else's ``*.tmp`` files match the pattern.

Replacing a file keeps its permission bits; a new file gets ``0o666 & ~umask``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = [
    "Terminated",
    "atomic_folder",
    "atomic_output",
    "check_distinct",
    "check_output",
    "fsync_folder",
    "fsync_tree",
    "remove_stale_temps",
    "removing_temps_on_signals",
    "same_file",
]

PathLike = str | os.PathLike[str]
_TAG = "viva-glyph"
_TEMP = re.compile(rf"^\..+\.{_TAG}-([0-9a-f]{{8}})-(\d+)-(\d+)-[0-9a-f]{{8}}.*\.tmp$")
_LIVE: set[Path] = set()  # temporaries of this process, removed on SIGTERM / SIGHUP
_LIVE_LOCK = threading.RLock()  # re-entered by a signal handler in the main thread


_SIGNALLED: list[int] = []  # the signal that ended this run's work, once one came


def terminated_by() -> int | None:
    """The signal (SIGTERM or SIGHUP) that arrived in the current
    :func:`removing_temps_on_signals` block, or None.

    The handler's :class:`Terminated` can surface inside library code that
    wraps it in another exception or swallows it; callers check this instead
    of trusting the exception type, and :func:`atomic_output` refuses to
    publish an output once it is set.
    """
    return _SIGNALLED[0] if _SIGNALLED else None


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived while :func:`removing_temps_on_signals` was active."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def _host() -> str:
    """Tag of this host and process-id namespace: only there do our pids mean anything."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    text = f"{socket.gethostname()}|{namespace}"
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:8]


def _start_time(pid: int) -> int:
    """Start time of a process in clock ticks since boot (0 where /proc is absent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


def _owner() -> str:
    pid = os.getpid()
    return f"{_host()}-{pid}-{_start_time(pid)}"


def _alive(pid: int, start: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return start == 0 or _start_time(pid) in (0, start)


def remove_stale_temps(folder: PathLike) -> list[Path]:
    """Remove this library's temporaries in ``folder`` whose owner process has died.

    Only names of the pattern this module makes, created on this host, by a
    process that no longer runs (pid gone, or reused by a process that started
    later), are touched.

    Returns
    -------
    list of Path
        What was removed.
    """
    removed: list[Path] = []
    host = _host()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or match[1] != host or _alive(int(match[2]), int(match[3])):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_path(path: PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: PathLike) -> None:
    """fsync a folder so that a rename in it is durable (no-op where unsupported)."""
    if os.name == "posix":  # folders cannot be opened for fsync on Windows
        _fsync_path(folder)


def fsync_tree(path: PathLike) -> None:
    """fsync a file, or every file and folder below (and including) a folder."""
    root = Path(path)
    for p in [*root.rglob("*"), root] if root.is_dir() else [root]:
        if p.is_dir():
            fsync_folder(p)
        else:
            _fsync_path(p)


def _is_zarr_store(path: Path) -> bool:
    return any((path / n).is_file() for n in ("zarr.json", ".zarray", ".zgroup"))


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file: equal once resolved (links, ``./x``, ``..``), or
    :func:`os.path.samefile` (hard links, bind mounts) where both exist."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL character
        pass
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # one of them is missing
        return False


def _inside(path: PathLike, folder: PathLike) -> bool:
    """Whether ``path`` lies below ``folder``, a folder the readers take as one input (a zarr
    store, a folder of Parquet files)."""
    p = Path(folder)
    try:
        if not p.is_dir() or not (_is_zarr_store(p) or any(p.glob("*.parquet"))):
            return False
        return p.resolve() in Path(path).resolve().parents
    except (OSError, RuntimeError, ValueError):
        return False


def check_distinct(
    path: PathLike, inputs: Mapping[str, PathLike | None], what: str = "output"
) -> None:
    """Raise ValueError when ``path`` (written by a command, called ``what``) is one of
    ``inputs`` (:func:`same_file`) or lies inside a folder among them that is read as one
    input (a zarr store, a folder of Parquet files); None inputs are skipped."""
    for name, source in inputs.items():
        if source is None:
            continue
        if same_file(path, source):
            raise ValueError(
                f"{what} {os.fspath(path)} is the same file as the {name} {os.fspath(source)}: "
                "writing it would replace that input; give another path"
            )
        if _inside(path, source):
            raise ValueError(
                f"{what} {os.fspath(path)} is inside the {name} folder {os.fspath(source)}, "
                "which is read as input; give a path outside it"
            )


def check_output(
    path: PathLike,
    suffixes: Sequence[str] = (),
    inputs: Mapping[str, PathLike | None] | None = None,
) -> Path:
    """Check, before any work, that ``path`` can take an output.

    Parameters
    ----------
    path : str or PathLike
        A file, or for a ``.zarr`` suffix a store folder.
    suffixes : sequence of str
        Allowed suffixes (lower case, with the dot); empty accepts any.
    inputs : mapping of str to path, optional
        What the command reads, by the name to call it in the error (``"data"``,
        ``"model"``; None values are skipped): the output may be none of them
        (:func:`same_file`) nor lie inside a folder among them.

    Raises
    ------
    ValueError
        For another suffix, an output that is one of ``inputs``, an existing
        folder, device, pipe or socket in the place of a file, an existing file
        this process may not write (read-only), an existing file or non-zarr
        folder in the place of a store, a folder this process may not write in.
    FileNotFoundError
        When the destination's folder does not exist.
    """
    target = Path(path)
    if "\0" in str(target):
        raise ValueError(f"output {str(target)!r} holds a NUL character")
    check_distinct(target, inputs or {})
    suffix = target.suffix.lower()
    if suffixes and suffix not in suffixes:
        raise ValueError(f"output {target} must end in {' or '.join(suffixes)}")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {target.parent}")
    if not os.access(target.parent, os.W_OK | os.X_OK):  # the temporary is made there
        raise ValueError(f"output folder {target.parent} is not writable: cannot write {target}")
    if suffix == ".zarr":
        if target.exists() and not (target.is_dir() and _is_zarr_store(target)):
            raise ValueError(f"output {target} exists and is not a zarr store; not replacing it")
    elif target.is_dir():
        raise ValueError(f"output {target} is a folder; give a file name")
    elif target.exists() and not target.is_file():
        # the rename would put a regular file in the place of a pipe or a device
        raise ValueError(
            f"output {target} exists and is not a regular file (a device, pipe or socket); "
            "not replacing it: give a file name"
        )
    elif target.is_file() and not os.access(target, os.W_OK):
        # its mode marks it as not to be written by this process: the rename would replace it
        raise ValueError(f"output {target} is read-only here; not replacing it")
    return target


#: Longest file name (bytes) of common file systems: a temporary's copy of the
#: destination's name is cut to fit (a 250-byte name made a 295-byte temporary).
NAME_MAX = 255


def _temp_name(target: Path, suffix: str) -> Path:
    tail = f".{_TAG}-{_owner()}-{secrets.token_hex(4)}{suffix}.tmp"
    head = target.name
    while len(os.fsencode(f".{head}{tail}")) > NAME_MAX and len(head) > 1:
        head = head[:-1]
    return target.with_name(f".{head}{tail}")


def _forget(tmp: Path) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(tmp)


@contextlib.contextmanager
def atomic_output(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    The caller writes the whole file to the yielded path. When the block ends
    without an exception the file is fsynced and renamed over ``path`` with
    :func:`os.replace` (atomic on POSIX and Windows), then the folder is
    fsynced; on any exception the temporary file is removed and ``path`` is
    left as it was. Stale temporaries of dead processes in the folder are
    removed first.

    Parameters
    ----------
    path : str or PathLike
        Final destination; its folder must exist and it must not be a folder.
    suffix : str
        Suffix for the temporary name (some writers choose a format by it).
    """
    target = Path(path)
    check_output(target)
    remove_stale_temps(target.parent)
    mode = target.stat().st_mode & 0o7777 if target.is_file() else 0o666 & ~_umask()
    tmp = _temp_name(target, suffix)
    with _LIVE_LOCK:
        _LIVE.add(tmp)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # after writing: the writer must be able to open it
        _refuse_if_signalled()
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    finally:
        _forget(tmp)
    fsync_folder(target.parent)


@contextlib.contextmanager
def atomic_folder(path: PathLike) -> Iterator[Path]:
    """Like :func:`atomic_output` for a folder (a zarr store).

    Yields the path of a temporary folder to fill (not yet created); on success
    every file in it is fsynced and it replaces ``path`` (an existing store is
    moved aside first, then removed; a symbolic link there is replaced, as
    :func:`atomic_output` replaces one, and what it points to is left alone).
    """
    target = check_output(path)
    remove_stale_temps(target.parent)
    tmp = _temp_name(target, "")
    with _LIVE_LOCK:
        _LIVE.add(tmp)
    try:
        yield tmp
        fsync_tree(tmp)
        _refuse_if_signalled()
        if target.is_symlink() or target.is_dir():  # a folder cannot be renamed over a link
            trash = _temp_name(target, ".old")
            os.replace(target, trash)
            os.replace(tmp, target)
            if trash.is_symlink():
                trash.unlink()
            else:
                shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        _forget(tmp)
    fsync_folder(target.parent)


def _remove_live() -> None:
    with _LIVE_LOCK:
        paths = list(_LIVE)
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if not _SIGNALLED:
        _SIGNALLED.append(signum)
    _remove_live()
    raise Terminated(signum)


def _refuse_if_signalled() -> None:
    signum = terminated_by()
    if signum is not None:
        raise Terminated(signum)


@contextlib.contextmanager
def removing_temps_on_signals() -> Iterator[None]:
    """Inside this block SIGTERM and SIGHUP remove the temporaries and raise :class:`Terminated`.

    Outside the main thread (where handlers cannot be set) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _SIGNALLED.clear()
    names = [s for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s)]
    saved: list[tuple[int, Any]] = []
    for name in names:
        signum = getattr(signal, name)
        saved.append((signum, signal.signal(signum, _on_signal)))
    try:
        yield
    finally:
        for signum, handler in saved:
            signal.signal(signum, handler)
