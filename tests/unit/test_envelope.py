"""Envelope metadata and upload tokens (docs/FORMAT.md 3): encoding, binding, every malformation."""

from __future__ import annotations

import base64
import dataclasses
import hmac
import json
from hashlib import sha256

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3proxy.crypto.envelope import ENVELOPE_KEYS as ALL_KEYS
from s3proxy.crypto.envelope import (
    METADATA_BUDGET,
    RESERVED_PREFIX,
    SEALED_VERSION,
    EncryptionContext,
    Envelope,
    SealContents,
    decode_metadata,
    encode_metadata,
    is_reserved,
    make_envelope,
    new_object_id,
    open_seal,
    rebind,
    verify_binding,
)
from s3proxy.crypto.envelope import V1_KEYS as ENVELOPE_KEYS
from s3proxy.crypto.errors import (
    BindingMismatch,
    InvalidUploadToken,
    MalformedMetadata,
    MetadataTooLarge,
    SealAuthenticationFailed,
    UnsupportedFormatVersion,
)
from s3proxy.crypto.upload_token import decode_upload_token, encode_upload_token, verify_upload_token
from s3proxy.keys.base import WrappedKey

DEK = bytes(range(32))
OTHER_DEK = bytes(range(1, 33))
OID = bytes(range(16))
WRAPPED = WrappedKey("local", "k1", "AES256-GCM", bytes(range(60)))
CTX = {"bucket": "photos"}


def env(layout: str = "S", bucket: str = "photos", key: str = "a/b.jpg") -> Envelope:
    return make_envelope(DEK, layout, OID, WRAPPED, CTX, bucket, key)  # type: ignore[arg-type]


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_round_trip() -> None:
    e = env()
    meta = encode_metadata(e)
    assert set(meta) == set(ENVELOPE_KEYS)
    assert all(k.startswith(RESERVED_PREFIX) for k in meta)
    assert meta["s3proxy-v"] == "1"
    assert meta["s3proxy-layout"] == "S"
    assert decode_metadata(meta) == e
    verify_binding(e, DEK, "photos", "a/b.jpg")


def test_values_are_header_safe_and_small() -> None:
    e = make_envelope(
        DEK, "K", OID, WrappedKey("pkcs11", "ключ; 100%\r\n", "AES-KWP", bytes(500)), {"b": "ü\n\"x"}, "b", "k"
    )
    meta = encode_metadata(e)
    for k, v in meta.items():
        assert k.isascii() and v.isascii()
        assert all(0x21 <= ord(ch) <= 0x7E for ch in v), (k, v)
    assert sum(len(k) + len(v) for k, v in meta.items()) <= METADATA_BUDGET
    assert decode_metadata(meta) == e


def test_decode_accepts_any_key_case_and_ignores_other_metadata() -> None:
    e = env()
    meta = {k.upper(): v for k, v in encode_metadata(e).items()}
    meta["color"] = "blue"
    meta["s3proxy-other"] = "reserved for the proxy, not the envelope"
    assert decode_metadata(meta) == e


def test_missing_metadata_is_none() -> None:
    assert decode_metadata({}) is None
    assert decode_metadata({"color": "blue", "s3proxy-other": "x"}) is None


def test_unknown_version() -> None:
    meta = encode_metadata(env())
    for v in ("3", "0", "01", "02", "", "v1"):
        with pytest.raises(UnsupportedFormatVersion):
            decode_metadata({**meta, "s3proxy-v": v})
    # the version is checked before anything else: a v2 object with other fields fails on the version
    with pytest.raises(UnsupportedFormatVersion):
        decode_metadata({"s3proxy-v": "3", "s3proxy-new-field": "x"})


@pytest.mark.parametrize("missing", ENVELOPE_KEYS)
def test_missing_field(missing: str) -> None:
    meta = encode_metadata(env())
    del meta[missing]
    with pytest.raises(MalformedMetadata):
        decode_metadata(meta)


