"""Process runner: listeners (TLS), admin endpoints, workers, signals.

``serve(settings)`` runs until SIGTERM/SIGINT: it stops accepting, drains
in-flight requests up to ``shutdown_timeout``, then exits.  SIGHUP reloads
the TLS certificate for new connections without dropping open ones.
``--workers N`` forks N processes sharing the port with SO_REUSEPORT; key
clients and HSM sessions are created lazily, i.e. after the fork.  The admin
port is shared the same way, and its ``/metrics`` adds up every worker's
metrics (prometheus-client multiprocess mode, in a fresh directory per run
that the parent removes at exit; see ``s3proxy.observability``).

With TLS, ``s3proxy_tls_cert_expiry_timestamp_seconds`` is the serving
certificate's notAfter, and ``tls.cert_expires_soon`` is logged (a warning)
when it is less than 14 days away: at start, on every reload and once a day.

What the backend can do (``backend.profile``; with ``auto``, a probe of
``backend.probe_bucket``) is found in the background after the listeners are up and
re-probed every ``backend.probe_interval`` (``s3proxy.backend.capabilities``); ``/readyz``
shows its state under ``checks.capabilities`` without ever failing on it.

Modules: :mod:`~s3proxy.server.connections` (``make_runner``: the aiohttp runner with its
connection limit and header timeout, used by the tests and tools too) and
:mod:`~s3proxy.server.admin` (the admin listener, ``apply_capabilities``); this module
runs them.  Below ``cli`` in the import graph, above ``app``: it imports the app and what
the app is built on; the tools beside it (doctor, migrate, export, ...) may import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from prometheus_client import multiprocess as prometheus_multiprocess

from s3proxy.app import build_app
from s3proxy.backend.capabilities import CapabilityWatch
from s3proxy.config import Settings
from s3proxy.observability import (
    MULTIPROC_ENV,
    Metrics,
    configure_logging,
    disable_multiprocess_metrics,
    enable_multiprocess_metrics,
    get_logger,
)
from s3proxy.server.admin import KEY_CHECK_TTL, apply_capabilities, build_admin_app
from s3proxy.server.connections import ProxyRunner, make_runner
from s3proxy.state import STATE
from s3proxy.tlsutil import cert_not_after

__all__ = [
    "KEY_CHECK_TTL", "CertExpiry", "ProxyRunner", "apply_capabilities", "build_admin_app", "make_runner",
    "make_ssl_context", "run_until_stopped", "serve", "tune_malloc",
]

log = get_logger("s3proxy.server")


def make_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    tls = settings.tls
    if not tls.cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!MD5:!DSS")
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(str(tls.cert), str(tls.key) if tls.key else None)
    if tls.client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(tls.client_ca))
    return ctx


CERT_WARN_DAYS = 14
CERT_CHECK_INTERVAL = 86400.0  # seconds between reminders while the certificate stays the same


class CertExpiry:
    """The serving certificate's expiry: a gauge, and a warning when it is near.

    ``load()`` reads the certificate file (at start and after each reload),
    sets ``s3proxy_tls_cert_expiry_timestamp_seconds`` and warns if needed;
    ``watch()`` repeats the warning every ``interval`` seconds for the
    certificate being served (it does not re-read the file: a renewed file
    is served only after SIGHUP, and until then the old one expires).
    """

    def __init__(self, path: str | os.PathLike[str], metrics: Metrics, *, warn_days: float = CERT_WARN_DAYS,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.metrics = metrics
        self.warn_days = warn_days
        self.clock = clock
        self.not_after: dt.datetime | None = None

    def load(self) -> dt.datetime | None:
        try:
            not_after = cert_not_after(self.path)
        except (OSError, ValueError) as e:
            log.error("tls.cert_unreadable", cert=str(self.path), error=str(e))
            return None
        self.not_after = not_after
        self.metrics.set_tls_cert_expiry(not_after.timestamp())
        self.check()
        return not_after

    def check(self) -> bool:
        """Warn if the certificate expires within ``warn_days`` (or has expired); True if it warned."""
        if self.not_after is None:
            return False
        left = self.not_after.timestamp() - self.clock()
        if left >= self.warn_days * 86400:
            return False
        log.warning("tls.cert_expires_soon", cert=str(self.path), not_after=self.not_after.isoformat(),
                    days_left=round(left / 86400, 2), expired=left <= 0)
        return True

    async def watch(self, interval: float = CERT_CHECK_INTERVAL) -> None:
        while True:
            await asyncio.sleep(interval)
            self.check()


PROBE_CLEANUP_WAIT = 20.0  # seconds a stopping server waits for a capability probe to clean up


async def _listen(settings: Settings, runner: web.AppRunner, ssl_ctx: ssl.SSLContext | None, reuse_port: bool) -> int:
    """Start the proxy's listener; the port it is bound to (port 0: the one the system chose)."""
    host, port = settings.listen_addr
    site = web.TCPSite(runner, host, port, ssl_context=ssl_ctx, reuse_port=reuse_port or None, backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()  # closes the backend session: no "Unclosed client session" after a bind error
        raise
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        return int(server.sockets[0].getsockname()[1])
    return port


async def _listen_admin(settings: Settings, app: web.Application, runner: web.AppRunner,
                        reuse_port: bool) -> web.AppRunner | None:
    """Start the admin listener, if ``admin_addr`` is set (on failure both runners are cleaned up)."""
    if not settings.admin_addr:
        return None
    admin_runner = web.AppRunner(build_admin_app(app), handle_signals=False, access_log=None)
    await admin_runner.setup()
    ahost, aport = settings.admin_addr
    try:
        await web.TCPSite(admin_runner, ahost, aport, reuse_port=reuse_port or None).start()
    except BaseException:
        await admin_runner.cleanup()
        await runner.cleanup()
        raise
    return admin_runner


def _tls_reloader(settings: Settings, ssl_ctx: ssl.SSLContext | None,
                  cert_expiry: CertExpiry | None) -> Callable[[], None]:
    """What SIGHUP does: load the certificate again for new connections (open ones keep theirs)."""

    def reload_tls() -> None:
        if ssl_ctx is None:
            return
        try:
            ssl_ctx.load_cert_chain(str(settings.tls.cert), str(settings.tls.key) if settings.tls.key else None)
        except (OSError, ssl.SSLError) as e:
            log.error("tls.reload_failed", error=str(e))
            return
        not_after = cert_expiry.load() if cert_expiry is not None else None
        log.info("tls.reloaded", not_after=not_after.isoformat() if not_after else None)

    return reload_tls


def _handle_signals(stop: asyncio.Event, reload_tls: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, reload_tls)


async def _drain(settings: Settings, app: web.Application, runner: web.AppRunner, admin_runner: web.AppRunner | None,
                 background: list[asyncio.Task[None]], probe: asyncio.Task[None]) -> None:
    """Stop: background tasks, then the proxy listener (draining), then the admin listener."""
    for task in background:
        task.cancel()
    # A probe under way deletes its scratch objects before the backend session closes.
    probe.cancel()
    await asyncio.wait({probe}, timeout=PROBE_CLEANUP_WAIT)
    app[STATE].draining = True
    log.info("server.draining", deadline_s=settings.shutdown_timeout)
    # Stop accepting and wait for in-flight handlers (up to shutdown_timeout); the
    # admin listener stays up meanwhile so /readyz reports the drain.
    await runner.cleanup()
    # A finished handler's last bytes may still sit in its transport's buffer (a slow
    # client); transport.close() flushes them only while the loop runs.  Wait for the
    # connections to close (bounded) so the process does not exit with a body cut short.
    loop = asyncio.get_running_loop()
    limiter = app[STATE].limiter
    deadline = loop.time() + settings.shutdown_timeout
    while limiter.connections > 0 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    if admin_runner is not None:
        await admin_runner.cleanup()
    log.info("server.stopped")


async def run_until_stopped(
    settings: Settings, *, reuse_port: bool = False, started: Callable[[int], Awaitable[None] | None] | None = None
) -> None:
    app = build_app(settings)
    runner = make_runner(app, settings)
    await runner.setup()
    ssl_ctx = make_ssl_context(settings)
    bound = await _listen(settings, runner, ssl_ctx, reuse_port)
    admin_runner = await _listen_admin(settings, app, runner, reuse_port)
    log.info("server.started", listen=f"{settings.listen_addr[0]}:{bound}", tls=ssl_ctx is not None,
             pid=os.getpid(), backend=settings.backend.url, key_backend=settings.keys.backend)
    cert_expiry: CertExpiry | None = None
    background: list[asyncio.Task[None]] = []
    if ssl_ctx is not None and settings.tls.cert:
        cert_expiry = CertExpiry(settings.tls.cert, app[STATE].metrics)
        cert_expiry.load()
        background.append(asyncio.create_task(cert_expiry.watch()))
    # What the backend can do: a named profile at once, a probe in the background (never
    # holding up start), re-probed every backend.probe_interval.
    watch = CapabilityWatch(app[STATE], log, apply_capabilities)
    setattr(app[STATE], "capability_watch", watch)  # noqa: B010 - read by /readyz
    probe = asyncio.create_task(watch.run())
    if started is not None:
        res = started(bound)
        if asyncio.iscoroutine(res):
            await res
    stop = asyncio.Event()
    _handle_signals(stop, _tls_reloader(settings, ssl_ctx, cert_expiry))
    try:
        await stop.wait()
    finally:
        await _drain(settings, app, runner, admin_runner, background, probe)


def tune_malloc() -> None:
    """Keep MiB-sized body buffers on the heap instead of fresh mmap()s.

    Every streamed piece is a new ~1 MiB buffer; glibc serves those with
    mmap/munmap by default, which costs a page fault per 4 KiB touched (the
    benchmark measured ~500k minor faults and 2x the CPU per GiB on GET).
    Raising the mmap and trim thresholds reuses heap memory instead.  Linux
    glibc only; ``S3PROXY_MALLOC_TUNE=0`` turns it off.
    """
    if os.environ.get("S3PROXY_MALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 32 << 20)
        libc.mallopt(m_top_pad, 4 << 20)
    except (OSError, AttributeError):  # not glibc
        pass


def _install_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - optional
        pass


def _worker(settings: Settings) -> None:
    tune_malloc()
    configure_logging(settings.log.level, settings.log.format)
    _install_uvloop()
    asyncio.run(run_until_stopped(settings, reuse_port=True))


def _metrics_dir() -> str:
    """A fresh directory for this run's multiprocess metrics.

    Under ``$PROMETHEUS_MULTIPROC_DIR`` if set (e.g. a tmpfs), else the
    temporary directory (``$TMPDIR``, /tmp).  Never reused: files of an earlier
    run would be counted again.
    """
    return tempfile.mkdtemp(prefix="s3proxy-metrics-", dir=os.environ.get(MULTIPROC_ENV) or None)


def serve(settings: Settings, workers: int | None = None) -> None:
    n = workers or settings.workers
    tune_malloc()
    configure_logging(settings.log.level, settings.log.format)
    if n <= 1:
        disable_multiprocess_metrics()  # one process: its registry as is, whatever the environment says
        _install_uvloop()
        asyncio.run(run_until_stopped(settings))
        return
    try:
        metrics_dir = _metrics_dir()
    except OSError as e:
        log.error("metrics.dir_failed", error=str(e),
                  hint=f"--workers needs a writable directory: set {MULTIPROC_ENV} or TMPDIR")
        raise SystemExit(1) from None
    enable_multiprocess_metrics(metrics_dir)
    log.info("server.workers", workers=n, metrics_dir=metrics_dir, pid=os.getpid())
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(settings,), daemon=False) for _ in range(n)]
    try:
        for p in procs:
            p.start()

        def forward(signum: int, _frame: object) -> None:
            for p in procs:
                if p.is_alive() and p.pid:
                    os.kill(p.pid, signum)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, forward)
        alive = [p for p in procs if p.pid]
        while alive:
            ended = multiprocessing.connection.wait([p.sentinel for p in alive])
            for p in [p for p in alive if p.sentinel in ended]:
                p.join()
                alive.remove(p)
                # Its counters stay in the sum; its live* gauges (in flight, cached keys) go.
                prometheus_multiprocess.mark_process_dead(p.pid, metrics_dir)  # type: ignore[no-untyped-call]
                if p.exitcode:
                    log.warning("worker.exited", pid=p.pid, exitcode=p.exitcode, workers_left=len(alive))
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
