"""Shared fixtures: a real S3 backend over HTTP and s3proxy in front of it.

The backend is moto's server mode in a subprocess on a free port, unless
``S3PROXY_TEST_BACKEND_URL`` (+ ``S3PROXY_TEST_BACKEND_ACCESS_KEY`` /
``S3PROXY_TEST_BACKEND_SECRET_KEY`` / ``S3PROXY_TEST_BACKEND_REGION``) points
at another one (MinIO, AWS).  s3proxy runs in a thread with its own event
loop, so synchronous clients (boto3, the AWS CLI, minio) can drive it and
tests can look at its state (e.g. count backend requests).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
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


@dataclass
class Backend:
    url: str
    access_key: str
    secret_key: str
    region: str
    kind: str  # "moto" or "external"

    def client(self, **kw: Any) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            region_name=self.region, config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, **kw),
        )


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
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest) -> Backend:
    url = os.environ.get("S3PROXY_TEST_BACKEND_URL")
    if url:
        return Backend(
            url, os.environ.get("S3PROXY_TEST_BACKEND_ACCESS_KEY", ""), os.environ.get("S3PROXY_TEST_BACKEND_SECRET_KEY", ""),
            os.environ.get("S3PROXY_TEST_BACKEND_REGION", "us-east-1"), "external",
        )
    moto_url = request.getfixturevalue("moto_server")
    return Backend(moto_url, "testing", "testing", "us-east-1", "moto")


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
        from s3proxy.app import STATE

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


@pytest.fixture()
def bucket(s3: Any) -> Iterator[str]:
    name = "t-" + uuid.uuid4().hex[:16]
    s3.create_bucket(Bucket=name)
    yield name
    try:
        paginator = s3.get_paginator("list_object_versions")
        for page in paginator.paginate(Bucket=name):
            for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
                s3.delete_object(Bucket=name, Key=v["Key"], VersionId=v["VersionId"])
        for u in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=name, Key=u["Key"], UploadId=u["UploadId"])
        s3.delete_bucket(Bucket=name)
    except Exception:  # noqa: BLE001 - best-effort cleanup
        pass


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
