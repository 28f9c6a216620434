"""s3proxy answers like AWS S3 (issue 14): self-copies, unknown Expect values, partNumber reads."""

from __future__ import annotations

import http.client
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.integration.helpers import (
    MiB,
    assert_s3_error,
    client_error,
    main_creds,
    multipart_upload,
    object_url,
    rand,
    raw_socket,
    sign,
    signed,
)

SELF_COPY = (
    "This copy request is illegal because it is trying to copy an object to itself without changing the "
    "object's metadata, storage class, website redirect location or encryption attributes."
)


# --------------------------------------------------------------------- A: copy onto itself


def _self_copy(proxy: Any, bucket: str, key: str, headers: dict[str, str] | None = None, source: str | None = None) -> Any:
    return signed(proxy, "PUT", bucket, key, headers={"x-amz-copy-source": source or f"/{bucket}/{key}", **(headers or {})})


@pytest.mark.parametrize("extra", [{}, {"x-amz-metadata-directive": "COPY"}, {"x-amz-meta-v": "2"},
                                   {"x-amz-acl": "private"}, {"Content-Type": "text/plain"}])
@pytest.mark.smoke
def test_self_copy_without_change_is_refused(proxy: Any, s3: Any, bucket: str, extra: dict[str, str]) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"body", Metadata={"v": "1"})
    before = s3.head_object(Bucket=bucket, Key="k")
    err = assert_s3_error(_self_copy(proxy, bucket, "k", extra), 400, "InvalidRequest")
    assert err["Message"] == SELF_COPY
    after = s3.head_object(Bucket=bucket, Key="k")
    assert (after["ETag"], after["LastModified"], after["Metadata"]) == (before["ETag"], before["LastModified"], {"v": "1"})


def test_self_copy_refused_for_multipart_objects_too(s3: Any, bucket: str) -> None:
    multipart_upload(s3, bucket, "mp", [rand(5 * MiB), rand(1000)])
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="mp", CopySource={"Bucket": bucket, "Key": "mp"})
    assert client_error(e.value) == (400, "InvalidRequest")


@pytest.mark.parametrize("extra", [
    {"x-amz-metadata-directive": "REPLACE", "x-amz-meta-v": "2"},
    {"x-amz-storage-class": "STANDARD"},  # even the class the object already has
    {"x-amz-website-redirect-location": "/elsewhere"},
    {"x-amz-server-side-encryption": "aws:kms"},
])
def test_self_copy_that_changes_something_is_allowed(proxy: Any, s3: Any, bucket: str, extra: dict[str, str]) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"body", Metadata={"v": "1"})
    r = _self_copy(proxy, bucket, "k", extra)
    assert r.status == 200, (r.status, r.body)
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"body"


def test_copy_to_another_key_or_bucket_needs_no_change(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"body")
    s3.copy_object(Bucket=bucket, Key="k2", CopySource={"Bucket": bucket, "Key": "k"})
    assert s3.get_object(Bucket=bucket, Key="k2")["Body"].read() == b"body"


@pytest.mark.needs("versioning")
def test_self_copy_of_a_named_version_is_a_restore(s3: Any, bucket: str) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["VersionId"]
    s3.put_object(Bucket=bucket, Key="k", Body=b"two")
    with pytest.raises(ClientError) as e:  # the current version, not named: nothing changes
        s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"})
    assert client_error(e.value) == (400, "InvalidRequest")
    s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k", "VersionId": v1})
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"one"


def test_self_copy_of_a_missing_object_is_no_such_key(proxy: Any, bucket: str) -> None:
    assert_s3_error(_self_copy(proxy, bucket, "absent"), 404, "NoSuchKey")


# --------------------------------------------------------------------- B: Expect


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_unknown_expect_value_is_ignored(proxy: Any, s3: Any, bucket: str, method: str) -> None:
    if method == "GET":
        s3.put_object(Bucket=bucket, Key="k", Body=b"body")
    body = b"new body" if method == "PUT" else b""
    r = signed(proxy, method, bucket, "k", headers={"Expect": "something-else"}, body=body)
    assert r.status == 200, (r.status, r.body)
    if method == "GET":
        assert r.body == b"body"
    else:
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"new body"


