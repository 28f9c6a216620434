#!/usr/bin/env python3
"""A minimal, independent reader of s3proxy objects, written from docs/FORMAT.md.

One file, the Python standard library plus ``cryptography`` (AES-GCM only); it
does not import s3proxy.  It is the proof that data written through s3proxy
stays readable without it.  Given an object's bytes (a file or any binary
stream), its metadata (the ``x-amz-meta-*`` headers), the bucket and key it is
stored at, and a way to unwrap its data key, it checks the placement binding
(FORMAT.md 3.1), the sealed block of a version 2 envelope (8), every chunk
commitment and tag (2.1-2.3), and yields plaintext only after it
authenticated.  Anything it cannot authenticate is refused with an error
named as in FORMAT.md 4 (``ReaderError`` subclasses).

Data keys: ``LocalKeyring`` reads the ``local`` key backend's master key file
(JSON ``{"id": "base64"}`` or ``id=base64`` lines, ``#`` comments);
``kms_unwrapper(client)`` unwraps with an AWS KMS client you pass (boto3's
``client("kms")`` or anything with the same ``decrypt`` method).  Any callable
``Envelope -> 32-byte DEK`` works (an HSM, an escrowed key).

Command line::

    aws s3api head-object --bucket B --key K > meta.json     # straight from the storage
    aws s3api get-object --bucket B --key K object.bin
    python tools/s3proxy_reader.py --key-file keys.json --meta meta.json \\
        --bucket B --key K object.bin > plaintext

``meta.json`` is either head-object's JSON (``Metadata`` and ``ETag``) or a flat
map of headers (``x-amz-meta-s3proxy-v``... or ``s3proxy-v``..., optional
``ETag``, ``Bucket`` and ``Key``).  Exit status 0 on success, 1 when the object
does not authenticate (nothing after the failing chunk is written), 2 on bad
usage.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import io
import json
import re
import struct
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import quote

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# -- constants (FORMAT.md 2, 3, 8) -----------------------------------------------------------------

CHUNK = 16384  # S plaintext chunk
TAG = 16
S_HEADER = 56  # salt(24) || commitment(32)
S_FULL_CT = CHUNK + TAG
K_HEADER = 70
K_CHUNKS = 1024
K_OVERHEAD = K_HEADER + TAG * K_CHUNKS
MAX_PART = 10000
SALT = 24
COBBLESTONE_LABEL = b"c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM"
S_CONTEXT_LABEL = b"s3proxy.dev/object@v1"
PART_LABEL = b"s3proxy.dev/part@v1"
BINDING_LABEL = b"s3proxy.dev/binding@v1"
SEAL_LABEL = b"s3proxy.dev/seal@v2"
LOCAL_WRAP_LABEL = b"s3proxy wrapped-dek v1\x00"
META_KEYS = ("s3proxy-v", "s3proxy-layout", "s3proxy-id", "s3proxy-key", "s3proxy-ctx", "s3proxy-mac")
SEAL_KEY = "s3proxy-seal"
VERSIONS = (1, 2)
SEAL_MEMBERS = frozenset({"m", "h", "t", "c", "e", "mf"})  # members this reader understands (8)
MANIFEST_LABEL = b"s3proxy.dev/manifest@v2"
PCT_SAFE = ":/@+="  # besides letters, digits and -._~ (quote() keeps those)
READ_SIZE = 1 << 20


# -- errors (FORMAT.md 4) ---------------------------------------------------------------------------


class ReaderError(Exception):
    """The object does not authenticate or cannot be read; the message never holds key material."""


class InvalidCiphertextSize(ReaderError):
    pass


class CommitmentMismatch(ReaderError):
    pass


class ChunkAuthenticationFailed(ReaderError):
    pass


class Truncated(ReaderError):
    pass


class TrailingData(ReaderError):
    pass


class UnsupportedFormatVersion(ReaderError):
    pass


class InvalidHeader(ReaderError):
    pass


class PartOrderError(ReaderError):
    pass


class BindingMismatch(ReaderError):
    pass


class MalformedMetadata(ReaderError):
    pass


class SealAuthenticationFailed(ReaderError):
    pass


class ManifestMismatch(ReaderError):
    """A multipart object's parts differ from its completeness manifest, or the manifest is missing or forged."""


