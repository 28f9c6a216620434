"""Envelope v2: the client's user metadata sealed inside the envelope (docs/FORMAT.md 8, issue 15).

With default settings no metadata name or value reaches the backend in plaintext; HEAD, GET
(whole, ranged, by part), CopyObject (COPY and REPLACE, S and K sources, v1 sources), multipart
and rewrap keep it exact; v1 objects (metadata in plaintext, written by a bucket with
``seal_metadata: false``) stay readable; metadata that does not fit after sealing is
``400 MetadataTooLarge``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Proxy, proxy_settings, start_proxy, stop_proxy
from tests.integration.helpers import MiB, multipart_upload

pytestmark = pytest.mark.needs("aws_responses")  # reads the backend's metadata names as AWS writes them (rclone capitalises)

MARK_NAME = "mk7q-name"
MARK_VALUE = "MK7Q-VALUE-secret"
META = {f"{MARK_NAME}-a": f"{MARK_VALUE}-1", "plain": f"x {MARK_VALUE}-2 y", f"{MARK_NAME}-b": "b"}
V1_BUCKET = "sealv1-" + uuid.uuid4().hex[:10]


def backend_view(raw: Any, bucket: str, key: str) -> str:
    """Everything the backend answers about an object's metadata, as one string to grep."""
    r = raw.head_object(Bucket=bucket, Key=key)
    return repr(r["ResponseMetadata"]["HTTPHeaders"]) + repr(r["Metadata"])


def assert_sealed(raw: Any, bucket: str, key: str) -> None:
    view = backend_view(raw, bucket, key)
    assert MARK_NAME not in view.lower() and MARK_VALUE.lower() not in view.lower(), view
    meta = raw.head_object(Bucket=bucket, Key=key)["Metadata"]
    assert meta["s3proxy-v"] == "2" and "s3proxy-seal" in meta
    assert all(k.startswith("s3proxy-") for k in meta), meta


@pytest.fixture(scope="module")
def v1_proxy(backend: Any) -> Iterator[Proxy]:
    """A proxy that writes v1 objects (plaintext metadata) into ``V1_BUCKET``, as before the change."""
    p = start_proxy(proxy_settings(backend, buckets={V1_BUCKET: {"seal_metadata": False}}))
    s3 = p.client()
    s3.create_bucket(Bucket=V1_BUCKET)
    yield p
    from tests.conftest import empty_and_delete_bucket

    empty_and_delete_bucket(s3, V1_BUCKET)
    stop_proxy(p)


def test_put_head_get_keep_metadata_and_backend_sees_none(s3: Any, raw: Any, bucket: str) -> None:
    body = b"0123456789" * 5000
    s3.put_object(Bucket=bucket, Key="k", Body=body, Metadata=META, ContentType="text/x-test")
    assert_sealed(raw, bucket, "k")
    head = s3.head_object(Bucket=bucket, Key="k")
    assert head["Metadata"] == META and head["ContentType"] == "text/x-test"
    for extra in ({}, {"Range": "bytes=5-20"}, {"Range": "bytes=-3"}, {"PartNumber": 1}):
        r = s3.get_object(Bucket=bucket, Key="k", **extra)
        assert r["Metadata"] == META, extra
        assert r["Body"].read() == (body[5:21] if extra.get("Range") == "bytes=5-20" else
                                    body[-3:] if extra.get("Range") == "bytes=-3" else body)
    assert s3.head_object(Bucket=bucket, Key="k", PartNumber=1)["Metadata"] == META


def test_no_metadata_is_an_empty_seal(s3: Any, raw: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="bare", Body=b"x")
    assert s3.head_object(Bucket=bucket, Key="bare")["Metadata"] == {}
    assert raw.head_object(Bucket=bucket, Key="bare")["Metadata"]["s3proxy-v"] == "2"


