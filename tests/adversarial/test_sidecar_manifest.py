"""Attacks on multipart completeness (issue 12 item 4): a storage-side writer (A2/A3, backend
credentials, no keys) re-assembles a multipart object from a subset of its own parts, or deletes,
swaps or edits its manifest under ``.s3proxy/manifests/``.  Every full read, and every ranged read
that reaches the last part, must fail closed (403 InvalidObjectState); ranges inside authentic
parts that the object still holds may be served."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests.conftest import Proxy, empty_and_delete_bucket, proxy_settings, start_proxy, stop_proxy
from tests.integration.helpers import MiB, multipart_upload

OVH = 16454
SIZES = [5 * MiB, 5 * MiB + 7, 1000]


@pytest.fixture(scope="module")
def fresh_proxy(backend: Any) -> Any:
    """A proxy of this module only, so no manifest is cached from another test's read."""
    p = start_proxy(proxy_settings(backend))
    yield p
    stop_proxy(p)


@pytest.fixture(scope="module")
def cold(backend: Any) -> Any:
    """A second proxy (another replica): it has not cached the manifests the writer's proxy wrote."""
    p = start_proxy(proxy_settings(backend))
    yield p
    stop_proxy(p)


@pytest.fixture()
def mbucket(fresh_proxy: Proxy) -> Any:
    c = fresh_proxy.client()
    name = "mf-" + uuid.uuid4().hex[:12]
    c.create_bucket(Bucket=name)
    yield name
    empty_and_delete_bucket(c, name)


def write(proxy: Proxy, bucket: str, key: str, sizes: list[int] = SIZES) -> bytes:
    parts = [os.urandom(n) for n in sizes]
    multipart_upload(proxy.client(), bucket, key, parts)
    return b"".join(parts)


def stored_parts(raw: Any, bucket: str, key: str, sizes: list[int]) -> list[bytes]:
    body = raw.get_object(Bucket=bucket, Key=key)["Body"].read()
    out, off = [], 0
    for n in sizes:
        out.append(body[off : off + n + OVH])
        off += n + OVH
    assert off == len(body)
    return out


def recomplete(raw: Any, bucket: str, key: str, raw_parts: list[bytes]) -> None:
    meta = raw.head_object(Bucket=bucket, Key=key)["Metadata"]
    uid = raw.create_multipart_upload(Bucket=bucket, Key=key, Metadata=meta)["UploadId"]
    done = [{"PartNumber": i, "ETag": raw.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=i, Body=b)["ETag"]}
            for i, b in enumerate(raw_parts, 1)]
    raw.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": done})


def manifests(raw: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in raw.list_objects_v2(Bucket=bucket, Prefix=".s3proxy/manifests/").get("Contents", [])]


def refused(call: Any) -> None:
    with pytest.raises((ClientError, BotoCoreError)) as e:
        call()
    if isinstance(e.value, ClientError):
        assert e.value.response["Error"]["Code"] == "InvalidObjectState"


def test_complete_writes_one_manifest_and_reads_pass(fresh_proxy: Proxy, raw: Any, mbucket: str) -> None:
    pt = write(fresh_proxy, mbucket, "ok")
    assert len(manifests(raw, mbucket)) == 1
    c = fresh_proxy.client()
    assert c.get_object(Bucket=mbucket, Key="ok")["Body"].read() == pt
    assert c.get_object(Bucket=mbucket, Key="ok", Range="bytes=-10")["Body"].read() == pt[-10:]
    assert c.get_object(Bucket=mbucket, Key="ok", PartNumber=3)["Body"].read() == pt[-1000:]
    assert c.list_objects_v2(Bucket=mbucket)["KeyCount"] == 1  # the manifest is not listed