GOOD = encode_metadata(env())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("s3proxy-layout", "X"),
        ("s3proxy-layout", "s"),
        ("s3proxy-id", b64u(bytes(15))),
        ("s3proxy-id", b64u(bytes(17))),
        ("s3proxy-id", b64u(bytes(16)) + "="),
        ("s3proxy-id", "AAAAAAAAAAAAAAAAAAAAAB"),  # non-zero trailing bits
        ("s3proxy-id", "AAAA AAAAAAAAAAAAAAAAA"),
        ("s3proxy-id", "A"),
        ("s3proxy-mac", b64u(bytes(31))),
        ("s3proxy-mac", "!" * 43),
        ("s3proxy-key", "local;k1;AES256-GCM"),
        ("s3proxy-key", "local;k1;AES256-GCM;AAAA;extra"),
        ("s3proxy-key", ";k1;AES256-GCM;AAAA"),
        ("s3proxy-key", "local;k%31;AES256-GCM;AAAA"),  # non-canonical percent-encoding
        ("s3proxy-key", "local;k%zz;AES256-GCM;AAAA"),
        ("s3proxy-key", "local;k%FF;AES256-GCM;AAAA"),  # not UTF-8
        ("s3proxy-key", "local;k 1;AES256-GCM;AAAA"),
        ("s3proxy-key", "local;k1;AES256-GCM;AA=="),
        ("s3proxy-ctx", b64u(b'{"bucket": "photos"}')),  # not canonical
        ("s3proxy-ctx", b64u(b'{"b":"1","a":"2"}')),  # keys not sorted
        ("s3proxy-ctx", b64u(b'{"a":"1","a":"2"}')),  # duplicate key
        ("s3proxy-ctx", b64u(b'{"a":1}')),
        ("s3proxy-ctx", b64u(b'["a"]')),
        ("s3proxy-ctx", b64u(b"not json")),
        ("s3proxy-ctx", b64u(b'{"a":"\\u00fc"}')),  # escaped non-ASCII is not canonical
        ("s3proxy-ctx", b64u(b"\xff")),
    ],
)
def test_malformed_fields(field: str, value: str) -> None:
    with pytest.raises(MalformedMetadata):
        decode_metadata({**GOOD, field: value})


def test_context_is_canonical_json() -> None:
    c = EncryptionContext({"z": "1", "a": "ü"})
    assert c.canonical_json() == '{"a":"ü","z":"1"}'.encode()
    assert list(c) == ["a", "z"]
    assert c == {"a": "ü", "z": "1"}
    assert c["a"] == "ü"
    assert hash(c) == hash(EncryptionContext({"a": "ü", "z": "1"}))
    with pytest.raises(KeyError):
        c["missing"]
    with pytest.raises(TypeError):
        EncryptionContext({"a": 1})  # type: ignore[dict-item]


def test_envelope_is_frozen_and_hashable() -> None:
    e = env()
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.layout = "K"  # type: ignore[misc]
    assert hash(e) == hash(env())


# -- binding ---------------------------------------------------------------------------


def test_binding_detects_placement_and_metadata_changes() -> None:
    e = env()
    with pytest.raises(BindingMismatch):
        verify_binding(e, DEK, "photos2", "a/b.jpg")
    with pytest.raises(BindingMismatch):
        verify_binding(e, DEK, "photos", "a/b.jpg ")
    with pytest.raises(BindingMismatch):
        verify_binding(e, OTHER_DEK, "photos", "a/b.jpg")
    # field boundaries are unambiguous: moving a character between bucket and key fails
    with pytest.raises(BindingMismatch):
        verify_binding(e, DEK, "photosa", "/b.jpg")
    for changed in (
        dataclasses.replace(e, layout="K"),
        dataclasses.replace(e, object_id=bytes(16)),
        dataclasses.replace(e, wrapped=dataclasses.replace(WRAPPED, key_id="k2")),
        dataclasses.replace(e, wrapped=dataclasses.replace(WRAPPED, backend="aws-kms")),
        dataclasses.replace(e, wrapped=dataclasses.replace(WRAPPED, algorithm="X")),
        dataclasses.replace(e, wrapped=dataclasses.replace(WRAPPED, blob=bytes(60))),
        dataclasses.replace(e, context=EncryptionContext({"bucket": "other"})),
        dataclasses.replace(e, binding=bytes(32)),
    ):
        with pytest.raises(BindingMismatch):
            verify_binding(changed, DEK, "photos", "a/b.jpg")
    # and through the metadata encoding too
    meta = encode_metadata(e)
    meta["s3proxy-layout"] = "K"
    decoded = decode_metadata(meta)
    assert decoded is not None
    with pytest.raises(BindingMismatch):
        verify_binding(decoded, DEK, "photos", "a/b.jpg")


