"""Attacks on session 5's changes (issue 11 performance work and the restructurings before it):

- per-identity backend credentials passed explicitly (``Ctx.backend``): every request for a
  caller's data is signed with the caller's own backend credentials, the proxy's records with the
  proxy's; nothing keeps running for a request after its answer;
- the shared multipart-copy / self-copy code (``backend.copies``): pinning, abort on failure,
  error mapping, the re-encrypt fallback;
- the decoded-envelope cache and the rewritten-listing-page cache: a storage-side writer cannot
  make a cached decode stand for another object;
- the reused decrypt buffers of large GETs (``streams.OutBuffers``): pipelined, concurrent and slow
  readers get exactly their own bytes; a tampered chunk ends the body before any of its bytes.

The store here is the embedded devstore with a thin layer in front (an aiohttp middleware in the
same app) that records which access key signed each request and can inject a storage-side
action (a fault, or a write racing the proxy) at a chosen request.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from botocore.exceptions import ClientError

from tests.conftest import CLIENT_AK, CLIENT_SK, Backend, Proxy, proxy_settings, start_proxy, stop_proxy

PROXY_AK, PROXY_SK = "S5PROXYOWNKEY0000001", "s5-proxy-own-secret-00000000000000001"
TEAM_BK_AK, TEAM_BK_SK = "S5TEAMBACKENDKEY0001", "s5-team-backend-secret-000000000000001"
TEAM_AK, TEAM_SK = "AKIDS5TEAMIDENTITY01", "s5-team-identity-secret-00000000000001"
KiB, MiB = 1024, 1024 * 1024
_CRED = re.compile(r"Credential=([^/,\s]+)/")

Fault = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


class Gate:
    """What the layer in front of the store saw, and the faults it injects."""

    def __init__(self) -> None:
        self.log: list[tuple[float, str, str, str, str | None, bool]] = []  # (t, method, path, query, key id, copy)
        self.faults: list[Fault] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def clear(self) -> None:
        self.log.clear()
        self.faults.clear()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        m = _CRED.search(request.headers.get("Authorization", ""))
        self.log.append((time.monotonic(), request.method, request.path, request.query_string,
                         m.group(1) if m else None, "x-amz-copy-source" in request.headers))
        for fault in list(self.faults):
            resp = await fault(request)
            if resp is not None:
                return resp
        return await handler(request)


@pytest.fixture(scope="module")
def gate_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Backend, Gate]]:
    """The devstore (two access keys: the proxy's and the team's; 1 KiB minimum part size) behind a Gate."""
    from s3proxy.devstore.server import build_devstore_app

    root: Path = tmp_path_factory.mktemp("s5-store")
    gate = Gate()
    loop = asyncio.new_event_loop()
    gate.loop = loop
    box: dict[str, Any] = {}

    async def boot() -> None:
        app = build_devstore_app(root, {PROXY_AK: PROXY_SK, TEAM_BK_AK: TEAM_BK_SK}, min_part_size=1024)
        app.middlewares.append(gate.middleware)
        runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["runner"] = runner
        box["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(boot())
        box["ready"].set()
        loop.run_forever()
        loop.run_until_complete(box["runner"].cleanup())

    box["ready"] = threading.Event()
    t = threading.Thread(target=run, daemon=True, name="s5-gate-store")
    t.start()
    assert box["ready"].wait(30)
    yield Backend(f"http://127.0.0.1:{box['port']}", PROXY_AK, PROXY_SK, "us-east-1", "devstore"), gate
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)


SEALED = "s5-sealed"  # tags sealed: tagging calls are self-copies
PUBLIC = "s5-public"


@pytest.fixture(scope="module")
def gproxy(gate_store: tuple[Backend, Gate]) -> Iterator[Proxy]:
    backend, _ = gate_store
    settings = proxy_settings(
        backend,
        identities=[
            {"name": "victim", "access_key": CLIENT_AK, "secret_key": CLIENT_SK},
            {"name": "team", "access_key": TEAM_AK, "secret_key": TEAM_SK,
             "backend_access_key": TEAM_BK_AK, "backend_secret_key": TEAM_BK_SK},
        ],
        buckets={SEALED: {"tags": "sealed"}, PUBLIC: {"public_read": True}},
    )
    # 1 MiB segments: a 3 MiB GET reads its ciphertext as parallel ranged GETs
    settings = settings.model_copy(update={"backend": settings.backend.model_copy(update={"get_segment_size": MiB})})
    p = start_proxy(settings)
    yield p
    stop_proxy(p)


@pytest.fixture(scope="module")
def uv_proxy(gate_store: tuple[Backend, Gate], gproxy: Proxy) -> Iterator[Proxy]:
    """The same proxy on uvloop, as ``s3proxy serve`` runs it: its transports keep a view of
    what they have not sent yet (the case ``OutBuffers`` probes for)."""
    uvloop = pytest.importorskip("uvloop")
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        p = start_proxy(gproxy.settings)
    finally:
        asyncio.set_event_loop_policy(old)
    assert type(p.loop).__module__.startswith("uvloop")
    yield p
    stop_proxy(p)


@pytest.fixture(params=["asyncio", "uvloop"])
def any_proxy(request: pytest.FixtureRequest, gproxy: Proxy) -> Proxy:
    return gproxy if request.param == "asyncio" else request.getfixturevalue("uv_proxy")


@pytest.fixture()
def gate(gate_store: tuple[Backend, Gate]) -> Iterator[Gate]:
    g = gate_store[1]
    g.clear()
    yield g
    g.clear()


@pytest.fixture()
def store(gate_store: tuple[Backend, Gate]) -> Any:
    """The storage-side attacker: the backend's credentials, straight to the store."""
    return gate_store[0].client()


