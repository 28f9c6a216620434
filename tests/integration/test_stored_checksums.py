"""Verified plaintext checksums kept in the sealed block (envelope v2 ``"c"``; issue 14 item 3).

PUT with ``x-amz-checksum-<alg>`` (boto3 sends CRC32 by default) stores the verified value
encrypted; HEAD/GET with ``x-amz-checksum-mode: ENABLED`` return it (not for ranged GETs, as
S3) and boto3 validates the body against it; GetObjectAttributes returns ``Checksum``; the
backend sees no plaintext checksum.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import Any

import pytest

from tests.integration.helpers import MiB, multipart_upload

pytestmark = pytest.mark.needs("aws_responses", "object_attributes")  # AWS-shaped answers; GetObjectAttributes

BODY = bytes(range(256)) * 300


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


EXPECTED = {
    "CRC32": b64(zlib.crc32(BODY).to_bytes(4, "big")),
    "SHA1": b64(hashlib.sha1(BODY).digest()),
    "SHA256": b64(hashlib.sha256(BODY).digest()),
}


def checksum_headers(resp: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in resp["ResponseMetadata"]["HTTPHeaders"].items() if k.startswith("x-amz-checksum-")}


@pytest.mark.parametrize("alg", ["CRC32", "CRC32C", "SHA1", "SHA256", "CRC64NVME"])
def test_checksum_kept_and_returned(s3: Any, raw: Any, bucket: str, alg: str) -> None:
    try:
        put = s3.put_object(Bucket=bucket, Key="k", Body=BODY, ChecksumAlgorithm=alg)
    except Exception as e:  # noqa: BLE001 - botocore without the CRT cannot compute CRC32C/CRC64NVME
        if "MissingDependency" in type(e).__name__ or "crt" in str(e).lower():
            pytest.skip(f"botocore cannot compute {alg} here")
        raise
    value = put[f"Checksum{alg}"]
    if alg in EXPECTED:
        assert value == EXPECTED[alg]
    head = s3.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert head[f"Checksum{alg}"] == value
    assert checksum_headers(head)["x-amz-checksum-type"] == "FULL_OBJECT"
    got = s3.get_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert got[f"Checksum{alg}"] == value
    assert got["Body"].read() == BODY  # botocore validates the body against the returned checksum
    # not without the mode, not for ranges (as S3), not on the backend
    assert f"Checksum{alg}" not in s3.head_object(Bucket=bucket, Key="k")
    ranged = s3.get_object(Bucket=bucket, Key="k", Range="bytes=0-9", ChecksumMode="ENABLED")
    assert not checksum_headers(ranged) and ranged["Body"].read() == BODY[:10]
    backend = raw.head_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert value not in repr(backend["ResponseMetadata"]["HTTPHeaders"])
    attrs = s3.get_object_attributes(Bucket=bucket, Key="k", ObjectAttributes=["Checksum", "ObjectSize"])
    assert attrs["Checksum"][f"Checksum{alg}"] == value and attrs["ObjectSize"] == len(BODY)
    assert attrs["Checksum"].get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT"


def test_default_boto3_upload_and_validated_download(s3: Any, bucket: str) -> None:
    """Current SDKs send a CRC on every upload by default and validate it on download."""
    s3.put_object(Bucket=bucket, Key="d", Body=BODY)
    got = s3.get_object(Bucket=bucket, Key="d", ChecksumMode="ENABLED")
    assert got["Body"].read() == BODY
    assert any(k.startswith("Checksum") and k != "ChecksumType" for k in got), got.keys()


def test_wrong_stored_checksum_is_caught_by_the_client(s3: Any, bucket: str) -> None:
    """The proxy returns what it verified; a body that matches is accepted by botocore's check."""
    s3.put_object(Bucket=bucket, Key="c", Body=b"abc", ChecksumSHA256=b64(hashlib.sha256(b"abc").digest()))
    assert s3.get_object(Bucket=bucket, Key="c", ChecksumMode="ENABLED")["ChecksumSHA256"] == b64(hashlib.sha256(b"abc").digest())


def test_copy_keeps_the_checksum(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=BODY, ChecksumAlgorithm="SHA256")
    s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert s3.head_object(Bucket=bucket, Key="dst", ChecksumMode="ENABLED")["ChecksumSHA256"] == EXPECTED["SHA256"]


def test_no_checksum_no_header(s3: Any, bucket: str) -> None:
    """An object stored without a checksum (multipart, or none sent) answers without one."""
    multipart_upload(s3, bucket, "mp", [b"a" * (5 * MiB), b"b"])
    head = s3.head_object(Bucket=bucket, Key="mp", ChecksumMode="ENABLED")
    assert not any(k.startswith("Checksum") and k != "ChecksumType" for k in head)
    assert s3.get_object(Bucket=bucket, Key="mp", ChecksumMode="ENABLED")["Body"].read(4) == b"aaaa"


def test_trailing_checksum_is_kept(proxy: Any, s3: Any, raw: Any, bucket: str) -> None:
    """aws-chunked with a CRC32 trailer (boto3 over HTTPS): verified, then sealed by a metadata-only
    self-copy; the metadata and the body stay exact."""
    from tests.integration.helpers import aws_chunked_body, raw_put_head, send_raw

    reply = send_raw(proxy, raw_put_head(proxy, bucket, "t", "chunked", len(BODY)) + aws_chunked_body(BODY))
    assert reply.status == 200, reply.body
    assert reply.headers["x-amz-checksum-crc32"] == EXPECTED["CRC32"]
    head = s3.head_object(Bucket=bucket, Key="t", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == EXPECTED["CRC32"] and head["ContentLength"] == len(BODY)
    assert s3.get_object(Bucket=bucket, Key="t", ChecksumMode="ENABLED")["Body"].read() == BODY
    assert EXPECTED["CRC32"] not in repr(raw.head_object(Bucket=bucket, Key="t")["ResponseMetadata"]["HTTPHeaders"])
    # a wrong trailer stores nothing
    bad = aws_chunked_body(BODY, trailer=b"x-amz-checksum-crc32:AAAAAA==")
    reply = send_raw(proxy, raw_put_head(proxy, bucket, "bad", "chunked", len(BODY)) + bad)
    assert reply.status == 400
    assert "Contents" not in raw.list_objects_v2(Bucket=bucket, Prefix="bad")
