"""The sealed block of an envelope v2 (docs/FORMAT.md 8): its plaintext and its cipher.

``SealContents`` is the block's plaintext, a canonical JSON object whose members
are the client's user metadata (``"m"``), sealed system headers (``"h"``), tags
(``"t"``), the verified checksum (``"c"``), the client-facing ETag (``"e"``) and
the manifest promise (``"mf"``).  Decoding is strict: unknown members, wrong
types and non-canonical text are ``MalformedMetadata``, so a reader that
predates a member refuses objects that carry it instead of skipping it.

``seal_block`` / ``open_block`` encrypt and authenticate it under a key derived
from the DEK, with the envelope's placement binding as associated data; the
envelope (``crypto.envelope``) computes that binding.  Pure: no I/O.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from s3proxy.crypto.errors import MalformedMetadata, SealAuthenticationFailed
from s3proxy.crypto.format import Buffer, _check_dek

__all__ = [
    "SEALABLE_HEADERS",
    "SEAL_LABEL",
    "SEAL_OVERHEAD",
    "SEAL_SALT_SIZE",
    "SealContents",
    "open_block",
    "seal_block",
    "seal_plaintext",
    "sealed_size",
]

SEAL_LABEL: Final = b"s3proxy.dev/seal@v2"
SEAL_SALT_SIZE: Final = 24
SEAL_OVERHEAD: Final = SEAL_SALT_SIZE + 16  # salt + GCM tag
# System headers a bucket may seal (``seal_headers``): the names ``"h"`` may hold, lower case.
SEALABLE_HEADERS: Final = ("content-disposition", "content-language", "content-type")

_MEMBERS: Final = frozenset(("m", "h", "t", "c", "e", "mf"))
_CHECKSUM_MEMBERS: Final = frozenset(("alg", "v", "type"))


@dataclass(frozen=True, slots=True)
class SealContents:
    """The plaintext of a v2 sealed block (FORMAT.md 8).

    ``meta`` (``"m"``): the client's user metadata (names lower case, without ``x-amz-meta-``);
    ``checksum`` (``"c"``): the verified plaintext checksum ``{"alg", "v", "type"}``;
    ``etag`` (``"e"``): the client-facing ETag (quoted MD5 of the plaintext of a single PUT);
    ``manifest`` (``"mf": 1``): the object promises a completeness manifest (multipart only);
    ``tags`` (``"t"``): the object's tags, ``{key: value}``, when its bucket seals tags;
    ``headers`` (``"h"``): sealed system headers, ``{name: value}``, names from ``SEALABLE_HEADERS``.
    """

    meta: Mapping[str, str] = field(default_factory=dict)
    checksum: Mapping[str, str] | None = None
    etag: str | None = None
    manifest: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        """Canonical JSON: keys sorted, no whitespace, ASCII only (``\\uXXXX`` escapes), empty members omitted."""
        obj: dict[str, object] = {}
        if self.meta:
            obj["m"] = dict(self.meta)
        if self.headers:
            obj["h"] = dict(self.headers)
        if self.tags:
            obj["t"] = dict(self.tags)
        if self.checksum is not None:
            obj["c"] = dict(self.checksum)
        if self.etag is not None:
            obj["e"] = self.etag
        if self.manifest:
            obj["mf"] = 1
        return _ENCODER.encode(obj).encode("ascii")

    @classmethod
    def decode(cls, data: bytes) -> SealContents:
        """The inverse of ``encode``; anything else (unknown members included) is ``MalformedMetadata``."""
        try:
            obj = _DECODER.decode(data.decode("ascii"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise MalformedMetadata("sealed block is not JSON") from None
        if not isinstance(obj, dict) or not set(obj) <= _MEMBERS:
            raise MalformedMetadata("sealed block has unknown members")
        meta, headers, tags = obj.get("m", {}), obj.get("h", {}), obj.get("t", {})
        checksum, etag, mf = obj.get("c"), obj.get("e"), obj.get("mf")
        if mf is not None and not (type(mf) is int and mf == 1):
            raise MalformedMetadata("sealed manifest promise must be 1")
        if not (_str_map(meta) and _str_map(headers) and _str_map(tags)):
            raise MalformedMetadata("sealed block members must be maps of strings")
        if checksum is not None and not (_str_map(checksum) and set(checksum) == _CHECKSUM_MEMBERS):
            raise MalformedMetadata("sealed checksum must be {alg, v, type}")
        if not set(headers) <= set(SEALABLE_HEADERS):
            raise MalformedMetadata("sealed headers name a header that cannot be sealed")
        if etag is not None and not isinstance(etag, str):
            raise MalformedMetadata("sealed ETag must be a string")
        contents = cls(meta, checksum, etag, mf is not None, tags, headers)
        if contents.encode() != data:
            raise MalformedMetadata("sealed block is not canonical JSON")
        return contents


_ENCODER: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)  # as json.dumps, built once
_DECODER: Final = json.JSONDecoder()  # json.loads's, without its per-call argument checks


def _str_map(obj: object) -> bool:
    return isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in obj.items())


def _seal_cipher(dek: Buffer, salt: bytes) -> tuple[AESGCM, bytes]:
    okm = HKDFExpand(hashes.SHA512(), 44, SEAL_LABEL + salt).derive(dek)
    return AESGCM(okm[:32]), okm[32:]


def sealed_size(contents: SealContents) -> int:
    """The length of the block that seals ``contents`` (bound by the envelope before encrypting)."""
    return len(contents.encode()) + SEAL_OVERHEAD


def seal_block(dek: Buffer, contents: SealContents, binding: bytes, salt: bytes | None = None) -> bytes:
    """``salt || AES-GCM(k_seal, nonce, contents, associated data = binding)``; ``salt`` is random
    unless given (test vectors).  ``binding`` must already bind ``sealed_size(contents)``."""
    return seal_plaintext(dek, contents.encode(), binding, salt)


def seal_plaintext(dek: Buffer, plaintext: bytes, binding: bytes, salt: bytes | None = None) -> bytes:
    """``seal_block`` of contents already encoded (``SealContents.encode``: the caller that binds
    the block's size encodes once)."""
    _check_dek(dek)
    salt = os.urandom(SEAL_SALT_SIZE) if salt is None else bytes(salt)
    if len(salt) != SEAL_SALT_SIZE:
        raise ValueError(f"seal salt must be {SEAL_SALT_SIZE} bytes")
    aead, nonce = _seal_cipher(dek, salt)
    return salt + aead.encrypt(nonce, plaintext, binding)


def open_block(dek: Buffer, seal: bytes, binding: bytes) -> SealContents:
    """The contents of ``seal``, authenticated with ``binding`` as associated data: an edited, cut
    or foreign block is ``SealAuthenticationFailed``, a malformed plaintext ``MalformedMetadata``."""
    _check_dek(dek)
    if len(seal) < SEAL_OVERHEAD:
        raise SealAuthenticationFailed("sealed block too short")
    aead, nonce = _seal_cipher(dek, seal[:SEAL_SALT_SIZE])
    try:
        plaintext = aead.decrypt(nonce, seal[SEAL_SALT_SIZE:], binding)
    except InvalidTag:
        raise SealAuthenticationFailed("sealed metadata does not authenticate") from None
    return SealContents.decode(plaintext)
