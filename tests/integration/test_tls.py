"""Real clients over HTTPS (and mTLS): where boto3 and the AWS CLI switch to
aws-chunked uploads with trailing checksums."""

from __future__ import annotations

import hashlib
import io
import os
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from botocore.config import Config
from botocore.exceptions import ClientError, SSLError
from minio import Minio

from s3proxy.tlsutil import LocalCA
from tests.conftest import CLIENT_AK, CLIENT_SK, VENV_BIN, Backend, Proxy, proxy_settings, start_proxy, stop_proxy


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return LocalCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_proxy(backend: Backend, ca: LocalCA) -> Iterator[Proxy]:
    server = ca.issue("server", ["127.0.0.1", "localhost"])
    p = start_proxy(proxy_settings(backend, tls={"cert": str(server.cert), "key": str(server.key)}))
    yield p
    stop_proxy(p)


@pytest.fixture(scope="module")
def mtls_proxy(backend: Backend, ca: LocalCA) -> Iterator[Proxy]:
    server = ca.issue("server-m", ["127.0.0.1", "localhost"])
    p = start_proxy(proxy_settings(
        backend, tls={"cert": str(server.cert), "key": str(server.key), "client_ca": str(ca.cert_path)}
    ))
    yield p
    stop_proxy(p)


@pytest.fixture()
def tls_bucket(tls_proxy: Proxy, ca: LocalCA) -> Iterator[str]:
    s3 = tls_proxy.client(verify=str(ca.cert_path))
    name = "tls-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    yield name
    for o in s3.list_objects_v2(Bucket=name).get("Contents", []):
        s3.delete_object(Bucket=name, Key=o["Key"])
    s3.delete_bucket(Bucket=name)


def test_boto3_https_put_uses_aws_chunked_and_roundtrips(tls_proxy: Proxy, ca: LocalCA, tls_bucket: str, raw: Any) -> None:
    s3 = tls_proxy.client(verify=str(ca.cert_path))
    data = os.urandom(300_000)
    s3.put_object(Bucket=tls_bucket, Key="k", Body=data)
    assert s3.get_object(Bucket=tls_bucket, Key="k")["Body"].read() == data
    assert s3.head_object(Bucket=tls_bucket, Key="k")["ContentLength"] == len(data)
    assert data[1000:1016] not in raw.get_object(Bucket=tls_bucket, Key="k")["Body"].read()


def test_boto3_https_multipart_upload_file(tls_proxy: Proxy, ca: LocalCA, tls_bucket: str, tmp_path: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    s3 = tls_proxy.client(verify=str(ca.cert_path))
    src = tmp_path / "big"
    src.write_bytes(os.urandom(11 * 1024 * 1024 + 7))
    cfg = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024, max_concurrency=4)
    s3.upload_file(str(src), tls_bucket, "big", Config=cfg)
    dst = tmp_path / "back"
    s3.download_file(tls_bucket, "big", str(dst), Config=cfg)
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()


def test_boto3_rejects_unknown_ca(tls_proxy: Proxy, tls_bucket: str) -> None:
    s3 = tls_proxy.client()  # system CAs only
    with pytest.raises(SSLError):
        s3.list_objects_v2(Bucket=tls_bucket)


def _send_aws_chunked(proxy: Proxy, ca: LocalCA, bucket: str, key: str, payload: bytes, crc_b64: str) -> tuple[int, bytes]:
    """PUT an aws-chunked body with a trailing x-amz-checksum-crc32, signed with our own signer."""
    import http.client
    from datetime import UTC, datetime

    from s3proxy.aws.sigv4 import sign_request

    body = b"%x\r\n" % len(payload) + payload + b"\r\n0\r\nx-amz-checksum-crc32:" + crc_b64.encode() + b"\r\n\r\n"
    path = f"/{bucket}/{key}"
    headers = {
        "host": f"127.0.0.1:{proxy.port}", "content-encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(len(payload)), "x-amz-trailer": "x-amz-checksum-crc32",
        "x-amz-sdk-checksum-algorithm": "CRC32",
    }
    headers.update(sign_request("PUT", path, [], headers, "STREAMING-UNSIGNED-PAYLOAD-TRAILER", CLIENT_AK, CLIENT_SK,
                                "us-east-1", datetime.now(UTC)))
    conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=ssl.create_default_context(cafile=str(ca.cert_path)))
    conn.request("PUT", path, body=body, headers={**headers, "content-length": str(len(body))})
    resp = conn.getresponse()
    out = resp.status, resp.read()
    conn.close()
    return out


def test_checksum_trailer_mismatch_stores_nothing(tls_proxy: Proxy, ca: LocalCA, tls_bucket: str, raw: Any) -> None:
    """aws-chunked with a trailing CRC32: right value stores, wrong value is BadDigest and stores nothing."""
    import base64
    import zlib

    payload = os.urandom(50_000)
    good = base64.b64encode(zlib.crc32(payload).to_bytes(4, "big")).decode()
    status, body = _send_aws_chunked(tls_proxy, ca, tls_bucket, "good", payload, good)
    assert status == 200, body
    s3 = tls_proxy.client(verify=str(ca.cert_path))
    assert s3.get_object(Bucket=tls_bucket, Key="good")["Body"].read() == payload
    status, body = _send_aws_chunked(tls_proxy, ca, tls_bucket, "good", os.urandom(50_000), good)
    assert status == 400 and b"<Code>BadDigest</Code>" in body, body
    # The older version is untouched and no new object appeared.
    assert s3.get_object(Bucket=tls_bucket, Key="good")["Body"].read() == payload
    status, body = _send_aws_chunked(tls_proxy, ca, tls_bucket, "bad", payload, "AAAAAA==")
    assert status == 400, body
    with pytest.raises(ClientError):
        raw.head_object(Bucket=tls_bucket, Key="bad")


