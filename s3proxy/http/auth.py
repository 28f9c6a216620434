"""Incoming authentication and the verified request body.

``authenticate`` checks the SigV4 signature (header or presigned) and maps
the access key to a configured identity.  ``RequestBody`` turns the wire body
(plain, or ``aws-chunked`` with per-chunk signatures and trailers) into the
plaintext the client meant, verifying the signed payload hash, chunk
signatures, ``Content-MD5`` and ``x-amz-checksum-*`` while streaming.  The
last piece is held back until every check passed, so a consumer that
forwards the pieces to the backend with an exact ``Content-Length`` never
completes a request whose body failed verification.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aiohttp import StreamReader, web

from s3proxy.aws import sigv2
from s3proxy.aws.awschunked import ChunkedDecoder, ChunkSigning
from s3proxy.aws.checksums import Checker
from s3proxy.aws.errors import S3Error
from s3proxy.aws.numbers import parse_uint
from s3proxy.aws.sigv4 import AuthResult, RequestView, verify_request
from s3proxy.config import Identity, Settings

STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
UNSIGNED = "UNSIGNED-PAYLOAD"
READ_SIZE = 1 << 20
_HEX64 = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)


@dataclass(frozen=True)
class Caller:
    identity: Identity | None  # None: anonymous
    auth: AuthResult | None


# The identities by access key, for the last (immutable) identities tuple seen: built once, not per request.
_BY_KEY: list[tuple[tuple[Identity, ...], dict[str, Identity]]] = [((), {})]


def _identities_by_key(identities: tuple[Identity, ...]) -> dict[str, Identity]:
    seen, by_key = _BY_KEY[0]
    if seen is not identities:
        by_key = {i.access_key: i for i in identities}
        if type(identities) is tuple:  # a list (settings built without validation) could change: never kept
            _BY_KEY[0] = (identities, by_key)
    return by_key


def authenticate(request: web.Request, settings: Settings, now: datetime | None = None) -> Caller:
    raw_path, _, raw_query = request.raw_path.partition("?")
    view = RequestView(
        method=request.method,
        raw_path=raw_path,
        raw_query=raw_query,
        headers=list(request.headers.items()),
    )
    by_key = _identities_by_key(settings.identities)

    def lookup(ak: str) -> str | None:
        ident = by_key.get(ak)
        return ident.secret_key.get_secret_value() if ident else None

    authz = request.headers.get("Authorization")
    if settings.allow_sigv2 and sigv2.is_v2(raw_query, authz):
        prefix = ""
        bd = settings.base_domain
        host = request.host.rsplit(":", 1)[0].lower()
        if bd and host.endswith("." + bd.lower()):
            prefix = "/" + host[: -len(bd) - 1]
        # SigV4Error, AwsChunkedError and ChecksumError are S3Errors: they reach the client as they are.
        v2 = sigv2.verify_v2(
            request.method, raw_path, raw_query, list(request.headers.items()), lookup,
            now or datetime.now(UTC), max_skew_seconds=settings.clock_skew_seconds, resource_prefix=prefix,
        )
        return Caller(by_key[v2.access_key], None)
    result = verify_request(
        view, lookup, now or datetime.now(UTC), max_skew=timedelta(seconds=settings.clock_skew_seconds)
    )
    if result is None:
        return Caller(None, None)
    return Caller(by_key[result.access_key], result)


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    v = headers.get(name)
    if v is None:
        return None
    n = parse_uint(v.strip(" \t"))  # ASCII digits only: isdigit() accepts '²', which int() refuses
    if n is None:
        raise S3Error("InvalidArgument", f"{name} must be a non-negative integer", 400)
    return n


class RequestBody:
    """The plaintext body of an incoming request, verified while it streams."""

    def __init__(self, request: web.Request, auth: AuthResult | None) -> None:
        h = request.headers
        self._stream: StreamReader = request.content
        self._payload_hash = auth.payload_hash if auth else h.get("x-amz-content-sha256", UNSIGNED)
        wire_length = _int_header(h, "content-length")
        self._decoder: ChunkedDecoder | None = None
        trailer_names: list[str] = []
        if self._payload_hash.startswith("STREAMING-"):
            if self._payload_hash not in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER):
                raise S3Error("InvalidArgument", "unsupported x-amz-content-sha256 streaming mode", 400)
            decoded = _int_header(h, "x-amz-decoded-content-length")
            if decoded is None:
                raise S3Error("MissingContentLength", "x-amz-decoded-content-length is required", 411)
            self.length: int | None = decoded
            signing = None
            if self._payload_hash != STREAMING_UNSIGNED_TRAILER:
                if auth is None:
                    raise S3Error("AccessDenied", "signed streaming payload without a signature", 403)
                signing = ChunkSigning(auth.signing_key, auth.amz_date, auth.scope, auth.signature)
            trailer = self._payload_hash != STREAMING_SIGNED
            if trailer:
                trailer_names = [t.strip().lower() for t in h.get("x-amz-trailer", "").split(",") if t.strip()]
            self._decoder = ChunkedDecoder(signing=signing, trailer=trailer, decoded_length=decoded)
        else:
            self.length = wire_length
            if self.length is None and h.get("transfer-encoding", "").lower() != "chunked":
                self.length = 0
        self._sha = None
        if self._decoder is None and self._payload_hash != UNSIGNED:
            if _HEX64.fullmatch(self._payload_hash) is None:
                raise S3Error("InvalidArgument", "x-amz-content-sha256 must be a hex SHA-256", 400)
            self._sha = hashlib.sha256()
        self.checker = Checker.from_headers(h, trailer_names)
        self.received = 0
        self._consumed = False
        self._header_checksums = {
            k.lower(): v for k, v in h.items() if k.lower().startswith("x-amz-checksum-") and k.lower() != "x-amz-checksum-type"
        }
        self._trailer_checksums: dict[str, str] = {}

    async def _wire(self) -> AsyncIterator[bytes | bytearray | memoryview]:
        # One network chunk at a time (readany() would join everything buffered: a copy).
        stream = self._stream
        while True:
            try:
                data, _ = await stream.readchunk()
            except Exception as e:  # client went away mid-body
                raise S3Error("IncompleteBody", "the request body ended early", 400) from e
            if data:
                yield data
            elif stream.at_eof():
                return

    async def chunks(self) -> AsyncIterator[bytes | bytearray | memoryview]:
        """Plaintext pieces; the last one only after every check passed."""
        if self._consumed:
            raise RuntimeError("body already consumed")
        self._consumed = True
        held: bytes | memoryview | None = None
        limit = self.length
        checker = self.checker
        sha = self._sha
        decoder = self._decoder
        async for data in self._wire():
            pieces = decoder.feed(data) if decoder is not None else (data,)
            for piece in pieces:
                n = len(piece)
                if not n:
                    continue
                self.received += n
                if limit is not None and self.received > limit:
                    raise S3Error("IncompleteBody", "the request body is longer than declared", 400)
                if not isinstance(piece, bytes) and not (isinstance(piece, memoryview) and isinstance(piece.obj, bytes)):
                    piece = bytes(piece)  # a view into a buffer the decoder may reuse
                checker.update(piece)
                if sha is not None:
                    sha.update(piece)
                if held is not None:
                    yield held
                held = piece
        if decoder is not None:
            decoder.finish()
            for name, value in decoder.trailers.items():
                if name.startswith("x-amz-checksum-"):
                    self._trailer_checksums[name] = value
                    checker.expect(name, value)
        if limit is not None and self.received != limit:
            raise S3Error("IncompleteBody", "the request body is shorter than declared", 400)
        if sha is not None and not hmac.compare_digest(sha.hexdigest(), self._payload_hash.lower()):
            raise S3Error(
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                400,
            )
        self.checker.verify()
        if held is not None:
            yield held

    def verified_checksums(self) -> dict[str, str]:
        """The client's x-amz-checksum-* values (header or trailer), once verified."""
        return {**self._header_checksums, **self._trailer_checksums}

    async def read_all(self, limit: int) -> bytes:
        """A small control body (XML), bounded by ``limit``."""
        if self.length is not None and self.length > limit:
            raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
        buf = bytearray()
        async for piece in self.chunks():
            buf += piece
            if len(buf) > limit:
                raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
        return bytes(buf)
