"""SigV4 failures the S3 way, over raw HTTP, and robustness after malformed requests.

Requests are built and signed with botocore's ``S3SigV4Auth`` on an
``AWSRequest`` and sent with ``http.client`` (or a bare socket), so they can be
tampered with after signing.  Every error must be S3 XML with Code, Message
and RequestId, and ``x-amz-request-id`` must equal the RequestId.
"""

from __future__ import annotations

import hashlib
import time
import urllib.error
import urllib.request
from datetime import timedelta
from email.utils import formatdate
from unittest import mock

import pytest
from botocore.exceptions import ClientError

from tests.integration.helpers import (
    KiB,
    MiB,
    absent,
    assert_s3_error,
    aws_chunked_body,
    client_error,
    clock,
    limited,
    main_creds,
    now_utc,
    object_url,
    presigner,
    proxy_alive,
    rand,
    raw_put_head,
    raw_socket,
    send,
    send_raw,
    send_signed,
    sign,
    sign_v2,
    signed,
    skewed,
)

# --------------------------------------------------------------------- identities and signatures


@pytest.mark.smoke
def test_valid_signature_works(proxy, s3, bucket):
    data = rand(1000)
    r = signed(proxy, "PUT", bucket, "ok", body=data)
    assert r.status == 200, r.body
    r = signed(proxy, "GET", bucket, "ok")
    assert (r.status, r.body) == (200, data)
    assert r.header("x-amz-request-id")


def test_unknown_access_key(proxy, bucket):
    r = signed(proxy, "GET", bucket, "x", creds=("AKIDNOSUCHKEY0000000", "whatever-secret"))
    assert_s3_error(r, 403, "InvalidAccessKeyId")


def test_wrong_secret(proxy, bucket):
    ak, sk = main_creds(proxy)
    r = signed(proxy, "GET", bucket, "x", creds=(ak, sk + "x"))
    assert_s3_error(r, 403, "SignatureDoesNotMatch")


def test_wrong_secret_put_stores_nothing(proxy, s3, bucket):
    ak, sk = main_creds(proxy)
    r = signed(proxy, "PUT", bucket, "nope", body=b"data", creds=(ak, sk[::-1]))
    assert_s3_error(r, 403, "SignatureDoesNotMatch")
    assert absent(s3, bucket, "nope")


@pytest.mark.parametrize("what", ["header", "path", "query", "method"])
def test_tampered_after_signing(proxy, s3, bucket, what):
    s3.put_object(Bucket=bucket, Key="a", Body=b"A")
    s3.put_object(Bucket=bucket, Key="b", Body=b"B")
    ak, sk = main_creds(proxy)
    if what == "header":
        req = sign("PUT", object_url(proxy.url, bucket, "new"), ak, sk, headers={"x-amz-meta-owner": "alice"}, body=b"x")
        r = send_signed(req, extra_headers={"x-amz-meta-owner": "mallory"})
        assert_s3_error(r, 403, "SignatureDoesNotMatch")
        assert absent(s3, bucket, "new")
    elif what == "path":
        req = sign("GET", object_url(proxy.url, bucket, "a"), ak, sk)
        r = send_signed(req, url=object_url(proxy.url, bucket, "b"))
        assert_s3_error(r, 403, "SignatureDoesNotMatch")
    elif what == "query":
        req = sign("GET", object_url(proxy.url, bucket, None, "list-type=2&prefix=a"), ak, sk)
        r = send_signed(req, url=object_url(proxy.url, bucket, None, "list-type=2&prefix=b"))
        assert_s3_error(r, 403, "SignatureDoesNotMatch")
    else:
        req = sign("GET", object_url(proxy.url, bucket, "a"), ak, sk)
        r = send("DELETE", req.url, dict(req.headers.items()))
        assert_s3_error(r, 403, "SignatureDoesNotMatch")
        assert s3.get_object(Bucket=bucket, Key="a")["Body"].read() == b"A"


