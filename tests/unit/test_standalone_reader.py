"""The standalone reader (tools/s3proxy_reader.py) against every vector and against s3proxy's own writer.

The reader is written from docs/FORMAT.md and must not import s3proxy. Here it
decrypts every vector that should decrypt (Wycheproof Cobblestone-256, the
project's S bodies and K parts, whose ciphertext is rebuilt from the spec and
checked against the stored SHA-256), refuses every one that should fail, and
reads objects produced by s3proxy's encryptors and envelope code (v1 and v2)
with a real local-keyring wrap, tampered in every region.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import hashlib
import importlib.util
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "s3proxy_reader.py"
VECTORS = ROOT / "tests" / "vectors"
WYCHEPROOF = json.loads((VECTORS / "c2sp_chunked_encryption_aes_256_gcm_test.json").read_text())
OWN = json.loads((VECTORS / "s3proxy_format_v1.json").read_text(encoding="utf-8"))
DEK = bytes.fromhex(OWN["dek"])
OBJECT_ID = bytes.fromhex(OWN["object_id"])


def load_reader() -> ModuleType:
    spec = importlib.util.spec_from_file_location("s3proxy_reader", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["s3proxy_reader"] = module
    spec.loader.exec_module(module)
    return module


R = load_reader()


class Trickle(io.RawIOBase):
    """A stream that returns at most ``step`` bytes per read (short reads everywhere)."""

    def __init__(self, data: bytes, step: int = 4099) -> None:
        self._data, self._pos, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._step if n < 0 else min(n, self._step)
        out = self._data[self._pos : self._pos + n]
        self._pos += len(out)
        return out


def drain(gen: Iterator[bytes]) -> tuple[bytes, BaseException | None]:
    """What a reader released before (and the error it raised, if any)."""
    got = bytearray()
    try:
        for piece in gen:
            got += piece
    except R.ReaderError as exc:
        return bytes(got), exc
    return bytes(got), None


# -- independence ---------------------------------------------------------------------------


def test_reader_imports_only_stdlib_and_cryptography() -> None:
    tree = ast.parse(TOOL.read_text())
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    foreign = {r for r in roots if r not in sys.stdlib_module_names} - {"cryptography", "boto3", "__future__"}
    assert not foreign, foreign
    assert "s3proxy" not in roots
    # boto3 only inside main(), for --aws-kms: importing the module never needs it
    top = {n.names[0].name for n in tree.body if isinstance(n, ast.Import)}
    assert "boto3" not in top


def test_reader_runs_in_an_isolated_interpreter_without_s3proxy() -> None:
    code = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('r', sys.argv[1]); "
        "m = importlib.util.module_from_spec(spec); sys.modules['r'] = m; spec.loader.exec_module(m); "
        "assert not [k for k in sys.modules if k.startswith('s3proxy')]; print('ok')"
    )
    cp = subprocess.run([sys.executable, "-I", "-c", code, str(TOOL)], capture_output=True, text=True, timeout=60)
    assert cp.stdout.strip() == "ok", cp.stderr


# -- Wycheproof Cobblestone-256 -----------------------------------------------------------------


def wycheproof() -> Iterator[Any]:
    for group in WYCHEPROOF["testGroups"]:
        for t in group["tests"]:
            yield pytest.param(t, id=f"tc{t['tcId']}-{'+'.join(t['flags']) or 'plain'}")


def valid_prefix(t: dict[str, Any], ct: bytes) -> bytes:
    """The longest validly encrypted prefix (vector's own key and nonce), cut to msgLength."""
    if "PartialPlaintext" not in t["flags"]:
        return b""
    aead = AESGCM(bytes.fromhex(t["aeadKey"]))
    base = int.from_bytes(bytes.fromhex(t["baseNonce"]), "big")
    out = bytearray()
    body = ct[56:]
    for k, off in enumerate(range(0, len(body), 16400)):
        try:
            out += aead.decrypt((base ^ k).to_bytes(12, "big"), body[off : off + 16400], None)
        except Exception:  # noqa: BLE001 - the first failing chunk ends the prefix
            break
    return bytes(out)[: t["msgLength"]]


@pytest.mark.parametrize("sized", [True, False], ids=["sized", "stream"])
@pytest.mark.parametrize("t", wycheproof())
def test_wycheproof(t: dict[str, Any], sized: bool) -> None:
    key, ctx = bytes.fromhex(t["key"]), bytes.fromhex(t["ctx"])
    ct = zlib.decompress(bytes.fromhex(t["ct"]))
    got, err = drain(R.cobblestone_chunks(key, ctx, Trickle(ct), len(ct) if sized else None))
    if t["result"] == "valid":
        assert err is None, err
        assert len(got) == t["msgLength"]
        assert hashlib.sha512(got).hexdigest() == t["msgSha512"]
        return
    assert err is not None, "an invalid vector decrypted"
    if "HeaderFailure" in t["flags"]:
        assert got == b""
        assert isinstance(err, (R.CommitmentMismatch, R.Truncated, R.InvalidCiphertextSize, R.KeyUnwrapFailed))
    assert valid_prefix(t, ct).startswith(got)  # never more than the authenticated prefix


def test_all_35_wycheproof_vectors_run() -> None:
    assert len(list(wycheproof())) == WYCHEPROOF["numberOfTests"] == 35


# -- the project's vectors: S bodies and K parts rebuilt from the spec -----------------------------------


def plaintext(n: int) -> bytes:
    return (bytes(range(251)) * (n // 251 + 1))[:n]


def seal_chunks(key: bytes, base_nonce: bytes, pieces: list[bytes]) -> bytes:
    aead, base = AESGCM(key), int.from_bytes(base_nonce, "big")
    return b"".join(aead.encrypt((base ^ k).to_bytes(12, "big"), pc, None) for k, pc in enumerate(pieces))


def s_vector_ct(v: dict[str, Any]) -> bytes:
    p = v["pt_len"]
    pt = plaintext(p)
    pieces = [pt[k * 16384 : (k + 1) * 16384] for k in range(p // 16384 + 1)]
    ct = bytes.fromhex(v["header"]) + seal_chunks(bytes.fromhex(v["aead_key"]), bytes.fromhex(v["base_nonce"]), pieces)
    assert hashlib.sha256(ct).hexdigest() == v["ct_sha256"]
    if "ct" in v:
        assert ct.hex() == v["ct"]
    return ct


def k_vector_part(v: dict[str, Any]) -> bytes:
    p, cs = v["pt_len"], v["chunk_size"]
    pt = plaintext(p)
    pieces = [pt[min(k * cs, p) : min((k + 1) * cs, p)] for k in range(1024)]
    part = bytes.fromhex(v["header"]) + seal_chunks(bytes.fromhex(v["aead_key"]), bytes.fromhex(v["base_nonce"]), pieces)
    assert hashlib.sha256(part).hexdigest() == v["ct_sha256"]
    return part


@pytest.mark.parametrize("v", OWN["s"], ids=lambda v: f"S-{v['pt_len']}")
def test_own_s_vectors(v: dict[str, Any]) -> None:
    ct = s_vector_ct(v)
    assert R.s_plaintext_size(len(ct)) == v["pt_len"]
    for size in (len(ct), None):
        got, err = drain(R.s_body(DEK, OBJECT_ID, Trickle(ct, 1000), size))
        assert err is None and got == plaintext(v["pt_len"])
    # the wrong object id or DEK is refused before any chunk
    got, err = drain(R.s_body(DEK, bytes(16), io.BytesIO(ct), len(ct)))
    assert isinstance(err, R.CommitmentMismatch) and got == b""
    got, err = drain(R.s_body(bytes(32), OBJECT_ID, io.BytesIO(ct), len(ct)))
    assert isinstance(err, R.CommitmentMismatch) and got == b""


def tamper_offsets(n: int) -> list[int]:
    return sorted({0, 23, 24, 55, 56, n // 2, n - 17, n - 16, n - 1} & set(range(n)))


@pytest.mark.parametrize("v", OWN["s"], ids=lambda v: f"S-{v['pt_len']}")
def test_own_s_vectors_tampered_truncated_extended(v: dict[str, Any]) -> None:
    ct = s_vector_ct(v)
    for off in tamper_offsets(len(ct)):
        bad = bytearray(ct)
        bad[off] ^= 0x01
        got, err = drain(R.s_body(DEK, OBJECT_ID, io.BytesIO(bytes(bad)), len(bad)))
        assert isinstance(err, (R.CommitmentMismatch, R.ChunkAuthenticationFailed)), off
        assert len(got) <= (off - 56) // 16400 * 16384 if off >= 56 else got == b""
    for cut in (1, 16, 17, len(ct) - 56, len(ct) - 1):
        short = ct[: len(ct) - cut]
        for size in (len(short), None, len(ct)):
            _, err = drain(R.s_body(DEK, OBJECT_ID, io.BytesIO(short), size))
            assert err is not None, (cut, size)
    for extra in (b"\x00", ct[56:72], bytes(16400)):
        _, err = drain(R.s_body(DEK, OBJECT_ID, io.BytesIO(ct + extra), None))
        assert isinstance(err, (R.TrailingData, R.Truncated, R.ChunkAuthenticationFailed))
        _, err = drain(R.s_body(DEK, OBJECT_ID, io.BytesIO(ct + extra), len(ct)))
        assert isinstance(err, R.TrailingData)


@pytest.mark.parametrize("v", OWN["k"], ids=lambda v: f"K-{v['part_number']}-{v['pt_len']}")
def test_own_k_vectors(v: dict[str, Any]) -> None:
    part = k_vector_part(v)
    src = io.BytesIO(part)
    got, err = drain(R.k_part(DEK, OBJECT_ID, src.read(70), src))
    assert err is None and got == plaintext(v["pt_len"])
    got, err = drain(R.k_object(DEK, OBJECT_ID, Trickle(part, 777), 1))
    assert err is None and got == plaintext(v["pt_len"])
    got, err = drain(R.k_object(DEK, OBJECT_ID, io.BytesIO(part), None))
    assert err is None and got == plaintext(v["pt_len"])


@pytest.mark.parametrize("v", OWN["k"], ids=lambda v: f"K-{v['part_number']}-{v['pt_len']}")
def test_own_k_vectors_refused_when_altered(v: dict[str, Any]) -> None:
    part = k_vector_part(v)
    n = len(part)
    for off in sorted({0, 1, 2, 5, 6, 13, 14, 37, 38, 69, 70, n // 2, n - 1}):
        bad = bytearray(part)
        bad[off] ^= 0x01
        _, err = drain(R.k_object(DEK, OBJECT_ID, io.BytesIO(bytes(bad)), 1))
        assert isinstance(
            err, (R.UnsupportedFormatVersion, R.InvalidHeader, R.CommitmentMismatch, R.ChunkAuthenticationFailed,
                  R.Truncated, R.TrailingData)
        ), off
    _, err = drain(R.k_object(DEK, OBJECT_ID, io.BytesIO(part[:-1]), 1))
    assert isinstance(err, R.Truncated)
    _, err = drain(R.k_object(DEK, OBJECT_ID, io.BytesIO(part + b"x"), 1))
    assert isinstance(err, R.TrailingData)
    _, err = drain(R.k_object(DEK, bytes(16), io.BytesIO(part), 1))
    assert isinstance(err, R.CommitmentMismatch)
    # a part moved to another number: the header is authenticated through the commitment
    moved = bytearray(part)
    moved[2:6] = struct.pack(">I", v["part_number"] % 10000 + 1)
    _, err = drain(R.k_object(DEK, OBJECT_ID, io.BytesIO(bytes(moved)), 1))
    assert isinstance(err, R.CommitmentMismatch)


def test_own_k_vectors_as_one_object() -> None:
    chosen = [v for v in OWN["k"] if not (v["part_number"] == 1 and v["pt_len"] == 0)]
    chosen.sort(key=lambda v: v["part_number"])
    parts = [k_vector_part(v) for v in chosen]
    whole = b"".join(plaintext(v["pt_len"]) for v in chosen)
    obj = b"".join(parts)
    got, err = drain(R.k_object(DEK, OBJECT_ID, Trickle(obj, 5000), len(parts)))
    assert err is None and got == whole
    # reordered, dropped (with and without the count), duplicated, one too many
    swapped = parts[1] + parts[0] + b"".join(parts[2:])
    assert isinstance(drain(R.k_object(DEK, OBJECT_ID, io.BytesIO(swapped), len(parts)))[1], R.PartOrderError)
    dropped = b"".join(parts[:-1])
    assert isinstance(drain(R.k_object(DEK, OBJECT_ID, io.BytesIO(dropped), len(parts)))[1], R.Truncated)
    dup = parts[0] + parts[0]
    assert isinstance(drain(R.k_object(DEK, OBJECT_ID, io.BytesIO(dup), 2))[1], R.PartOrderError)
    assert isinstance(drain(R.k_object(DEK, OBJECT_ID, io.BytesIO(obj), len(parts) - 1))[1], R.TrailingData)
    # without the count (a backend without "-N" ETags) a dropped last part is not detectable: documented
    got, err = drain(R.k_object(DEK, OBJECT_ID, io.BytesIO(dropped), None))
    assert err is None and got == b"".join(plaintext(v["pt_len"]) for v in chosen[:-1])


# -- envelope vectors -----------------------------------------------------------------------------


@pytest.mark.parametrize("v", OWN["envelope"], ids=lambda v: v["comment"])
def test_own_envelope_vectors(v: dict[str, Any]) -> None:
    meta = v["metadata"]
    env = R.parse_envelope(meta)
    w = v["wrapped"]
    assert (env.version, env.layout, env.object_id.hex()) == (1, v["layout"], v["object_id"])
    assert (env.backend, env.key_id, env.algorithm, env.blob.hex()) == (w["backend"], w["key_id"], w["algorithm"], w["blob"])
    assert env.context == v["context"]
    assert R.binding_mac(env, DEK, v["bucket"], v["key"]).hex() == v["binding"]
    R.verify_binding(env, DEK, v["bucket"], v["key"])
    # the same headers as a backend sends them
    headers = {"X-Amz-Meta-" + k.upper(): val for k, val in meta.items()}
    assert R.parse_envelope(headers) == env
    for bucket, key in ((v["bucket"] + "x", v["key"]), (v["bucket"], v["key"] + "x"), (v["key"], v["bucket"])):
        with pytest.raises(R.BindingMismatch):
            R.verify_binding(env, DEK, bucket, key)
    with pytest.raises(R.BindingMismatch):
        R.verify_binding(env, bytes(32), v["bucket"], v["key"])
    with pytest.raises(R.KeyUnwrapFailed):  # the vector blobs are not real wraps
        R.LocalKeyring({"k1": bytes(32)})(env)


def flip_b64u(text: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    raw[-1] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


@pytest.mark.parametrize("v", OWN["envelope"], ids=lambda v: v["comment"])
def test_own_envelope_vectors_altered(v: dict[str, Any]) -> None:
    meta = dict(v["metadata"])

    def refused(changed: dict[str, str], errors: tuple[type[BaseException], ...]) -> None:
        with pytest.raises(errors):
            env = R.parse_envelope(changed)
            R.verify_binding(env, DEK, v["bucket"], v["key"])

    bad = (R.MalformedMetadata, R.BindingMismatch)
    refused({**meta, "s3proxy-v": "3"}, (R.UnsupportedFormatVersion,))
    refused({**meta, "s3proxy-v": "2"}, (R.MalformedMetadata,))  # v2 needs its sealed block
    refused({**meta, "s3proxy-layout": "K" if meta["s3proxy-layout"] == "S" else "S"}, bad)
    refused({**meta, "s3proxy-layout": "X"}, bad)
    refused({**meta, "s3proxy-id": flip_b64u(meta["s3proxy-id"])}, bad)
    refused({**meta, "s3proxy-id": meta["s3proxy-id"] + "="}, bad)
    refused({**meta, "s3proxy-mac": flip_b64u(meta["s3proxy-mac"])}, bad)
    refused({**meta, "s3proxy-ctx": base64.urlsafe_b64encode(b'{"bucket":"evil"}').rstrip(b"=").decode()}, bad)
    refused({**meta, "s3proxy-ctx": base64.urlsafe_b64encode(b'{"bucket": "x"}').rstrip(b"=").decode()}, bad)
    refused({**meta, "s3proxy-key": meta["s3proxy-key"] + ";x"}, bad)
    refused({**meta, "s3proxy-key": meta["s3proxy-key"].replace(";", ";%41", 1)}, bad)  # non-canonical pct
    refused({**meta, "s3proxy-key": "other" + meta["s3proxy-key"]}, bad)
    for name in meta:
        refused({k: val for k, val in meta.items() if k != name}, bad)
    refused({**meta, "s3proxy-seal": "AAAA"}, bad)
    assert R.parse_envelope({"content-type": "text/plain", "x-amz-meta-user": "1"}) is None


V2_FILE = VECTORS / "s3proxy_format_v2.json"
V2 = json.loads(V2_FILE.read_text(encoding="utf-8"))["envelope"] if V2_FILE.exists() else []


@pytest.mark.skipif(not V2, reason="no envelope v2 vectors in this tree")
@pytest.mark.parametrize("v", V2, ids=lambda v: v["comment"][:60])
def test_own_envelope_v2_vectors(v: dict[str, Any]) -> None:
    meta = v["metadata"]
    env = R.parse_envelope(meta)
    assert (env.version, env.layout, env.object_id.hex()) == (2, v["layout"], v["object_id"])
    assert env.seal[:24].hex() == v["seal_salt"]
    assert R.binding_mac(env, DEK, v["bucket"], v["key"]).hex() == v["binding"]
    R.verify_binding(env, DEK, v["bucket"], v["key"])
    assert R.open_seal(env, DEK) == json.loads(v["seal_plaintext"])
    with pytest.raises(R.BindingMismatch):
        R.verify_binding(env, DEK, v["bucket"], v["key"] + "/x")
    with pytest.raises(R.SealAuthenticationFailed):
        R.open_seal(R.parse_envelope({**meta, "s3proxy-seal": flip_b64u(meta["s3proxy-seal"])}), DEK)
    with pytest.raises(R.SealAuthenticationFailed):
        R.open_seal(env, bytes(32))
    with pytest.raises(R.MalformedMetadata):
        R.parse_envelope({k: val for k, val in meta.items() if k != "s3proxy-seal"})
    with pytest.raises(R.MalformedMetadata):
        R.parse_envelope({**meta, "s3proxy-v": "1"})
    # a v2 envelope relabelled v1 without its block does not verify either
    v1 = {k: val for k, val in meta.items() if k != "s3proxy-seal"}
    with pytest.raises(R.BindingMismatch):
        R.verify_binding(R.parse_envelope({**v1, "s3proxy-v": "1"}), DEK, v["bucket"], v["key"])


# -- objects made by s3proxy's own writer, read by the standalone reader ------------------------------------


MASTER = bytes(range(32))


def s3proxy_object(layout: str, parts: list[int], *, sealed: dict[str, str] | None = None,
                   bucket: str = "bkt", key: str = "dir/obj") -> tuple[bytes, dict[str, str], str, bytes]:
    """(stored bytes, backend metadata, ETag, plaintext) written with s3proxy's code and a local master key."""
    from s3proxy.crypto.envelope import SealContents, encode_metadata, make_envelope
    from s3proxy.crypto.format import KPartEncryptor, SEncryptor
    from s3proxy.keys.local import LocalKeyBackend

    ctx = {"bucket": bucket}
    dk = asyncio.run(LocalKeyBackend({"k1": MASTER}).generate_data_key("k1", ctx))
    oid = os.urandom(16)
    env = make_envelope(dk.plaintext, layout, oid, dk.wrapped, ctx, bucket, key,  # type: ignore[arg-type]
                        sealed=SealContents(meta=sealed) if sealed is not None else None)
    meta = {"x-amz-meta-" + k: val for k, val in encode_metadata(env).items()}
    pts = [os.urandom(n) for n in parts]
    if layout == "S":
        enc = SEncryptor(dk.plaintext, oid)
        body = bytes(enc.update(pts[0]) + enc.finalize())
        return body, meta, '"' + hashlib.md5(body).hexdigest() + '"', pts[0]
    stored = b""
    for i, pt in enumerate(pts, 1):
        kenc = KPartEncryptor(dk.plaintext, oid, i, len(pt))
        stored += bytes(kenc.update(pt) + kenc.finalize())
    return stored, meta, f'"{"0" * 32}-{len(pts)}"', b"".join(pts)


def read(stored: bytes, meta: dict[str, str], etag: str | None, *, bucket: str = "bkt", key: str = "dir/obj",
         unwrap: Any = None) -> tuple[bytes, BaseException | None]:
    unwrap = unwrap or R.LocalKeyring({"k1": MASTER})
    return drain(R.read_object(io.BytesIO(stored), meta, bucket=bucket, key=key, unwrap=unwrap, etag=etag,
                               size=len(stored)))


@pytest.mark.parametrize(
    ("layout", "parts"),
    [("S", [0]), ("S", [1]), ("S", [16383]), ("S", [16384]), ("S", [16385]), ("S", [100_000]),
     ("K", [0]), ("K", [1]), ("K", [1024, 1023, 1025]), ("K", [50_000, 7, 0, 3])],
)
def test_reads_what_s3proxy_writes(layout: str, parts: list[int]) -> None:
    stored, meta, etag, pt = s3proxy_object(layout, parts)
    got, err = read(stored, meta, etag)
    assert err is None, err
    assert got == pt
    got, err = read(stored, meta, None)  # no ETag at hand: still authenticated (K: read to the end)
    assert err is None and got == pt
    assert R.decrypt_bytes(stored, meta, bucket="bkt", key="dir/obj", unwrap=R.LocalKeyring({"k1": MASTER}), etag=etag) == pt


def test_refuses_misplaced_mislabelled_or_wrongly_keyed_objects() -> None:
    stored, meta, etag, pt = s3proxy_object("K", [3000, 20])
    assert isinstance(read(stored, meta, etag, key="other")[1], R.BindingMismatch)
    assert isinstance(read(stored, meta, etag, bucket="other")[1], R.BindingMismatch)
    assert isinstance(read(stored, meta, '"' + "0" * 32 + '"')[1], R.MalformedMetadata)  # K with a plain ETag
    assert isinstance(read(stored, meta, etag.replace("-2", "-3"))[1], R.InvalidCiphertextSize)
    part1 = stored[: 3000 + R.K_OVERHEAD]
    assert isinstance(read(part1, meta, etag)[1], (R.Truncated, R.InvalidCiphertextSize))  # last part dropped
    unsized = R.read_object(io.BytesIO(part1), meta, bucket="bkt", key="dir/obj", unwrap=R.LocalKeyring({"k1": MASTER}),
                            etag=etag)
    assert isinstance(drain(unsized)[1], R.Truncated)
    assert isinstance(read(stored, meta, etag, unwrap=R.LocalKeyring({"k1": bytes(32)}))[1], R.KeyUnwrapFailed)
    assert isinstance(read(stored, meta, etag, unwrap=R.LocalKeyring({"k2": MASTER}))[1], R.KeyUnwrapFailed)
    s_stored, s_meta, s_etag, _ = s3proxy_object("S", [10])
    assert isinstance(read(s_stored, s_meta, '"abc-2"')[1], R.MalformedMetadata)
    # an S body under K metadata (and the reverse) never decrypts
    assert read(s_stored, meta, etag)[1] is not None
    # the wrapped key's context is authenticated by the wrap: a context swapped in the metadata fails
    env = R.parse_envelope(meta)
    forged = dict(meta)
    forged["x-amz-meta-s3proxy-ctx"] = base64.urlsafe_b64encode(b'{"bucket":"x"}').rstrip(b"=").decode()
    assert isinstance(read(stored, forged, etag)[1], R.KeyUnwrapFailed)
    assert env is not None and env.context == {"bucket": "bkt"}


def test_body_of_one_object_under_metadata_of_another() -> None:
    a, meta_a, etag_a, _ = s3proxy_object("S", [5000])
    b, meta_b, etag_b, _ = s3proxy_object("S", [5000])
    got, err = read(b, meta_a, etag_b)
    assert isinstance(err, R.CommitmentMismatch) and got == b""


def test_version_2_envelope_with_sealed_metadata() -> None:
    from s3proxy.crypto import envelope

    if not hasattr(envelope, "SealContents"):
        pytest.skip("envelope version 2 not in this tree")
    stored, meta, etag, pt = s3proxy_object("S", [1234], sealed={"owner": "alice", "note": "é"})
    assert meta["x-amz-meta-s3proxy-v"] == "2"
    got, err = read(stored, meta, etag)
    assert err is None and got == pt
    opened = R.open_envelope(meta, "bkt", "dir/obj", R.LocalKeyring({"k1": MASTER}))
    assert opened.sealed == {"m": {"owner": "alice", "note": "é"}}
    seal = meta["x-amz-meta-s3proxy-seal"]
    flipped = {**meta, "x-amz-meta-s3proxy-seal": flip_b64u(seal)}
    assert isinstance(read(stored, flipped, etag)[1], R.SealAuthenticationFailed)
    longer = {**meta, "x-amz-meta-s3proxy-seal": seal + "AAAA"}  # the binding covers the block's length
    assert isinstance(read(stored, longer, etag)[1], R.BindingMismatch)
    # a sealed block of the same length from another object: the binding holds, the seal does not open
    _, other, _, _ = s3proxy_object("S", [1], sealed={"owner": "bobby", "note": "é"})
    swapped = {**meta, "x-amz-meta-s3proxy-seal": other["x-amz-meta-s3proxy-seal"]}
    assert isinstance(read(stored, swapped, etag)[1], R.SealAuthenticationFailed)
    k_stored, k_meta, k_etag, k_pt = s3proxy_object("K", [100, 200], sealed={"a": "b"})
    assert read(k_stored, k_meta, k_etag) == (k_pt, None)


def test_unknown_sealed_members_are_refused() -> None:
    """A sealed block promising something this reader cannot check (e.g. a manifest) is refused."""
    stored, meta, etag, _ = s3proxy_object("S", [10], sealed={"x": "y"})
    env = R.parse_envelope(meta)
    dek = R.LocalKeyring({"k1": MASTER})(env)
    salt = os.urandom(24)
    okm = R.hkdf_expand(dek, R.SEAL_LABEL + salt, 44)
    plain = b'{"m":{"x":"y"},"zz":1}'
    forged_env = R.Envelope(**{**env.__dict__, "seal": salt + bytes(len(plain) + 16)})
    binding = R.binding_mac(forged_env, dek, "bkt", "dir/obj")
    seal = salt + AESGCM(okm[:32]).encrypt(okm[32:], plain, binding)
    forged = {**meta, "x-amz-meta-s3proxy-seal": base64.urlsafe_b64encode(seal).rstrip(b"=").decode(),
              "x-amz-meta-s3proxy-mac": base64.urlsafe_b64encode(binding).rstrip(b"=").decode()}
    assert isinstance(read(stored, forged, etag)[1], R.UnsupportedFormatVersion)


def test_kms_unwrapper_passes_key_id_blob_and_context() -> None:
    v = next(v for v in OWN["envelope"] if v["wrapped"]["backend"] == "aws-kms")
    env = R.parse_envelope(v["metadata"])
    calls: list[dict[str, Any]] = []
    answer = {"Plaintext": DEK}

    class FakeKms:  # the boto3 KMS client's decrypt(); the real one is tested in tests/integration/test_recovery.py
        def decrypt(self, **kw: Any) -> dict[str, bytes]:
            calls.append(kw)
            return answer

    dek = R.kms_unwrapper(FakeKms())(env)
    assert dek == DEK
    R.verify_binding(env, dek, v["bucket"], v["key"])
    assert calls == [{"CiphertextBlob": bytes.fromhex(v["wrapped"]["blob"]), "KeyId": v["wrapped"]["key_id"],
                      "EncryptionContext": v["context"]}]
    answer["Plaintext"] = DEK[:16]
    with pytest.raises(R.KeyUnwrapFailed):
        R.kms_unwrapper(FakeKms())(env)
    local = R.parse_envelope(OWN["envelope"][0]["metadata"])
    with pytest.raises(R.KeyUnwrapFailed):  # wrapped by "local", not aws-kms: KMS is never asked
        R.kms_unwrapper(FakeKms())(local)
    assert len(calls) == 2


# -- the command line -----------------------------------------------------------------------------------------


def run_cli(tmp_path: Path, stored: bytes, meta_doc: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[bytes]:
    (tmp_path / "obj.bin").write_bytes(stored)
    (tmp_path / "meta.json").write_text(json.dumps(meta_doc))
    (tmp_path / "keys").write_text("# local keyring\nk1=" + base64.b64encode(MASTER).decode() + "\n")
    return subprocess.run(
        [sys.executable, "-I", str(TOOL), "--key-file", str(tmp_path / "keys"), "--meta", str(tmp_path / "meta.json"),
         *extra, str(tmp_path / "obj.bin")],
        capture_output=True, timeout=120,
    )


def test_cli_with_head_object_json(tmp_path: Path) -> None:
    stored, meta, etag, pt = s3proxy_object("K", [70_000, 5])
    head = {"ContentLength": len(stored), "ETag": etag,
            "Metadata": {k[len("x-amz-meta-"):]: val for k, val in meta.items()}}
    cp = run_cli(tmp_path, stored, head, "--bucket", "bkt", "--key", "dir/obj")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout == pt
    cp = run_cli(tmp_path, stored, head)  # no bucket/key: refuses to guess where it belongs
    assert cp.returncode == 2 and cp.stdout == b""
    cp = run_cli(tmp_path, stored, head, "--bucket", "bkt", "--key", "elsewhere")
    assert cp.returncode == 1 and b"BindingMismatch" in cp.stderr and cp.stdout == b""


def test_cli_with_flat_headers_and_tampered_body(tmp_path: Path) -> None:
    stored, meta, etag, pt = s3proxy_object("S", [40_000])
    doc = {**meta, "ETag": etag, "Bucket": "bkt", "Key": "dir/obj"}
    cp = run_cli(tmp_path, stored, doc)
    assert cp.returncode == 0 and cp.stdout == pt
    bad = bytearray(stored)
    bad[56 + 16400 + 5] ^= 1  # second chunk
    cp = run_cli(tmp_path, bytes(bad), doc)
    assert cp.returncode == 1 and b"ChunkAuthenticationFailed" in cp.stderr
    assert cp.stdout == pt[:16384]  # only the chunk that authenticated