def test_rebind_for_copy_and_rewrap() -> None:
    e = env()
    copy = rebind(e, DEK, "archive", "x/y")
    assert (copy.object_id, copy.wrapped, copy.context, copy.layout) == (e.object_id, e.wrapped, e.context, e.layout)
    verify_binding(copy, DEK, "archive", "x/y")
    with pytest.raises(BindingMismatch):
        verify_binding(copy, DEK, "photos", "a/b.jpg")
    new_wrapped = WrappedKey("aws-kms", "alias/new", "KMS", b"\x01" * 100)
    rewrapped = rebind(e, DEK, "photos", "a/b.jpg", wrapped=new_wrapped, context={"bucket": "photos", "v": "2"})
    assert rewrapped.wrapped == new_wrapped
    assert rewrapped.context == {"bucket": "photos", "v": "2"}
    assert rewrapped.object_id == e.object_id
    verify_binding(rewrapped, DEK, "photos", "a/b.jpg")
    assert decode_metadata(encode_metadata(rewrapped)) == rewrapped


def test_make_envelope_validates() -> None:
    with pytest.raises(ValueError):
        make_envelope(DEK, "X", OID, WRAPPED, CTX, "b", "k")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        make_envelope(DEK, "S", bytes(15), WRAPPED, CTX, "b", "k")
    with pytest.raises(ValueError):
        make_envelope(bytes(16), "S", OID, WRAPPED, CTX, "b", "k")


def test_too_large() -> None:
    big = make_envelope(DEK, "S", OID, WrappedKey("local", "k", "A", bytes(1200)), CTX, "b", "k")
    with pytest.raises(MetadataTooLarge):
        encode_metadata(big)


def test_object_ids_are_random() -> None:
    ids = {new_object_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 16 for i in ids)


def test_is_reserved() -> None:
    assert is_reserved("s3proxy-v")
    assert is_reserved("S3Proxy-anything")
    assert not is_reserved("s3proxy")
    assert not is_reserved("color")


def test_no_dek_in_repr_or_errors() -> None:
    e = env()
    assert DEK.hex() not in repr(e) and repr(DEK) not in repr(e)
    with pytest.raises(BindingMismatch) as info:
        verify_binding(e, OTHER_DEK, "photos", "a/b.jpg")
    assert OTHER_DEK.hex() not in str(info.value)


text_st = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)


@settings(max_examples=80, deadline=None)
@given(
    st.sampled_from(["S", "K"]),
    st.binary(min_size=16, max_size=16),
    text_st.filter(bool),
    text_st,
    text_st,
    st.binary(max_size=300),
    st.dictionaries(text_st, text_st, max_size=4),
    text_st,
    text_st,
)
def test_round_trip_property(
    layout: str,
    object_id: bytes,
    backend: str,
    key_id: str,
    algorithm: str,
    blob: bytes,
    ctx: dict[str, str],
    bucket: str,
    key: str,
) -> None:
    w = WrappedKey(backend, key_id, algorithm, blob)
    e = make_envelope(DEK, layout, object_id, w, ctx, bucket, key)  # type: ignore[arg-type]
    try:
        meta = encode_metadata(e)
    except MetadataTooLarge:
        return
    assert all(v.isascii() and v == v.strip() and "\n" not in v for v in meta.values())
    d = decode_metadata(meta)
    assert d == e
    verify_binding(d, DEK, bucket, key)
    token = decode_upload_token(encode_upload_token(e, DEK, bucket, key, "upload-1"))
    assert token[:3] == (object_id, w, EncryptionContext(ctx))
    verify_upload_token(token, DEK, bucket, key, "upload-1")


# -- upload token --------------------------------------------------------------------------

UPLOAD = "2~backend-upload-id.x"


def token_for(e: Envelope | None = None, bucket: str = "photos", key: str = "a/b.jpg", upload: str = UPLOAD) -> str:
    return encode_upload_token(e or env("K"), DEK, bucket, key, upload)


