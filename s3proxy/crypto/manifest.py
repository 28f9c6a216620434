"""The completeness manifest of a multipart (K layout) object (docs/FORMAT.md 8, "Manifest").

A storage-side writer can re-assemble a multipart object from a subset of its own parts
(UploadPartCopy + Complete): every part still authenticates, part numbers still increase.
The manifest, written at CompleteMultipartUpload and kept at
``.s3proxy/manifests/<object id hex>`` in the object's bucket, says which parts the object has
(part numbers and plaintext lengths, in order), the total plaintext length and, when the upload
had one, the multipart checksum (``"c"``, encrypted: a plaintext checksum would tell the storage
whether an object equals a known file).  It is canonical JSON with an HMAC-SHA256 under a key
derived from the DEK with its own label and bound to the object id, so only a holder of the DEK
can write one, and one from another object (another DEK or id) never verifies.

The multipart checksum is built from *part records*: one empty object per part whose key
carries the part's verified checksum, encrypted and authenticated under the upload's DEK and
bound to bucket, key, backend upload id, part number and the backend's part ETag
(``.s3proxy/parts/<hex sha256(backend upload id)>/<part number>.<b64url record>``): a listing
reads a thousand at once.  The upload record's checksum algorithm and type carry a MAC too.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from s3proxy.crypto.envelope import b64u, lp
from s3proxy.crypto.errors import ManifestMismatch
from s3proxy.crypto.format import OBJECT_ID_SIZE, Buffer, _check_dek

__all__ = [
    "MANIFEST_LABEL", "MANIFEST_PREFIX", "MAX_MANIFEST", "PARTS_PREFIX", "Manifest", "ManifestMismatch",
    "PartRecord", "PartRecordInvalid", "decode_manifest", "manifest_key", "open_part_record", "part_opener", "part_records_prefix", "record_number",
    "seal_part_record", "upload_record_mac",
]

MANIFEST_LABEL: Final = b"s3proxy.dev/manifest@v2"
CHECKSUM_LABEL: Final = b"s3proxy.dev/manifest-checksum@v2"
PART_LABEL: Final = b"s3proxy.dev/part@v2"
UPLOAD_LABEL: Final = b"s3proxy.dev/upload@v2"
PARTS_PREFIX: Final = ".s3proxy/parts/"
MANIFEST_PREFIX: Final = ".s3proxy/manifests/"
MAX_MANIFEST: Final = 1 << 20  # 10,000 parts take about 200 KB
_MAC_SIZE: Final = 32


def manifest_key(object_id: bytes) -> str:
    return MANIFEST_PREFIX + bytes(object_id).hex()


@dataclass(frozen=True, slots=True)
class Manifest:
    """The parts an object was completed with: ``parts`` = [(part number, plaintext length)]."""

    object_id: bytes
    parts: tuple[tuple[int, int], ...]
    checksum: Mapping[str, str] | None = field(default=None)  # {"alg", "v", "type"}, as the sealed block's
    sealed_checksum: str | None = field(default=None, compare=False, repr=False)  # "c" as stored (decoded ones)

    @property
    def total(self) -> int:
        return sum(p for _, p in self.parts)

    def _body(self, c: str | None) -> bytes:
        obj: dict[str, object] = {
            "v": 1, "oid": self.object_id.hex(), "n": len(self.parts),
            "parts": [[n, p] for n, p in self.parts], "total": self.total,
        }
        if c is not None:
            obj["c"] = c
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    def encode(self, dek: Buffer) -> bytes:
        """``mac(32) || body``: the MAC first, then the canonical JSON it covers (``"c"`` sealed)."""
        c = self.sealed_checksum
        if self.checksum is not None and c is None:
            c = _seal_checksum(dek, self.object_id, self.checksum)
        body = self._body(c)
        return _mac(dek, self.object_id, body) + body

    def check_parts(self, parts: Sequence[tuple[int | None, int]]) -> None:
        """The parts read ([(part number or None if not read, plaintext length)]) are exactly these."""
        if len(parts) != len(self.parts):
            raise ManifestMismatch(f"object has {len(parts)} parts, its manifest {len(self.parts)}")
        for (n, p), (mn, mp) in zip(parts, self.parts, strict=True):
            if p != mp or (n is not None and n != mn):
                raise ManifestMismatch("a part differs from the object's manifest")


def _unb64u(text: str) -> bytes:
    if not text or len(text) % 4 == 1 or text.strip("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"):
        raise ValueError("not base64url")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64u(raw) != text:
        raise ValueError("not canonical base64url")
    return raw


def _subkey(dek: Buffer, label: bytes) -> bytes:
    _check_dek(dek)
    return HKDFExpand(hashes.SHA512(), 32, label).derive(bytes(dek))


_CHECKSUM_MEMBERS: Final = frozenset(("alg", "v", "type"))


def _seal_checksum(dek: Buffer, object_id: bytes, checksum: Mapping[str, str]) -> str:
    """``"c"`` = b64url(nonce(12) || AES-GCM(k, nonce, canonical JSON {"alg","v","type"},
    associated data = label || 0x00 || object id)), k = HKDF-Expand(DEK, CHECKSUM_LABEL)."""
    if set(checksum) != _CHECKSUM_MEMBERS or not all(isinstance(v, str) for v in checksum.values()):
        raise ValueError("a checksum is {alg, v, type}")
    text = json.dumps(dict(checksum), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    nonce = os.urandom(12)
    ct = AESGCM(_subkey(dek, CHECKSUM_LABEL)).encrypt(nonce, text, CHECKSUM_LABEL + b"\x00" + bytes(object_id))
    return b64u(nonce + ct)


def _open_checksum(dek: Buffer, object_id: bytes, sealed: object) -> dict[str, str]:
    try:
        if not isinstance(sealed, str):
            raise ValueError("not a string")
        raw = _unb64u(sealed)
        text = AESGCM(_subkey(dek, CHECKSUM_LABEL)).decrypt(raw[:12], raw[12:], CHECKSUM_LABEL + b"\x00" + bytes(object_id))
        obj = json.loads(text.decode("ascii"))
    except (ValueError, InvalidTag, UnicodeDecodeError, RecursionError, binascii.Error):
        raise ManifestMismatch("manifest checksum is malformed") from None
    if not isinstance(obj, dict) or set(obj) != _CHECKSUM_MEMBERS or not all(isinstance(v, str) for v in obj.values()):
        raise ManifestMismatch("manifest checksum is malformed")
    return obj


def _mac(dek: Buffer, object_id: bytes, body: bytes) -> bytes:
    _check_dek(dek)
    key = HKDFExpand(hashes.SHA512(), 32, MANIFEST_LABEL).derive(bytes(dek))
    return hmac.new(key, MANIFEST_LABEL + b"\x00" + bytes(object_id) + body, sha256).digest()


def decode_manifest(data: bytes, dek: Buffer, object_id: bytes) -> Manifest:
    """The manifest of object ``object_id``, authenticated under ``dek``; anything else is
    ``ManifestMismatch`` (never a partial answer)."""
    if len(object_id) != OBJECT_ID_SIZE or not _MAC_SIZE < len(data) <= MAX_MANIFEST:
        raise ManifestMismatch("manifest missing or malformed")
    tag, body = data[:_MAC_SIZE], data[_MAC_SIZE:]
    if not hmac.compare_digest(tag, _mac(dek, object_id, body)):
        raise ManifestMismatch("manifest does not authenticate for this object")
    try:
        obj = json.loads(body.decode("ascii"))
        parts = tuple((int(n), int(p)) for n, p in obj["parts"])
        c = obj.get("c")
        m = Manifest(bytes.fromhex(obj["oid"]), parts, None if c is None else _open_checksum(dek, object_id, c), c)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        raise ManifestMismatch("manifest is malformed") from None
    if obj.get("v") != 1 or m.object_id != bytes(object_id) or m._body(c) != body or not parts:
        raise ManifestMismatch("manifest is malformed or for another object")
    return m


# -- part records and the upload record's MAC ---------------------------------------------------

_ALG_IDS: Final = {"CRC32": 1, "CRC32C": 2, "CRC64NVME": 3, "SHA1": 4, "SHA256": 5}
_DIGEST_SIZES: Final = {"CRC32": 4, "CRC32C": 4, "CRC64NVME": 8, "SHA1": 20, "SHA256": 32}
_MAX_PART: Final = 10_000


class PartRecordInvalid(ValueError):
    """A part record that is malformed or does not authenticate for this upload and part."""


@dataclass(frozen=True, slots=True)
class PartRecord:
    """A part's verified plaintext checksum: ``alg`` (upper case, as S3 names it), raw ``digest``."""

    number: int
    alg: str
    digest: bytes


