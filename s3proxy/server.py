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

``make_runner`` builds the aiohttp runner (used by the tests too, so they run
what ships): request bodies are never decompressed (S3 stores a body with
``Content-Encoding: gzip`` byte for byte), idle keep-alive connections close
after ``limits.keepalive_timeout``, a request head must arrive within
``limits.header_timeout`` of its first byte (slowloris), and at most
``limits.max_connections`` client connections are open; more are answered
``503 SlowDown`` and closed.
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
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import multiprocess as prometheus_multiprocess

from s3proxy.app import build_app, new_request_id
from s3proxy.aws.errors import error_xml
from s3proxy.backend.capabilities import CAPABILITIES, Capabilities, CapabilityWatch
from s3proxy.config import Settings
from s3proxy.observability import (
    MULTIPROC_ENV,
    Metrics,
    configure_logging,
    disable_multiprocess_metrics,
    enable_multiprocess_metrics,
    exposition,
    get_logger,
)
from s3proxy.state import SLOW_DOWN_MESSAGE, STATE, Limiter
from s3proxy.tlsutil import cert_not_after

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


KEY_CHECK_TTL = 60.0  # seconds a successful key-service readiness check is reused
PROBE_CLEANUP_WAIT = 20.0  # seconds a stopping server waits for a capability probe to clean up


def apply_capabilities(state: Any, caps: Capabilities) -> None:
    """Hand what the backend can do to what uses it (``state``: the app's ``AppState``).

    The listing's "-N ETags" knowledge is set only under ``multipart_etags: auto``; when the
    probe and what the listing learned disagree, "no" wins (HEADs cost time, never
    exactness).  ``AppState.backend_capabilities`` is there for the copy path and ``/readyz``.
    """
    from s3proxy.http import memo as etag_memo

    setattr(state, "backend_capabilities", caps)  # noqa: B010 - AppState is a plain dataclass
    state.metrics.set_backend_capabilities({n: caps.value(n) for n in CAPABILITIES})
    minus_n = caps.value("multipart_etags")
    if state.settings.backend.multipart_etags == "auto" and minus_n != "unknown":
        memo = getattr(state, "listing_memo", None)
        if not isinstance(memo, etag_memo.EtagMemo):
            memo = etag_memo.EtagMemo()
            setattr(state, "listing_memo", memo)  # noqa: B010
        memo.minus_n = (minus_n == "yes") and memo.minus_n is not False


