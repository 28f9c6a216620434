"""SSE-C objects as copy sources, and GetObjectAttributes of SSE-C objects.

Findings:

* "SSE-C objects cannot be copied: the copy-source SSE-C header names are built
  with the prefix twice" (x-amz-copy-source-x-amz-server-side-encryption-...):
  CopyObject and UploadPartCopy of an SSE-C source must work with
  ``x-amz-copy-source-server-side-encryption-customer-*``, to an SSE-C
  destination under another key and to a normal one; a wrong source key is
  403, a missing one 400, nothing is written when they fail, and no customer
  key ever reaches the backend.
* "GetObjectAttributes answers an SSE-C object without the customer key (leaks
  its size)": like S3, it needs the SSE-C headers with the right key (400
  without them, 403 with another key).
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Backend, Proxy, proxy_settings, start_proxy, stop_proxy
from tests.integration.helpers import MiB, absent, assert_no_plaintext, client_error, empty_bucket, rand

K1, K2, K3 = os.urandom(32), os.urandom(32), os.urandom(32)


def ssec(key: bytes) -> dict[str, Any]:
    return {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": key}


def src_ssec(key: bytes) -> dict[str, Any]:
    return {"CopySourceSSECustomerAlgorithm": "AES256", "CopySourceSSECustomerKey": key}


def md5_b64(key: bytes) -> str:
    return base64.b64encode(hashlib.md5(key).digest()).decode()


def ssec_b64(key: bytes) -> dict[str, Any]:
    """For operations botocore does not base64 the key of (GetObjectAttributes)."""
    return {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": base64.b64encode(key).decode(),
            "SSECustomerKeyMD5": md5_b64(key)}


@pytest.fixture(scope="module")
def sproxy(backend: Backend) -> Iterator[Proxy]:
    """A proxy that accepts SSE-C over plain HTTP, recording every header it sends the backend."""
    p = start_proxy(proxy_settings(backend, require_https_for_sse_c=False))
    sent: list[dict[str, str]] = []
    real = p.state.backend.request

    async def recording(method: str, bucket: Any, key: Any = None, **kw: Any) -> Any:
        sent.append({k.lower(): str(v) for k, v in (kw.get("headers") or {}).items()})
        return await real(method, bucket, key, **kw)

    p.state.backend.request = recording
    p.extra["sent"] = sent
    yield p
    stop_proxy(p)


@pytest.fixture()
def sbucket(sproxy: Proxy) -> Iterator[str]:
    s3 = sproxy.client()
    name = "ssec-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    yield name
    empty_bucket(s3, name)


@pytest.fixture(autouse=True)
def no_customer_key_reaches_the_backend(sproxy: Proxy) -> Iterator[None]:
    sent: list[dict[str, str]] = sproxy.extra["sent"]
    start = len(sent)
    yield
    secrets = {base64.b64encode(k).decode() for k in (K1, K2, K3)}
    for headers in sent[start:]:
        leaked = [n for n, v in headers.items() if "customer" in n or v in secrets]
        assert not leaked, f"customer key headers sent to the backend: {leaked}"


def put_ssec(s3: Any, bucket: str, key: str, data: bytes, ck: bytes) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=data, **ssec(ck))


def put_ssec_multipart(s3: Any, bucket: str, key: str, parts: list[bytes], ck: bytes) -> None:
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key, **ssec(ck))["UploadId"]
    done = []
    for i, p in enumerate(parts, start=1):
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=i, Body=p, **ssec(ck))
        done.append({"PartNumber": i, "ETag": r["ETag"]})
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": done}, **ssec(ck))


def get(s3: Any, bucket: str, key: str, **kw: Any) -> bytes:
    return bytes(s3.get_object(Bucket=bucket, Key=key, **kw)["Body"].read())


def assert_unreadable_without(s3: Any, bucket: str, key: str, right: bytes, wrong: bytes) -> None:
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=bucket, Key=key)
    assert client_error(ei.value) == (400, "InvalidRequest")
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=bucket, Key=key, **ssec(wrong))
    assert client_error(ei.value)[0] == 403
    assert s3.head_object(Bucket=bucket, Key=key, **ssec(right))["SSECustomerKeyMD5"] == md5_b64(right)


# --------------------------------------------------------------------- CopyObject


@pytest.mark.parametrize("layout", ["single", "multipart"])
@pytest.mark.parametrize("directive", ["COPY", "REPLACE"])
def test_copy_ssec_source_to_ssec_destination_with_another_key(sproxy: Proxy, sbucket: str, raw: Any,
                                                                layout: str, directive: str) -> None:
    s3 = sproxy.client()
    if layout == "single":
        data = rand(100_000)
        put_ssec(s3, sbucket, "src", data, K1)
    else:
        parts = [rand(5 * MiB), rand(1000)]
        data = b"".join(parts)
        put_ssec_multipart(s3, sbucket, "src", parts, K1)
    out = s3.copy_object(Bucket=sbucket, Key="dst", CopySource={"Bucket": sbucket, "Key": "src"},
                         MetadataDirective=directive, **ssec(K2), **src_ssec(K1))
    assert out["SSECustomerKeyMD5"] == md5_b64(K2)
    assert get(s3, sbucket, "dst", **ssec(K2)) == data
    assert_unreadable_without(s3, sbucket, "dst", K2, K1)
    # The source is untouched and still needs its own key.
    assert get(s3, sbucket, "src", **ssec(K1)) == data
    for key in ("src", "dst"):
        assert_no_plaintext(data, raw.get_object(Bucket=sbucket, Key=key)["Body"].read())


@pytest.mark.parametrize("layout", ["single", "multipart"])
def test_copy_ssec_source_to_normal_destination(sproxy: Proxy, sbucket: str, raw: Any, layout: str) -> None:
    s3 = sproxy.client()
    if layout == "single":
        data = rand(70_000)
        put_ssec(s3, sbucket, "src", data, K1)
    else:
        parts = [rand(5 * MiB), rand(10)]
        data = b"".join(parts)
        put_ssec_multipart(s3, sbucket, "src", parts, K1)
    out = s3.copy_object(Bucket=sbucket, Key="plain", CopySource={"Bucket": sbucket, "Key": "src"}, **src_ssec(K1))
    assert "SSECustomerKeyMD5" not in out
    assert get(s3, sbucket, "plain") == data
    with pytest.raises(ClientError) as ei:  # no longer an SSE-C object: a customer key is out of place
        s3.get_object(Bucket=sbucket, Key="plain", **ssec(K1))
    assert client_error(ei.value) == (400, "InvalidRequest")
    assert_no_plaintext(data, raw.get_object(Bucket=sbucket, Key="plain")["Body"].read())


def test_copy_normal_source_to_ssec_destination(sproxy: Proxy, sbucket: str) -> None:
    s3 = sproxy.client()
    s3.put_object(Bucket=sbucket, Key="src", Body=b"plain source")
    s3.copy_object(Bucket=sbucket, Key="dst", CopySource={"Bucket": sbucket, "Key": "src"}, **ssec(K3))
    assert get(s3, sbucket, "dst", **ssec(K3)) == b"plain source"
    assert_unreadable_without(s3, sbucket, "dst", K3, K1)


def test_copy_ssec_source_with_wrong_key_is_refused(sproxy: Proxy, sbucket: str) -> None:
    s3 = sproxy.client()
    put_ssec(s3, sbucket, "src", b"customer secret", K1)
    for dest in ({}, ssec(K2)):
        with pytest.raises(ClientError) as ei:
            s3.copy_object(Bucket=sbucket, Key="dst", CopySource={"Bucket": sbucket, "Key": "src"},
                           **dest, **src_ssec(K2))
        assert client_error(ei.value) == (403, "AccessDenied")
        assert absent(s3, sbucket, "dst")


def test_copy_ssec_source_without_key_is_refused(sproxy: Proxy, sbucket: str) -> None:
    s3 = sproxy.client()
    put_ssec(s3, sbucket, "src", b"customer secret", K1)
    for dest in ({}, ssec(K1), ssec(K2)):  # the destination's key is not the source's key
        with pytest.raises(ClientError) as ei:
            s3.copy_object(Bucket=sbucket, Key="dst", CopySource={"Bucket": sbucket, "Key": "src"}, **dest)
        assert client_error(ei.value) == (400, "InvalidRequest")
        assert absent(s3, sbucket, "dst")


def test_copy_source_key_for_a_normal_source_is_refused(sproxy: Proxy, sbucket: str) -> None:
    s3 = sproxy.client()
    s3.put_object(Bucket=sbucket, Key="src", Body=b"plain")
    with pytest.raises(ClientError) as ei:
        s3.copy_object(Bucket=sbucket, Key="dst", CopySource={"Bucket": sbucket, "Key": "src"}, **src_ssec(K1))
    assert client_error(ei.value) == (400, "InvalidRequest")
    assert absent(s3, sbucket, "dst")


# --------------------------------------------------------------------- UploadPartCopy


@pytest.mark.parametrize("dest_key", [K2, None], ids=["ssec-dest", "normal-dest"])
def test_upload_part_copy_from_ssec_source(sproxy: Proxy, sbucket: str, raw: Any, dest_key: bytes | None) -> None:
    s3 = sproxy.client()
    data = rand(5 * MiB + 1000)  # part 1: all of it (parts but the last need 5 MiB), part 2: a range
    put_ssec(s3, sbucket, "src", data, K1)
    dest = ssec(dest_key) if dest_key else {}
    uid = s3.create_multipart_upload(Bucket=sbucket, Key="mp", **dest)["UploadId"]
    p1 = s3.upload_part_copy(Bucket=sbucket, Key="mp", UploadId=uid, PartNumber=1,
                             CopySource={"Bucket": sbucket, "Key": "src"}, **dest, **src_ssec(K1))
    p2 = s3.upload_part_copy(Bucket=sbucket, Key="mp", UploadId=uid, PartNumber=2,
                             CopySource={"Bucket": sbucket, "Key": "src"}, CopySourceRange="bytes=1000-200999",
                             **dest, **src_ssec(K1))
    parts = [{"PartNumber": 1, "ETag": p1["CopyPartResult"]["ETag"]}, {"PartNumber": 2, "ETag": p2["CopyPartResult"]["ETag"]}]
    s3.complete_multipart_upload(Bucket=sbucket, Key="mp", UploadId=uid, MultipartUpload={"Parts": parts}, **dest)
    expect = data + data[1000:201000]
    assert get(s3, sbucket, "mp", **dest) == expect
    if dest_key:
        assert_unreadable_without(s3, sbucket, "mp", K2, K1)
    assert_no_plaintext(expect, raw.get_object(Bucket=sbucket, Key="mp")["Body"].read())


@pytest.mark.parametrize("source_key,expected", [(K2, (403, "AccessDenied")), (None, (400, "InvalidRequest"))],
                         ids=["wrong-key", "no-key"])
def test_upload_part_copy_from_ssec_source_refused(sproxy: Proxy, sbucket: str, source_key: bytes | None,
                                                   expected: tuple[int, str]) -> None:
    s3 = sproxy.client()
    put_ssec(s3, sbucket, "src", b"s" * 1000, K1)
    uid = s3.create_multipart_upload(Bucket=sbucket, Key="mp")["UploadId"]
    with pytest.raises(ClientError) as ei:
        s3.upload_part_copy(Bucket=sbucket, Key="mp", UploadId=uid, PartNumber=1,
                            CopySource={"Bucket": sbucket, "Key": "src"}, **(src_ssec(source_key) if source_key else {}))
    assert client_error(ei.value) == expected
    assert s3.list_parts(Bucket=sbucket, Key="mp", UploadId=uid).get("Parts", []) == []
    s3.abort_multipart_upload(Bucket=sbucket, Key="mp", UploadId=uid)


# --------------------------------------------------------------------- GetObjectAttributes


def test_get_object_attributes_of_ssec_object_needs_the_key(sproxy: Proxy, sbucket: str) -> None:
    s3 = sproxy.client()
    data = rand(12_345)
    put_ssec(s3, sbucket, "secret-size", data, K1)
    attrs = ["ObjectSize", "ETag"]
    with pytest.raises(ClientError) as ei:
        s3.get_object_attributes(Bucket=sbucket, Key="secret-size", ObjectAttributes=attrs)
    assert client_error(ei.value) == (400, "InvalidRequest")
    assert "12345" not in str(ei.value.response)
    with pytest.raises(ClientError) as ei:
        s3.get_object_attributes(Bucket=sbucket, Key="secret-size", ObjectAttributes=attrs, **ssec_b64(K2))
    assert client_error(ei.value) == (403, "AccessDenied")
    got = s3.get_object_attributes(Bucket=sbucket, Key="secret-size", ObjectAttributes=attrs, **ssec_b64(K1))
    assert got["ObjectSize"] == len(data)


def test_get_object_attributes_of_normal_object(sproxy: Proxy, sbucket: str) -> None:
    s3 = sproxy.client()
    s3.put_object(Bucket=sbucket, Key="plain", Body=b"x" * 777)
    got = s3.get_object_attributes(Bucket=sbucket, Key="plain", ObjectAttributes=["ObjectSize"])
    assert got["ObjectSize"] == 777
    with pytest.raises(ClientError) as ei:
        s3.get_object_attributes(Bucket=sbucket, Key="plain", ObjectAttributes=["ObjectSize"], **ssec_b64(K1))
    assert client_error(ei.value) == (400, "InvalidRequest")
    with pytest.raises(ClientError) as ei:
        s3.get_object_attributes(Bucket=sbucket, Key="missing", ObjectAttributes=["ObjectSize"])
    assert client_error(ei.value)[0] == 404