def _fresh(client: Any, name: str | None = None) -> str:
    b = name or "s5-" + uuid.uuid4().hex[:12]
    try:
        client.create_bucket(Bucket=b)
    except ClientError as e:
        if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    return b


def _multipart(client: Any, bucket: str, key: str, parts: list[bytes]) -> None:
    up = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    etags = [client.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=i, Body=p)["ETag"]
             for i, p in enumerate(parts, start=1)]
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=up, MultipartUpload={
        "Parts": [{"PartNumber": i, "ETag": e} for i, e in enumerate(etags, start=1)]})


def _code(e: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    r = e.value.response
    return int(r["ResponseMetadata"]["HTTPStatusCode"]), str(r["Error"]["Code"])


def _integrity_failures(p: Proxy) -> float:
    v = p.state.metrics.registry.get_sample_value("s3proxy_integrity_failures_total")
    return float(v or 0.0)


# ------------------------------------------------------------------ 1. whose credentials sign


def test_limited_identity_signs_every_data_request_with_its_own_backend_credentials(gproxy: Proxy, gate: Gate) -> None:
    """Every handler a team member reaches (PUT, multipart, UploadPartCopy, CopyObject single and
    part by part, sealed-tag self-copies single and part by part, parallel and ranged GETs, HEAD,
    attributes, listings, DeleteObjects, DeleteBucket) signs the caller's data with the team's
    backend key; only the proxy's own records (``.s3proxy/``) go out under the proxy's key."""
    team = gproxy.client(TEAM_AK, TEAM_SK)
    b = _fresh(team, SEALED)
    part = os.urandom(64 * KiB)
    big = os.urandom(3 * MiB + 123)
    gate.clear()
    team.put_object(Bucket=b, Key="a", Body=b"small", Tagging="t=1")
    team.put_object_tagging(Bucket=b, Key="a", Tagging={"TagSet": [{"Key": "t", "Value": "2"}]})
    _multipart(team, b, "mp", [part, part, b"tail"])
    team.put_object_tagging(Bucket=b, Key="mp", Tagging={"TagSet": [{"Key": "t", "Value": "3"}]})
    team.copy_object(Bucket=b, Key="mp-copy", CopySource={"Bucket": b, "Key": "mp"})
    team.copy_object(Bucket=b, Key="a-copy", CopySource={"Bucket": b, "Key": "a"})
    team.put_object(Bucket=b, Key="big", Body=big)
    assert team.get_object(Bucket=b, Key="big")["Body"].read() == big
    assert team.get_object(Bucket=b, Key="big", Range="bytes=1000-1500000")["Body"].read() == big[1000:1500001]
    assert team.get_object(Bucket=b, Key="mp-copy")["Body"].read() == part + part + b"tail"
    assert team.head_object(Bucket=b, Key="mp")["ContentLength"] == 2 * len(part) + 4
    assert team.get_object_tagging(Bucket=b, Key="mp")["TagSet"] == [{"Key": "t", "Value": "3"}]
    team.get_object_attributes(Bucket=b, Key="big", ObjectAttributes=["ObjectSize"])
    up = team.create_multipart_upload(Bucket=b, Key="upc")["UploadId"]
    etag = team.upload_part_copy(Bucket=b, Key="upc", UploadId=up, PartNumber=1, CopySource={"Bucket": b, "Key": "big"},
                                 CopySourceRange="bytes=0-99999")["CopyPartResult"]["ETag"]
    team.list_parts(Bucket=b, Key="upc", UploadId=up)
    team.list_multipart_uploads(Bucket=b)
    team.complete_multipart_upload(Bucket=b, Key="upc", UploadId=up,
                                   MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert team.get_object(Bucket=b, Key="upc")["Body"].read() == big[:100000]
    gone = team.create_multipart_upload(Bucket=b, Key="gone")["UploadId"]
    team.abort_multipart_upload(Bucket=b, Key="gone", UploadId=gone)
    keys = {o["Key"] for o in team.list_objects_v2(Bucket=b)["Contents"]}
    assert keys == {"a", "a-copy", "mp", "mp-copy", "big", "upc"}
    team.list_object_versions(Bucket=b)
    team.delete_objects(Bucket=b, Delete={"Objects": [{"Key": k} for k in keys]})
    team.delete_bucket(Bucket=b)
    time.sleep(0.3)  # anything still running for these requests would show now

    mine = [e for e in gate.log if e[2] == "/" or e[2].startswith(f"/{b}")]
    assert mine, "the gate saw nothing"
    wrong = []
    for _, method, path, query, ak, _copy in mine:
        # the proxy's own records: its keys, and DeleteBucket's look for "nothing left but ours"
        # (a listing of two top-level names, then of .s3proxy/) before it purges them
        ours = ("/.s3proxy/" in path or path.startswith(f"/{b}/.s3proxy") or "prefix=.s3proxy" in query
                or (method == "GET" and path == f"/{b}" and query == "list-type=2&delimiter=/&max-keys=2"))
        if query == "cors" or (ours and ak == PROXY_AK) or (not ours and ak == TEAM_BK_AK):
            continue
        wrong.append((method, path, query, ak))
    assert not wrong, f"requests signed with the wrong backend key: {wrong[:10]}"


def test_identity_without_own_credentials_never_borrows_anothers(gproxy: Proxy, gate: Gate) -> None:
    """Requests of the team and of the victim interleaved (concurrently, one event loop): each
    is signed with its own key, never the other's (no credentials leak across requests)."""
    team, victim = gproxy.client(TEAM_AK, TEAM_SK), gproxy.client()
    tb, vb = _fresh(team), _fresh(victim)
    body = os.urandom(2 * MiB + 7)
    team.put_object(Bucket=tb, Key="x", Body=body)
    victim.put_object(Bucket=vb, Key="x", Body=body)
    gate.clear()

    def read(c: Any, bucket: str) -> bool:
        return bool(c.get_object(Bucket=bucket, Key="x")["Body"].read() == body)

    with ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(read, team if i % 2 else victim, tb if i % 2 else vb) for i in range(16)]
        assert all(f.result() for f in futs)
    for _, _m, path, _q, ak, _c in gate.log:
        if path.startswith(f"/{tb}/x"):
            assert ak == TEAM_BK_AK, path
        elif path.startswith(f"/{vb}/x"):
            assert ak == PROXY_AK, path
    for c, bk in ((team, tb), (victim, vb)):
        c.delete_object(Bucket=bk, Key="x")
        c.delete_bucket(Bucket=bk)


FORBIDDEN = "s5-forbidden"  # the team's backend key may not touch it (its proxy grants allow everything)


def test_limited_backend_key_stays_limited_on_every_path(gproxy: Proxy, gate: Gate) -> None:
    """The store refuses the team's backend key anything in one bucket (as a bucket policy would,
    the copy source included), while the team's proxy grants allow all: every way the team
    could reach that bucket's data through the proxy (GET whole and ranged, HEAD, attributes,
    listing, CopyObject of a single-part and of a multipart source, UploadPartCopy, tagging)
    is refused, and nothing of the data comes back."""
    victim, team = gproxy.client(), gproxy.client(TEAM_AK, TEAM_SK)
    fb = _fresh(victim, FORBIDDEN)
    tb = _fresh(team)
    secret = os.urandom(40 * KiB)
    victim.put_object(Bucket=fb, Key="s", Body=secret)
    _multipart(victim, fb, "m", [secret, secret, b"end"])

    async def policy(request: web.Request) -> web.StreamResponse | None:
        m = _CRED.search(request.headers.get("Authorization", ""))
        src = request.headers.get("x-amz-copy-source", "").lstrip("/")
        touches = request.path == f"/{FORBIDDEN}" or request.path.startswith(f"/{FORBIDDEN}/") or src.startswith(FORBIDDEN + "/")
        if m and m.group(1) == TEAM_BK_AK and touches:
            return web.Response(status=403, content_type="application/xml",
                                body=b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>")
        return None

    gate.faults.append(policy)
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("get", lambda: team.get_object(Bucket=fb, Key="s")["Body"].read()),
        ("get-mp", lambda: team.get_object(Bucket=fb, Key="m")["Body"].read()),
        ("range", lambda: team.get_object(Bucket=fb, Key="m", Range="bytes=100-50000")["Body"].read()),
        ("head", lambda: team.head_object(Bucket=fb, Key="s")),
        ("attributes", lambda: team.get_object_attributes(Bucket=fb, Key="s", ObjectAttributes=["ObjectSize"])),
        ("list", lambda: team.list_objects_v2(Bucket=fb)),
        ("tagging", lambda: team.get_object_tagging(Bucket=fb, Key="s")),
        ("copy", lambda: team.copy_object(Bucket=tb, Key="c1", CopySource={"Bucket": fb, "Key": "s"})),
        ("copy-mp", lambda: team.copy_object(Bucket=tb, Key="c2", CopySource={"Bucket": fb, "Key": "m"})),
    ]
    up = team.create_multipart_upload(Bucket=tb, Key="upc")["UploadId"]
    calls.append(("upload-part-copy", lambda: team.upload_part_copy(
        Bucket=tb, Key="upc", UploadId=up, PartNumber=1, CopySource={"Bucket": fb, "Key": "m"})))
    leaked = []
    for name, call in calls:
        try:
            out = call()
        except ClientError as e:
            assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 403, (name, e.response)
            continue
        leaked.append(name)
        assert secret[:64] not in repr(out).encode(), name
    assert not leaked, f"answered through the proxy's own credentials: {leaked}"
    gate.faults.clear()
    team.abort_multipart_upload(Bucket=tb, Key="upc", UploadId=up)
    assert {o["Key"] for o in team.list_objects_v2(Bucket=tb).get("Contents", [])} == set()
    team.delete_bucket(Bucket=tb)


# ------------------------------------------------------------------ 2. copies under attack


def _no_uploads(store: Any, bucket: str) -> list[str]:
    return [u["Key"] for u in store.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def test_source_overwritten_during_part_copy_is_412_and_nothing_left(gproxy: Proxy, gate: Gate, store: Any) -> None:
    """A storage-side writer replaces the source between the proxy's HEAD and its first
    UploadPartCopy: the copy is pinned (x-amz-copy-source-if-match), fails 412, is aborted, and
    the destination is never written."""
    victim = gproxy.client()
    b = _fresh(victim)
    part = os.urandom(32 * KiB)
    _multipart(victim, b, "src", [part, part, part])
    done = {"hit": False}

    async def overwrite(request: web.Request) -> None:
        if (request.method == "PUT" and "partNumber=1" in request.query_string
                and "x-amz-copy-source" in request.headers and not done["hit"]):
            done["hit"] = True
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: store.put_object(Bucket=b, Key="src", Body=b"attacker"))
        return None

    gate.faults.append(overwrite)
    with pytest.raises(ClientError) as ei:
        victim.copy_object(Bucket=b, Key="dst", CopySource={"Bucket": b, "Key": "src"})
    assert done["hit"]
    assert _code(ei) == (412, "PreconditionFailed")
    assert _no_uploads(store, b) == []
    with pytest.raises(ClientError) as ei2:
        store.head_object(Bucket=b, Key="dst")
    assert _code(ei2)[0] == 404


def test_source_overwritten_during_single_copy_is_never_stored_half(gproxy: Proxy, gate: Gate) -> None:
    """Another client overwrites a single-part source between the proxy's HEAD (which read its
    envelope) and the backend copy: the copy must fail 412 or store one whole version, never the
    new body under the old envelope (an object no GET can read)."""
    victim = gproxy.client()
    b = _fresh(victim)
    old, new = os.urandom(30 * KiB), os.urandom(30 * KiB)
    victim.put_object(Bucket=b, Key="src", Body=old)
    done = {"hit": False}

    async def race(request: web.Request) -> None:
        if (request.method == "PUT" and request.path.endswith("/dst") and "x-amz-copy-source" in request.headers
                and not done["hit"]):
            done["hit"] = True
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: victim.put_object(Bucket=b, Key="src", Body=new))
        return None

    gate.faults.append(race)
    try:
        victim.copy_object(Bucket=b, Key="dst", CopySource={"Bucket": b, "Key": "src"})
    except ClientError as e:
        assert done["hit"]
        assert (e.response["ResponseMetadata"]["HTTPStatusCode"], e.response["Error"]["Code"]) == (412, "PreconditionFailed")
        return
    assert done["hit"]
    assert victim.get_object(Bucket=b, Key="dst")["Body"].read() in (old, new)


