"""The backend operations shared by rewrap and the bulk jobs (s3proxy.backend.ops), against the
real S3 server of the suite: listings, part tables, tags, self-copies and multipart copies, and
what a storage-side attacker or a concurrent writer can make of them."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from pydantic import SecretStr

from s3proxy.backend import ops
from s3proxy.backend.client import BackendClient
from s3proxy.config import BackendSettings
from s3proxy.crypto.sizes import K_PART_OVERHEAD
from tests.integration.helpers import multipart_upload, temp_bucket

T = TypeVar("T")


def run(backend: Any, bucket: str, fn: Callable[[ops.Store], Awaitable[T]]) -> T:
    async def go() -> T:
        client = BackendClient(BackendSettings(url=backend.url, access_key=SecretStr(backend.access_key),
                                               secret_key=SecretStr(backend.secret_key), region=backend.region))
        await client.start()
        try:
            return await fn(ops.Store(client, bucket))
        finally:
            await client.close()

    return asyncio.run(go())


async def collect(store: ops.Store, prefix: str = "", after: str | None = None, size: int = 2) -> list[list[str]]:
    return [[o.key for o in page] async for page in ops.list_pages(store, prefix, after, size)]


def test_list_pages_decodes_keys_and_pages(backend: Any, raw: Any) -> None:
    keys = sorted(["a b", "a+b", "a%2Fb", "d/é", "d/e&f<g>", "z"])
    with temp_bucket(raw) as bucket:
        for k in keys:
            raw.put_object(Bucket=bucket, Key=k, Body=b"x")
        pages = run(backend, bucket, collect)
        assert [k for page in pages for k in page] == keys
        assert all(len(p) <= 2 for p in pages) and len(pages) == 3
        assert run(backend, bucket, lambda s: collect(s, "d/")) == [["d/e&f<g>", "d/é"]]
        assert [k for p in run(backend, bucket, lambda s: collect(s, after="a+b")) for k in p] == keys[3:]


@pytest.mark.needs('part_number', 'multipart_etags')
def test_part_table_of_a_k_object_and_header_walk(backend: Any, proxy: Any, raw: Any) -> None:
    s3 = proxy.client()
    with temp_bucket(s3) as bucket:
        sizes = [5 << 20, 5 << 20, 1000]
        multipart_upload(s3, bucket, "mp", [os.urandom(n) for n in sizes])
        head = raw.head_object(Bucket=bucket, Key="mp")
        etag, total = head["ETag"], head["ContentLength"]
        n = ops.parts_from_etag(etag)
        expected, off = [], 0
        for p in sizes:
            expected.append((off, p + K_PART_OVERHEAD))
            off += p + K_PART_OVERHEAD
        assert run(backend, bucket, lambda s: ops.k_part_table(s, "mp", etag, total, n)) == expected
        # Without the ETag's part count: the 70-byte part headers are walked.
        assert run(backend, bucket, lambda s: ops.k_part_table(s, "mp", etag, total, None)) == expected
        # A stale ETag: the walk's If-Match fails, nothing is taken for granted.
        with pytest.raises(ops.ObjectChanged):
            run(backend, bucket, lambda s: ops.k_part_table(s, "mp", '"0123456789abcdef0123456789abcdef"', total, None))
        # A wrong size (the object is not what the HEAD said) never passes.
        with pytest.raises(ops.OpError):
            run(backend, bucket, lambda s: ops.k_part_table(s, "mp", etag, total + 1, None))


def test_part_table_refuses_planted_bytes(backend: Any, raw: Any) -> None:
    """A storage-side attacker's object is not a K object: the header walk fails closed."""
    with temp_bucket(raw) as bucket:
        raw.put_object(Bucket=bucket, Key="fake", Body=os.urandom(20000))
        etag = raw.head_object(Bucket=bucket, Key="fake")["ETag"]
        with pytest.raises(ops.OpError, match="part header"):
            run(backend, bucket, lambda s: ops.k_part_table(s, "fake", etag, 20000, None))
        raw.put_object(Bucket=bucket, Key="short", Body=b"\x01K" + bytes(30))
        etag = raw.head_object(Bucket=bucket, Key="short")["ETag"]
        with pytest.raises(ops.OpError):
            run(backend, bucket, lambda s: ops.k_part_table(s, "short", etag, 32, None))


