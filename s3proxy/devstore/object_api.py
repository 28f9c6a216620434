"""The devstore's object operations: GetObject / HeadObject (ranges, ``partNumber``,
conditions, ``response-*`` overrides), PutObject, CopyObject, DeleteObject and object tags."""

from __future__ import annotations

import asyncio
import logging
from typing import IO

from aiohttp import web
from multidict import CIMultiDict

from s3proxy.devstore import subresources
from s3proxy.devstore.bodies import ServerBase
from s3proxy.devstore.conditions import check_conditions, parse_range, write_conditions
from s3proxy.devstore.errors import S3Error, invalid_argument
from s3proxy.devstore.protocol import (
    MAX_OBJECT_SIZE,
    RESPONSE_OVERRIDES,
    STORED_HEADERS,
    Ctx,
    clean_header,
    object_headers,
    parse_copy_source,
    parse_part_number,
)
from s3proxy.devstore.records import CHUNK_SIZE, ObjectInfo, copy_range
from s3proxy.devstore.render import document, el, http_date, iso, xml_response

log = logging.getLogger("s3proxy.devstore")


class ObjectHandlers(ServerBase):
    """Object operations."""

    async def _set_tags(self, ctx: Ctx, tags: dict[str, str], status: int) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        info = await asyncio.to_thread(self.store.set_tags, ctx.bucket, ctx.key, ctx.query.get("versionId"), tags)
        return web.Response(status=status, headers=self._version_header(info))

    async def delete_object(self, ctx: Ctx) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        version = ctx.query.get("versionId")
        gone = await asyncio.to_thread(self.store.delete_object, ctx.bucket, ctx.key, version)
        headers = {}
        if gone is not None and (gone.version_id is not None or version is not None or gone.delete_marker):
            headers["x-amz-version-id"] = gone.vid
            if gone.delete_marker:
                headers["x-amz-delete-marker"] = "true"
        return web.Response(status=204, headers=headers)

    def _response_headers(self, info: ObjectInfo, query: dict[str, str]) -> CIMultiDict[str]:
        h: CIMultiDict[str] = CIMultiDict()
        h["ETag"] = f'"{info.etag}"'
        h["Last-Modified"] = http_date(info.last_modified)
        h["Accept-Ranges"] = "bytes"
        h["Content-Type"] = info.headers.get("content-type", "binary/octet-stream")
        for name, spelled in STORED_HEADERS.items():
            if name != "content-type" and name in info.headers:
                h[spelled] = info.headers[name]
        for name, value in info.metadata.items():
            h[name] = value
        h.update(self._version_header(info))
        if info.tags:
            h["x-amz-tagging-count"] = str(len(info.tags))
        for param, spelled in RESPONSE_OVERRIDES.items():
            if param in query:
                h[spelled] = clean_header(query[param])
        return h

    async def get_object(self, ctx: Ctx, *, head: bool) -> web.StreamResponse:
        assert ctx.bucket is not None and ctx.key is not None
        q = ctx.query
        request = ctx.request
        range_header = request.headers.get("Range")
        part_param = q.get("partNumber")
        part_number = None
        if part_param is not None:
            if range_header is not None:
                raise S3Error("InvalidRequest", "Cannot specify both Range header and partNumber query parameter", 400)
            part_number = parse_part_number(part_param)
        version = q.get("versionId")
        f: IO[bytes] | None = None
        if head:
            info = await asyncio.to_thread(self.store.head, ctx.bucket, ctx.key, version)
        else:
            info, f = await asyncio.to_thread(self.store.open, ctx.bucket, ctx.key, version)
        try:
            headers = self._response_headers(info, q)
            if check_conditions(request.headers, info):
                return web.Response(
                    status=304, headers={"ETag": headers["ETag"], "Last-Modified": headers["Last-Modified"],
                                         **self._version_header(info)},
                )
            status = 200
            start, length = 0, info.size
            if part_number is not None:
                span = info.part_range(part_number)
                if span is None:
                    raise S3Error("InvalidPartNumber", "The requested partnumber is not satisfiable", 416)
                start, length = span
                status = 206
                if info.parts:
                    headers["x-amz-mp-parts-count"] = str(len(info.parts))
                if length:
                    headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{info.size}"
            elif range_header is not None:
                span = parse_range(range_header, info.size)
                if span is not None:
                    start, length = span
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{info.size}"
            headers["Content-Length"] = str(length)
            if head:
                return web.Response(status=status, headers=headers)
            assert f is not None
            response = web.StreamResponse(status=status, headers=headers)
            await response.prepare(request)
            try:
                await self._send_file(f, start, length, response)
                await response.write_eof()
            except ConnectionResetError:
                log.debug("devstore: client went away during GET %s", ctx.resource)
            return response
        finally:
            if f is not None:
                f.close()

    async def _send_file(self, f: IO[bytes], start: int, length: int, response: web.StreamResponse) -> None:
        await asyncio.to_thread(f.seek, start)
        remaining = length
        while remaining > 0:
            chunk = await asyncio.to_thread(f.read, min(CHUNK_SIZE, remaining))
            if not chunk:
                raise ConnectionError("object data file shorter than recorded")
            await response.write(chunk)
            remaining -= len(chunk)

    async def put_object(self, ctx: Ctx) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        request = ctx.request
        self._reject_sse_c(request)
        headers, metadata = object_headers(request.headers)
        tags = subresources.tags_from_header(request.headers.get("x-amz-tagging"))
        precondition = write_conditions(request, ctx.key)
        if precondition is not None:  # fail fast, checked again at commit
            existing = await self._maybe_head(ctx.bucket, ctx.key)
            precondition(existing)
        sink = await self._receive(ctx, ctx.bucket, self.max_object_size)
        try:
            info = await asyncio.to_thread(
                self.store.commit_object,
                ctx.bucket,
                ctx.key,
                sink,
                headers=headers,
                metadata=metadata,
                precondition=precondition,
                tags=tags,
            )
        finally:
            sink.discard()
        return web.Response(status=200, headers={"ETag": f'"{info.etag}"', **self._version_header(info)})

    async def copy_object(self, ctx: Ctx, copy_source: str) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        request = ctx.request
        self._reject_sse_c(request)
        src_bucket, src_key, src_version = parse_copy_source(copy_source)
        directive = request.headers.get("x-amz-metadata-directive", "COPY").upper()
        tag_directive = request.headers.get("x-amz-tagging-directive", "COPY").upper()
        if tag_directive not in ("COPY", "REPLACE"):
            raise invalid_argument("Unknown tagging directive.", "x-amz-tagging-directive", tag_directive)
        if directive not in ("COPY", "REPLACE"):
            raise invalid_argument("Unknown metadata directive.", "x-amz-metadata-directive", directive)
        precondition = write_conditions(request, ctx.key)
        await self._read_small(ctx, 0)
        info, f = await asyncio.to_thread(self.store.open, src_bucket, src_key, src_version)
        try:
            check_conditions(request.headers, info, copy_source=True)
            current = await self._maybe_head(ctx.bucket, ctx.key) if src_version is not None else info
            if (
                (src_bucket, src_key) == (ctx.bucket, ctx.key)
                and directive == "COPY"
                and (current is not None and current.vid == info.vid)  # copying an older version restores it
            ):
                raise S3Error(
                    "InvalidRequest",
                    "This copy request is illegal because it is trying to copy an object to itself without "
                    "changing the object's metadata, storage class, website redirect location or encryption "
                    "attributes.",
                    400,
                )
            if info.size > MAX_OBJECT_SIZE:
                raise S3Error(
                    "InvalidRequest",
                    "The specified copy source is larger than the maximum allowable size for a copy source: "
                    f"{MAX_OBJECT_SIZE}",
                    400,
                )
            if directive == "REPLACE":
                headers, metadata = object_headers(request.headers)
            else:
                headers, metadata = dict(info.headers), dict(info.metadata)
            if tag_directive == "REPLACE":
                tags = subresources.tags_from_header(request.headers.get("x-amz-tagging"))
            else:
                tags = dict(info.tags)
            sink = await asyncio.to_thread(self.store.new_sink, ctx.bucket)
            try:
                await asyncio.to_thread(copy_range, f, 0, info.size, sink)
                new = await asyncio.to_thread(
                    self.store.commit_object,
                    ctx.bucket,
                    ctx.key,
                    sink,
                    headers=headers,
                    metadata=metadata,
                    precondition=precondition,
                    tags=tags,
                )
            finally:
                sink.discard()
        finally:
            f.close()
        body = document(
            "CopyObjectResult", f"{el('LastModified', iso(new.last_modified))}{el('ETag', chr(34) + new.etag + chr(34))}"
        )
        out = self._version_header(new)
        if info.version_id is not None:
            out["x-amz-copy-source-version-id"] = info.version_id
        return xml_response(body, headers=out)
