"""POST object: browser-form uploads (``multipart/form-data`` with a signed POST policy).

A browser posts a form to ``/bucket``: fields first (``key``, ``policy``, the
signature fields, ``Content-Type``, ``x-amz-meta-*``, ``success_action_*``...),
then the ``file`` part; anything after the file is ignored, as S3 does.  The
request carries no ``Authorization``: the form's policy is signed instead
(SigV4: ``x-amz-algorithm``/``-credential``/``-date``/``-signature``; SigV2:
``AWSAccessKeyId``/``signature``).

Order of work, so that nothing unauthenticated costs more than the bounded
field reading:

1. the fields before ``file`` are read with a bound (``MAX_FIELDS_BYTES``, S3's
   ``MaxPostPreDataLengthExceeded``); a second file before ``file``, a nested
   multipart, a duplicate field or broken framing is refused;
2. at the ``file`` part: the policy signature is checked in constant time
   against the configured identities, then its expiration and every condition
   (``eq``, ``starts-with``, exact match, ``content-length-range``; ``key``
   after ``${filename}`` substitution), and every field not covered by a
   condition is refused ("Extra input fields"), as S3 does;
3. the identity is authorised exactly as a PUT of that key with those headers
   (``authz.required_actions``: ``write``, plus ``admin`` for ACL grants and
   object lock fields);
4. the file part is spooled (see ``Spool`` for why and how), its size checked
   against ``content-length-range`` and checksum fields verified, and only then
   is anything sent to the backend: ``objects.store_object`` encrypts it as any
   PUT.  A passthrough bucket gets the same checks and a plain PUT (S3's POST
   cannot be re-signed for the backend as it is).

The answer follows ``success_action_redirect`` (303 with bucket, key and ETag
in the query) or ``success_action_status`` (200, 201 with a ``PostResponse``
document, default 204), and carries the bucket's CORS headers when its rules
allow the request's ``Origin`` (errors too, so that a page can read them).

The signature, policy and condition rules are the pure ``s3proxy.http.postpolicy``.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO
from urllib.parse import quote, urlsplit
from xml.sax.saxutils import escape

import aiohttp
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from s3proxy.aws.checksums import Checker
from s3proxy.aws.errors import S3Error, access_denied, error_xml
from s3proxy.aws.sigv4 import wire_bytes
from s3proxy.http import cors
from s3proxy.http.auth import Caller
from s3proxy.http.authz import allowed, required_actions
from s3proxy.http.ctx import (
    Ctx,
    backend_error,
    forward_headers,
    reject_reserved_metadata,
    response_headers,
    send_streamed,
)
from s3proxy.http.postpolicy import (
    SSE_PREFIX,
    check_policy,
    missing_field,
    object_headers,
    parse_policy,
    size_limits,
    verify_signature,
)
from s3proxy.http.router import Route, is_reserved_key

MAX_FIELDS_BYTES = 20 * 1024  # S3: the form fields preceding the file, all together
MAX_FIELDS = 256  # parts before the file (each costs at least its headers)
MAX_TRAILING = 64 * 1024  # bytes after the file part drained to keep the connection; more: close it
MAX_DRAIN_ON_ERROR = 16 * 1024 * 1024  # of a refused body (so the client reads the error); more: close
DRAIN_SECONDS = 5.0
SPOOL_CHUNK = 256 * 1024
MAX_KEY_BYTES = 1024


def malformed() -> S3Error:
    return S3Error("MalformedPOSTRequest", "The body of your POST request is not well-formed multipart/form-data.", 400)


def one_file() -> S3Error:
    return S3Error("IncorrectNumberOfFilesInPostRequest", "POST requires exactly one file upload per request.", 400)


# --------------------------------------------------------------------- the form


@dataclass
class Form:
    """The fields before the file part (names lower case), and the file part itself."""

    fields: dict[str, str] = field(default_factory=dict)
    file: BodyPartReader | None = None
    filename: str = ""


async def read_form(request: web.Request) -> Form:
    """Read the fields up to the ``file`` part, bounded; the file part is left unread."""
    try:
        return await _read_fields(request)
    except _FRAMING_ERRORS:
        raise malformed() from None


# What aiohttp's multipart reader raises on broken framing (a missing or wrong boundary, a part
# header line too long, too many part headers, the body ending inside a part).
_FRAMING_ERRORS = (ValueError, AssertionError, RuntimeError, KeyError, HttpProcessingError)


async def _read_fields(request: web.Request) -> Form:
    reader = await request.multipart()
    form = Form()
    total = 0
    while True:
        part = await reader.next()
        if part is None:
            raise one_file()  # the form ended without a file
        if not isinstance(part, BodyPartReader) or not part.name:
            raise malformed()
        name = part.name.lower()
        if name == "file":
            form.file, form.filename = part, part.filename or ""
            return form
        if part.filename is not None:
            raise one_file()  # a file under another name before the file part
        if name in form.fields:
            raise S3Error("InvalidArgument", f"The form field {name!r} is given more than once.", 400)
        if len(form.fields) >= MAX_FIELDS:
            raise _pre_data_too_large()
        value = bytearray()
        while chunk := await part.read_chunk(8192):
            value += chunk
            if total + len(value) > MAX_FIELDS_BYTES:
                raise _pre_data_too_large()
        if not part.at_eof():
            raise malformed()  # the body ended inside the part: no closing boundary
        total += len(value)
        try:
            form.fields[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise S3Error("InvalidArgument", f"The form field {name!r} is not valid UTF-8.", 400) from None


def _pre_data_too_large() -> S3Error:
    return S3Error("MaxPostPreDataLengthExceeded", "Your POST request fields preceding the upload file were too large.", 400)


# --------------------------------------------------------------------- the spool


class Spool:
    """The file part, spooled to an anonymous temporary file before anything reaches the backend.

    Why spool: a form gives no length for its file part (the request's
    Content-Length covers every field and the framing, and anything after the
    file is ignored, so it cannot be derived), while the envelope's S layout
    and the backend PUT need the exact length up front, and S3 checks
    ``content-length-range`` before it stores anything.  Predicting the length
    from Content-Length minus a guessed closing boundary breaks on a
    different epilogue or fields after the file; buffering breaks "never a
    whole body in memory".  So the part goes to disk, bounded by the policy's
    maximum (and ``limits.max_object_size``), after the signature, policy and
    grants were checked.

    Never plaintext on disk: each ``SPOOL_CHUNK`` is sealed with AES-256-GCM
    under a one-time key that lives only in this object (nonce = chunk
    number), and opened again while streaming to ``store_object``.  The file is
    unlinked at creation (``TemporaryFile``) and closed when the request ends.
    """

    def __init__(self, limit: int, checker: Checker) -> None:
        self.limit = limit
        self.length: int | None = 0
        self._checker = checker
        self._aead = AESGCM(os.urandom(32))
        self._file: IO[bytes] = tempfile.TemporaryFile(prefix="s3proxy-post-")
        self._buf = bytearray()
        self._chunks = 0
        self._size = 0

    async def fill(self, part: BodyPartReader) -> None:
        try:
            while chunk := await part.read_chunk(SPOOL_CHUNK):
                self._size += len(chunk)
                if self._size > self.limit:
                    raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed size", 400,
                                  extra={"MaxSizeAllowed": str(self.limit)})
                self._checker.update(chunk)
                self._buf += chunk
                while len(self._buf) >= SPOOL_CHUNK:
                    await self._seal(bytes(self._buf[:SPOOL_CHUNK]))
                    del self._buf[:SPOOL_CHUNK]
        except _FRAMING_ERRORS:
            raise malformed() from None
        if not part.at_eof():
            raise malformed()  # the body ended inside the file part: no closing boundary
        if self._buf:
            await self._seal(bytes(self._buf))
            self._buf.clear()
        self.length = self._size
        self._checker.verify()

    async def _seal(self, data: bytes) -> None:
        sealed = self._aead.encrypt(self._chunks.to_bytes(12, "big"), data, None)
        self._chunks += 1
        await asyncio.to_thread(self._file.write, sealed)

    async def chunks(self) -> AsyncIterator[bytes | bytearray | memoryview]:
        await asyncio.to_thread(self._file.seek, 0)
        left = self._size
        for i in range(self._chunks):
            n = min(SPOOL_CHUNK, left)
            sealed = await asyncio.to_thread(self._file.read, n + 16)
            try:
                plain = self._aead.decrypt(i.to_bytes(12, "big"), sealed, None)
            except Exception:  # InvalidTag: the temporary file changed (or was cut) under us
                raise S3Error("InternalError", "The spooled upload failed its integrity check.", 500) from None
            left -= n
            yield plain

    def verified_checksums(self) -> dict[str, str]:
        return {k: v for k, v in self._checker.computed().items() if k.startswith("x-amz-checksum-")}

    def close(self) -> None:
        self._file.close()


# --------------------------------------------------------------------- the operation


async def post_object(ctx: Ctx) -> web.StreamResponse:
    """POST /bucket with a form (``ctx.caller`` is anonymous: the form authenticates itself).

    The whole operation; errors are answered here, with the bucket's CORS headers too."""
    request, state, bucket = ctx.request, ctx.state, ctx.bucket
    try:
        resp: web.StreamResponse = await _post(request, ctx, bucket)
        drained = await _drain(request, MAX_TRAILING)
    except S3Error as e:
        resp = _error_response(ctx, e)
        # The rest of a refused body is read (bounded) so that the client, still sending, gets the error.
        drained = await _drain(request, MAX_DRAIN_ON_ERROR)
    if not drained:
        resp.force_close()
    if request.headers.get("Origin") and not resp.prepared:
        resp.headers.update(await cors.actual_headers(state, bucket, request.headers, "POST"))
    return resp


