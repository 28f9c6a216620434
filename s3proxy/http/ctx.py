"""The request context (``Ctx``) and the relay helpers every operation module shares.

Forwarding and response headers, streaming a body to the backend, relaying a backend
response, backend errors.  Imports the protocol layer, the backend client and the app
state; never an operation module (objects, multipart, listing...) nor the dispatcher."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from s3proxy.aws.errors import S3Error
from s3proxy.backend.client import BackendCredentials, BoundBackend
from s3proxy.config import BucketSettings
from s3proxy.http.auth import Caller
from s3proxy.http.router import Route
from s3proxy.observability import get_logger
from s3proxy.state import OP, REQUEST_ID, AppState

log = get_logger("s3proxy.handlers")


RESERVED_META = "x-amz-meta-s3proxy-"


HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
     "transfer-encoding", "upgrade", "proxy-connection"}
)


# Request headers that describe the client's request to *us* and are never forwarded.
DROP_REQUEST = HOP_BY_HOP | {
    "host", "authorization", "x-amz-date", "x-amz-content-sha256", "x-amz-security-token", "content-length",
    "expect", "x-amz-decoded-content-length", "x-amz-trailer", "x-amz-sdk-checksum-algorithm", "date", "user-agent", "accept-encoding",
    "amz-sdk-invocation-id", "amz-sdk-request", "x-amz-user-agent",
}


# Integrity headers of the plaintext: verified by us, never forwarded with ciphertext.
PLAINTEXT_INTEGRITY = ("content-md5", "x-amz-sdk-checksum-algorithm", "x-amz-checksum-")


SSE_HEADERS = ("x-amz-server-side-encryption", "x-amz-copy-source-server-side-encryption")


READ_BUFSIZE = 1 << 20


@dataclass
class Ctx:
    request: web.Request
    route: Route
    caller: Caller
    state: AppState

    @cached_property
    def backend(self) -> BoundBackend:
        """The backend, signing with the caller's identity's own backend credentials when it has
        them (a limited identity stays limited at the backend), else with the proxy's."""
        ident = self.caller.identity
        creds = None
        if ident is not None and ident.backend_access_key is not None and ident.backend_secret_key is not None:
            creds = BackendCredentials(ident.backend_access_key.get_secret_value(), ident.backend_secret_key.get_secret_value())
        return BoundBackend(self.state.backend, creds)

    @property
    def request_id(self) -> str:
        return str(self.request[REQUEST_ID])

    @property
    def bucket(self) -> str:
        assert self.route.bucket is not None
        return self.route.bucket

    @property
    def key(self) -> str:
        assert self.route.key is not None
        return self.route.key

    @property
    def bucket_settings(self) -> BucketSettings:
        return self.state.settings.bucket(self.bucket)

    @property
    def encrypted(self) -> bool:
        return self.route.bucket is not None and self.bucket_settings.mode == "encrypt"

    @property
    def identity_name(self) -> str:
        ident = self.caller.identity
        return (ident.name or ident.access_key) if ident else "anonymous"


Handler = Callable[[Ctx], Awaitable[web.StreamResponse]]


def reject_reserved_metadata(headers: Mapping[str, str]) -> None:
    for name in headers:
        if name.lower().startswith(RESERVED_META):
            raise S3Error("InvalidArgument", "metadata keys starting with 's3proxy-' are reserved", 400)


def forward_headers(headers: Mapping[str, str], *, body_changed: bool, drop: Iterable[str] = ()) -> dict[str, str]:
    """The client's headers that go on to the backend."""
    out: dict[str, str] = {}
    dropped = set(drop)
    for name, value in headers.items():
        n = name.lower()
        if n in DROP_REQUEST or n in dropped:
            continue
        if body_changed and (n.startswith(PLAINTEXT_INTEGRITY) or n.startswith(SSE_HEADERS)):
            continue
        if n == "content-encoding":
            codings = [c.strip() for c in value.split(",") if c.strip() and c.strip().lower() != "aws-chunked"]
            if not codings:
                continue
            value = ", ".join(codings)
        if n in out:
            out[n] += "," + value
        else:
            out[n] = value
    return out


