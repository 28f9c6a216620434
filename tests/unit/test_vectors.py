"""Test vectors: Wycheproof Cobblestone-256 (C2SP) and the project's own (docs/FORMAT.md 6).

The project's vectors are checked three ways: the JSON equals what the code
generates now, an independent reference implementation of the spec written
here (straight from docs/FORMAT.md, using only HKDF / AES-GCM / HMAC
primitives) reproduces them, and the production decryptors read them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.cobblestone import Cobblestone256Decryptor
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from s3proxy.crypto import format as fmt
from s3proxy.crypto.envelope import decode_metadata, verify_binding
from s3proxy.crypto.errors import FormatError, UnsupportedFormatVersion
from s3proxy.crypto.format import KPartDecryptor, SDecryptor, SRangeDecryptor
from s3proxy.crypto.sizes import CHUNK_SIZE, S_FULL_CHUNK_CT, S_HEADER_SIZE, s_plaintext_size, s_span
from s3proxy.crypto.upload_token import decode_upload_token, verify_upload_token
from s3proxy.keys.base import WrappedKey

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
WYCHEPROOF = json.loads((VECTORS / "c2sp_chunked_encryption_aes_256_gcm_test.json").read_text())
OWN = json.loads((VECTORS / "s3proxy_format_v1.json").read_text(encoding="utf-8"))


def wycheproof_tests() -> Iterator[Any]:
    for group in WYCHEPROOF["testGroups"]:
        assert group["aead"] == "AEAD_AES_256_GCM"
        for t in group["tests"]:
            yield pytest.param(t, id=f"tc{t['tcId']}-{'+'.join(t['flags']) or 'plain'}")


def test_all_wycheproof_vectors_present() -> None:
    assert WYCHEPROOF["numberOfTests"] == 35
    assert len(list(wycheproof_tests())) == 35


class Vector:
    def __init__(self, t: dict[str, Any]) -> None:
        self.t = t
        self.key = bytes.fromhex(t["key"])
        self.ctx = bytes.fromhex(t["ctx"])
        self.ct = zlib.decompress(bytes.fromhex(t["ct"]))
        self.valid = t["result"] == "valid"
        self.flags = set(t["flags"])
        self.msg_len: int | None = t.get("msgLength")

    def check_message(self, msg: bytes) -> None:
        assert len(msg) == self.msg_len
        assert hashlib.sha512(msg).hexdigest() == self.t["msgSha512"]

    def raw_prefix(self) -> bytes:
        """Decrypt chunk by chunk with the vector's own aeadKey/baseNonce (raw
        mode) up to the first failure; the longest valid prefix."""
        aead = AESGCM(bytes.fromhex(self.t["aeadKey"]))
        base = int.from_bytes(bytes.fromhex(self.t["baseNonce"]), "big")
        out = bytearray()
        body = self.ct[S_HEADER_SIZE:]
        for k, off in enumerate(range(0, len(body), S_FULL_CHUNK_CT)):
            try:
                out += aead.decrypt((base ^ k).to_bytes(12, "big"), body[off : off + S_FULL_CHUNK_CT], None)
            except InvalidTag:
                break
        return bytes(out)


def range_read(v: Vector, a: int, b: int, piece: int = 7000) -> tuple[bytes, BaseException | None]:
    """Read plaintext [a, b) with the project's range decryptor; what it
    released and the error it raised, if any."""
    got = bytearray()
    try:
        p = s_plaintext_size(len(v.ct))
        span = s_span(p, a, min(b, p))
        dec = SRangeDecryptor._raw(v.key, v.ctx, v.ct[:S_HEADER_SIZE], p, span)
        body = v.ct[span.ct_start : span.ct_end]
        for i in range(0, len(body), piece):
            got += dec.update(body[i : i + piece])
        got += dec.finalize()
    except (FormatError, ValueError) as exc:
        return bytes(got), exc
    return bytes(got), None


def interesting_ranges(p: int) -> list[tuple[int, int]]:
    edges = {x for k in range(1, p // CHUNK_SIZE + 1) for x in (k * CHUNK_SIZE - 1, k * CHUNK_SIZE, k * CHUNK_SIZE + 1)}
    pts = sorted(x for x in {0, 1, p // 2, p - 1, p} | edges if 0 <= x <= p)[:40]
    rs = {(0, p), (0, 0), (p, p)}
    rs.update((a, b) for a in pts for b in pts if a <= b and (b - a < 3 * CHUNK_SIZE))
    return sorted(rs)[:60] + [(0, p)]


@pytest.mark.parametrize("t", wycheproof_tests())
def test_wycheproof_library_decryptor(t: dict[str, Any]) -> None:
    v = Vector(t)
    if v.valid:
        dec = Cobblestone256Decryptor(v.key, v.ctx)
        v.check_message(dec.update(v.ct) + dec.finalize())
        return
    with pytest.raises((InvalidTag, ValueError)):
        dec = Cobblestone256Decryptor(v.key, v.ctx)
        dec.update(v.ct)
        dec.finalize()


@pytest.mark.parametrize("t", wycheproof_tests())
def test_wycheproof_derivation(t: dict[str, Any]) -> None:
    """Our HKDF key schedule gives the vector's aeadKey, baseNonce and commitment."""
    v = Vector(t)
    if "aeadKey" not in t:
        return
    okm = fmt._cobblestone_okm(v.key, v.ctx, v.ct[:24])
    assert okm[:32].hex() == t["aeadKey"]
    assert okm[32:44].hex() == t["baseNonce"]
    assert okm[44:] == v.ct[24:56]