def build_admin_app(proxy: web.Application) -> web.Application:
    admin = web.Application()
    state = proxy[STATE]

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=exposition(state.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    key_check = {"ok_at": -KEY_CHECK_TTL}

    async def readyz(_: web.Request) -> web.Response:
        checks: dict[str, str] = {}
        ok = not state.draining
        try:
            resp = await asyncio.wait_for(state.backend.request("GET", None), 5)
            resp.release()
            checks["backend"] = "ok" if resp.status < 500 else f"status {resp.status}"
            ok = ok and resp.status < 500
        except Exception as e:  # noqa: BLE001 - any failure means not ready
            checks["backend"] = type(e).__name__
            ok = False
        # A successful key-service check is reused for KEY_CHECK_TTL seconds: with AWS KMS each
        # check is a billed DescribeKey, and a 15 s probe period would be ~172,800 calls per pod
        # per month.  A failed check is never reused, so recovery shows at the next probe.
        now = asyncio.get_running_loop().time()
        if now - key_check["ok_at"] < KEY_CHECK_TTL:
            checks["keys"] = "ok"
        else:
            try:
                await asyncio.wait_for(state.keys.check(), 5)
                checks["keys"] = "ok"
                key_check["ok_at"] = now
            except Exception as e:  # noqa: BLE001
                checks["keys"] = type(e).__name__
                ok = False
        watch = getattr(state, "capability_watch", None)
        if watch is not None and watch.status is not None:
            checks["capabilities"] = watch.status  # informational: never makes the proxy unready
        if state.draining:
            checks["draining"] = "yes"
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

    admin.router.add_get("/metrics", metrics)
    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    return admin


def _refusal(retry_after: int) -> bytes:
    """The whole answer to a connection over ``limits.max_connections``."""
    rid = new_request_id()
    body = error_xml("SlowDown", SLOW_DOWN_MESSAGE, rid)
    return (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
        f"x-amz-request-id: {rid}\r\nRetry-After: {retry_after}\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


class _GuardedHandler(RequestHandler):
    """aiohttp's per-connection protocol plus a connection limit and a header timeout.

    The header timer starts with the first byte of a request head (not while a
    request body is still arriving) and is cancelled when the head is
    complete; when it fires the connection is closed.  Idle connections are
    aiohttp's ``keepalive_timeout`` business.
    """

    def __init__(self, manager: web.Server, *, limiter: Limiter, header_timeout: float, retry_after: int,
                 **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limiter = limiter
        self._header_timeout = header_timeout
        self._retry_after = retry_after
        self._admitted = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._last_payload: Any = None  # body stream of the newest parsed request

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._limiter.open_connection():
            self._force_close = True  # data_received() ignores whatever arrives
            with contextlib.suppress(Exception):
                transport.write(_refusal(self._retry_after))  # type: ignore[attr-defined]
            transport.close()
            return
        self._admitted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        if self._admitted:
            self._admitted = False
            self._limiter.close_connection()
        super().connection_lost(exc)
        # No more body bytes can come: end aiohttp's "lingering" read of an
        # unread body (after an early answer such as 503) now instead of after
        # lingering_time.  A handler still reading got its error from aiohttp above.
        payload, self._last_payload = self._last_payload, None
        if payload is not None and not payload.is_eof() and payload.exception() is None:
            payload.feed_eof()

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._force_close or self._close or self.transport is None:
            self._cancel_header_timer()
            return
        if self._request_count != before:  # one or more request heads complete
            self._cancel_header_timer()
            messages = getattr(self, "_messages", None)
            self._last_payload = messages[-1][1] if messages else None
        elif data and self._header_timer is None:
            payload = self._last_payload
            if payload is None or payload.is_eof():  # these bytes start a new request head
                self._header_timer = self._loop.call_later(self._header_timeout, self._on_header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        log.info("connection.header_timeout", timeout_s=self._header_timeout)
        self.force_close()


class _GuardedServer(web.Server):
    def __init__(self, server: web.Server, *, limiter: Limiter, header_timeout: float, retry_after: int) -> None:
        super().__init__(
            server.request_handler, request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation, loop=server._loop, **server._kwargs,
        )
        self._limiter = limiter
        self._header_timeout = header_timeout
        self._retry_after = retry_after

    def __call__(self) -> RequestHandler:
        return _GuardedHandler(
            self, loop=self._loop, limiter=self._limiter, header_timeout=self._header_timeout,
            retry_after=self._retry_after, **self._kwargs,
        )


class ProxyRunner(web.AppRunner):
    """An AppRunner whose connections are guarded (see ``_GuardedHandler``)."""

    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._settings = settings

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        limits = self._settings.limits
        return _GuardedServer(
            server, limiter=self._app[STATE].limiter, header_timeout=limits.header_timeout,
            retry_after=limits.retry_after,
        )


def make_runner(app: web.Application, settings: Settings, **overrides: Any) -> web.AppRunner:
    """The runner that serves the proxy application (server and tests alike)."""
    limits = settings.limits
    kwargs: dict[str, Any] = {
        "handle_signals": False,
        "access_log": None,
        "shutdown_timeout": settings.shutdown_timeout,
        "max_field_size": limits.max_header_size,
        "read_bufsize": 1 << 20,
        # S3 stores bodies byte for byte whatever their Content-Encoding.
        "auto_decompress": False,
        "keepalive_timeout": limits.keepalive_timeout,
    }
    kwargs.update(overrides)
    return ProxyRunner(app, settings, **kwargs)


async def run_until_stopped(
    settings: Settings, *, reuse_port: bool = False, started: Callable[[int], Awaitable[None] | None] | None = None
) -> None:
    app = build_app(settings)
    runner = make_runner(app, settings)
    await runner.setup()
    host, port = settings.listen_addr
    ssl_ctx = make_ssl_context(settings)
    site = web.TCPSite(runner, host, port, ssl_context=ssl_ctx, reuse_port=reuse_port or None, backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()  # closes the backend session: no "Unclosed client session" after a bind error
        raise
    bound = port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        bound = server.sockets[0].getsockname()[1]
    admin_runner = None
    if settings.admin_addr:
        admin_runner = web.AppRunner(build_admin_app(app), handle_signals=False, access_log=None)
        await admin_runner.setup()
        ahost, aport = settings.admin_addr
        try:
            await web.TCPSite(admin_runner, ahost, aport, reuse_port=reuse_port or None).start()
        except BaseException:
            await admin_runner.cleanup()
            await runner.cleanup()
            raise
    log.info("server.started", listen=f"{host}:{bound}", tls=ssl_ctx is not None, pid=os.getpid(),
             backend=settings.backend.url, key_backend=settings.keys.backend)
    cert_expiry: CertExpiry | None = None
    cert_watch: asyncio.Task[None] | None = None
    if ssl_ctx is not None and settings.tls.cert:
        cert_expiry = CertExpiry(settings.tls.cert, app[STATE].metrics)
        cert_expiry.load()
        cert_watch = asyncio.create_task(cert_expiry.watch())
    # What the backend can do: a named profile at once, a probe in the background (never
    # holding up start), re-probed every backend.probe_interval.
    watch = CapabilityWatch(app[STATE], log, apply_capabilities)
    setattr(app[STATE], "capability_watch", watch)  # noqa: B010 - read by /readyz
    watch_task = asyncio.create_task(watch.run())
    if started is not None:
        res = started(bound)
        if asyncio.iscoroutine(res):
            await res

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

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

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, reload_tls)
    try:
        await stop.wait()
    finally:
        if cert_watch is not None:
            cert_watch.cancel()
        # A probe under way deletes its scratch objects before the backend session closes.
        watch_task.cancel()
        await asyncio.wait({watch_task}, timeout=PROBE_CLEANUP_WAIT)
        app[STATE].draining = True
        log.info("server.draining", deadline_s=settings.shutdown_timeout)
        # Stop accepting and wait for in-flight handlers (up to shutdown_timeout); the
        # admin listener stays up meanwhile so /readyz reports the drain.
        await runner.cleanup()
        # A finished handler's last bytes may still sit in its transport's buffer (a slow
        # client); transport.close() flushes them only while the loop runs.  Wait for the
        # connections to close (bounded) so the process does not exit with a body cut short.
        limiter = app[STATE].limiter
        deadline = loop.time() + settings.shutdown_timeout
        while limiter.connections > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if admin_runner is not None:
            await admin_runner.cleanup()
        log.info("server.stopped")


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
