"""The devstore's service and bucket operations: ListBuckets, CreateBucket, ListObjects(V2),
ListObjectVersions and DeleteObjects (bucket configurations: :mod:`s3proxy.devstore.routing`
and :mod:`s3proxy.devstore.subresources`)."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from aiohttp import web

from s3proxy.devstore import subresources
from s3proxy.devstore.bodies import ServerBase
from s3proxy.devstore.errors import S3Error, invalid_argument, malformed_xml
from s3proxy.devstore.protocol import MAX_DELETE_KEYS, Ctx, check_key, decode_token, encode_token, int_param, parse_xml
from s3proxy.devstore.render import document, el, iso, owner, xml_response


class BucketHandlers(ServerBase):
    """Service and bucket operations."""

    async def list_buckets(self, ctx: Ctx) -> web.Response:
        buckets = await asyncio.to_thread(self.store.list_buckets)
        inner = "".join(
            f"<Bucket>{el('Name', name)}{el('CreationDate', iso(created))}</Bucket>" for name, created in buckets
        )
        return xml_response(document("ListAllMyBucketsResult", f"{owner()}<Buckets>{inner}</Buckets>"))

    async def create_bucket(self, ctx: Ctx) -> web.Response:
        assert ctx.bucket is not None
        body = await self._read_small(ctx)
        if body.strip():
            root = parse_xml(body)
            if root.tag != "CreateBucketConfiguration":
                raise malformed_xml()
        await asyncio.to_thread(self.store.create_bucket, ctx.bucket)
        return web.Response(status=200, headers={"Location": "/" + ctx.bucket})

    async def list_objects(self, ctx: Ctx, *, v2: bool) -> web.Response:
        assert ctx.bucket is not None
        q = ctx.query
        prefix = q.get("prefix", "")
        delimiter = q.get("delimiter", "")
        encoding = q.get("encoding-type")
        if encoding is not None and encoding.lower() != "url":
            raise invalid_argument("Invalid Encoding Method specified in Request", "encoding-type", encoding)
        max_keys = int_param(q, "max-keys", 1000, 1000)
        token = q.get("continuation-token") or None
        start_after = q.get("start-after", "")
        if v2:
            marker = decode_token(token) if token is not None else start_after
        else:
            marker = q.get("marker", "")
        result = await asyncio.to_thread(
            self.store.list_objects, ctx.bucket, prefix=prefix, delimiter=delimiter, marker=marker, max_keys=max_keys
        )

        def enc(value: str) -> str:
            return quote(value, safe="/") if encoding is not None else value

        fetch_owner = not v2 or q.get("fetch-owner", "").lower() == "true"
        contents = "".join(
            "<Contents>"
            f"{el('Key', enc(o.key))}{el('LastModified', iso(o.last_modified))}"
            f"{el('ETag', chr(34) + o.etag + chr(34))}{el('Size', o.size)}"
            f"<StorageClass>STANDARD</StorageClass>{owner() if fetch_owner else ''}"
            "</Contents>"
            for o in result.contents
        )
        prefixes = "".join(
            f"<CommonPrefixes>{el('Prefix', enc(p))}</CommonPrefixes>" for p in result.common_prefixes
        )
        # V1 echoes Prefix unencoded: botocore decodes only Delimiter, Marker and NextMarker there.
        parts = [el("Name", ctx.bucket), el("Prefix", enc(prefix) if v2 else prefix)]
        if v2:
            if delimiter:
                parts.append(el("Delimiter", enc(delimiter)))
            parts.append(el("MaxKeys", max_keys))
            if encoding is not None:
                parts.append(el("EncodingType", "url"))
            parts.append(el("KeyCount", len(result.contents) + len(result.common_prefixes)))
            parts.append(el("IsTruncated", "true" if result.truncated else "false"))
            if token is not None:
                parts.append(el("ContinuationToken", token))
            if result.truncated and result.next_marker is not None:
                parts.append(el("NextContinuationToken", encode_token(result.next_marker)))
            if start_after:
                parts.append(el("StartAfter", enc(start_after)))
            tag = "ListBucketResult"
        else:
            parts.append(el("Marker", enc(marker)))
            parts.append(el("MaxKeys", max_keys))
            if delimiter:
                parts.append(el("Delimiter", enc(delimiter)))
            if encoding is not None:
                parts.append(el("EncodingType", "url"))
            parts.append(el("IsTruncated", "true" if result.truncated else "false"))
            if result.truncated and result.next_marker is not None:
                parts.append(el("NextMarker", enc(result.next_marker)))
            tag = "ListBucketResult"
        return xml_response(document(tag, "".join(parts) + contents + prefixes))

    async def list_versions(self, ctx: Ctx) -> web.Response:
        assert ctx.bucket is not None
        q = ctx.query
        encoding = q.get("encoding-type")
        if encoding is not None and encoding.lower() != "url":
            raise invalid_argument("Invalid Encoding Method specified in Request", "encoding-type", encoding)
        max_keys = int_param(q, "max-keys", 1000, 1000)
        version_marker = q.get("version-id-marker", "")
        if version_marker and not q.get("key-marker"):
            raise invalid_argument("A version-id marker cannot be specified without a key marker.",
                                   "version-id-marker", version_marker)
        entries, prefixes, truncated, nxt = await asyncio.to_thread(
            self.store.list_versions, ctx.bucket, prefix=q.get("prefix", ""), delimiter=q.get("delimiter", ""),
            key_marker=q.get("key-marker", ""), version_marker=version_marker, max_keys=max_keys,
        )
        return xml_response(
            subresources.versions_document(ctx.bucket, q, max_keys, entries, prefixes, truncated, nxt)
        )

    async def delete_objects(self, ctx: Ctx) -> web.Response:
        assert ctx.bucket is not None
        bucket = ctx.bucket
        await self._require_bucket(bucket)
        root = parse_xml(await self._read_small(ctx))
        if root.tag != "Delete":
            raise malformed_xml()
        quiet = (root.findtext("Quiet") or "").strip().lower() == "true"
        objects = root.findall("Object")
        if not objects or len(objects) > MAX_DELETE_KEYS:
            raise malformed_xml()
        keys = []
        for obj in objects:
            key = obj.findtext("Key")
            if key is None:
                raise malformed_xml()
            keys.append((key, obj.findtext("VersionId")))

        def run() -> list[str]:
            out = []
            for key, version in keys:
                try:
                    if not key:
                        raise S3Error("InvalidArgument", "Invalid key", 400)
                    check_key(key)
                    gone = self.store.delete_object(bucket, key, version or None)
                except S3Error as e:
                    out.append(
                        f"<Error>{el('Key', key)}{el('VersionId', version or None)}"
                        f"{el('Code', e.code)}{el('Message', e.message)}</Error>"
                    )
                    continue
                if not quiet:
                    marker = ""
                    if gone is not None and gone.delete_marker:
                        marker = f"<DeleteMarker>true</DeleteMarker>{el('DeleteMarkerVersionId', gone.vid)}"
                    out.append(f"<Deleted>{el('Key', key)}{el('VersionId', version or None)}{marker}</Deleted>")
            return out

        results = await asyncio.to_thread(run)
        return xml_response(document("DeleteResult", "".join(results)))