@pytest.mark.parametrize("t", wycheproof_tests())
def test_wycheproof_range_decryptor_whole(t: dict[str, Any]) -> None:
    v = Vector(t)
    got, err = range_read(v, 0, 1 << 40)
    if v.valid:
        assert err is None, err
        v.check_message(got)
        return
    assert err is not None, "invalid vector decrypted"
    if "HeaderFailure" in v.flags:
        assert got == b""
        assert isinstance(err, (fmt.CommitmentMismatch, fmt.Truncated, fmt.InvalidCiphertextSize, ValueError))
    # never more than the valid prefix (nothing when there is none)
    prefix = v.raw_prefix()[: v.msg_len or 0] if "PartialPlaintext" in v.flags else b""
    assert prefix.startswith(got)


@pytest.mark.parametrize("t", wycheproof_tests())
def test_wycheproof_range_decryptor_ranges(t: dict[str, Any]) -> None:
    v = Vector(t)
    if v.valid:
        dec = Cobblestone256Decryptor(v.key, v.ctx)
        msg = dec.update(v.ct) + dec.finalize()
        for a, b in interesting_ranges(len(msg)):
            got, err = range_read(v, a, b, piece=4099)
            assert err is None, (a, b, err)
            assert got == msg[a:b], (a, b)
        return
    try:
        p = s_plaintext_size(len(v.ct))
    except fmt.InvalidCiphertextSize:
        p = max(len(v.ct) - S_HEADER_SIZE, 0)
    prefix = b""
    if "PartialPlaintext" in v.flags:
        assert v.msg_len is not None
        prefix = v.raw_prefix()[: v.msg_len]
        v.check_message(prefix)
    final_chunk_start = (p // CHUNK_SIZE) * CHUNK_SIZE
    for a, b in interesting_ranges(p):
        got, err = range_read(v, a, b)
        if err is not None:  # released only bytes of the valid prefix, if any
            assert got == prefix[a : a + len(got)]
            continue
        # a range that succeeds on an invalid message either lies in its valid
        # prefix, or (ValidFinalChunk) reads only the validly encrypted final chunk
        if b <= len(prefix):
            assert got == prefix[a:b]
        else:
            assert "ValidFinalChunk" in v.flags, (a, b)
            assert a >= final_chunk_start, (a, b)


@pytest.mark.parametrize("t", wycheproof_tests())
def test_wycheproof_range_decryptor_keeps_failing(t: dict[str, Any]) -> None:
    v = Vector(t)
    if v.valid:
        return
    try:
        p = s_plaintext_size(len(v.ct))
        dec = SRangeDecryptor._raw(v.key, v.ctx, v.ct[:S_HEADER_SIZE], p, s_span(p, 0, p))
    except (FormatError, ValueError):
        return
    with pytest.raises(FormatError) as first:
        dec.update(v.ct[S_HEADER_SIZE:])
        dec.finalize()
    for call in (lambda: dec.update(b""), dec.finalize):
        with pytest.raises(type(first.value)):
            call()


@pytest.mark.parametrize("t", wycheproof_tests())
def test_wycheproof_seeded_encryptor_reproduces_valid_vectors(t: dict[str, Any]) -> None:
    """Our salt-injected Cobblestone encoder reproduces the reference ciphertexts."""
    v = Vector(t)
    if not v.valid:
        return
    dec = Cobblestone256Decryptor(v.key, v.ctx)
    msg = dec.update(v.ct) + dec.finalize()
    enc = fmt._SeededCobblestone(v.key, v.ctx, v.ct[:24])
    assert bytes(enc.update(memoryview(msg)) + enc.finalize()) == v.ct


# -- the project's own vectors ----------------------------------------------------------------


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("s3proxy_vector_generator", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_own_vectors_are_up_to_date() -> None:
    """The stored vectors are exactly what the code produces (regenerate with generate.py)."""
    gen = load_generator()
    assert (VECTORS / "s3proxy_format_v1.json").read_text(encoding="utf-8") == gen.render()


DEK = bytes.fromhex(OWN["dek"])
OBJECT_ID = bytes.fromhex(OWN["object_id"])


def plaintext(n: int) -> bytes:
    return (bytes(range(251)) * (n // 251 + 1))[:n]


def ref_expand(prk: bytes, info: bytes, length: int) -> bytes:
    return HKDFExpand(hashes.SHA512(), length, info).derive(prk)


def ref_chunks(aead: AESGCM, base_nonce: bytes, pieces: list[bytes]) -> bytes:
    base = int.from_bytes(base_nonce, "big")
    return b"".join(aead.encrypt((base ^ k).to_bytes(12, "big"), pc, None) for k, pc in enumerate(pieces))


@pytest.mark.parametrize("v", OWN["s"], ids=lambda v: f"S-{v['pt_len']}")
def test_own_s_vectors_against_reference(v: dict[str, Any]) -> None:
    p, salt = v["pt_len"], bytes.fromhex(v["salt"])
    context = b"s3proxy.dev/object@v1" + b"\x00" + b"S" + b"\x00" + OBJECT_ID
    assert context.hex() == v["context"]
    okm = ref_expand(DEK, b"c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM\x00" + salt + context, 76)
    assert (okm[:32].hex(), okm[32:44].hex(), okm[44:].hex()) == (v["aead_key"], v["base_nonce"], v["commitment"])
    pt = plaintext(p)
    n = p // 16384 + 1
    pieces = [pt[k * 16384 : (k + 1) * 16384] for k in range(n)]
    ct = salt + okm[44:] + ref_chunks(AESGCM(okm[:32]), okm[32:44], pieces)
    assert len(ct) == v["ct_len"] == 56 + p + 16 * n
    assert hashlib.sha256(ct).hexdigest() == v["ct_sha256"]
    assert ct[:56].hex() == v["header"]
    assert ct[56 + (n - 1) * 16400 :].hex() == v["final_chunk"]
    if "ct" in v:
        assert ct.hex() == v["ct"]
    # the library and the production decryptors read it
    lib = Cobblestone256Decryptor(DEK, context)
    assert lib.update(ct) + lib.finalize() == pt
    dec = SDecryptor(DEK, OBJECT_ID, len(ct))
    assert dec.update(ct) + dec.finalize() == pt


@pytest.mark.parametrize("v", OWN["k"], ids=lambda v: f"K-{v['part_number']}-{v['pt_len']}")
def test_own_k_vectors_against_reference(v: dict[str, Any]) -> None:
    p, n, salt = v["pt_len"], v["part_number"], bytes.fromhex(v["salt"])
    info = b"s3proxy.dev/part@v1" + b"\x00" + salt + OBJECT_ID + struct.pack(">I", n) + struct.pack(">Q", p)
    assert len(info) == 72
    okm = ref_expand(DEK, info, 76)
    assert (okm[:32].hex(), okm[32:44].hex(), okm[44:].hex()) == (v["aead_key"], v["base_nonce"], v["commitment"])
    cs = -(-p // 1024)
    assert cs == v["chunk_size"]
    pt = plaintext(p)
    pieces = [pt[min(k * cs, p) : min((k + 1) * cs, p)] for k in range(1024)]
    header = bytes([1]) + b"K" + struct.pack(">I", n) + struct.pack(">Q", p) + salt + okm[44:]
    assert len(header) == 70
    part = header + ref_chunks(AESGCM(okm[:32]), okm[32:44], pieces)
    assert len(part) == v["ct_len"] == p + 70 + 16 * 1024
    assert hashlib.sha256(part).hexdigest() == v["ct_sha256"]
    assert header.hex() == v["header"]
    assert part[70 : 70 + len(pieces[0]) + 16].hex() == v["first_chunk"]
    assert part[len(part) - len(pieces[-1]) - 16 :].hex() == v["last_chunk"]
    dec = KPartDecryptor(DEK, OBJECT_ID, part[:70], len(part), expected_part_number=n)
    assert dec.update(part[70:]) + dec.finalize() == pt


def ref_b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ref_pct(s: str) -> str:
    safe = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/@+=")
    return "".join(chr(b) if chr(b) in safe else f"%{b:02X}" for b in s.encode())


def ref_canonical_json(ctx: dict[str, str]) -> bytes:
    return json.dumps(ctx, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def ref_lp(x: bytes) -> bytes:
    return struct.pack(">I", len(x)) + x


@pytest.mark.parametrize("v", OWN["envelope"], ids=lambda v: v["comment"])
def test_own_envelope_vectors_against_reference(v: dict[str, Any]) -> None:
    oid = bytes.fromhex(v["object_id"])
    w = v["wrapped"]
    blob = bytes.fromhex(w["blob"])
    ctx_json = ref_canonical_json(v["context"])
    label = b"s3proxy.dev/binding@v1"
    mac_key = ref_expand(DEK, label, 32)
    msg = (
        label + b"\x00" + bytes([1, ord(v["layout"])]) + oid
        + ref_lp(v["bucket"].encode()) + ref_lp(v["key"].encode())
        + ref_lp(w["backend"].encode()) + ref_lp(w["key_id"].encode()) + ref_lp(w["algorithm"].encode())
        + ref_lp(blob) + ref_lp(ctx_json)
    )
    binding = hmac.new(mac_key, msg, hashlib.sha256).digest()
    assert binding.hex() == v["binding"]
    assert quote("a b;ü%", safe=":/@+=") == ref_pct("a b;ü%")
    expected_meta = {
        "s3proxy-v": "1",
        "s3proxy-layout": v["layout"],
        "s3proxy-id": ref_b64u(oid),
        "s3proxy-key": ";".join((ref_pct(w["backend"]), ref_pct(w["key_id"]), ref_pct(w["algorithm"]), ref_b64u(blob))),
        "s3proxy-ctx": ref_b64u(ctx_json),
        "s3proxy-mac": ref_b64u(binding),
    }
    assert v["metadata"] == expected_meta
    token_body = (
        b"\x02" + oid
        + struct.pack(">B", len(w["backend"].encode())) + w["backend"].encode()
        + struct.pack(">H", len(w["key_id"].encode())) + w["key_id"].encode()
        + struct.pack(">B", len(w["algorithm"].encode())) + w["algorithm"].encode()
        + struct.pack(">H", len(blob)) + blob
        + struct.pack(">H", len(ctx_json)) + ctx_json
    )
    token_label = b"s3proxy.dev/upload-token@v2"
    token_tag = hmac.new(
        ref_expand(DEK, token_label, 32),
        token_label + b"\x00" + ref_lp(v["bucket"].encode()) + ref_lp(v["key"].encode())
        + ref_lp(v["backend_upload_id"].encode()) + token_body,
        hashlib.sha256,
    ).digest()
    assert v["upload_token"] == ref_b64u(token_body + token_tag)
    assert v["upload_token_v1"] == ref_b64u(b"\x01" + token_body[1:])
    # and the production decoder reads both
    env = decode_metadata(v["metadata"])
    assert env is not None
    assert (env.layout, env.object_id, env.context) == (v["layout"], oid, v["context"])
    assert env.wrapped == WrappedKey(w["backend"], w["key_id"], w["algorithm"], blob)
    verify_binding(env, DEK, v["bucket"], v["key"])
    decoded = decode_upload_token(v["upload_token"])
    assert decoded[:3] == (oid, env.wrapped, env.context)
    verify_upload_token(decoded, DEK, v["bucket"], v["key"], v["backend_upload_id"])
    with pytest.raises(UnsupportedFormatVersion):  # untagged v1 tokens are never trusted again
        decode_upload_token(v["upload_token_v1"])


# -- envelope v2 (docs/FORMAT.md 8): the sealed block -----------------------------------------

OWN_V2 = json.loads((VECTORS / "s3proxy_format_v2.json").read_text(encoding="ascii"))


def test_own_v2_vectors_are_up_to_date() -> None:
    gen = load_generator()
    assert (VECTORS / "s3proxy_format_v2.json").read_text(encoding="ascii") == gen.render_v2()


def ref_seal_plaintext(c: dict[str, Any]) -> bytes:
    obj = {k: v for k, v in c.items() if not (k == "m" and not v)}
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@pytest.mark.parametrize("v", OWN_V2["envelope"], ids=lambda v: v["comment"])
def test_own_v2_envelope_vectors_against_reference(v: dict[str, Any]) -> None:
    from s3proxy.crypto.envelope import SealContents, open_seal

    oid = bytes.fromhex(v["object_id"])
    w = v["wrapped"]
    blob = bytes.fromhex(w["blob"])
    ctx_json = ref_canonical_json(v["context"])
    plaintext = ref_seal_plaintext(v["seal_contents"])
    assert plaintext == v["seal_plaintext"].encode()
    salt = bytes.fromhex(v["seal_salt"])
    label = b"s3proxy.dev/binding@v1"
    msg = (
        label + b"\x00" + bytes([2, ord(v["layout"])]) + oid
        + ref_lp(v["bucket"].encode()) + ref_lp(v["key"].encode())
        + ref_lp(w["backend"].encode()) + ref_lp(w["key_id"].encode()) + ref_lp(w["algorithm"].encode())
        + ref_lp(blob) + ref_lp(ctx_json)
        + struct.pack(">I", 24 + len(plaintext) + 16)
    )
    binding = hmac.new(ref_expand(DEK, label, 32), msg, hashlib.sha256).digest()
    assert binding.hex() == v["binding"]
    okm = ref_expand(DEK, b"s3proxy.dev/seal@v2" + salt, 44)
    seal = salt + AESGCM(okm[:32]).encrypt(okm[32:], plaintext, binding)
    assert v["metadata"] == {
        "s3proxy-v": "2",
        "s3proxy-layout": v["layout"],
        "s3proxy-id": ref_b64u(oid),
        "s3proxy-key": ";".join((ref_pct(w["backend"]), ref_pct(w["key_id"]), ref_pct(w["algorithm"]), ref_b64u(blob))),
        "s3proxy-ctx": ref_b64u(ctx_json),
        "s3proxy-mac": ref_b64u(binding),
        "s3proxy-seal": ref_b64u(seal),
    }
    # the production reader
    env = decode_metadata(v["metadata"])
    assert env is not None and env.version == 2
    verify_binding(env, DEK, v["bucket"], v["key"])
    c = v["seal_contents"]
    assert open_seal(env, DEK) == SealContents(c["m"], c.get("c"), c.get("e"))
    # the binding is the seal's associated data: the same block under another placement fails
    with pytest.raises(FormatError):
        verify_binding(env, DEK, v["bucket"], v["key"] + "x")


@pytest.mark.parametrize("v", OWN["envelope"], ids=lambda v: v["comment"])
def test_v1_vectors_still_read_as_v1(v: dict[str, Any]) -> None:
    from s3proxy.crypto.envelope import open_seal

    env = decode_metadata(v["metadata"])
    assert env is not None and env.version == 1 and env.seal == b""
    verify_binding(env, DEK, v["bucket"], v["key"])
    assert open_seal(env, DEK) is None
    # a v1 envelope relabelled v2 (no sealed block) is refused, and so is a v1 one with a block
    with pytest.raises(FormatError):
        decode_metadata({**v["metadata"], "s3proxy-v": "2"})
    with pytest.raises(FormatError):
        decode_metadata({**v["metadata"], "s3proxy-seal": ref_b64u(bytes(48))})