def _cli(proxy: Proxy, ca: LocalCA, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(tmp), "AWS_ACCESS_KEY_ID": CLIENT_AK,
        "AWS_SECRET_ACCESS_KEY": CLIENT_SK, "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp / "c"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "s"),
    }
    return subprocess.run(
        [str(VENV_BIN / "aws"), "--endpoint-url", proxy.url, "--ca-bundle", str(ca.cert_path), *args],
        env=env, capture_output=True, text=True, timeout=180,
    )


def test_aws_cli_https_cp_and_sync(tls_proxy: Proxy, ca: LocalCA, tls_bucket: str, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    for i in range(3):
        (d / f"f{i}").write_bytes(os.urandom(1000 * (i + 1)))
    (d / "big").write_bytes(os.urandom(9 * 1024 * 1024))
    # sync compares sizes and times; backends keep whole seconds, so make the files clearly older.
    old = time.time() - 3600
    for f in d.iterdir():
        os.utime(f, (old, old))
    cp = _cli(tls_proxy, ca, tmp_path, "s3", "sync", str(d), f"s3://{tls_bucket}/sync/")
    assert cp.returncode == 0, cp.stderr
    again = _cli(tls_proxy, ca, tmp_path, "s3", "sync", str(d), f"s3://{tls_bucket}/sync/")
    assert again.returncode == 0 and again.stdout.strip() == "", again.stdout
    out = tmp_path / "out"
    cp = _cli(tls_proxy, ca, tmp_path, "s3", "cp", f"s3://{tls_bucket}/sync/big", str(out))
    assert cp.returncode == 0, cp.stderr
    assert out.read_bytes() == (d / "big").read_bytes()


def test_minio_sdk_https(tls_proxy: Proxy, ca: LocalCA, tls_bucket: str) -> None:

    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(ca.cert_path))
    mc = Minio(f"127.0.0.1:{tls_proxy.port}", access_key=CLIENT_AK, secret_key=CLIENT_SK, secure=True, http_client=http)
    data = os.urandom(7 * 1024 * 1024)
    mc.put_object(tls_bucket, "m", io.BytesIO(data), len(data), part_size=5 * 1024 * 1024)
    assert mc.stat_object(tls_bucket, "m").size == len(data)
    r = mc.get_object(tls_bucket, "m", offset=5 * 1024 * 1024 - 3, length=10)
    assert r.read() == data[5 * 1024 * 1024 - 3: 5 * 1024 * 1024 + 7]
    r.close()
    r.release_conn()


def test_rclone_client_https(tls_proxy: Proxy, ca: LocalCA, tls_bucket: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"rclone through s3proxy\n" * 100)
    (src / "b.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    remote = (
        f":s3,provider=Other,endpoint='{tls_proxy.url}',access_key_id={CLIENT_AK},"
        f"secret_access_key={CLIENT_SK},region=us-east-1,force_path_style=true,server_side_encryption='aws:kms':{tls_bucket}/rc"
    )
    base = [str(VENV_BIN / "rclone"), "--ca-cert", str(ca.cert_path), "--config", "/dev/null", "-q"]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}
    cp = subprocess.run([*base, "sync", str(src), remote], env=env, capture_output=True, text=True, timeout=180)
    assert cp.returncode == 0, cp.stderr
    check = subprocess.run([*base, "check", str(src), remote], env=env, capture_output=True, text=True, timeout=180)
    assert check.returncode == 0, check.stderr
    dst = tmp_path / "dst"
    cp = subprocess.run([*base, "copy", remote, str(dst)], env=env, capture_output=True, text=True, timeout=180)
    assert cp.returncode == 0, cp.stderr
    assert (dst / "b.bin").read_bytes() == (src / "b.bin").read_bytes()


def test_mtls_requires_client_certificate(mtls_proxy: Proxy, ca: LocalCA, tmp_path: Path) -> None:
    client = ca.issue("client", client=True)
    ok = mtls_proxy.client(verify=str(ca.cert_path), config={"client_cert": (str(client.cert), str(client.key))})
    name = "mtls-" + uuid.uuid4().hex[:10]
    ok.create_bucket(Bucket=name)
    ok.put_object(Bucket=name, Key="x", Body=b"abc")
    assert ok.get_object(Bucket=name, Key="x")["Body"].read() == b"abc"
    no_cert = mtls_proxy.client(verify=str(ca.cert_path))
    with pytest.raises(Exception):  # noqa: B017 - handshake refused (SSLError / EndpointConnectionError)
        no_cert.list_objects_v2(Bucket=name)
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
        urllib.request.urlopen(f"{mtls_proxy.url}/{name}", context=ctx, timeout=5).read()
    ok.delete_object(Bucket=name, Key="x")
    ok.delete_bucket(Bucket=name)


def test_tls12_minimum(tls_proxy: Proxy, ca: LocalCA) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(ca.cert_path))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
        urllib.request.urlopen(tls_proxy.url + "/", context=ctx, timeout=5).read()


__all__ = ["Config"]
