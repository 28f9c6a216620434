"""The embedded S3 store, driven by boto3, the AWS CLI, the MinIO SDK and raw HTTP."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import zlib
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from botocore.exceptions import ClientError
from minio import Minio
from minio.commonconfig import CopySource
from minio.deleteobjects import DeleteObject

from s3proxy.aws.sigv4 import (
    STREAMING_PAYLOAD,
    STREAMING_UNSIGNED_PAYLOAD_TRAILER,
    UNSIGNED_PAYLOAD,
    chunk_signature,
    derive_signing_key,
    sign_request,
    uri_encode,
)
from s3proxy.devstore import DevStoreServer, build_devstore_app

DevStoreThread = Any  # tests/devstore/conftest.py
ACCESS_KEY = "DEVSTORETESTKEY"  # as in conftest.py
SECRET_KEY = "devstore/test+secret"
REGION = "us-east-1"

MiB = 1 << 20
SPECIAL_KEYS = [
    "plain.txt",
    "with space.txt",
    "plus+sign",
    "percent%20literal%",
    "unicodé/日本語/ключ 🎉",
    "../escape-attempt",
    "a/../../b",
    "/leading-slash",
    "double//slash",
    "./dot",
    "..",
    "trailing/",
    "q?uestion#hash&amp=1",
    "tab\tand~tilde*star'quote\"",
    "UPPER",
    "upper",
]


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def _status(exc: pytest.ExceptionInfo[ClientError]) -> int:
    return int(exc.value.response["ResponseMetadata"]["HTTPStatusCode"])


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _mp_etag(parts: list[bytes]) -> str:
    return hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + f"-{len(parts)}"


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _xml(body: bytes) -> ET.Element:
    root = ET.fromstring(body)
    for el in root.iter():
        el.tag = el.tag.split("}", 1)[-1]
    return root


# ---------------------------------------------------------------------------
# Buckets


def test_bucket_operations(s3: Any) -> None:
    s3.create_bucket(Bucket="alpha")
    s3.create_bucket(Bucket="beta.bucket-2", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert names == ["alpha", "beta.bucket-2"]
    s3.head_bucket(Bucket="alpha")
    assert s3.get_bucket_location(Bucket="alpha")["LocationConstraint"] is None

    with pytest.raises(ClientError) as e:
        s3.create_bucket(Bucket="alpha")
    assert _code(e) == "BucketAlreadyOwnedByYou" and _status(e) == 409
    for bad in ("ab", "Upper", "under_score", "192.168.1.1", "-dash", "a..b"):
        with pytest.raises(ClientError) as e:
            s3.create_bucket(Bucket=bad)
        assert _code(e) == "InvalidBucketName"

    s3.put_object(Bucket="alpha", Key="k", Body=b"x")
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket="alpha")
    assert _code(e) == "BucketNotEmpty" and _status(e) == 409
    s3.delete_object(Bucket="alpha", Key="k")
    s3.delete_bucket(Bucket="alpha")
    with pytest.raises(ClientError) as e:
        s3.head_bucket(Bucket="alpha")
    assert _code(e) == "404"
    for call in (
        lambda: s3.list_objects_v2(Bucket="alpha"),
        lambda: s3.put_object(Bucket="alpha", Key="k", Body=b"x"),
        lambda: s3.get_object(Bucket="alpha", Key="k"),
        lambda: s3.delete_bucket(Bucket="alpha"),
        lambda: s3.create_multipart_upload(Bucket="alpha", Key="k"),
    ):
        with pytest.raises(ClientError) as e:
            call()
        assert _code(e) == "NoSuchBucket"
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["beta.bucket-2"]


def test_bucket_config_calls_answer_minimally(s3: Any, bucket: str) -> None:
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    acl = s3.get_bucket_acl(Bucket=bucket)
    assert acl["Grants"][0]["Permission"] == "FULL_CONTROL"
    for call, code in (
        (lambda: s3.get_bucket_policy(Bucket=bucket), "NoSuchBucketPolicy"),
        (lambda: s3.get_bucket_cors(Bucket=bucket), "NoSuchCORSConfiguration"),
        (lambda: s3.get_bucket_tagging(Bucket=bucket), "NoSuchTagSet"),
        (lambda: s3.get_bucket_lifecycle_configuration(Bucket=bucket), "NoSuchLifecycleConfiguration"),
        (lambda: s3.get_bucket_encryption(Bucket=bucket), "ServerSideEncryptionConfigurationNotFoundError"),
        (lambda: s3.get_bucket_website(Bucket=bucket), "NoSuchWebsiteConfiguration"),
        (lambda: s3.put_bucket_replication(Bucket=bucket, ReplicationConfiguration={
            "Role": "arn:aws:iam::1:role/r", "Rules": [{"Status": "Enabled", "Destination": {"Bucket": "arn:aws:s3:::x"}}]}),
         "NotImplemented"),
    ):
        with pytest.raises(ClientError) as e:
            call()
        assert _code(e) == code
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert s3.get_object_tagging(Bucket=bucket, Key="k")["TagSet"] == []
    assert s3.get_object_acl(Bucket=bucket, Key="k")["Grants"]
    s3.delete_bucket_policy(Bucket=bucket)


# ---------------------------------------------------------------------------
# Objects


def test_put_get_head_delete(s3: Any, bucket: str) -> None:
    body = os.urandom(3 * MiB + 17)
    put = s3.put_object(
        Bucket=bucket,
        Key="dir/obj.bin",
        Body=body,
        ContentType="application/x-test",
        ContentEncoding="identity",
        ContentDisposition='attachment; filename="x.bin"',
        CacheControl="no-cache",
        ContentLanguage="en",
        Expires=datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC),
        Metadata={"Camel-Case": "Value With Spaces", "other": "=?UTF-8?B?w7xuw69jb2Rl?="},
    )
    assert put["ETag"] == f'"{_md5(body)}"'
    assert not any(k.startswith("Checksum") for k in put)

    got = s3.get_object(Bucket=bucket, Key="dir/obj.bin")
    headers = got["ResponseMetadata"]["HTTPHeaders"]
    assert got["Body"].read() == body
    assert got["ETag"] == f'"{_md5(body)}"'
    assert got["ContentLength"] == len(body)
    assert got["ContentType"] == "application/x-test"
    assert got["ContentEncoding"] == "identity"
    assert got["ContentDisposition"] == 'attachment; filename="x.bin"'
    assert got["CacheControl"] == "no-cache"
    assert got["ContentLanguage"] == "en"
    assert headers["expires"] == "Wed, 02 Jan 2030 03:04:05 GMT"
    assert got["Metadata"] == {"camel-case": "Value With Spaces", "other": "=?UTF-8?B?w7xuw69jb2Rl?="}
    assert headers["accept-ranges"] == "bytes"
    assert headers["x-amz-request-id"]
    assert not any(h.startswith("x-amz-checksum") for h in headers)
    assert abs(got["LastModified"] - datetime.now(UTC)) < timedelta(minutes=1)

    head = s3.head_object(Bucket=bucket, Key="dir/obj.bin")
    assert head["ContentLength"] == len(body)
    assert head["ETag"] == got["ETag"]
    assert head["LastModified"] == got["LastModified"]
    assert head["Metadata"] == got["Metadata"]

    # Overwrite, then delete (twice: deleting a missing key succeeds).
    s3.put_object(Bucket=bucket, Key="dir/obj.bin", Body=b"v2")
    assert s3.get_object(Bucket=bucket, Key="dir/obj.bin")["Body"].read() == b"v2"
    head2 = s3.head_object(Bucket=bucket, Key="dir/obj.bin")
    assert head2["ContentType"] == "binary/octet-stream" and head2["Metadata"] == {}
    s3.delete_object(Bucket=bucket, Key="dir/obj.bin")
    s3.delete_object(Bucket=bucket, Key="dir/obj.bin")
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="dir/obj.bin")
    assert _code(e) == "NoSuchKey" and _status(e) == 404
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="dir/obj.bin")
    assert _status(e) == 404

    # Empty object.
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    got = s3.get_object(Bucket=bucket, Key="empty")
    assert got["Body"].read() == b"" and got["ETag"] == f'"{_md5(b"")}"'


def test_response_overrides_and_presigned_urls(devstore: DevStoreThread, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a file+name.txt", Body=b"hello")
    got = s3.get_object(
        Bucket=bucket, Key="a file+name.txt", ResponseContentType="text/x-over", ResponseCacheControl="max-age=5"
    )
    assert got["ContentType"] == "text/x-over" and got["CacheControl"] == "max-age=5"

    # boto3 presigns with SigV2 unless told otherwise; SigV2 is refused.
    v2_url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "a file+name.txt"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(v2_url)
    assert e.value.code == 400 and b"AWS4-HMAC-SHA256" in e.value.read()
    s3 = devstore.client(signature_version="s3v4")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "a file+name.txt"}, ExpiresIn=60)
    with urllib.request.urlopen(url) as r:
        assert r.read() == b"hello"
    put_url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "uploaded via url"}, ExpiresIn=60
    )
    req = urllib.request.Request(put_url, data=b"presigned body", method="PUT")
    with urllib.request.urlopen(req) as r:
        assert r.status == 200
    assert s3.get_object(Bucket=bucket, Key="uploaded via url")["Body"].read() == b"presigned body"
    # A tampered presigned URL is refused.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url.replace("a%20file", "b%20file"))
    assert e.value.code == 403
    assert b"SignatureDoesNotMatch" in e.value.read()


def test_ranges(s3: Any, bucket: str) -> None:
    body = bytes(range(256)) * 40  # 10240 bytes
    s3.put_object(Bucket=bucket, Key="r", Body=body)

    def get(r: str) -> tuple[int, bytes, str | None]:
        resp = s3.get_object(Bucket=bucket, Key="r", Range=r)
        return resp["ResponseMetadata"]["HTTPStatusCode"], resp["Body"].read(), resp.get("ContentRange")

    assert get("bytes=0-9") == (206, body[:10], "bytes 0-9/10240")
    assert get("bytes=10000-") == (206, body[10000:], "bytes 10000-10239/10240")
    assert get("bytes=-100") == (206, body[-100:], "bytes 10140-10239/10240")
    assert get("bytes=10200-99999") == (206, body[10200:], "bytes 10200-10239/10240")
    assert get("bytes=-999999") == (206, body, "bytes 0-10239/10240")
    # Syntax S3 does not understand: the whole object, 200.
    assert get("bytes=5-2")[:2] == (200, body)
    assert get("bytes=0-1,5-6")[:2] == (200, body)
    assert get("items=0-1")[:2] == (200, body)
    for unsatisfiable in ("bytes=10240-", "bytes=20000-30000", "bytes=-0"):
        with pytest.raises(ClientError) as e:
            s3.get_object(Bucket=bucket, Key="r", Range=unsatisfiable)
        assert _code(e) == "InvalidRange" and _status(e) == 416
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="empty", Range="bytes=0-")
    assert _code(e) == "InvalidRange"
    head = s3.head_object(Bucket=bucket, Key="r", Range="bytes=100-199")
    assert head["ContentLength"] == 100 and head["ContentRange"] == "bytes 100-199/10240"


def test_conditional_requests(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="c", Body=b"cond")["ETag"]
    last_modified = s3.head_object(Bucket=bucket, Key="c")["LastModified"]
    past = last_modified - timedelta(hours=1)
    future = last_modified + timedelta(hours=1)

    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"cond"
    assert s3.get_object(Bucket=bucket, Key="c", IfNoneMatch='"other"')["Body"].read() == b"cond"
    assert s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=past)["Body"].read() == b"cond"
    assert s3.get_object(Bucket=bucket, Key="c", IfUnmodifiedSince=future)["Body"].read() == b"cond"
    # If-Match true + If-Unmodified-Since false -> 200 (S3 / RFC 7232 precedence).
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag, IfUnmodifiedSince=past)["ETag"] == etag

    for kwargs, status in (
        ({"IfMatch": '"0123"'}, 412),
        ({"IfUnmodifiedSince": past}, 412),
        ({"IfNoneMatch": etag}, 304),
        ({"IfNoneMatch": "*"}, 304),
        ({"IfModifiedSince": future}, 304),
        ({"IfNoneMatch": etag, "IfModifiedSince": past}, 304),
    ):
        for call in (s3.get_object, s3.head_object):
            with pytest.raises(ClientError) as e:
                call(Bucket=bucket, Key="c", **kwargs)
            assert _status(e) == status, (call, kwargs)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="c", IfMatch='"0123"')
    assert _code(e) == "PreconditionFailed"

    # Conditional writes.
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="c", Body=b"new", IfNoneMatch="*")
    assert _status(e) == 412
    s3.put_object(Bucket=bucket, Key="c2", Body=b"new", IfNoneMatch="*")
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="c", Body=b"new", IfMatch='"0123"')
    assert _status(e) == 412
    s3.put_object(Bucket=bucket, Key="c", Body=b"new", IfMatch=etag)
    assert s3.get_object(Bucket=bucket, Key="c")["Body"].read() == b"new"


def test_integrity_checks(devstore: DevStoreThread, bucket: str) -> None:
    s3 = devstore.client(retries={"max_attempts": 1})  # botocore retries BadDigest
    body = b"integrity" * 100
    good_md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
    s3.put_object(Bucket=bucket, Key="md5", Body=body, ContentMD5=good_md5)
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="bad", Body=body, ContentMD5=base64.b64encode(b"0" * 16).decode())
    assert _code(e) == "BadDigest"
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="bad", Body=body, ContentMD5="not-base64")
    assert _code(e) == "InvalidDigest"
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="bad", Body=body, ChecksumCRC32=base64.b64encode(b"\0\0\0\0").decode())
    assert _code(e) == "BadDigest"
    s3.put_object(Bucket=bucket, Key="sha", Body=body, ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode())

    path = f"/{bucket}/bad"
    # x-amz-content-sha256 that does not match the body.
    status, _, data = devstore.request("PUT", path, body=body, payload_hash=hashlib.sha256(b"other").hexdigest())
    assert status == 400 and b"XAmzContentSHA256Mismatch" in data
    # A truncated/oversized Content-Length mismatch can't be sent with http.client; UNSIGNED-PAYLOAD works.
    status, headers, _ = devstore.request("PUT", f"/{bucket}/unsigned", body=body, payload_hash=UNSIGNED_PAYLOAD)
    assert status == 200 and headers["ETag"] == f'"{_md5(body)}"'
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="bad")
    # Nothing left behind by the refused uploads.
    assert not list((devstore.root / bucket / "tmp").iterdir())
    assert len(list((devstore.root / bucket / "objects").glob("*.data"))) == 3


def test_authentication(devstore: DevStoreThread, bucket: str) -> None:
    status, headers, data = devstore.request("GET", f"/{bucket}", sign=False)
    assert status == 403 and b"<Code>AccessDenied</Code>" in data
    assert headers["x-amz-request-id"]
    status, _, data = devstore.request("GET", f"/{bucket}", secret="wrong")
    assert status == 403 and b"SignatureDoesNotMatch" in data
    status, _, data = devstore.request("GET", f"/{bucket}", access_key="NOPE")
    assert status == 403 and b"InvalidAccessKeyId" in data
    status, _, data = devstore.request("GET", f"/{bucket}", headers={"Authorization": "AWS AK:sig"}, sign=False)
    assert status == 400
    status, _, _ = devstore.request("GET", f"/{bucket}")
    assert status == 200


def test_aws_chunked_uploads(devstore: DevStoreThread, s3: Any, bucket: str) -> None:
    payload = os.urandom(200_000)
    pieces = [payload[:65536], payload[65536:131072], payload[131072:]]

    # Signed chunks (STREAMING-AWS4-HMAC-SHA256-PAYLOAD).
    now = datetime.now(UTC)
    path = f"/{bucket}/chunked-signed"
    headers = {
        "host": devstore.host,
        "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(payload)),
    }
    signed = sign_request("PUT", path, (), headers, STREAMING_PAYLOAD, ACCESS_KEY, SECRET_KEY, REGION, now)
    seed = signed["Authorization"].rsplit("Signature=", 1)[1]
    amz_date = signed["x-amz-date"]
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    key = derive_signing_key(SECRET_KEY, amz_date[:8], REGION, "s3")
    body = b""
    prev = seed
    for piece in [*pieces, b""]:
        sig = chunk_signature(key, amz_date, scope, prev, hashlib.sha256(piece).hexdigest())
        body += f"{len(piece):x};chunk-signature={sig}\r\n".encode() + piece + b"\r\n"
        prev = sig
    status, resp_headers, data = devstore.request(
        "PUT", path, headers={**headers, **signed}, body=body, sign=False
    )
    assert status == 200, data
    got = s3.get_object(Bucket=bucket, Key="chunked-signed")
    assert got["Body"].read() == payload
    assert "ContentEncoding" not in got  # aws-chunked is not stored

    # A corrupted chunk is refused and nothing is stored.
    bad = body.replace(pieces[1][:50], bytes(50), 1)
    status, _, data = devstore.request("PUT", f"/{bucket}/chunked-bad", headers={**headers, **sign_request(
        "PUT", f"/{bucket}/chunked-bad", (), headers, STREAMING_PAYLOAD, ACCESS_KEY, SECRET_KEY, REGION, now
    )}, body=bad, sign=False)
    assert status == 403 and b"SignatureDoesNotMatch" in data
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="chunked-bad")

    # Unsigned chunks with a trailing CRC32 (what SDKs send over HTTPS).
    crc = base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode()
    for trailer_value, expect in ((crc, 200), (base64.b64encode(b"\0\0\0\1").decode(), 400)):
        body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces)
        body += f"0\r\nx-amz-checksum-crc32:{trailer_value}\r\n\r\n".encode()
        status, _, data = devstore.request(
            "PUT",
            f"/{bucket}/chunked-trailer",
            headers={
                "content-encoding": "aws-chunked",
                "x-amz-decoded-content-length": str(len(payload)),
                "x-amz-trailer": "x-amz-checksum-crc32",
            },
            body=body,
            payload_hash=STREAMING_UNSIGNED_PAYLOAD_TRAILER,
        )
        assert status == expect, data
    assert s3.get_object(Bucket=bucket, Key="chunked-trailer")["Body"].read() == payload


def test_special_keys(devstore: DevStoreThread, s3: Any, bucket: str) -> None:
    for i, key in enumerate(SPECIAL_KEYS):
        s3.put_object(Bucket=bucket, Key=key, Body=f"body {i}".encode(), Metadata={"index": str(i)})
    for i, key in enumerate(SPECIAL_KEYS):
        got = s3.get_object(Bucket=bucket, Key=key)
        assert got["Body"].read() == f"body {i}".encode(), key
        assert got["Metadata"]["index"] == str(i)
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == sorted(SPECIAL_KEYS, key=lambda k: k.encode("utf-8"))
    listed_v1 = [o["Key"] for o in s3.list_objects(Bucket=bucket)["Contents"]]
    assert listed_v1 == listed
    # Copy between awkward keys.
    s3.copy_object(Bucket=bucket, Key="copy of ../escape", CopySource={"Bucket": bucket, "Key": "q?uestion#hash&amp=1"})
    assert s3.get_object(Bucket=bucket, Key="copy of ../escape")["Body"].read() == b"body 12"
    # Everything stays inside the data directory, under hashed names.
    root = devstore.root.resolve()
    for p in _files_under(devstore.root.parent):
        assert p.resolve().is_relative_to(root), p
    data_names = {p.name for p in (devstore.root / bucket / "objects").iterdir()}
    assert len(data_names) == 2 * (len(SPECIAL_KEYS) + 1)
    for key in SPECIAL_KEYS:
        s3.delete_object(Bucket=bucket, Key=key)
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["copy of ../escape"]
    # Too long a key.
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="k" * 1025, Body=b"")
    assert _code(e) == "KeyTooLongError"


# ---------------------------------------------------------------------------
# Listing


def test_listing(s3: Any, bucket: str) -> None:
    keys = [
        "a/1", "a/2", "a/b/3", "a/b/4", "a/c/5", "b", "b/6", "c+d", "c d", "e%f", "zz", "é", "日本", "🎉",
        "~tilde", "Z",
    ]  # fmt: skip
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    utf8_order = sorted(keys, key=lambda k: k.encode("utf-8"))

    # Plain listing, v1 and v2, sizes/etags.
    v2 = s3.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in v2["Contents"]] == utf8_order
    assert v2["KeyCount"] == len(keys) and not v2["IsTruncated"]
    first = v2["Contents"][0]
    assert first["Size"] == len(first["Key"].encode()) and first["ETag"] == f'"{_md5(first["Key"].encode())}"'
    assert first["StorageClass"] == "STANDARD"

    # Prefix and delimiter.
    r = s3.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [o["Key"] for o in r["Contents"]] == ["a/1", "a/2"]
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["a/b/", "a/c/"]
    r = s3.list_objects(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["a/", "b/"]
    assert "b" in [o["Key"] for o in r["Contents"]]
    r = s3.list_objects_v2(Bucket=bucket, Prefix="nothing")
    assert "Contents" not in r and r["KeyCount"] == 0

    # Pagination: v2 (continuation tokens, start-after) and v1 (markers), with and without delimiter.
    for delimiter in ("", "/"):
        full = s3.list_objects_v2(Bucket=bucket, Delimiter=delimiter)
        expected = [o["Key"] for o in full.get("Contents", [])] + [p["Prefix"] for p in full.get("CommonPrefixes", [])]
        for max_keys in (1, 2, 3):
            got: list[str] = []
            pages = 0
            for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Delimiter=delimiter, PaginationConfig={"PageSize": max_keys}
            ):
                pages += 1
                assert page["KeyCount"] <= max_keys
                got += [o["Key"] for o in page.get("Contents", [])] + [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            assert sorted(got) == sorted(expected) and len(got) == len(expected)
            assert pages >= len(expected) // max_keys
            got = []
            for page in s3.get_paginator("list_objects").paginate(
                Bucket=bucket, Delimiter=delimiter, PaginationConfig={"PageSize": max_keys}
            ):
                got += [o["Key"] for o in page.get("Contents", [])] + [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            assert sorted(got) == sorted(expected) and len(got) == len(expected)
    r = s3.list_objects_v2(Bucket=bucket, StartAfter="b/6")
    assert [o["Key"] for o in r["Contents"]] == utf8_order[utf8_order.index("b/6") + 1 :]
    r = s3.list_objects(Bucket=bucket, Marker="zz", MaxKeys=2)
    assert [o["Key"] for o in r["Contents"]] == ["~tilde", "é"] and r["IsTruncated"]

    # encoding-type=url is decoded by boto3 (it always asks for it); check the raw form too.
    r = s3.list_objects_v2(Bucket=bucket, Prefix="c")
    assert [o["Key"] for o in r["Contents"]] == ["c d", "c+d"]
    with pytest.raises(ClientError) as e:
        s3.list_objects_v2(Bucket=bucket, ContinuationToken="!!!not-a-token")
    assert _code(e) == "InvalidArgument"
    with pytest.raises(ClientError) as e:
        s3.list_objects_v2(Bucket=bucket, MaxKeys=-1)
    assert _code(e) == "InvalidArgument"


def test_listing_raw_url_encoding(devstore: DevStoreThread, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="x y+z/é", Body=b"")
    status, _, data = devstore.request("GET", f"/{bucket}", query=[("list-type", "2"), ("encoding-type", "url")])
    assert status == 200
    root = _xml(data)
    assert root.findtext("Contents/Key") == "x%20y%2Bz/%C3%A9"
    status, _, data = devstore.request("GET", f"/{bucket}", query=[("list-type", "2")])
    assert _xml(data).findtext("Contents/Key") == "x y+z/é"


# ---------------------------------------------------------------------------
# Multipart


def _upload_parts(s3: Any, bucket: str, key: str, parts: dict[int, bytes], **create: Any) -> tuple[str, dict[int, str]]:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, **create)["UploadId"]
    etags = {}
    for number, data in parts.items():
        etags[number] = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data)["ETag"]
        assert etags[number] == f'"{_md5(data)}"'
    return upload_id, etags


def test_multipart_upload(s3: Any, bucket: str) -> None:
    p1, p2, p3 = os.urandom(5 * MiB), os.urandom(5 * MiB + 3), os.urandom(1000)
    upload_id, etags = _upload_parts(
        s3, bucket, "mp", {1: p1, 2: p2, 3: p3}, ContentType="video/x-test", Metadata={"m": "v"}
    )
    uploads = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [("mp", upload_id)]
    listed = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id)
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed["Parts"]] == [
        (1, len(p1), etags[1]), (2, len(p2), etags[2]), (3, len(p3), etags[3]),
    ]  # fmt: skip
    page = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id, MaxParts=2)
    assert page["IsTruncated"] and page["NextPartNumberMarker"] == 2
    page = s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id, PartNumberMarker=2)
    assert [p["PartNumber"] for p in page["Parts"]] == [3]

    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="mp",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in (1, 2, 3)]},
    )
    assert done["ETag"] == f'"{_mp_etag([p1, p2, p3])}"'
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    got = s3.get_object(Bucket=bucket, Key="mp")
    assert got["Body"].read() == p1 + p2 + p3
    assert got["ETag"] == done["ETag"] and got["ContentType"] == "video/x-test" and got["Metadata"] == {"m": "v"}
    assert "PartsCount" not in got

    offset = 0
    total = len(p1) + len(p2) + len(p3)
    for number, data in ((1, p1), (2, p2), (3, p3)):
        part = s3.get_object(Bucket=bucket, Key="mp", PartNumber=number)
        assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
        assert part["Body"].read() == data
        assert part["PartsCount"] == 3 and part["ContentLength"] == len(data)
        assert part["ContentRange"] == f"bytes {offset}-{offset + len(data) - 1}/{total}"
        assert part["ETag"] == done["ETag"]
        head = s3.head_object(Bucket=bucket, Key="mp", PartNumber=number)
        assert head["ContentLength"] == len(data) and head["PartsCount"] == 3
        offset += len(data)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="mp", PartNumber=4)
    assert _code(e) == "InvalidPartNumber" and _status(e) == 416
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="mp", PartNumber=1, Range="bytes=0-1")
    assert _code(e) == "InvalidRequest"

    # A simple object has one part: itself.
    s3.put_object(Bucket=bucket, Key="single", Body=b"0123456789")
    one = s3.get_object(Bucket=bucket, Key="single", PartNumber=1)
    assert one["Body"].read() == b"0123456789" and one["ContentRange"] == "bytes 0-9/10"
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="single", PartNumber=2)
    assert _status(e) == 416


def test_multipart_subset_and_gaps(s3: Any, bucket: str) -> None:
    parts = {n: os.urandom(5 * MiB if n != 9 else 77) for n in (1, 2, 5, 9)}
    upload_id, etags = _upload_parts(s3, bucket, "gaps", parts)
    # Re-uploading a part replaces it.
    parts[5] = os.urandom(5 * MiB)
    etags[5] = s3.upload_part(Bucket=bucket, Key="gaps", UploadId=upload_id, PartNumber=5, Body=parts[5])["ETag"]
    chosen = [2, 5, 9]  # skip part 1, non-contiguous numbers
    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="gaps",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in chosen]},
    )
    assert done["ETag"] == f'"{_mp_etag([parts[n] for n in chosen])}"'
    assert s3.get_object(Bucket=bucket, Key="gaps")["Body"].read() == b"".join(parts[n] for n in chosen)
    # partNumber counts completed parts by position: 2 is the second listed part (uploaded as #5).
    for position, number in enumerate(chosen, 1):
        got = s3.get_object(Bucket=bucket, Key="gaps", PartNumber=position)
        assert got["Body"].read() == parts[number] and got["PartsCount"] == 3


def test_multipart_errors(s3: Any, bucket: str) -> None:
    big, small = os.urandom(5 * MiB), os.urandom(100)
    upload_id, etags = _upload_parts(s3, bucket, "err", {1: big, 2: small, 3: small})

    def complete(parts: list[dict[str, Any]], key: str = "err", uid: str = upload_id) -> Any:
        return s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": parts})

    cases = [
        ([{"PartNumber": 2, "ETag": etags[2]}, {"PartNumber": 1, "ETag": etags[1]}], "InvalidPartOrder"),
        ([{"PartNumber": 1, "ETag": etags[1]}, {"PartNumber": 1, "ETag": etags[1]}], "InvalidPartOrder"),
        ([{"PartNumber": 1, "ETag": etags[1]}, {"PartNumber": 4, "ETag": etags[2]}], "InvalidPart"),
        ([{"PartNumber": 1, "ETag": etags[1]}, {"PartNumber": 2, "ETag": '"' + "0" * 32 + '"'}], "InvalidPart"),
        ([{"PartNumber": 2, "ETag": etags[2]}, {"PartNumber": 3, "ETag": etags[3]}], "EntityTooSmall"),
    ]
    for parts, code in cases:
        with pytest.raises(ClientError) as e:
            complete(parts)
        assert _code(e) == code and _status(e) == 400
    with pytest.raises(ClientError) as e:
        complete([{"PartNumber": 1, "ETag": etags[1]}], key="other-key")
    assert _code(e) == "NoSuchUpload"
    for bad in ("0", "10001"):
        with pytest.raises(ClientError) as e:
            s3.upload_part(Bucket=bucket, Key="err", UploadId=upload_id, PartNumber=int(bad), Body=b"x")
        assert _code(e) == "InvalidArgument"
    # The failed completions left the upload intact: a valid one works (the last part may be small).
    done = complete([{"PartNumber": 1, "ETag": etags[1]}, {"PartNumber": 3, "ETag": etags[3]}])
    assert done["ETag"] == f'"{_mp_etag([big, small])}"'
    with pytest.raises(ClientError) as e:
        complete([{"PartNumber": 1, "ETag": etags[1]}])
    assert _code(e) == "NoSuchUpload" and _status(e) == 404

    upload_id2, _ = _upload_parts(s3, bucket, "aborted", {1: small})
    s3.abort_multipart_upload(Bucket=bucket, Key="aborted", UploadId=upload_id2)
    for call in (
        lambda: s3.list_parts(Bucket=bucket, Key="aborted", UploadId=upload_id2),
        lambda: s3.upload_part(Bucket=bucket, Key="aborted", UploadId=upload_id2, PartNumber=1, Body=b"x"),
        lambda: s3.abort_multipart_upload(Bucket=bucket, Key="aborted", UploadId=upload_id2),
        lambda: s3.list_parts(Bucket=bucket, Key="aborted", UploadId="../../etc"),
    ):
        with pytest.raises(ClientError) as e:
            call()
        assert _code(e) == "NoSuchUpload"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="aborted")


def test_min_part_size_is_configurable(make_devstore: Any, tmp_path: Path) -> None:
    server = make_devstore(tmp_path / "small", min_part_size=1024)
    if True:
        s3 = server.client()
        s3.create_bucket(Bucket="small-parts")
        parts = {1: b"a" * 1024, 2: b"b" * 1024, 3: b"c"}
        upload_id, etags = _upload_parts(s3, "small-parts", "k", parts)
        with pytest.raises(ClientError) as e:
            s3.complete_multipart_upload(
                Bucket="small-parts", Key="k", UploadId=upload_id,
                MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in (1, 3, 2)]},
            )  # fmt: skip
        assert _code(e) == "InvalidPartOrder"
        s3.complete_multipart_upload(
            Bucket="small-parts", Key="k", UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in (1, 2, 3)]},
        )  # fmt: skip
        assert s3.get_object(Bucket="small-parts", Key="k", PartNumber=2)["Body"].read() == parts[2]


def test_list_multipart_uploads(s3: Any, bucket: str) -> None:
    ids = {}
    for key in ("x/1", "x/2", "x/y/3", "z"):
        ids[key] = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    second = s3.create_multipart_upload(Bucket=bucket, Key="z")["UploadId"]
    r = s3.list_multipart_uploads(Bucket=bucket)
    assert [u["Key"] for u in r["Uploads"]] == ["x/1", "x/2", "x/y/3", "z", "z"]
    r = s3.list_multipart_uploads(Bucket=bucket, Prefix="x/", Delimiter="/")
    assert [u["Key"] for u in r["Uploads"]] == ["x/1", "x/2"]
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["x/y/"]
    r = s3.list_multipart_uploads(Bucket=bucket, MaxUploads=2)
    assert r["IsTruncated"] and r["NextKeyMarker"] == "x/2"
    r = s3.list_multipart_uploads(Bucket=bucket, KeyMarker=r["NextKeyMarker"], UploadIdMarker=r["NextUploadIdMarker"])
    assert [u["Key"] for u in r["Uploads"]] == ["x/y/3", "z", "z"]
    assert {u["UploadId"] for u in r["Uploads"] if u["Key"] == "z"} == {ids["z"], second}


# ---------------------------------------------------------------------------
# Copies


def test_copy_object(s3: Any, bucket: str) -> None:
    s3.create_bucket(Bucket="other-bucket")
    body = os.urandom(2 * MiB)
    etag = s3.put_object(
        Bucket=bucket, Key="src", Body=body, ContentType="text/src", Metadata={"a": "1"}, CacheControl="max-age=1"
    )["ETag"]

    r = s3.copy_object(Bucket="other-bucket", Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert r["CopyObjectResult"]["ETag"] == etag
    got = s3.get_object(Bucket="other-bucket", Key="dst")
    assert got["Body"].read() == body
    assert got["ContentType"] == "text/src" and got["Metadata"] == {"a": "1"} and got["CacheControl"] == "max-age=1"

    s3.copy_object(
        Bucket=bucket, Key="dst2", CopySource=f"{bucket}/src", MetadataDirective="REPLACE",
        ContentType="text/new", Metadata={"b": "2"},
    )  # fmt: skip
    head = s3.head_object(Bucket=bucket, Key="dst2")
    assert head["ContentType"] == "text/new" and head["Metadata"] == {"b": "2"} and "CacheControl" not in head

    # Copy onto itself: only with REPLACE.
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src"})
    assert _code(e) == "InvalidRequest"
    s3.copy_object(
        Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src"}, MetadataDirective="REPLACE",
        Metadata={"c": "3"},
    )  # fmt: skip
    assert s3.head_object(Bucket=bucket, Key="src")["Metadata"] == {"c": "3"}
    assert s3.get_object(Bucket=bucket, Key="src")["Body"].read() == body

    # Copy-source conditions.
    s3.copy_object(Bucket=bucket, Key="dst3", CopySource={"Bucket": bucket, "Key": "src"}, CopySourceIfMatch=etag)
    for kwargs in (
        {"CopySourceIfMatch": '"nope"'},
        {"CopySourceIfNoneMatch": etag},
        {"CopySourceIfModifiedSince": datetime.now(UTC) + timedelta(hours=1)},
        {"CopySourceIfUnmodifiedSince": datetime.now(UTC) - timedelta(hours=1)},
    ):
        with pytest.raises(ClientError) as e:
            s3.copy_object(Bucket=bucket, Key="dst4", CopySource={"Bucket": bucket, "Key": "src"}, **kwargs)
        assert _code(e) == "PreconditionFailed" and _status(e) == 412, kwargs
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="dst4", CopySource={"Bucket": bucket, "Key": "missing"})
    assert _code(e) == "NoSuchKey"
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket="no-such-bucket", Key="dst4", CopySource={"Bucket": bucket, "Key": "src"})
    assert _code(e) == "NoSuchBucket"

    # A copy of a multipart object is a single-part object with the same bytes.
    parts = {1: os.urandom(5 * MiB), 2: b"tail"}
    upload_id, etags = _upload_parts(s3, bucket, "mp-src", parts)
    s3.complete_multipart_upload(
        Bucket=bucket, Key="mp-src", UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in (1, 2)]},
    )  # fmt: skip
    r = s3.copy_object(Bucket=bucket, Key="mp-copy", CopySource={"Bucket": bucket, "Key": "mp-src"})
    assert r["CopyObjectResult"]["ETag"] == f'"{_md5(parts[1] + parts[2])}"'


def test_upload_part_copy(s3: Any, bucket: str) -> None:
    src = os.urandom(15 * MiB)
    s3.put_object(Bucket=bucket, Key="big src", Body=src)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="assembled")["UploadId"]
    ranges = [(0, 5 * MiB - 1), (5 * MiB, 10 * MiB - 1), (10 * MiB, 15 * MiB - 1)]
    etags = []
    for number, (first, last) in enumerate(ranges, 1):
        r = s3.upload_part_copy(
            Bucket=bucket, Key="assembled", UploadId=upload_id, PartNumber=number,
            CopySource={"Bucket": bucket, "Key": "big src"}, CopySourceRange=f"bytes={first}-{last}",
        )  # fmt: skip
        assert r["CopyPartResult"]["ETag"] == f'"{_md5(src[first : last + 1])}"'
        etags.append(r["CopyPartResult"]["ETag"])
    with pytest.raises(ClientError) as e:
        s3.upload_part_copy(
            Bucket=bucket, Key="assembled", UploadId=upload_id, PartNumber=4,
            CopySource={"Bucket": bucket, "Key": "big src"}, CopySourceRange=f"bytes=0-{15 * MiB}",
        )  # fmt: skip
    assert _code(e) == "InvalidArgument"
    # Whole-object part copy.
    s3.put_object(Bucket=bucket, Key="small", Body=b"small tail")
    r = s3.upload_part_copy(
        Bucket=bucket, Key="assembled", UploadId=upload_id, PartNumber=4, CopySource=f"{bucket}/small"
    )
    etags.append(r["CopyPartResult"]["ETag"])
    s3.complete_multipart_upload(
        Bucket=bucket, Key="assembled", UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )  # fmt: skip
    assert s3.get_object(Bucket=bucket, Key="assembled")["Body"].read() == src + b"small tail"
    assert s3.get_object(Bucket=bucket, Key="assembled", PartNumber=3)["Body"].read() == src[10 * MiB :]


def test_delete_objects(s3: Any, bucket: str) -> None:
    keys = [f"d/{i}" for i in range(10)] + ["sp ace+", "ü"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[:5] + ["missing"]]})
    assert sorted(d["Key"] for d in r["Deleted"]) == sorted(keys[:5] + ["missing"])
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[5:]], "Quiet": True})
    assert "Deleted" not in r and "Errors" not in r
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


# ---------------------------------------------------------------------------
# Robustness


def test_malformed_requests(devstore: DevStoreThread, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    for method, path, query, body, code, status in (
        ("POST", f"/{bucket}", [("delete", "")], b"<not xml", "MalformedXML", 400),
        ("POST", f"/{bucket}", [("delete", "")], b"<Delete></Delete>", "MalformedXML", 400),
        ("POST", f"/{bucket}/k", [("uploadId", upload_id)], b"garbage", "MalformedXML", 400),
        ("POST", f"/{bucket}/k", [("uploadId", upload_id)], b"<CompleteMultipartUpload/>", "MalformedXML", 400),
        (
            "POST", f"/{bucket}/k", [("uploadId", upload_id)],
            b"<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>1</ETag></Part></CompleteMultipartUpload>",
            "MalformedXML", 400,
        ),
        (
            "POST", f"/{bucket}", [("delete", "")],
            b'<!DOCTYPE d [<!ENTITY e "boom">]><Delete><Object><Key>&e;</Key></Object></Delete>',
            "MalformedXML", 400,
        ),
        ("PUT", f"/{bucket}/k", [("uploadId", upload_id), ("partNumber", "abc")], b"", "InvalidArgument", 400),
        ("GET", f"/{bucket}/k", [("partNumber", "0")], b"", "InvalidArgument", 400),
        ("GET", f"/{bucket}", [("max-keys", "many")], b"", "InvalidArgument", 400),
        ("GET", f"/{bucket}", [("encoding-type", "base64")], b"", "InvalidArgument", 400),
        ("GET", f"/{bucket}/k", [("select", "")], b"", "NotImplemented", 501),
        ("PUT", f"/{bucket}/k", [("tagging", "")], b"<Tagging/>", "MalformedXML", 400),
        ("PUT", f"/{bucket}/k", [("legal-hold", "")], b"<LegalHold/>", "NotImplemented", 501),
        ("POST", f"/{bucket}/k", [("restore", "")], b"", "NotImplemented", 501),
        ("DELETE", "/", [], b"", "MethodNotAllowed", 405),
        ("PUT", f"/{bucket}/k", [], b"x", "InvalidArgument", 400),  # bad copy source, see headers below
        ("GET", "/%FF%FE/k", [], b"", "InvalidURI", 400),
        ("GET", f"/{bucket}/k", [("versionId", "123")], b"", "InvalidArgument", 400),  # not a version id
        ("GET", f"/{bucket}/k", [("versionId", "0" * 20 + "a" * 12)], b"", "NoSuchVersion", 404),
    ):
        headers = {"x-amz-copy-source": "nobucketorkey"} if code == "InvalidArgument" and method == "PUT" and not query else {}
        got_status, resp_headers, data = devstore.request(method, path, query, headers=headers, body=body)
        assert got_status == status, (method, path, query, data)
        root = _xml(data)
        assert root.tag == "Error" and root.findtext("Code") == code, data
        assert root.findtext("RequestId") == resp_headers["x-amz-request-id"]
    # Still serving.
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"


def _raw_put_prefix(devstore: DevStoreThread, path: str, length: int) -> bytes:
    headers = {"host": devstore.host, "content-length": str(length)}
    headers.update(sign_request("PUT", path, (), headers, UNSIGNED_PAYLOAD, ACCESS_KEY, SECRET_KEY, REGION, datetime.now(UTC)))
    head = f"PUT {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode()


def test_interrupted_upload_stores_nothing(devstore: DevStoreThread, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="victim", Body=b"old version")
    for key in ("victim", "new%20key"):
        path = f"/{bucket}/{key}"
        sock = socket.create_connection(("127.0.0.1", devstore.port))
        sock.sendall(_raw_put_prefix(devstore, path, 4 * MiB) + os.urandom(1536 * 1024))
        time.sleep(0.3)
        sock.close()
    deadline = time.monotonic() + 10
    tmp = devstore.root / bucket / "tmp"
    while list(tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(tmp.iterdir()) == []
    assert s3.get_object(Bucket=bucket, Key="victim")["Body"].read() == b"old version"
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="new key")
    assert _status(e) == 404
    assert len(list((devstore.root / bucket / "objects").iterdir())) == 2  # one sidecar, one data file

    # Same for a part upload.
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    path = f"/{bucket}/mp"
    query = f"partNumber=1&uploadId={upload_id}"
    headers = {"host": devstore.host, "content-length": str(2 * MiB)}
    headers.update(
        sign_request("PUT", path, [("partNumber", "1"), ("uploadId", upload_id)], headers, UNSIGNED_PAYLOAD,
                     ACCESS_KEY, SECRET_KEY, REGION, datetime.now(UTC))
    )  # fmt: skip
    head = f"PUT {path}?{query} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock = socket.create_connection(("127.0.0.1", devstore.port))
    sock.sendall(head.encode() + b"x" * 1000)
    sock.close()
    deadline = time.monotonic() + 10
    while list(tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id).get("Parts", []) == []


def test_concurrent_writers_leave_one_consistent_object(devstore: DevStoreThread, bucket: str) -> None:
    bodies = [bytes([i]) * (256 * 1024 + i) for i in range(8)]
    errors: list[BaseException] = []

    def put(body: bytes) -> None:
        try:
            devstore.client().put_object(Bucket=bucket, Key="contended", Body=body)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=put, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    s3 = devstore.client()
    got = s3.get_object(Bucket=bucket, Key="contended")
    data = got["Body"].read()
    assert data in bodies and got["ETag"] == f'"{_md5(data)}"' and got["ContentLength"] == len(data)
    assert sorted(p.suffix for p in (devstore.root / bucket / "objects").iterdir()) == [".data", ".json"]


def test_persistence_across_restart(devstore: DevStoreThread, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="keep/é 1", Body=b"one", ContentType="text/one", Metadata={"k": "v"})
    parts = {1: os.urandom(5 * MiB), 2: os.urandom(1234)}
    upload_id, etags = _upload_parts(s3, bucket, "keep/mp", parts)
    done = s3.complete_multipart_upload(
        Bucket=bucket, Key="keep/mp", UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in (1, 2)]},
    )  # fmt: skip
    pending, pending_etags = _upload_parts(s3, bucket, "keep/pending", {1: parts[1]})
    before = s3.head_object(Bucket=bucket, Key="keep/é 1")
    # Debris a crash could leave: a stray temp file and an unreferenced data file.
    (devstore.root / bucket / "tmp" / "stray.tmp").write_bytes(b"junk")
    (devstore.root / bucket / "objects" / ("0" * 64 + ".0123456789abcdef.data")).write_bytes(b"junk")

    devstore.restart()
    s3 = devstore.client()
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == [bucket]
    after = s3.head_object(Bucket=bucket, Key="keep/é 1")
    for field in ("ETag", "LastModified", "ContentType", "Metadata", "ContentLength"):
        assert after[field] == before[field]
    assert s3.get_object(Bucket=bucket, Key="keep/é 1")["Body"].read() == b"one"
    got = s3.get_object(Bucket=bucket, Key="keep/mp", PartNumber=2)
    assert got["Body"].read() == parts[2] and got["PartsCount"] == 2 and got["ETag"] == done["ETag"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="keep/")["Contents"]] == ["keep/mp", "keep/é 1"]
    # The pending upload survived and can be finished.
    etag2 = s3.upload_part(Bucket=bucket, Key="keep/pending", UploadId=pending, PartNumber=2, Body=b"end")["ETag"]
    s3.complete_multipart_upload(
        Bucket=bucket, Key="keep/pending", UploadId=pending,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": pending_etags[1]}, {"PartNumber": 2, "ETag": etag2}]},
    )  # fmt: skip
    assert s3.get_object(Bucket=bucket, Key="keep/pending")["Body"].read() == parts[1] + b"end"
    assert not (devstore.root / bucket / "tmp" / "stray.tmp").exists()
    assert not (devstore.root / bucket / "objects" / ("0" * 64 + ".0123456789abcdef.data")).exists()
    # The sidecar is plain JSON with what the brief asks for.
    sidecars = [json.loads(p.read_text()) for p in (devstore.root / bucket / "objects").glob("*.json")]
    mp = next(s for s in sidecars if s["key"] == "keep/mp")
    assert mp["parts"] == [5 * MiB, 1234] and mp["etag"] == done["ETag"].strip('"') and mp["size"] == 5 * MiB + 1234
    one = next(s for s in sidecars if s["key"] == "keep/é 1")
    assert one["metadata"] == {"x-amz-meta-k": "v"} and one["headers"]["content-type"] == "text/one"


def test_build_app_api(tmp_path: Path) -> None:
    app = build_devstore_app(tmp_path / "d", {"a": "b"})
    assert (tmp_path / "d").is_dir()
    assert any(isinstance(v, DevStoreServer) for v in app.values())


# ---------------------------------------------------------------------------
# Other clients


def test_aws_cli(devstore: DevStoreThread, s3: Any, aws_cli: Path, aws_cli_env: dict[str, str], tmp_path: Path) -> None:
    def aws(*args: str) -> str:
        proc = subprocess.run(
            [str(aws_cli), "--endpoint-url", devstore.endpoint, *args],
            env=aws_cli_env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    src = tmp_path / "src"
    (src / "sub dir").mkdir(parents=True)
    small = b"small file\n"
    large = os.urandom(9 * MiB + 5)  # above the CLI's 8 MiB multipart threshold
    (src / "small.txt").write_bytes(small)
    (src / "sub dir" / "large+file.bin").write_bytes(large)
    (src / "ünï.txt").write_bytes(b"unicode name")

    aws("s3", "mb", "s3://cli-bucket")
    aws("s3", "cp", str(src / "small.txt"), "s3://cli-bucket/small.txt")
    aws("s3", "cp", str(src / "sub dir" / "large+file.bin"), "s3://cli-bucket/big/large+file.bin")
    head = s3.head_object(Bucket="cli-bucket", Key="big/large+file.bin")
    assert head["ContentLength"] == len(large) and head["ETag"].endswith('-2"')
    assert s3.head_object(Bucket="cli-bucket", Key="small.txt")["ContentType"] == "text/plain"

    listing = aws("s3", "ls", "s3://cli-bucket/")
    assert "PRE big/" in listing and "small.txt" in listing
    assert "large+file.bin" in aws("s3", "ls", "--recursive", "s3://cli-bucket")

    aws("s3", "cp", "s3://cli-bucket/big/large+file.bin", str(tmp_path / "down.bin"))
    assert (tmp_path / "down.bin").read_bytes() == large

    aws("s3", "sync", str(src), "s3://cli-bucket/synced")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="cli-bucket", Prefix="synced/")["Contents"]}
    assert keys == {"synced/small.txt", "synced/sub dir/large+file.bin", "synced/ünï.txt"}
    assert "upload" not in aws("s3", "sync", str(src), "s3://cli-bucket/synced")  # nothing left to do
    dest = tmp_path / "dest"
    aws("s3", "sync", "s3://cli-bucket/synced", str(dest))
    assert (dest / "sub dir" / "large+file.bin").read_bytes() == large
    assert (dest / "ünï.txt").read_bytes() == b"unicode name"
    aws("s3", "rm", "--recursive", "s3://cli-bucket/synced")
    assert "synced" not in aws("s3", "ls", "s3://cli-bucket/")


def test_minio_sdk(devstore: DevStoreThread) -> None:
    mc = Minio(devstore.host, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False)
    mc.make_bucket("minio-bucket")
    assert mc.bucket_exists("minio-bucket") and not mc.bucket_exists("absent-bucket")
    body = os.urandom(100_000)
    result = mc.put_object(
        "minio-bucket", "dir/obj ü+.bin", io.BytesIO(body), len(body),
        content_type="application/x-minio", metadata={"x-amz-meta-origin": "minio"},
    )  # fmt: skip
    assert result.etag == _md5(body)
    resp = mc.get_object("minio-bucket", "dir/obj ü+.bin")
    try:
        assert resp.read() == body
    finally:
        resp.close()
        resp.release_conn()
    resp = mc.get_object("minio-bucket", "dir/obj ü+.bin", offset=10, length=20)
    try:
        assert resp.read() == body[10:30]
    finally:
        resp.close()
        resp.release_conn()
    stat = mc.stat_object("minio-bucket", "dir/obj ü+.bin")
    assert stat.size == len(body) and stat.content_type == "application/x-minio"
    assert stat.metadata["x-amz-meta-origin"] == "minio"

    # Multipart via the SDK (unknown length, 5 MiB parts).
    big = os.urandom(11 * MiB)
    result = mc.put_object("minio-bucket", "dir/big", io.BytesIO(big), -1, part_size=5 * MiB)
    assert result.etag.endswith("-3")
    assert mc.stat_object("minio-bucket", "dir/big").size == len(big)
    resp = mc.get_object("minio-bucket", "dir/big", request_headers={"Range": f"bytes={6 * MiB}-{6 * MiB + 9}"})
    try:
        assert resp.read() == big[6 * MiB : 6 * MiB + 10]
    finally:
        resp.close()
        resp.release_conn()

    mc.copy_object("minio-bucket", "copied", CopySource("minio-bucket", "dir/obj ü+.bin"))
    names = [o.object_name for o in mc.list_objects("minio-bucket", recursive=True)]
    assert names == ["copied", "dir/big", "dir/obj ü+.bin"]
    assert [o.object_name for o in mc.list_objects("minio-bucket")] == ["copied", "dir/"]
    assert [o.object_name for o in mc.list_objects("minio-bucket", prefix="dir/", use_api_v1=True)] == [
        "dir/big", "dir/obj ü+.bin",
    ]  # fmt: skip

    url = mc.presigned_get_object("minio-bucket", "copied", expires=timedelta(minutes=5))
    with urllib.request.urlopen(url) as r:
        assert r.read() == body

    errors = list(mc.remove_objects("minio-bucket", [DeleteObject(n) for n in names]))
    assert errors == []
    assert list(mc.list_objects("minio-bucket", recursive=True)) == []
    mc.remove_bucket("minio-bucket")
    assert not mc.bucket_exists("minio-bucket")


def test_last_modified_header_format(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="t", Body=b"")
    head = s3.head_object(Bucket=bucket, Key="t")
    raw = head["ResponseMetadata"]["HTTPHeaders"]["last-modified"]
    assert raw == formatdate(head["LastModified"].timestamp(), usegmt=True)
    assert raw.endswith(" GMT")


def test_request_path_segments_are_not_normalised(devstore: DevStoreThread, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a/./b/../c", Body=b"dots")
    status, _, data = devstore.request("GET", f"/{bucket}/a/./b/../c")
    assert status == 200 and data == b"dots"
    status, _, _ = devstore.request("GET", f"/{bucket}/a/c")
    assert status == 404
    key = "sl/" + uri_encode("x/y")  # an encoded slash is just a slash
    s3.put_object(Bucket=bucket, Key="sl/x/y", Body=b"slash")
    status, _, data = devstore.request("GET", f"/{bucket}/{key}")
    assert status == 200 and data == b"slash"


def test_boto3_managed_transfers(s3: Any, bucket: str) -> None:
    data = os.urandom(12 * MiB + 1)
    for extra in ({}, {"ChecksumAlgorithm": "SHA256"}, {"ChecksumAlgorithm": "CRC32C"}):
        s3.upload_fileobj(io.BytesIO(data), bucket, "managed", ExtraArgs=extra or None)
        head = s3.head_object(Bucket=bucket, Key="managed")
        assert head["ContentLength"] == len(data) and head["ETag"].endswith('-2"')
        out = io.BytesIO()
        s3.download_fileobj(bucket, "managed", out)
        assert out.getvalue() == data


def test_listing_echoes_parameters(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="p q+/r", Body=b"")
    v1 = s3.list_objects(Bucket=bucket, Prefix="p q+", Delimiter="/", Marker="p")
    assert (v1["Prefix"], v1["Delimiter"], v1["Marker"]) == ("p q+", "/", "p")
    assert v1["CommonPrefixes"] == [{"Prefix": "p q+/"}]
    v2 = s3.list_objects_v2(Bucket=bucket, Prefix="p q+", Delimiter="/", StartAfter="p")
    assert (v2["Prefix"], v2["Delimiter"], v2["StartAfter"]) == ("p q+", "/", "p")
    assert v2["CommonPrefixes"] == [{"Prefix": "p q+/"}]


def test_virtual_hosted_style_on_localhost(devstore: DevStoreThread, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="vh/key", Body=b"virtual")
    host = {"host": f"{bucket}.localhost:{devstore.port}"}
    status, _, data = devstore.request("GET", "/vh/key", headers=host)
    assert status == 200 and data == b"virtual"
    status, _, data = devstore.request("GET", "/", query=[("list-type", "2")], headers=host)
    assert status == 200 and _xml(data).findtext("Contents/Key") == "vh/key"
    status, _, data = devstore.request("GET", "/", headers={"host": f"no-such-bucket.localhost:{devstore.port}"})
    assert status == 404 and b"NoSuchBucket" in data
