"""The proxy as an operator runs it: `s3proxy serve` processes configured by
environment alone, admin endpoints, JSON logs, graceful shutdown, workers,
and stateless replicas sharing one multipart upload."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from tests.conftest import CLIENT_AK, CLIENT_SK, MASTER_KEY, VENV_BIN, Backend, free_port, wait_port


@dataclass
class ServeProc:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=CLIENT_AK, aws_secret_access_key=CLIENT_SK,
            region_name="us-east-1", config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def admin(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(30)


def serve(backend: Backend, tmp: Path, *args: str, backend_url: str | None = None, **env: str) -> ServeProc:
    port, admin = free_port(), free_port()
    log = tmp / f"s3proxy-{port}.log"
    e = {
        "PATH": os.environ.get("PATH", ""),
        "S3PROXY_LISTEN": f"127.0.0.1:{port}",
        "S3PROXY_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "S3PROXY_BACKEND_URL": backend_url or backend.url,
        "S3PROXY_BACKEND_ACCESS_KEY": backend.access_key,
        "S3PROXY_BACKEND_SECRET_KEY": backend.secret_key,
        "S3PROXY_BACKEND_REGION": backend.region,
        "S3PROXY_ACCESS_KEY": CLIENT_AK,
        "S3PROXY_SECRET_KEY": CLIENT_SK,
        "S3PROXY_MASTER_KEY": MASTER_KEY,
        "S3PROXY_LOG_FORMAT": "json",
        **env,
    }
    f = open(log, "wb")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen([str(VENV_BIN / "s3proxy"), "serve", *args], env=e, stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 30)
        wait_port(admin, 30)
    except RuntimeError:
        proc.kill()
        raise RuntimeError(f"s3proxy did not start:\n{log.read_text()}") from None
    return ServeProc(proc, port, admin, log)


@pytest.fixture()
def server(backend: Backend, tmp_path: Path) -> Iterator[ServeProc]:
    p = serve(backend, tmp_path)
    yield p
    p.stop(signal.SIGKILL)


def new_bucket(c: Any) -> str:
    name = "svc-" + uuid.uuid4().hex[:12]
    c.create_bucket(Bucket=name)
    return name


def test_env_only_serve_health_ready_metrics_and_logs(server: ServeProc) -> None:
    c = server.client()
    b = new_bucket(c)
    c.put_object(Bucket=b, Key="x", Body=b"hello")
    resp = c.get_object(Bucket=b, Key="x")
    assert resp["Body"].read() == b"hello"
    rid = resp["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    assert server.admin("/healthz")[0] == 200
    status, body = server.admin("/readyz")
    assert status == 200, body
    assert json.loads(body)["checks"] == {"backend": "ok", "keys": "ok"}
    status, metrics = server.admin("/metrics")
    text = metrics.decode()
    assert status == 200
    assert 's3proxy_requests_total{op="PutObject",status="200"}' in text
    assert 's3proxy_requests_total{op="GetObject",status="200"}' in text
    assert "s3proxy_request_seconds_bucket" in text
    assert "s3proxy_encrypted_bytes_total 5.0" in text
    assert "s3proxy_in_flight_requests" in text
    assert "s3proxy_key_cache" in text or "s3proxy_data_key_cache" in text or "key_cache" in text
    time.sleep(0.2)
    access = [r for r in server.logs() if r.get("event") == "access"]
    assert any(r.get("request_id") == rid and r.get("op") == "GetObject" for r in access), access[-3:]
    # No secrets in logs.
    raw_log = server.log.read_text()
    assert CLIENT_SK not in raw_log and MASTER_KEY not in raw_log


def test_readyz_fails_when_backend_down(backend: Backend, tmp_path: Path) -> None:
    p = serve(backend, tmp_path, backend_url=f"http://127.0.0.1:{free_port()}")
    try:
        status, body = p.admin("/readyz")
        assert status == 503
        assert json.loads(body)["checks"]["backend"] != "ok"
        assert p.admin("/healthz")[0] == 200
        # Clients get a clear S3 error, and the process keeps serving.
        c = p.client()
        with pytest.raises(Exception) as ei:
            c.list_buckets()
        assert "ServiceUnavailable" in str(ei.value) or "503" in str(ei.value)
        assert p.admin("/healthz")[0] == 200
    finally:
        p.stop(signal.SIGKILL)


def test_sigterm_drains_in_flight_request(backend: Backend, tmp_path: Path) -> None:
    p = serve(backend, tmp_path)
    c = p.client()
    b = new_bucket(c)
    data = os.urandom(16 * 1024 * 1024)
    c.put_object(Bucket=b, Key="big", Body=data)
    body = c.get_object(Bucket=b, Key="big")["Body"]
    first = body.read(1024 * 1024)  # a request is in flight, its body mostly unread
    p.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    rest = body.read()
    assert first + rest == data
    assert p.proc.wait(30) == 0
    assert any(r.get("event") == "server.draining" for r in p.logs())


def test_workers_share_the_port(backend: Backend, tmp_path: Path) -> None:
    p = serve(backend, tmp_path, "--workers", "2")
    try:
        c = p.client()
        b = new_bucket(c)
        for i in range(20):
            c.put_object(Bucket=b, Key=f"k{i}", Body=b"v%d" % i)
        assert len(c.list_objects_v2(Bucket=b)["Contents"]) == 20
        pids = {r.get("pid") for r in p.logs() if r.get("event") == "server.started"}
        assert len(pids) == 2
    finally:
        assert p.stop() == 0


def test_multipart_across_replicas_and_a_dying_replica(backend: Backend, tmp_path: Path) -> None:
    a, b_ = serve(backend, tmp_path), serve(backend, tmp_path)
    try:
        ca, cb = a.client(), b_.client()
        bucket = new_bucket(ca)
        part = 5 * 1024 * 1024
        parts = [os.urandom(part) for _ in range(4)] + [os.urandom(1234)]
        # 1) alternate the parts of one upload between two replicas, concurrently
        up = ca.create_multipart_upload(Bucket=bucket, Key="alt")["UploadId"]
        etags: dict[int, str] = {}

        def send(i: int) -> None:
            c = ca if i % 2 else cb
            etags[i] = c.upload_part(Bucket=bucket, Key="alt", UploadId=up, PartNumber=i, Body=parts[i - 1])["ETag"]

        threads = [threading.Thread(target=send, args=(i,)) for i in range(1, 6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        cb.complete_multipart_upload(
            Bucket=bucket, Key="alt", UploadId=up,
            MultipartUpload={"Parts": [{"PartNumber": i, "ETag": etags[i]} for i in range(1, 6)]},
        )
        whole = b"".join(parts)
        assert ca.get_object(Bucket=bucket, Key="alt")["Body"].read() == whole
        assert cb.get_object(Bucket=bucket, Key="alt")["Body"].read() == whole
        # 2) the first replica dies half way; the second finishes the upload
        up = ca.create_multipart_upload(Bucket=bucket, Key="die")["UploadId"]
        e1 = ca.upload_part(Bucket=bucket, Key="die", UploadId=up, PartNumber=1, Body=parts[0])["ETag"]
        e2 = ca.upload_part(Bucket=bucket, Key="die", UploadId=up, PartNumber=2, Body=parts[1])["ETag"]
        a.stop(signal.SIGKILL)
        e3 = cb.upload_part(Bucket=bucket, Key="die", UploadId=up, PartNumber=3, Body=parts[4])["ETag"]
        listed = cb.list_parts(Bucket=bucket, Key="die", UploadId=up)["Parts"]
        assert [p["Size"] for p in listed] == [part, part, 1234]
        cb.complete_multipart_upload(
            Bucket=bucket, Key="die", UploadId=up,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2},
                                       {"PartNumber": 3, "ETag": e3}]},
        )
        expect = parts[0] + parts[1] + parts[4]
        assert cb.head_object(Bucket=bucket, Key="die")["ContentLength"] == len(expect)
        assert cb.get_object(Bucket=bucket, Key="die")["Body"].read() == expect
        rng = cb.get_object(Bucket=bucket, Key="die", Range=f"bytes={2 * part - 5}-{2 * part + 5}")["Body"].read()
        assert rng == expect[2 * part - 5: 2 * part + 6]
    finally:
        a.stop(signal.SIGKILL)
        b_.stop(signal.SIGKILL)


def test_bad_config_is_reported_without_secrets(backend: Backend, tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "S3PROXY_LISTEN": "nonsense", "S3PROXY_MASTER_KEY": "c2VjcmV0LW5vdC1iYXNlNjQtMzI="}
    cp = subprocess.run([str(VENV_BIN / "s3proxy"), "check-config"], env=env, capture_output=True, text=True, timeout=60)
    assert cp.returncode == 2
    assert "listen" in cp.stderr
    assert "c2VjcmV0" not in cp.stderr + cp.stdout
