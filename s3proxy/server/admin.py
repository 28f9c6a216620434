"""The admin listener (``/metrics``, ``/healthz``, ``/readyz``) and what the backend can do.

``/readyz`` checks the backend and the key service (a success of the latter is
reused for ``KEY_CHECK_TTL`` seconds) and shows the capability probe's state
under ``checks.capabilities`` without ever failing on it.  ``apply_capabilities``
hands a probe's result to the parts of the proxy that use it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from s3proxy.backend.profiles import CAPABILITIES, Capabilities
from s3proxy.observability import exposition
from s3proxy.state import STATE

KEY_CHECK_TTL = 60.0  # seconds a successful key-service readiness check is reused


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