@pytest.mark.smoke
def test_presigned_expired(proxy, s3, bucket):
    s3.put_object(Bucket=bucket, Key="p", Body=b"presigned")
    s3 = presigner(proxy)
    with clock(now_utc() - timedelta(hours=1)):
        url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p"}, ExpiresIn=60)
    r = send("GET", url)
    err = assert_s3_error(r, 403, "AccessDenied")
    assert "expired" in err["Message"].lower()
    # The same URL, fresh, works.
    fresh = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p"}, ExpiresIn=60)
    with urllib.request.urlopen(fresh, timeout=30) as resp:  # noqa: S310 - local test server
        assert resp.read() == b"presigned"


def test_presigned_tampered(proxy, s3, bucket):
    s3.put_object(Bucket=bucket, Key="p", Body=b"1")
    s3.put_object(Bucket=bucket, Key="q", Body=b"2")
    url = presigner(proxy).generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p"}, ExpiresIn=60)
    assert "X-Amz-Signature=" in url

    r = send("GET", url.replace(f"/{bucket}/p?", f"/{bucket}/q?"))
    assert_s3_error(r, 403, "SignatureDoesNotMatch")
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(url.replace("X-Amz-Expires=60", "X-Amz-Expires=600"), timeout=30)  # noqa: S310
    assert ei.value.code == 403
    ei.value.close()


@pytest.mark.parametrize("minutes", [16, -16])
def test_clock_skew(proxy, bucket, minutes):
    ak, sk = main_creds(proxy)
    req = sign("GET", object_url(proxy.url, bucket, None, "list-type=2"), ak, sk, when=skewed(minutes))
    assert_s3_error(send_signed(req), 403, "RequestTimeTooSkewed")


@pytest.mark.parametrize("minutes", [14, -14])
def test_clock_skew_within_limit(proxy, bucket, minutes):
    ak, sk = main_creds(proxy)
    req = sign("GET", object_url(proxy.url, bucket, None, "list-type=2"), ak, sk, when=skewed(minutes))
    assert send_signed(req).status == 200


@pytest.mark.parametrize("existing", [False, True], ids=["new-key", "older-version"])
def test_payload_hash_mismatch(proxy, s3, raw, bucket, existing):
    old = rand(20 * KiB)
    if existing:
        s3.put_object(Bucket=bucket, Key="k", Body=old)
        stored_before = raw.get_object(Bucket=bucket, Key="k")["Body"].read()
    signed_body = rand(100 * KiB)
    sent_body = bytearray(signed_body)
    sent_body[50 * KiB] ^= 1
    ak, sk = main_creds(proxy)
    req = sign("PUT", object_url(proxy.url, bucket, "k"), ak, sk, body=signed_body)
    assert req.headers["X-Amz-Content-SHA256"] == hashlib.sha256(signed_body).hexdigest()
    r = send_signed(req, body=bytes(sent_body))
    assert_s3_error(r, 400, "XAmzContentSHA256Mismatch")
    if existing:
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == old
        assert raw.get_object(Bucket=bucket, Key="k")["Body"].read() == stored_before
    else:
        assert absent(s3, bucket, "k")
        assert absent(raw, bucket, "k")


def test_payload_hash_not_hex(proxy, s3, bucket):
    ak, sk = main_creds(proxy)
    req = sign("PUT", object_url(proxy.url, bucket, "k"), ak, sk, body=b"abc", payload_hash="not-a-hash")
    r = send_signed(req)
    assert r.status == 400
    assert_s3_error(r, 400, r.error()["Code"])
    assert absent(s3, bucket, "k")


@pytest.mark.parametrize("method,key", [("GET", "obj"), ("PUT", "anon-put"), ("GET", None), ("DELETE", "obj")])
def test_anonymous_denied(proxy, s3, bucket, method, key):
    s3.put_object(Bucket=bucket, Key="obj", Body=b"secret")
    r = send(method, object_url(proxy.url, bucket, key), body=b"x" if method == "PUT" else None)
    assert_s3_error(r, 403, "AccessDenied")
    assert s3.get_object(Bucket=bucket, Key="obj")["Body"].read() == b"secret"
    assert absent(s3, bucket, "anon-put")


def test_anonymous_list_buckets_denied(proxy):
    assert_s3_error(send("GET", proxy.url + "/"), 403, "AccessDenied")


# --------------------------------------------------------------------- SigV2 (legacy header and boto3's default presign)