class KeyUnwrapFailed(ReaderError):
    """The data key does not unwrap (wrong master key, tampered blob or context, unknown backend)."""


# -- primitives ---------------------------------------------------------------------------------------


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF-Expand with HMAC-SHA-512."""
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha512).digest()
        out += block
        counter += 1
    return out[:length]


def _check_key(key: bytes) -> None:
    if len(key) != 32:
        raise KeyUnwrapFailed(f"data keys are 32 bytes, not {len(key)}")


def _nonce(base: bytes, index: int) -> bytes:
    return (int.from_bytes(base, "big") ^ index).to_bytes(12, "big")


def _open(aead: AESGCM, base: bytes, index: int, chunk: bytes) -> bytes:
    try:
        return aead.decrypt(_nonce(base, index), chunk, None)
    except InvalidTag:
        raise ChunkAuthenticationFailed(f"chunk {index} does not authenticate") from None


def _read(src: BinaryIO, n: int) -> bytes:
    """Up to ``n`` bytes; fewer only at the end of the stream."""
    buf = bytearray()
    while len(buf) < n:
        got = src.read(n - len(buf))
        if not got:
            break
        buf += got
    return bytes(buf)


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64u(text: str, what: str) -> bytes:
    """Strict base64url without padding: the decoded bytes re-encode to exactly ``text``."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise MalformedMetadata(f"{what} is not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise MalformedMetadata(f"{what} is not base64url") from None
    if _b64u(data) != text:
        raise MalformedMetadata(f"{what} is not canonical base64url")
    return data


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# -- S layout: one Cobblestone-256 message (FORMAT.md 2.1, 2.3) ----------------------------------------


def s_context(object_id: bytes) -> bytes:
    return S_CONTEXT_LABEL + b"\x00S\x00" + object_id