def test_multipart_metadata_from_create(s3: Any, raw: Any, bucket: str) -> None:
    multipart_upload(s3, bucket, "mp", [b"a" * (5 * MiB), b"b" * 100], Metadata=META)
    assert_sealed(raw, bucket, "mp")
    assert s3.head_object(Bucket=bucket, Key="mp")["Metadata"] == META
    assert s3.head_object(Bucket=bucket, Key="mp", PartNumber=2)["Metadata"] == META
    r = s3.get_object(Bucket=bucket, Key="mp", Range="bytes=0-3")
    assert r["Metadata"] == META and r["Body"].read() == b"aaaa"
    assert s3.get_object(Bucket=bucket, Key="mp")["Metadata"] == META


@pytest.mark.parametrize("layout", ["S", "K"])
def test_copy_directives(s3: Any, raw: Any, bucket: str, layout: str) -> None:
    if layout == "S":
        s3.put_object(Bucket=bucket, Key="src", Body=b"copy me", Metadata=META)
    else:
        multipart_upload(s3, bucket, "src", [b"c" * (5 * MiB), b"d"], Metadata=META)
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "src"})
    assert_sealed(raw, bucket, "copy")
    assert s3.head_object(Bucket=bucket, Key="copy")["Metadata"] == META
    new = {f"{MARK_NAME}-new": f"{MARK_VALUE}-new"}
    s3.copy_object(Bucket=bucket, Key="repl", CopySource={"Bucket": bucket, "Key": "src"},
                   MetadataDirective="REPLACE", Metadata=new)
    assert_sealed(raw, bucket, "repl")
    assert s3.head_object(Bucket=bucket, Key="repl")["Metadata"] == new
    # a self-copy that replaces the metadata (the "edit metadata" idiom)
    s3.copy_object(Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src"},
                   MetadataDirective="REPLACE", Metadata={"edited": "yes"})
    assert s3.head_object(Bucket=bucket, Key="src")["Metadata"] == {"edited": "yes"}
    assert s3.get_object(Bucket=bucket, Key="copy")["Body"].read()[:4] == (b"copy" if layout == "S" else b"cccc")


def test_v1_objects_stay_readable_and_copies_seal(v1_proxy: Proxy, s3: Any, raw: Any, bucket: str) -> None:
    old = v1_proxy.client()
    old.put_object(Bucket=V1_BUCKET, Key="old", Body=b"written by v1", Metadata=META)
    multipart_upload(old, V1_BUCKET, "old-mp", [b"e" * (5 * MiB), b"f"], Metadata=META)
    for key in ("old", "old-mp"):
        stored = raw.head_object(Bucket=V1_BUCKET, Key=key)["Metadata"]
        assert stored["s3proxy-v"] == "1" and "s3proxy-seal" not in stored and stored[f"{MARK_NAME}-a"] == f"{MARK_VALUE}-1"
        # the default (sealing) proxy reads v1 objects exactly
        assert s3.head_object(Bucket=V1_BUCKET, Key=key)["Metadata"] == META
        assert s3.get_object(Bucket=V1_BUCKET, Key=key, Range="bytes=0-0")["Metadata"] == META
        # a copy into a sealing bucket becomes v2, metadata moved into the seal
        s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": V1_BUCKET, "Key": key})
        assert_sealed(raw, bucket, key)
        assert s3.head_object(Bucket=bucket, Key=key)["Metadata"] == META
    assert s3.get_object(Bucket=bucket, Key="old")["Body"].read() == b"written by v1"
    # a copy from a sealed object into the v1 bucket keeps it sealed (never unsealed to plaintext)
    s3.put_object(Bucket=bucket, Key="new", Body=b"v2", Metadata=META)
    old.copy_object(Bucket=V1_BUCKET, Key="from-v2", CopySource={"Bucket": bucket, "Key": "new"})
    assert_sealed(raw, V1_BUCKET, "from-v2")
    assert old.head_object(Bucket=V1_BUCKET, Key="from-v2")["Metadata"] == META


