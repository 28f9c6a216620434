"""The backend operations shared by the proxy, rewrap and the bulk jobs (s3proxy.backend.ops and
s3proxy.backend.copies), against the real S3 server of the suite: listings, part tables, tags,
self-copies and multipart copies, and what a storage-side attacker or a concurrent writer can
make of them."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from botocore.exceptions import ClientError
from pydantic import SecretStr

from s3proxy.backend import copies, ops
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
        new = run(backend, bucket, lambda s: copies.self_copy(s, "s", etag, headers)).etag
        assert new.strip('"') == etag.strip('"')
        h = raw.head_object(Bucket=bucket, Key="s")
        assert h["Metadata"] == {"b": "2"} and h["ContentType"] == "text/plain"
        assert raw.get_object(Bucket=bucket, Key="s")["Body"].read() == b"body"
        raw.put_object(Bucket=bucket, Key="s", Body=b"overwritten by a client")
        with pytest.raises(ops.ObjectChanged) as changed:
            run(backend, bucket, lambda s: copies.self_copy(s, "s", etag, {"x-amz-meta-c": "3"}))
        assert type(changed.value) is ops.ObjectChanged
        assert raw.get_object(Bucket=bucket, Key="s")["Body"].read() == b"overwritten by a client"
        with pytest.raises(ops.ObjectGone):
            run(backend, bucket, lambda s: copies.self_copy(s, "gone", etag, {}))


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
        new = run(backend, bucket, lambda s: copies.multipart_copy(s, "m", etag, table, headers)).etag
        assert new.strip('"') == etag.strip('"')  # same parts, same bytes
        assert raw.head_object(Bucket=bucket, Key="m")["Metadata"] == {"new": "2"}
        assert raw.get_object(Bucket=bucket, Key="m")["Body"].read() == b"".join(parts)
        if backend.kind == "moto":
            return  # moto ignores x-amz-copy-source-if-match and If-Match on Complete (doctor: copy_if_match no)
        # A concurrent overwrite: refused, and the upload it had started is aborted.
        raw.put_object(Bucket=bucket, Key="m", Body=b"new")
        with pytest.raises(ops.ObjectChanged):
            run(backend, bucket, lambda s: copies.multipart_copy(s, "m", etag, table, {}))
        assert raw.get_object(Bucket=bucket, Key="m")["Body"].read() == b"new"
        assert not raw.list_multipart_uploads(Bucket=bucket).get("Uploads")


def _uploads(raw: Any, bucket: str) -> list[Any]:
    return list(raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def _mp_source(raw: Any, bucket: str, key: str, **create: Any) -> tuple[bytes, str, list[tuple[int, int]]]:
    """A two-part object: its bytes, its ETag and its part table."""
    parts = [os.urandom(5 << 20), os.urandom(300)]
    multipart_upload(raw, bucket, key, parts, **create)
    return b"".join(parts), raw.head_object(Bucket=bucket, Key=key)["ETag"], [(0, 5 << 20), (5 << 20, 300)]


@pytest.mark.needs('upload_part_copy', 'multipart_etags', 'list_uploads')
def test_copy_parts_to_another_bucket_and_key(backend: Any, raw: Any) -> None:
    """The proxy's CopyObject of a multipart object: source and destination differ, the parts
    (and so the "-N" ETag) are the same, the source is untouched, the destination's headers are
    the Create's."""
    with temp_bucket(raw) as src_bucket, temp_bucket(raw) as dst_bucket:
        body, etag, table = _mp_source(raw, src_bucket, "src", Metadata={"old": "1"})
        source = copies.Source(src_bucket, "src", etag)
        headers = {"x-amz-meta-new": "2", "content-type": "text/x-copy"}
        done = run(backend, dst_bucket, lambda s: copies.copy_parts(s, "dir/copy", source, table, headers))
        h = raw.head_object(Bucket=dst_bucket, Key="dir/copy")
        assert done.etag.strip('"') == h["ETag"].strip('"') == etag.strip('"')
        assert h["Metadata"] == {"new": "2"} and h["ContentType"] == "text/x-copy"
        assert raw.get_object(Bucket=dst_bucket, Key="dir/copy")["Body"].read() == body
        assert raw.head_object(Bucket=src_bucket, Key="src")["Metadata"] == {"old": "1"}
        assert done.version_id in (None, "null") and not _uploads(raw, dst_bucket)  # moto: "null"
        if "conditional_reads" not in backend.capabilities or backend.kind == "moto":
            return  # moto ignores x-amz-copy-source-if-match (doctor: copy_if_match no)
        # The source overwritten since its HEAD: the pinned part copy fails, nothing is written.
        raw.put_object(Bucket=src_bucket, Key="src", Body=b"overwritten")
        with pytest.raises(ops.ObjectChanged):
            run(backend, dst_bucket, lambda s: copies.copy_parts(s, "dir/copy2", source, table, headers))
        assert "dir/copy2" not in [o["Key"] for o in raw.list_objects_v2(Bucket=dst_bucket).get("Contents", [])]
        assert not _uploads(raw, dst_bucket)


