"""The AWS KMS backend against moto's server mode over HTTP, and against a fault-injecting stub."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from aiobotocore.session import AioSession
from aiohttp import web

from s3proxy.keys.aws_kms import AwsKmsBackend
from s3proxy.keys.base import (
    InvalidWrappedKey,
    KeyAccessDenied,
    KeyDisabled,
    KeyNotFound,
    KeyServiceError,
    KeyUnavailable,
    WrappedKey,
)
from s3proxy.keys.settings import AwsKmsSettings

from .conformance import CTX, BackendConformance
from .conftest import MotoKms

_SESSION = AioSession()  # shared by the tests: loading the KMS model once saves ~0.1 s per client


def make_backend(settings: AwsKmsSettings, **kw: Any) -> AwsKmsBackend:
    return AwsKmsBackend(settings, session=_SESSION, **kw)


def kms_settings(url: str, moto: MotoKms | None = None, **over: Any) -> AwsKmsSettings:
    base: dict[str, Any] = {
        "endpoint_url": url,
        "region": "us-east-1",
        "access_key_id": moto.access_key_id if moto else "AKIASTUB",
        "secret_access_key": moto.secret_access_key if moto else "stub-secret",
        "key_id": moto.key_arns[0] if moto else "arn:aws:kms:us-east-1:123456789012:key/stub",
        "max_attempts": 3,
        "backoff_base_seconds": 0.001,
        "backoff_max_seconds": 0.01,
        "retry_budget_seconds": 5.0,
        "connect_timeout": 1.0,
        "read_timeout": 2.0,
    }
    base.update(over)
    return AwsKmsSettings(**base)


class TestAwsKmsConformance(BackendConformance):
    # moto's blob starts with the key id in clear: a flipped bit there names
    # another key or none, and moto (like KMS for a key the caller may not
    # use) answers AccessDeniedException.  Real KMS answers a mismatched
    # KeyId with IncorrectKeyException (-> InvalidWrappedKey); moto with
    # AccessDeniedException.
    tamper_errors: ClassVar[tuple[type[KeyServiceError], ...]] = (InvalidWrappedKey, KeyAccessDenied)
    wrong_key_errors: ClassVar[tuple[type[KeyServiceError], ...]] = (InvalidWrappedKey, KeyAccessDenied)

    @pytest.fixture
    async def key_backend(self, moto_kms: MotoKms) -> AsyncIterator[AwsKmsBackend]:
        backend = make_backend(kms_settings(moto_kms.url, moto_kms))
        yield backend
        await backend.close()

    @pytest.fixture
    def key_ids(self, moto_kms: MotoKms) -> tuple[str, str]:
        return (moto_kms.key_arns[0], moto_kms.key_arns[1])

    @pytest.fixture
    async def unavailable_key_backend(self, closed_port_url: str, moto_kms: MotoKms) -> AsyncIterator[AwsKmsBackend]:
        backend = make_backend(kms_settings(closed_port_url, moto_kms))
        yield backend
        await backend.close()


# -- against moto ---------------------------------------------------------------


async def test_alias_resolves_to_key_arn(moto_kms: MotoKms) -> None:
    backend = make_backend(kms_settings(moto_kms.url, moto_kms, key_id=moto_kms.alias))
    try:
        dk = await backend.generate_data_key(moto_kms.alias, CTX)
        # the wrapped key records the ARN, so reads survive the alias moving
        assert dk.wrapped.key_id == moto_kms.key_arns[0] and dk.wrapped.algorithm == "KMS"
        assert await backend.decrypt_data_key(dk.wrapped, CTX) == dk.plaintext
        await backend.check()
    finally:
        await backend.close()


async def test_rewrap_uses_reencrypt(moto_kms: MotoKms, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = make_backend(kms_settings(moto_kms.url, moto_kms))
    calls: list[str] = []
    real_call = backend._call

    async def recording(operation: str, **params: Any) -> dict[str, Any]:
        calls.append(operation)
        return await real_call(operation, **params)

    monkeypatch.setattr(backend, "_call", recording)
    try:
        dk = await backend.generate_data_key(moto_kms.key_arns[0], CTX)
        calls.clear()
        w2 = await backend.rewrap(dk.wrapped, CTX, moto_kms.key_arns[1], {"bucket": "b2"})
        assert calls == ["re_encrypt"] and w2.key_id == moto_kms.key_arns[1]
    finally:
        await backend.close()


async def test_disabled_key_fails_check(moto_kms: MotoKms) -> None:
    arn = moto_kms.new_key()
    moto_kms.boto_client().disable_key(KeyId=arn.split("/")[-1])
    backend = make_backend(kms_settings(moto_kms.url, moto_kms, key_id=arn))
    try:
        with pytest.raises(KeyDisabled, match="Disabled"):
            await backend.check()
    finally:
        await backend.close()


async def test_default_credential_chain(moto_kms: MotoKms, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_kms.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_kms.secret_access_key)
    # a fresh session: the shared one must not cache these credentials
    backend = AwsKmsBackend(kms_settings(moto_kms.url, None, access_key_id=None, secret_access_key=None,
                                         key_id=moto_kms.key_arns[0]))
    try:
        dk = await backend.generate_data_key(moto_kms.key_arns[0], CTX)
        assert await backend.decrypt_data_key(dk.wrapped, CTX) == dk.plaintext
    finally:
        await backend.close()


async def test_client_is_lazy_and_closed(moto_kms: MotoKms) -> None:
    backend = make_backend(kms_settings(moto_kms.url, moto_kms))
    assert backend._client is None  # nothing connects at construction
    await backend.generate_data_key(moto_kms.key_arns[0], CTX)
    client = backend._client
    assert client is not None
    await backend.generate_data_key(moto_kms.key_arns[0], CTX)
    assert backend._client is client  # one client, reused
    await backend.close()
    assert backend._client is None
    with pytest.raises(KeyUnavailable, match="closed"):
        await backend.generate_data_key(moto_kms.key_arns[0], CTX)
    await backend.close()  # idempotent


def test_static_credentials_go_together() -> None:
    with pytest.raises(ValueError, match="go together"):
        AwsKmsSettings(access_key_id="AKIA", key_id="k")


# -- fault injection: a stub speaking the KMS JSON protocol ----------------------


@dataclass
class KmsStub:
    """Answers each KMS call from ``script`` (one entry per request; the last repeats)."""

    url: str = ""
    script: list[Callable[[str, dict[str, Any]], web.StreamResponse]] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    hang: bool = False

    def respond(self, *responses: Callable[[str, dict[str, Any]], web.StreamResponse]) -> None:
        self.script = list(responses)


def kms_error(code: str, status: int = 400, message: str = "injected") -> Callable[..., web.StreamResponse]:
    def make(target: str, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response(
            {"__type": code, "message": message}, status=status,
            content_type="application/x-amz-json-1.1", headers={"x-amzn-RequestId": "stub"},
        )
    return make


def raw_status(status: int, text: str = "oops") -> Callable[..., web.StreamResponse]:
    def make(target: str, body: dict[str, Any]) -> web.StreamResponse:
        return web.Response(status=status, text=text, content_type="text/html")
    return make


def kms_ok(target: str, body: dict[str, Any]) -> web.StreamResponse:
    arn = "arn:aws:kms:us-east-1:123456789012:key/stub"
    dek = base64.b64encode(bytes(32)).decode()
    blob = base64.b64encode(b"stub-blob").decode()
    payload: dict[str, Any] = {
        "GenerateDataKey": {"KeyId": arn, "Plaintext": dek, "CiphertextBlob": blob},
        "Decrypt": {"KeyId": arn, "Plaintext": dek},
        "Encrypt": {"KeyId": arn, "CiphertextBlob": blob},
        "ReEncrypt": {"KeyId": arn, "SourceKeyId": arn, "CiphertextBlob": blob},
        "DescribeKey": {"KeyMetadata": {"KeyId": "stub", "Arn": arn, "KeyState": "Enabled", "Enabled": True}},
    }[target]
    return web.json_response(payload, content_type="application/x-amz-json-1.1")


@pytest.fixture
async def kms_stub() -> AsyncIterator[KmsStub]:
    stub = KmsStub()

    async def handle(request: web.Request) -> web.StreamResponse:
        target = request.headers.get("X-Amz-Target", "").split(".")[-1]
        body = json.loads(await request.read() or b"{}")
        stub.targets.append(target)
        if stub.hang:
            await asyncio.sleep(30)
        responder = stub.script[min(len(stub.targets) - 1, len(stub.script) - 1)] if stub.script else kms_ok
        return responder(target, body)

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    stub.url = f"http://127.0.0.1:{port}"
    yield stub
    await runner.cleanup()


@pytest.fixture
async def stub_backend(kms_stub: KmsStub) -> AsyncIterator[AwsKmsBackend]:
    backend = make_backend(kms_settings(kms_stub.url))
    yield backend
    await backend.close()


WRAPPED = WrappedKey("aws-kms", "arn:aws:kms:us-east-1:123456789012:key/stub", "KMS", b"blob")


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("DisabledException", KeyDisabled),
        ("KMSInvalidStateException", KeyDisabled),
        ("NotFoundException", KeyNotFound),
        ("InvalidCiphertextException", InvalidWrappedKey),
        ("IncorrectKeyException", InvalidWrappedKey),
        ("AccessDeniedException", KeyAccessDenied),
        ("UnrecognizedClientException", KeyAccessDenied),
        ("ValidationException", KeyServiceError),
    ],
)
async def test_permanent_errors_map_and_are_not_retried(
    kms_stub: KmsStub, stub_backend: AwsKmsBackend, code: str, error: type[KeyServiceError]
) -> None:
    kms_stub.respond(kms_error(code))
    with pytest.raises(error) as info:
        await stub_backend.decrypt_data_key(WRAPPED, CTX)
    assert type(info.value) is error and code in str(info.value)
    assert kms_stub.targets == ["Decrypt"]  # one attempt only


@pytest.mark.parametrize(
    "fault",
    [
        kms_error("ThrottlingException"),
        kms_error("KMSInternalException", 500),
        kms_error("DependencyTimeoutException", 503),
        kms_error("KeyUnavailableException", 500),
        raw_status(502),
        raw_status(503),
    ],
    ids=["throttling", "internal", "dependency-timeout", "key-unavailable", "502-html", "503-html"],
)
async def test_retryable_errors_retry_then_fail(
    kms_stub: KmsStub, stub_backend: AwsKmsBackend, fault: Callable[..., web.StreamResponse]
) -> None:
    kms_stub.respond(fault)
    with pytest.raises(KeyUnavailable) as info:
        await stub_backend.generate_data_key("k", CTX)
    assert info.value.status == 503 and info.value.retryable
    assert kms_stub.targets == ["GenerateDataKey"] * 3  # max_attempts


async def test_throttling_then_success(kms_stub: KmsStub, stub_backend: AwsKmsBackend) -> None:
    kms_stub.respond(kms_error("ThrottlingException"), kms_error("ThrottlingException"), kms_ok)
    dk = await stub_backend.generate_data_key("k", CTX)
    assert len(dk.plaintext) == 32 and len(kms_stub.targets) == 3


async def test_backoff_is_exponential_with_full_jitter(kms_stub: KmsStub) -> None:
    delays: list[float] = []

    async def sleep(d: float) -> None:
        delays.append(d)

    kms_stub.respond(kms_error("ThrottlingException"))
    settings = kms_settings(kms_stub.url, max_attempts=6, backoff_base_seconds=0.1, backoff_max_seconds=0.5,
                            retry_budget_seconds=100)
    backend = make_backend(settings, sleep=sleep, jitter=lambda: 1.0)
    try:
        with pytest.raises(KeyUnavailable):
            await backend.generate_data_key("k", CTX)
    finally:
        await backend.close()
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])  # capped; no sleep after the last attempt
    jittered: list[float] = []

    async def sleep2(d: float) -> None:
        jittered.append(d)

    backend = make_backend(settings, sleep=sleep2, jitter=iter([0.5, 0.0, 0.25, 1.0, 0.1]).__next__)
    try:
        with pytest.raises(KeyUnavailable):
            await backend.generate_data_key("k", CTX)
    finally:
        await backend.close()
    assert jittered == pytest.approx([0.05, 0.0, 0.1, 0.5, 0.05])


async def test_retry_budget_bounds_total_time(kms_stub: KmsStub) -> None:
    kms_stub.respond(kms_error("ThrottlingException"))
    settings = kms_settings(kms_stub.url, max_attempts=50, backoff_base_seconds=0.05, backoff_max_seconds=0.05,
                            retry_budget_seconds=0.3)
    backend = make_backend(settings, jitter=lambda: 1.0)
    started = time.monotonic()
    try:
        with pytest.raises(KeyUnavailable):
            await backend.generate_data_key("k", CTX)
    finally:
        await backend.close()
    assert time.monotonic() - started < 1.0
    assert 2 <= len(kms_stub.targets) < 50


async def test_connection_refused_is_unavailable_after_retries(closed_port_url: str) -> None:
    backend = make_backend(kms_settings(closed_port_url))
    try:
        with pytest.raises(KeyUnavailable, match=r"EndpointConnectionError|Connect"):
            await backend.generate_data_key("k", CTX)
        assert backend.attempts == 3
    finally:
        await backend.close()


async def test_hanging_service_times_out(kms_stub: KmsStub) -> None:
    kms_stub.hang = True
    backend = make_backend(kms_settings(kms_stub.url, read_timeout=0.2, max_attempts=2))
    started = time.monotonic()
    try:
        with pytest.raises(KeyUnavailable):
            await backend.decrypt_data_key(WRAPPED, CTX)
    finally:
        await backend.close()
    assert time.monotonic() - started < 3.0


async def test_wrong_size_plaintext_is_rejected(kms_stub: KmsStub, stub_backend: AwsKmsBackend) -> None:
    def short(target: str, body: dict[str, Any]) -> web.StreamResponse:
        return web.json_response({"KeyId": "k", "Plaintext": base64.b64encode(b"x" * 16).decode()},
                                 content_type="application/x-amz-json-1.1")

    kms_stub.respond(short)
    with pytest.raises(InvalidWrappedKey):
        await stub_backend.decrypt_data_key(WRAPPED, CTX)


async def test_requests_carry_key_id_and_context(kms_stub: KmsStub) -> None:
    seen: list[dict[str, Any]] = []

    def record(target: str, body: dict[str, Any]) -> web.StreamResponse:
        seen.append({"target": target, **body})
        return kms_ok(target, body)

    kms_stub.respond(record)
    backend = make_backend(kms_settings(kms_stub.url))
    try:
        await backend.generate_data_key("alias/x", CTX)
        await backend.decrypt_data_key(WRAPPED, CTX)
        await backend.rewrap(WRAPPED, CTX, "alias/y", {"bucket": "z"})
    finally:
        await backend.close()
    gen, dec, re = seen
    assert gen["KeyId"] == "alias/x" and gen["KeySpec"] == "AES_256" and gen["EncryptionContext"] == CTX
    assert dec["KeyId"] == WRAPPED.key_id and dec["EncryptionContext"] == CTX
    assert re["SourceKeyId"] == WRAPPED.key_id and re["DestinationKeyId"] == "alias/y"
    assert re["SourceEncryptionContext"] == CTX and re["DestinationEncryptionContext"] == {"bucket": "z"}


async def test_check_without_default_key_is_a_no_op(kms_stub: KmsStub) -> None:
    backend = make_backend(kms_settings(kms_stub.url, key_id=None))
    try:
        await backend.check()  # a read-only backend kept for migration
        assert kms_stub.targets == []
    finally:
        await backend.close()
