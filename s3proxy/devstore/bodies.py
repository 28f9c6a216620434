"""The base of the devstore's request handlers: its configuration, the lookups every handler
needs, and the request bodies — streamed into a verified sink (object data) or read whole and
verified (small XML documents): Content-Length, aws-chunked framing and signatures,
``x-amz-content-sha256``, ``Content-MD5`` and ``x-amz-checksum-*`` (headers or trailers)."""

from __future__ import annotations

import asyncio
import hashlib

from aiohttp import web
from multidict import CIMultiDictProxy

from s3proxy.aws.awschunked import ChunkedDecoder, ChunkSigning
from s3proxy.aws.checksums import Checker
from s3proxy.aws.numbers import parse_uint
from s3proxy.aws.sigv4 import STREAMING_PAYLOAD_TRAILER, STREAMING_UNSIGNED_PAYLOAD_TRAILER
from s3proxy.devstore.errors import S3Error, no_such_bucket
from s3proxy.devstore.protocol import HEX64, MAX_OBJECT_SIZE, MAX_XML_BODY, Ctx, not_implemented
from s3proxy.devstore.records import CHUNK_SIZE, DEFAULT_MIN_PART_SIZE, ObjectInfo, Sink
from s3proxy.devstore.store import Store


class ServerBase:
    """Configuration, lookups and request bodies shared by the handler families."""

    def __init__(
        self,
        store: Store,
        credentials: dict[str, str],
        *,
        region: str = "us-east-1",
        min_part_size: int = DEFAULT_MIN_PART_SIZE,
        max_object_size: int = MAX_OBJECT_SIZE,
        virtual_host_domains: tuple[str, ...] = ("localhost",),
    ) -> None:
        self.store = store
        self.virtual_host_domains = virtual_host_domains
        self.credentials = dict(credentials)
        self.region = region
        self.min_part_size = min_part_size
        self.max_object_size = max_object_size

    async def _require_bucket(self, bucket: str) -> None:
        if not await asyncio.to_thread(self.store.bucket_exists, bucket):
            raise no_such_bucket(bucket)

    async def _require_object(self, ctx: Ctx) -> ObjectInfo:
        assert ctx.bucket is not None and ctx.key is not None
        return await asyncio.to_thread(self.store.head, ctx.bucket, ctx.key, ctx.query.get("versionId"))

    @staticmethod
    def _version_header(info: ObjectInfo) -> dict[str, str]:
        """``x-amz-version-id`` of a version written while the bucket had versioning configured."""
        return {"x-amz-version-id": info.version_id} if info.version_id is not None else {}

    async def _maybe_head(self, bucket: str, key: str) -> ObjectInfo | None:
        try:
            return await asyncio.to_thread(self.store.head, bucket, key)
        except S3Error as e:
            if e.code == "NoSuchKey":
                return None
            raise

    def _reject_sse_c(self, request: web.Request) -> None:
        if "x-amz-server-side-encryption-customer-algorithm" in request.headers:
            raise not_implemented("SSE-C")

    def _body_framing(self, ctx: Ctx) -> tuple[ChunkedDecoder | None, int | None, list[str]]:
        """(aws-chunked decoder or None, declared payload length or None, trailer names)."""
        assert ctx.auth is not None
        ph = ctx.auth.payload_hash
        h = ctx.request.headers
        if ph.startswith("STREAMING-"):
            raw = h.get("x-amz-decoded-content-length", "")
            parsed = parse_uint(raw)
            if parsed is None:
                raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
            decoded = parsed
            signing = None
            if ph != STREAMING_UNSIGNED_PAYLOAD_TRAILER:
                signing = ChunkSigning(
                    signing_key=ctx.auth.signing_key,
                    amz_date=ctx.auth.amz_date,
                    scope=ctx.auth.scope,
                    seed_signature=ctx.auth.signature,
                )
            trailer = ph in (STREAMING_PAYLOAD_TRAILER, STREAMING_UNSIGNED_PAYLOAD_TRAILER)
            names = [n.strip() for n in h.get("x-amz-trailer", "").split(",") if n.strip()] if trailer else []
            decoder = ChunkedDecoder(signing=signing, trailer=trailer, decoded_length=decoded)
            return decoder, decoded, names
        declared = ctx.request.content_length
        if declared is None and "chunked" not in h.get("Transfer-Encoding", "").lower():
            if ctx.request.body_exists:
                raise S3Error("MissingContentLength", "You must provide the Content-Length HTTP header.", 411)
            declared = 0
        return None, declared, []

    async def _receive(self, ctx: Ctx, bucket: str, max_size: int) -> Sink:
        """Stream the request payload into a new sink, verified; the caller commits or discards it."""
        assert ctx.auth is not None
        decoder, declared, trailer_names = self._body_framing(ctx)
        if declared is not None and declared > max_size:
            raise S3Error(
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed object size.",
                400,
                extra={"ProposedSize": str(declared), "MaxSizeAllowed": str(max_size)},
            )
        checker = Checker.from_headers(ctx.request.headers, trailer_names)
        ph = ctx.auth.payload_hash
        want_sha = HEX64.fullmatch(ph) is not None
        sink = await asyncio.to_thread(self.store.new_sink, bucket, sha256=want_sha)
        sink.observers.append(checker.update)
        try:
            await self._pump(ctx, decoder, declared, sink, max_size)
            if decoder is not None:
                for name, value in decoder.trailers.items():
                    if name.startswith("x-amz-checksum-"):
                        checker.expect(name, value)
            await asyncio.to_thread(sink.finish)
            if want_sha and sink.sha256 is not None and sink.sha256.hexdigest() != ph.lower():
                raise S3Error(
                    "XAmzContentSHA256Mismatch",
                    "The provided 'x-amz-content-sha256' header does not match what was computed.",
                    400,
                    extra={"ClientComputedContentSHA256": ph, "S3ComputedContentSHA256": sink.sha256.hexdigest()},
                )
            checker.verify()
        except BaseException:
            sink.discard()
            raise
        return sink

    async def _pump(
        self, ctx: Ctx, decoder: ChunkedDecoder | None, declared: int | None, sink: Sink, max_size: int
    ) -> None:
        content = ctx.request.content
        buf = bytearray()
        received = 0
        while True:
            try:
                data = await content.readany()
            except (asyncio.CancelledError, S3Error):
                raise
            except Exception as e:  # connection lost, bad framing...
                raise S3Error(
                    "IncompleteBody", f"The request body terminated unexpectedly ({type(e).__name__}).", 400
                ) from e
            if not data:
                break
            received += len(data)
            if decoder is not None:
                for piece in decoder.feed(data):
                    buf += piece
            else:
                buf += data
            if sink.size + len(buf) > max_size:
                raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed object size.", 400)
            if len(buf) >= CHUNK_SIZE:
                chunk = bytes(buf)
                buf.clear()
                await asyncio.to_thread(sink.write, chunk)
        if decoder is not None:
            decoder.finish()
        elif declared is not None and received != declared:
            raise S3Error(
                "IncompleteBody",
                "You did not provide the number of bytes specified by the Content-Length HTTP header.",
                400,
            )
        if buf:
            await asyncio.to_thread(sink.write, bytes(buf))

    async def _read_small(self, ctx: Ctx, limit: int = MAX_XML_BODY, *, body_checksums: bool = True) -> bytes:
        """A small (XML) request body, read whole and verified.

        ``body_checksums=False``: the request's ``x-amz-checksum-*`` headers
        describe something else (CompleteMultipartUpload: the whole object)
        and are not checked; ``Content-MD5`` still is.
        """
        assert ctx.auth is not None
        decoder, declared, trailer_names = self._body_framing(ctx)
        if declared is not None and declared > limit:
            raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
        check_headers: CIMultiDictProxy[str] | dict[str, str] = ctx.request.headers
        if not body_checksums:
            check_headers = {k: v for k, v in ctx.request.headers.items() if k.lower() == "content-md5"}
        checker = Checker.from_headers(check_headers, trailer_names)
        raw = bytearray()
        while True:
            try:
                data = await ctx.request.content.readany()
            except Exception as e:
                raise S3Error("IncompleteBody", "The request body terminated unexpectedly.", 400) from e
            if not data:
                break
            raw += data
            if len(raw) > limit + 65536:
                raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
        if decoder is not None:
            body = b"".join(bytes(p) for p in decoder.feed(bytes(raw)))
            decoder.finish()
            for name, value in decoder.trailers.items():
                if name.startswith("x-amz-checksum-"):
                    checker.expect(name, value)
        else:
            if declared is not None and len(raw) != declared:
                raise S3Error("IncompleteBody", "The request body terminated unexpectedly.", 400)
            body = bytes(raw)
        if len(body) > limit:
            raise S3Error("MaxMessageLengthExceeded", "Your request was too big.", 400)
        ph = ctx.auth.payload_hash
        if HEX64.fullmatch(ph) and hashlib.sha256(body).hexdigest() != ph.lower():
            raise S3Error(
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                400,
            )
        checker.update(body)
        checker.verify()
        return body