@pytest.mark.parametrize("keep", [[0, 1], [0, 2]], ids=["last-dropped", "middle-dropped"])
def test_dropped_parts_fail_every_read_that_reaches_the_end(fresh_proxy: Proxy, raw: Any, mbucket: str, keep: list[int]) -> None:
    pt = write(fresh_proxy, mbucket, "mp")
    parts = stored_parts(raw, mbucket, "mp", SIZES)
    recomplete(raw, mbucket, "mp", [parts[i] for i in keep])
    c = fresh_proxy.client()
    refused(lambda: c.get_object(Bucket=mbucket, Key="mp")["Body"].read())
    refused(lambda: c.get_object(Bucket=mbucket, Key="mp", Range="bytes=-5")["Body"].read())
    refused(lambda: c.get_object(Bucket=mbucket, Key="mp", PartNumber=len(keep))["Body"].read())
    # authentic bytes of a part the object still holds, not reaching its end: served
    assert c.get_object(Bucket=mbucket, Key="mp", Range="bytes=0-99")["Body"].read() == pt[:100]


def test_manifest_deleted(fresh_proxy: Proxy, cold: Proxy, raw: Any, mbucket: str) -> None:
    write(fresh_proxy, mbucket, "mp", [5 * MiB, 10])
    (mk,) = manifests(raw, mbucket)
    raw.delete_object(Bucket=mbucket, Key=mk)
    refused(lambda: cold.client().get_object(Bucket=mbucket, Key="mp")["Body"].read())


def test_manifest_swapped_from_another_object(fresh_proxy: Proxy, cold: Proxy, raw: Any, mbucket: str) -> None:
    write(fresh_proxy, mbucket, "a", [5 * MiB, 10])
    (ma,) = manifests(raw, mbucket)
    write(fresh_proxy, mbucket, "b", [5 * MiB, 10])  # same part sizes: only the MAC and object id differ
    (mb,) = [k for k in manifests(raw, mbucket) if k != ma]
    raw.put_object(Bucket=mbucket, Key=ma, Body=raw.get_object(Bucket=mbucket, Key=mb)["Body"].read())
    refused(lambda: cold.client().get_object(Bucket=mbucket, Key="a")["Body"].read())


@pytest.mark.parametrize("edit", ["length", "count", "mac", "truncate", "empty"])
def test_manifest_edited(fresh_proxy: Proxy, cold: Proxy, raw: Any, mbucket: str, edit: str) -> None:
    write(fresh_proxy, mbucket, "mp", [5 * MiB, 10])
    (mk,) = manifests(raw, mbucket)
    data = raw.get_object(Bucket=mbucket, Key=mk)["Body"].read()
    forged = {
        "length": data.replace(b",10]", b",11]"),
        "count": data.replace(b'"n":2', b'"n":1'),
        "mac": bytes([data[0] ^ 1]) + data[1:],
        "truncate": data[:-1],
        "empty": b"",
    }[edit]
    assert forged != data
    raw.put_object(Bucket=mbucket, Key=mk, Body=forged)
    refused(lambda: cold.client().get_object(Bucket=mbucket, Key="mp")["Body"].read())


def test_copies_keep_a_valid_manifest(fresh_proxy: Proxy, raw: Any, mbucket: str) -> None:
    pt = write(fresh_proxy, mbucket, "src", [5 * MiB, 10])
    c = fresh_proxy.client()
    other = "mf-" + uuid.uuid4().hex[:12]
    c.create_bucket(Bucket=other)
    try:
        c.copy_object(Bucket=mbucket, Key="same-bucket", CopySource={"Bucket": mbucket, "Key": "src"})
        c.copy_object(Bucket=other, Key="dst", CopySource={"Bucket": mbucket, "Key": "src"})
        assert c.get_object(Bucket=mbucket, Key="same-bucket")["Body"].read() == pt
        assert c.get_object(Bucket=other, Key="dst")["Body"].read() == pt
        assert len(manifests(raw, other)) == 1
    finally:
        empty_and_delete_bucket(c, other)


def test_copy_of_an_object_without_its_manifest_is_refused(fresh_proxy: Proxy, cold: Proxy, raw: Any, mbucket: str) -> None:
    write(fresh_proxy, mbucket, "src", [5 * MiB, 10])
    (mk,) = manifests(raw, mbucket)
    raw.delete_object(Bucket=mbucket, Key=mk)
    c = cold.client()
    other = "mf-" + uuid.uuid4().hex[:12]
    c.create_bucket(Bucket=other)
    try:
        refused(lambda: c.copy_object(Bucket=other, Key="dst", CopySource={"Bucket": mbucket, "Key": "src"}))
    finally:
        empty_and_delete_bucket(c, other)
