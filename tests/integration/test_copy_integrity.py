"""Copies that decrypt their source (UploadPartCopy) when the stored source was changed around
the proxy: the storage-side attacker (``raw``, backend credentials) flips a chunk or reorders
parts; the copy must end in the integrity error a GET of the source answers (403
InvalidObjectState, not a retried 500), and nothing of it may complete."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from s3proxy.crypto import sizes
from tests.integration.helpers import MiB, client_error, multipart_upload, rand

PART = 5 * MiB


def _stored(raw, bucket, key):
    return raw.get_object(Bucket=bucket, Key=key)["Body"].read()


def _rewrite(raw, bucket, key, body):
    h = raw.head_object(Bucket=bucket, Key=key)
    raw.put_object(Bucket=bucket, Key=key, Body=body, Metadata=h["Metadata"])


def _rewrite_multipart(raw, bucket, key, parts):
    h = raw.head_object(Bucket=bucket, Key=key)
    multipart_upload(raw, bucket, key, parts, Metadata=h["Metadata"])


def _part_copy(s3, bucket, src, rng):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    try:
        return s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1,
                                   CopySource={"Bucket": bucket, "Key": src}, CopySourceRange=rng)
    finally:
        s3.abort_multipart_upload(Bucket=bucket, Key="dst", UploadId=uid)


def test_part_copy_of_a_tampered_chunk_is_the_integrity_error(s3, raw, bucket):
    data = rand(100_000)
    s3.put_object(Bucket=bucket, Key="src", Body=data)
    ct = bytearray(_stored(raw, bucket, "src"))
    ct[sizes.S_HEADER_SIZE + 3 * sizes.S_FULL_CHUNK_CT + 100] ^= 1  # in plaintext chunk 3
    _rewrite(raw, bucket, "src", bytes(ct))
    assert _part_copy(s3, bucket, "src", "bytes=0-16383")["CopyPartResult"]["ETag"]  # chunk 0: untouched
    with pytest.raises(ClientError) as ei:
        _part_copy(s3, bucket, "src", "bytes=40000-60000")
    assert client_error(ei.value) == (403, "InvalidObjectState")


def test_part_copy_of_reordered_parts_is_the_integrity_error(s3, raw, bucket):
    parts = [rand(PART), rand(PART)]
    multipart_upload(s3, bucket, "src", parts)
    ct = _stored(raw, bucket, "src")
    n = len(ct) // 2
    _rewrite_multipart(raw, bucket, "src", [ct[n:], ct[:n]])  # headers now say parts 2, 1
    for rng in ("bytes=0-9", f"bytes={PART - 5}-{PART + 5}"):
        with pytest.raises(ClientError) as ei:
            _part_copy(s3, bucket, "src", rng)
        assert client_error(ei.value) == (403, "InvalidObjectState")
