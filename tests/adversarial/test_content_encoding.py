"""Bodies with ``Content-Encoding: gzip`` are stored byte for byte (finding B).

S3 never interprets Content-Encoding: it stores the bytes it is sent and
returns them unchanged with the header.  aiohttp's HTTP server decompresses
request bodies unless told not to, which broke such uploads (IncompleteBody,
or a decompressed object), and its client would decompress backend responses.
Attack/abuse angle: a client (or an SDK transfer manager) that uploads
pre-compressed data must get exactly those bytes back, and the backend still
only ever sees ciphertext.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Backend, Proxy, proxy_settings, start_proxy, stop_proxy
from tests.integration.helpers import MiB, assert_no_plaintext, main_creds, object_url, send_signed, sign

PASS_BUCKET = "gz-pass-" + uuid.uuid4().hex[:10]


def _compressible(n: int) -> bytes:
    words = [b"alpha", b"beta", b"gamma", b"delta", b"epsilon", b"zeta", os.urandom(6).hex().encode()]
    rnd = os.urandom(n // 4 + 1)
    out = bytearray()
    i = 0
    while len(out) < n:
        out += words[rnd[i % len(rnd)] % len(words)] + b" "
        i += 1
    return bytes(out[:n])


def test_put_gzip_object_roundtrips_exact_bytes(s3: Any, raw: Any, bucket: str) -> None:
    plain = _compressible(300_000)
    packed = gzip.compress(plain)
    s3.put_object(Bucket=bucket, Key="page.html.gz", Body=packed, ContentEncoding="gzip", ContentType="text/html")
    got = s3.get_object(Bucket=bucket, Key="page.html.gz")
    assert got["ContentEncoding"] == "gzip"
    assert got["ContentType"] == "text/html"
    assert got["ContentLength"] == len(packed)
    assert got["Body"].read() == packed
    head = s3.head_object(Bucket=bucket, Key="page.html.gz")
    assert (head["ContentLength"], head["ContentEncoding"]) == (len(packed), "gzip")
    # A range is a range of the stored (compressed) bytes.
    part = s3.get_object(Bucket=bucket, Key="page.html.gz", Range="bytes=10-1009")["Body"].read()
    assert part == packed[10:1010]
    # The backend holds ciphertext: neither the compressed nor the original bytes.
    stored = raw.get_object(Bucket=bucket, Key="page.html.gz")["Body"].read()
    assert_no_plaintext(packed, stored)
    assert plain[:4096] not in stored


def test_signed_payload_hash_covers_compressed_bytes(proxy: Proxy, s3: Any, raw: Any, bucket: str) -> None:
    """A raw request whose x-amz-content-sha256 is the SHA-256 of the gzip bytes (what was sent)."""
    packed = gzip.compress(_compressible(50_000))
    ak, sk = main_creds(proxy)
    req = sign("PUT", object_url(proxy.url, bucket, "signed.gz"), ak, sk, body=packed,
               headers={"Content-Encoding": "gzip"})
    assert req.headers["x-amz-content-sha256"] == hashlib.sha256(packed).hexdigest()
    r = send_signed(req)
    assert r.status == 200, r.body
    got = s3.get_object(Bucket=bucket, Key="signed.gz")
    assert (got["Body"].read(), got["ContentEncoding"]) == (packed, "gzip")
    assert_no_plaintext(packed, raw.get_object(Bucket=bucket, Key="signed.gz")["Body"].read())


def test_multipart_gzip_object_roundtrips_exact_bytes(proxy: Proxy, raw: Any, bucket: str) -> None:
    s3 = proxy.client()

    def gzip_header(request: Any, **_: Any) -> None:
        # Some SDKs and tools send the object's Content-Encoding on every part too.
        request.headers["Content-Encoding"] = "gzip"

    s3.meta.events.register("before-sign.s3.UploadPart", gzip_header)
    packed = gzip.compress(os.urandom(5 * MiB) + _compressible(2 * MiB), compresslevel=1)
    assert len(packed) > 5 * MiB
    parts = [packed[: 5 * MiB], packed[5 * MiB:]]
    uid = s3.create_multipart_upload(Bucket=bucket, Key="big.gz", ContentEncoding="gzip")["UploadId"]
    done = []
    for i, p in enumerate(parts, start=1):
        etag = s3.upload_part(Bucket=bucket, Key="big.gz", UploadId=uid, PartNumber=i, Body=p)["ETag"]
        done.append({"PartNumber": i, "ETag": etag})
    s3.complete_multipart_upload(Bucket=bucket, Key="big.gz", UploadId=uid, MultipartUpload={"Parts": done})
    got = s3.get_object(Bucket=bucket, Key="big.gz")
    assert got["ContentEncoding"] == "gzip"
    body = got["Body"].read()
    assert len(body) == len(packed)
    assert body == packed
    stored = raw.get_object(Bucket=bucket, Key="big.gz")["Body"].read()
    assert_no_plaintext(packed, stored)


@pytest.fixture(scope="module")
def pass_proxy(backend: Backend) -> Iterator[Proxy]:
    p = start_proxy(proxy_settings(backend, buckets={PASS_BUCKET: {"mode": "passthrough"}}))
    c = p.client()
    c.create_bucket(Bucket=PASS_BUCKET)
    yield p
    for o in c.list_objects_v2(Bucket=PASS_BUCKET).get("Contents", []):
        c.delete_object(Bucket=PASS_BUCKET, Key=o["Key"])
    c.delete_bucket(Bucket=PASS_BUCKET)
    stop_proxy(p)


def test_passthrough_gzip_object_is_not_decompressed(pass_proxy: Proxy, raw: Any) -> None:
    """Neither direction decompresses: the backend stores and the client gets the gzip bytes."""
    s3 = pass_proxy.client()
    packed = gzip.compress(_compressible(100_000))
    s3.put_object(Bucket=PASS_BUCKET, Key="p.gz", Body=packed, ContentEncoding="gzip")
    stored = raw.get_object(Bucket=PASS_BUCKET, Key="p.gz")
    assert (stored["Body"].read(), stored["ContentEncoding"]) == (packed, "gzip")
    got = s3.get_object(Bucket=PASS_BUCKET, Key="p.gz")
    assert (got["Body"].read(), got["ContentEncoding"]) == (packed, "gzip")
    # A client that advertises gzip support still gets the stored bytes, not a re-encoding.
    ak, sk = main_creds(pass_proxy)
    r = send_signed(sign("GET", object_url(pass_proxy.url, PASS_BUCKET, "p.gz"), ak, sk,
                         headers={"Accept-Encoding": "gzip"}))
    assert (r.status, r.body, r.header("content-encoding")) == (200, packed, "gzip")
