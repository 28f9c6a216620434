"""``s3proxy rewrap``: key rotation by rewriting metadata only, against the real backend.

A proxy with two local master keys (k1 the default, k2) writes single-part
(S) and multipart (K) objects under k1; ``run_rewrap`` (in the test thread,
``asyncio.run``, like the CLI) re-wraps them under k2.  The tool's own
backend requests are recorded: only LIST, HEAD, tagging, copies and
multipart create/complete, no body bytes.  Then a proxy whose keyring no
longer holds k1 still reads everything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import proxy_settings, start_proxy, stop_proxy
from tests.integration.helpers import MiB, client_error, multipart_upload, temp_bucket
from tests.integration.keyfixtures import (
    BackendRecorder,
    Kms,
    counter,
    kms,  # noqa: F401 - fixture
    local_keys,
    rewrap,
    with_keys,
)

KMS_HEADER = "x-amz-server-side-encryption-aws-kms-key-id"


class SimulatedCrash(BaseException):
    """Stands for the process dying (not an Exception: nothing may catch it as an object failure)."""


@pytest.fixture(scope="module")
def kproxy(backend: Any) -> Iterator[Any]:
    settings = with_keys(proxy_settings(backend), local_keys("k1", "k2", default="k1"), require_https_for_sse_c=False)
    p = start_proxy(settings)
    yield p
    stop_proxy(p)


@pytest.fixture()
def kbucket(kproxy: Any) -> Iterator[str]:
    with temp_bucket(kproxy.client()) as name:
        yield name


def key_id_via_proxy(s3: Any, bucket: str, key: str) -> str:
    head = s3.head_object(Bucket=bucket, Key=key)
    return str(head["ResponseMetadata"]["HTTPHeaders"][KMS_HEADER])


def envelope_meta(raw: Any, bucket: str, key: str) -> dict[str, str]:
    meta = raw.head_object(Bucket=bucket, Key=key)["Metadata"]
    return {k: v for k, v in meta.items() if k.startswith("s3proxy-")}


def snapshot(raw: Any, s3: Any, bucket: str, key: str) -> dict[str, Any]:
    r = raw.head_object(Bucket=bucket, Key=key)
    p = s3.head_object(Bucket=bucket, Key=key)
    return {
        "raw_etag": r["ETag"], "raw_size": r["ContentLength"],
        "etag": p["ETag"], "size": p["ContentLength"],
        "type": p.get("ContentType"), "disposition": p.get("ContentDisposition"),
        "cache": p.get("CacheControl"), "language": p.get("ContentLanguage"), "expires": p.get("Expires"),
        "meta": p["Metadata"],
    }


@pytest.mark.needs("multipart_etags")
@pytest.mark.smoke
def test_rewrap_single_and_multipart(kproxy: Any, kbucket: str, raw: Any, backend: Any, tmp_path: Path) -> None:
    s3, bucket = kproxy.client(), kbucket
    single = os.urandom(100_000)
    mp_parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1000)]
    odd = "docs/sp ace+plus%25 é.txt"
    s3.put_object(
        Bucket=bucket, Key="docs/a.txt", Body=single, ContentType="text/plain",
        ContentDisposition='attachment; filename="a.txt"', CacheControl="max-age=60", ContentLanguage="fr",
        Expires=datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC), Metadata={"owner": "alice"},
    )
    s3.put_object(Bucket=bucket, Key="docs/empty", Body=b"")
    s3.put_object(Bucket=bucket, Key=odd, Body=b"odd key")
    multipart_upload(s3, bucket, "docs/mp.bin", mp_parts, ContentType="application/x-test",
                     Metadata={"kind": "multi"}, Tagging="team=blue")
    s3.put_object(Bucket=bucket, Key="other/x", Body=b"outside the prefix")
    raw.put_object(Bucket=bucket, Key="docs/foreign", Body=b"written around the proxy")
    contents = {"docs/a.txt": single, "docs/empty": b"", odd: b"odd key", "docs/mp.bin": b"".join(mp_parts)}
    encrypted = sorted(contents)
    for key in [*encrypted, "other/x"]:
        assert key_id_via_proxy(s3, bucket, key) == "k1"
    before = {key: snapshot(raw, s3, bucket, key) for key in encrypted}
    envs = {key: envelope_meta(raw, bucket, key) for key in encrypted}
    parts_before = [raw.head_object(Bucket=bucket, Key="docs/mp.bin", PartNumber=i)["ContentLength"] for i in (1, 2, 3)]
    foreign_before = raw.head_object(Bucket=bucket, Key="docs/foreign")
    assert before["docs/mp.bin"]["raw_etag"].endswith('-3"')
    settings = kproxy.settings
    state = tmp_path / "state.json"

    # -- dry run: reports, changes nothing ------------------------------------------
    rec = BackendRecorder(exclude=kproxy.state.backend)
    with rec.installed():
        run = rewrap(settings, bucket, "k2", prefix="docs/", dry_run=True, state_file=state)
    assert run.code == 0, run.out + run.err
    assert sorted(line.split(" (")[0] for line in run.lines("would re-wrap:")) == encrypted
    assert all("(local:k1 -> k2)" in line for line in run.lines("would re-wrap:"))
    assert run.lines("skipped, not written through s3proxy (no envelope):") == ["docs/foreign"]
    assert set(rec.ops()) <= {"ListObjectsV2", "HeadObject"}, rec.ops()
    assert not state.exists()
    assert {key: envelope_meta(raw, bucket, key) for key in encrypted} == envs

    # -- the real run ----------------------------------------------------------------
    proxy_requests = kproxy.state.backend.requests_sent
    enc, dec = counter(kproxy, "s3proxy_encrypted_bytes_total"), counter(kproxy, "s3proxy_decrypted_bytes_total")
    rec = BackendRecorder(exclude=kproxy.state.backend)
    with rec.installed():
        run = rewrap(settings, bucket, "k2", prefix="docs/", state_file=state)
    assert run.code == 0, run.out + run.err
    assert "4 re-wrapped" in run.out and "0 failed" in run.out
    assert run.lines("skipped, not written through s3proxy (no envelope):") == ["docs/foreign"]
    assert "rewrap [####################] 5/5 listed, 4 rewrapped, 1 skipped, 0 failed" in run.err
    assert not state.exists()  # finished: nothing to resume
    # Only metadata operations, no body bytes in either direction.
    allowed = {"ListObjectsV2", "HeadObject", "GetObjectTagging", "CopyObject", "CreateMultipartUpload",
               "UploadPartCopy", "CompleteMultipartUpload"}
    assert set(rec.ops()) <= allowed, rec.ops()
    assert sorted(s.key for s in rec.sent if s.op == "CopyObject") == sorted(k for k in encrypted if k != "docs/mp.bin")
    assert [s.op for s in rec.sent if s.key == "docs/mp.bin" and s.op != "HeadObject"] == [
        "GetObjectTagging", "CreateMultipartUpload", *["UploadPartCopy"] * 3, "CompleteMultipartUpload"]
    ranges = {s.query["partNumber"]: s.headers["x-amz-copy-source-range"] for s in rec.sent if s.op == "UploadPartCopy"}
    offsets = [sum(parts_before[:i]) for i in range(3)]
    assert ranges == {str(i + 1): f"bytes={offsets[i]}-{offsets[i] + parts_before[i] - 1}" for i in range(3)}
    for s in rec.sent:
        if s.is_copy:
            assert s.headers["x-amz-copy-source-if-match"] == before[s.key]["raw_etag"]
            assert s.body_bytes == 0
        elif s.op == "CompleteMultipartUpload":
            assert s.body_bytes < 4096
        else:
            assert s.body_bytes == 0
    assert all(s.status == 200 for s in rec.sent if s.op != "HeadObject" or "partNumber" not in s.query)
    # The proxy process saw nothing: no body encrypted or decrypted, no backend request.
    assert kproxy.state.backend.requests_sent == proxy_requests
    assert counter(kproxy, "s3proxy_encrypted_bytes_total") == enc
    assert counter(kproxy, "s3proxy_decrypted_bytes_total") == dec

    # -- after: k2, same bytes, same ETags and sizes, same headers -------------------
    for key in encrypted:
        assert key_id_via_proxy(s3, bucket, key) == "k2", key
        assert snapshot(raw, s3, bucket, key) == before[key], key
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == contents[key], key
        new_env, old_env = envelope_meta(raw, bucket, key), envs[key]
        assert new_env["s3proxy-id"] == old_env["s3proxy-id"] and new_env["s3proxy-ctx"] == old_env["s3proxy-ctx"]
        assert new_env["s3proxy-key"].startswith("local;k2;") and new_env["s3proxy-mac"] != old_env["s3proxy-mac"]
    assert [raw.head_object(Bucket=bucket, Key="docs/mp.bin", PartNumber=i)["ContentLength"] for i in (1, 2, 3)] \
        == parts_before
    boundary = 5 * MiB
    got = s3.get_object(Bucket=bucket, Key="docs/mp.bin", Range=f"bytes={boundary - 5}-{boundary + 5}")["Body"].read()
    assert got == contents["docs/mp.bin"][boundary - 5: boundary + 6]
    assert s3.get_object(Bucket=bucket, Key="docs/mp.bin", PartNumber=3)["Body"].read() == mp_parts[2]
    assert raw.get_object_tagging(Bucket=bucket, Key="docs/mp.bin")["TagSet"] == [{"Key": "team", "Value": "blue"}]
    assert key_id_via_proxy(s3, bucket, "other/x") == "k1"  # outside --prefix
    foreign_after = raw.head_object(Bucket=bucket, Key="docs/foreign")
    assert foreign_after["ETag"] == foreign_before["ETag"] and foreign_after["Metadata"] == foreign_before["Metadata"]
    listed = {o["Key"]: (o["Size"], o["ETag"]) for o in raw.list_objects_v2(Bucket=bucket)["Contents"]}
    assert all(listed[k] == (before[k]["raw_size"], before[k]["raw_etag"]) for k in encrypted)

    # -- a second run has nothing to do --------------------------------------------------
    rec = BackendRecorder(exclude=kproxy.state.backend)
    with rec.installed():
        run = rewrap(settings, bucket, "k2", prefix="docs/", state_file=state)
    assert run.code == 0 and "0 re-wrapped" in run.out and "4 already under k2" in run.out, run.out
    assert set(rec.ops()) == {"ListObjectsV2", "HeadObject"}

    # -- k1 leaves the keyring: everything under docs/ is still readable -----------------
    k2_only = start_proxy(with_keys(settings, local_keys("k2")))
    try:
        s3b = k2_only.client()
        for key in encrypted:
            assert s3b.get_object(Bucket=bucket, Key=key)["Body"].read() == contents[key], key
        with pytest.raises(ClientError) as info:  # not re-wrapped: needs k1, which is gone
            s3b.get_object(Bucket=bucket, Key="other/x")
        assert client_error(info.value) == (400, "KMS.NotFoundException")
    finally:
        stop_proxy(k2_only)


def test_rewrap_resumes_after_failures(kproxy: Any, kbucket: str, tmp_path: Path) -> None:
    s3, bucket = kproxy.client(), kbucket
    keys = [f"r/{i}" for i in range(6)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    state = tmp_path / "state.json"
    rec = BackendRecorder(exclude=kproxy.state.backend)
    rec.fail(lambda s: s.key == "r/2" and s.op == "CopyObject", RuntimeError("injected copy failure"))
    with rec.installed():
        first = rewrap(kproxy.settings, bucket, "k2", state_file=state, page_size=2)
    assert first.code == 1, first.out
    assert first.lines("failed:") == ["r/2: RuntimeError: injected copy failure"]
    assert "5 re-wrapped" in first.out
    saved = json.loads(state.read_text())
    assert saved["failed"] == ["r/2"] and saved["after"] == "r/5" and saved["walk_complete"]
    assert saved["bucket"] == bucket and saved["to"] == "k2"
    assert [rec.copies_of(k) for k in keys] == [1, 1, 0, 1, 1, 1]
    assert key_id_via_proxy(s3, bucket, "r/2") == "k1"

    rec.clear()
    with rec.installed():
        second = rewrap(kproxy.settings, bucket, "k2", state_file=state, page_size=2)
    assert second.code == 0, second.out
    assert "1 re-wrapped" in second.out and "1 failed objects retried" in second.out
    # Only r/2 was touched again; the listing resumed after the last key.
    assert [rec.copies_of(k) for k in keys] == [0, 0, 1, 0, 0, 0]
    assert [rec.heads_of(k) for k in keys] == [0, 0, 1, 0, 0, 0]
    assert [s.query.get("start-after") for s in rec.sent if s.op == "ListObjectsV2"] == ["r/5"]
    assert not state.exists()
    for key in keys:
        assert key_id_via_proxy(s3, bucket, key) == "k2"
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode()


def test_rewrap_resumes_after_a_crash(kproxy: Any, kbucket: str, tmp_path: Path) -> None:
    s3, bucket = kproxy.client(), kbucket
    keys = [f"c/{i}" for i in range(6)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    state = tmp_path / "state.json"
    rec = BackendRecorder(exclude=kproxy.state.backend)
    rec.fail(lambda s: s.key == "c/3" and s.op == "CopyObject", SimulatedCrash())
    with rec.installed(), pytest.raises(SimulatedCrash):
        rewrap(kproxy.settings, bucket, "k2", state_file=state, concurrency=1, page_size=2)
    saved = json.loads(state.read_text())
    assert saved["after"] == "c/2" and saved["failed"] == [] and not saved["walk_complete"]
    assert [rec.copies_of(k) for k in keys] == [1, 1, 1, 0, 0, 0]

    rec.clear()
    with rec.installed():
        again = rewrap(kproxy.settings, bucket, "k2", state_file=state, concurrency=1, page_size=2)
    assert again.code == 0, again.out
    assert [rec.copies_of(k) for k in keys] == [0, 0, 0, 1, 1, 1]  # nothing done twice
    assert [rec.heads_of(k) for k in keys] == [0, 0, 0, 1, 1, 1]
    assert not state.exists()
    assert [key_id_via_proxy(s3, bucket, k) for k in keys] == ["k2"] * 6


def test_rewrap_refuses_what_it_must_not_touch(kproxy: Any, kbucket: str, raw: Any, tmp_path: Path) -> None:
    s3, bucket = kproxy.client(), kbucket
    s3.put_object(Bucket=bucket, Key="good", Body=b"good")
    s3.put_object(Bucket=bucket, Key="src", Body=b"moved around the proxy")
    # A body + metadata copied around the proxy is not bound to its new name:
    # re-wrapping must not launder it into a valid object.
    raw.copy_object(Bucket=bucket, Key="misplaced", CopySource={"Bucket": bucket, "Key": "src"})
    ck = os.urandom(32)
    s3.put_object(Bucket=bucket, Key="ssec", Body=b"customer key", SSECustomerAlgorithm="AES256", SSECustomerKey=ck)
    misplaced_meta = envelope_meta(raw, bucket, "misplaced")
    run = rewrap(kproxy.settings, bucket, "k2", state_file=tmp_path / "s.json")
    assert run.code == 1
    assert run.lines("failed:") == ["misplaced: metadata is not bound to this bucket and key "
                                    "(copied around the proxy?); not re-wrapped"]
    assert run.lines("skipped, SSE-C (only the client has the key):") == ["ssec"]
    assert envelope_meta(raw, bucket, "misplaced") == misplaced_meta
    assert key_id_via_proxy(s3, bucket, "good") == "k2"
    # An unknown target key stops the run before anything is touched.
    bad = rewrap(kproxy.settings, bucket, "no-such-key", state_file=tmp_path / "t.json")
    assert bad.code == 2 and "no-such-key" in bad.err and "KMS.NotFoundException" in bad.err
    # A state file of another run is not silently reused.
    other = rewrap(kproxy.settings, bucket, "k1", state_file=tmp_path / "s.json")
    assert other.code == 2 and "belongs to another run" in other.err


def test_rewrap_with_aws_kms_uses_reencrypt(backend: Any, kms: Kms, tmp_path: Path) -> None:  # noqa: F811
    settings = with_keys(
        proxy_settings(backend),
        {"backend": "aws-kms", "aws_kms": kms.settings(kms.arns[0]), "cache": {"enabled": False}},
    )
    p = start_proxy(settings)
    try:
        s3 = p.client()
        with temp_bucket(s3) as bucket:
            for i in range(3):
                s3.put_object(Bucket=bucket, Key=f"o{i}", Body=b"x" * i)
            assert key_id_via_proxy(s3, bucket, "o0") == kms.arns[0]
            calls: list[str] = []
            from s3proxy.keys.aws_kms import AwsKmsBackend

            real = AwsKmsBackend._call

            async def recording(self: Any, operation: str, **params: Any) -> Any:
                calls.append(operation)
                return await real(self, operation, **params)

            AwsKmsBackend._call = recording  # type: ignore[method-assign]
            try:
                run = rewrap(settings, bucket, kms.alias, state_file=tmp_path / "s.json")  # alias -> arns[1]
            finally:
                AwsKmsBackend._call = real  # type: ignore[method-assign]
            assert run.code == 0, run.out + run.err
            # one probe (Encrypt) and one Decrypt (binding check) + one ReEncrypt per object
            assert calls.count("re_encrypt") == 3 and calls.count("decrypt") == 3, calls
            assert "generate_data_key" not in calls
            for i in range(3):
                assert key_id_via_proxy(s3, bucket, f"o{i}") == kms.arns[1]
                assert s3.get_object(Bucket=bucket, Key=f"o{i}")["Body"].read() == b"x" * i
            again = rewrap(settings, bucket, kms.alias, state_file=tmp_path / "s.json")
            assert "3 already under" in again.out, again.out  # the alias resolved to the ARN it names
    finally:
        stop_proxy(p)


@pytest.mark.needs("part_number")
def test_rewrap_multipart_from_part_headers(kproxy: Any, kbucket: str, raw: Any, tmp_path: Path) -> None:
    """A backend that does not answer ``HEAD ?partNumber=``: the part table comes from 70-byte part headers."""
    import aiohttp

    s3, bucket = kproxy.client(), kbucket
    parts = [os.urandom(5 * MiB), os.urandom(4321)]
    multipart_upload(s3, bucket, "mp", parts)
    before = raw.head_object(Bucket=bucket, Key="mp")
    rec = BackendRecorder(exclude=kproxy.state.backend)
    rec.fail(lambda s: s.op == "HeadObject" and "partNumber" in s.query,
             aiohttp.ClientConnectionError("no part HEADs here"), times=100)
    with rec.installed():
        run = rewrap(kproxy.settings, bucket, "k2", state_file=tmp_path / "s.json")
    assert run.code == 0, run.out
    ranged = [s for s in rec.sent if s.method == "GET" and "range" in s.headers]
    assert [s.headers["range"] for s in ranged] == ["bytes=0-69", f"bytes={5 * MiB + 16454}-{5 * MiB + 16454 + 69}"]
    assert all(s.headers["if-match"] == before["ETag"] for s in ranged)
    after = raw.head_object(Bucket=bucket, Key="mp")
    assert (after["ETag"], after["ContentLength"]) == (before["ETag"], before["ContentLength"])
    assert key_id_via_proxy(s3, bucket, "mp") == "k2"
    assert s3.get_object(Bucket=bucket, Key="mp")["Body"].read() == b"".join(parts)


def test_rewrap_cancelled_like_ctrl_c(kproxy: Any, kbucket: str, tmp_path: Path) -> None:
    """Cancelling the run (what ``asyncio.run`` does on Ctrl-C) saves the checkpoint; a rerun finishes."""
    import asyncio
    import io
    from argparse import Namespace
    from contextlib import redirect_stderr, redirect_stdout

    from s3proxy.rewrap import run_rewrap

    s3, bucket = kproxy.client(), kbucket
    keys = [f"c/{i}" for i in range(8)]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    state = tmp_path / "state.json"
    args = Namespace(bucket=bucket, prefix="", to_key="k2", dry_run=False, concurrency=2,
                     state_file=str(state), no_progress=True, page_size=3)
    rec = BackendRecorder(exclude=kproxy.state.backend)

    async def main() -> int:
        task = asyncio.current_task()
        assert task is not None
        rec.fail(lambda s: s.key == "c/4" and s.op == "CopyObject" and bool(task.cancel()) and False,
                 RuntimeError("never raised"))
        return await run_rewrap(kproxy.settings, args)

    with rec.installed(), redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()), \
            pytest.raises(asyncio.CancelledError):
        asyncio.run(asyncio.wait_for(main(), 30))
    saved = json.loads(state.read_text())
    assert saved["after"] in ("c/2", "c/3", "c/4") and not saved["walk_complete"]
    first = BackendRecorder(exclude=kproxy.state.backend)
    first.sent = list(rec.sent)
    rec.clear()
    with rec.installed():
        again = rewrap(kproxy.settings, bucket, "k2", state_file=state, page_size=3)
    assert again.code == 0, again.out
    done = keys[: keys.index(saved["after"]) + 1]
    # The rerun resumes after the checkpoint: what finished is not looked at again ...
    assert all(rec.heads_of(k) == 0 and rec.copies_of(k) == 0 for k in done)
    # ... and nothing is rewritten twice (the copies in flight at the cancellation may or may not
    # have reached the backend; if one did, the rerun finds the object already under k2).
    assert all(first.copies_of(k, answered=True) + rec.copies_of(k) <= 1 for k in keys)
    assert all(rec.copies_of(k) == 1 for k in keys[len(done) + 2:])
    assert [key_id_via_proxy(s3, bucket, k) for k in keys] == ["k2"] * 8
