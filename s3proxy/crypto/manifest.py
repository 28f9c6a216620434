"""The completeness manifest of a multipart (K layout) object (docs/FORMAT.md 8, "Manifest").

A storage-side writer can re-assemble a multipart object from a subset of its own parts
(UploadPartCopy + Complete): every part still authenticates, part numbers still increase.
The manifest, written at CompleteMultipartUpload and kept at
``.s3proxy/manifests/<object id hex>`` in the object's bucket, says which parts the object has
(part numbers and plaintext lengths, in order), the total plaintext length and, when the upload
had one, the multipart checksum.  It is canonical JSON with an HMAC-SHA256 under a key derived
from the DEK with its own label and bound to the object id, so only a holder of the DEK can
write one, and one from another object (another DEK or id) never verifies.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from s3proxy.crypto.errors import ManifestMismatch
from s3proxy.crypto.format import OBJECT_ID_SIZE, Buffer, _check_dek

__all__ = ["MANIFEST_LABEL", "MANIFEST_PREFIX", "MAX_MANIFEST", "Manifest", "ManifestMismatch", "decode_manifest", "manifest_key"]

MANIFEST_LABEL: Final = b"s3proxy.dev/manifest@v2"
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
    checksum: Mapping[str, str] | None = field(default=None)

    @property
    def total(self) -> int:
        return sum(p for _, p in self.parts)

    def _body(self) -> bytes:
        obj: dict[str, object] = {
            "v": 1, "oid": self.object_id.hex(), "n": len(self.parts),
            "parts": [[n, p] for n, p in self.parts], "total": self.total,
        }
        if self.checksum is not None:
            obj["c"] = dict(self.checksum)
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")

    def encode(self, dek: Buffer) -> bytes:
        """``mac(32) || body``: the MAC first, then the canonical JSON it covers."""
        body = self._body()
        return _mac(dek, self.object_id, body) + body

    def check_parts(self, parts: Sequence[tuple[int | None, int]]) -> None:
        """The parts read ([(part number or None if not read, plaintext length)]) are exactly these."""
        if len(parts) != len(self.parts):
            raise ManifestMismatch(f"object has {len(parts)} parts, its manifest {len(self.parts)}")
        for (n, p), (mn, mp) in zip(parts, self.parts, strict=True):
            if p != mp or (n is not None and n != mn):
                raise ManifestMismatch("a part differs from the object's manifest")


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
        checksum = obj.get("c")
        m = Manifest(bytes.fromhex(obj["oid"]), parts, checksum)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        raise ManifestMismatch("manifest is malformed") from None
    if obj.get("v") != 1 or m.object_id != bytes(object_id) or m._body() != body or not parts:
        raise ManifestMismatch("manifest is malformed or for another object")
    return m
