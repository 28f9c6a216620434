"""The devstore's multipart operations: Create, UploadPart, UploadPartCopy, ListParts,
ListMultipartUploads and Complete (Abort is a one-liner in :mod:`s3proxy.devstore.routing`)."""

from __future__ import annotations

import asyncio
import re
from urllib.parse import quote

from aiohttp import web

from s3proxy.aws.numbers import parse_uint
from s3proxy.devstore import subresources
from s3proxy.devstore.bodies import ServerBase
from s3proxy.devstore.conditions import check_conditions, write_conditions
from s3proxy.devstore.errors import S3Error, invalid_argument, malformed_xml
from s3proxy.devstore.protocol import (
    MAX_OBJECT_SIZE,
    Ctx,
    int_param,
    object_headers,
    parse_copy_source,
    parse_part_number,
    parse_xml,
)
from s3proxy.devstore.records import MAX_PARTS, UploadInfo, copy_range
from s3proxy.devstore.render import OWNER_ID, OWNER_NAME, document, el, iso, owner, xml_response


class MultipartHandlers(ServerBase):
    """Multipart upload operations."""

    async def create_upload(self, ctx: Ctx) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        self._reject_sse_c(ctx.request)
        headers, metadata = object_headers(ctx.request.headers)
        tagging = ctx.request.headers.get("x-amz-tagging")
        if tagging:
            subresources.tags_from_header(tagging)
            headers["x-amz-tagging"] = tagging  # applied at Complete (store.complete_upload)
        await self._read_small(ctx, body_checksums=False)
        upload_id = await asyncio.to_thread(self.store.create_upload, ctx.bucket, ctx.key, headers, metadata)
        body = document(
            "InitiateMultipartUploadResult",
            f"{el('Bucket', ctx.bucket)}{el('Key', ctx.key)}{el('UploadId', upload_id)}",
        )
        return xml_response(body)

    async def upload_part(self, ctx: Ctx) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        upload_id = ctx.query["uploadId"]
        number = parse_part_number(ctx.query.get("partNumber", ""))
        await asyncio.to_thread(self.store.get_upload, ctx.bucket, upload_id, ctx.key)
        sink = await self._receive(ctx, ctx.bucket, MAX_OBJECT_SIZE)
        try:
            part = await asyncio.to_thread(self.store.commit_part, ctx.bucket, upload_id, ctx.key, number, sink)
        finally:
            sink.discard()
        return web.Response(status=200, headers={"ETag": f'"{part.etag}"'})

    async def upload_part_copy(self, ctx: Ctx, copy_source: str) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        request = ctx.request
        upload_id = ctx.query["uploadId"]
        number = parse_part_number(ctx.query.get("partNumber", ""))
        src_bucket, src_key, src_version = parse_copy_source(copy_source)
        await asyncio.to_thread(self.store.get_upload, ctx.bucket, upload_id, ctx.key)
        await self._read_small(ctx, 0)
        info, f = await asyncio.to_thread(self.store.open, src_bucket, src_key, src_version)
        try:
            check_conditions(request.headers, info, copy_source=True)
            start, length = 0, info.size
            range_header = request.headers.get("x-amz-copy-source-range")
            if range_header is not None:
                m = re.fullmatch(r"bytes=([0-9]{1,20})-([0-9]{1,20})", range_header.strip(" \t"))
                if m is None or int(m.group(2)) < int(m.group(1)):
                    raise invalid_argument(
                        "The x-amz-copy-source-range value must be of the form bytes=first-last where first and "
                        "last are the zero-based offsets of the first and last bytes to copy",
                        "x-amz-copy-source-range",
                        range_header,
                    )
                first, last = int(m.group(1)), int(m.group(2))
                if last >= info.size:
                    raise invalid_argument(
                        f"Range specified is not valid for source object of size: {info.size}",
                        "x-amz-copy-source-range",
                        range_header,
                    )
                start, length = first, last - first + 1
            if length > MAX_OBJECT_SIZE:
                raise S3Error("EntityTooLarge", "Your proposed upload exceeds the maximum allowed object size.", 400)
            sink = await asyncio.to_thread(self.store.new_sink, ctx.bucket)
            try:
                await asyncio.to_thread(copy_range, f, start, length, sink)
                part = await asyncio.to_thread(self.store.commit_part, ctx.bucket, upload_id, ctx.key, number, sink)
            finally:
                sink.discard()
        finally:
            f.close()
        body = document(
            "CopyPartResult",
            f"{el('LastModified', iso(part.last_modified))}{el('ETag', chr(34) + part.etag + chr(34))}",
        )
        out = {"x-amz-copy-source-version-id": info.version_id} if info.version_id is not None else None
        return xml_response(body, headers=out)

    async def list_parts(self, ctx: Ctx) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        q = ctx.query
        upload_id = q["uploadId"]
        max_parts = int_param(q, "max-parts", 1000, 1000)
        marker = int_param(q, "part-number-marker", 0, MAX_PARTS)
        upload, parts = await asyncio.to_thread(self.store.list_parts, ctx.bucket, upload_id, ctx.key)
        after = [p for p in parts if p.number > marker]
        shown = after[:max_parts]
        truncated = len(after) > len(shown)
        inner = [
            el("Bucket", ctx.bucket),
            el("Key", ctx.key),
            el("UploadId", upload_id),
            f"<Initiator><ID>{OWNER_ID}</ID><DisplayName>{OWNER_NAME}</DisplayName></Initiator>",
            owner(),
            "<StorageClass>STANDARD</StorageClass>",
            el("PartNumberMarker", marker),
            el("NextPartNumberMarker", shown[-1].number if shown else marker),
            el("MaxParts", max_parts),
            el("IsTruncated", "true" if truncated else "false"),
        ]
        inner.extend(
            f"<Part>{el('PartNumber', p.number)}{el('LastModified', iso(p.last_modified))}"
            f"{el('ETag', chr(34) + p.etag + chr(34))}{el('Size', p.size)}</Part>"
            for p in shown
        )
        return xml_response(document("ListPartsResult", "".join(inner)))

    async def list_uploads(self, ctx: Ctx) -> web.Response:
        assert ctx.bucket is not None
        q = ctx.query
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        key_marker = q.get("key-marker", "")
        id_marker = q.get("upload-id-marker", "")
        encoding = q.get("encoding-type")
        if encoding is not None and encoding.lower() != "url":
            raise invalid_argument("Invalid Encoding Method specified in Request", "encoding-type", encoding)
        max_uploads = int_param(q, "max-uploads", 1000, 1000)
        uploads = await asyncio.to_thread(self.store.list_uploads, ctx.bucket)

        def enc(value: str) -> str:
            return quote(value, safe="/") if encoding is not None else value

        def after_marker(u: UploadInfo) -> bool:
            if not key_marker:
                return True
            if u.key != key_marker:
                return u.key > key_marker
            return bool(id_marker) and u.upload_id > id_marker

        shown: list[UploadInfo] = []
        prefixes: list[str] = []
        truncated = False
        next_key = next_id = ""
        for u in uploads:
            if not u.key.startswith(prefix) or not after_marker(u):
                continue
            common = None
            if delimiter:
                pos = u.key.find(delimiter, len(prefix))
                if pos >= 0:
                    common = u.key[: pos + len(delimiter)]
            if common is not None and prefixes and prefixes[-1] == common:
                continue
            if len(shown) + len(prefixes) >= max_uploads:
                truncated = True
                break
            if common is not None:
                prefixes.append(common)
                next_key, next_id = common, ""
            else:
                shown.append(u)
                next_key, next_id = u.key, u.upload_id
        inner = [
            el("Bucket", ctx.bucket),
            el("KeyMarker", enc(key_marker)),
            el("UploadIdMarker", id_marker),
            el("NextKeyMarker", enc(next_key) if truncated else ""),
            el("NextUploadIdMarker", next_id if truncated else ""),
            el("Prefix", enc(prefix)),
        ]
        if delimiter:
            inner.append(el("Delimiter", enc(delimiter)))
        if encoding is not None:
            inner.append(el("EncodingType", "url"))
        inner.append(el("MaxUploads", max_uploads))
        inner.append(el("IsTruncated", "true" if truncated else "false"))
        inner.extend(
            f"<Upload>{el('Key', enc(u.key))}{el('UploadId', u.upload_id)}"
            f"<Initiator><ID>{OWNER_ID}</ID><DisplayName>{OWNER_NAME}</DisplayName></Initiator>"
            f"{owner()}<StorageClass>STANDARD</StorageClass>{el('Initiated', iso(u.initiated))}</Upload>"
            for u in shown
        )
        inner.extend(f"<CommonPrefixes>{el('Prefix', enc(p))}</CommonPrefixes>" for p in prefixes)
        return xml_response(document("ListMultipartUploadsResult", "".join(inner)))

    async def complete_upload(self, ctx: Ctx) -> web.Response:
        assert ctx.bucket is not None and ctx.key is not None
        upload_id = ctx.query["uploadId"]
        precondition = write_conditions(ctx.request, ctx.key)
        await asyncio.to_thread(self.store.get_upload, ctx.bucket, upload_id, ctx.key)
        root = parse_xml(await self._read_small(ctx, body_checksums=False))
        if root.tag != "CompleteMultipartUpload":
            raise malformed_xml()
        requested: list[tuple[int, str]] = []
        for part in root.findall("Part"):
            number_text = (part.findtext("PartNumber") or "").strip()
            etag = part.findtext("ETag")
            number = parse_uint(number_text, max_digits=6)
            if number is None or etag is None:
                raise malformed_xml()
            requested.append((number, etag))
        info = await asyncio.to_thread(
            self.store.complete_upload,
            ctx.bucket,
            upload_id,
            ctx.key,
            requested,
            min_part_size=self.min_part_size,
            precondition=precondition,
        )
        host = ctx.request.headers.get("Host", "localhost")
        location = f"http://{host}/{ctx.bucket}/{quote(ctx.key, safe='/')}"
        body = document(
            "CompleteMultipartUploadResult",
            f"{el('Location', location)}{el('Bucket', ctx.bucket)}{el('Key', ctx.key)}"
            f"{el('ETag', chr(34) + info.etag + chr(34))}",
        )
        return xml_response(body, headers=self._version_header(info))
