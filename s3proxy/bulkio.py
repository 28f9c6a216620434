"""Streaming S3 transfers of the bulk jobs (``migrate``, ``export``; :mod:`s3proxy.bulkjob`).

- :class:`InternalProxy`: the proxy application itself, started in this process on an
  ephemeral ``127.0.0.1`` port with a one-off identity (random keys, never written down), so
  that the jobs read and write through exactly the code clients go through; a
  :class:`~s3proxy.backend.client.BackendClient` signs the job's requests to it.
- :class:`Source`: a GET being read in exact pieces, hashed (SHA-256) on the way.
- :class:`Transfers`: small requests with retries, and the streaming ones: a GET, a PUT or a
  multipart upload fed from a :class:`Source` (part by part: nothing is held whole), the tags
  of an object, the part sizes of a multipart object, the digest of a GET.

The small requests, tags, part sizes and multipart plumbing are :mod:`s3proxy.backend.ops`,
shared with ``rewrap``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from s3proxy.backend import ops
from s3proxy.backend.client import BackendClient
from s3proxy.backend.ops import KEPT_HEADERS, Reply, describe, read_at_most, reply_etag
from s3proxy.config import BackendSettings, Identity, Settings, TLSSettings

__all__ = ["Changed", "InternalProxy", "JobError", "Source", "Transfers", "describe", "reply_etag"]

PIECE = 1 << 20
MAX_PARTS = 10_000
META = "x-amz-meta-"
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.I)


class JobError(ops.OpError):
    """One object could not be processed; the message says why (never key material)."""


class Changed(JobError):
    """The object is not the one its HEAD described (a store that ignores If-Match on GET)."""


def kept_headers(src: Mapping[str, str]) -> dict[str, str]:
    """The system headers and user metadata of an object, to write it again elsewhere."""
    out = {name.lower(): src[name] for name in KEPT_HEADERS if src.get(name) is not None}
    if out.get("x-amz-storage-class", "").upper() == "STANDARD":
        del out["x-amz-storage-class"]
    out.update({k.lower(): v for k, v in src.items() if k.lower().startswith(META)})
    return out


def split(total: int, part_size: int) -> list[int]:
    """Part sizes for ``total`` bytes: ``part_size`` each (more if 10,000 parts would not do)."""
    part_size = max(part_size, -(-total // MAX_PARTS))
    full, rest = divmod(total, part_size)
    return [part_size] * full + ([rest] if rest or not full else [])


def parse_size(text: str) -> int:
    """``16MiB``, ``8M``, ``1048576``: a byte count (binary units)."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 16MiB)")
    exponent: int = " KMGT".index((m.group(2) or " ").upper())
    return int(m.group(1)) << (10 * exponent)