@pytest.mark.needs('upload_part_copy', 'versioning')
def test_copy_parts_of_a_named_version(backend: Any, raw: Any) -> None:
    with temp_bucket(raw) as bucket:
        raw.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        body, etag, table = _mp_source(raw, bucket, "v")
        version = raw.head_object(Bucket=bucket, Key="v")["VersionId"]
        raw.put_object(Bucket=bucket, Key="v", Body=b"newer")
        source = copies.Source(bucket, "v", etag, version)
        done = run(backend, bucket, lambda s: copies.copy_parts(s, "restored", source, table, {}))
        assert done.version_id and done.version_id == raw.head_object(Bucket=bucket, Key="restored")["VersionId"]
        assert raw.get_object(Bucket=bucket, Key="restored")["Body"].read() == body


def test_copy_parts_signals_a_refused_first_part_and_aborts(backend: Any, raw: Any) -> None:
    """Part 1 refused (here a 4xx: a range past the source's end, or no UploadPartCopy at all):
    ``CopyUnsupported`` after part 1, before any other part, the upload aborted, so the proxy
    can copy another way.  A later part refused is an ordinary failure, aborted too."""
    if backend.kind == "moto":
        pytest.skip("moto copies a range past the source's end (and Complete then fails: EntityTooSmall)")
    with temp_bucket(raw) as bucket:
        body, etag, table = _mp_source(raw, bucket, "src")
        source = copies.Source(bucket, "src", etag)
        sent: list[int] = []

        async def copy(s: ops.Store, t: list[tuple[int, int]]) -> copies.Copied:
            try:
                return await copies.copy_parts(s, "dst", source, t, {})
            finally:
                sent.append(s.client.requests_sent)

        past_end = [(len(body) - 10, 20), table[1]]
        if "upload_part_copy" in backend.capabilities:
            with pytest.raises(copies.CopyUnsupported):
                run(backend, bucket, lambda s: copy(s, past_end))
            assert sent == [3]  # Create, part 1, Abort: part 2 never sent
            with pytest.raises(ops.OpError) as e:
                run(backend, bucket, lambda s: copy(s, [table[0], (len(body) - 10, 20)]))
            assert not isinstance(e.value, copies.CopyUnsupported)
            # the backend's 4xx, kept with its code (the proxy answers it, not a retryable 503)
            assert isinstance(e.value, ops.Refused) and 400 <= e.value.status < 500 and e.value.code
        else:
            with pytest.raises(copies.CopyUnsupported):
                run(backend, bucket, lambda s: copy(s, table))
        assert [o["Key"] for o in raw.list_objects_v2(Bucket=bucket).get("Contents", [])] == ["src"]
        if "list_uploads" in backend.capabilities:
            assert not _uploads(raw, bucket)