def _code(e: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    return e.value.response["ResponseMetadata"]["HTTPStatusCode"], e.value.response["Error"]["Code"]


def test_metadata_too_large(s3: Any, raw: Any, bucket: str) -> None:
    # over S3's 2 KB: refused as S3 refuses it
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="big", Body=b"x", Metadata={"a": "v" * 2100})
    assert _code(e) == (400, "MetadataTooLarge")
    # fits S3's 2 KB but not after sealing: refused, never truncated
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="big", Body=b"x", Metadata={"a": "v" * 1900})
    assert _code(e) == (400, "MetadataTooLarge")
    with pytest.raises(ClientError) as e:
        s3.create_multipart_upload(Bucket=bucket, Key="big", Metadata={"a": "v" * 1900})
    assert _code(e) == (400, "MetadataTooLarge")
    assert "Contents" not in raw.list_objects_v2(Bucket=bucket)
    # the documented effective limit (local key, docs/FORMAT.md 8) fits
    ok = {f"k{i}": "v" * 110 for i in range(10)}  # 1,120 bytes of names and values
    s3.put_object(Bucket=bucket, Key="ok", Body=b"x", Metadata=ok)
    assert s3.head_object(Bucket=bucket, Key="ok")["Metadata"] == ok
    one = {"a": "v" * 1150}  # boto3 sends a CRC32 by default: the sealed checksum takes ~60 bytes
    s3.put_object(Bucket=bucket, Key="one", Body=b"x", Metadata=one)
    assert s3.head_object(Bucket=bucket, Key="one")["Metadata"] == one
    # REPLACE copy with too much metadata
    with pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="c", CopySource={"Bucket": bucket, "Key": "ok"},
                       MetadataDirective="REPLACE", Metadata={"a": "v" * 1900})
    assert _code(e) == (400, "MetadataTooLarge")


def test_attributes_unchanged(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"12345", Metadata=META)
    attrs = s3.get_object_attributes(Bucket=bucket, Key="k", ObjectAttributes=["ObjectSize", "ETag"])
    assert attrs["ObjectSize"] == 5


def test_rewrap_keeps_sealed_metadata(backend: Any, raw: Any) -> None:
    """``s3proxy rewrap`` re-seals the block under the new binding: metadata exact, still sealed;
    a sealed block that does not authenticate is reported as a failure, not re-sealed."""
    from tests.integration.helpers import temp_bucket
    from tests.integration.keyfixtures import local_keys, rewrap, with_keys

    settings = with_keys(proxy_settings(backend), local_keys("k1", "k2", default="k1"))
    p = start_proxy(settings)
    try:
        s3 = p.client()
        with temp_bucket(s3) as b:
            s3.put_object(Bucket=b, Key="s", Body=b"single", Metadata=META)
            multipart_upload(s3, b, "m", [b"a" * (5 * MiB), b"b"], Metadata=META)
            s3.put_object(Bucket=b, Key="t", Body=b"tampered", Metadata=META)
            env = {k: v for k, v in raw.head_object(Bucket=b, Key="t")["Metadata"].items()}
            seal = env["s3proxy-seal"]
            env["s3proxy-seal"] = seal[:30] + ("A" if seal[30] != "A" else "B") + seal[31:]
            raw.copy_object(Bucket=b, Key="t", CopySource={"Bucket": b, "Key": "t"}, MetadataDirective="REPLACE", Metadata=env)
            run = rewrap(settings, b, "k2")
            assert "2 re-wrapped" in run.out and "1 failed" in run.out, run.out + run.err
            assert "sealed metadata block does not authenticate" in run.out
            for key in ("s", "m"):
                assert_sealed(raw, b, key)
                head = s3.head_object(Bucket=b, Key=key)
                assert head["Metadata"] == META
                assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-server-side-encryption-aws-kms-key-id"] == "k2"
    finally:
        stop_proxy(p)
