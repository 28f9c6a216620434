"""The AWS CLI (``aws s3`` and ``aws s3api``), default settings, through s3proxy.

The ``aws_cli`` fixture runs the real CLI in a subprocess (with a timeout)
against the proxy's endpoint.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.integration.helpers import MiB, rand

BIG = 20 * MiB  # above the CLI's 8 MiB multipart threshold: 3 parts


def ls_sizes(out: str) -> dict[str, int]:
    """``aws s3 ls`` lines ``DATE TIME SIZE KEY`` -> {key: size} (PRE lines skipped)."""
    sizes = {}
    for line in out.splitlines():
        fields = line.split(None, 3)
        if len(fields) == 4 and fields[2].isdigit():
            sizes[fields[3]] = int(fields[2])
    return sizes


def head(aws_cli, bucket, key):
    return json.loads(aws_cli("s3api", "head-object", "--bucket", bucket, "--key", key).stdout)


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.bin"
    path.write_bytes(rand(BIG))
    return path


def test_cp_small_up_and_down(aws_cli, s3, bucket, tmp_path):
    data = rand(123_457)
    src = tmp_path / "small file.bin"
    src.write_bytes(data)
    aws_cli("s3", "cp", str(src), f"s3://{bucket}/dir/small file.bin")
    assert s3.get_object(Bucket=bucket, Key="dir/small file.bin")["Body"].read() == data
    dst = tmp_path / "back.bin"
    aws_cli("s3", "cp", f"s3://{bucket}/dir/small file.bin", str(dst))
    assert dst.read_bytes() == data
    h = head(aws_cli, bucket, "dir/small file.bin")
    assert h["ContentLength"] == len(data)
    assert h["ServerSideEncryption"] == "aws:kms"
    assert not any(k.startswith("s3proxy") for k in h.get("Metadata", {}))


@pytest.mark.needs("multipart_etags")
@pytest.mark.smoke
def test_cp_big_multipart_up_and_down(aws_cli, s3, bucket, big_file, tmp_path):
    aws_cli("s3", "cp", str(big_file), f"s3://{bucket}/big.bin")
    h = head(aws_cli, bucket, "big.bin")
    assert h["ContentLength"] == BIG
    assert h["ETag"].strip('"').endswith("-3"), h["ETag"]  # it really went multipart
    dst = tmp_path / "big.out"
    aws_cli("s3", "cp", f"s3://{bucket}/big.bin", str(dst))  # parallel ranged GETs
    assert dst.stat().st_size == BIG
    assert dst.read_bytes() == big_file.read_bytes()
    assert ls_sizes(aws_cli("s3", "ls", f"s3://{bucket}/").stdout) == {"big.bin": BIG}


def test_cp_to_stdout(aws_cli, s3, bucket):
    text = "".join(f"line {i}: ünï\n" for i in range(3000))
    s3.put_object(Bucket=bucket, Key="text.txt", Body=text.encode())
    assert aws_cli("s3", "cp", f"s3://{bucket}/text.txt", "-").stdout == text


def test_ls(aws_cli, s3, bucket):
    sizes = {"a.txt": 0, "b.bin": 16_385, "dir/c.bin": 1000, "dir/sub/d.bin": 7}
    for k, n in sizes.items():
        s3.put_object(Bucket=bucket, Key=k, Body=rand(n))
    top = aws_cli("s3", "ls", f"s3://{bucket}/").stdout
    assert ls_sizes(top) == {"a.txt": 0, "b.bin": 16_385}
    assert "PRE dir/" in top
    rec = aws_cli("s3", "ls", "--recursive", f"s3://{bucket}/").stdout
    assert ls_sizes(rec) == sizes
    summary = aws_cli("s3", "ls", "--recursive", "--summarize", f"s3://{bucket}/").stdout
    assert f"Total Size: {sum(sizes.values())}" in summary
    assert bucket in aws_cli("s3", "ls").stdout


def _tree(root, files):
    # mtimes a minute in the past: S3's LastModified has 1 s resolution, and sync re-uploads a local file
    # whose mtime is newer than it (a file written in the same second as its upload would look newer).
    old = time.time() - 60
    for rel, n in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rand(n))
        os.utime(p, (old, old))


SYNC_FILES = {
    "empty": 0,
    "one": 1,
    "chunk-edge": 16_384,
    "sub/a.txt": 5_000,
    "sub/deeper/b.bin": 70_001,
    "with space/ünï+%.dat": 333,
    "big/nine.bin": 9 * MiB + 3,  # multipart (8 MiB parts): sizes must invert exactly
}


@pytest.mark.smoke
def test_sync_twice_copies_nothing(aws_cli, s3, bucket, tmp_path):
    src = tmp_path / "src"
    _tree(src, SYNC_FILES)
    first = aws_cli("s3", "sync", str(src), f"s3://{bucket}/tree")
    assert first.stdout.count("upload:") == len(SYNC_FILES)
    listed = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed == {f"tree/{k}": n for k, n in SYNC_FILES.items()}
    second = aws_cli("s3", "sync", str(src), f"s3://{bucket}/tree")
    assert second.stdout.strip() == "", second.stdout
    # ... and the other direction.
    dst = tmp_path / "dst"
    down = aws_cli("s3", "sync", f"s3://{bucket}/tree", str(dst))
    assert down.stdout.count("download:") == len(SYNC_FILES)
    for rel in SYNC_FILES:
        assert (dst / rel).read_bytes() == (src / rel).read_bytes(), rel
    again = aws_cli("s3", "sync", f"s3://{bucket}/tree", str(dst))
    assert again.stdout.strip() == "", again.stdout
    # A changed file (different size) is the only one copied.
    (src / "sub/a.txt").write_bytes(rand(5_001))
    third = aws_cli("s3", "sync", str(src), f"s3://{bucket}/tree")
    assert third.stdout.count("upload:") == 1 and "sub/a.txt" in third.stdout
    assert s3.head_object(Bucket=bucket, Key="tree/sub/a.txt")["ContentLength"] == 5_001


def test_sync_delete(aws_cli, s3, bucket, tmp_path):
    src = tmp_path / "src"
    _tree(src, {"keep": 10, "drop": 20})
    aws_cli("s3", "sync", str(src), f"s3://{bucket}/")
    os.remove(src / "drop")
    out = aws_cli("s3", "sync", "--delete", str(src), f"s3://{bucket}/").stdout
    assert "delete:" in out
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["keep"]


def test_s3_to_s3_copy(aws_cli, s3, bucket, big_file):
    s3.put_object(Bucket=bucket, Key="small", Body=b"small object")
    aws_cli("s3", "cp", f"s3://{bucket}/small", f"s3://{bucket}/small-copy")
    assert s3.get_object(Bucket=bucket, Key="small-copy")["Body"].read() == b"small object"
    # A 20 MiB object: the CLI copies it with CreateMultipartUpload + UploadPartCopy ranges.
    aws_cli("s3", "cp", str(big_file), f"s3://{bucket}/big")
    aws_cli("s3", "cp", f"s3://{bucket}/big", f"s3://{bucket}/big-copy")
    assert head(aws_cli, bucket, "big-copy")["ContentLength"] == BIG
    assert s3.get_object(Bucket=bucket, Key="big-copy")["Body"].read() == big_file.read_bytes()


@pytest.mark.needs("aws_responses")
def test_mv_and_rm(aws_cli, s3, bucket, tmp_path):
    for k in ("x/1", "x/2", "x/3", "y"):
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    aws_cli("s3", "mv", f"s3://{bucket}/y", f"s3://{bucket}/z")
    assert s3.get_object(Bucket=bucket, Key="z")["Body"].read() == b"y"
    aws_cli("s3", "rm", f"s3://{bucket}/z")
    out = aws_cli("s3", "rm", "--recursive", f"s3://{bucket}/x/").stdout
    assert out.count("delete:") == 3
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_s3api_sizes_and_errors(aws_cli, s3, bucket):
    from tests.integration.helpers import multipart_upload

    s3.put_object(Bucket=bucket, Key="s", Body=rand(999))
    multipart_upload(s3, bucket, "m", [rand(5 * MiB), rand(17)])
    assert head(aws_cli, bucket, "s")["ContentLength"] == 999
    hm = head(aws_cli, bucket, "m")
    assert hm["ContentLength"] == 5 * MiB + 17
    listed = json.loads(aws_cli("s3api", "list-objects-v2", "--bucket", bucket).stdout)["Contents"]
    assert {o["Key"]: o["Size"] for o in listed} == {"s": 999, "m": 5 * MiB + 17}
    missing = aws_cli("s3api", "head-object", "--bucket", bucket, "--key", "nope", check=False)
    assert missing.returncode != 0 and "404" in missing.stderr
    bad = aws_cli("s3", "ls", f"s3://{bucket}/", check=False, secret_key="wrong-secret")
    assert bad.returncode != 0 and "SignatureDoesNotMatch" in bad.stderr


@pytest.mark.smoke
def test_presign(aws_cli, s3, bucket):
    import urllib.request

    data = rand(10_000)
    s3.put_object(Bucket=bucket, Key="shared file+1.bin", Body=data)
    url = aws_cli("s3", "presign", f"s3://{bucket}/shared file+1.bin", "--expires-in", "300").stdout.strip()
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - local test server
        assert resp.read() == data


def test_get_object_range_via_s3api(aws_cli, s3, bucket, tmp_path):
    data = rand(40_000)
    s3.put_object(Bucket=bucket, Key="r", Body=data)
    out = tmp_path / "part"
    meta = json.loads(aws_cli("s3api", "get-object", "--bucket", bucket, "--key", "r", "--range", "bytes=100-199",
                              str(out)).stdout)
    assert meta["ContentLength"] == 100
    assert meta["ContentRange"] == f"bytes 100-199/{len(data)}"
    assert out.read_bytes() == data[100:200]