@pytest.mark.needs('upload_part_copy', 'conditional_writes', 'list_uploads')
def test_copy_parts_object_gone(backend: Any, raw: Any) -> None:
    """A deleted source (404 NoSuchKey on a part copy), or a self-copy's destination deleted
    before Complete (404 on ``If-Match``): ``ObjectGone``, distinct from a 412, upload aborted."""
    with temp_bucket(raw) as bucket:
        body, etag, table = _mp_source(raw, bucket, "src")
        with pytest.raises(ops.ObjectGone):
            run(backend, bucket, lambda s: copies.copy_parts(s, "dst", copies.Source(bucket, "absent", etag), table, {}))
        assert not _uploads(raw, bucket)

        async def delete_then_copy(s: ops.Store, upload_id: str) -> list[str]:
            r = await ops.call(s, "DELETE", "src")
            assert r.status == 204
            r = await ops.call(s, "PUT", "src", query=[("partNumber", "1"), ("uploadId", upload_id)], body=b"p")
            return [r.headers["ETag"]]

        if backend.kind == "moto":
            return  # moto ignores If-Match on Complete (doctor: complete_if_match no)
        with pytest.raises(ops.ObjectGone):
            run(backend, bucket, lambda s: copies.fill_upload(s, "src", {}, lambda u: delete_then_copy(s, u), if_match=etag))
        assert not _uploads(raw, bucket)
        assert not raw.list_objects_v2(Bucket=bucket).get("Contents")


@contextlib.contextmanager
def _before_first_part_copy(proxy: Any, action: Callable[[], object]) -> Iterator[list[bool]]:
    """Run ``action`` (a blocking call, e.g. a raw client's) just before the proxy sends its first
    UploadPartCopy to the backend."""
    client = proxy.state.backend
    original = client.request
    fired: list[bool] = []

    async def request(method: str, bucket: str | None, key: str | None = None, **kw: Any) -> Any:
        headers = {k.lower() for k in (kw.get("headers") or {})}
        if not fired and method == "PUT" and "x-amz-copy-source" in headers and ("partNumber", "1") in list(kw.get("query") or ()):
            fired.append(True)
            await asyncio.get_running_loop().run_in_executor(None, action)
        return await original(method, bucket, key, **kw)

    client.request = request
    try:
        yield fired
    finally:
        del client.request  # the class's method again


@pytest.mark.needs('upload_part_copy', 'list_uploads', 'conditional_reads')
@pytest.mark.parametrize("race", ["delete", "overwrite"])
def test_proxy_multipart_copy_racing_its_source(proxy: Any, s3: Any, raw: Any, bucket: str, backend: Any, race: str) -> None:
    """CopyObject of a multipart object through the proxy (``copies.copy_parts``) while a
    storage-side writer deletes or overwrites the source after the proxy's HEAD: 404
    ``NoSuchKey`` or 412 ``PreconditionFailed`` (never a 500), nothing written, no upload left."""
    if race == "overwrite" and backend.kind == "moto":
        pytest.skip("moto ignores x-amz-copy-source-if-match (doctor: copy_if_match no)")
    multipart_upload(s3, bucket, "src", [os.urandom(5 << 20), os.urandom(300)])

    def act() -> None:
        if race == "delete":
            raw.delete_object(Bucket=bucket, Key="src")
        else:
            raw.put_object(Bucket=bucket, Key="src", Body=b"planted")

    with _before_first_part_copy(proxy, act) as fired, pytest.raises(ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert fired
    status, code = e.value.response["ResponseMetadata"]["HTTPStatusCode"], e.value.response["Error"]["Code"]
    assert (status, code) == ((404, "NoSuchKey") if race == "delete" else (412, "PreconditionFailed"))
    assert "dst" not in [o["Key"] for o in raw.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert not _uploads(raw, bucket)


def test_small_parsers() -> None:
    assert ops.parts_from_etag('"abc-12"') == 12 and ops.parts_from_etag("abc-3") == 3
    assert ops.parts_from_etag('"abc"') is None and ops.parts_from_etag(None) is None
    assert ops.quoted("abc") == '"abc"' and ops.quoted('"abc"') == '"abc"' and ops.quoted('W/"x"') == 'W/"x"'
    assert ops.error_code(b"<Error><Code>SlowDown</Code><Message>m</Message></Error>") == ("SlowDown", "m")
    assert ops.error_code(b"<!DOCTYPE x [<!ENTITY e 'x'>]><Error><Code>&e;</Code></Error>") is None
    assert ops.xml_root(b"not xml") is None
    body = ops.complete_body(['"a&b"', '"c"'])
    assert b"<PartNumber>2</PartNumber>" in body and b"&amp;" in body