# Backend response headers that never reach a client as they are.
_NOT_RELAYED = HOP_BY_HOP | {"x-amz-request-id", "server", "content-length"}


def response_headers(
    backend_headers: Mapping[str, str], request_id: str, *, hide_reserved: bool = True, drop: Iterable[str] = (),
    drop_prefixes: tuple[str, ...] = (),
) -> CIMultiDict[str]:
    """The backend's response headers a client gets: hop-by-hop headers, the backend's request
    id, ``drop`` (lower-case names) and names starting with ``drop_prefixes`` (lower case)
    removed, the proxy's reserved metadata hidden.  One pass, one set and one ``startswith``
    per header (issue 11: this ran on every response)."""
    skip = _NOT_RELAYED.union(drop) if drop else _NOT_RELAYED
    prefixes = (RESERVED_META, *drop_prefixes) if hide_reserved else drop_prefixes
    out: CIMultiDict[str] = CIMultiDict(
        [(name, value) for name, value in backend_headers.items()
         if (n := name.lower()) not in skip and not n.startswith(prefixes)]
    )
    out["x-amz-request-id"] = request_id
    return out


class SendWatchdog:
    """Cuts off a client that stops reading a response body.

    While a write to the client waits (the transport's buffer is full), the watchdog looks
    every tick whether the client took bytes (the buffer shrank).  No progress for
    ``limits.send_idle_timeout`` seconds: the connection is aborted, so the waiting write fails
    and the request releases its slot and backend connections.  A slow but steady reader is
    never cut; the cost per write is two attribute stores.
    """

    __slots__ = ("_transport", "_timeout", "_tick", "_loop", "_handle", "_writing", "_idle_since", "_size", "timed_out")

    def __init__(self, ctx: Ctx) -> None:
        self._transport = ctx.request.transport
        self._timeout = ctx.state.settings.limits.send_idle_timeout
        self._tick = min(max(self._timeout / 4, 0.05), 5.0)
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._writing = False
        self._idle_since = 0.0
        self._size = 0
        self.timed_out = False
        if self._transport is not None:
            self._handle = self._loop.call_later(self._tick, self._check)

    async def write(self, out: web.StreamResponse, data: bytes | bytearray | memoryview) -> None:
        self._writing = True
        self._idle_since = self._loop.time()
        try:
            await out.write(data)
        finally:
            self._writing = False

    def _check(self) -> None:
        self._handle = None
        t = self._transport
        if t is None or t.is_closing():
            return
        if self._writing:
            now = self._loop.time()
            size = t.get_write_buffer_size()
            if size < self._size:
                self._idle_since = now  # the client took bytes since the last look
            self._size = size
            if now - self._idle_since >= self._timeout:
                self.timed_out = True
                log.info("client.send_timeout", timeout=self._timeout)
                t.abort()
                return
        self._handle = self._loop.call_later(self._tick, self._check)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def relay(ctx: Ctx, resp: aiohttp.ClientResponse, *, headers: CIMultiDict[str] | None = None) -> web.StreamResponse:
    """Stream a backend response to the client unchanged (re-headered)."""
    if resp.status >= 400 and ctx.state.backend.names is not None and ctx.route.key is not None:
        from s3proxy.backend.names_keys import plain_error

        try:  # an error document names the stored key: the client gets the key it sent
            data = await read_at_most(resp, 1 << 16)
        finally:
            resp.release()
        hdrs = headers if headers is not None else response_headers(resp.headers, ctx.request_id)
        body = await plain_error(ctx.state.backend, ctx.bucket, ctx.key, data) if ctx.request.method != "HEAD" else None
        return web.Response(status=resp.status, reason=resp.reason, body=body, headers=hdrs)
    try:
        hdrs = headers if headers is not None else response_headers(resp.headers, ctx.request_id)
        out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=hdrs)
        cl = resp.headers.get("Content-Length")
        if cl is not None:
            out.content_length = int(cl)
        await out.prepare(ctx.request)
        if ctx.request.method != "HEAD":
            watchdog = SendWatchdog(ctx)
            try:
                async for chunk in resp.content.iter_any():
                    await watchdog.write(out, chunk)
            finally:
                watchdog.close()
        await out.write_eof()
        return out
    finally:
        resp.release()