def test_sigv2_header_roundtrip(proxy, s3, bucket):
    ak, sk = main_creds(proxy)
    data = rand(5000)
    req = sign_v2("PUT", object_url(proxy.url, bucket, "v2 key+ü"), ak, sk, body=data,
                  headers={"x-amz-meta-via": "sigv2", "Content-Type": "application/x-v2"})
    r = send_signed(req)
    assert r.status == 200, r.body
    got = s3.get_object(Bucket=bucket, Key="v2 key+ü")
    assert got["Body"].read() == data
    assert got["Metadata"] == {"via": "sigv2"}
    r = send_signed(sign_v2("GET", object_url(proxy.url, bucket, "v2 key+ü"), ak, sk))
    assert (r.status, r.body) == (200, data)
    r = send_signed(sign_v2("GET", object_url(proxy.url, bucket, None, "prefix=v2"), ak, sk))
    assert r.status == 200 and b"<Size>5000</Size>" in r.body


@pytest.mark.parametrize("case", ["unknown-key", "wrong-secret", "tampered-header", "tampered-path", "garbage",
                                  "old-date", "no-date"])
def test_sigv2_header_failures(proxy, s3, bucket, case):
    s3.put_object(Bucket=bucket, Key="a", Body=b"A")
    s3.put_object(Bucket=bucket, Key="b", Body=b"B")
    ak, sk = main_creds(proxy)
    url = object_url(proxy.url, bucket, "a")
    expect = (403, "SignatureDoesNotMatch")
    if case == "unknown-key":
        r, expect = send_signed(sign_v2("GET", url, "AKIDNOSUCHKEY0000000", sk)), (403, "InvalidAccessKeyId")
    elif case == "wrong-secret":
        r = send_signed(sign_v2("GET", url, ak, sk + "x"))
    elif case == "tampered-header":
        req = sign_v2("PUT", object_url(proxy.url, bucket, "new"), ak, sk, headers={"x-amz-meta-o": "alice"}, body=b"x")
        r = send_signed(req, extra_headers={"x-amz-meta-o": "mallory"})
    elif case == "tampered-path":
        r = send_signed(sign_v2("GET", url, ak, sk), url=object_url(proxy.url, bucket, "b"))
    elif case == "garbage":
        r = send("GET", url, {"Authorization": f"AWS {ak}:c2lnbmF0dXJlc2lnbmF0dXJlc2ln",
                              "Date": formatdate(usegmt=True)})
    elif case == "old-date":
        r = send("GET", url, {"Authorization": f"AWS {ak}:c2lnbmF0dXJlc2lnbmF0dXJlc2ln",
                              "Date": "Mon, 01 Jan 2024 00:00:00 GMT"})
        expect = (403, "RequestTimeTooSkewed")
    else:
        r, expect = send("GET", url, {"Authorization": f"AWS {ak}:c2lnbmF0dXJl"}), (403, "AccessDenied")
    assert_s3_error(r, *expect)
    assert absent(s3, bucket, "new")


def test_sigv2_presigned_default_boto3(proxy, s3, bucket):
    """boto3's *default* presigned URL is SigV2 (AWSAccessKeyId/Signature/Expires)."""
    data = rand(30_000)
    s3.put_object(Bucket=bucket, Key="p q+r", Body=data)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p q+r"}, ExpiresIn=60)
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - local test server
        assert resp.read() == data
    r = send("GET", url.replace("/p%20q%2Br?", "/other?"))
    assert_s3_error(r, 403, "SignatureDoesNotMatch")
    with mock.patch("botocore.auth.time") as fake_time:
        fake_time.time.return_value = time.time() - 3600
        old = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "p q+r"}, ExpiresIn=60)
    assert_s3_error(send("GET", old), 403, "AccessDenied")
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "up"}, ExpiresIn=60)
    r = send("PUT", put_url, None, b"up!")  # http.client sends no Content-Type (moto would eat a form body)
    assert r.status == 200, r.body
    assert s3.get_object(Bucket=bucket, Key="up")["Body"].read() == b"up!"