def test_expect_100_continue_still_answered(proxy: Any, s3: Any, bucket: str) -> None:
    body = b"sent after 100 Continue"
    ak, sk = main_creds(proxy)
    url = object_url(proxy.url, bucket, "k")
    req = sign("PUT", url, ak, sk, body=body, headers={"Expect": "100-continue"})
    path = url.split(proxy.url, 1)[1]
    head = f"PUT {path} HTTP/1.1\r\nHost: {proxy.url.split('//', 1)[1]}\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in req.headers.items()) + "\r\n"
    sock = raw_socket(proxy)
    try:
        sock.sendall(head.encode())
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = sock.recv(1024)
            assert chunk, interim
            interim += chunk
        assert interim.startswith(b"HTTP/1.1 100 "), interim
        sock.sendall(body)
        resp = http.client.HTTPResponse(sock, method="PUT")
        resp.begin()
        assert resp.status == 200, resp.read()
    finally:
        sock.close()
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == body


# --------------------------------------------------------------------- C: partNumber


@pytest.fixture()
def mp_object(s3: Any, bucket: str) -> tuple[str, list[bytes]]:
    parts = [rand(5 * MiB), rand(1234)]
    multipart_upload(s3, bucket, "mp", parts)
    return bucket, parts


@pytest.mark.smoke
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_part_number_beyond_the_parts(proxy: Any, mp_object: tuple[str, list[bytes]], method: str) -> None:
    bucket, _ = mp_object
    r = signed(proxy, method, bucket, "mp", query={"partNumber": "3"})
    assert r.status == 416, (r.status, r.body)
    if method == "GET":
        err = assert_s3_error(r, 416, "InvalidPartNumber")
        assert err["Message"] == "The requested partnumber is not satisfiable"
        assert (err["PartNumberRequested"], err["ActualPartCount"]) == ("3", "2")
    else:
        assert not r.body


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_part_number_of_a_single_put_object(proxy: Any, s3: Any, bucket: str, method: str) -> None:
    s3.put_object(Bucket=bucket, Key="one", Body=b"test-123")
    r = signed(proxy, method, bucket, "one", query={"partNumber": "1"})
    assert r.status == 206, (r.status, r.body)
    assert r.header("content-range") == "bytes 0-7/8"
    assert r.header("content-length") == "8"
    assert r.header("x-amz-mp-parts-count") is None
    if method == "GET":
        assert r.body == b"test-123"
    r = signed(proxy, method, bucket, "one", query={"partNumber": "2"})
    assert r.status == 416, (r.status, r.body)
    if method == "GET":
        err = assert_s3_error(r, 416, "InvalidPartNumber")
        assert (err["PartNumberRequested"], err["ActualPartCount"]) == ("2", "1")


def test_part_number_of_a_multipart_object(proxy: Any, mp_object: tuple[str, list[bytes]]) -> None:
    bucket, parts = mp_object
    total = sum(map(len, parts))
    r = signed(proxy, "GET", bucket, "mp", query={"partNumber": "2"})
    assert r.status == 206 and r.body == parts[1]
    assert r.header("content-range") == f"bytes {len(parts[0])}-{total - 1}/{total}"
    assert r.header("x-amz-mp-parts-count") == "2"
    h = signed(proxy, "HEAD", bucket, "mp", query={"partNumber": "1"})
    assert h.status == 206 and h.header("content-length") == str(len(parts[0]))
    assert h.header("x-amz-mp-parts-count") == "2"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_part_number_with_range(proxy: Any, mp_object: tuple[str, list[bytes]], method: str) -> None:
    bucket, _ = mp_object
    r = signed(proxy, method, bucket, "mp", query={"partNumber": "1"}, headers={"Range": "bytes=0-8"})
    assert r.status == 400, (r.status, r.body)
    if method == "GET":
        err = assert_s3_error(r, 400, "InvalidRequest")
        assert err["Message"] == "Cannot specify both Range header and partNumber query parameter"