def raw_token(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def test_upload_token_round_trip_and_alphabet() -> None:
    token = token_for()
    assert all(ch.isalnum() or ch in "-_" for ch in token)
    decoded = decode_upload_token(token)
    assert (decoded.object_id, decoded.wrapped, decoded.context) == (OID, WRAPPED, CTX)
    verify_upload_token(decoded, DEK, "photos", "a/b.jpg", UPLOAD)


def test_upload_token_is_compact() -> None:
    token = token_for()
    # version + id + 5 length prefixes + strings + 60-byte blob + context + 32-byte tag
    raw = 1 + 16 + 8 + len("local") + len("k1") + len("AES256-GCM") + 60 + len(json.dumps(CTX, separators=(",", ":"))) + 32
    assert len(token) == -(-raw * 4 // 3)


@pytest.mark.parametrize(
    ("bucket", "key", "upload"),
    [
        ("photoz", "a/b.jpg", UPLOAD),  # another bucket
        ("photos", "a/b.jpg ", UPLOAD),  # another key
        ("photos", "a/b.jpgx", UPLOAD),
        ("photos", "", UPLOAD),
        ("photos", "a/b.jpg", UPLOAD + "x"),  # another backend upload
        ("photos", "a/b.jpg", ""),
        ("photosa/b.jpg", "", UPLOAD),  # length prefixes: no field boundary shifting
    ],
)
def test_upload_token_transplanted_is_refused(bucket: str, key: str, upload: str) -> None:
    decoded = decode_upload_token(token_for())
    with pytest.raises(InvalidUploadToken):
        verify_upload_token(decoded, DEK, bucket, key, upload)


def test_upload_token_under_another_dek_is_refused() -> None:
    decoded = decode_upload_token(token_for())
    with pytest.raises(InvalidUploadToken):
        verify_upload_token(decoded, OTHER_DEK, "photos", "a/b.jpg", UPLOAD)


def test_upload_token_forged_without_the_dek_is_refused() -> None:
    """The attack of issue 9: a token naming a victim's wrapped DEK and object id, built from
    public parts, with any tag the attacker can compute (none, zeros, a MAC under a guessed key)."""
    good = raw_token(token_for())
    body = good[:-32]
    for tag in (b"", bytes(32), good[-32:][::-1], hmac.new(b"guess", body, sha256).digest()):
        forged = b64u(body + tag)
        try:
            decoded = decode_upload_token(forged)
        except InvalidUploadToken:
            continue
        with pytest.raises(InvalidUploadToken):
            verify_upload_token(decoded, DEK, "photos", "a/b.jpg", UPLOAD)


def test_upload_token_every_byte_flipped_is_refused() -> None:
    good = raw_token(token_for())
    for i in range(len(good)):
        bad = bytearray(good)
        bad[i] ^= 0x01
        try:
            decoded = decode_upload_token(b64u(bytes(bad)))
            verify_upload_token(decoded, DEK, "photos", "a/b.jpg", UPLOAD)
        except (InvalidUploadToken, UnsupportedFormatVersion):
            continue
        raise AssertionError(f"byte {i} flipped and the token still verified")


def test_upload_token_every_truncation_and_extension_is_refused() -> None:
    good = raw_token(token_for())
    for cut in range(len(good)):
        with pytest.raises((InvalidUploadToken, UnsupportedFormatVersion)):
            verify_upload_token(decode_upload_token(b64u(good[:cut])), DEK, "photos", "a/b.jpg", UPLOAD)
    for extra in (b"\x00", bytes(32)):
        with pytest.raises(InvalidUploadToken):
            verify_upload_token(decode_upload_token(b64u(good + extra)), DEK, "photos", "a/b.jpg", UPLOAD)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "!!!!",
        "A",
        "AQ",
        "Ag",
        b64u(b"\x02" + bytes(15)),
        b64u(b"\x02" + bytes(16)),
        b64u(b"\x02" + bytes(16) + b"\x05ab" + bytes(32)),
        "A" * 9000,
    ],
)
def test_upload_token_malformed(token: str) -> None:
    with pytest.raises((InvalidUploadToken, UnsupportedFormatVersion)):
        decode_upload_token(token)