def test_part_copy_failing_midway_is_503_never_500_and_aborted(gproxy: Proxy, gate: Gate, store: Any) -> None:
    """The store fails one UploadPartCopy after part 1 worked (a 500, retried, then given up):
    the client gets a 503 (clients retry a 500 for minutes), the upload is aborted, no destination."""
    victim = gproxy.client()
    b = _fresh(victim)
    part = os.urandom(32 * KiB)
    _multipart(victim, b, "src", [part, part, part])

    async def fail_part_2(request: web.Request) -> web.StreamResponse | None:
        if request.method == "PUT" and "partNumber=2" in request.query_string and "x-amz-copy-source" in request.headers:
            return web.Response(status=500, content_type="application/xml",
                                body=b"<Error><Code>InternalError</Code><Message>injected</Message></Error>")
        return None

    gate.faults.append(fail_part_2)
    with pytest.raises(ClientError) as ei:
        victim.copy_object(Bucket=b, Key="dst", CopySource={"Bucket": b, "Key": "src"})
    assert _code(ei)[0] == 503
    assert _no_uploads(store, b) == []
    with pytest.raises(ClientError):
        store.head_object(Bucket=b, Key="dst")


def test_object_replaced_during_sealed_tag_self_copy_is_never_half_written(gproxy: Proxy, gate: Gate, store: Any) -> None:
    """A write lands on a multipart object while PutObjectTagging re-seals it part by part: the
    Complete is pinned (If-Match), so the tagging call reads again or fails cleanly; the object
    is then the other writer's, whole, never a mix, and no upload is left behind."""
    victim = gproxy.client()
    b = _fresh(victim, SEALED)
    key = "mp-" + uuid.uuid4().hex[:8]
    part = os.urandom(32 * KiB)
    _multipart(victim, b, key, [part, part, b"end"])
    other = os.urandom(40 * KiB)
    done = {"hit": False}

    async def race(request: web.Request) -> None:
        if (request.method == "POST" and "uploadId=" in request.query_string and request.path.endswith("/" + key)
                and not done["hit"]):
            done["hit"] = True  # the proxy's Complete of the self-copy: another client's PUT lands first
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, lambda: victim.put_object(Bucket=b, Key=key, Body=other))
        return None

    gate.faults.append(race)
    try:
        victim.put_object_tagging(Bucket=b, Key=key, Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})
    except ClientError as e:
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] in (409, 412), e.response
    assert done["hit"]
    assert victim.get_object(Bucket=b, Key=key)["Body"].read() == other
    assert _no_uploads(store, b) == []