@pytest.mark.needs('conditional_writes')
def test_self_copy_replaces_metadata_only_if_unchanged(backend: Any, raw: Any) -> None:
    if backend.kind == "moto":
        pytest.skip("moto ignores x-amz-copy-source-if-match (the doctor probe's copy_if_match: no)")
    with temp_bucket(raw) as bucket:
        raw.put_object(Bucket=bucket, Key="s", Body=b"body", ContentType="text/plain", Metadata={"a": "1"})
        etag = raw.head_object(Bucket=bucket, Key="s")["ETag"]
        headers = {"content-type": "text/plain", "x-amz-meta-b": "2"}
        new = run(backend, bucket, lambda s: ops.self_copy(s, "s", etag, headers))
        assert new.strip('"') == etag.strip('"')
        h = raw.head_object(Bucket=bucket, Key="s")
        assert h["Metadata"] == {"b": "2"} and h["ContentType"] == "text/plain"
        assert raw.get_object(Bucket=bucket, Key="s")["Body"].read() == b"body"
        raw.put_object(Bucket=bucket, Key="s", Body=b"overwritten by a client")
        with pytest.raises(ops.ObjectChanged):
            run(backend, bucket, lambda s: ops.self_copy(s, "s", etag, {"x-amz-meta-c": "3"}))
        assert raw.get_object(Bucket=bucket, Key="s")["Body"].read() == b"overwritten by a client"
        with pytest.raises(ops.ObjectChanged):
            run(backend, bucket, lambda s: ops.self_copy(s, "gone", etag, {}))


@pytest.mark.needs('upload_part_copy', 'tagging', 'part_number')
def test_multipart_copy_keeps_parts_and_tags(backend: Any, raw: Any) -> None:
    with temp_bucket(raw) as bucket:
        parts = [os.urandom(5 << 20), os.urandom(300)]
        multipart_upload(raw, bucket, "m", parts, Metadata={"old": "1"}, Tagging="t=1&u=v%20w")
        head = raw.head_object(Bucket=bucket, Key="m")
        etag, total = head["ETag"], head["ContentLength"]
        sizes = run(backend, bucket, lambda s: ops.part_sizes(s, "m", total, 2))
        assert sizes == [len(p) for p in parts]
        tags, note = run(backend, bucket, lambda s: ops.tagging(s, "m"))
        if "tagging" in backend.capabilities or tags is not None:
            assert tags is not None and sorted(tags.split("&")) == ["t=1", "u=v%20w"] and note is None
        table = [(0, len(parts[0])), (len(parts[0]), len(parts[1]))]
        headers = {"x-amz-meta-new": "2", **({"x-amz-tagging": tags} if tags else {})}
        new = run(backend, bucket, lambda s: ops.multipart_copy(s, "m", etag, table, headers))
        assert new.strip('"') == etag.strip('"')  # same parts, same bytes
        assert raw.head_object(Bucket=bucket, Key="m")["Metadata"] == {"new": "2"}
        assert raw.get_object(Bucket=bucket, Key="m")["Body"].read() == b"".join(parts)
        if backend.kind == "moto":
            return  # moto ignores x-amz-copy-source-if-match and If-Match on Complete (doctor: copy_if_match no)
        # A concurrent overwrite: refused, and the upload it had started is aborted.
        raw.put_object(Bucket=bucket, Key="m", Body=b"new")
        with pytest.raises(ops.ObjectChanged):
            run(backend, bucket, lambda s: ops.multipart_copy(s, "m", etag, table, {}))
        assert raw.get_object(Bucket=bucket, Key="m")["Body"].read() == b"new"
        assert not raw.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_small_parsers() -> None:
    assert ops.parts_from_etag('"abc-12"') == 12 and ops.parts_from_etag("abc-3") == 3
    assert ops.parts_from_etag('"abc"') is None and ops.parts_from_etag(None) is None
    assert ops.quoted("abc") == '"abc"' and ops.quoted('"abc"') == '"abc"' and ops.quoted('W/"x"') == 'W/"x"'
    assert ops.error_code(b"<Error><Code>SlowDown</Code><Message>m</Message></Error>") == ("SlowDown", "m")
    assert ops.error_code(b"<!DOCTYPE x [<!ENTITY e 'x'>]><Error><Code>&e;</Code></Error>") is None
    assert ops.xml_root(b"not xml") is None
    body = ops.complete_body(['"a&b"', '"c"'])
    assert b"<PartNumber>2</PartNumber>" in body and b"&amp;" in body
