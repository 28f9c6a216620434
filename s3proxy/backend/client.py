"""Outbound S3 client: one pooled aiohttp session, every request re-signed.

Requests always go path-style (``/bucket/key``) to the configured backend.
Bodies are streamed: an async iterator of bytes plus an exact
``Content-Length`` (never chunked), sent as ``UNSIGNED-PAYLOAD``; small
control bodies (XML) are sent as bytes with their real SHA-256.  If the body
iterator raises, the request is aborted before its last byte, so the backend
never stores a partial object.

When every pooled connection is busy a request waits at most
``pool_timeout`` for one, then fails with ``BackendBusy`` (503 SlowDown).
Backend responses are never decompressed (``auto_decompress=False``): an
object stored with ``Content-Encoding: gzip`` is returned byte for byte.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
from collections.abc import AsyncIterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import quote, unquote, urlsplit

import aiohttp
from aiohttp.payload import AsyncIterablePayload
from yarl import URL

from s3proxy.aws.errors import S3Error
from s3proxy.aws.sigv4 import sign_request
from s3proxy.config import BackendSettings

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSIGNED = "UNSIGNED-PAYLOAD"


@dataclass(frozen=True)
class BackendCredentials:
    access_key: str
    secret_key: str


class BackendBusy(S3Error, aiohttp.ClientConnectionError):
    """No backend connection became free within ``pool_timeout``.

    An ``S3Error`` (503 SlowDown) for the client and an ``aiohttp.ClientError``
    for code that handles backend failures generically.
    """

    def __init__(self) -> None:
        S3Error.__init__(self, "SlowDown", "Please reduce your request rate.", 503)


class _PoolConnector(aiohttp.TCPConnector):
    """A TCPConnector whose wait for a free connection slot is bounded."""

    def __init__(self, *args: object, pool_timeout: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._pool_timeout = pool_timeout

    # aiohttp calls this only when the pool is full.  (Private hook: should a
    # future aiohttp drop it, the session's overall connect timeout still bounds the wait.)
    async def _wait_for_available_connection(self, key: object, traces: object) -> None:
        try:
            async with asyncio.timeout(self._pool_timeout):
                await super()._wait_for_available_connection(key, traces)  # type: ignore[arg-type]
        except TimeoutError:
            raise BackendBusy() from None


# Characters ``quote(..., safe="/~")`` leaves as they are: such a key or bucket is its own encoding.
_PLAIN = re.compile(r"[A-Za-z0-9_.~/-]*", re.ASCII)


def encode_key(key: str) -> str:
    if _PLAIN.fullmatch(key) is not None:
        return key
    return quote(key, safe="/~")


def _quote_q(s: str) -> str:
    return quote(s, safe="-_.~")


class NameMapper(Protocol):
    """Encrypted object names (s3proxy.backend.names_keys): a bucket's stored key for a plaintext key."""

    async def stored_key(self, bucket: str | None, key: str) -> str: ...


def split_copy_source(source: str) -> tuple[str, str, str]:
    """``/bucket/key?versionId=v`` (as ``copy_source`` writes it) -> bucket, key, the ``?...`` tail."""
    path, q, tail = source.partition("?")
    bucket, _, key = path.lstrip("/").partition("/")
    return unquote(bucket), unquote(key), q + tail