def test_reencrypt_fallback_failure_leaves_nothing_running(gproxy: Proxy, gate: Gate, store: Any) -> None:
    """A store without UploadPartCopy (part 1 answers 501) makes a multipart copy fall back to
    re-encrypting through the proxy.  When one re-encrypted part fails, the copy must end: the
    client gets a 503, the upload is aborted, no request for that upload reaches the store after
    the Abort, and no integrity failure is counted (nothing was tampered with)."""
    victim = gproxy.client()
    b = _fresh(victim)
    parts = [os.urandom(16 * KiB) for _ in range(8)] + [b"end"]
    _multipart(victim, b, "src", parts)

    async def no_part_copy(request: web.Request) -> web.StreamResponse | None:
        if request.method == "PUT" and "partNumber=" in request.query_string and "x-amz-copy-source" in request.headers:
            return web.Response(status=501, content_type="application/xml",
                                body=b"<Error><Code>NotImplemented</Code><Message>no</Message></Error>")
        return None

    async def fail_part_1_slow_others(request: web.Request) -> web.StreamResponse | None:
        if request.method != "PUT" or "x-amz-copy-source" in request.headers or "/dst" not in request.path:
            return None
        if "partNumber=1&" in request.query_string + "&":
            await request.read()
            return web.Response(status=500, content_type="application/xml",
                                body=b"<Error><Code>InternalError</Code><Message>injected</Message></Error>")
        if "partNumber=" in request.query_string:
            await asyncio.sleep(0.4)
        return None

    gate.faults += [no_part_copy, fail_part_1_slow_others]
    before = _integrity_failures(gproxy)
    with pytest.raises(ClientError) as ei:
        victim.copy_object(Bucket=b, Key="dst", CopySource={"Bucket": b, "Key": "src"})
    answered = time.monotonic()
    assert _code(ei)[0] == 503
    time.sleep(2.0)  # parts still running would reach the store now
    late = [e for e in gate.log if e[0] > answered and "/dst" in e[2] and "partNumber=" in e[3]]
    assert _no_uploads(store, b) == []
    assert late == [], f"{len(late)} UploadParts reached the store after the copy was answered"
    assert _integrity_failures(gproxy) == before, "a failed copy counted as tampering"


