"""Reading AWS S3 Encryption Client objects through s3proxy (issue 12 item 2).

The objects are written straight to the backend by tests/s3ec_reference.py, an
independent implementation of the S3EC format written from AWS's specification,
with data keys from moto's KMS under an encryption context, as the S3EC's KMS
keyring makes them.  The proxy reads them with its aws-kms key backend.
Attacks: a storage-side writer who flips a byte, truncates the tag, edits the
encryption context, swaps the data key or the instruction file, or relabels the
format; every one is an error, never plaintext.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests import s3ec_reference as ref
from tests.conftest import Proxy, proxy_settings, start_proxy, stop_proxy
from tests.integration.keyfixtures import Kms, kms, with_keys  # noqa: F401 - fixture

BUCKET = "s3ec-read"
LEGACY = "s3ec-legacy"
SMALL = "s3ec-small"


@pytest.fixture(scope="module")
def s3ec_proxy(backend: Any, kms: Kms) -> Iterator[Proxy]:  # noqa: F811
    s3ec = {"read": True, "kms_key_id": kms.arns[2], "instruction_files": True}
    settings = proxy_settings(backend, buckets={
        BUCKET: {"s3ec": s3ec},
        LEGACY: {"s3ec": {**s3ec, "legacy": True}},
        SMALL: {"s3ec": {**s3ec, "max_object_size": 1000}},
    })
    p = start_proxy(with_keys(settings, {"backend": "aws-kms", "aws_kms": kms.settings(kms.arns[0])}))
    raw = backend.client()
    for b in (BUCKET, LEGACY, SMALL):
        raw.create_bucket(Bucket=b)
    try:
        yield p
    finally:
        stop_proxy(p)


@pytest.fixture(scope="module")
def make_key(kms: Kms) -> ref.KeyMaker:  # noqa: F811
    client = kms.client()

    def make(ctx: dict[str, str]) -> tuple[bytes, bytes]:
        r = client.generate_data_key(KeyId=kms.arns[2], KeySpec="AES_256", EncryptionContext=ctx)
        return r["Plaintext"], r["CiphertextBlob"]

    return make


def put_raw(raw: Any, bucket: str, key: str, w: ref.S3ECWritten, **kw: Any) -> None:
    raw.put_object(Bucket=bucket, Key=key, Body=w.body, Metadata=w.metadata, **kw)


def get(p: Proxy, bucket: str, key: str, **kw: Any) -> dict[str, Any]:
    r = p.client().get_object(Bucket=bucket, Key=key, **kw)
    r["data"] = r["Body"].read()
    return r


def error_code(fn: Any) -> tuple[str, int]:
    with pytest.raises(ClientError) as ei:
        fn()
    return ei.value.response["Error"]["Code"], ei.value.response["ResponseMetadata"]["HTTPStatusCode"]


DATA = os.urandom(3 * 1024 * 1024 + 123)


@pytest.mark.parametrize("writer", [ref.encrypt_v2, ref.encrypt_v3], ids=["v2", "v3"])
def test_get_head_and_ranges(s3ec_proxy: Proxy, raw: Any, make_key: ref.KeyMaker, writer: Any) -> None:
    key = f"obj-{writer.__name__}"
    put_raw(raw, BUCKET, key, writer(DATA, make_key, {"app": "billing"}), ContentType="application/x-test")
    r = get(s3ec_proxy, BUCKET, key)
    assert r["data"] == DATA and r["ContentLength"] == len(DATA)
    assert r["ContentType"] == "application/x-test"
    assert not any(k.startswith("x-amz-") for k in r["Metadata"])  # the S3EC's own metadata stays hidden
    head = s3ec_proxy.client().head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == len(DATA)
    for a, b in [(0, 0), (1, 16), (15, 17), (1_000_000, 2_000_000), (len(DATA) - 5, len(DATA) + 100)]:
        r = get(s3ec_proxy, BUCKET, key, Range=f"bytes={a}-{b}")
        assert r["data"] == DATA[a : b + 1], (a, b)
        assert r["ContentRange"] == f"bytes {a}-{min(b, len(DATA) - 1)}/{len(DATA)}"
    assert get(s3ec_proxy, BUCKET, key, Range="bytes=-10")["data"] == DATA[-10:]


@pytest.mark.parametrize("writer", [ref.encrypt_v2, ref.encrypt_v3], ids=["v2", "v3"])
def test_instruction_files(s3ec_proxy: Proxy, raw: Any, make_key: ref.KeyMaker, writer: Any) -> None:
    key = f"inst-{writer.__name__}"
    w = writer(b"instructions follow", make_key)
    meta, inst = ref.to_instruction_file(w)
    raw.put_object(Bucket=BUCKET, Key=key, Body=w.body, Metadata=meta)
    raw.put_object(Bucket=BUCKET, Key=key + ".instruction", Body=inst, Metadata={"x-amz-crypto-instr-file": ""})
    assert get(s3ec_proxy, BUCKET, key)["data"] == b"instructions follow"
    assert s3ec_proxy.client().head_object(Bucket=BUCKET, Key=key)["ContentLength"] == len(b"instructions follow")


def test_empty_and_tiny(s3ec_proxy: Proxy, raw: Any, make_key: ref.KeyMaker) -> None:
    for n in (0, 1, 16):
        put_raw(raw, BUCKET, f"tiny-{n}", ref.encrypt_v2(b"t" * n, make_key))
        assert get(s3ec_proxy, BUCKET, f"tiny-{n}")["data"] == b"t" * n


def test_s3proxy_objects_still_read(s3ec_proxy: Proxy) -> None:
    s3 = s3ec_proxy.client()
    s3.put_object(Bucket=BUCKET, Key="ours", Body=b"written through the proxy")
    assert s3.get_object(Bucket=BUCKET, Key="ours")["Body"].read() == b"written through the proxy"


def test_plaintext_still_refused(s3ec_proxy: Proxy, raw: Any) -> None:
    raw.put_object(Bucket=BUCKET, Key="plain", Body=b"not encrypted")
    code, status = error_code(lambda: get(s3ec_proxy, BUCKET, "plain"))
    assert status == 403


# --------------------------------------------------------------------- attacks by a storage-side writer


@pytest.mark.parametrize("where", [0, 100, -17, -1])
@pytest.mark.parametrize("writer", [ref.encrypt_v2, ref.encrypt_v3], ids=["v2", "v3"])
def test_flipped_byte_is_refused(s3ec_proxy: Proxy, raw: Any, make_key: ref.KeyMaker, writer: Any, where: int) -> None:
    w = writer(b"z" * 1000, make_key)
    body = bytearray(w.body)
    body[where] ^= 1
    put_raw(raw, BUCKET, "flipped", ref.S3ECWritten(bytes(body), w.metadata, w.data_key))
    code, status = error_code(lambda: get(s3ec_proxy, BUCKET, "flipped"))
    assert (code, status) == ("InvalidObjectState", 403)
    code, status = error_code(lambda: get(s3ec_proxy, BUCKET, "flipped", Range="bytes=0-9"))
    assert status == 403  # a range is served only from a verified whole


def test_truncated_tag_is_refused(s3ec_proxy: Proxy, raw: Any, make_key: ref.KeyMaker) -> None:
    w = ref.encrypt_v3(b"q" * 100, make_key)
    put_raw(raw, BUCKET, "short", ref.S3ECWritten(w.body[:-1], w.metadata, w.data_key))
    assert error_code(lambda: get(s3ec_proxy, BUCKET, "short"))[1] == 403


def test_edited_encryption_context_is_refused(s3ec_proxy: Proxy, raw: Any, make_key: ref.KeyMaker) -> None:
    w = ref.encrypt_v2(b"context bound", make_key, {"tenant": "a"})
    ctx = json.loads(w.metadata["x-amz-matdesc"])
    ctx["tenant"] = "b"
    put_raw(raw, BUCKET, "ctx-edit", ref.S3ECWritten(w.body, {**w.metadata, "x-amz-matdesc": json.dumps(ctx)}, b""))
    code, status = error_code(lambda: get(s3ec_proxy, BUCKET, "ctx-edit"))
    assert 400 <= status < 500 and status != 404


def test_swapped_data_key_is_refused(s3ec_proxy: Proxy, raw: Any, make_key: ref.KeyMaker) -> None:
    a = ref.encrypt_v3(b"a" * 50, make_key)
    b = ref.encrypt_v3(b"b" * 50, make_key)
    put_raw(raw, BUCKET, "swapped", ref.S3ECWritten(a.body, {**a.metadata, "x-amz-3": b.metadata["x-amz-3"]}, b""))
    assert error_code(lambda: get(s3ec_proxy, BUCKET, "swapped")) == ("InvalidObjectState", 403)


def test_missing_v3_instruction_file_is_refused(s3ec_proxy: Proxy, raw: Any, make_key: ref.KeyMaker) -> None:
    meta, _ = ref.to_instruction_file(ref.encrypt_v3(b"lost", make_key))
    raw.put_object(Bucket=BUCKET, Key="no-inst", Body=b"x" * 20, Metadata=meta)
    assert error_code(lambda: get(s3ec_proxy, BUCKET, "no-inst")) == ("InvalidObjectState", 403)


def test_relabelled_format_is_refused(s3ec_proxy: Proxy, raw: Any, make_key: ref.KeyMaker) -> None:
    w = ref.encrypt_v3(b"relabel", make_key)
    meta = {"x-amz-key-v2": w.metadata["x-amz-3"], "x-amz-iv": base64.b64encode(b"\x01" * 12).decode(),
            "x-amz-matdesc": w.metadata["x-amz-t"], "x-amz-wrap-alg": "kms+context",
            "x-amz-cek-alg": "AES/GCM/NoPadding", "x-amz-tag-len": "128"}
    put_raw(raw, BUCKET, "relabel", ref.S3ECWritten(w.body, meta, b""))
    assert error_code(lambda: get(s3ec_proxy, BUCKET, "relabel"))[1] == 403


def test_legacy_cbc_needs_opt_in(s3ec_proxy: Proxy, raw: Any, make_key: ref.KeyMaker) -> None:
    w = ref.encrypt_cbc(b"legacy " * 100, make_key)
    put_raw(raw, BUCKET, "cbc", w)
    put_raw(raw, LEGACY, "cbc", w)
    code, status = error_code(lambda: get(s3ec_proxy, BUCKET, "cbc"))
    assert (code, status) == ("InvalidObjectState", 403)
    assert get(s3ec_proxy, LEGACY, "cbc")["data"] == b"legacy " * 100
    assert get(s3ec_proxy, LEGACY, "cbc", Range="bytes=7-13")["data"] == b"legacy "


def test_oversized_objects_are_refused_not_streamed(s3ec_proxy: Proxy, raw: Any, make_key: ref.KeyMaker) -> None:
    put_raw(raw, SMALL, "big", ref.encrypt_v2(b"b" * 5000, make_key))
    put_raw(raw, SMALL, "fits", ref.encrypt_v2(b"f" * 500, make_key))
    assert error_code(lambda: get(s3ec_proxy, SMALL, "big")) == ("NotImplemented", 501)
    assert get(s3ec_proxy, SMALL, "fits")["data"] == b"f" * 500


def test_not_read_where_not_enabled(s3ec_proxy: Proxy, raw: Any, make_key: ref.KeyMaker) -> None:
    raw.create_bucket(Bucket="s3ec-off")
    put_raw(raw, "s3ec-off", "x", ref.encrypt_v2(b"x", make_key))
    assert error_code(lambda: get(s3ec_proxy, "s3ec-off", "x"))[1] == 403


# --------------------------------------------------------------------- migrating them


@pytest.mark.needs("aws_responses")
def test_migrate_from_s3ec(backend: Any, kms: Kms, make_key: ref.KeyMaker, raw: Any, tmp_path: Any) -> None:  # noqa: F811
    """`s3proxy migrate --from s3ec`: S3EC objects (metadata and instruction-file forms) and the
    bucket's plaintext become s3proxy objects, readable by a proxy with neither allowance."""
    import asyncio
    import io

    from s3proxy.migrate import Migrator

    bucket = "s3ec-migrate"
    keys = {"backend": "aws-kms", "aws_kms": kms.settings(kms.arns[0])}
    s3ec = {"read": True, "kms_key_id": kms.arns[2], "instruction_files": True}
    settings = with_keys(proxy_settings(backend, buckets={bucket: {"allow_unencrypted_reads": True, "s3ec": s3ec}}), keys)
    raw.create_bucket(Bucket=bucket)
    big = os.urandom(5 * 1024 * 1024 + 7)
    want = {"v2": b"two" * 1000, "v3": big, "inst": b"instructed", "plain": b"plain text", "empty": b""}
    put_raw(raw, bucket, "v2", ref.encrypt_v2(want["v2"], make_key), ContentType="text/plain")
    w3 = ref.encrypt_v3(want["v3"], make_key)
    raw.put_object(Bucket=bucket, Key="v3", Body=w3.body, Metadata={**w3.metadata, "owner": "ops"})
    wi = ref.encrypt_v2(want["inst"], make_key)
    meta, inst = ref.to_instruction_file(wi)
    raw.put_object(Bucket=bucket, Key="inst", Body=wi.body, Metadata=meta)
    raw.put_object(Bucket=bucket, Key="inst.instruction", Body=inst, Metadata={"x-amz-crypto-instr-file": ""})
    raw.put_object(Bucket=bucket, Key="plain", Body=want["plain"])
    put_raw(raw, bucket, "empty", ref.encrypt_v3(b"", make_key))

    job = Migrator(settings, bucket, source_format="s3ec", state_file=tmp_path / "state.json",
                   progress=False, out=io.StringIO())
    report = asyncio.run(job.run())
    assert not report.failures, report.failures
    assert report.done == 5, report

    strict = start_proxy(with_keys(proxy_settings(backend), keys))  # no s3ec.read, no plaintext allowed
    try:
        s3 = strict.client()
        for key, data in want.items():
            assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data, key
            assert raw.head_object(Bucket=bucket, Key=key)["Metadata"].get("s3proxy-v"), key
        assert s3.head_object(Bucket=bucket, Key="v3")["Metadata"] == {"owner": "ops"}
        assert s3.head_object(Bucket=bucket, Key="v2")["ContentType"] == "text/plain"
    finally:
        stop_proxy(strict)
    # a second run changes nothing; the instruction file is reported, never "migrated" as plaintext
    again = asyncio.run(Migrator(settings, bucket, source_format="s3ec", state_file=tmp_path / "state2.json",
                                 progress=False, out=io.StringIO()).run())
    assert not again.failures and again.done == 0
    assert raw.get_object(Bucket=bucket, Key="inst.instruction")["Body"].read() == inst
