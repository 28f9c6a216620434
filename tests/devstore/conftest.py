"""Fixtures: a devstore server running in a background thread, and clients for it."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import web
from botocore.config import Config

from s3proxy.aws.sigv4 import encode_query, sign_request
from s3proxy.devstore import start_devstore

ACCESS_KEY = "DEVSTORETESTKEY"
SECRET_KEY = "devstore/test+secret"
REGION = "us-east-1"


class DevStoreThread:
    """A devstore on its own event loop thread, so tests can use blocking clients."""

    access_key = ACCESS_KEY
    secret_key = SECRET_KEY
    region = REGION

    def __init__(self, root: Path, **options: Any) -> None:
        self.root = root
        self.options = options
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="devstore", daemon=True)
        self.thread.start()
        self.runner: web.AppRunner | None = None
        self.port = 0

    def start(self, port: int = 0) -> None:
        future = asyncio.run_coroutine_threadsafe(
            start_devstore(self.root, {ACCESS_KEY: SECRET_KEY}, "127.0.0.1", port, **self.options), self.loop
        )
        self.runner, self.port = future.result(10)

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
            self.runner = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **config: Any) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(**config) if config else None,
        )

    def request(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        *,
        payload_hash: str | None = None,
        secret: str = SECRET_KEY,
        access_key: str = ACCESS_KEY,
        sign: bool = True,
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """A raw request (``path`` percent-encoded as sent), SigV4-signed unless ``sign`` is false."""
        h = {"host": self.host, **(headers or {})}
        if sign:
            ph = payload_hash if payload_hash is not None else hashlib.sha256(body).hexdigest()
            h.update(sign_request(method, path, query, h, ph, access_key, secret, REGION, datetime.now(UTC)))
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            url = path + ("?" + encode_query(query) if query else "")
            conn.request(method, url, body=body, headers=h)
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()


@pytest.fixture
def devstore(tmp_path: Path) -> Iterator[DevStoreThread]:
    server = DevStoreThread(tmp_path / "data")
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def make_devstore(tmp_path: Path) -> Iterator[Callable[..., DevStoreThread]]:
    """Start another devstore (``root``, options for build_devstore_app); closed at teardown."""
    servers: list[DevStoreThread] = []

    def make(root: Path, **options: Any) -> DevStoreThread:
        server = DevStoreThread(root, **options)
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def s3(devstore: DevStoreThread) -> Any:
    return devstore.client()


@pytest.fixture
def bucket(s3: Any) -> str:
    s3.create_bucket(Bucket="test-bucket")
    return "test-bucket"


@pytest.fixture
def aws_cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION=REGION,
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


@pytest.fixture
def aws_cli() -> Path:
    path = Path(sys.executable).parent / "aws"
    if not path.exists():
        pytest.skip("AWS CLI not installed in the venv")
    return path