def test_bare_404_to_the_first_part_copy_falls_back_not_gone(gproxy: Proxy, gate: Gate, store: Any) -> None:
    """A store that answers UploadPartCopy with a bare 404 (no S3 error body: the request is not
    routed) has no working UploadPartCopy: the copy re-encrypts through the proxy and succeeds; it
    is not taken for a deleted source.  A 404 NoSuchKey there still is one (the next test file's
    ``test_copy_parts_object_gone``)."""
    victim = gproxy.client()
    b = _fresh(victim)
    parts = [os.urandom(16 * KiB) for _ in range(2)] + [b"end"]
    _multipart(victim, b, "src", parts)

    async def bare_404(request: web.Request) -> web.StreamResponse | None:
        if request.method == "PUT" and "partNumber=" in request.query_string and "x-amz-copy-source" in request.headers:
            return web.Response(status=404)
        return None

    gate.faults.append(bare_404)
    try:
        victim.copy_object(Bucket=b, Key="dst", CopySource={"Bucket": b, "Key": "src"})
    finally:
        gate.faults.clear()
    assert victim.get_object(Bucket=b, Key="dst")["Body"].read() == b"".join(parts)
    assert _no_uploads(store, b) == []


@pytest.mark.parametrize("race", ["delete", "overwrite"])
def test_bare_404_to_the_first_part_copy_with_the_source_gone_or_changed(gproxy: Proxy, gate: Gate, store: Any,
                                                                          race: str) -> None:
    """The same bare 404, but the source was really deleted (moto answers a deleted source so) or
    overwritten: the proxy's pinned HEAD of the source tells; the client gets 404 NoSuchKey or 412,
    no fallback, no upload left, no destination."""
    victim = gproxy.client()
    b = _fresh(victim)
    parts = [os.urandom(16 * KiB) for _ in range(2)] + [b"end"]
    _multipart(victim, b, "src", parts)

    async def race_then_bare_404(request: web.Request) -> web.StreamResponse | None:
        if request.method == "PUT" and "partNumber=" in request.query_string and "x-amz-copy-source" in request.headers:
            loop = asyncio.get_running_loop()
            if race == "delete":
                await loop.run_in_executor(None, lambda: store.delete_object(Bucket=b, Key="src"))
            else:
                await loop.run_in_executor(None, lambda: store.put_object(Bucket=b, Key="src", Body=b"attacker"))
            return web.Response(status=404)
        return None

    gate.faults.append(race_then_bare_404)
    try:
        with pytest.raises(ClientError) as ei:
            victim.copy_object(Bucket=b, Key="dst", CopySource={"Bucket": b, "Key": "src"})
    finally:
        gate.faults.clear()
    assert _code(ei) == ((404, "NoSuchKey") if race == "delete" else (412, "PreconditionFailed"))
    assert _no_uploads(store, b) == []
    with pytest.raises(ClientError):
        store.head_object(Bucket=b, Key="dst")


