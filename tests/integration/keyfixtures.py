"""Helpers and fixtures for the key-management integration tests (rewrap, key backends).

Imported by ``test_rewrap.py`` and ``test_key_backends.py``; fixtures defined
here are re-exported by those modules with ``from keyfixtures import ...``.

* ``with_keys(settings, keys)``: a copy of the proxy settings with the whole
  ``keys:`` section replaced (``proxy_settings`` deep-merges, which cannot
  *remove* a master key from the keyring).
* ``rewrap(settings, ...)``: runs ``s3proxy.rewrap.run_rewrap`` in the test
  thread with ``asyncio.run`` and captures its report.
* ``BackendRecorder``: records every request the rewrap tool's own
  ``BackendClient`` sends (method, query, headers, body size), optionally
  failing chosen requests.
* ``kms``: AWS KMS on moto's server mode (the S3 backend's moto server when
  there is one: moto serves every service), with keys created by boto3.
* ``softhsm_token``: a fresh SoftHSM2 token in a temp dir with AES keys.
* ``StubKms``: a tiny aiohttp server speaking the KMS JSON protocol that
  answers every call with an injected error (disabled keys: moto does not
  enforce key state).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.softhsm import SOFTHSM_MODULE, fresh_token, softhsm_missing

K1 = base64.b64encode(bytes(range(32))).decode()  # == tests/conftest.MASTER_KEY
K2 = base64.b64encode(bytes(range(100, 132))).decode()
K3 = base64.b64encode(bytes(range(200, 232))).decode()

TOKEN_LABEL = "s3proxy-it"
TOKEN_PIN = "s3proxy-it-user-pin-1234"
TOKEN_SO_PIN = "s3proxy-it-so-pin-5678"
KMS_AK = "testing"
KMS_SK = "testing"


def with_keys(settings: Any, keys: dict[str, Any], **top: Any) -> Any:
    """``settings`` with the ``keys:`` section replaced wholesale (plus top-level fields)."""
    from s3proxy.keys.settings import KeysSettings

    update: dict[str, Any] = {"keys": KeysSettings.model_validate({"audit": {"target": "off"}, **keys})}
    update.update(top)
    return settings.model_copy(update=update)


def local_keys(*ids: str, default: str | None = None, **extra: Any) -> dict[str, Any]:
    material = {"k1": K1, "k2": K2, "k3": K3}
    return {
        "backend": "local",
        "local": {"master_keys": {i: material[i] for i in ids}, "default_key_id": default or ids[0]},
        **extra,
    }


def counter(proxy: Any, name: str) -> float:
    value = proxy.state.metrics.registry.get_sample_value(name)
    return float(value or 0.0)


# --------------------------------------------------------------------- rewrap runs


@dataclass
class RewrapRun:
    code: int
    out: str
    err: str

    def lines(self, prefix: str) -> list[str]:
        return [ln[len(prefix):].strip() for ln in self.out.splitlines() if ln.startswith(prefix)]


def rewrap(
    settings: Any,
    bucket: str,
    to_key: str,
    *,
    prefix: str = "",
    dry_run: bool = False,
    concurrency: int = 4,
    state_file: Path | None = None,
    page_size: int | None = None,
) -> RewrapRun:
    """Run ``run_rewrap`` like the CLI does (``asyncio.run`` in the calling thread)."""
    from s3proxy.rewrap import run_rewrap

    args = argparse.Namespace(
        bucket=bucket, prefix=prefix, to_key=to_key, dry_run=dry_run, concurrency=concurrency,
        state_file=str(state_file) if state_file else None, no_progress=False,
    )
    if page_size is not None:
        args.page_size = page_size
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = asyncio.run(run_rewrap(settings, args))
    return RewrapRun(code, out.getvalue(), err.getvalue())


@dataclass
class Sent:
    method: str
    bucket: str | None
    key: str | None
    query: dict[str, str]
    headers: dict[str, str]
    body_bytes: int
    status: int | None = None

    @property
    def is_copy(self) -> bool:
        return self.method == "PUT" and "x-amz-copy-source" in self.headers

    @property
    def op(self) -> str:
        q, m = self.query, self.method
        if m == "GET" and q.get("list-type") == "2":
            return "ListObjectsV2"
        if m == "GET" and "tagging" in q:
            return "GetObjectTagging"
        if m == "HEAD":
            return "HeadObject"
        if m == "PUT" and "x-amz-copy-source" in self.headers:
            return "UploadPartCopy" if "partNumber" in q else "CopyObject"
        if m == "POST" and "uploads" in q:
            return "CreateMultipartUpload"
        if m == "POST" and "uploadId" in q:
            return "CompleteMultipartUpload"
        if m == "DELETE" and "uploadId" in q:
            return "AbortMultipartUpload"
        return f"{m} {'ranged ' if 'range' in self.headers else ''}object"


class BackendRecorder:
    """Patch ``BackendClient.request``: record the calls of every client but ``exclude``.

    ``fail(pred, exc)`` makes matching requests raise ``exc`` (once, unless
    ``times`` says otherwise) before anything is sent.
    """

    def __init__(self, exclude: Any = None):
        self.exclude = exclude
        self.sent: list[Sent] = []
        self.failed: list[Sent] = []
        self._faults: list[list[Any]] = []
        self._lock = threading.Lock()

    def fail(self, pred: Callable[[Sent], bool], exc: BaseException, times: int = 1) -> None:
        self._faults.append([pred, exc, times])

    def clear(self) -> None:
        self.sent.clear()
        self.failed.clear()

    def ops(self) -> list[str]:
        return [s.op for s in self.sent]

    def copies_of(self, key: str, *, answered: bool = False) -> int:
        """Rewrites of ``key`` sent (``answered``: that the backend answered with 200)."""
        return sum(
            1 for s in self.sent
            if s.key == key and s.op in ("CopyObject", "CompleteMultipartUpload") and (not answered or s.status == 200)
        )

    def heads_of(self, key: str) -> int:
        return sum(1 for s in self.sent if s.key == key and s.op == "HeadObject" and "partNumber" not in s.query)

    @contextlib.contextmanager
    def installed(self) -> Iterator[BackendRecorder]:
        from s3proxy.backend.client import BackendClient

        real = BackendClient.request
        recorder = self

        async def request(client: Any, method: str, bucket: str | None, key: str | None = None, **kw: Any) -> Any:
            if client is recorder.exclude:
                return await real(client, method, bucket, key, **kw)
            body = kw.get("body")
            entry = Sent(
                method, bucket, key, dict(kw.get("query") or ()),
                {k.lower(): v for k, v in (kw.get("headers") or {}).items()},
                len(body) if isinstance(body, (bytes, bytearray)) else (kw.get("content_length") or 0),
            )
            with recorder._lock:
                for fault in recorder._faults:
                    if fault[2] > 0 and fault[0](entry):
                        fault[2] -= 1
                        recorder.failed.append(entry)
                        raise fault[1]
                recorder.sent.append(entry)
            resp = await real(client, method, bucket, key, **kw)
            entry.status = resp.status
            return resp

        BackendClient.request = request  # type: ignore[method-assign]
        try:
            yield self
        finally:
            BackendClient.request = real  # type: ignore[method-assign]


# --------------------------------------------------------------------- AWS KMS (moto)


@dataclass
class Kms:
    url: str
    region: str = "us-east-1"
    arns: list[str] = field(default_factory=list)
    alias: str = ""

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "kms", endpoint_url=self.url, region_name=self.region,
            aws_access_key_id=KMS_AK, aws_secret_access_key=KMS_SK,
        )

    def settings(self, key_id: str | None = None, **over: Any) -> dict[str, Any]:
        s: dict[str, Any] = {
            "key_id": key_id or self.arns[0], "endpoint_url": self.url, "region": self.region,
            "access_key_id": KMS_AK, "secret_access_key": KMS_SK,
            "max_attempts": 3, "backoff_base_seconds": 0.01, "backoff_max_seconds": 0.05,
            "retry_budget_seconds": 5.0, "connect_timeout": 1.0, "read_timeout": 5.0,
        }
        s.update(over)
        return s


@pytest.fixture(scope="session")
def kms(backend: Any) -> Iterator[Kms]:
    """moto's KMS: on the S3 backend's moto server if there is one, else an in-process moto server."""
    server = None
    if backend.kind == "moto":
        url = backend.url
    else:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
    k = Kms(url)
    client = k.client()
    for _ in range(3):
        k.arns.append(client.create_key(Description="s3proxy integration")["KeyMetadata"]["Arn"])
    k.alias = "alias/s3proxy-it-" + os.urandom(4).hex()
    client.create_alias(AliasName=k.alias, TargetKeyId=k.arns[1])
    try:
        yield k
    finally:
        if server is not None:
            server.stop()


# --------------------------------------------------------------------- SoftHSM2


@dataclass
class Token:
    module: str
    label: str
    pin: str
    conf: Path

    def settings(self, key_label: str = "kek-1", **over: Any) -> dict[str, Any]:
        return {"module": self.module, "token_label": self.label, "pin": self.pin, "key_label": key_label, **over}


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    """A fresh SoftHSM2 token with non-extractable AES keys kek-1, kek-2, kek-3."""
    reason = softhsm_missing()
    if reason is not None:
        pytest.skip(reason)
    from pkcs11 import Attribute, KeyType

    root = tmp_path_factory.mktemp("softhsm-it")
    with fresh_token(root, TOKEN_LABEL, TOKEN_PIN, TOKEN_SO_PIN) as (token, conf):
        with token.open(rw=True, user_pin=TOKEN_PIN) as session:
            for label in ("kek-1", "kek-2", "kek-3"):
                session.generate_key(
                    KeyType.AES, 256, label=label, store=True,
                    template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
                )
        yield Token(SOFTHSM_MODULE, TOKEN_LABEL, TOKEN_PIN, conf)


# --------------------------------------------------------------------- fault-injecting KMS


class StubKms:
    """A KMS JSON-protocol server in its own thread; every call answers ``error`` (or hangs)."""

    def __init__(self, error: str = "DisabledException", status: int = 400):
        self.error = error
        self.status = status
        self.targets: list[str] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="stub-kms")
        self._runner: Any = None

    def start(self) -> StubKms:
        from aiohttp import web

        async def handle(request: web.Request) -> web.StreamResponse:
            self.targets.append(request.headers.get("X-Amz-Target", "").split(".")[-1])
            await request.read()
            return web.json_response(
                {"__type": self.error, "message": "injected by the test"}, status=self.status,
                content_type="application/x-amz-json-1.1", headers={"x-amzn-RequestId": "stub"},
            )

        async def boot() -> str:
            app = web.Application()
            app.router.add_post("/", handle)
            self._runner = web.AppRunner(app, shutdown_timeout=0.1)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            return f"http://127.0.0.1:{port}"

        self._thread.start()
        self.url = asyncio.run_coroutine_threadsafe(boot(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