def _error_response(ctx: Ctx, err: S3Error) -> web.Response:
    """An S3 error document, as the middleware renders one (``app.error_response``)."""
    rid = ctx.request_id
    body = error_xml(err.code, err.message, rid, ctx.request.path, err.extra)
    resp = web.Response(status=err.status, body=body, content_type="application/xml", headers=err.headers)
    resp.headers["x-amz-request-id"] = rid
    if err.status == 503 and "Retry-After" not in resp.headers:
        resp.headers["Retry-After"] = str(ctx.state.settings.limits.retry_after)
    return resp


async def _post(request: web.Request, post_ctx: Ctx, bucket: str) -> web.StreamResponse:
    state = post_ctx.state
    settings = state.settings
    if "authorization" in request.headers or any(k.lower() in _QUERY_AUTH for k in request.query):
        raise S3Error("InvalidRequest", "POST object is authenticated by its form fields only; "
                      "an Authorization header or a signed query is not allowed with it.", 400)
    form = await read_form(request)
    fields = form.fields
    if "key" not in fields:
        raise missing_field("key")
    now = datetime.now(UTC)
    ident = verify_signature(fields, settings.identities, settings.allow_sigv2)
    policy = parse_policy(fields["policy"])
    if fields.get("bucket", bucket) != bucket:
        raise S3Error("InvalidArgument", "The bucket form field does not name the bucket posted to.", 400)
    key = fields["key"].replace("${filename}", form.filename)
    check_policy(policy, {**fields, "key": key, "bucket": bucket}, now)
    if not key:
        raise S3Error("InvalidArgument", "User key must have a length greater than 0.", 400)
    if len(wire_bytes(key)) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", "Your key is too long", 400)
    headers = object_headers(fields)
    reject_reserved_metadata(headers)
    route = Route("PutObject", bucket, key, ())
    if is_reserved_key(key) and settings.bucket(bucket).mode == "encrypt":
        raise access_denied()  # .s3proxy/ holds the proxy's own sidecars (s3proxy.http.sidecars)
    for action in sorted(required_actions(route, "PUT", headers)):
        if not allowed(ident, action, bucket, key, None):
            raise access_denied()
    lo, hi = size_limits(policy, settings.limits.max_object_size)
    checker = Checker.from_headers({k: v for k, v in headers.items() if k.startswith("x-amz-checksum-")
                                    or k == "content-md5"}, [])
    assert form.file is not None
    spool = Spool(hi, checker)
    try:
        await spool.fill(form.file)
        if (spool.length or 0) < lo:
            raise S3Error("EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size", 400,
                          extra={"ProposedSize": str(spool.length), "MinSizeAllowed": str(lo)})
        ctx = Ctx(_with_sse_fields(request, headers), route, Caller(ident, None), state)
        stored = await _store(ctx, bucket, key, spool, headers)
    finally:
        spool.close()
    if stored.status != 200 or stored.prepared:
        return stored  # a backend error, relayed
    return _answer(request, fields, bucket, key, stored)