async def read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to ``limit`` bytes of a response body (all of it if shorter)."""
    buf = bytearray()
    while len(buf) < limit:
        chunk = await resp.content.read(limit - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def _capability_needed(ctx: Ctx) -> str | None:
    """The backend capability (s3proxy.backend.profiles) an operation needs beyond plain S3, if any."""
    op = ctx.request.get(OP, "")
    if op == "GetObjectAttributes":
        return "object_attributes"
    if op == "UploadPartCopy":
        return "upload_part_copy"
    if op == "ObjectConfig" and ctx.route.has("tagging"):
        return "tagging"
    return None


def _known_missing(ctx: Ctx, capability: str | None) -> bool:
    caps = getattr(ctx.state, "backend_capabilities", None)
    return capability is not None and caps is not None and caps.value(capability) == "no"


async def backend_error(ctx: Ctx, resp: aiohttp.ClientResponse) -> web.StreamResponse:
    """Pass a backend error through with its status, code and message.

    A 5xx for an operation the backend is known not to implement (its probed or pinned
    capabilities) becomes ``501 NotImplemented``: clients retry a 500, and would forever.
    """
    if resp.status >= 500 and _known_missing(ctx, _capability_needed(ctx)):
        resp.release()
        raise S3Error("NotImplemented", f"The storage behind s3proxy does not implement {ctx.request[OP]}.", 501)
    return await relay(ctx, resp, headers=response_headers(resp.headers, ctx.request_id))


class _Capture:
    """Remembers the S3Error a body iterator raised inside the HTTP client."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def wrap(self, it: AsyncIterator[bytes | bytearray | memoryview]) -> AsyncIterator[bytes | bytearray | memoryview]:
        async def gen() -> AsyncIterator[bytes | bytearray | memoryview]:
            try:
                async for piece in it:
                    yield piece
            except Exception as e:  # not BaseException: a cancelled writer is the backend's failure (503)
                self.error = e
                raise

        return gen()


async def send_streamed(
    ctx: Ctx,
    method: str,
    bucket: str,
    key: str,
    *,
    query: tuple[tuple[str, str], ...] | list[tuple[str, str]],
    headers: Mapping[str, str],
    body: AsyncIterator[bytes | bytearray | memoryview],
    content_length: int,
) -> aiohttp.ClientResponse:
    """Upload a streamed body; an error in the body aborts the request and is re-raised."""
    cap = _Capture()
    try:
        return await ctx.backend.request(
            method, bucket, key, query=query, headers=headers, body=cap.wrap(body), content_length=content_length
        )
    except Exception as e:
        if cap.error is not None:
            raise cap.error from None
        ctx.state.metrics.backend_errors.labels("upload").inc()
        raise S3Error("ServiceUnavailable", "the storage backend failed during the upload", 503) from e


def _rewritten_body_headers(headers: Mapping[str, str], data: bytes) -> dict[str, str]:
    """Headers for a body s3proxy re-wrote: the client's integrity headers described its bytes
    (verified on the way in); the backend gets an MD5 of the bytes it receives."""
    out = {k: v for k, v in headers.items()
           if k not in ("content-md5", "content-type") and not k.startswith(("x-amz-checksum-", "x-amz-sdk-checksum"))}
    out["content-md5"] = base64.b64encode(hashlib.md5(data).digest()).decode()
    return out
