"""The S3 Encryption Client reader (s3proxy.crypto.s3ec) against an independent writer.

Objects come from tests/s3ec_reference.py (written from AWS's specification, one-shot
AESGCM/CBC); the reader streams.  Every rule is attacked: a flipped byte anywhere, a
truncated tag, a swapped data key, a tampered commitment or message id, mixed
formats, legacy content without opt-in, keys in the wrong place.
"""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3proxy.crypto import s3ec
from tests import s3ec_reference as ref

KEY = b"\x11" * 32
KEYS = ref.fixed_keys(KEY)


def decrypt(w: ref.S3ECWritten, *, piece: int = 7, legacy: bool = False, key: bytes = KEY) -> bytes:
    obj = s3ec.parse(w.metadata, allow_legacy=legacy)
    dec = s3ec.ContentDecryptor(obj, key)
    out = b"".join(dec.update(w.body[i : i + piece]) for i in range(0, len(w.body), piece))
    return out + dec.finalize()


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1000, 65536 + 3])
@pytest.mark.parametrize("writer", [ref.encrypt_v2, ref.encrypt_v3])
def test_authenticated_round_trip(writer, size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    w = writer(data, KEYS, {"dept": "finance"})
    obj = s3ec.parse(w.metadata)
    assert obj.authenticated
    assert s3ec.plaintext_size(obj, len(w.body)) == size
    assert decrypt(w) == data
    assert obj.context["dept"] == "finance"


def test_formats_and_context():
    v2 = s3ec.parse(ref.encrypt_v2(b"x", KEYS, {"a": "b"}).metadata)
    assert (v2.format, v2.suite, v2.wrap) == (2, s3ec.SUITE_GCM, s3ec.WRAP_KMS_CONTEXT)
    assert v2.context == {"a": "b", "aws:x-amz-cek-alg": "AES/GCM/NoPadding"}
    v3 = s3ec.parse(ref.encrypt_v3(b"x", KEYS).metadata)
    assert (v3.format, v3.suite, v3.wrap) == (3, s3ec.SUITE_KC_GCM, s3ec.WRAP_KMS_CONTEXT)
    assert s3ec.kind(ref.encrypt_v3(b"x", KEYS).metadata) == "object"
    assert s3ec.kind({"content-type": "x"}) is None


@pytest.mark.parametrize("writer", [ref.encrypt_v2, ref.encrypt_v3])
def test_every_flipped_byte_fails(writer):
    w = writer(b"attack at dawn, 0123456789abcdef!", KEYS)
    for i in range(len(w.body)):
        body = bytearray(w.body)
        body[i] ^= 0x01
        with pytest.raises(s3ec.S3ECError):
            decrypt(ref.S3ECWritten(bytes(body), w.metadata, w.data_key))


@pytest.mark.parametrize("writer", [ref.encrypt_v2, ref.encrypt_v3])
@pytest.mark.parametrize("cut", [1, 15, 16, 17])
def test_truncation_fails(writer, cut):
    w = writer(b"y" * 40, KEYS)
    short = ref.S3ECWritten(w.body[:-cut], w.metadata, w.data_key)
    with pytest.raises(s3ec.S3ECError):
        decrypt(short)


def test_appended_bytes_fail():
    w = ref.encrypt_v2(b"y" * 40, KEYS)
    with pytest.raises(s3ec.S3ECError):
        decrypt(ref.S3ECWritten(w.body + b"\x00", w.metadata, w.data_key))


@pytest.mark.parametrize("writer", [ref.encrypt_v2, ref.encrypt_v3])
def test_wrong_data_key_fails(writer):
    w = writer(b"secret", KEYS)
    with pytest.raises(s3ec.S3ECError):
        decrypt(w, key=b"\x22" * 32)


def _tamper_b64(meta: dict[str, str], name: str) -> dict[str, str]:
    raw = bytearray(base64.b64decode(meta[name]))
    raw[0] ^= 1
    return {**meta, name: base64.b64encode(bytes(raw)).decode()}


@pytest.mark.parametrize("name", ["x-amz-d", "x-amz-i"])
def test_v3_commitment_and_message_id_are_bound(name):
    w = ref.encrypt_v3(b"committed", KEYS)
    meta = _tamper_b64(w.metadata, name)
    obj = s3ec.parse(meta)
    with pytest.raises(s3ec.S3ECError, match="commitment"):
        s3ec.ContentDecryptor(obj, KEY)


def test_v2_iv_is_bound():
    w = ref.encrypt_v2(b"iv bound", KEYS)
    with pytest.raises(s3ec.S3ECError):
        decrypt(ref.S3ECWritten(w.body, _tamper_b64(w.metadata, "x-amz-iv"), KEY))


def test_v3_suite_downgrade_to_v2_fails():
    """A writer relabels a V3 object as V2 GCM (same key, IV 0x01*12): GCM's AAD and key differ."""
    w = ref.encrypt_v3(b"downgrade me", KEYS)
    meta = {
        "x-amz-key-v2": w.metadata["x-amz-3"], "x-amz-iv": base64.b64encode(b"\x01" * 12).decode(),
        "x-amz-matdesc": w.metadata["x-amz-t"], "x-amz-wrap-alg": "kms+context",
        "x-amz-cek-alg": "AES/GCM/NoPadding", "x-amz-tag-len": "128",
    }
    with pytest.raises(s3ec.S3ECError):
        decrypt(ref.S3ECWritten(w.body, meta, KEY))


@pytest.mark.parametrize(
    "extra",
    [{"x-amz-key": "AAAA"}, {"x-amz-3": "AAAA"}, {"x-amz-c": "115"}, {"x-amz-d": "AAAA"}],
)
def test_mixed_formats_refused(extra):
    w = ref.encrypt_v2(b"m", KEYS)
    with pytest.raises(s3ec.S3ECError):
        s3ec.parse({**w.metadata, **extra})


def test_v1_mixed_with_v2_keys_refused():
    w = ref.encrypt_cbc(b"m", KEYS, v1=True)
    with pytest.raises(s3ec.S3ECError):
        s3ec.parse({**w.metadata, "x-amz-cek-alg": "AES/GCM/NoPadding"}, allow_legacy=True)


@pytest.mark.parametrize("v1", [False, True])
def test_cbc_is_legacy_and_refused_by_default(v1):
    w = ref.encrypt_cbc(b"old data" * 5, KEYS, v1=v1)
    with pytest.raises(s3ec.S3ECLegacyRefused):
        s3ec.parse(w.metadata)
    assert decrypt(w, legacy=True) == b"old data" * 5
    assert s3ec.parse(w.metadata, allow_legacy=True).authenticated is False


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 100])
def test_cbc_sizes(size):
    w = ref.encrypt_cbc(b"z" * size, KEYS)
    obj = s3ec.parse(w.metadata, allow_legacy=True)
    assert s3ec.plaintext_size(obj, len(w.body)) == size
    assert decrypt(w, legacy=True) == b"z" * size
    nolen = ref.encrypt_cbc(b"z" * size, KEYS, with_length=False)
    assert s3ec.plaintext_size(s3ec.parse(nolen.metadata, allow_legacy=True), len(nolen.body)) is None