_QUERY_AUTH = frozenset({"x-amz-algorithm", "x-amz-credential", "x-amz-signature", "awsaccesskeyid", "signature"})


async def _drain(request: web.Request, limit: int) -> bool:
    """Read and ignore the rest of the body, at most ``limit`` bytes within ``DRAIN_SECONDS``.

    After the file part that is what S3 ignores; after an error, the refused rest.  False: more
    was left (or the body broke), and the connection must close after the answer."""
    content = request.content
    left = limit
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            while not content.at_eof():
                if left <= 0:
                    return False
                chunk = await content.read(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
    except (TimeoutError, aiohttp.ClientPayloadError, ValueError, ConnectionError):
        return False
    return content.at_eof()


def _with_sse_fields(request: web.Request, headers: Mapping[str, str]) -> web.Request:
    """The request as ``sse`` reads it: its x-amz-* headers replaced by the form's SSE fields."""
    sse_fields = {k: v for k, v in headers.items() if k.startswith(SSE_PREFIX)}
    if not sse_fields and not any(k.lower().startswith("x-amz-") for k in request.headers):
        return request
    kept = {k: v for k, v in request.headers.items() if not k.lower().startswith("x-amz-")}
    return request.clone(headers={**kept, **sse_fields})


async def _store(ctx: Ctx, bucket: str, key: str, spool: Spool, headers: Mapping[str, str]) -> web.StreamResponse:
    if ctx.encrypted:
        from s3proxy.http.objects import store_object

        return await store_object(ctx, bucket, key, spool, headers)
    # Passthrough bucket: the same checks, then a plain PUT of the spooled file.
    assert spool.length is not None
    resp = await send_streamed(
        ctx, "PUT", bucket, key, query=[], headers=forward_headers(headers, body_changed=False),
        body=spool.chunks(), content_length=spool.length,
    )
    if resp.status != 200:
        return await backend_error(ctx, resp)
    await resp.read()
    hdrs = response_headers(resp.headers, ctx.request_id, drop=["content-type", "content-encoding"])
    resp.release()
    return web.Response(status=200, headers=hdrs)


def _answer(request: web.Request, fields: Mapping[str, str], bucket: str, key: str, stored: web.StreamResponse) -> web.Response:
    """S3's answer to a stored POST: a 303 redirect, or 200/201/204 (``success_action_*``)."""
    hdrs = {k: v for k, v in stored.headers.items() if k.lower() not in ("content-length", "content-type")}
    etag = stored.headers.get("ETag", "")
    redirect = fields.get("success_action_redirect") or fields.get("redirect")
    if redirect and _valid_url(redirect):
        sep = "&" if urlsplit(redirect).query else "?"
        hdrs["Location"] = (f"{redirect}{sep}bucket={quote(bucket, safe='')}&key={quote(key, safe='')}"
                            f"&etag={quote(etag, safe='')}")
        return web.Response(status=303, headers=hdrs)
    base = request.raw_path.partition("?")[0].rstrip("/")
    location = f"{request.scheme}://{request.host}{base}/{quote(key, safe='')}"
    hdrs["Location"] = location
    status = fields.get("success_action_status")
    if status == "201":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<PostResponse>'
            f"<Location>{escape(location)}</Location><Bucket>{escape(bucket)}</Bucket>"
            f"<Key>{escape(key)}</Key><ETag>{escape(etag)}</ETag></PostResponse>"
        ).encode()
        return web.Response(status=201, body=body, headers=hdrs, content_type="application/xml")
    return web.Response(status=200 if status == "200" else 204, headers=hdrs)


def _valid_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and not any(c in url for c in "\r\n")
