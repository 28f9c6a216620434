"""The end-to-end object path through a proxy configured with each key backend.

``local`` (a keyring), ``aws-kms`` (moto's server mode over HTTP) and
``pkcs11`` (a fresh SoftHSM2 token) each get their own proxy in front of the
same S3 backend and must behave identically: single PUT/GET/ranges,
multipart, copies within and across buckets, SSE-C, SSE-KMS request headers
choosing an allowed or a disallowed key, the encryption-context header.

Then the fail-closed faults (KMS unreachable, key disabled), the audit log
and the data-key cache, each with its own proxy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from s3proxy.crypto.envelope import decode_metadata
from tests.conftest import CLIENT_SK, Proxy, free_port, proxy_settings, start_proxy, stop_proxy
from tests.integration.helpers import (
    MiB,
    absent,
    assert_no_plaintext,
    assert_s3_error,
    client_error,
    multipart_upload,
    signed,
    temp_bucket,
    unique,
)
from tests.integration.keyfixtures import (
    K1,
    K2,
    K3,
    Kms,
    StubKms,
    Token,
    kms,  # noqa: F401 - fixture
    local_keys,
    softhsm_token,  # noqa: F401 - fixture
    with_keys,
)

KMS_HEADER = "x-amz-server-side-encryption-aws-kms-key-id"


@dataclass
class KeyedProxy:
    name: str
    proxy: Proxy
    default: str  # the key id HEAD shows for default writes
    allowed: str  # a key a client may request
    disallowed: str  # a key that exists but may not be requested

    @property
    def s3(self) -> Any:
        return self.proxy.client()


def _keys_for(name: str, request: pytest.FixtureRequest) -> tuple[dict[str, Any], str, str, str]:
    if name == "local":
        return local_keys("k1", "k2", "k3", default="k1", allowed_client_keys=["k2"]), "k1", "k2", "k3"
    if name == "aws-kms":
        k: Kms = request.getfixturevalue("kms")
        cfg = {"backend": "aws-kms", "aws_kms": k.settings(k.arns[0]), "allowed_client_keys": [k.arns[1]]}
        return cfg, k.arns[0], k.arns[1], k.arns[2]
    token: Token = request.getfixturevalue("softhsm_token")
    cfg = {"backend": "pkcs11", "pkcs11": token.settings("kek-1"), "allowed_client_keys": ["kek-2"]}
    return cfg, "kek-1", "kek-2", "kek-3"


@pytest.fixture(scope="module", params=["local", "aws-kms", "pkcs11"])
def kp(request: pytest.FixtureRequest, backend: Any) -> Iterator[KeyedProxy]:
    keys, default, allowed, disallowed = _keys_for(request.param, request)
    p = start_proxy(with_keys(proxy_settings(backend), keys, require_https_for_sse_c=False))
    yield KeyedProxy(request.param, p, default, allowed, disallowed)
    stop_proxy(p)


@pytest.fixture()
def kb(kp: KeyedProxy) -> Iterator[str]:
    with temp_bucket(kp.s3) as name:
        yield name


def kms_key_of(response: dict[str, Any]) -> str | None:
    return response["ResponseMetadata"]["HTTPHeaders"].get(KMS_HEADER)


def stored_envelope(raw: Any, bucket: str, key: str) -> Any:
    return decode_metadata(raw.head_object(Bucket=bucket, Key=key)["Metadata"])


def key_calls(p: Proxy) -> int:
    return int(p.state.keys.cache.backend_calls)


# --------------------------------------------------------------------- the object path, per backend


def test_single_put_get_ranges(kp: KeyedProxy, kb: str, raw: Any) -> None:
    s3 = kp.s3
    data = os.urandom(200_000)
    put = s3.put_object(Bucket=kb, Key="obj", Body=data)
    assert put["ServerSideEncryption"] == "aws:kms" and kms_key_of(put) == kp.default
    got = s3.get_object(Bucket=kb, Key="obj")
    assert got["Body"].read() == data and got["ContentLength"] == len(data)
    assert kms_key_of(got) == kp.default
    for rng, sl in [("bytes=0-0", slice(0, 1)), ("bytes=16383-16385", slice(16383, 16386)),
                    ("bytes=1000-150000", slice(1000, 150001)), ("bytes=-100", slice(-100, None)),
                    ("bytes=199990-", slice(199990, None))]:
        assert s3.get_object(Bucket=kb, Key="obj", Range=rng)["Body"].read() == data[sl], rng
    head = s3.head_object(Bucket=kb, Key="obj")
    assert head["ContentLength"] == len(data) and kms_key_of(head) == kp.default
    assert stored_envelope(raw, kb, "obj").wrapped.backend == kp.name
    assert_no_plaintext(data, raw.get_object(Bucket=kb, Key="obj")["Body"].read())


def test_multipart_two_parts(kp: KeyedProxy, kb: str, raw: Any) -> None:
    s3 = kp.s3
    parts = [os.urandom(5 * MiB), os.urandom(300_000)]
    data = b"".join(parts)
    done = multipart_upload(s3, kb, "mp", parts)
    assert done["ETag"].endswith('-2"') and kms_key_of(done) == kp.default
    assert s3.get_object(Bucket=kb, Key="mp")["Body"].read() == data
    b = 5 * MiB
    assert s3.get_object(Bucket=kb, Key="mp", Range=f"bytes={b - 100}-{b + 100}")["Body"].read() == data[b - 100:b + 101]
    assert s3.get_object(Bucket=kb, Key="mp", PartNumber=2)["Body"].read() == parts[1]
    head = s3.head_object(Bucket=kb, Key="mp")
    assert head["ContentLength"] == len(data) and kms_key_of(head) == kp.default
    assert stored_envelope(raw, kb, "mp").layout == "K"


def test_copy_within_and_across_buckets(kp: KeyedProxy, kb: str) -> None:
    s3 = kp.s3
    single = os.urandom(70_000)
    parts = [os.urandom(5 * MiB), os.urandom(1234)]
    s3.put_object(Bucket=kb, Key="src-s", Body=single)
    multipart_upload(s3, kb, "src-k", parts)
    with temp_bucket(s3) as other:
        for dst_bucket in (kb, other):
            s3.copy_object(Bucket=dst_bucket, Key="copy-s", CopySource={"Bucket": kb, "Key": "src-s"})
            r = s3.copy_object(Bucket=dst_bucket, Key="copy-k", CopySource={"Bucket": kb, "Key": "src-k"})
            assert r["CopyObjectResult"]["ETag"].endswith('-2"')
            assert s3.get_object(Bucket=dst_bucket, Key="copy-s")["Body"].read() == single
            assert s3.get_object(Bucket=dst_bucket, Key="copy-k")["Body"].read() == b"".join(parts)
            assert kms_key_of(s3.head_object(Bucket=dst_bucket, Key="copy-k")) == kp.default


@pytest.mark.smoke
def test_sse_c(kp: KeyedProxy, kb: str, raw: Any) -> None:
    s3 = kp.s3
    key, wrong = os.urandom(32), os.urandom(32)
    data = os.urandom(50_000)
    calls = key_calls(kp.proxy)
    put = s3.put_object(Bucket=kb, Key="c", Body=data, SSECustomerAlgorithm="AES256", SSECustomerKey=key)
    assert put["SSECustomerAlgorithm"] == "AES256"
    assert put["SSECustomerKeyMD5"] == base64.b64encode(hashlib.md5(key).digest()).decode()
    got = s3.get_object(Bucket=kb, Key="c", SSECustomerAlgorithm="AES256", SSECustomerKey=key)
    assert got["Body"].read() == data
    assert s3.head_object(Bucket=kb, Key="c", SSECustomerAlgorithm="AES256", SSECustomerKey=key)["ContentLength"] \
        == len(data)
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=kb, Key="c")
    assert client_error(info.value) == (400, "InvalidRequest")
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=kb, Key="c", SSECustomerAlgorithm="AES256", SSECustomerKey=wrong)
    assert client_error(info.value) == (403, "AccessDenied")
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=kb, Key="c")
    assert client_error(info.value)[0] == 400
    with pytest.raises(ClientError) as info:
        s3.head_object(Bucket=kb, Key="c", SSECustomerAlgorithm="AES256", SSECustomerKey=wrong)
    assert client_error(info.value)[0] == 403
    # The customer key never reaches the key service nor the backend.
    assert key_calls(kp.proxy) == calls
    env = stored_envelope(raw, kb, "c")
    assert env.wrapped.backend == "sse-c"
    stored = raw.get_object(Bucket=kb, Key="c")
    assert key.hex() not in json.dumps(stored["Metadata"]) and base64.b64encode(key).decode() not in str(stored)
    assert_no_plaintext(data, stored["Body"].read())


@pytest.mark.needs("list_uploads")
def test_sse_kms_request_headers(kp: KeyedProxy, kb: str, raw: Any) -> None:
    s3 = kp.s3
    put = s3.put_object(Bucket=kb, Key="allowed", Body=b"allowed", ServerSideEncryption="aws:kms",
                        SSEKMSKeyId=kp.allowed)
    assert kms_key_of(put) == kp.allowed
    assert kms_key_of(s3.head_object(Bucket=kb, Key="allowed")) == kp.allowed
    assert s3.get_object(Bucket=kb, Key="allowed")["Body"].read() == b"allowed"
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=kb, Key="denied", Body=b"denied", ServerSideEncryption="aws:kms",
                      SSEKMSKeyId=kp.disallowed)
    assert client_error(info.value) == (403, "AccessDenied")
    assert absent(raw, kb, "denied")
    with pytest.raises(ClientError) as info:
        s3.create_multipart_upload(Bucket=kb, Key="denied-mp", ServerSideEncryption="aws:kms",
                                   SSEKMSKeyId=kp.disallowed)
    assert client_error(info.value) == (403, "AccessDenied")
    assert raw.list_multipart_uploads(Bucket=kb).get("Uploads", []) == []
    # The encryption-context header adds to the context the DEK is wrapped with.
    ctx = base64.b64encode(json.dumps({"department": "finance"}).encode()).decode()
    s3.put_object(Bucket=kb, Key="ctx", Body=b"with context", ServerSideEncryption="aws:kms",
                  SSEKMSEncryptionContext=ctx)
    assert dict(stored_envelope(raw, kb, "ctx").context) == {"bucket": kb, "department": "finance"}
    assert s3.get_object(Bucket=kb, Key="ctx")["Body"].read() == b"with context"
    bad = base64.b64encode(json.dumps({"bucket": "other"}).encode()).decode()
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket=kb, Key="ctx2", Body=b"x", ServerSideEncryption="aws:kms", SSEKMSEncryptionContext=bad)
    assert client_error(info.value) == (400, "InvalidArgument")


# --------------------------------------------------------------------- fail closed


def kms_proxy(backend: Any, k: Kms, **aws: Any) -> Proxy:
    return start_proxy(with_keys(proxy_settings(backend), {"backend": "aws-kms", "aws_kms": k.settings(**aws)}))


@pytest.fixture(scope="module")
def kms_written(backend: Any, kms: Kms) -> Iterator[tuple[str, bytes]]:  # noqa: F811
    """A bucket with one object written under moto KMS (S layout)."""
    p = kms_proxy(backend, kms)
    data = b"secret plaintext that must not leak " * 100
    try:
        with temp_bucket(p.client()) as bucket:
            p.client().put_object(Bucket=bucket, Key="obj", Body=data)
            yield bucket, data
    finally:
        stop_proxy(p)


@pytest.mark.needs("list_uploads")
def test_kms_unreachable_fails_closed(backend: Any, kms: Kms, kms_written: tuple[str, bytes], raw: Any) -> None:  # noqa: F811
    bucket, data = kms_written
    down = kms_proxy(backend, kms, endpoint_url=f"http://127.0.0.1:{free_port()}", max_attempts=2,
                     retry_budget_seconds=1.0, connect_timeout=0.5)
    try:
        put = signed(down, "PUT", bucket, "new", body=b"must not be stored in plaintext")
        assert_s3_error(put, 503, "ServiceUnavailable")
        assert put.header("retry-after")
        assert absent(raw, bucket, "new")
        create = signed(down, "POST", bucket, "new-mp", query="uploads")
        assert_s3_error(create, 503, "ServiceUnavailable")
        assert raw.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        get = signed(down, "GET", bucket, "obj")
        assert_s3_error(get, 503, "ServiceUnavailable")
        assert get.header("retry-after") and data[:32] not in (get.body or b"")
        ranged = signed(down, "GET", bucket, "obj", headers={"Range": "bytes=0-99"})
        assert_s3_error(ranged, 503, "ServiceUnavailable")
        assert [o["Key"] for o in raw.list_objects_v2(Bucket=bucket)["Contents"]] == ["obj"]
    finally:
        stop_proxy(down)


def test_disabled_key_fails_closed(backend: Any, kms: Kms, kms_written: tuple[str, bytes], raw: Any) -> None:  # noqa: F811
    bucket, data = kms_written
    stub = StubKms("DisabledException").start()
    disabled = kms_proxy(backend, kms, endpoint_url=stub.url)
    try:
        put = signed(disabled, "PUT", bucket, "new", body=b"must not be stored")
        err = assert_s3_error(put, 400, "KMS.DisabledException")
        assert "DisabledException" in err["Message"]
        assert absent(raw, bucket, "new")
        get = signed(disabled, "GET", bucket, "obj")
        assert_s3_error(get, 400, "KMS.DisabledException")
        assert data[:32] not in (get.body or b"")
        assert stub.targets == ["GenerateDataKey", "Decrypt"]  # permanent errors are not retried
        again = signed(disabled, "GET", bucket, "obj")  # negative cache: no second call
        assert_s3_error(again, 400, "KMS.DisabledException")
        assert stub.targets == ["GenerateDataKey", "Decrypt"]
    finally:
        stop_proxy(disabled)
        stub.stop()


# --------------------------------------------------------------------- audit log


def test_audit_log(backend: Any, raw: Any, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    p = start_proxy(with_keys(proxy_settings(backend), {**local_keys("k1", "k2"), "audit": {"target": str(log)}}))
    try:
        s3 = p.client()
        with temp_bucket(s3) as bucket:
            s3.put_object(Bucket=bucket, Key="a", Body=b"audited")
            assert s3.get_object(Bucket=bucket, Key="a")["Body"].read() == b"audited"
            multipart_upload(s3, bucket, "mp", [os.urandom(1000)])
            with pytest.raises(ClientError):
                s3.put_object(Bucket=bucket, Key="denied", Body=b"x", ServerSideEncryption="aws:kms", SSEKMSKeyId="k2")
            env = stored_envelope(raw, bucket, "a")
    finally:
        stop_proxy(p)
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    objects = [r for r in records if r["event"] == "key.object"]
    by_op = {(r["operation"], r["key"]): r for r in objects}
    # Complete unwraps the DEK too: it verifies the upload token's tag (docs/FORMAT.md 3.2)
    assert sorted(by_op) == sorted([("PutObject", "a"), ("GetObject", "a"), ("CreateMultipartUpload", "mp"),
                                    ("UploadPart", "mp"), ("CompleteMultipartUpload", "mp"), ("PutObject", "denied")])
    assert len(objects) == len(by_op)  # one line per object operation
    fields = {"time", "event", "request_id", "identity", "operation", "bucket", "key", "backend", "key_id",
              "cache", "outcome", "latency_ms"}
    for r in objects:
        assert fields <= set(r), r
        assert r["identity"] == "tester" and r["bucket"] == bucket and r["backend"] == "local"
        assert isinstance(r["latency_ms"], (int, float)) and r["latency_ms"] >= 0 and r["request_id"]
    put, get = by_op[("PutObject", "a")], by_op[("GetObject", "a")]
    assert (put["key_id"], put["cache"], put["outcome"]) == ("k1", "miss", "ok")
    assert (get["key_id"], get["cache"], get["outcome"]) == ("k1", "miss", "ok")
    assert put["context"] == {"bucket": bucket}
    assert by_op[("UploadPart", "mp")]["cache"] == "hit"
    denied = by_op[("PutObject", "denied")]
    assert denied["outcome"] == "KeyAccessDenied" and denied["key_id"] == "k2"
    calls = [r for r in records if r["event"] == "key.backend"]
    assert [c["call"] for c in calls] == ["generate_data_key", "decrypt_data_key"]
    assert all(c["outcome"] == "ok" and c["key_id"] == "k1" for c in calls)
    # No key material and no secrets: master keys, the DEK (in any encoding), client secret.
    import asyncio

    from s3proxy.keys.local import LocalKeyBackend

    dek = bytes(asyncio.run(LocalKeyBackend({"k1": base64.b64decode(K1)}).decrypt_data_key(env.wrapped, env.context)))
    text = log.read_text()
    for secret in (K1, K2, K3, CLIENT_SK, dek.hex(), base64.b64encode(dek).decode().rstrip("="),
                   base64.urlsafe_b64encode(dek).decode().rstrip("="), base64.b64encode(env.wrapped.blob).decode()):
        assert secret not in text


# --------------------------------------------------------------------- data-key cache


@pytest.mark.parametrize("cache", [True, False], ids=["cache-on", "cache-off"])
@pytest.mark.parametrize("name", ["local", "aws-kms"])
def test_data_key_cache(backend: Any, request: pytest.FixtureRequest, name: str, cache: bool) -> None:
    keys, _, _, _ = _keys_for(name, request)
    p = start_proxy(with_keys(proxy_settings(backend), {**keys, "cache": {"enabled": cache}}))
    n = 200
    try:
        s3 = p.client(config={"max_pool_connections": 16})
        with temp_bucket(s3) as bucket, ThreadPoolExecutor(8) as pool:
            names = [unique("o-") for _ in range(n)]
            list(pool.map(lambda k: s3.put_object(Bucket=bucket, Key=k, Body=k.encode()), names))
            got = list(pool.map(lambda k: s3.get_object(Bucket=bucket, Key=k)["Body"].read(), names))
            assert got == [k.encode() for k in names]
            stats = p.state.keys.cache.stats
            calls = stats["encrypt"].backend_calls + stats["decrypt"].backend_calls
            if cache:
                assert calls <= 2, stats
                assert stats["encrypt"].hits + stats["decrypt"].hits >= 2 * n - 2
            else:
                assert stats["encrypt"].backend_calls == n and stats["decrypt"].backend_calls == n, stats
            if name == "aws-kms":  # what KMS itself saw (HTTP attempts)
                attempts = p.state.keys.backends["aws-kms"].attempts
                # SDK retries of a timed-out or reset call (moto on a loaded machine) add attempts
                assert calls <= attempts <= calls + max(2, calls // 20), (attempts, calls)
    finally:
        stop_proxy(p)