def s_plaintext_size(c: int) -> int:
    d = c - S_HEADER
    if d < TAG or d % S_FULL_CT < TAG:
        raise InvalidCiphertextSize(f"no S body is {c} bytes long")
    return CHUNK * (d // S_FULL_CT) + d % S_FULL_CT - TAG


def cobblestone_chunks(key: bytes, context: bytes, src: BinaryIO, size: int | None = None) -> Iterator[bytes]:
    """Plaintext of a Cobblestone-256 message, chunk by chunk, each released once its tag verified.

    ``size`` (the stored length), when known, is checked first. Without it the
    final chunk is the first one shorter than 16400 bytes, and it must end the stream.
    """
    if len(key) != 32:
        raise KeyUnwrapFailed(f"Cobblestone-256 keys are 32 bytes, not {len(key)}")
    if size is not None:
        s_plaintext_size(size)  # InvalidCiphertextSize before anything is read
    header = _read(src, S_HEADER)
    if len(header) < S_HEADER:
        raise Truncated("the body is shorter than its 56-byte header")
    salt, commitment = header[:SALT], header[SALT:]
    okm = hkdf_expand(key, COBBLESTONE_LABEL + b"\x00" + salt + context, 76)
    if not hmac.compare_digest(okm[44:], commitment):
        raise CommitmentMismatch("the body's commitment does not match (wrong key, object id or tampered header)")
    aead, base = AESGCM(okm[:32]), okm[32:44]
    index = 0
    seen = S_HEADER
    while True:
        chunk = _read(src, S_FULL_CT)
        seen += len(chunk)
        if size is not None and seen > size:
            raise TrailingData(f"the body is longer than its stored length {size}")
        if len(chunk) < TAG:
            raise Truncated("the body ends without its final chunk")
        plain = _open(aead, base, index, chunk)
        index += 1
        if len(chunk) < S_FULL_CT:  # the final chunk: nothing may follow
            if src.read(1):
                raise TrailingData("bytes after the final chunk")
            if size is not None and seen != size:
                raise Truncated(f"the body ended after {seen} of {size} bytes")
            yield plain
            return
        yield plain


def s_body(dek: bytes, object_id: bytes, src: BinaryIO, size: int | None = None) -> Iterator[bytes]:
    """Plaintext of an S-layout body under its DEK and object id."""
    _check_key(dek)
    return cobblestone_chunks(dek, s_context(object_id), src, size)


# -- K layout: parts (FORMAT.md 2.2, 2.3) ---------------------------------------------------------------


@dataclass(frozen=True)
class PartHeader:
    """A K part header; unauthenticated until ``k_part`` checked its commitment."""

    part_number: int
    plaintext_length: int
    salt: bytes
    commitment: bytes

    @property
    def part_size(self) -> int:
        return self.plaintext_length + K_OVERHEAD


def parse_part_header(header: bytes) -> PartHeader:
    if len(header) < K_HEADER:
        raise Truncated("a part header is cut short")
    if header[0] != 1:
        raise UnsupportedFormatVersion(f"part header version {header[0]}")
    if header[1] != ord("K"):
        raise InvalidHeader("part header layout byte is not 'K'")
    number, length = struct.unpack(">IQ", header[2:14])
    if not 1 <= number <= MAX_PART:
        raise InvalidHeader(f"part number {number} outside 1..{MAX_PART}")
    return PartHeader(number, length, header[14:38], header[38:70])


def k_part(dek: bytes, object_id: bytes, header: bytes, src: BinaryIO) -> Iterator[bytes]:
    """Plaintext of one K part whose 70-byte ``header`` was read; reads exactly the rest of the part."""
    _check_key(dek)
    h = parse_part_header(header)
    p = h.plaintext_length
    info = PART_LABEL + b"\x00" + h.salt + object_id + struct.pack(">IQ", h.part_number, p)
    okm = hkdf_expand(dek, info, 76)
    if not hmac.compare_digest(okm[44:], h.commitment):
        raise CommitmentMismatch(f"part {h.part_number}: commitment does not match")
    aead, base = AESGCM(okm[:32]), okm[32:44]
    cs = -(-p // K_CHUNKS)
    for k in range(K_CHUNKS):
        n = min((k + 1) * cs, p) - min(k * cs, p)
        chunk = _read(src, n + TAG)
        if len(chunk) < n + TAG:
            raise Truncated(f"part {h.part_number} ends in chunk {k}")
        plain = _open(aead, base, k, chunk)
        if plain:
            yield plain


def k_object(
    dek: bytes, object_id: bytes, src: BinaryIO, parts: int | None, expected: list[tuple[int, int]] | None = None
) -> Iterator[bytes]:
    """Plaintext of a K object read from its first byte: part after part, numbers strictly
    increasing, exactly ``parts`` of them (the ETag's ``-N``; None: as many as the stream holds),
    each the (part number, plaintext length) ``expected`` names (the manifest's list) if given."""
    last = 0
    count = 0
    if expected is not None:
        if parts is not None and parts != len(expected):
            raise ManifestMismatch(f"the ETag says {parts} parts, the manifest {len(expected)}")
        parts = len(expected)
    while parts is None or count < parts:
        header = _read(src, K_HEADER)
        if not header and parts is None and count > 0:
            return
        h = parse_part_header(header)
        if h.part_number <= last:
            raise PartOrderError(f"part {h.part_number} after part {last}")
        if expected is not None and expected[count] != (h.part_number, h.plaintext_length):
            raise ManifestMismatch(f"part {count + 1} (number {h.part_number}) is not the one the manifest names")
        last = h.part_number
        yield from k_part(dek, object_id, header, src)
        count += 1
    if src.read(1):
        raise TrailingData(f"bytes after the last of {parts} parts")


# -- the envelope (FORMAT.md 3, 8) -----------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """An object's s3proxy metadata, decoded; nothing here is authenticated before ``verify``."""

    version: int
    layout: str
    object_id: bytes
    backend: str
    key_id: str
    algorithm: str
    blob: bytes
    context: dict[str, str]
    context_json: bytes
    binding: bytes
    seal: bytes = b""


def _unpct(text: str, what: str) -> str:
    try:
        raw = bytes(int(text[i + 1 : i + 3], 16) if c == "%" else ord(c) for i, c in _pct_walk(text))
        value = raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise MalformedMetadata(f"{what} is badly percent-encoded") from None
    if quote(value, safe=PCT_SAFE) != text:
        raise MalformedMetadata(f"{what} is not canonically percent-encoded")
    return value


def _pct_walk(text: str) -> Iterator[tuple[int, str]]:
    i = 0
    while i < len(text):
        yield i, text[i]
        if text[i] == "%":
            if not re.fullmatch(r"[0-9A-F]{2}", text[i + 1 : i + 3]):
                raise ValueError("bad escape")
            i += 3
        else:
            if ord(text[i]) > 127:
                raise ValueError("non-ASCII")
            i += 1


def _context(raw: bytes) -> dict[str, str]:
    try:
        ctx = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedMetadata("the encryption context is not JSON") from None
    if not isinstance(ctx, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ctx.items()):
        raise MalformedMetadata("the encryption context must map strings to strings")
    if canonical_json(ctx) != raw:
        raise MalformedMetadata("the encryption context is not canonical JSON")
    return ctx


def object_metadata(headers: Mapping[str, str]) -> dict[str, str]:
    """User metadata from response headers or head-object's ``Metadata``: lower-case names without ``x-amz-meta-``."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        low = name.lower()
        low = low[len("x-amz-meta-") :] if low.startswith("x-amz-meta-") else low
        out[low] = value
    return out


def parse_envelope(metadata: Mapping[str, str]) -> Envelope | None:
    """The envelope in ``metadata`` (see ``object_metadata``), None if the object has none."""
    meta = object_metadata(metadata)
    ours = {k: v for k, v in meta.items() if k in (*META_KEYS, SEAL_KEY)}
    if not ours:
        return None
    version_text = ours.get("s3proxy-v")
    if version_text is None:
        raise MalformedMetadata("envelope without s3proxy-v")
    if version_text not in tuple(str(v) for v in VERSIONS):
        raise UnsupportedFormatVersion(f"object format version {version_text[:16]!r}")
    version = int(version_text)
    expected = set(META_KEYS) | ({SEAL_KEY} if version >= 2 else set())
    if set(ours) != expected:
        raise MalformedMetadata(f"a version {version} envelope needs exactly {', '.join(sorted(expected))}")
    layout = ours["s3proxy-layout"]
    if layout not in ("S", "K"):
        raise MalformedMetadata(f"unknown layout {layout[:16]!r}")
    object_id = _unb64u(ours["s3proxy-id"], "object id")
    binding = _unb64u(ours["s3proxy-mac"], "binding")
    if len(object_id) != 16 or len(binding) != 32:
        raise MalformedMetadata("object id must be 16 bytes and binding 32")
    fields = ours["s3proxy-key"].split(";")
    if len(fields) != 4:
        raise MalformedMetadata("s3proxy-key must have four ';'-separated fields")
    backend, key_id, algorithm = (_unpct(f, "s3proxy-key") for f in fields[:3])
    blob = _unb64u(fields[3], "wrapped key")
    context_json = _unb64u(ours["s3proxy-ctx"], "encryption context")
    seal = _unb64u(ours[SEAL_KEY], "sealed block") if version >= 2 else b""
    if version >= 2 and len(seal) < SALT + TAG:
        raise MalformedMetadata("sealed block too short")
    return Envelope(
        version, layout, object_id, backend, key_id, algorithm, blob, _context(context_json), context_json, binding, seal
    )


def _lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def binding_mac(env: Envelope, dek: bytes, bucket: str, key: str) -> bytes:
    """FORMAT.md 3.1; version 2 appends ``u32(len(sealed block))`` (8)."""
    msg = b"".join(
        (
            BINDING_LABEL,
            b"\x00",
            bytes([env.version, ord(env.layout)]),
            env.object_id,
            _lp(bucket.encode()),
            _lp(key.encode()),
            _lp(env.backend.encode()),
            _lp(env.key_id.encode()),
            _lp(env.algorithm.encode()),
            _lp(env.blob),
            _lp(env.context_json),
            struct.pack(">I", len(env.seal)) if env.version >= 2 else b"",
        )
    )
    return hmac.new(hkdf_expand(dek, BINDING_LABEL, 32), msg, hashlib.sha256).digest()


def verify_binding(env: Envelope, dek: bytes, bucket: str, key: str) -> None:
    _check_key(dek)
    if not hmac.compare_digest(binding_mac(env, dek, bucket, key), env.binding):
        raise BindingMismatch("the metadata is not bound to this bucket and key under this data key")


def open_seal(env: Envelope, dek: bytes) -> dict[str, Any] | None:
    """The sealed block's contents (version 2; None for version 1), authenticated with the binding as AAD."""
    if env.version < 2:
        return None
    salt = env.seal[:SALT]
    okm = hkdf_expand(dek, SEAL_LABEL + salt, 44)
    try:
        plain = AESGCM(okm[:32]).decrypt(okm[32:], env.seal[SALT:], env.binding)
    except InvalidTag:
        raise SealAuthenticationFailed("the sealed metadata block does not authenticate") from None
    try:
        contents = json.loads(plain.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedMetadata("the sealed block is not JSON") from None
    if not isinstance(contents, dict):
        raise MalformedMetadata("the sealed block is not a JSON object")
    unknown = set(contents) - SEAL_MEMBERS
    if unknown:  # e.g. a completeness manifest promise this reader cannot check: refuse, never ignore
        raise UnsupportedFormatVersion(f"sealed block members this reader does not know: {sorted(unknown)}")
    return contents


# -- data keys ---------------------------------------------------------------------------------------------

Unwrap = Callable[[Envelope], bytes]


def local_wrap_aad(env: Envelope) -> bytes:
    """The AES-GCM associated data of a ``local`` wrap (s3proxy/keys/base.py ``wrap_aad``)."""
    return LOCAL_WRAP_LABEL + canonical_json(
        {"alg": env.algorithm, "backend": env.backend, "context": env.context, "key_id": env.key_id}
    )


class LocalKeyring:
    """The ``local`` key backend's master keys: ``unwrap`` a data key wrapped as
    ``nonce(12) || AES-256-GCM(master, nonce, DEK, aad)`` (algorithm ``AES256-GCM``)."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        for key_id, key in keys.items():
            if len(key) != 32:
                raise ValueError(f"master key {key_id!r} must be 32 bytes")
        self._keys = dict(keys)

    @classmethod
    def from_file(cls, path: str) -> LocalKeyring:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if text.lstrip().startswith("{"):
            items = json.loads(text)
            if not isinstance(items, dict):
                raise ValueError("a JSON key file maps key ids to base64 strings")
        else:
            items = {}
            for line in text.splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    key_id, sep, value = line.partition("=")
                    if not sep:
                        raise ValueError("key file lines are id=base64")
                    items[key_id.strip()] = value.strip()
        return cls({k: _master_key(k, v) for k, v in items.items()})

    def __call__(self, env: Envelope) -> bytes:
        if env.backend != "local" or env.algorithm != "AES256-GCM":
            raise KeyUnwrapFailed(f"the data key is wrapped by {env.backend!r}/{env.algorithm!r}, not local AES256-GCM")
        master = self._keys.get(env.key_id)
        if master is None:
            raise KeyUnwrapFailed(f"master key {env.key_id!r} is not in the key file")
        if len(env.blob) != 12 + 32 + TAG:
            raise KeyUnwrapFailed("the wrapped data key has the wrong length")
        try:
            return AESGCM(master).decrypt(env.blob[:12], env.blob[12:], local_wrap_aad(env))
        except InvalidTag:
            raise KeyUnwrapFailed("the data key does not unwrap (wrong master key, tampered key or context)") from None


def _master_key(key_id: str, text: str) -> bytes:
    text = text.strip()
    alt = b"-_" if ("-" in text or "_" in text) else None
    try:
        raw = base64.b64decode(text, altchars=alt, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"master key {key_id!r} is not base64") from None
    if len(raw) != 32:
        raise ValueError(f"master key {key_id!r} is not 32 bytes")
    return raw


def kms_unwrapper(client: Any) -> Unwrap:
    """Unwrap ``aws-kms`` data keys with ``client.decrypt`` (a boto3 KMS client or the like)."""

    def unwrap(env: Envelope) -> bytes:
        if env.backend != "aws-kms":
            raise KeyUnwrapFailed(f"the data key is wrapped by {env.backend!r}, not aws-kms")
        try:
            reply = client.decrypt(CiphertextBlob=env.blob, KeyId=env.key_id, EncryptionContext=env.context)
        except Exception as exc:  # noqa: BLE001 - any client failure is a failed unwrap
            raise KeyUnwrapFailed(f"KMS Decrypt failed: {type(exc).__name__}") from None
        dek = bytes(reply["Plaintext"])
        _check_key(dek)
        return dek

    return unwrap


# -- whole objects ---------------------------------------------------------------------------------------------


def check_manifest(data: bytes, dek: bytes, object_id: bytes) -> list[tuple[int, int]]:
    """The [(part number, plaintext length)] of a completeness manifest (FORMAT.md 8): ``mac(32) ||
    canonical JSON``, mac = HMAC-SHA256(HKDF-Expand(DEK, label, 32), label || 0 || object id || JSON)."""
    mac, body = data[:32], data[32:]
    key = hkdf_expand(dek, MANIFEST_LABEL, 32)
    if len(data) <= 32 or not hmac.compare_digest(mac, hmac.new(key, MANIFEST_LABEL + b"\x00" + object_id + body, hashlib.sha256).digest()):
        raise ManifestMismatch("the manifest does not authenticate for this object")
    try:
        doc = json.loads(body.decode("ascii"))
        parts = [(int(n), int(p)) for n, p in doc["parts"]]
        ok = (doc["v"] == 1 and bytes.fromhex(doc["oid"]) == object_id and doc["n"] == len(parts)
              and doc["total"] == sum(p for _, p in parts) and canonical_json(doc) == body and parts)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        ok = False
    if not ok:
        raise ManifestMismatch("the manifest is malformed or for another object")
    return parts


def etag_parts(etag: str | None) -> int | None:
    """The part count of a multipart ETag (``"...-N"``), None for a plain one."""
    m = re.search(r"-(\d+)\"?$", (etag or "").strip())
    return int(m.group(1)) if m else None


@dataclass
class Opened:
    """An authenticated envelope, its DEK and (version 2) the sealed block's contents."""

    env: Envelope
    dek: bytes
    sealed: dict[str, Any] | None


def open_envelope(metadata: Mapping[str, str], bucket: str, key: str, unwrap: Unwrap) -> Opened:
    env = parse_envelope(metadata)
    if env is None:
        raise MalformedMetadata("the object has no s3proxy envelope (not written through s3proxy)")
    dek = unwrap(env)
    verify_binding(env, dek, bucket, key)
    return Opened(env, dek, open_seal(env, dek))


def read_object(
    src: BinaryIO,
    metadata: Mapping[str, str],
    *,
    bucket: str,
    key: str,
    unwrap: Unwrap,
    etag: str | None = None,
    size: int | None = None,
    manifest: bytes | None = None,
) -> Iterator[bytes]:
    """Authenticated plaintext of a whole stored object, piece by piece.

    ``etag`` (the backend's) gives a K object's part count and must agree with
    the layout; without it a K object is read to the end of the stream (dropped
    trailing parts are then undetectable). ``size`` is the stored length.
    ``manifest``: the bytes of ``.s3proxy/manifests/<object id hex>``, required for
    objects whose sealed block promises one (``"mf"``), which are refused without it.
    """
    opened = open_envelope(metadata, bucket, key, unwrap)
    env = opened.env
    parts = etag_parts(etag)
    expected = None
    if env.layout != "K" and opened.sealed is not None and "mf" in opened.sealed:
        raise UnsupportedFormatVersion("a completeness manifest promise on a single-part (S) object")
    if env.layout == "K" and opened.sealed is not None and "mf" in opened.sealed:
        if not (type(opened.sealed["mf"]) is int and opened.sealed["mf"] == 1) or manifest is None:
            raise ManifestMismatch(f"the object promises a completeness manifest: give it (.s3proxy/manifests/{env.object_id.hex()})")
        expected = check_manifest(manifest, opened.dek, env.object_id)
    if env.layout == "S":
        if parts is not None:
            raise MalformedMetadata("layout S but a multipart ETag")
        yield from s_body(opened.dek, env.object_id, src, size)
        return
    if etag is not None and parts is None:
        raise MalformedMetadata("layout K but a single-part ETag")
    if parts is not None and size is not None and size < parts * K_OVERHEAD:
        raise InvalidCiphertextSize(f"{size} bytes cannot hold {parts} parts")
    yield from k_object(opened.dek, env.object_id, src, parts, expected)


def decrypt_bytes(data: bytes, metadata: Mapping[str, str], **kw: Any) -> bytes:
    """``read_object`` over bytes in memory (small objects, tests)."""
    return b"".join(read_object(io.BytesIO(data), metadata, size=len(data), **kw))


# -- command line -----------------------------------------------------------------------------------------------


def load_meta(path: str) -> tuple[dict[str, str], dict[str, str]]:
    """(user metadata, {"etag", "bucket", "key"} found) from head-object JSON or a flat header map."""
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if not isinstance(doc, dict):
        raise ValueError("the metadata file must hold a JSON object")
    found: dict[str, str] = {}
    for name, value in doc.items():
        low = name.lower()
        if low in ("etag", "bucket", "key") and isinstance(value, str):
            found[low] = value
    meta = doc.get("Metadata", doc)
    if not isinstance(meta, dict):
        raise ValueError("Metadata must be a JSON object")
    return {k: v for k, v in meta.items() if isinstance(v, str)}, found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="s3proxy_reader.py", allow_abbrev=False,
        description="Decrypt one s3proxy object from its stored bytes and metadata, without s3proxy.",
    )
    ap.add_argument("object", help="the stored (encrypted) object bytes, or - for stdin")
    ap.add_argument("--meta", required=True, help="head-object JSON, or a JSON map of the object's headers")
    ap.add_argument("--key-file", help="the local key backend's master key file")
    ap.add_argument("--aws-kms", action="store_true", help="unwrap with AWS KMS (needs boto3 and AWS credentials)")
    ap.add_argument("--bucket", help="bucket the object is stored in (else 'Bucket' in the metadata file)")
    ap.add_argument("--key", dest="object_key", help="object key (else 'Key' in the metadata file)")
    ap.add_argument("--etag", help="the backend ETag (else 'ETag' in the metadata file)")
    ap.add_argument("--manifest", help="a multipart object's completeness manifest (.s3proxy/manifests/<object id hex>)")
    args = ap.parse_args(argv)
    try:
        meta, found = load_meta(args.meta)
    except (OSError, ValueError) as exc:
        print(f"s3proxy_reader: cannot read {args.meta}: {exc}", file=sys.stderr)
        return 2
    bucket, key = args.bucket or found.get("bucket"), args.object_key or found.get("key")
    if bucket is None or key is None:
        print("s3proxy_reader: --bucket and --key are needed to check where the object belongs", file=sys.stderr)
        return 2
    unwrap: Unwrap
    if args.aws_kms:
        import boto3  # optional, only for --aws-kms

        unwrap = kms_unwrapper(boto3.client("kms"))
    elif args.key_file:
        try:
            unwrap = LocalKeyring.from_file(args.key_file)
        except (OSError, ValueError) as exc:
            print(f"s3proxy_reader: bad key file: {exc}", file=sys.stderr)
            return 2
    else:
        print("s3proxy_reader: give --key-file or --aws-kms", file=sys.stderr)
        return 2
    manifest = None
    if args.manifest:
        try:
            with open(args.manifest, "rb") as mf:
                manifest = mf.read(1 << 21)
        except OSError as exc:
            print(f"s3proxy_reader: cannot read {args.manifest}: {exc}", file=sys.stderr)
            return 2
    out = sys.stdout.buffer
    src = sys.stdin.buffer if args.object == "-" else open(args.object, "rb")  # noqa: SIM115
    try:
        size = None
        if src is not sys.stdin.buffer:
            size = src.seek(0, 2)
            src.seek(0)
        for piece in read_object(
            src, meta, bucket=bucket, key=key, unwrap=unwrap, etag=args.etag or found.get("etag"), size=size,
            manifest=manifest,
        ):
            out.write(piece)
        out.flush()
    except ReaderError as exc:
        print(f"s3proxy_reader: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if src is not sys.stdin.buffer:
            src.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