def test_malformed_authorization(proxy, bucket):
    r = send("GET", object_url(proxy.url, bucket, "x"),
             {"Authorization": "AWS4-HMAC-SHA256 Credential=garbage", "x-amz-date": "20240101T000000Z",
              "x-amz-content-sha256": "UNSIGNED-PAYLOAD"})
    assert r.status in (400, 403)
    assert_s3_error(r, r.status, r.error()["Code"])


# --------------------------------------------------------------------- the limited identity


@pytest.fixture()
def limited_s3(proxy):
    ak, sk = limited(proxy)
    return proxy.client(access_key=ak, secret_key=sk)


def test_limited_identity_reads_public(proxy, s3, limited_s3, bucket):
    s3.put_object(Bucket=bucket, Key="public/readme.txt", Body=b"hello")
    assert limited_s3.get_object(Bucket=bucket, Key="public/readme.txt")["Body"].read() == b"hello"
    assert limited_s3.head_object(Bucket=bucket, Key="public/readme.txt")["ContentLength"] == 5
    keys = [o["Key"] for o in limited_s3.list_objects_v2(Bucket=bucket, Prefix="public/").get("Contents", [])]
    assert keys == ["public/readme.txt"]
    got = limited_s3.get_object(Bucket=bucket, Key="public/readme.txt", Range="bytes=1-3")["Body"].read()
    assert got == b"ell"


@pytest.mark.parametrize(
    "method,key,query,body",
    [
        ("GET", "private/secret.txt", "", b""),
        ("GET", "publicity/secret.txt", "", b""),
        ("GET", None, "list-type=2", b""),
        ("GET", None, {"list-type": "2", "prefix": "private/"}, b""),
        ("GET", None, "", b""),
        ("PUT", "public/new.txt", "", b"data"),
        ("PUT", "private/new.txt", "", b"data"),
        ("DELETE", "public/readme.txt", "", b""),
        ("POST", "public/mp", "uploads", b""),
        ("PUT", None, "tagging", b"<Tagging><TagSet/></Tagging>"),
    ],
    ids=["get-private", "get-prefix-lookalike", "list-all", "list-private", "list-v1", "put-public", "put-private",
         "delete-public", "create-mpu", "bucket-config"],
)
def test_limited_identity_denied(proxy, s3, bucket, method, key, query, body):
    s3.put_object(Bucket=bucket, Key="public/readme.txt", Body=b"hello")
    s3.put_object(Bucket=bucket, Key="private/secret.txt", Body=b"secret")
    r = signed(proxy, method, bucket, key, query=query, body=body, creds=limited(proxy))
    assert_s3_error(r, 403, "AccessDenied")
    assert s3.get_object(Bucket=bucket, Key="public/readme.txt")["Body"].read() == b"hello"
    assert absent(s3, bucket, "public/new.txt") and absent(s3, bucket, "private/new.txt")


def test_limited_identity_cannot_copy_out_of_private(proxy, s3, limited_s3, bucket):
    s3.put_object(Bucket=bucket, Key="private/secret.txt", Body=b"secret")
    with pytest.raises(ClientError) as ei:
        limited_s3.copy_object(Bucket=bucket, Key="public/leak.txt", CopySource={"Bucket": bucket, "Key": "private/secret.txt"})
    assert client_error(ei.value) == (403, "AccessDenied")
    assert absent(s3, bucket, "public/leak.txt")


# --------------------------------------------------------------------- robustness after malformed requests


def _after(s3, bucket):
    """The proxy still serves: a full put/get round trip on a new connection."""
    proxy_alive(s3)
    data = rand(3000)
    s3.put_object(Bucket=bucket, Key="after", Body=data)
    assert s3.get_object(Bucket=bucket, Key="after")["Body"].read() == data


def test_garbage_complete_multipart_xml(proxy, s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=b"x" * 100)
    r = signed(proxy, "POST", bucket, "mp", query={"uploadId": uid}, body=b"<Complete<<garbage & \x00\xff")
    # S3 answers 400 MalformedXML; the proxy relays what the backend says (moto: a 500 HTML page).
    assert r.status is not None and 400 <= r.status < 600, (r.status, r.body)
    assert absent(s3, bucket, "mp")
    s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid)
    _after(s3, bucket)


