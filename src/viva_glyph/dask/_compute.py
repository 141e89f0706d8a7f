# mypy: disable-error-code="no-untyped-call,no-any-return"
# (dask and distributed ship without complete type hints.)
"""Running graphs: the current dask.distributed client, progress, and the CLI entry points."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from viva_glyph.checks import optional_import, positive_int

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["compute", "connect", "current_client", "shared", "worker_environ"]

logger = logging.getLogger(__name__)


def current_client() -> Client | None:
    """The default dask.distributed client, or None (then dask's local scheduler runs graphs)."""
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is part of the dask extra
        return None
    try:
        return default_client()
    except ValueError:
        return None


#: Values of at least this many bytes (``dask.sizeof``) go to the workers by scatter when a
#: dask.distributed client is current, not inside the graph (dask warns of graphs over 10 MB).
SCATTER_BYTES = 4 << 20


def shared(value: Any) -> Any:
    """``value`` as one key that graphs depend on, sent to each worker once.

    A small value (or any value without a dask.distributed client) is a pure
    :func:`dask.delayed` value inside the graph, which any dask scheduler runs.
    A value of :data:`SCATTER_BYTES` or more is scattered to every worker of the
    current client (``broadcast``) outside any graph: an encoder of 24 MiB in the
    graph made dask warn "Sending large graph" and travel with every graph. Graphs
    holding a scattered value are computed on that client.
    """
    from dask.delayed import delayed
    from dask.sizeof import sizeof

    _register_sizes()
    client = current_client()
    if client is None or sizeof(value) < SCATTER_BYTES:
        return delayed(value, pure=True, traverse=False)
    # in a list: scatter sends the items of a tuple or list one by one; a new key each
    # time (a hashed key scattered again while its last copy was being released hung)
    (future,) = client.scatter([value], broadcast=True, hash=False)
    return delayed(future)


def _register_sizes() -> None:
    """Tell ``dask.sizeof`` what codebooks and encoders weigh (what their pickles hold)."""
    from dask.sizeof import sizeof

    from viva_glyph.core import Codebook, RvqEncoder

    sizeof.register(Codebook)(lambda cb: int(cb.vectors.nbytes) + 256)
    sizeof.register(RvqEncoder)(lambda enc: sum(sizeof(cb) for cb in enc.codebooks) + 1024)


def compute(items: Sequence[Any], *, progress: bool = False, desc: str = "tasks") -> list[Any]:
    """Compute dask collections and return their values in order.

    With a dask.distributed client the items run as futures and, when
    ``progress`` is true, a tqdm bar counts them as they finish; without one
    they run on dask's default scheduler.

    Parameters
    ----------
    items : sequence of dask collections (Delayed, Array, ...)
    progress : bool
    desc : str
        Label of the progress bar.
    """
    from dask.base import compute as dask_compute

    client = current_client()
    if client is None:
        return list(dask_compute(*items))
    futures = client.compute(list(items))
    if progress:
        from distributed import as_completed

        tqdm = optional_import("tqdm.auto", "a progress bar").tqdm

        with tqdm(total=len(futures), desc=desc, unit="task") as bar:
            for _ in as_completed(futures):
                bar.update(1)
    values: list[Any] = client.gather(futures)
    return values


#: Environment of worker processes: glibc malloc settings and one viva-glyph
#: thread per worker thread (see :func:`worker_environ`).
WORKER_ENVIRON = {
    "MALLOC_MMAP_THRESHOLD_": 16 << 20,
    "MALLOC_TRIM_THRESHOLD_": 64 << 20,
    "VIVA_GLYPH_NUM_THREADS": 1,
}


@contextmanager
def worker_environ() -> Iterator[None]:
    """Start worker processes inside this block with malloc settings for block work.

    dask.distributed's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``,
    which also switches off glibc's adaptive mmap threshold: every temporary
    array above 128 KiB is then a fresh ``mmap``, page-faulted in again, and
    freed heap is returned to the system at once. The encoder's per-chunk
    temporaries then cost a page fault per page on every chunk in a worker,
    which a plain process does not pay. Inside this block, new nannies give their workers
    :data:`WORKER_ENVIRON` instead (16 MiB mmap threshold, 64 MiB trim
    threshold): a worker keeps at most that much freed memory for reuse. They
    also get ``VIVA_GLYPH_NUM_THREADS=1``: dask runs one task per worker thread
    and already holds BLAS and OpenMP to one thread there, so beam search and
    k-means run no thread pool of their own inside a task.

    The nanny reads these variables from the dask config and, first, from this
    process's environment (which it also writes), so both are set here and
    restored on exit.
    """
    import dask

    key = "distributed.nanny.pre-spawn-environ"
    environ = dict(dask.config.get(key, default={}) or {})
    environ.update(WORKER_ENVIRON)
    saved = {k: os.environ.get(k) for k in WORKER_ENVIRON}
    os.environ.update({k: str(v) for k, v in WORKER_ENVIRON.items()})
    try:
        with dask.config.set({key: environ}):
            yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def connect_timeout(timeout: float | None = None) -> float:
    """Seconds a scheduler has to answer: ``timeout``, else dask's configuration.

    The default is dask's ``distributed.comm.timeouts.connect`` (30 s unless
    configured, e.g. ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=60s``).
    """
    if timeout is None:
        import dask
        from dask.utils import parse_timedelta

        value = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")
        return float(value)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, got {timeout!r}")
    if not 0 < timeout < float("inf"):
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    return float(timeout)


def _handshake(address: str, timeout: float) -> None:
    """Open one comm to ``address`` and finish dask's handshake, within ``timeout`` seconds.

    dask's own ``connect`` bounds the TCP connection but not the handshake that
    follows, so a server that accepts and never answers would hang it: the
    whole exchange runs here under one deadline, on an event loop of its own
    (in a daemon thread, so it also works where the caller runs a loop).
    Raises ValueError for a malformed address, ConnectionError otherwise.
    """
    from distributed.comm.addressing import parse_address
    from distributed.comm.core import connect as dask_connect

    example = "(expected tcp://HOST:PORT, e.g. tcp://head:8786)"
    scheme = address.partition("://")[0] if "://" in address else "tcp"
    if scheme == "inproc" and address.count("/") < 4:
        raise ValueError(
            f"{address!r} is not a dask scheduler address {example}: an inproc:// scheduler "
            "is reachable only from the process that runs it"
        )
    try:
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            from distributed.comm.addressing import parse_host_port

            host, port = parse_host_port(location)
    except ValueError as exc:
        raise ValueError(f"{address!r} is not a dask scheduler address {example}: {exc}") from None

    if scheme in ("tcp", "tls"):  # a refused or unreachable port is told apart from a mute server
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            why = f" ({exc.strerror.lower()})" if exc.strerror else f" ({exc})"
            raise ConnectionError(
                f"could not connect to a dask scheduler at {address} within {timeout:g} s{why}"
            ) from None

    from distributed.security import Security

    args = Security().get_connection_args("client")  # TLS settings from dask's config, as Client

    async def exchange() -> None:
        comm = await asyncio.wait_for(dask_connect(address, timeout=timeout, **args), timeout)
        await comm.close()

    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            asyncio.run(exchange())
            outcome.append(None)
        except BaseException as exc:  # reported by the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=run, name="viva-glyph-handshake", daemon=True)
    thread.start()
    thread.join(timeout + 5.0)
    failure = outcome[0] if outcome else TimeoutError()
    if failure is None:
        return
    if isinstance(failure, asyncio.TimeoutError):
        raise ConnectionError(
            f"no answer from a dask scheduler at {address} within {timeout:g} s "
            "(a server accepted the connection but did not answer; raise the limit with "
            "--connect-timeout or DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT)"
        ) from None
    if isinstance(failure, OSError) and "Timed out trying to connect" in str(failure):
        why, cause = "", failure.__cause__
        while cause is not None and not why:  # the system's reason, e.g. connection refused
            if isinstance(cause, OSError) and cause.strerror:
                why = f" ({cause.strerror.lower()})"
            cause = cause.__cause__ or cause.__context__
        raise ConnectionError(
            f"could not connect to a dask scheduler at {address} within {timeout:g} s{why}"
        ) from None
    if isinstance(failure, ValueError):
        raise ValueError(
            f"{address!r} is not a dask scheduler address {example}: {failure}"
        ) from None
    raise ConnectionError(
        f"{address} did not answer as a dask scheduler: its reply is not dask's protocol "
        "(is it the scheduler's address and port, 8786 by default?)"
    ) from None


@contextmanager
def _quiet(quiet: bool) -> Iterator[None]:
    """Silence dask.distributed's loggers in this process inside the block, if ``quiet``."""
    if not quiet:
        yield
        return
    log = logging.getLogger("distributed")
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)


