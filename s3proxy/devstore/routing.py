"""Which operation a signed request is: by method, bucket, key and subresource (the first query
parameter that names one), as S3 routes them; bucket configurations are answered here."""

from __future__ import annotations

import asyncio

from aiohttp import web

from s3proxy.aws.sigv4 import EMPTY_SHA256
from s3proxy.devstore import subresources
from s3proxy.devstore.bucket_api import BucketHandlers
from s3proxy.devstore.errors import S3Error
from s3proxy.devstore.multipart_api import MultipartHandlers
from s3proxy.devstore.object_api import ObjectHandlers
from s3proxy.devstore.protocol import (
    BUCKET_SUBRESOURCES,
    FIXED_CONFIG,
    HEX64,
    NO_CONFIG,
    OBJECT_SUBRESOURCES,
    Ctx,
    acl_document,
    check_key,
    method_not_allowed,
    not_implemented,
)
from s3proxy.devstore.render import document, http_date, x, xml_response


class Router(BucketHandlers, ObjectHandlers, MultipartHandlers):
    """Dispatch of an authenticated request to its handler."""

    async def _dispatch(self, ctx: Ctx) -> web.StreamResponse:
        if ctx.method in ("GET", "HEAD", "DELETE"):
            self._check_empty_body(ctx)
        if ctx.bucket is None:
            if ctx.method == "GET":
                return await self.list_buckets(ctx)
            raise method_not_allowed()
        if ctx.key is None:
            return await self._bucket_op(ctx)
        check_key(ctx.key)
        return await self._object_op(ctx)

    def _check_empty_body(self, ctx: Ctx) -> None:
        assert ctx.auth is not None
        ph = ctx.auth.payload_hash
        if (
            HEX64.fullmatch(ph)
            and ph.lower() != EMPTY_SHA256
            and not ctx.request.body_exists
        ):
            raise S3Error(
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
                400,
                extra={"ClientComputedContentSHA256": ph, "S3ComputedContentSHA256": EMPTY_SHA256},
            )

    async def _bucket_op(self, ctx: Ctx) -> web.StreamResponse:
        q = ctx.query
        m = ctx.method
        bucket = ctx.bucket
        assert bucket is not None
        sub = next((name for name in q if name in BUCKET_SUBRESOURCES), None)
        if m == "GET":
            if sub is None:
                return await self.list_objects(ctx, v2=q.get("list-type") == "2")
            await self._require_bucket(bucket)
            if sub == "location":
                region = "" if self.region == "us-east-1" else self.region
                return xml_response(document("LocationConstraint", x(region)))
            if sub == "uploads":
                return await self.list_uploads(ctx)
            if sub == "acl":
                return xml_response(acl_document())
            if sub == "versions":
                return await self.list_versions(ctx)
            if sub == "versioning":
                status = await asyncio.to_thread(self.store.get_versioning, bucket)
                return xml_response(subresources.versioning_document(status))
            if sub in subresources.STORED_CONFIGS:
                stored = await asyncio.to_thread(self.store.get_config, bucket, sub)
                if stored is not None:
                    ctype = "application/json" if sub == "policy" else "application/xml"
                    return web.Response(body=stored, content_type=ctype)
            if sub in FIXED_CONFIG:
                return xml_response(document(FIXED_CONFIG[sub], ""))
            if sub == "requestPayment":
                return xml_response(document("RequestPaymentConfiguration", "<Payer>BucketOwner</Payer>"))
            if sub in NO_CONFIG:
                code, message = NO_CONFIG[sub]
                raise S3Error(code, message, 404, extra={"BucketName": bucket})
            raise not_implemented(sub)
        if m == "HEAD":
            await self._require_bucket(bucket)
            return web.Response(status=200, headers={"x-amz-bucket-region": self.region})
        if m == "PUT":
            if sub is None:
                return await self.create_bucket(ctx)
            await self._require_bucket(bucket)
            if sub == "acl":
                await self._read_small(ctx)
                return web.Response(status=200)
            if sub == "versioning":
                status = subresources.parse_versioning(await self._read_small(ctx))
                await asyncio.to_thread(self.store.set_versioning, bucket, status)
                return web.Response(status=200)
            if sub in subresources.STORED_CONFIGS:
                body = await self._read_small(ctx, 64 << 10)
                subresources.check_config(sub, body)
                await asyncio.to_thread(self.store.put_config, bucket, sub, body)
                return web.Response(status=204 if sub in ("policy", "tagging") else 200)
            raise not_implemented(sub)
        if m == "DELETE":
            if sub is None:
                await asyncio.to_thread(self.store.delete_bucket, bucket)
                return web.Response(status=204)
            await self._require_bucket(bucket)
            if sub in subresources.STORED_CONFIGS:
                await asyncio.to_thread(self.store.delete_config, bucket, sub)
                return web.Response(status=204)
            if sub in NO_CONFIG:
                return web.Response(status=204)
            raise not_implemented(sub)
        if m == "POST":
            if sub == "delete":
                return await self.delete_objects(ctx)
            raise not_implemented("POST " + (sub or "object upload"))
        raise method_not_allowed()

    async def _object_op(self, ctx: Ctx) -> web.StreamResponse:
        q = ctx.query
        m = ctx.method
        sub = next((name for name in q if name in OBJECT_SUBRESOURCES), None)
        copy_source = ctx.request.headers.get("x-amz-copy-source")
        if m == "PUT":
            if sub == "uploadId":
                if copy_source is not None:
                    return await self.upload_part_copy(ctx, copy_source)
                return await self.upload_part(ctx)
            if sub == "acl":
                await self._require_object(ctx)
                await self._read_small(ctx)
                return web.Response(status=200)
            if sub == "tagging":
                tags = subresources.tags_from_xml(await self._read_small(ctx))
                return await self._set_tags(ctx, tags, 200)
            if sub is not None:
                raise not_implemented(sub)
            if copy_source is not None:
                return await self.copy_object(ctx, copy_source)
            return await self.put_object(ctx)
        if m in ("GET", "HEAD"):
            if sub is None:
                return await self.get_object(ctx, head=m == "HEAD")
            if m == "GET" and sub == "uploadId":
                return await self.list_parts(ctx)
            if m == "GET" and sub == "tagging":
                info = await self._require_object(ctx)
                return xml_response(subresources.tagging_document(info.tags), headers=self._version_header(info))
            if m == "GET" and sub == "attributes":
                info = await self._require_object(ctx)
                body = subresources.attributes_document(info, ctx.request.headers.get("x-amz-object-attributes"))
                headers = {"Last-Modified": http_date(info.last_modified), **self._version_header(info)}
                return xml_response(body, headers=headers)
            if m == "GET" and sub == "acl":
                await self._require_object(ctx)
                return xml_response(acl_document())
            raise not_implemented(sub)
        if m == "DELETE":
            if sub == "uploadId":
                assert ctx.bucket is not None and ctx.key is not None
                await asyncio.to_thread(self.store.abort_upload, ctx.bucket, q["uploadId"], ctx.key)
                return web.Response(status=204)
            if sub == "tagging":
                return await self._set_tags(ctx, {}, 204)
            if sub is not None:
                raise not_implemented(sub)
            return await self.delete_object(ctx)
        if m == "POST":
            if sub == "uploads":
                return await self.create_upload(ctx)
            if sub == "uploadId":
                return await self.complete_upload(ctx)
            raise not_implemented("POST " + (sub or "object"))
        raise method_not_allowed()