def test_upload_token_version_1_is_refused() -> None:
    """v1 tokens carried no tag: every one is refused, however well formed."""
    raw = raw_token(token_for())
    v1 = b"\x01" + raw[1:-32]
    with pytest.raises(UnsupportedFormatVersion):
        decode_upload_token(b64u(v1))
    with pytest.raises(UnsupportedFormatVersion):
        decode_upload_token(b64u(b"\x03" + raw[1:]))


def test_upload_token_trailing_and_context() -> None:
    raw = raw_token(token_for())
    body, tag = raw[:-32], raw[-32:]
    with pytest.raises(InvalidUploadToken):
        decode_upload_token(b64u(body + b"\x00" + tag))
    with pytest.raises(InvalidUploadToken):
        decode_upload_token(b64u(body[:-1] + tag))
    bad_ctx = body[: -len(b'{"bucket":"photos"}')] + b'{"bucket":"photoX"}'
    decoded = decode_upload_token(b64u(bad_ctx + tag))
    assert decoded.context == {"bucket": "photoX"}
    with pytest.raises(InvalidUploadToken):
        verify_upload_token(decoded, DEK, "photos", "a/b.jpg", UPLOAD)
    spaced = b'{"bucket": "photo"}'
    not_canonical = body[: -len(b'{"bucket":"photos"}') - 2] + len(spaced).to_bytes(2, "big") + spaced
    with pytest.raises(InvalidUploadToken):
        decode_upload_token(b64u(not_canonical + tag))


# -- envelope v2: the sealed block (FORMAT.md 8) -------------------------------------------------

CONTENTS = SealContents({"color": "blue", "ü": "\udcff"}, {"alg": "SHA256", "v": "x", "type": "FULL_OBJECT"}, '"e"')


def env2(contents: SealContents = CONTENTS, bucket: str = "photos", key: str = "a/b.jpg", layout: str = "S") -> Envelope:
    return make_envelope(DEK, layout, OID, WRAPPED, CTX, bucket, key, sealed=contents)  # type: ignore[arg-type]


def seal_of(e: Envelope) -> str:
    return encode_metadata(e)["s3proxy-seal"]


def test_v2_round_trip() -> None:
    e = env2()
    meta = encode_metadata(e)
    assert set(meta) == set(ALL_KEYS) and meta["s3proxy-v"] == "2"
    d = decode_metadata(meta)
    assert d == e and d is not None and d.version == SEALED_VERSION
    verify_binding(d, DEK, "photos", "a/b.jpg")
    assert open_seal(d, DEK) == CONTENTS
    assert open_seal(env(), DEK) is None  # v1: nothing sealed
    # fresh salt per envelope: the same contents never give the same block
    assert seal_of(env2()) != seal_of(env2())


def test_v2_nothing_in_the_clear() -> None:
    meta = encode_metadata(env2(SealContents({"patient": "jane-doe-marker"})))
    text = json.dumps(meta)
    assert "patient" not in text and "jane-doe-marker" not in text


def _with_seal(e: Envelope, seal: bytes) -> Envelope:
    return dataclasses.replace(e, seal=seal)


def test_v2_tampered_seal_fails() -> None:
    e = env2()
    for i in (0, 23, 24, len(e.seal) - 17, len(e.seal) - 1):  # salt, ciphertext, tag
        bad = bytearray(e.seal)
        bad[i] ^= 1
        with pytest.raises(SealAuthenticationFailed):
            open_seal(_with_seal(e, bytes(bad)), DEK)
    with pytest.raises(SealAuthenticationFailed):
        open_seal(e, OTHER_DEK)
    # the block of another object (another binding as associated data) fails, even with the same DEK
    other = env2(key="other")
    with pytest.raises(SealAuthenticationFailed):
        open_seal(_with_seal(e, other.seal), DEK)


def test_v2_seal_length_is_bound() -> None:
    e = env2()
    for seal in (e.seal[:-1], e.seal + b"\x00", e.seal[:40]):
        with pytest.raises(BindingMismatch):
            verify_binding(_with_seal(e, seal), DEK, "photos", "a/b.jpg")


def test_v2_malformed_metadata() -> None:
    meta = encode_metadata(env2())
    with pytest.raises(MalformedMetadata):
        decode_metadata({k: v for k, v in meta.items() if k != "s3proxy-seal"})
    with pytest.raises(MalformedMetadata):
        decode_metadata({**meta, "s3proxy-seal": "AAAA"})  # shorter than salt + tag
    with pytest.raises(MalformedMetadata):
        decode_metadata({**meta, "s3proxy-seal": meta["s3proxy-seal"] + "="})
    with pytest.raises(MalformedMetadata):  # v1 label with a sealed block
        decode_metadata({**meta, "s3proxy-v": "1"})