@contextmanager
def connect(
    scheduler: str | None = None,
    local_cluster: int | None = None,
    *,
    timeout: float | None = None,
    quiet: bool = False,
) -> Iterator[Client | None]:
    """Client for a running scheduler, or for a fresh LocalCluster; closed on exit.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running dask.distributed scheduler (``tcp://host:8786``).
    local_cluster : int, optional
        Start a LocalCluster of that many single-threaded worker processes
        (under :func:`worker_environ`).
    timeout : float, optional
        Seconds the scheduler has to accept the connection and answer dask's
        handshake; default :func:`connect_timeout` (dask's
        ``distributed.comm.timeouts.connect``, 30 s).
    quiet : bool
        Silence dask.distributed's log messages (here and in LocalCluster
        workers), so an error is reported once, by the caller.

    Yields
    ------
    Client or None
        None when neither is given: dask's local threaded scheduler runs.

    Raises
    ------
    ValueError
        For an address that is not one (``inproc://x``, ``foo``).
    ConnectionError
        When nothing answers at the address within ``timeout``, or something
        that does not speak dask's protocol (a web server) does.
    """
    if scheduler is not None and local_cluster is not None:
        raise ValueError("give either scheduler or local_cluster, not both")
    if scheduler is None and local_cluster is None:
        yield None
        return
    from viva_glyph.checks import optional_import

    distributed = optional_import("distributed", "a dask cluster (scheduler, local_cluster)")
    Client, LocalCluster = distributed.Client, distributed.LocalCluster
    seconds = connect_timeout(timeout)
    if scheduler is not None:
        if not isinstance(scheduler, str) or not scheduler:
            raise TypeError(f"scheduler must be an address string, got {scheduler!r}")
        with _quiet(quiet):
            _handshake(scheduler, seconds)
            with Client(scheduler, timeout=seconds) as client:
                logger.info("connected to %s", scheduler)
                yield client
        return
    workers = positive_int(local_cluster, "local_cluster")
    with (
        _quiet(quiet),
        worker_environ(),
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL + 1 if quiet else logging.WARN,
        ) as cluster,
        Client(cluster, timeout=seconds) as client,
    ):
        logger.info("started a LocalCluster of %d workers", workers)
        yield client