# ------------------------------------------------------------------ 3. caches vs a storage-side writer


def _swap(store: Any, bucket: str, src: str, dst_bucket: str, dst: str) -> None:
    """The storage-side writer copies one object (body and envelope) over another."""
    store.copy_object(Bucket=dst_bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src}, MetadataDirective="COPY")


@pytest.mark.parametrize("cross_bucket", [False, True])
def test_cached_envelope_never_vouches_for_another_object(gproxy: Proxy, store: Any, cross_bucket: bool) -> None:
    """The victim's object A is read (its envelope decoded and cached), then the storage-side
    writer copies A's body and metadata over B (same bucket, or another): reading B must fail
    its placement binding, whatever the cache holds; A stays readable."""
    victim = gproxy.client()
    b1 = _fresh(victim)
    b2 = _fresh(victim) if cross_bucket else b1
    secret, decoy = os.urandom(20 * KiB), os.urandom(20 * KiB)
    victim.put_object(Bucket=b1, Key="a", Body=secret)
    victim.put_object(Bucket=b2, Key="b", Body=decoy)
    assert victim.get_object(Bucket=b1, Key="a")["Body"].read() == secret
    assert victim.head_object(Bucket=b1, Key="a")["ContentLength"] == len(secret)
    _swap(store, b1, "a", b2, "b")
    for call in (lambda: victim.get_object(Bucket=b2, Key="b")["Body"].read(),
                 lambda: victim.head_object(Bucket=b2, Key="b"),
                 lambda: victim.get_object(Bucket=b2, Key="b", Range="bytes=0-99")["Body"].read()):
        with pytest.raises(ClientError) as ei:
            call()
        assert 400 <= _code(ei)[0] < 500, ei.value.response
    with pytest.raises(ClientError):
        victim.copy_object(Bucket=b2, Key="c", CopySource={"Bucket": b2, "Key": "b"})
    assert victim.get_object(Bucket=b1, Key="a")["Body"].read() == secret


def test_cached_seal_of_a_copy_never_opens_under_another_binding(gproxy: Proxy, store: Any) -> None:
    """A copy shares its source's DEK and object id; both are read (both envelopes decoded and
    cached), then the storage-side writer grafts A's sealed block (its metadata) onto B, and
    then also A's binding MAC: B answers neither A's metadata nor any body."""
    victim = gproxy.client()
    b = _fresh(victim)
    body = os.urandom(10 * KiB)
    victim.put_object(Bucket=b, Key="A", Body=body, Metadata={"who": "alice"})
    victim.copy_object(Bucket=b, Key="B", CopySource={"Bucket": b, "Key": "A"}, MetadataDirective="REPLACE",
                       Metadata={"who": "bob"})
    assert victim.head_object(Bucket=b, Key="A")["Metadata"] == {"who": "alice"}
    assert victim.get_object(Bucket=b, Key="B")["Metadata"] == {"who": "bob"}
    meta_a = store.head_object(Bucket=b, Key="A")["Metadata"]
    meta_b = store.head_object(Bucket=b, Key="B")["Metadata"]
    for graft in (("s3proxy-seal",), ("s3proxy-seal", "s3proxy-mac")):
        forged = {**meta_b, **{k: meta_a[k] for k in graft}}
        store.copy_object(Bucket=b, Key="B", CopySource={"Bucket": b, "Key": "B"}, MetadataDirective="REPLACE",
                          Metadata=forged)
        for call in (lambda: victim.get_object(Bucket=b, Key="B"), lambda: victim.head_object(Bucket=b, Key="B")):
            try:
                r = call()
            except ClientError as e:
                assert 400 <= e.response["ResponseMetadata"]["HTTPStatusCode"] < 500, (graft, e.response)
                continue
            raise AssertionError(f"grafted {graft}: answered {r.get('Metadata')}")
    assert victim.get_object(Bucket=b, Key="A")["Body"].read() == body