class BackendClient:
    """Talks S3 to the storage backend on behalf of every client.

    With ``names`` set (encrypted object names, registered at start-up), every key sent --
    the path's and ``x-amz-copy-source``'s -- is the stored key of the plaintext key the
    caller gives; ``raw_key=True`` sends a key as it is (one read from the backend's listing).
    """

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        parts = urlsplit(settings.url)
        self._base = settings.url
        self._host = parts.netloc
        self._prefix = parts.path.rstrip("/")
        self._scheme = parts.scheme
        self.credentials = BackendCredentials(
            settings.access_key.get_secret_value(), settings.secret_key.get_secret_value()
        )
        self._session: aiohttp.ClientSession | None = None
        self.requests_sent = 0  # for tests and metrics
        self.names: NameMapper | None = None  # set by s3proxy.backend.names_keys.register
        self.names_registered = False

    async def start(self) -> None:
        ssl_ctx: ssl.SSLContext | bool = True
        if self._base.startswith("https://"):
            if not self.settings.verify_tls:
                ssl_ctx = False
            elif self.settings.ca_bundle:
                ssl_ctx = ssl.create_default_context(cafile=str(self.settings.ca_bundle))
        connector = _PoolConnector(
            limit=self.settings.max_connections, ssl=ssl_ctx, enable_cleanup_closed=True,
            pool_timeout=self.settings.pool_timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent"),
            read_bufsize=1 << 20,
            timeout=aiohttp.ClientTimeout(
                total=None,
                # ``connect`` covers waiting for a pool slot and opening the connection.
                connect=self.settings.pool_timeout + self.settings.connect_timeout,
                sock_connect=self.settings.connect_timeout,
                sock_read=self.settings.read_timeout,
            ),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def spare_connections(self) -> int:
        """Backend connections not in use right now (the pool limit minus those acquired)."""
        connector = self._session.connector if self._session is not None else None
        acquired = getattr(connector, "_acquired", None)  # aiohttp keeps no public count
        if connector is None or acquired is None or not connector.limit:
            return self.settings.max_connections
        return max(0, connector.limit - len(acquired))

    def path_for(self, bucket: str | None, key: str | None) -> str:
        path = self._prefix + "/"
        if bucket:
            path += bucket if _PLAIN.fullmatch(bucket) is not None and "/" not in bucket else quote(bucket, safe="")
            if key is not None:
                path += "/" + encode_key(key)
        return path

    @staticmethod
    def copy_source(bucket: str, key: str, version_id: str | None = None) -> str:
        """The ``x-amz-copy-source`` value: ``/bucket/key`` (no backend path prefix)."""
        src = "/" + quote(bucket, safe="") + "/" + encode_key(key)
        return src + (f"?versionId={quote(version_id, safe='')}" if version_id else "")

    async def request(
        self,
        method: str,
        bucket: str | None,
        key: str | None = None,
        *,
        query: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        body: bytes | AsyncIterable[bytes | bytearray | memoryview] | None = None,
        content_length: int | None = None,
        credentials: BackendCredentials | None = None,
        raw_key: bool = False,
    ) -> aiohttp.ClientResponse:
        """Send one signed request; the caller reads and releases the response."""
        assert self._session is not None, "BackendClient.start() not called"
        creds = credentials or self.credentials
        hdrs: dict[str, str] = {k.lower(): v for k, v in headers.items()} if headers else {}
        if self.names is not None:
            if key is not None and not raw_key:
                key = await self.names.stored_key(bucket, key)
            if "x-amz-copy-source" in hdrs:
                sb, sk, tail = split_copy_source(hdrs["x-amz-copy-source"])
                hdrs["x-amz-copy-source"] = self.copy_source(sb, await self.names.stored_key(sb, sk)) + tail
        path = self.path_for(bucket, key)
        hdrs.pop("content-length", None)  # set below from the body; never signed
        hdrs["host"] = self._host
        length: str | None = None
        data: object = body
        if body is None:
            payload_hash = EMPTY_SHA256
            if method in ("PUT", "POST"):
                length = "0"
        elif isinstance(body, bytes | bytearray):
            payload_hash = hashlib.sha256(body).hexdigest()
            length = str(len(body))
        else:
            if content_length is None:
                raise ValueError("streamed bodies need an exact content_length")
            payload_hash = UNSIGNED
            length = str(content_length)
            # Given as a payload, aiohttp skips its search of the payload registry for an async iterable.
            data = AsyncIterablePayload(body)  # type: ignore[arg-type]  # it sends memoryviews as they are
        signed = sign_request(
            method,
            path,
            query,
            hdrs,
            payload_hash,
            creds.access_key,
            creds.secret_key,
            self.settings.region,
            datetime.now(UTC),
        )
        hdrs.update(signed)
        if length is not None:
            hdrs["content-length"] = length
        qs = "&".join([f"{_quote_q(k)}={_quote_q(v)}" for k, v in query]) if query else ""
        # Built from its parts, already encoded: no parse of a URL string (the host is settings.url's).
        url = URL.build(scheme=self._scheme, authority=self._host, path=path, query_string=qs, encoded=True)
        self.requests_sent += 1
        return await self._session.request(method, url, headers=hdrs, data=data, allow_redirects=False)


class BoundBackend:
    """The backend client and the credentials that sign one caller's requests, passed explicitly:
    an identity's own backend credentials, or the proxy's (``Ctx.backend``)."""

    __slots__ = ("client", "credentials")
    copy_source = staticmethod(BackendClient.copy_source)

    def __init__(self, client: BackendClient, credentials: BackendCredentials | None = None) -> None:
        self.client = client
        self.credentials = credentials or client.credentials

    async def request(
        self,
        method: str,
        bucket: str | None,
        key: str | None = None,
        *,
        query: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        body: bytes | AsyncIterable[bytes | bytearray | memoryview] | None = None,
        content_length: int | None = None,
        raw_key: bool = False,
    ) -> aiohttp.ClientResponse:
        """``BackendClient.request`` signed with these credentials."""
        return await self.client.request(method, bucket, key, query=query, headers=headers, body=body,
                                         content_length=content_length, credentials=self.credentials, raw_key=raw_key)
