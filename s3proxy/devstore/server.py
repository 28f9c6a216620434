"""A small S3-compatible server over a data directory (aiohttp): ``make dev``'s store and the
test suite's AWS-strict backend (``S3PROXY_TEST_BACKEND=strict``).

Path-style addressing (``http://host:port/<bucket>/<key>``), plus
virtual-hosted style for ``Host: <bucket>.localhost``.  Every
request must be SigV4-signed (header or presigned URL, never both: two
authentication mechanisms are ``400 InvalidArgument`` as on AWS) with one of the
configured access keys; payloads may be ``UNSIGNED-PAYLOAD``, a hex SHA-256
(verified) or aws-chunked (signed or unsigned, with trailing checksums).
``Content-MD5`` and ``x-amz-checksum-*`` (headers or trailers) are verified;
no checksum is ever returned.  Only ``OPTIONS`` (CORS preflight) is unsigned.

Semantics worth knowing (each as AWS documents it):

* An upload id belongs to its bucket and key; parts other than the last must be
  at least ``min_part_size`` (5 MiB unless configured smaller for tests);
  Complete checks ``InvalidPart``/``InvalidPartOrder``/``EntityTooSmall``.
* Multipart objects remember their part sizes; ``partNumber=i`` on
  GET/HEAD addresses the i-th part *by position* among the parts that were
  completed (so completing parts 1, 3 and 7 gives parts 1, 2 and 3).  An
  object not uploaded in parts has exactly one part, the whole object.
* CopyObject makes a single-part object (ETag = MD5 of the data), as S3 does
  for copies made with one CopyObject call.
* Conditional requests: If-Match / If-None-Match / If-(Un)Modified-Since on
  GET and HEAD, ``x-amz-copy-source-if-*``, If-None-Match: * and If-Match on
  PutObject, CopyObject and CompleteMultipartUpload.
* Versioning (Enabled / Suspended), version ids, delete markers,
  ListObjectVersions; object tags; bucket CORS (applied to preflights and to
  requests carrying ``Origin``), policy, lifecycle, tagging, encryption,
  website, public-access-block and ownership documents are kept as sent;
  GetObjectAttributes (ETag, ObjectSize, StorageClass, ObjectParts count).
  ACL writes are accepted and ignored; other writes answer ``NotImplemented``.

Module map: :mod:`~s3proxy.devstore.routing` (operation dispatch),
:mod:`~s3proxy.devstore.bucket_api`, :mod:`~s3proxy.devstore.object_api`,
:mod:`~s3proxy.devstore.multipart_api` (the operations), :mod:`~s3proxy.devstore.bodies`
(request bodies), :mod:`~s3proxy.devstore.conditions`, :mod:`~s3proxy.devstore.protocol`,
:mod:`~s3proxy.devstore.subresources` and :mod:`~s3proxy.devstore.render` (documents);
:mod:`~s3proxy.devstore.store` keeps the data.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, unquote_to_bytes

from aiohttp import web

from s3proxy.aws.awschunked import AwsChunkedError
from s3proxy.aws.checksums import ChecksumError
from s3proxy.aws.sigv4 import RequestView, SigV4Error, verify_request
from s3proxy.devstore import subresources
from s3proxy.devstore.errors import S3Error
from s3proxy.devstore.protocol import Ctx
from s3proxy.devstore.records import DEFAULT_MIN_PART_SIZE
from s3proxy.devstore.render import el, xml_response
from s3proxy.devstore.routing import Router
from s3proxy.devstore.store import Store

__all__ = ["DEVSTORE_KEY", "DevStoreServer", "build_devstore_app", "start_devstore"]

log = logging.getLogger("s3proxy.devstore")

_REQUEST_ID: Any = (
    web.RequestKey("s3proxy.devstore.request_id", str) if hasattr(web, "RequestKey") else "s3proxy.devstore.request_id"
)
_BUCKET: Any = web.RequestKey("s3proxy.devstore.bucket", str) if hasattr(web, "RequestKey") else "s3proxy.devstore.bucket"


class DevStoreServer(Router):
    """Request handling; one per application (the plumbing: request ids, CORS, errors, authentication)."""

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        rid = request.get(_REQUEST_ID) or secrets.token_hex(8).upper()
        response.headers.setdefault("x-amz-request-id", rid)
        response.headers.setdefault("x-amz-id-2", base64.b64encode(rid.encode() * 3).decode())
        response.headers["Server"] = "s3proxy-devstore"
        origin = request.headers.get("Origin")
        bucket = request.get(_BUCKET)
        if origin and bucket and request.method != "OPTIONS" and "Access-Control-Allow-Origin" not in response.headers:
            # S3 adds the matching CORS rule's headers to a normal request that carries Origin.
            try:
                config = self.store.get_config(bucket, "cors")
            except S3Error:
                config = None
            extra = subresources.cors_headers(config, origin, request.method, []) if config else None
            response.headers.update(extra or {})

    async def _preflight(self, ctx: Ctx) -> web.Response:
        """OPTIONS: unauthenticated, answered from the bucket's CORS configuration (OPTIONS object
        API reference: 400 without Origin or Access-Control-Request-Method, 403 when no rule allows)."""
        h = ctx.request.headers
        origin, method = h.get("Origin"), h.get("Access-Control-Request-Method")
        if not origin or not method:
            raise S3Error("BadRequest", "Insufficient information. Origin request header needed.", 400)
        wanted = [v.strip() for v in h.get("Access-Control-Request-Headers", "").split(",") if v.strip()]
        config = await asyncio.to_thread(self.store.get_config, ctx.bucket, "cors") if ctx.bucket else None
        headers = subresources.cors_headers(config, origin, method, wanted) if config else None
        if headers is None:
            raise S3Error(
                "AccessForbidden",
                "CORSResponse: This CORS request is not allowed. This is usually because the evalution of Origin, "
                "request method / Access-Control-Request-Method or Access-Control-Request-Headers are not "
                "whitelisted by the resource's CORS spec.",
                403,
                extra={"Method": method, "ResourceType": "OBJECT" if ctx.key else "BUCKET"},
            )
        return web.Response(status=200, headers=headers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rid = secrets.token_hex(8).upper()
        request[_REQUEST_ID] = rid
        resource = "/"
        try:
            ctx = self._context(request, rid)
            resource = ctx.resource
            if ctx.bucket:
                request[_BUCKET] = ctx.bucket
            if ctx.method == "OPTIONS":
                return await self._preflight(ctx)
            self._authenticate(ctx)
            return await self._dispatch(ctx)
        except S3Error as e:
            return self._error(e, resource, rid)
        except (SigV4Error, AwsChunkedError, ChecksumError) as e:
            details = dict(getattr(e, "details", ()))
            return self._error(S3Error(e.code, e.message, e.status, extra=details), resource, rid)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("devstore: internal error on %s %s", request.method, request.raw_path)
            return self._error(
                S3Error("InternalError", "We encountered an internal error. Please try again.", 500), resource, rid
            )

    def _error(self, e: S3Error, resource: str, rid: str) -> web.Response:
        extra = "".join(el(k, v) for k, v in e.extra.items())
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
            f"{el('Code', e.code)}{el('Message', e.message)}{extra}"
            f"{el('Resource', resource)}{el('RequestId', rid)}</Error>"
        ).encode()
        return xml_response(body, e.status, e.headers or None)

    def _context(self, request: web.Request, rid: str) -> Ctx:
        target = request.raw_path
        if target.startswith(("http://", "https://")):  # absolute-form request target
            scheme_end = target.index("//") + 2
            slash = target.find("/", scheme_end)
            target = target[slash:] if slash >= 0 else "/"
        raw_path, _, raw_query = target.partition("?")
        raw_path = raw_path.split("#", 1)[0]
        try:
            path = unquote_to_bytes(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            raise S3Error("InvalidURI", "Couldn't parse the specified URI.", 400) from None
        if not path.startswith("/"):
            raise S3Error("InvalidURI", "Couldn't parse the specified URI.", 400)
        bucket, sep, key = path[1:].partition("/")
        vhost_bucket = self._virtual_host_bucket(request.headers.get("Host", ""))
        if vhost_bucket is not None:
            bucket, sep, key = vhost_bucket, "/", path[1:]
        query: dict[str, str] = {}
        for part in raw_query.split("&"):
            if not part:
                continue
            name, _, value = part.partition("=")
            query.setdefault(unquote_plus(name), unquote_plus(value))
        return Ctx(
            request=request,
            request_id=rid,
            method=request.method.upper(),
            raw_path=raw_path,
            raw_query=raw_query,
            resource=path,
            bucket=bucket or None,
            key=key if (bucket and sep and key) else None,
            query=query,
        )

    def _virtual_host_bucket(self, host: str) -> str | None:
        """The bucket of a virtual-hosted-style request (``<bucket>.<domain>[:port]``), else None."""
        if not self.virtual_host_domains:
            return None
        name = host.strip().lower()
        if name.startswith("["):
            return None
        name = name.rsplit(":", 1)[0] if ":" in name else name
        for domain in self.virtual_host_domains:
            suffix = "." + domain.lower().strip(".")
            if name.endswith(suffix) and len(name) > len(suffix):
                return name[: -len(suffix)]
        return None

    def _authenticate(self, ctx: Ctx) -> None:
        view = RequestView(ctx.request.method, ctx.raw_path, ctx.raw_query, list(ctx.request.headers.items()))
        result = verify_request(view, self.credentials.get, datetime.now(UTC))
        if result is None:
            raise S3Error("AccessDenied", "Access Denied", 403)
        ctx.auth = result


# ---------------------------------------------------------------------------
# Public entry points

DEVSTORE_KEY = web.AppKey("s3proxy.devstore", DevStoreServer)


def build_devstore_app(
    root: Path,
    credentials: dict[str, str],
    *,
    region: str = "us-east-1",
    min_part_size: int = DEFAULT_MIN_PART_SIZE,
    fsync: bool = False,
    virtual_host_domains: tuple[str, ...] = ("localhost",),
) -> web.Application:
    """An aiohttp application serving the S3 API over the data directory ``root``.

    ``credentials`` maps access key ids to secret keys; every request must be
    signed with one of them.  ``min_part_size`` is the smallest size allowed
    for a multipart part other than the last (S3: 5 MiB).  ``fsync`` makes
    every commit durable (slower).  Requests are path-style, except that a
    ``Host`` of ``<bucket>.<domain>`` for a domain in
    ``virtual_host_domains`` is virtual-hosted style (what SDKs do with an
    endpoint of ``http://localhost:PORT``).
    """
    store = Store(Path(root), fsync=fsync)
    server = DevStoreServer(
        store,
        credentials,
        region=region,
        min_part_size=min_part_size,
        virtual_host_domains=virtual_host_domains,
    )
    app = web.Application()
    app[DEVSTORE_KEY] = server
    app.router.add_route("*", "/{tail:.*}", server.handle)
    app.on_response_prepare.append(server.on_response_prepare)
    return app


async def start_devstore(
    root: Path,
    credentials: dict[str, str],
    host: str = "127.0.0.1",
    port: int = 0,
    **options: object,
) -> tuple[web.AppRunner, int]:
    """Build the application and serve it on ``host:port`` (0: any free port).

    Returns the runner (``await runner.cleanup()`` stops the server) and the
    bound port.  ``options`` go to :func:`build_devstore_app`.
    """
    app = build_devstore_app(root, credentials, **options)  # type: ignore[arg-type]
    # S3 stores a body byte for byte whatever its Content-Encoding: never gunzip a request.
    runner = web.AppRunner(app, access_log=None, auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound = int(address[1])
            break
    return runner, bound