def test_listing_page_cache_follows_storage_side_replacement(gproxy: Proxy, store: Any) -> None:
    """A listing page large enough to be cached, listed twice; the storage-side writer then
    replaces one object by another of the proxy's objects (a different size): the next listing
    shows the new size (the page is another page), and a listing of another bucket with the same
    keys never gets the first bucket's page."""
    victim = gproxy.client()
    b1, b2 = _fresh(victim), _fresh(victim)
    keys = [f"k{i:03d}-" + "x" * 60 for i in range(40)]
    for k in keys:
        victim.put_object(Bucket=b1, Key=k, Body=b"1" * 100)
        victim.put_object(Bucket=b2, Key=k, Body=b"2" * 300)
    for _ in range(2):
        sizes = {o["Key"]: o["Size"] for o in victim.list_objects_v2(Bucket=b1)["Contents"]}
        assert set(sizes.values()) == {100}
    assert {o["Size"] for o in victim.list_objects_v2(Bucket=b2)["Contents"]} == {300}
    victim.put_object(Bucket=b1, Key="other", Body=b"3" * 5000)
    _swap(store, b1, "other", b1, keys[5])
    sizes = {o["Key"]: o["Size"] for o in victim.list_objects_v2(Bucket=b1)["Contents"]}
    assert sizes[keys[5]] == 5000 and sizes[keys[4]] == 100
    assert {o["Size"] for o in victim.list_objects_v2(Bucket=b2)["Contents"]} == {300}


# ------------------------------------------------------------------ 4. reused decrypt buffers


