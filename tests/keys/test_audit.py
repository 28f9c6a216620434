"""AuditLog: one JSON line per key use and per key-service call, never key material."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from s3proxy.keys import AuditInfo, AuditLog, KeyAccessDenied, KeyManager, KeysSettings, build_key_manager
from s3proxy.keys.base import InvalidWrappedKey, KeyNotFound, WrappedKey

from .conftest import FakeClock, MotoKms, SoftHsm, b64key

MASTER = os.urandom(32)
CUSTOMER_KEY = os.urandom(32)

OBJECT_FIELDS = {"time", "event", "request_id", "identity", "operation", "bucket", "key", "backend", "key_id",
                 "cache", "outcome", "latency_ms"}
BACKEND_FIELDS = {"time", "event", "request_id", "identity", "operation", "bucket", "key", "backend", "key_id",
                  "call", "outcome", "latency_ms"}


def encodings(secret: bytes) -> list[str]:
    """Every way a key could plausibly end up in a text log."""
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode(),
        base64.b64encode(secret).decode().rstrip("="),
        repr(secret)[2:-1],
        repr(bytearray(secret)),
    ]


def assert_no_secrets(text: str, secrets: list[bytes], strings: list[str] = ()) -> None:  # type: ignore[assignment]
    for secret in secrets:
        for form in encodings(secret):
            assert form not in text, "key material in the audit log"
    for s in strings:
        assert s not in text, "a secret in the audit log"


async def exercise(m: KeyManager, default_key: str) -> list[bytes]:
    """Writes, reads, cache hits, failures and SSE-C; returns every DEK seen."""
    seen: list[bytes] = []
    info = AuditInfo("req-w", "AKIDCLIENT", "PutObject", "bucket-a", "dir/obj")
    for i in range(3):
        dk = await m.data_key_for_write(bucket="bucket-a", key=f"dir/obj{i}", requested_key_id=None,
                                        extra_context={"tenant": "t"}, object_bytes=10, audit=info)
        seen.append(bytes(dk.plaintext))
    read_info = AuditInfo("req-r", "AKIDCLIENT", "GetObject", "bucket-a", "dir/obj0")
    for _ in range(2):
        dek = await m.data_key_for_read(dk.wrapped, {"bucket": "bucket-a", "tenant": "t"}, read_info)
        seen.append(bytes(dek))
    with pytest.raises(InvalidWrappedKey):
        await m.data_key_for_read(dk.wrapped, {"bucket": "bucket-b", "tenant": "t"}, read_info)
    with pytest.raises(KeyAccessDenied):
        await m.data_key_for_write(bucket="bucket-a", key="x", requested_key_id="not-allowed", extra_context=None,
                                   object_bytes=None, audit=info)
    with pytest.raises((KeyNotFound, InvalidWrappedKey)):
        await m.data_key_for_read(WrappedKey(dk.wrapped.backend, "missing-key", dk.wrapped.algorithm,
                                             dk.wrapped.blob), {"bucket": "bucket-a"}, read_info)
    sse = m.sse_c_data_key(CUSTOMER_KEY, {"bucket": "bucket-a"}, audit=info)
    seen.append(bytes(sse.plaintext))
    seen.append(bytes(m.sse_c_unwrap(CUSTOMER_KEY, sse.wrapped, {"bucket": "bucket-a"}, audit=read_info)))
    with pytest.raises(InvalidWrappedKey):
        m.sse_c_unwrap(os.urandom(32), sse.wrapped, {"bucket": "bucket-a"}, audit=read_info)
    await m.rewrap(dk.wrapped, {"bucket": "bucket-a", "tenant": "t"}, default_key, {"bucket": "bucket-c"})
    await m.check()
    return seen


def check_lines(text: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in text.splitlines()]
    assert records
    for r in records:
        assert set(r) >= (OBJECT_FIELDS if r["event"] == "key.object" else BACKEND_FIELDS)
        assert r["time"].endswith("Z") and isinstance(r["latency_ms"], (int, float))
    return records


async def test_local_audit_file(tmp_path: Path, clock: FakeClock) -> None:
    log = tmp_path / "audit" / "keys.jsonl"
    settings = KeysSettings.model_validate(
        {"local": {"master_keys": {"default": b64key(MASTER)}}, "audit": {"target": str(log)}}
    )
    m = build_key_manager(settings, clock=clock)
    seen = await exercise(m, "default")
    await m.close()
    text = log.read_text()
    records = check_lines(text)
    assert_no_secrets(text, [MASTER, CUSTOMER_KEY, *seen])

    objects = [r for r in records if r["event"] == "key.object"]
    writes = [r for r in objects if r["operation"] == "PutObject" and r["outcome"] == "ok" and r["backend"] == "local"]
    assert [w["cache"] for w in writes] == ["miss", "hit", "hit"]
    assert writes[0] | {"time": None, "latency_ms": None} == {
        "time": None, "event": "key.object", "request_id": "req-w", "identity": "AKIDCLIENT",
        "operation": "PutObject", "bucket": "bucket-a", "key": "dir/obj", "backend": "local",
        "key_id": "default", "cache": "miss", "outcome": "ok", "latency_ms": None,
        "context": {"bucket": "bucket-a", "tenant": "t"},
    }
    outcomes = {r["outcome"] for r in objects}
    assert {"ok", "InvalidWrappedKey", "KeyAccessDenied", "KeyNotFound"} <= outcomes
    calls = [r["call"] for r in records if r["event"] == "key.backend"]
    assert calls.count("generate_data_key") == 1 and "rewrap" in calls and "check" in calls
    assert {r["backend"] for r in objects} == {"local", "sse-c"}


async def test_kms_audit_never_shows_aws_secret(moto_kms: MotoKms, clock: FakeClock,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    settings = KeysSettings.model_validate(
        {
            "backend": "aws-kms",
            "aws_kms": {"key_id": moto_kms.key_arns[0], "endpoint_url": moto_kms.url, "region": moto_kms.region,
                        "access_key_id": moto_kms.access_key_id, "secret_access_key": moto_kms.secret_access_key},
            "allowed_client_keys": [],
            "audit": {"target": "stdout"},
        }
    )
    m = build_key_manager(settings, clock=clock)
    seen = await exercise(m, moto_kms.key_arns[1])
    await m.close()
    out = capsys.readouterr().out
    records = check_lines(out)
    assert_no_secrets(out, [CUSTOMER_KEY, *seen], [moto_kms.secret_access_key])
    assert any(r["key_id"] == moto_kms.key_arns[0] and r["backend"] == "aws-kms" for r in records)


async def test_pkcs11_audit_never_shows_pin(softhsm: SoftHsm, tmp_path: Path, clock: FakeClock) -> None:
    log = tmp_path / "keys.jsonl"
    settings = KeysSettings.model_validate(
        {
            "backend": "pkcs11",
            "pkcs11": {"module": softhsm.module, "token_label": softhsm.token_label, "pin": softhsm.pin,
                       "key_label": "kek-1"},
            "audit": {"target": str(log)},
        }
    )
    m = build_key_manager(settings, clock=clock)
    seen = await exercise(m, "kek-2")
    await m.close()
    text = log.read_text()
    check_lines(text)
    assert_no_secrets(text, [CUSTOMER_KEY, *seen], [softhsm.pin])


def test_audit_off_and_stream(capsys: pytest.CaptureFixture[str]) -> None:
    off = AuditLog("off")
    assert not off.enabled
    off.backend_event(None, call="check", backend="local", key_id="k", outcome="ok", latency_ms=1.0)
    assert capsys.readouterr().out == ""
    log = AuditLog("stdout", clock=lambda: 0.0)
    log.object_event(None, backend="local", key_id="k", cache="hit", outcome="ok", latency_ms=0.1234)
    record = json.loads(capsys.readouterr().out)
    assert record["time"] == "1970-01-01T00:00:00.000Z" and record["latency_ms"] == 0.123
    assert record["request_id"] is None and record["cache"] == "hit"
