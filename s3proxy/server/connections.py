"""The proxy's aiohttp runner, with guarded client connections.

``make_runner`` builds it (the server and the tests alike, so they run what
ships): request bodies are never decompressed (S3 stores a body with
``Content-Encoding: gzip`` byte for byte), idle keep-alive connections close
after ``limits.keepalive_timeout``, a request head must arrive within
``limits.header_timeout`` of its first byte (slowloris), and at most
``limits.max_connections`` client connections are open; more are answered
``503 SlowDown`` and closed.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from s3proxy.app import new_request_id
from s3proxy.aws.errors import error_xml
from s3proxy.config import Settings
from s3proxy.observability import get_logger
from s3proxy.state import SLOW_DOWN_MESSAGE, STATE, Limiter

log = get_logger("s3proxy.server")


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
