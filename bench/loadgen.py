"""Load generators: an aiohttp S3 client that signs SigV4 itself, and boto3.

The aiohttp client sends bodies as ``UNSIGNED-PAYLOAD`` from a reused
pattern buffer (no hashing, no copies on the client side) and reads
responses with ``readany()`` into nothing, checking the size and sampling
the content (the first and last bytes of every received piece are compared
with the pattern), so that the client costs as little CPU as possible on
a machine it shares with the servers.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import quote

import aiohttp
from yarl import URL

from s3proxy.aws.sigv4 import encode_query, sign_request

UNSIGNED = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
PIECE = 1 << 20  # upload piece size


class Pattern:
    """A deterministic byte stream: byte at offset ``o`` of any object is ``data[o % PERIOD]``."""

    PERIOD = (8 << 20) + 4099  # not a multiple of any chunk or part size

    def __init__(self) -> None:
        rnd = os.urandom(self.PERIOD)
        self.data = rnd + rnd[: 2 * PIECE + (16 << 20)]  # a slice of up to 16 MiB never wraps
        self.view = memoryview(self.data)

    def slice(self, offset: int, n: int) -> memoryview:
        if n > len(self.data) - self.PERIOD:
            raise ValueError("slice too long")
        o = offset % self.PERIOD
        return self.view[o : o + n]

    def bytes(self, offset: int, n: int) -> bytes:
        out = bytearray()
        while n:
            k = min(n, PIECE)
            out += self.slice(offset, k)
            offset += k
            n -= k
        return bytes(out)

    async def stream(self, offset: int, n: int) -> AsyncIterator[memoryview]:
        while n:
            k = min(n, PIECE)
            yield self.slice(offset, k)
            offset += k
            n -= k

    def check(self, offset: int, piece: bytes) -> bool:
        """Sample: the first and last 32 bytes of ``piece`` at ``offset``."""
        n = len(piece)
        if n <= 64:
            return bytes(self.slice(offset, n)) == bytes(piece)
        head = piece[:32] == bytes(self.slice(offset, 32))
        tail = piece[n - 32 :] == bytes(self.slice(offset + n - 32, 32))
        return head and tail


class BenchError(Exception):
    pass


class S3Client:
    """A minimal S3 client for benchmarks: path-style, SigV4, streaming."""

    def __init__(self, url: str, access_key: str, secret_key: str, *, cafile: str | None = None,
                 limit: int = 128, region: str = "us-east-1") -> None:
        self.url = url.rstrip("/")
        self.host = URL(self.url).raw_authority
        self.ak, self.sk, self.region = access_key, secret_key, region
        ssl_ctx: ssl.SSLContext | bool = True
        if cafile:
            ssl_ctx = ssl.create_default_context(cafile=cafile)
        self._connector_args = {"limit": limit, "ssl": ssl_ctx, "force_close": False}
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> S3Client:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(**self._connector_args),  # type: ignore[arg-type]
            auto_decompress=False,
            skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent"),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=120),
            read_bufsize=1 << 20,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    def _path(self, bucket: str, key: str | None) -> str:
        return "/" + quote(bucket, safe="") + ("/" + quote(key, safe="/~") if key is not None else "")

    def request(self, method: str, bucket: str, key: str | None = None, *, query: list[tuple[str, str]] | None = None,
                headers: dict[str, str] | None = None, data: object = None, length: int | None = None,
                payload_hash: str | None = None):  # type: ignore[no-untyped-def]
        assert self.session is not None
        path = self._path(bucket, key)
        query = query or []
        hdrs = {k.lower(): v for k, v in (headers or {}).items()}
        hdrs["host"] = self.host
        if data is None:
            ph = EMPTY_SHA256
            if method in ("PUT", "POST"):
                hdrs["content-length"] = "0"
        elif isinstance(data, bytes | bytearray):
            import hashlib

            ph = payload_hash or hashlib.sha256(data).hexdigest()
            hdrs["content-length"] = str(len(data))
        else:
            ph = UNSIGNED
            hdrs["content-length"] = str(length)
        signed = sign_request(method, path, query, {k: v for k, v in hdrs.items() if k != "content-length"}, ph,
                              self.ak, self.sk, self.region, datetime.now(UTC))
        hdrs.update(signed)
        qs = encode_query(query)
        url = URL(self.url + path + ("?" + qs if qs else ""), encoded=True)
        return self.session.request(method, url, headers=hdrs, data=data, allow_redirects=False)

    # --------------------------------------------------------------- operations
    async def ensure_bucket(self, bucket: str) -> None:
        async with self.request("PUT", bucket) as r:
            await r.read()
            if r.status not in (200, 409):
                raise BenchError(f"CreateBucket {bucket}: {r.status}")

    async def put(self, bucket: str, key: str, pattern: Pattern, size: int, offset: int = 0) -> None:
        async with self.request("PUT", bucket, key, data=pattern.stream(offset, size), length=size) as r:
            body = await r.read()
            if r.status != 200:
                raise BenchError(f"PUT {key}: {r.status} {body[:300]!r}")

    async def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        async with self.request("PUT", bucket, key, data=data, payload_hash=UNSIGNED) as r:
            body = await r.read()
            if r.status != 200:
                raise BenchError(f"PUT {key}: {r.status} {body[:300]!r}")

    async def get(self, bucket: str, key: str, pattern: Pattern | None, expect: int,
                  start: int | None = None, end: int | None = None) -> int:
        """GET (a range [start, end) if given) into nothing; returns the bytes received."""
        headers = {"range": f"bytes={start}-{end - 1}"} if start is not None and end is not None else None
        base = start or 0
        async with self.request("GET", bucket, key, headers=headers) as r:
            if r.status not in (200, 206):
                raise BenchError(f"GET {key}: {r.status} {(await r.read())[:300]!r}")
            n = 0
            while True:
                piece = await r.content.readany()
                if not piece:
                    break
                if pattern is not None and not pattern.check(base + n, piece):
                    raise BenchError(f"GET {key}: wrong bytes at offset {base + n}")
                n += len(piece)
        if n != expect:
            raise BenchError(f"GET {key}: {n} bytes, expected {expect}")
        return n

    async def get_bytes(self, bucket: str, key: str) -> bytes:
        async with self.request("GET", bucket, key) as r:
            body = await r.read()
            if r.status != 200:
                raise BenchError(f"GET {key}: {r.status} {body[:300]!r}")
            return body

    async def head_size(self, bucket: str, key: str) -> int:
        async with self.request("HEAD", bucket, key) as r:
            if r.status != 200:
                raise BenchError(f"HEAD {key}: {r.status}")
            return int(r.headers["Content-Length"])

    async def delete(self, bucket: str, key: str) -> None:
        async with self.request("DELETE", bucket, key) as r:
            await r.read()

    async def list_keys(self, bucket: str, prefix: str) -> int:
        """ListObjectsV2 over every page; returns the number of keys."""
        import re

        n, token = 0, None
        while True:
            q = [("list-type", "2"), ("prefix", prefix)] + ([("continuation-token", token)] if token else [])
            async with self.request("GET", bucket, query=q) as r:
                body = await r.read()
                if r.status != 200:
                    raise BenchError(f"LIST: {r.status} {body[:300]!r}")
            n += body.count(b"<Key>")
            m = re.search(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>", body)
            if b"<IsTruncated>true</IsTruncated>" not in body or not m:
                return n
            from xml.sax.saxutils import unescape

            token = unescape(m.group(1).decode())

    async def multipart_upload(self, bucket: str, key: str, pattern: Pattern, size: int, part_size: int,
                               in_flight: int) -> None:
        import re

        async with self.request("POST", bucket, key, query=[("uploads", "")]) as r:
            body = await r.read()
            if r.status != 200:
                raise BenchError(f"CreateMultipartUpload: {r.status} {body[:300]!r}")
        m = re.search(rb"<UploadId>([^<]*)</UploadId>", body)
        if not m:
            raise BenchError("no UploadId")
        from xml.sax.saxutils import unescape

        upload_id = unescape(m.group(1).decode())
        n_parts = (size + part_size - 1) // part_size
        etags: dict[int, str] = {}
        sem = asyncio.Semaphore(in_flight)

        async def part(pn: int) -> None:
            off = (pn - 1) * part_size
            n = min(part_size, size - off)
            async with sem:
                q = [("partNumber", str(pn)), ("uploadId", upload_id)]
                async with self.request("PUT", bucket, key, query=q, data=pattern.stream(off, n), length=n) as r:
                    b = await r.read()
                    if r.status != 200:
                        raise BenchError(f"UploadPart {pn}: {r.status} {b[:300]!r}")
                    etags[pn] = r.headers["ETag"]

        try:
            await asyncio.gather(*(part(i) for i in range(1, n_parts + 1)))
        except BaseException:
            async with self.request("DELETE", bucket, key, query=[("uploadId", upload_id)]) as r:
                await r.read()
            raise
        from xml.sax.saxutils import escape

        xml = "<CompleteMultipartUpload>" + "".join(
            f"<Part><PartNumber>{pn}</PartNumber><ETag>{escape(etags[pn])}</ETag></Part>" for pn in sorted(etags)
        ) + "</CompleteMultipartUpload>"
        async with self.request("POST", bucket, key, query=[("uploadId", upload_id)], data=xml.encode()) as r:
            b = await r.read()
            if r.status != 200 or b"<Error>" in b:
                raise BenchError(f"CompleteMultipartUpload: {r.status} {b[:300]!r}")

    async def ranged_download(self, bucket: str, key: str, pattern: Pattern | None, size: int, part: int,
                              in_flight: int) -> int:
        """HEAD then GET ``part``-sized ranges, ``in_flight`` at a time (boto3 ``download_file`` style)."""
        total = await self.head_size(bucket, key)
        if total != size:
            raise BenchError(f"HEAD {key}: size {total}, expected {size}")
        sem = asyncio.Semaphore(in_flight)

        async def one(start: int) -> int:
            end = min(size, start + part)
            async with sem:
                return await self.get(bucket, key, pattern, end - start, start, end)

        got = await asyncio.gather(*(one(s) for s in range(0, size, part)))
        return sum(got)


# ------------------------------------------------------------------------------ boto3


def boto3_client(url: str, ak: str, sk: str, cafile: str | None):  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=url, aws_access_key_id=ak, aws_secret_access_key=sk, region_name="us-east-1",
        verify=cafile if cafile else True,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                      response_checksum_validation="when_required", max_pool_connections=16,
                      read_timeout=300),
    )


class _PatternFile:
    """A read-only file object over ``size`` bytes of the pattern (seekable, for botocore)."""

    def __init__(self, pattern: Pattern, size: int) -> None:
        self.p, self.size, self.pos = pattern, size, 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self.pos
        n = min(n, self.size - self.pos, PIECE)
        out = bytes(self.p.slice(self.pos, n)) if n else b""
        self.pos += n
        return out

    def seek(self, off: int, whence: int = 0) -> int:
        self.pos = off if whence == 0 else (self.pos + off if whence == 1 else self.size + off)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def __len__(self) -> int:
        return self.size


def boto3_put(client, bucket: str, key: str, pattern: Pattern, size: int) -> None:  # type: ignore[no-untyped-def]
    client.put_object(Bucket=bucket, Key=key, Body=_PatternFile(pattern, size), ContentLength=size)


def boto3_get(client, bucket: str, key: str, pattern: Pattern, size: int) -> int:  # type: ignore[no-untyped-def]
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    n = 0
    while True:
        piece = body.read(PIECE)
        if not piece:
            break
        if not pattern.check(n, piece):
            raise BenchError(f"boto3 GET {key}: wrong bytes at {n}")
        n += len(piece)
    if n != size:
        raise BenchError(f"boto3 GET {key}: {n} bytes, expected {size}")
    return n


def now() -> float:
    return time.perf_counter()
