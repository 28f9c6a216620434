"""Identities and policy: per-identity backend credentials, public-read buckets,
grants by bucket/prefix/action; and TLS certificate reload on SIGHUP."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from s3proxy.tlsutil import LocalCA
from tests.conftest import CLIENT_AK, CLIENT_SK, Backend, Proxy, proxy_settings, start_proxy, stop_proxy
from tests.integration.test_service import serve

STORE_AK, STORE_SK = "STOREUSERTWO0000001", "store-user-two-secret-0000000000001"
TEAM_AK, TEAM_SK = "AKIDTEAMIDENTITY0001", "team-identity-secret-000000000000001"


@pytest.fixture(scope="module")
def devstore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An on-disk S3 store that only knows STORE_AK (so credentials matter)."""
    from s3proxy.devstore import start_devstore

    loop = asyncio.new_event_loop()
    root = tmp_path_factory.mktemp("store")
    box: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        box["runner"], box["port"] = loop.run_until_complete(start_devstore(root, {STORE_AK: STORE_SK}))
        box["ready"].set()
        loop.run_forever()
        loop.run_until_complete(box["runner"].cleanup())

    box["ready"] = threading.Event()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    box["ready"].wait(30)
    yield f"http://127.0.0.1:{box['port']}"
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)


def test_per_identity_backend_credentials(devstore: str) -> None:
    backend = Backend(devstore, "WRONGDEFAULTKEY00001", "wrong-default-secret", "us-east-1", "devstore")
    p = start_proxy(proxy_settings(backend, identities=[
        {"name": "default-creds", "access_key": CLIENT_AK, "secret_key": CLIENT_SK},
        {"name": "team", "access_key": TEAM_AK, "secret_key": TEAM_SK,
         "backend_access_key": STORE_AK, "backend_secret_key": STORE_SK},
    ]))
    try:
        team = p.client(TEAM_AK, TEAM_SK)
        team.create_bucket(Bucket="team-bucket")
        team.put_object(Bucket="team-bucket", Key="k", Body=b"team data")
        assert team.get_object(Bucket="team-bucket", Key="k")["Body"].read() == b"team data"
        # The identity without its own backend credentials uses the proxy's (wrong) ones.
        other = p.client()
        with pytest.raises(ClientError) as ei:
            other.get_object(Bucket="team-bucket", Key="k")
        assert ei.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    finally:
        stop_proxy(p)


@pytest.fixture(scope="module")
def public_proxy(backend: Backend) -> Iterator[Proxy]:
    p = start_proxy(proxy_settings(backend, buckets={"pub-assets": {"public_read": True}}))
    yield p
    stop_proxy(p)


def test_public_read_bucket_allows_anonymous_get_only(public_proxy: Proxy) -> None:
    c = public_proxy.client()
    try:
        c.create_bucket(Bucket="pub-assets")
    except ClientError:
        pass
    c.put_object(Bucket="pub-assets", Key="logo.txt", Body=b"public")
    b = "priv-" + uuid.uuid4().hex[:8]
    c.create_bucket(Bucket=b)
    c.put_object(Bucket=b, Key="secret.txt", Body=b"private")
    assert urllib.request.urlopen(f"{public_proxy.url}/pub-assets/logo.txt", timeout=10).read() == b"public"
    for url, method in [(f"{public_proxy.url}/{b}/secret.txt", "GET"), (f"{public_proxy.url}/pub-assets", "GET"),
                        (f"{public_proxy.url}/pub-assets/new.txt", "PUT")]:
        req = urllib.request.Request(url, method=method, data=b"x" if method == "PUT" else None)
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(req, timeout=10)
        assert ei.value.code == 403 and b"<Code>AccessDenied</Code>" in ei.value.read()


def test_grants_by_prefix_and_action(backend: Backend) -> None:
    p = start_proxy(proxy_settings(backend, identities=[
        {"name": "admin", "access_key": CLIENT_AK, "secret_key": CLIENT_SK},
        {"name": "writer", "access_key": TEAM_AK, "secret_key": TEAM_SK,
         "allow": [{"bucket": "*", "prefix": "in/", "actions": ["write", "read"]},
                   {"bucket": "*", "prefix": "", "actions": ["list"]}]},
    ]))
    try:
        admin, writer = p.client(), p.client(TEAM_AK, TEAM_SK)
        b = "gr-" + uuid.uuid4().hex[:8]
        admin.create_bucket(Bucket=b)
        admin.put_object(Bucket=b, Key="out/x", Body=b"no")
        writer.put_object(Bucket=b, Key="in/x", Body=b"yes")
        assert writer.get_object(Bucket=b, Key="in/x")["Body"].read() == b"yes"
        assert {o["Key"] for o in writer.list_objects_v2(Bucket=b)["Contents"]} == {"in/x", "out/x"}
        for call in (lambda: writer.get_object(Bucket=b, Key="out/x"),
                     lambda: writer.put_object(Bucket=b, Key="out/y", Body=b"z"),
                     lambda: writer.delete_object(Bucket=b, Key="in/x"),
                     lambda: writer.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "out/x"}]}),
                     lambda: writer.copy_object(Bucket=b, Key="in/copy", CopySource={"Bucket": b, "Key": "out/x"}),
                     lambda: writer.create_bucket(Bucket="gr-new-" + uuid.uuid4().hex[:6])):
            with pytest.raises(ClientError) as ei:
                call()
            assert ei.value.response["Error"]["Code"] == "AccessDenied"
        assert admin.get_object(Bucket=b, Key="out/x")["Body"].read() == b"no"
    finally:
        stop_proxy(p)


def _served_cert(port: int, ca: Path) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        der = s.getpeercert(binary_form=True)
        assert der is not None
        return der


def test_sighup_reloads_certificate_keeping_connections(backend: Backend, tmp_path: Path) -> None:
    ca = LocalCA(tmp_path / "ca")
    first = ca.issue("one", ["127.0.0.1"])
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(first.cert.read_bytes())
    key.write_bytes(first.key.read_bytes())
    p = serve(backend, tmp_path, S3PROXY_TLS_CERT=str(cert), S3PROXY_TLS_KEY=str(key))
    try:
        before = _served_cert(p.port, ca.cert_path)
        c = boto3.client("s3", endpoint_url=f"https://127.0.0.1:{p.port}", aws_access_key_id=CLIENT_AK,
                         aws_secret_access_key=CLIENT_SK, region_name="us-east-1", verify=str(ca.cert_path),
                         config=Config(s3={"addressing_style": "path"}))
        c.list_buckets()  # an open keep-alive connection
        second = ca.issue("two", ["127.0.0.1"])
        cert.write_bytes(second.cert.read_bytes())
        key.write_bytes(second.key.read_bytes())
        p.proc.send_signal(signal.SIGHUP)
        for _ in range(50):
            if _served_cert(p.port, ca.cert_path) != before:
                break
            import time

            time.sleep(0.1)
        assert _served_cert(p.port, ca.cert_path) != before
        c.list_buckets()  # the old connection still works
        assert p.proc.poll() is None
    finally:
        p.stop(signal.SIGKILL)


__all__ = ["os"]
