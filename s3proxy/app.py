"""The aiohttp application: state, middleware, one catch-all route.

Middleware order (outermost first): request id + access log + metrics,
S3 XML errors.  Then ``dispatch`` authenticates, routes and calls the
operation's handler from ``s3proxy.http.handlers``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from s3proxy.backend.client import BackendClient
from s3proxy.config import Settings
from s3proxy.http.errors import S3Error, error_xml
from s3proxy.keys.base import KeyServiceError
from s3proxy.observability import Metrics, get_logger

log = get_logger("s3proxy.app")


@dataclass
class AppState:
    settings: Settings
    backend: BackendClient
    keys: Any  # s3proxy.keys.manager.KeyManager
    metrics: Metrics
    part_tables: dict[tuple[str, str, str], tuple[int, ...]] = field(default_factory=dict)
    draining: bool = False


STATE: web.AppKey[AppState] = web.AppKey("s3proxy_state", AppState)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("s3proxy_request_id", str)
OP: web.RequestKey[str] = web.RequestKey("s3proxy_op", str)


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
        resp.headers["Retry-After"] = "1"
    return resp


@web.middleware
async def request_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    state = request.app[STATE]
    rid = new_request_id()
    request[REQUEST_ID] = rid
    start = time.perf_counter()
    state.metrics.in_flight.inc()
    status = 500
    try:
        try:
            resp = await handler(request)
        except S3Error as e:
            resp = error_response(request, e)
        except KeyServiceError as e:
            state.metrics.key_errors.labels(e.s3_code).inc()
            resp = error_response(request, S3Error(e.s3_code, str(e) or e.s3_code, e.status))
        except web.HTTPException as e:
            resp = error_response(request, S3Error("InvalidRequest", e.reason or "bad request", e.status))
        except asyncio.CancelledError:
            status = 499
            raise
        except ConnectionError:
            status = 499
            raise
        except Exception:
            log.exception("request.failed", request_id=rid, method=request.method, path=request.path)
            resp = error_response(request, S3Error("InternalError", "We encountered an internal error. Please try again.", 500))
        status = resp.status
        if not resp.prepared:
            resp.headers["x-amz-request-id"] = rid
        return resp
    finally:
        elapsed = time.perf_counter() - start
        op = request.get(OP, "Unknown")
        state.metrics.in_flight.dec()
        state.metrics.requests.labels(op, str(status)).inc()
        state.metrics.latency.labels(op).observe(elapsed)
        if state.settings.log.access_log:
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
    app[STATE] = AppState(settings=settings, backend=BackendClient(settings.backend), keys=keys, metrics=metrics)
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app
