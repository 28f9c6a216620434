"""The MinIO Python SDK (``minio``), default settings, through s3proxy."""

from __future__ import annotations

import io
import urllib.request
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from minio import Minio
from minio.commonconfig import ComposeSource, CopySource
from minio.deleteobjects import DeleteObject
from minio.error import S3Error as MinioS3Error

from tests.integration.helpers import MiB, main_creds, rand, unique

PART = 5 * MiB


@pytest.fixture(scope="module")
def mc(proxy):
    ak, sk = main_creds(proxy)
    return Minio(urlsplit(proxy.url).netloc, access_key=ak, secret_key=sk, secure=False)


@pytest.fixture()
def mbucket(mc):
    name = unique("mn-")
    mc.make_bucket(name)
    assert mc.bucket_exists(name)
    yield name
    try:
        errs = list(mc.remove_objects(name, (DeleteObject(o.object_name) for o in mc.list_objects(name, recursive=True))))
        assert not errs
        mc.remove_bucket(name)
    except Exception:  # noqa: BLE001 - best-effort cleanup
        pass


def read_all(mc, bucket, name, **kw):
    resp = mc.get_object(bucket, name, **kw)
    try:
        return resp.read()
    finally:
        resp.close()
        resp.release_conn()


class Unsized(io.RawIOBase):
    """A stream that doesn't tell its length (forces the SDK's unknown-size path)."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b):  # type: ignore[no-untyped-def]
        chunk = self._buf.read(min(len(b), 64 * 1024))
        b[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.needs("aws_responses")
def test_buckets(mc):
    name = unique("mn-")
    mc.make_bucket(name)
    assert mc.bucket_exists(name)
    assert name in [b.name for b in mc.list_buckets()]
    mc.remove_bucket(name)
    assert not mc.bucket_exists(name)


@pytest.mark.parametrize("size", [0, 1, 16_384, 300_001])
def test_put_get_stat_small(mc, mbucket, size):
    data = rand(size)
    res = mc.put_object(mbucket, "obj", io.BytesIO(data), len(data), content_type="application/x-test",
                        metadata={"x-amz-meta-color": "red"})
    assert res.etag
    assert read_all(mc, mbucket, "obj") == data
    st = mc.stat_object(mbucket, "obj")
    assert st.size == size
    assert st.content_type == "application/x-test"
    assert st.metadata.get("x-amz-meta-color") == "red"
    assert not any("s3proxy" in k.lower() for k in st.metadata)


@pytest.mark.needs("multipart_etags")
@pytest.mark.smoke
@pytest.mark.parametrize("known_length", [True, False], ids=["length", "unknown-length"])
def test_put_multipart_stream(mc, mbucket, known_length):
    data = rand(12 * MiB + 5)
    stream = io.BytesIO(data) if known_length else Unsized(data)
    length = len(data) if known_length else -1
    mc.put_object(mbucket, "mp", stream, length, part_size=PART)
    st = mc.stat_object(mbucket, "mp")
    assert st.size == len(data)
    assert st.etag.endswith("-3"), st.etag
    assert read_all(mc, mbucket, "mp") == data
    # offset/length reads across the part boundaries
    for off, n in ((0, 1), (PART - 7, 14), (2 * PART - 1, 2), (len(data) - 100, 100), (123, 2 * PART)):
        assert read_all(mc, mbucket, "mp", offset=off, length=n) == data[off:off + n]
    assert read_all(mc, mbucket, "mp", offset=2 * PART + 1) == data[2 * PART + 1:]


def test_get_offset_length_single(mc, mbucket):
    data = rand(100_000)
    mc.put_object(mbucket, "s", io.BytesIO(data), len(data))
    for off, n in ((0, 1), (16_383, 2), (50_000, 50_000), (99_999, 1)):
        assert read_all(mc, mbucket, "s", offset=off, length=n) == data[off:off + n]
    assert read_all(mc, mbucket, "s", offset=99_000) == data[99_000:]
    with pytest.raises(MinioS3Error) as ei:
        read_all(mc, mbucket, "s", offset=100_000, length=10)
    assert ei.value.code == "InvalidRange"


@pytest.mark.smoke
def test_list_objects(mc, mbucket):
    sizes = {"a/1": 10, "a/b/2": 20_000, "c": 0, "d/e/f/3": 16_385}
    for k, n in sizes.items():
        mc.put_object(mbucket, k, io.BytesIO(rand(n)), n)
    rec = {o.object_name: o.size for o in mc.list_objects(mbucket, recursive=True)}
    assert rec == sizes
    top = list(mc.list_objects(mbucket))
    assert sorted(o.object_name for o in top) == ["a/", "c", "d/"]
    assert {o.object_name for o in top if o.is_dir} == {"a/", "d/"}
    under = {o.object_name: o.size for o in mc.list_objects(mbucket, prefix="a/")}
    assert under["a/1"] == 10 and set(under) == {"a/1", "a/b/"}
    v1 = {o.object_name: o.size for o in mc.list_objects(mbucket, recursive=True, use_api_v1=True)}
    assert v1 == sizes


def test_fput_fget(mc, mbucket, tmp_path):
    data = rand(11 * MiB + 1)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    mc.fput_object(mbucket, "dir/file.bin", str(src), part_size=PART)
    assert mc.stat_object(mbucket, "dir/file.bin").size == len(data)
    dst = tmp_path / "out.bin"
    mc.fget_object(mbucket, "dir/file.bin", str(dst))
    assert dst.read_bytes() == data
    small = tmp_path / "small.txt"
    small.write_bytes(b"tiny file")
    mc.fput_object(mbucket, "small.txt", str(small))
    mc.fget_object(mbucket, "small.txt", str(tmp_path / "small.out"))
    assert (tmp_path / "small.out").read_bytes() == b"tiny file"


@pytest.mark.parametrize("multipart", [False, True])
def test_copy_object(mc, mbucket, multipart):
    data = rand(PART + 1000) if multipart else rand(50_000)
    if multipart:
        mc.put_object(mbucket, "src", io.BytesIO(data), len(data), part_size=PART, metadata={"x-amz-meta-k": "v"})
    else:
        mc.put_object(mbucket, "src", io.BytesIO(data), len(data), metadata={"x-amz-meta-k": "v"})
    other = unique("mn-")
    mc.make_bucket(other)
    try:
        mc.copy_object(mbucket, "dst", CopySource(mbucket, "src"))
        mc.copy_object(other, "dst", CopySource(mbucket, "src"))
        for b in (mbucket, other):
            st = mc.stat_object(b, "dst")
            assert st.size == len(data)
            assert st.metadata.get("x-amz-meta-k") == "v"
            assert read_all(mc, b, "dst") == data
        mc.remove_object(other, "dst")
    finally:
        mc.remove_bucket(other)


@pytest.mark.smoke
def test_compose_object(mc, mbucket):
    """compose_object = CreateMultipartUpload + UploadPartCopy with source ranges (and an unquoted ETag condition)."""
    a, b = rand(PART + 10), rand(3000)
    mc.put_object(mbucket, "a", io.BytesIO(a), len(a), part_size=PART)
    mc.put_object(mbucket, "b", io.BytesIO(b), len(b), part_size=PART)
    mc.compose_object(mbucket, "ab", [ComposeSource(mbucket, "a"), ComposeSource(mbucket, "b", offset=1000, length=500)])
    assert mc.stat_object(mbucket, "ab").size == len(a) + 500
    assert read_all(mc, mbucket, "ab") == a + b[1000:1500]


def test_compose_object_quoted_etag(mc, mbucket):
    """UploadPartCopy ranges from a multipart source, with the ETag condition given quoted."""
    a = rand(PART + 10)
    mc.put_object(mbucket, "a", io.BytesIO(a), len(a), part_size=PART)
    etag = '"' + mc.stat_object(mbucket, "a").etag.strip('"') + '"'
    mc.compose_object(mbucket, "aa", [ComposeSource(mbucket, "a", match_etag=etag),
                                      ComposeSource(mbucket, "a", offset=PART - 100, length=105, match_etag=etag)])
    assert mc.stat_object(mbucket, "aa").size == len(a) + 105
    assert read_all(mc, mbucket, "aa") == a + a[PART - 100:PART + 5]


def test_remove_object_and_objects(mc, mbucket):
    for i in range(6):
        mc.put_object(mbucket, f"r/{i}", io.BytesIO(b"x"), 1)
    mc.remove_object(mbucket, "r/0")
    errs = list(mc.remove_objects(mbucket, [DeleteObject(f"r/{i}") for i in range(1, 6)]))
    assert errs == []
    assert list(mc.list_objects(mbucket, recursive=True)) == []
    with pytest.raises(MinioS3Error) as ei:
        mc.stat_object(mbucket, "r/1")
    assert ei.value.code in ("NoSuchKey", "ResourceNotFound")


def test_presigned_get(mc, mbucket):
    data = rand(200_000)
    mc.put_object(mbucket, "pre signed+ü", io.BytesIO(data), len(data))
    url = mc.presigned_get_object(mbucket, "pre signed+ü", expires=timedelta(minutes=5))
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - local test server
        assert resp.read() == data
    put_url = mc.presigned_put_object(mbucket, "up", expires=timedelta(minutes=5))
    req = urllib.request.Request(put_url, data=b"via presigned put", method="PUT",
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        assert resp.status == 200
    assert read_all(mc, mbucket, "up") == b"via presigned put"


def test_reserved_metadata_rejected(mc, mbucket):
    with pytest.raises(MinioS3Error) as ei:
        mc.put_object(mbucket, "k", io.BytesIO(b"x"), 1, metadata={"x-amz-meta-s3proxy-v": "9"})
    assert ei.value.code == "InvalidArgument"
