"""The aiohttp application: state, middleware, one catch-all route.

Middleware order (outermost first): request id + access log + metrics,
admission (in-flight limits), request-body idle watchdog, S3 XML errors.
Then ``dispatch`` authenticates, routes and calls the operation's handler
from ``s3proxy.http.handlers``.

Resource limits (``settings.limits``): at most ``max_requests`` requests in
flight, at most ``max_requests_per_identity`` per authenticated access key
(anonymous requests share one budget); beyond either the client gets
``503 SlowDown`` with ``Retry-After``.  A request body that delivers no byte
for ``body_idle_timeout`` seconds while the proxy waits for it ends the
request with ``400 RequestTimeout`` (the backend request is aborted, nothing
is stored).  A failure of the backend before the response has started is
always a ``503`` S3 error, never a dropped connection or a 500.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler

from s3proxy.aws.errors import S3Error, error_xml
from s3proxy.backend import names_keys
from s3proxy.backend.client import BackendBusy, BackendClient
from s3proxy.config import Settings
from s3proxy.http.auth import authenticate
from s3proxy.keys.base import KeyServiceError
from s3proxy.observability import Metrics, get_logger
from s3proxy.state import (  # re-exported
    ANONYMOUS as ANONYMOUS,
)
from s3proxy.state import (
    BODY_TIMED_OUT as BODY_TIMED_OUT,
)
from s3proxy.state import (
    CALLER as CALLER,
)
from s3proxy.state import (
    OP as OP,
)
from s3proxy.state import (
    REQUEST_ID as REQUEST_ID,
)
from s3proxy.state import (
    RESPONSE_STARTED as RESPONSE_STARTED,
)
from s3proxy.state import (
    SLOW_DOWN_MESSAGE as SLOW_DOWN_MESSAGE,
)
from s3proxy.state import (
    STATE as STATE,
)
from s3proxy.state import (
    AppState as AppState,
)
from s3proxy.state import (
    Limiter as Limiter,
)
from s3proxy.state import (
    RequestMetrics as RequestMetrics,
)
from s3proxy.state import (
    slow_down as slow_down,
)

log = get_logger("s3proxy.app")


REQUEST_TIMEOUT_MESSAGE = (
    "Your socket connection to the server was not read from or written to within the timeout period."
)


def request_timeout() -> S3Error:
    return S3Error("RequestTimeout", REQUEST_TIMEOUT_MESSAGE, 400)


def backend_unavailable() -> S3Error:
    return S3Error("ServiceUnavailable", "the storage backend is unavailable", 503)


def new_request_id() -> str:
    return secrets.token_hex(8).upper()


def error_response(request: web.Request, err: S3Error) -> web.Response:
    rid = request.get(REQUEST_ID, "")
    body = b"" if request.method == "HEAD" else error_xml(err.code, err.message, rid, request.path, err.extra)
    resp = web.Response(status=err.status, body=body, content_type="application/xml")
    for k, v in err.headers.items():
        resp.headers[k] = v
    resp.headers["x-amz-request-id"] = rid
    if err.status == 503 and "Retry-After" not in resp.headers:
        state = request.app.get(STATE)
        resp.headers["Retry-After"] = str(state.settings.limits.retry_after if state is not None else 1)
    return resp


# --------------------------------------------------------------------- admission


def _identity_for_limits(request: web.Request, settings: Settings) -> str | None:
    """The access key a request is authenticated as, ANONYMOUS, or None if it fails authentication.

    The signature is verified here, so a client cannot use up another
    identity's budget with requests it cannot sign.  The result is kept in
    ``request[CALLER]`` for ``dispatch`` to reuse.
    """
    try:
        caller = authenticate(request, settings)
    except Exception:  # noqa: BLE001 - dispatch authenticates again and reports the error
        return None
    request[CALLER] = caller
    return caller.identity.access_key if caller.identity is not None else ANONYMOUS


# --------------------------------------------------------------------- request-body idle timeout


class BodyIdleTimeout(TimeoutError):
    """Set on a request body stream that delivered no byte for ``body_idle_timeout``."""


class _BodyWatchdog:
    """Ends a request whose body stalls: no byte for ``timeout`` seconds while the proxy waits.

    Time the proxy is not waiting for the body (the backend is slow to take the
    bytes, the request is queued) does not count.  On expiry the body stream
    fails with ``BodyIdleTimeout``: the reader raises, the backend request is
    aborted before its last byte, and the client gets 400 RequestTimeout.
    """

    __slots__ = ("_content", "_request", "_timeout", "_tick", "_last", "_idle_since", "_handle", "_loop")

    def __init__(self, request: web.Request, timeout: float) -> None:
        self._request = request
        self._content = request.content
        self._timeout = timeout
        self._tick = min(max(timeout / 4, 0.05), 5.0)
        self._loop = asyncio.get_running_loop()
        self._last = self._content.total_bytes
        self._idle_since = self._loop.time()
        self._handle: asyncio.TimerHandle | None = self._loop.call_later(self._tick, self._check)

    def _waiting(self) -> bool:
        # aiohttp's StreamReader keeps a future while a reader waits for data.
        return getattr(self._content, "_waiter", True) is not None

    def _check(self) -> None:
        self._handle = None
        c = self._content
        if c.is_eof() or c.exception() is not None:
            return
        now = self._loop.time()
        if c.total_bytes != self._last or not self._waiting():
            self._last = c.total_bytes
            self._idle_since = now
        elif now - self._idle_since >= self._timeout:
            self._request[BODY_TIMED_OUT] = True
            c.set_exception(BodyIdleTimeout(f"no request body received for {self._timeout:g}s"))
            return
        self._handle = self._loop.call_later(self._tick, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


# --------------------------------------------------------------------- errors


def _in_chain(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, kind):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


_BACKEND_FAILURES = (aiohttp.ClientError, ConnectionError, TimeoutError)


def _as_s3_error(request: web.Request, exc: Exception) -> S3Error | None:
    """The S3 error for a failure before the response started; None: an internal error."""
    if request.get(BODY_TIMED_OUT):
        return request_timeout()
    if isinstance(exc, S3Error):
        if exc.status >= 500 and not isinstance(exc, BackendBusy) and (busy := _in_chain(exc, BackendBusy)):
            return busy  # type: ignore[return-value]
        return exc
    if isinstance(exc, _BACKEND_FAILURES):
        return slow_down() if _in_chain(exc, BackendBusy) else backend_unavailable()
    return None


async def _mark_started(request: web.Request, _response: web.StreamResponse) -> None:
    request[RESPONSE_STARTED] = True


def _abort(request: web.Request, exc: BaseException) -> ConnectionResetError:
    """The response is under way: the only way to signal a failure is to cut the connection."""
    transport = request.transport
    if transport is not None:
        transport.abort()
    err = ConnectionResetError("response aborted after it started")
    err.__cause__ = exc
    return err


@web.middleware
async def request_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    state = request.app[STATE]
    rid = new_request_id()
    request[REQUEST_ID] = rid
    start = time.perf_counter()
    state.request_metrics.begin()
    status = 500
    release: Callable[[], None] | None = None
    watchdog: _BodyWatchdog | None = None
    try:
        try:
            release = state.limiter.admit(_identity_for_limits(request, state.settings))
            if request.body_exists:
                watchdog = _BodyWatchdog(request, state.settings.limits.body_idle_timeout)
            resp = await handler(request)
        except KeyServiceError as e:
            state.metrics.key_errors.labels(e.s3_code).inc()
            resp = error_response(request, S3Error(e.s3_code, str(e) or e.s3_code, e.status))
        except web.HTTPException as e:
            resp = error_response(request, S3Error("InvalidRequest", e.reason or "bad request", e.status))
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if request.get(RESPONSE_STARTED) or task is None or task.cancelling():
                status = 499
                raise
            # Not a cancellation of this request: a CancelledError leaked out of
            # the HTTP client when the backend connection broke mid-upload.
            state.metrics.backend_errors.labels("upload").inc()
            log.warning("request.backend_failed", request_id=rid, error="CancelledError")
            resp = error_response(request, request_timeout() if request.get(BODY_TIMED_OUT) else backend_unavailable())
        except Exception as e:
            if request.get(RESPONSE_STARTED):
                status = 499
                if not isinstance(e, _BACKEND_FAILURES + (S3Error,)):
                    log.exception("request.failed", request_id=rid, method=request.method, path=request.path)
                raise _abort(request, e) from e
            err = _as_s3_error(request, e)
            if err is None:
                log.exception("request.failed", request_id=rid, method=request.method, path=request.path)
                err = S3Error("InternalError", "We encountered an internal error. Please try again.", 500)
            elif not isinstance(e, S3Error):
                state.metrics.backend_errors.labels("connection").inc()
                log.warning("request.backend_failed", request_id=rid, error=repr(e))
            resp = error_response(request, err)
            if err.code == "RequestTimeout":
                resp.force_close()
        status = resp.status
        if not resp.prepared:
            resp.headers["x-amz-request-id"] = rid
        return resp
    finally:
        if watchdog is not None:
            watchdog.cancel()
        if release is not None:
            release()
        elapsed = time.perf_counter() - start
        op = request.get(OP, "Unknown")
        state.request_metrics.end(op, status, elapsed)
        if state.settings.log.access_log and log.is_enabled_for(logging.INFO):
            log.info(
                "access",
                request_id=rid,
                op=op,
                method=request.method,
                path=request.path,
                status=status,
                ms=round(elapsed * 1000, 2),
                remote=request.remote,
            )


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    await state.backend.start()
    yield
    await state.backend.close()
    await state.keys.close()


def build_app(settings: Settings, *, keys: Any = None) -> web.Application:
    from s3proxy.http.handlers import dispatch
    from s3proxy.keys.registry import build_key_manager

    metrics = Metrics()
    if keys is None:
        keys = build_key_manager(settings.keys, registry=metrics.registry)
    app = web.Application(middlewares=[request_middleware], client_max_size=settings.limits.max_xml_body)
    app[STATE] = AppState(
        settings=settings, backend=BackendClient(settings.backend), keys=keys, metrics=metrics,
        limiter=Limiter(settings.limits, metrics.registry),
    )
    # encrypted object names (docs/NAMES.md): the backend client maps the keys of such buckets
    names_keys.register(app[STATE].backend, settings, keys)
    app.on_response_prepare.append(_mark_started)
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_route("*", "/{tail:.*}", dispatch, expect_handler=_expect_handler)
    return app


async def _expect_handler(request: web.Request) -> None:
    """``Expect: 100-continue`` as aiohttp handles it; any other Expect value is ignored, as S3
    does (aiohttp's default answers it with a plain-text 417 before any middleware runs)."""
    if request.headers.get("Expect", "").strip().lower() == "100-continue":
        await _default_expect_handler(request)