def test_cbc_bad_padding_fails():
    w = ref.encrypt_cbc(b"z" * 20, KEYS)
    body = bytearray(w.body)
    body[-1] ^= 0xFF
    with pytest.raises(s3ec.S3ECError):
        decrypt(ref.S3ECWritten(bytes(body), w.metadata, KEY), legacy=True)


def test_legacy_kms_wrap_refused_by_default():
    w = ref.encrypt_v2(b"m", KEYS)
    meta = {**w.metadata, "x-amz-wrap-alg": "kms"}
    with pytest.raises(s3ec.S3ECLegacyRefused):
        s3ec.parse(meta)
    assert s3ec.parse(meta, allow_legacy=True).wrap == "kms"


@pytest.mark.parametrize("wrap", ["AES/GCM", "AESWrap", "RSA-OAEP-SHA1"])
def test_raw_master_key_wraps_unsupported(wrap):
    w = ref.encrypt_v2(b"m", KEYS)
    with pytest.raises(s3ec.S3ECUnsupported):
        s3ec.parse({**w.metadata, "x-amz-wrap-alg": wrap})


def test_v3_raw_wrap_unsupported():
    w = ref.encrypt_v3(b"m", KEYS)
    with pytest.raises(s3ec.S3ECUnsupported):
        s3ec.parse({**w.metadata, "x-amz-w": "02"})


