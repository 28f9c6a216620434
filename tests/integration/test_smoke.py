"""Smoke: the basic object path through s3proxy against the real backend."""

from __future__ import annotations

import os

import pytest


@pytest.mark.smoke
def test_put_get_roundtrip(s3, raw, bucket):
    data = os.urandom(100_000)
    s3.put_object(Bucket=bucket, Key="a/b c+d%e", Body=data)
    got = s3.get_object(Bucket=bucket, Key="a/b c+d%e")
    assert got["Body"].read() == data
    assert got["ContentLength"] == len(data)
    assert got["ServerSideEncryption"] == "aws:kms"
    stored = raw.get_object(Bucket=bucket, Key="a/b c+d%e")["Body"].read()
    assert data[:16] not in stored
    head = s3.head_object(Bucket=bucket, Key="a/b c+d%e")
    assert head["ContentLength"] == len(data)
    assert not any(k.startswith("s3proxy") for k in head["Metadata"])
    listed = s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("a/b c+d%e", len(data))]


@pytest.mark.parametrize("rng,sl", [("bytes=0-0", slice(0, 1)), ("bytes=10-20000", slice(10, 20001)),
                                    ("bytes=-100", slice(-100, None)), ("bytes=99990-", slice(99990, None))])
@pytest.mark.smoke
def test_ranges(s3, bucket, rng, sl):
    data = os.urandom(100_000)
    s3.put_object(Bucket=bucket, Key="r", Body=data)
    got = s3.get_object(Bucket=bucket, Key="r", Range=rng)
    assert got["Body"].read() == data[sl]


@pytest.mark.smoke
def test_multipart(s3, bucket):
    part = 5 * 1024 * 1024
    data = os.urandom(part * 2 + 1234)
    mp = s3.create_multipart_upload(Bucket=bucket, Key="mp")
    uid = mp["UploadId"]
    etags = []
    for i, off in enumerate(range(0, len(data), part), start=1):
        r = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=i, Body=data[off:off + part])
        etags.append({"PartNumber": i, "ETag": r["ETag"]})
    parts = s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid)["Parts"]
    assert [p["Size"] for p in parts] == [part, part, 1234]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={"Parts": etags})
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == data
    assert s3.head_object(Bucket=bucket, Key="mp")["ContentLength"] == len(data)
    got = s3.get_object(Bucket=bucket, Key="mp", Range=f"bytes={part - 10}-{part + 10}")["Body"].read()
    assert got == data[part - 10: part + 11]
    assert s3.list_objects_v2(Bucket=bucket)["Contents"][0]["Size"] == len(data)