class Source:
    """A GET being read: its body in exact pieces, SHA-256 taken on the way."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.sha256 = hashlib.sha256()
        self.read = 0

    async def take(self, n: int) -> AsyncIterator[bytes]:
        left = n
        while left:
            chunk = await self.resp.content.read(min(left, PIECE))
            if not chunk:
                raise JobError("the source body ended early")
            self.sha256.update(chunk)
            self.read += len(chunk)
            left -= len(chunk)
            yield chunk

    def close(self) -> None:
        self.resp.close()


class InternalProxy:
    """The proxy application on an ephemeral localhost port, for this process only."""

    def __init__(self, settings: Settings) -> None:
        self._ak = "S3PJOB" + secrets.token_hex(7).upper()
        self._sk = secrets.token_urlsafe(30)
        me = Identity(name="s3proxy-internal-job", access_key=self._ak, secret_key=SecretStr(self._sk))
        self.settings = settings.model_copy(update={
            "identities": (me,), "tls": TLSSettings(), "admin_listen": None,
            "log": settings.log.model_copy(update={"access_log": False}),
            # one client, up to 256 objects in flight, each with at most two requests
            "limits": settings.limits.model_copy(update={
                "max_requests": max(settings.limits.max_requests, 1024),
                "max_requests_per_identity": max(settings.limits.max_requests_per_identity, 1024),
            }),
        })
        self._runner: web.AppRunner | None = None
        self.client: BackendClient | None = None

    async def start(self) -> BackendClient:
        from s3proxy.app import build_app
        from s3proxy.server import make_runner

        self._runner = make_runner(build_app(self.settings), self.settings)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.client = BackendClient(BackendSettings(
            url=f"http://127.0.0.1:{port}", access_key=SecretStr(self._ak), secret_key=SecretStr(self._sk),
            region=self.settings.backend.region, read_timeout=self.settings.backend.read_timeout,
        ))
        await self.client.start()
        return self.client

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self._runner is not None:
            await self._runner.cleanup()


class Transfers:
    """Requests of a job on ``bucket`` (another bucket where a method takes one)."""

    def __init__(self, bucket: str, source: BackendClient) -> None:
        self.bucket = bucket
        self.source = source  # the backend, with the proxy's backend credentials
        self.notes: dict[str, str] = {}  # facts about the stores, for the report

    def store(self, client: BackendClient, bucket: str | None = None) -> ops.Store:
        return ops.Store(client, bucket or self.bucket)

    async def call(
        self, client: BackendClient, method: str, key: str | None, *, query: list[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None, body: bytes | None = None, read_limit: int = 1 << 20,
        retry: bool = True, error_in_200: bool = False, bucket: str | None = None,
    ) -> Reply:
        """One small request (retried on 5xx and connection errors); the body is read up to ``read_limit``."""
        return await ops.call(self.store(client, bucket), method, key, query=query or (), headers=headers, body=body,
                              read_limit=read_limit, retry=retry, error_in_200=error_in_200)

    async def tagging(self, client: BackendClient, key: str) -> str | None:
        """The object's tags as an ``x-amz-tagging`` value (None: none, or the store keeps none)."""
        tags, note = await ops.tagging(self.store(client), key)
        if note:
            self.notes["tagging"] = note
        return tags

    async def part_sizes(self, key: str, total: int, n: int) -> list[int] | None:
        """The part sizes of a multipart source (HEAD ?partNumber=N), or None if the store won't say."""
        sizes = await ops.part_sizes(self.store(self.source), key, total, n)
        return sizes if sizes is not None and all(sizes[:-1]) else None

    async def open_source(self, client: BackendClient, key: str, query: list[tuple[str, str]],
                          cond: Mapping[str, str], total: int | None) -> Source | None:
        """A streaming GET; None if the condition failed or the object is gone (412, 404)."""
        resp = await client.request("GET", self.bucket, key, query=query, headers=dict(cond))
        if resp.status in (404, 412):
            resp.release()
            return None
        if resp.status != 200:
            body = await read_at_most(resp, 1 << 16)
            resp.release()
            raise JobError(f"GET failed: {describe(resp.status, body)}")
        if total is not None and resp.content_length != total:
            resp.close()
            raise Changed("the GET's length differs from the HEAD's")
        return Source(resp)

    async def read_digest(self, client: BackendClient, key: str, query: list[tuple[str, str]],
                          cond: Mapping[str, str]) -> tuple[str, int] | None:
        src = await self.open_source(client, key, query, cond, None)
        if src is None:
            return None
        if src.resp.content_length is None:
            src.close()
            raise JobError("the GET answered no Content-Length")
        try:
            async for _ in src.take(src.resp.content_length):
                pass
        finally:
            src.close()
        return src.sha256.hexdigest(), src.read

    async def put_single(self, client: BackendClient, key: str, headers: Mapping[str, str], src: Source,
                         total: int, cond: Mapping[str, str], bucket: str | None = None) -> Reply | None:
        """PUT ``total`` bytes of ``src``; None when ``cond`` failed (412) or the object vanished (404)."""
        body: bytes | AsyncIterator[bytes] = src.take(total) if total else b""
        resp = await client.request("PUT", bucket or self.bucket, key, headers={**headers, **cond}, body=body,
                                    content_length=total)
        data = await read_at_most(resp, 1 << 16)
        resp.release()
        if resp.status in (404, 412) and cond:
            return None
        if resp.status != 200:
            raise JobError(f"PUT failed: {describe(resp.status, data)}")
        return Reply(resp.status, resp.headers, data)

    async def put_multipart(
        self, client: BackendClient, key: str, headers: Mapping[str, str], src: Source, sizes: list[int],
        cond: Mapping[str, str], before_complete: Callable[[], Awaitable[bool]] | None = None,
        bucket: str | None = None,
    ) -> Reply | None:
        """A multipart upload fed part by part from ``src``; None when ``cond`` failed at Complete."""
        bucket = bucket or self.bucket
        store = self.store(client, bucket)
        upload_id = await ops.create_upload(store, key, headers)
        etags: list[str] = []
        try:
            for i, p in enumerate(sizes, start=1):
                resp = await client.request(
                    "PUT", bucket, key, query=[("partNumber", str(i)), ("uploadId", upload_id)],
                    body=src.take(p) if p else b"", content_length=p)
                data = await read_at_most(resp, 1 << 16)
                resp.release()
                if resp.status != 200 or not resp.headers.get("ETag"):
                    raise JobError(f"UploadPart {i} failed: {describe(resp.status, data)}")
                etags.append(resp.headers["ETag"])
            if before_complete is not None and not await before_complete():
                await ops.abort(store, key, upload_id)
                return None
            cr = await ops.call(store, "POST", key, query=[("uploadId", upload_id)], headers=cond,
                                body=ops.complete_body(etags), error_in_200=True, retry=False)
        except BaseException:
            await asyncio.shield(ops.abort(store, key, upload_id))
            raise
        if cr.status in (404, 412) and cond:
            await ops.abort(store, key, upload_id)
            return None
        if cr.status != 200:
            await ops.abort(store, key, upload_id)
            raise JobError(f"CompleteMultipartUpload failed: {describe(cr.status, cr.body)}")
        return cr
