"""Process runner: listeners (TLS), admin endpoints, workers, signals.

``serve(settings)`` runs until SIGTERM/SIGINT: it stops accepting, drains
in-flight requests up to ``shutdown_timeout``, then exits.  SIGHUP reloads
the TLS certificate for new connections without dropping open ones.
``--workers N`` forks N processes sharing the port with SO_REUSEPORT; key
clients and HSM sessions are created lazily, i.e. after the fork.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from s3proxy.app import STATE, build_app
from s3proxy.config import Settings
from s3proxy.observability import configure_logging, get_logger

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


def build_admin_app(proxy: web.Application) -> web.Application:
    admin = web.Application()
    state = proxy[STATE]

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(state.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

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
        try:
            await asyncio.wait_for(state.keys.check(), 5)
            checks["keys"] = "ok"
        except Exception as e:  # noqa: BLE001
            checks["keys"] = type(e).__name__
            ok = False
        if state.draining:
            checks["draining"] = "yes"
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

    admin.router.add_get("/metrics", metrics)
    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    return admin


async def run_until_stopped(
    settings: Settings, *, reuse_port: bool = False, started: Callable[[int], Awaitable[None] | None] | None = None
) -> None:
    app = build_app(settings)
    runner = web.AppRunner(
        app, handle_signals=False, access_log=None, shutdown_timeout=settings.shutdown_timeout,
        max_field_size=settings.limits.max_header_size, read_bufsize=1 << 20,
    )
    await runner.setup()
    host, port = settings.listen_addr
    ssl_ctx = make_ssl_context(settings)
    site = web.TCPSite(runner, host, port, ssl_context=ssl_ctx, reuse_port=reuse_port or None, backlog=1024)
    await site.start()
    bound = port
    server = getattr(site, "_server", None)
    if server is not None and server.sockets:
        bound = server.sockets[0].getsockname()[1]
    admin_runner = None
    if settings.admin_addr:
        admin_runner = web.AppRunner(build_admin_app(app), handle_signals=False, access_log=None)
        await admin_runner.setup()
        ahost, aport = settings.admin_addr
        await web.TCPSite(admin_runner, ahost, aport, reuse_port=reuse_port or None).start()
    log.info("server.started", listen=f"{host}:{bound}", tls=ssl_ctx is not None, pid=os.getpid(),
             backend=settings.backend.url, key_backend=settings.keys.backend)
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
            log.info("tls.reloaded")
        except (OSError, ssl.SSLError) as e:
            log.error("tls.reload_failed", error=str(e))

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, reload_tls)
    try:
        await stop.wait()
    finally:
        app[STATE].draining = True
        log.info("server.draining", deadline_s=settings.shutdown_timeout)
        # Stop accepting and wait for in-flight handlers (up to shutdown_timeout); the
        # admin listener stays up meanwhile so /readyz reports the drain.
        await runner.cleanup()
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


def serve(settings: Settings, workers: int | None = None) -> None:
    n = workers or settings.workers
    tune_malloc()
    configure_logging(settings.log.level, settings.log.format)
    if n <= 1:
        _install_uvloop()
        asyncio.run(run_until_stopped(settings))
        return
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(settings,), daemon=False) for _ in range(n)]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: object) -> None:
        for p in procs:
            if p.is_alive() and p.pid:
                os.kill(p.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    for p in procs:
        p.join()