def part_records_prefix(backend_upload_id: str) -> str:
    """``.s3proxy/parts/<hex sha256(backend upload id)>/``: the upload's part records."""
    return PARTS_PREFIX + sha256(backend_upload_id.encode("utf-8", "surrogateescape")).hexdigest() + "/"


def _part_ad(object_id: bytes, bucket: str, key: str, backend_upload_id: str, number: int, etag: str) -> bytes:
    return b"".join((
        PART_LABEL, b"\x00", bytes(object_id), lp(bucket.encode("utf-8", "surrogateescape")),
        lp(key.encode("utf-8", "surrogateescape")), lp(backend_upload_id.encode("utf-8", "surrogateescape")),
        struct.pack(">I", number), lp(etag.strip().strip('"').encode("utf-8", "surrogateescape")),
    ))


def seal_part_record(
    dek: Buffer, object_id: bytes, bucket: str, key: str, backend_upload_id: str, etag: str, record: PartRecord,
) -> str:
    """The record's key: ``part_records_prefix(id) + "%05d." % number + b64url(nonce(12) ||
    AES-GCM(k, nonce, u8(algorithm id) || digest, associated data))``, k = HKDF-Expand(DEK,
    PART_LABEL); the associated data binds object id, bucket, key, backend upload id, part
    number and the backend's part ETag (quotes stripped)."""
    alg = record.alg.upper()
    if _DIGEST_SIZES.get(alg) != len(record.digest) or not 1 <= record.number <= _MAX_PART:
        raise ValueError("not a part checksum")
    nonce = os.urandom(12)
    ad = _part_ad(object_id, bucket, key, backend_upload_id, record.number, etag)
    ct = AESGCM(_subkey(dek, PART_LABEL)).encrypt(nonce, bytes([_ALG_IDS[alg]]) + record.digest, ad)
    return f"{part_records_prefix(backend_upload_id)}{record.number:05d}.{b64u(nonce + ct)}"