def test_length_mismatch_refused():
    w = ref.encrypt_v2(b"12345", KEYS)
    obj = s3ec.parse({**w.metadata, "x-amz-unencrypted-content-length": "4"})
    with pytest.raises(s3ec.S3ECError):
        s3ec.plaintext_size(obj, len(w.body))
    with pytest.raises(s3ec.S3ECError):
        s3ec.plaintext_size(s3ec.parse(w.metadata), 15)


@pytest.mark.parametrize("writer", [ref.encrypt_v2, ref.encrypt_v3])
def test_instruction_files(writer):
    w = writer(b"instructed", KEYS, {"k": "v"})
    obj_meta, body = ref.to_instruction_file(w)
    expected = "instruction" if writer is ref.encrypt_v3 else None
    assert s3ec.kind(obj_meta) == expected
    obj = s3ec.parse(obj_meta, s3ec.parse_instruction_file(body))
    assert obj.from_instruction_file
    dec = s3ec.ContentDecryptor(obj, KEY)
    assert dec.update(w.body) + dec.finalize() == b"instructed"


def test_instruction_file_may_not_hold_object_only_keys():
    w = ref.encrypt_v3(b"x", KEYS)
    obj_meta, body = ref.to_instruction_file(w)
    inst = s3ec.parse_instruction_file(body)
    inst["x-amz-d"] = obj_meta["x-amz-d"]
    with pytest.raises(s3ec.S3ECError):
        s3ec.parse(obj_meta, inst)


def test_content_keys_in_both_places_refused():
    w = ref.encrypt_v2(b"x", KEYS)
    _, body = ref.to_instruction_file(w)
    with pytest.raises(s3ec.S3ECError):
        s3ec.parse({"x-amz-iv": w.metadata["x-amz-iv"]}, s3ec.parse_instruction_file(body))


@pytest.mark.parametrize("body", [b"not json", b"[1]", b'{"a": 1}'])
def test_bad_instruction_files(body):
    with pytest.raises(s3ec.S3ECError):
        s3ec.parse_instruction_file(body)


def test_rfc2047_encoded_context():
    w = ref.encrypt_v2(b"x", KEYS, {"name": "Zoë"})
    encoded = "=?UTF-8?B?" + base64.b64encode(w.metadata["x-amz-matdesc"].encode()).decode() + "?="
    obj = s3ec.parse({**w.metadata, "x-amz-matdesc": encoded})
    assert obj.context["name"] == "Zoë"


@pytest.mark.parametrize("name", ["x-amz-iv", "x-amz-key-v2"])
def test_bad_base64_refused(name):
    w = ref.encrypt_v2(b"x", KEYS)
    with pytest.raises(s3ec.S3ECError):
        s3ec.parse({**w.metadata, name: "***"})


def test_wrong_sizes_refused():
    w = ref.encrypt_v3(b"x", KEYS)
    with pytest.raises(s3ec.S3ECError):
        s3ec.parse({**w.metadata, "x-amz-i": base64.b64encode(b"short").decode()})
    with pytest.raises(s3ec.S3ECError):
        s3ec.ContentDecryptor(s3ec.parse(w.metadata), b"\x00" * 16)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=300), start=st.integers(0, 300), length=st.integers(1, 300), v3=st.booleans())
def test_ctr_range_matches_slice(data, start, length, v3):
    w = (ref.encrypt_v3 if v3 else ref.encrypt_v2)(data, KEYS)
    obj = s3ec.parse(w.metadata)
    start = min(start, len(data))
    end = min(start + length, len(data))
    block = start // 16
    dec = s3ec.ctr_range_decryptor(obj, KEY, block)
    ct = w.body[block * 16 : end]
    out = dec.update(ct) + dec.finalize()
    assert out[start - block * 16 :] == data[start:end]


def test_matdesc_json_must_be_strings():
    w = ref.encrypt_v2(b"x", KEYS)
    with pytest.raises(s3ec.S3ECError):
        s3ec.parse({**w.metadata, "x-amz-matdesc": json.dumps({"a": 1})})