def test_v2_downgrade_to_v1_fails_the_binding() -> None:
    """A v2 object relabelled v1 (sealed block dropped, plaintext metadata added) does not verify."""
    meta = encode_metadata(env2())
    del meta["s3proxy-seal"]
    meta["s3proxy-v"] = "1"
    d = decode_metadata(meta)
    assert d is not None and d.version == 1
    with pytest.raises(BindingMismatch):
        verify_binding(d, DEK, "photos", "a/b.jpg")
    # and a v1 object relabelled v2 with any block
    m1 = {**encode_metadata(env()), "s3proxy-v": "2", "s3proxy-seal": seal_of(env2())}
    d1 = decode_metadata(m1)
    assert d1 is not None
    with pytest.raises(BindingMismatch):
        verify_binding(d1, DEK, "photos", "a/b.jpg")


def _forge_seal(e: Envelope, plaintext: bytes) -> Envelope:
    """A block holding ``plaintext`` that authenticates (a writer who has the DEK: only s3proxy)."""
    from s3proxy.crypto import envelope as envmod
    from s3proxy.crypto import seal as sealmod

    salt = bytes(24)
    size = len(plaintext) + 40
    binding = envmod._binding_mac(DEK, 2, e.layout, e.object_id, e.wrapped, e.context, "photos", "a/b.jpg", size)
    aead, nonce = sealmod._seal_cipher(DEK, salt)
    return dataclasses.replace(e, binding=binding, seal=salt + aead.encrypt(nonce, plaintext, binding))


@pytest.mark.parametrize(
    "plaintext",
    [b"", b"[]", b'{"m":{}}', b'{"x":1}', b'{"m":{"a":1}}', b'{"m": {"a":"b"}}', b'{"e":3}',
     b'{"c":{"alg":"CRC32"}}', '{"m":{"ü":"x"}}'.encode(), b'{"m":{"b":"1","a":"2"}}', b"\xff"],
)
def test_v2_non_canonical_contents_refused(plaintext: bytes) -> None:
    forged = _forge_seal(env2(), plaintext)
    verify_binding(forged, DEK, "photos", "a/b.jpg")
    with pytest.raises(MalformedMetadata):
        open_seal(forged, DEK)


def test_v2_rebind_keeps_and_replaces_contents() -> None:
    e = env2()
    copy = rebind(e, DEK, "archive", "x/y")
    verify_binding(copy, DEK, "archive", "x/y")
    assert open_seal(copy, DEK) == CONTENTS and copy.seal != e.seal
    rewrapped = rebind(e, DEK, "photos", "a/b.jpg", wrapped=WrappedKey("local", "k2", "AES256-GCM", bytes(60)))
    assert open_seal(rewrapped, DEK) == CONTENTS
    replaced = rebind(e, DEK, "photos", "a/b.jpg", sealed=SealContents({"new": "1"}))
    assert open_seal(replaced, DEK) == SealContents({"new": "1"})
    upgraded = rebind(env(), DEK, "photos", "a/b.jpg", sealed=SealContents({"m": "1"}))
    assert upgraded.version == 2 and open_seal(upgraded, DEK) == SealContents({"m": "1"})
    assert rebind(env(), DEK, "photos", "x").version == 1
    with pytest.raises(SealAuthenticationFailed):  # a bad source block is never re-sealed
        rebind(_with_seal(e, e.seal[:-1] + bytes([e.seal[-1] ^ 1])), DEK, "archive", "x/y")


def test_v2_budget_is_the_s3_limit() -> None:
    base = sum(len(k) + len(v) for k, v in encode_metadata(env2(SealContents())).items())
    assert base < 360  # local key, empty block
    fits = env2(SealContents({"a": "v" * 1250}))
    assert sum(len(k) + len(v) for k, v in encode_metadata(fits).items()) <= 2048
    with pytest.raises(MetadataTooLarge):
        encode_metadata(env2(SealContents({"a": "v" * 1400})))
