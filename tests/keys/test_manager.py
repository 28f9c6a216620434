"""KeyManager: policy, cache use, reads, rewrap, registry and build from settings."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from s3proxy.keys import (
    AuditInfo,
    AuditLog,
    BackendUnavailableError,
    DataKey,
    KeyAccessDenied,
    KeyConfigError,
    KeyDisabled,
    KeyManager,
    KeyNotFound,
    KeyPolicy,
    KeysSettings,
    WrappedKey,
    backend_class,
    build_key_manager,
    keys_env_overrides,
)
from s3proxy.keys.cache import DataKeyCache
from s3proxy.keys.local import LocalKeyBackend
from s3proxy.keys.settings import KeyRule

from .conftest import FakeClock, b64key

K_DEFAULT = bytes(range(32))
K_LOGS = bytes(range(1, 33))
K_TENANT = bytes(range(2, 34))
K_CLIENT = bytes(range(3, 35))
AUDIT = AuditInfo(request_id="req-1", identity="AKIDCLIENT", operation="PutObject", bucket="b", key="k")


class CountingLocal(LocalKeyBackend):
    def __init__(self, keys: Mapping[str, bytes], name: str = "local", **kw: Any):
        super().__init__(keys, **kw)
        self.name = name
        self.generated = 0
        self.decrypted = 0
        self.disabled: set[str] = set()

    async def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        self.generated += 1
        if key_id in self.disabled:
            raise KeyDisabled(f"key {key_id} is disabled")
        return await super().generate_data_key(key_id, context)

    async def decrypt_data_key(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytearray:
        self.decrypted += 1
        if wrapped.key_id in self.disabled:
            raise KeyDisabled(f"key {wrapped.key_id} is disabled")
        return await super().decrypt_data_key(wrapped, context)


@pytest.fixture
def audit_stream() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
async def manager(clock: FakeClock, audit_stream: io.StringIO) -> AsyncIterator[KeyManager]:
    backend = CountingLocal(
        {"default": K_DEFAULT, "logs": K_LOGS, "tenant": K_TENANT, "client": K_CLIENT}, default_key_id="default"
    )
    policy = KeyPolicy(
        "default",
        rules=[
            KeyRule(bucket="logs", key_id="logs"),
            KeyRule(bucket="*", prefix="tenant/", key_id="tenant"),
            KeyRule(bucket="logs", prefix="tenant/", key_id="tenant"),
        ],
        allowed_client_keys=["client"],
    )
    m = KeyManager(
        backends={"local": backend},
        write_backend="local",
        policy=policy,
        cache=DataKeyCache(clock=clock),
        audit=AuditLog(audit_stream, clock=lambda: 1_700_000_000.0),
        clock=clock,
    )
    yield m
    await m.close()


async def put(m: KeyManager, bucket: str = "b", key: str = "k", requested: str | None = None,
              extra: Mapping[str, str] | None = None, size: int | None = 100) -> DataKey:
    return await m.data_key_for_write(
        bucket=bucket, key=key, requested_key_id=requested, extra_context=extra, object_bytes=size, audit=AUDIT
    )


def audit_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


# -- policy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bucket", "key", "expected"),
    [
        ("b", "k", "default"),
        ("logs", "2024/01/x", "logs"),
        ("b", "tenant/a", "tenant"),
        ("logs", "tenant/a", "tenant"),  # exact bucket + longer prefix wins
        ("b", "tenantX", "default"),
    ],
)
async def test_policy_chooses_key(manager: KeyManager, bucket: str, key: str, expected: str) -> None:
    dk = await put(manager, bucket, key)
    assert dk.wrapped.key_id == expected and manager.key_id_for_display(dk.wrapped) == expected


def test_policy_specificity() -> None:
    policy = KeyPolicy(
        "d",
        rules=[
            KeyRule(bucket="*", prefix="a/b/", key_id="star-long"),
            KeyRule(bucket="x", prefix="", key_id="exact-short"),
            KeyRule(bucket="x", prefix="a/", key_id="exact-a"),
            KeyRule(bucket="x", prefix="a/", key_id="exact-a-second"),
        ],
    )
    assert policy.key_for("x", "a/b/c") == "exact-a"  # exact bucket beats a longer "*" prefix; first wins ties
    assert policy.key_for("x", "z") == "exact-short"
    assert policy.key_for("y", "a/b/c") == "star-long"
    assert policy.key_for("y", "a/c") == "d"


async def test_requested_key_allowed_or_denied(manager: KeyManager, audit_stream: io.StringIO) -> None:
    assert (await put(manager, requested="client")).wrapped.key_id == "client"  # allowed_client_keys
    assert (await put(manager, requested="default")).wrapped.key_id == "default"  # what policy picks anyway
    assert (await put(manager, "logs", "x", requested="logs")).wrapped.key_id == "logs"
    with pytest.raises(KeyAccessDenied) as info:
        await put(manager, requested="tenant")
    assert info.value.status == 403
    # a rule's key cannot be swapped for the default key
    with pytest.raises(KeyAccessDenied):
        await put(manager, "logs", "x", requested="default")
    denied = [r for r in audit_lines(audit_stream) if r["outcome"] != "ok"]
    assert [r["outcome"] for r in denied] == ["KeyAccessDenied", "KeyAccessDenied"]
    assert denied[0]["key_id"] == "tenant"


async def test_context_is_bucket_plus_extra(manager: KeyManager) -> None:
    dk = await put(manager, "b", "k", extra={"tenant": "t1"})
    assert await manager.data_key_for_read(dk.wrapped, {"bucket": "b", "tenant": "t1"}, AUDIT) == dk.plaintext
    with pytest.raises(Exception, match="does not authenticate"):
        await manager.data_key_for_read(dk.wrapped, {"bucket": "b"}, AUDIT)
    with pytest.raises(ValueError, match="bucket"):
        await put(manager, "b", "k", extra={"bucket": "evil"})


# -- cache through the manager -------------------------------------------------


async def test_writes_and_reads_use_the_cache(manager: KeyManager, audit_stream: io.StringIO) -> None:
    backend = manager.write_backend
    assert isinstance(backend, CountingLocal)
    keys = [await put(manager, key=f"o{i}") for i in range(5)]
    assert backend.generated == 1 and len({bytes(k.plaintext) for k in keys}) == 1
    for _ in range(3):
        assert await manager.data_key_for_read(keys[0].wrapped, {"bucket": "b"}, AUDIT) == keys[0].plaintext
    assert backend.decrypted == 1
    objects = [r for r in audit_lines(audit_stream) if r["event"] == "key.object"]
    assert [r["cache"] for r in objects] == ["miss"] + ["hit"] * 4 + ["miss", "hit", "hit"]
    calls = [r for r in audit_lines(audit_stream) if r["event"] == "key.backend"]
    assert [r["call"] for r in calls] == ["generate_data_key", "decrypt_data_key"]


async def test_disabled_key_fails_closed(manager: KeyManager) -> None:
    backend = manager.write_backend
    assert isinstance(backend, CountingLocal)
    dk = await put(manager)
    backend.disabled.add("default")
    with pytest.raises(KeyDisabled):
        await put(manager, size=1 << 50)  # too big to share the cached key: asks the backend
    manager.cache.clear()
    with pytest.raises(KeyDisabled):
        await manager.data_key_for_read(dk.wrapped, {"bucket": "b"}, AUDIT)


async def test_read_routing(manager: KeyManager) -> None:
    with pytest.raises(KeyNotFound, match="not configured"):
        await manager.data_key_for_read(WrappedKey("pkcs11", "x", "AES256-GCM", b"x"), {"bucket": "b"}, AUDIT)
    with pytest.raises(KeyAccessDenied, match="SSE-C"):
        await manager.data_key_for_read(WrappedKey("sse-c", "x", "y", b"x"), {"bucket": "b"}, AUDIT)


# -- rewrap ---------------------------------------------------------------------


async def test_rewrap_same_backend(manager: KeyManager, audit_stream: io.StringIO) -> None:
    dk = await put(manager)
    w2 = await manager.rewrap(dk.wrapped, {"bucket": "b"}, "logs", {"bucket": "b2"})
    assert w2.key_id == "logs"
    assert await manager.data_key_for_read(w2, {"bucket": "b2"}, AUDIT) == dk.plaintext
    assert "rewrap" in [r.get("call") for r in audit_lines(audit_stream)]


async def test_rewrap_across_backends(clock: FakeClock) -> None:
    """Migration: objects wrapped by the old backend are re-wrapped by the new (write) one."""
    old = CountingLocal({"old": K_LOGS}, name="legacy")
    new = CountingLocal({"new": K_DEFAULT})
    m = KeyManager(
        backends={"local": new, "legacy": old}, write_backend="local", policy=KeyPolicy("new"),
        cache=DataKeyCache(clock=clock), clock=clock,
    )
    try:
        dk = await old.generate_data_key("old", {"bucket": "b"})
        assert await m.data_key_for_read(dk.wrapped, {"bucket": "b"}, AUDIT) == dk.plaintext
        w2 = await m.rewrap(dk.wrapped, {"bucket": "b"}, "new", {"bucket": "b"})
        assert (w2.backend, w2.key_id) == ("local", "new")
        assert await new.decrypt_data_key(w2, {"bucket": "b"}) == dk.plaintext
    finally:
        await m.close()


async def test_wrap_existing_dek_is_audited(manager: KeyManager, audit_stream: io.StringIO) -> None:
    dek = bytearray(range(32))
    w = await manager.wrap_data_key("logs", dek, {"bucket": "b"}, audit=AUDIT)
    assert (w.backend, w.key_id) == ("local", "logs")
    assert await manager.data_key_for_read(w, {"bucket": "b"}, AUDIT) == dek
    assert audit_lines(audit_stream)[0]["call"] == "wrap_data_key"


# -- lifecycle and metrics ------------------------------------------------------


async def test_check_close_and_metrics(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    settings = KeysSettings(local={"master_keys": {"default": b64key(K_DEFAULT)}}, audit={"target": "off"})
    m = build_key_manager(settings, registry=registry, clock=clock)
    await m.check()
    dk = await put(m)
    cached = next(iter(m.cache._write.values())).data_key.plaintext
    await m.close()
    assert cached == bytes(32) and dk.plaintext != bytes(32)
    assert registry.get_sample_value(
        "s3proxy_key_backend_seconds_count", {"backend": "local", "call": "generate_data_key"}
    ) == 1
    assert registry.get_sample_value("s3proxy_key_cache_misses_total", {"side": "encrypt"}) == 1


# -- registry and build -----------------------------------------------------------


def test_registry_names() -> None:
    assert backend_class("local") is LocalKeyBackend
    assert backend_class("aws-kms").__name__ == "AwsKmsBackend"
    assert backend_class("pkcs11").__name__ == "Pkcs11Backend"
    with pytest.raises(KeyConfigError, match="known: aws-kms, local, pkcs11"):
        backend_class("vault")


@pytest.mark.parametrize(
    ("name", "module", "dependency", "hint"),
    [("pkcs11", "s3proxy.keys.pkcs11", "pkcs11", re.escape("pip install 's3proxy[pkcs11]' (python-pkcs11")),
     ("aws-kms", "s3proxy.keys.aws_kms", "aiobotocore", re.escape("pip install 's3proxy[kms]' (aiobotocore)"))],
)
def test_missing_dependency_gives_install_hint(
    monkeypatch: pytest.MonkeyPatch, name: str, module: str, dependency: str, hint: str
) -> None:
    monkeypatch.delitem(sys.modules, module, raising=False)
    for loaded in [m for m in sys.modules if m == dependency or m.startswith(dependency + ".")]:
        monkeypatch.setitem(sys.modules, loaded, None)  # makes "import <dependency>..." fail
    monkeypatch.setitem(sys.modules, dependency, None)
    with pytest.raises(BackendUnavailableError, match=hint):
        backend_class(name)
    # other backends are unaffected
    assert backend_class("local") is LocalKeyBackend


async def test_build_from_environment(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    env = {"S3PROXY_KEY_BACKEND": "local", "S3PROXY_MASTER_KEY": b64key(K_TENANT), "S3PROXY_MASTER_KEY_ID": "k2024"}
    settings = KeysSettings.model_validate({**keys_env_overrides(env), "audit": {"target": "off"}})
    m = build_key_manager(settings, clock=clock)
    try:
        assert m.policy.default_key_id == "k2024"
        dk = await put(m)
        assert dk.wrapped.key_id == "k2024"
        assert await LocalKeyBackend({"k2024": K_TENANT}).decrypt_data_key(dk.wrapped, {"bucket": "b"}) == dk.plaintext
    finally:
        await m.close()


async def test_build_with_secondary_backends_is_lazy(clock: FakeClock) -> None:
    settings = KeysSettings.model_validate(
        {
            "backend": "aws-kms",
            "aws_kms": {"key_id": "alias/x", "region": "us-east-1", "endpoint_url": "http://127.0.0.1:9"},
            "local": {"master_keys": {"old": b64key(K_LOGS)}},
            "audit": {"target": "off"},
        }
    )
    m = build_key_manager(settings, clock=clock)  # no connection is made here
    try:
        assert sorted(m.backends) == ["aws-kms", "local"] and m.write_backend.name == "aws-kms"
        assert m.policy.default_key_id == "alias/x"
        old = LocalKeyBackend({"old": K_LOGS})
        dk = await old.generate_data_key("old", {"bucket": "b"})
        # objects from before the move to KMS stay readable
        assert await m.data_key_for_read(dk.wrapped, {"bucket": "b"}, AUDIT) == dk.plaintext
    finally:
        await m.close()


def test_build_rejects_bad_master_key_without_showing_it() -> None:
    secret = b64key(b"q" * 20)
    settings = KeysSettings(local={"master_keys": {"default": secret}}, audit={"target": "off"})
    with pytest.raises(KeyConfigError) as info:
        build_key_manager(settings)
    assert secret not in str(info.value) and "'default'" in str(info.value)
