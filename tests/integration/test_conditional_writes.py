"""If-Match on PutObject and CompleteMultipartUpload accepts the ETag the client holds (the MD5,
the "-1" form), as on S3; a stale one is 412."""
from __future__ import annotations

import base64
import hashlib
from typing import Any

import botocore.exceptions
import pytest

pytestmark = pytest.mark.needs("conditional_writes")


def status(fn: Any) -> Any:
    try:
        fn()
        return 200
    except botocore.exceptions.ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]


def md5_b64(b: bytes) -> str:
    return base64.b64encode(hashlib.md5(b).digest()).decode()


def complete(s3: Any, bucket: str, key: str, **kw: Any) -> Any:
    up = s3.create_multipart_upload(Bucket=bucket, Key=key)
    p = s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=1, Body=b"part")
    return s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up["UploadId"],
                                        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p["ETag"]}]}, **kw)


def test_put_if_match_with_client_etags(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="md5", Body=b"one", ContentMD5=md5_b64(b"one"))
    md5_etag = s3.head_object(Bucket=bucket, Key="md5")["ETag"]
    assert md5_etag == f'"{hashlib.md5(b"one").hexdigest()}"'
    assert status(lambda: s3.put_object(Bucket=bucket, Key="md5", Body=b"two", IfMatch=md5_etag)) == 200
    assert status(lambda: s3.put_object(Bucket=bucket, Key="md5", Body=b"three", IfMatch=md5_etag)) == 412  # stale
    assert s3.get_object(Bucket=bucket, Key="md5")["Body"].read() == b"two"
    minus1 = s3.head_object(Bucket=bucket, Key="md5")["ETag"]
    assert minus1.endswith('-1"')
    assert status(lambda: s3.put_object(Bucket=bucket, Key="md5", Body=b"four", IfMatch=minus1.strip('"'))) == 200
    assert status(lambda: s3.put_object(Bucket=bucket, Key="none", Body=b"x", IfMatch=minus1)) in (404, 412)


def test_complete_if_match_with_client_etags(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"one", ContentMD5=md5_b64(b"one"))
    etag = s3.head_object(Bucket=bucket, Key="k")["ETag"]
    assert status(lambda: complete(s3, bucket, "k", IfMatch=etag)) == 200
    mp_etag = s3.head_object(Bucket=bucket, Key="k")["ETag"]
    assert status(lambda: complete(s3, bucket, "k", IfMatch=mp_etag)) == 200