def _raw_get(port: int, paths: list[str], *, slow: bool) -> list[tuple[int, bytes]]:
    """Pipelined HTTP/1.1 GETs on one connection (anonymous), read back slowly when ``slow``."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        s.sendall(b"".join(f"GET {p} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode() for p in paths))
        buf = bytearray()
        out: list[tuple[int, bytes]] = []
        slept = [0]
        if slow:
            time.sleep(0.3)  # read nothing at first: the proxy's writes back up into its transport

        def fill(n: int) -> None:
            while len(buf) < n:
                chunk = s.recv(16 * KiB if slow else 1 << 20)
                if not chunk:
                    raise ConnectionError("closed")
                buf.extend(chunk)
                if slow:
                    slept[0] += len(chunk)
                    if slept[0] >= 512 * KiB:  # a reader slower than the proxy: its buffers fill up
                        slept[0] = 0
                        time.sleep(0.02)

        for _ in paths:
            while b"\r\n\r\n" not in buf:
                fill(len(buf) + 1)
            head, _, rest = bytes(buf).partition(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            assert m, head
            n = int(m.group(1))
            del buf[: len(head) + 4]
            fill(n)
            out.append((status, bytes(buf[:n])))
            del buf[:n]
            assert rest is not None
        return out
    finally:
        s.close()


def test_pipelined_slow_and_concurrent_gets_get_their_own_bytes(any_proxy: Proxy) -> None:
    """Two large objects read pipelined on one connection by a slow reader, while other
    connections read them concurrently: every body is exactly its object (a reused decrypt
    buffer never carries another response's or an earlier piece's bytes)."""
    victim = any_proxy.client()
    b = _fresh(victim, PUBLIC)
    one, two = os.urandom(3 * MiB + 11), os.urandom(2 * MiB + 5)
    victim.put_object(Bucket=b, Key="one", Body=one)
    victim.put_object(Bucket=b, Key="two", Body=two)
    want = {f"/{b}/one": hashlib.sha256(one).digest(), f"/{b}/two": hashlib.sha256(two).digest()}

    def job(i: int) -> None:
        paths = [f"/{b}/one", f"/{b}/two", f"/{b}/one"] if i % 2 else [f"/{b}/two", f"/{b}/one"]
        got = _raw_get(any_proxy.port, paths, slow=i < 2)
        for p, (status, body) in zip(paths, got, strict=True):
            assert status == 200
            assert hashlib.sha256(body).digest() == want[p], p

    with ThreadPoolExecutor(6) as ex:
        for f in [ex.submit(job, i) for i in range(6)]:
            f.result()


def test_tampered_chunk_ends_a_slow_large_get_before_its_bytes(any_proxy: Proxy, store: Any) -> None:
    """The storage-side writer flips one byte in the middle of a large S object (its envelope
    kept): a slow reader gets an authenticated prefix of the plaintext, never a byte of the
    tampered chunk or after it, and then a broken connection."""
    victim = any_proxy.client()
    b = _fresh(victim, PUBLIC)
    key = "t-" + uuid.uuid4().hex[:8]
    plain = os.urandom(3 * MiB)
    victim.put_object(Bucket=b, Key=key, Body=plain)
    raw = store.get_object(Bucket=b, Key=key)
    ct = bytearray(raw["Body"].read())
    off = 56 + 100 * 16400 + 777  # inside chunk 100
    ct[off] ^= 1
    store.put_object(Bucket=b, Key=key, Body=bytes(ct), Metadata=raw["Metadata"])
    before = _integrity_failures(any_proxy)
    s = socket.create_connection(("127.0.0.1", any_proxy.port), timeout=30)
    got = bytearray()
    try:
        s.sendall(f"GET /{b}/{key} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        while True:
            try:
                chunk = s.recv(8192)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got.extend(chunk)
            if len(got) % (128 * KiB) < 8192:
                time.sleep(0.005)
    finally:
        s.close()
    head, _, body = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    assert len(body) < len(plain), "the whole body arrived"
    assert len(body) <= 100 * 16384, f"{len(body)} bytes: bytes of (or after) the tampered chunk were sent"
    assert body == plain[: len(body)], "sent bytes are not the authenticated prefix"
    deadline = time.monotonic() + 5
    while _integrity_failures(any_proxy) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _integrity_failures(any_proxy) == before + 1


def test_client_gone_mid_body_stops_the_backend_reads(any_proxy: Proxy, gate: Gate) -> None:
    """A client that reads a little of a large GET and hangs up: the proxy's parallel ranged
    reads of the rest stop (nothing keeps fetching for a response nobody reads), and later
    GETs of the object are whole."""
    victim = any_proxy.client()
    b = _fresh(victim, PUBLIC)
    key = "gone-" + uuid.uuid4().hex[:8]
    plain = os.urandom(12 * MiB)
    victim.put_object(Bucket=b, Key=key, Body=plain)
    gate.clear()
    s = socket.create_connection(("127.0.0.1", any_proxy.port), timeout=30)
    try:
        s.sendall(f"GET /{b}/{key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = 0
        while got < 100 * KiB:
            chunk = s.recv(16 * KiB)
            assert chunk
            got += len(chunk)
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST
        s.close()
    time.sleep(1.0)
    settled = len([e for e in gate.log if key in e[2]])
    time.sleep(1.5)
    later = [e for e in gate.log if key in e[2]]
    assert len(later) == settled, f"{len(later) - settled} backend reads after the client was gone"
    segments = (len(plain) + MiB - 1) // MiB
    assert settled < segments, "every segment was fetched for a client that hung up after 100 KiB"
    assert victim.get_object(Bucket=b, Key=key)["Body"].read() == plain


# ------------------------------------------------------------------ 5. metrics summed at scrape


def test_metrics_summed_at_scrape_count_what_happened(gproxy: Proxy) -> None:
    """Counts kept outside the metrics until a scrape: a whole GET adds its size to the bytes
    sent, a refused GET none; the requests counter and the latency histogram agree; clients that
    hung up mid-body leave nothing in flight."""
    reg = gproxy.state.metrics.registry
    victim = gproxy.client()
    b = _fresh(victim)
    body = os.urandom(700 * KiB + 3)
    victim.put_object(Bucket=b, Key="m", Body=body)

    def sample(name: str, **labels: str) -> float:
        return float(reg.get_sample_value(name, labels or None) or 0.0)

    out0 = sample("s3proxy_client_bytes_out_total")
    ok0 = sample("s3proxy_requests_total", op="GetObject", status="200")
    nf0 = sample("s3proxy_requests_total", op="GetObject", status="404")
    hist0 = sample("s3proxy_request_seconds_count", op="GetObject")

    def get_requests() -> float:
        return sum(x.value for m in reg.collect() if m.name == "s3proxy_requests" for x in m.samples
                   if x.name == "s3proxy_requests_total" and x.labels.get("op") == "GetObject")

    all0 = get_requests()
    assert victim.get_object(Bucket=b, Key="m")["Body"].read() == body
    with pytest.raises(ClientError):
        victim.get_object(Bucket=b, Key="missing")
    # the server counts a request when its handler returns, which may be just after the client
    # has read the last byte: wait (bounded) for both to be counted before comparing
    settle = time.monotonic() + 5
    while (sample("s3proxy_requests_total", op="GetObject", status="200") - ok0 < 1
           or sample("s3proxy_requests_total", op="GetObject", status="404") - nf0 < 1) and time.monotonic() < settle:
        time.sleep(0.02)
    assert sample("s3proxy_client_bytes_out_total") - out0 == len(body)
    assert sample("s3proxy_requests_total", op="GetObject", status="200") - ok0 == 1
    assert sample("s3proxy_requests_total", op="GetObject", status="404") - nf0 == 1
    # the histogram counts what the counter counts (a GET of an earlier test that ends late counts in both)
    assert sample("s3proxy_request_seconds_count", op="GetObject") - hist0 == get_requests() - all0 >= 2
    assert sample("s3proxy_client_bytes_out_total") - out0 == len(body)  # a second scrape adds nothing
    deadline = time.monotonic() + 5
    while sample("s3proxy_in_flight_requests") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sample("s3proxy_in_flight_requests") == 0
