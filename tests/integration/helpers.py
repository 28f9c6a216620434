"""Helpers shared by the integration tests (real clients, real backend, real HTTP).

Nothing here talks to s3proxy internals except the ``proxy`` fixture's public
attributes (``url``, ``settings.identities``, ``state.backend.requests_sent``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import os
import socket
import uuid
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

from botocore.auth import HmacV1Auth, S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

MiB = 1024 * 1024
KiB = 1024
REGION = "us-east-1"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


# --------------------------------------------------------------------- data


def rand(n: int) -> bytes:
    return os.urandom(n)


def unique(prefix: str = "t-") -> str:
    return prefix + uuid.uuid4().hex[:16]


def probe_offsets(n: int, *, extra: tuple[int, ...] = (), max_probes: int = 256, min_stride: int = 4 * KiB) -> list[int]:
    """Offsets of 16-byte windows to look for: evenly spread, plus edges and ``extra``."""
    if n < 16:
        return []
    stride = max(min_stride, n // max_probes, 1)
    offs = set(range(0, n - 15, stride))
    offs.update({0, n - 16})
    offs.update(o for o in extra if 0 <= o <= n - 16)
    return sorted(offs)


def assert_no_plaintext(plaintext: bytes, stored: bytes, *, extra: tuple[int, ...] = ()) -> None:
    """No 16-byte window of ``plaintext`` (sampled) appears anywhere in ``stored``."""
    assert len(stored) > len(plaintext), "stored object is not longer than its plaintext"
    leaked = [i for i in probe_offsets(len(plaintext), extra=extra) if plaintext[i:i + 16] in stored]
    assert not leaked, f"plaintext windows found on the backend at plaintext offsets {leaked[:10]}"


# --------------------------------------------------------------------- identities


def identity(proxy: Any, name: str) -> tuple[str, str]:
    """(access key, secret key) of a configured identity, by name."""
    for ident in proxy.settings.identities:
        if ident.name == name:
            sk = ident.secret_key
            return ident.access_key, (sk.get_secret_value() if hasattr(sk, "get_secret_value") else sk)
    raise KeyError(name)


def main_creds(proxy: Any) -> tuple[str, str]:
    return identity(proxy, "tester")


def limited(proxy: Any) -> tuple[str, str]:
    return identity(proxy, "limited")


# --------------------------------------------------------------------- raw HTTP


@dataclass
class Reply:
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes | None = b""
    aborted: bool = False  # connection broke before the declared body arrived
    exc: BaseException | None = None

    def error(self) -> dict[str, str]:
        """The S3 XML error document as {tag: text} (namespaces stripped)."""
        assert self.body, f"expected an XML error body, got status {self.status} and no body"
        root = ET.fromstring(self.body)
        assert root.tag.rsplit("}", 1)[-1] == "Error", self.body[:500]
        return {c.tag.rsplit("}", 1)[-1]: (c.text or "") for c in root}

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def encode_query(query: str | dict[str, str] | list[tuple[str, str]]) -> str:
    """A query string; dict/list values are percent-encoded the SigV4 way (``/`` too)."""
    if isinstance(query, str):
        return query
    items = query.items() if isinstance(query, dict) else query
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in items)


def object_url(base: str, bucket: str | None = None, key: str | None = None,
               query: str | dict[str, str] | list[tuple[str, str]] = "") -> str:
    query = encode_query(query)
    path = "/"
    if bucket:
        path += quote(bucket, safe="")
        if key is not None:
            path += "/" + quote(key, safe="/~")
    return base.rstrip("/") + path + (("?" + query) if query else "")


class _Signer(S3SigV4Auth):
    """botocore's S3 signer, with an optional fixed ``x-amz-content-sha256``."""

    payload_hash: str | None = None

    def payload(self, request: AWSRequest) -> str:
        return self.payload_hash if self.payload_hash is not None else super().payload(request)


def sign(
    method: str,
    url: str,
    access_key: str,
    secret_key: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    when: datetime | None = None,
    payload_hash: str | None = None,
) -> AWSRequest:
    """A SigV4-signed request (botocore's S3 signer), ready for :func:`send_signed`.

    ``payload_hash`` sets ``x-amz-content-sha256`` explicitly (``UNSIGNED-PAYLOAD``,
    ``STREAMING-...``, or the hash of *another* body); default: SHA-256 of ``body``.
    ``when`` signs as if the clock showed that time.
    """
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    signer = _Signer(Credentials(access_key, secret_key), "s3", REGION)
    signer.payload_hash = payload_hash
    if when is None:
        signer.add_auth(req)
    else:
        with clock(when):
            signer.add_auth(req)
    return req