def record_number(name: str) -> int | None:
    """The part number a record's name (the key after the prefix) claims, unauthenticated."""
    head, dot, _ = name.partition(".")
    return int(head) if dot and len(head) == 5 and head.isdigit() and 1 <= int(head) <= _MAX_PART else None


def open_part_record(
    dek: Buffer, object_id: bytes, bucket: str, key: str, backend_upload_id: str, etag: str, name: str,
) -> PartRecord:
    """The record named ``name`` (its key after ``part_records_prefix``), authenticated for this
    upload, part and backend part ETag; ``PartRecordInvalid`` otherwise."""
    return part_opener(dek, object_id, bucket, key, backend_upload_id)(name, etag)


def part_opener(
    dek: Buffer, object_id: bytes, bucket: str, key: str, backend_upload_id: str,
) -> Callable[[str, str], PartRecord]:
    """``open_part_record`` for many records of one upload: ``(name, etag) -> PartRecord`` (the key
    derived once)."""
    aead = AESGCM(_subkey(dek, PART_LABEL))
    algs = {v: k for k, v in _ALG_IDS.items()}

    def open_one(name: str, etag: str) -> PartRecord:
        number = record_number(name)
        try:
            if number is None:
                raise ValueError("no part number")
            raw = _unb64u(name.partition(".")[2])
            plain = aead.decrypt(raw[:12], raw[12:], _part_ad(object_id, bucket, key, backend_upload_id, number, etag))
        except (ValueError, InvalidTag, binascii.Error):
            raise PartRecordInvalid("part record does not authenticate") from None
        alg = algs.get(plain[0]) if plain else None
        if alg is None or len(plain) != 1 + _DIGEST_SIZES[alg]:
            raise PartRecordInvalid("part record is malformed")
        return PartRecord(number, alg, plain[1:])

    return open_one


def upload_record_mac(
    dek: Buffer, bucket: str, key: str, backend_upload_id: str, alg: str | None, checksum_type: str | None,
) -> str:
    """b64url HMAC-SHA256(HKDF-Expand(DEK, UPLOAD_LABEL), label || 0x00 || lp(bucket) || lp(key) ||
    lp(backend upload id) || lp(algorithm) || lp(type)) of an upload record's checksum settings."""
    msg = b"".join((
        UPLOAD_LABEL, b"\x00", lp(bucket.encode("utf-8", "surrogateescape")), lp(key.encode("utf-8", "surrogateescape")),
        lp(backend_upload_id.encode("utf-8", "surrogateescape")), lp((alg or "").encode()), lp((checksum_type or "").encode()),
    ))
    return b64u(hmac.new(_subkey(dek, UPLOAD_LABEL), msg, sha256).digest())