@pytest.mark.parametrize("rng", ["bytes=abc", "bytes=5-2", "bytes=0-1,4-5", "chars=0-1", "bytes=", "bytes=--1"])
def test_unusable_range_header(proxy, s3, bucket, rng):
    data = rand(50 * KiB)
    s3.put_object(Bucket=bucket, Key="r", Body=data)
    r = get_range(proxy, bucket, "r", rng)
    # S3 ignores a Range header it can't use and returns the whole object.
    assert r.status == 200 and not r.aborted
    assert r.body == data
    _after(s3, bucket)


def get_range(proxy, bucket, key, rng):
    return signed(proxy, "GET", bucket, key, headers={"Range": rng})


def test_huge_header(proxy, s3, bucket):
    ak, sk = main_creds(proxy)
    req = sign("PUT", object_url(proxy.url, bucket, "big-header"), ak, sk, body=b"x",
               headers={"x-amz-meta-big": "a" * (64 * KiB)})
    r = send_signed(req)
    assert r.aborted or (r.status is not None and 400 <= r.status < 500), r.status
    assert absent(s3, bucket, "big-header")
    _after(s3, bucket)


@pytest.mark.smoke
def test_aws_chunked_raw_upload_complete(proxy, s3, bucket):
    """The hand-built aws-chunked framing used below is accepted when complete."""
    data = rand(200 * KiB + 5)
    reply = send_raw(proxy, raw_put_head(proxy, bucket, "whole", "chunked", len(data)) + aws_chunked_body(data))
    assert reply.status == 200, reply
    assert s3.get_object(Bucket=bucket, Key="whole")["Body"].read() == data


@pytest.mark.xfail(strict=False, reason=(
    "a header longer than the HTTP parser's max_field_size (server.py passes limits.max_header_size=16 KiB; the "
    "test fixture's AppRunner keeps aiohttp's 8190) is rejected by aiohttp before the middleware runs: 400 "
    "text/plain 'Got more than N bytes...', no S3 XML, no x-amz-request-id."))
def test_huge_header_is_s3_error(proxy, bucket):
    ak, sk = main_creds(proxy)
    req = sign("GET", object_url(proxy.url, bucket, "x"), ak, sk, headers={"x-amz-meta-big": "a" * (64 * KiB)})
    r = send_signed(req)
    assert r.status == 400
    assert_s3_error(r, 400, r.error()["Code"])


def test_error_on_head_has_request_id_and_no_body(proxy, bucket):
    r = signed(proxy, "HEAD", bucket, "missing")
    assert r.status == 404
    assert r.body == b""
    assert r.header("x-amz-request-id")


def _cut_upload(proxy, bucket, key, mode):
    """Start a 1 MiB PUT, send part of its body, then close the socket."""
    total = 1 * MiB
    if mode == "chunked":
        body = aws_chunked_body(rand(total // 3), complete=False)
    else:
        body = rand(total // 3)
    sock = raw_socket(proxy)
    try:
        sock.sendall(raw_put_head(proxy, bucket, key, mode, total) + body)
        time.sleep(0.2)
    finally:
        sock.close()


@pytest.mark.parametrize("mode", ["chunked", "content-length"])
def test_body_cut_off(proxy, s3, raw, bucket, mode):
    _cut_upload(proxy, bucket, "cut", mode)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert absent(raw, bucket, "cut")
        time.sleep(0.25)
    assert absent(s3, bucket, "cut")
    _after(s3, bucket)


@pytest.mark.smoke
@pytest.mark.parametrize("mode", ["chunked", "content-length"])
def test_body_cut_off_keeps_old_version(proxy, s3, bucket, mode):
    s3.put_object(Bucket=bucket, Key="cut", Body=b"old")
    _cut_upload(proxy, bucket, "cut", mode)
    time.sleep(1)
    assert s3.get_object(Bucket=bucket, Key="cut")["Body"].read() == b"old"
    _after(s3, bucket)


def test_garbage_request_line(proxy, s3, bucket):
    sock = raw_socket(proxy)
    try:
        sock.sendall(b"\x16\x03\x01\x02\x00garbage not http\r\n\r\n")
        sock.settimeout(5)
        try:
            sock.recv(65536)
        except OSError:
            pass
    finally:
        sock.close()
    _after(s3, bucket)