def sign_v2(method: str, url: str, access_key: str, secret_key: str, *, headers: dict[str, str] | None = None,
            body: bytes = b"") -> AWSRequest:
    """A SigV2-signed request (``Authorization: AWS ak:sig``, botocore's HmacV1Auth)."""
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    HmacV1Auth(Credentials(access_key, secret_key)).add_auth(req)
    return req


@contextlib.contextmanager
def clock(when: datetime) -> Iterator[None]:
    """botocore's signers (pure Python and CRT) believe it is ``when``."""
    aware = when.astimezone(UTC)

    def fake(remove_tzinfo: bool = True) -> datetime:
        return aware.replace(tzinfo=None) if remove_tzinfo else aware

    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch("botocore.auth.get_current_datetime", fake))
        with contextlib.suppress(ImportError, AttributeError):
            import botocore.crt.auth  # noqa: F401

            stack.enter_context(mock.patch("botocore.crt.auth.get_current_datetime", fake))
        yield


def send(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    *,
    timeout: float = 30,
) -> Reply:
    """One HTTP request on a fresh connection; a body cut short is reported, not raised."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    target = parts.path + (("?" + parts.query) if parts.query else "")
    try:
        try:
            conn.request(method, target, body=body, headers=headers or {})
            resp = conn.getresponse()
        except (ConnectionError, http.client.HTTPException) as e:
            return Reply(None, aborted=True, exc=e, body=None)
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        try:
            data = resp.read()
        except (http.client.IncompleteRead, ConnectionError, http.client.HTTPException, TimeoutError, OSError) as e:
            return Reply(resp.status, hdrs, None, aborted=True, exc=e)
        if "content-length" in hdrs and method != "HEAD" and len(data) != int(hdrs["content-length"]):
            return Reply(resp.status, hdrs, data, aborted=True)
        return Reply(resp.status, hdrs, data)
    finally:
        conn.close()


def send_signed(req: AWSRequest, *, body: bytes | None = None, extra_headers: dict[str, str] | None = None,
                url: str | None = None, timeout: float = 30) -> Reply:
    """Send a signed request; ``body``/``extra_headers``/``url`` tamper with it after signing."""
    headers = {k: v for k, v in req.headers.items()}
    headers.update(extra_headers or {})
    data = req.data if body is None else body
    if isinstance(data, str):
        data = data.encode()
    if req.method in ("PUT", "POST"):
        data = data or b""
    elif not data:
        data = None
    return send(req.method, url or req.url, headers, data, timeout=timeout)


def signed(proxy: Any, method: str, bucket: str | None, key: str | None = None, *,
           query: str | dict[str, str] | list[tuple[str, str]] = "",
           headers: dict[str, str] | None = None, body: bytes = b"", creds: tuple[str, str] | None = None,
           timeout: float = 30) -> Reply:
    """Sign (as the test identity unless ``creds``) and send one request to the proxy."""
    ak, sk = creds or main_creds(proxy)
    req = sign(method, object_url(proxy.url, bucket, key, query), ak, sk, headers=headers, body=body)
    return send_signed(req, timeout=timeout)


def get_via_proxy(proxy: Any, bucket: str, key: str, rng: str | None = None) -> Reply:
    return signed(proxy, "GET", bucket, key, headers={"Range": rng} if rng else None)


def assert_s3_error(reply: Reply, status: int, code: str | tuple[str, ...]) -> dict[str, str]:
    """The reply is an S3 XML error with ``status`` and ``code``, Message and a matching RequestId."""
    assert reply.status == status, (reply.status, reply.body)
    err = reply.error()
    codes = (code,) if isinstance(code, str) else code
    assert err.get("Code") in codes, err
    assert err.get("Message"), err
    assert err.get("RequestId"), err
    assert reply.header("x-amz-request-id") == err["RequestId"], (reply.headers, err)
    return err


def assert_read_fails(reply: Reply) -> None:
    """A read of tampered data: an S3 error or a broken body; never a complete 2xx."""
    if reply.status is None or reply.aborted:
        return
    assert reply.status >= 400, f"tampered object served cleanly: status {reply.status}, {len(reply.body or b'')} bytes"
    if reply.body:
        reply.error()


def aws_chunked_body(data: bytes, piece: int = 64 * KiB, *, complete: bool = True,
                     trailer: bytes | None = None) -> bytes:
    """``data`` as an aws-chunked body (unsigned, CRC32 trailer), wrapped in HTTP chunked framing."""
    frames = [b"%x\r\n" % len(data[i:i + piece]) + data[i:i + piece] + b"\r\n" for i in range(0, len(data), piece)]
    if complete:
        if trailer is None:
            trailer = b"x-amz-checksum-crc32:" + base64.b64encode(zlib.crc32(data).to_bytes(4, "big"))
        frames.append(b"0\r\n" + trailer + b"\r\n\r\n")
    out = b"".join(b"%x\r\n" % len(f) + f + b"\r\n" for f in frames)
    return out + (b"0\r\n\r\n" if complete else b"")


def raw_put_head(proxy: Any, bucket: str, key: str, mode: str, total: int, *, trailer: str = "x-amz-checksum-crc32") -> bytes:
    """Request line + headers of a signed PUT: ``mode`` "chunked" (aws-chunked, unsigned, trailer) or "content-length"."""
    ak, sk = main_creds(proxy)
    url = object_url(proxy.url, bucket, key)
    if mode == "chunked":
        req = sign("PUT", url, ak, sk, payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER", headers={
            "Content-Encoding": "aws-chunked", "X-Amz-Decoded-Content-Length": str(total),
            "X-Amz-Trailer": trailer,
        })
        extra = "Transfer-Encoding: chunked\r\n"
    else:
        req = sign("PUT", url, ak, sk, payload_hash="UNSIGNED-PAYLOAD")
        extra = f"Content-Length: {total}\r\n"
    path = url.split(proxy.url, 1)[1]
    head = f"PUT {path} HTTP/1.1\r\nHost: {proxy.url.split('//', 1)[1]}\r\n" + extra
    head += "".join(f"{k}: {v}\r\n" for k, v in req.headers.items()) + "\r\n"
    return head.encode()


def raw_socket(proxy: Any, timeout: float = 10) -> socket.socket:
    parts = urlsplit(proxy.url)
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout)


def send_raw(proxy: Any, payload: bytes, timeout: float = 30) -> Reply:
    """Write ``payload`` (a whole hand-made HTTP request) to a fresh socket and read one response."""
    sock = raw_socket(proxy, timeout)
    try:
        sock.sendall(payload)
        resp = http.client.HTTPResponse(sock, method=payload.split(b" ", 1)[0].decode())
        resp.begin()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        try:
            return Reply(resp.status, hdrs, resp.read())
        except (http.client.IncompleteRead, OSError) as e:
            return Reply(resp.status, hdrs, None, aborted=True, exc=e)
    finally:
        sock.close()


def presigner(proxy: Any, **kw: Any) -> Any:
    """A boto3 client that presigns with SigV4 (boto3's default presigned URL is SigV2)."""
    return proxy.client(config={"signature_version": "s3v4"}, **kw)


def proxy_alive(s3: Any) -> None:
    """The proxy still answers a normal request."""
    s3.list_buckets()


# --------------------------------------------------------------------- boto3 conveniences


def client_error(exc: ClientError) -> tuple[int, str]:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


def absent(client: Any, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if client_error(e)[0] == 404:
            return True
        raise
    return False


def multipart_upload(client: Any, bucket: str, key: str, parts: list[bytes], **create: Any) -> dict[str, Any]:
    """Upload ``parts`` (in order) as one multipart object; returns the Complete response."""
    uid = client.create_multipart_upload(Bucket=bucket, Key=key, **create)["UploadId"]
    done = []
    for i, p in enumerate(parts, start=1):
        r = client.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=i, Body=p)
        done.append({"PartNumber": i, "ETag": r["ETag"]})
    return client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": done})


def empty_bucket(client: Any, name: str) -> None:
    from tests.conftest import empty_and_delete_bucket

    empty_and_delete_bucket(client, name)


@contextlib.contextmanager
def temp_bucket(client: Any, name: str | None = None) -> Iterator[str]:
    name = name or unique()
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        empty_bucket(client, name)


def now_utc() -> datetime:
    return datetime.now(UTC)


def skewed(minutes: float) -> datetime:
    return now_utc() + timedelta(minutes=minutes)
