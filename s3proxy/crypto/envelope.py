"""The envelope: what an encrypted object stores in its metadata (FORMAT.md 3 and 8).

An ``Envelope`` holds the format version, the layout, the ``object_id``, the wrapped DEK, the
encryption context the wrap used, the placement-binding MAC and (version 2) the sealed block
(``crypto.seal``: user metadata, sealed headers and tags, checksum, client-facing ETag), encrypted
under a key derived from the DEK with the binding as associated data. It is encoded as user
metadata under the reserved prefix ``s3proxy-``; ``crypto.upload_token`` encodes it as the compact upload
token appended to multipart UploadIds. Pure: no I/O, no asyncio.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
import struct
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from hashlib import sha256
from typing import Final, Literal, cast
from urllib.parse import quote, unquote

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from s3proxy.crypto.errors import (
    BindingMismatch,
    MalformedMetadata,
    MetadataTooLarge,
    UnsupportedFormatVersion,
)
from s3proxy.crypto.format import FORMAT_VERSION, OBJECT_ID_SIZE, Buffer, _check_dek
from s3proxy.crypto.seal import SEAL_OVERHEAD, SealContents, open_block, seal_plaintext
from s3proxy.keys.base import WrappedKey

__all__ = [
    "ENVELOPE_KEYS", "METADATA_BUDGET", "RESERVED_PREFIX", "SEALED_VERSION", "USER_METADATA_LIMIT",
    "EncryptionContext", "Envelope", "Layout", "SealContents", "b64u", "decode_metadata", "encode_metadata",
    "is_reserved", "lp", "make_envelope", "new_object_id", "open_seal", "rebind", "unb64u", "verify_binding",
]

Layout = Literal["S", "K"]

RESERVED_PREFIX: Final = "s3proxy-"
META_VERSION: Final = "s3proxy-v"
META_LAYOUT: Final = "s3proxy-layout"
META_OBJECT_ID: Final = "s3proxy-id"
META_WRAPPED: Final = "s3proxy-key"
META_CONTEXT: Final = "s3proxy-ctx"
META_BINDING: Final = "s3proxy-mac"
META_SEAL: Final = "s3proxy-seal"
V1_KEYS: Final = (META_VERSION, META_LAYOUT, META_OBJECT_ID, META_WRAPPED, META_CONTEXT, META_BINDING)
ENVELOPE_KEYS: Final = (*V1_KEYS, META_SEAL)  # every key of any envelope version
METADATA_BUDGET: Final = 1536  # v1: bytes of keys + values (without "x-amz-meta-")
USER_METADATA_LIMIT: Final = 2048  # S3's limit on user metadata (names + values), the client's and the backend's
SEALED_VERSION: Final = 2  # envelope version with the sealed block (FORMAT.md 8)

BINDING_LABEL: Final = b"s3proxy.dev/binding@v1"
BINDING_SIZE: Final = 32

_PCT_SAFE: Final = ":/@+="  # plus letters, digits and "_.-~", which quote() never escapes
_B64U_RE: Final = re.compile(r"[A-Za-z0-9_-]*")
_LAYOUTS: Final = ("S", "K")
_CONTEXT_ENCODER: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
# Envelopes decoded, LRU (issue 11: base64, percent-encoding and JSON once per distinct metadata):
# a pure function of public strings, nothing secret, nothing verified (``verify_binding`` runs on
# every request); metadata that fails to decode is never cached.
_DECODED: OrderedDict[tuple[str | None, ...], Envelope] = OrderedDict()
DECODED_MAX: Final = 2048


def new_object_id() -> bytes:
    """A fresh random 16-byte object id (one per object / multipart upload)."""
    return os.urandom(OBJECT_ID_SIZE)


def is_reserved(name: str) -> bool:
    """Whether a user-metadata key (without ``x-amz-meta-``) is reserved to the proxy."""
    return name.lower().startswith(RESERVED_PREFIX)


# -- encodings -------------------------------------------------------------------


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64u(text: str, what: str, error: type[Exception] = MalformedMetadata) -> bytes:
    if not _B64U_RE.fullmatch(text) or len(text) % 4 == 1:
        raise error(f"{what} is not base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise error(f"{what} is not base64url") from None
    if b64u(data) != text:  # non-zero trailing bits: not canonical
        raise error(f"{what} is not canonical base64url")
    return data


def _pct(text: str) -> str:
    return quote(text, safe=_PCT_SAFE)


def _unpct(text: str, what: str) -> str:
    try:
        value = unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise MalformedMetadata(f"{what} is not UTF-8") from None
    if _pct(value) != text:
        raise MalformedMetadata(f"{what} is not canonically percent-encoded")
    return value


class EncryptionContext(Mapping[str, str]):
    """An immutable, hashable str -> str map with a canonical JSON encoding."""

    __slots__ = ("_items", "_json")

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        pairs = dict(items or {})
        for k, v in pairs.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError("encryption context keys and values must be str")
        self._items: tuple[tuple[str, str], ...] = tuple(sorted(pairs.items()))
        self._json: bytes | None = None  # canonical_json, once computed (the object is immutable)

    def __getitem__(self, key: str) -> str:
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, EncryptionContext):
            return self._items == other._items
        if isinstance(other, Mapping):
            return dict(self._items) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"EncryptionContext({dict(self._items)!r})"

    def canonical_json(self) -> bytes:
        """UTF-8 JSON, keys sorted by code point, no whitespace, no ASCII escaping."""
        if self._json is None:  # once per context (immutable): a PUT binds, then stores it
            self._json = _CONTEXT_ENCODER.encode(dict(self._items)).encode()
        return self._json

    @classmethod
    def from_canonical_json(cls, data: bytes, error: type[Exception] = MalformedMetadata) -> EncryptionContext:
        if not data.startswith(b"{"):
            raise error("encryption context is not a JSON object")
        try:
            obj = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise error("encryption context is not JSON") from None
        if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
            raise error("encryption context is not a map of strings")
        try:
            ctx = cls(cast(dict[str, str], obj))
            canonical = ctx.canonical_json()
        except (UnicodeEncodeError, ValueError):  # lone surrogates from \ud800 escapes
            raise error("encryption context is not valid UTF-8 text") from None
        if canonical != data:
            raise error("encryption context is not canonical JSON")
        return ctx


# -- the envelope ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """Everything needed to decrypt an object besides its body and the key backend.

    Nothing here is secret in the clear: the DEK appears only wrapped, and ``seal`` (version 2:
    salt || AES-GCM ciphertext of a ``SealContents``) only encrypted.
    """

    version: int
    layout: Layout
    object_id: bytes
    wrapped: WrappedKey
    context: EncryptionContext
    binding: bytes
    seal: bytes = b""


def lp(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _binding_mac(
    dek: Buffer, version: int, layout: Layout, object_id: bytes, wrapped: WrappedKey, context: EncryptionContext,
    bucket: str, key: str, seal_size: int = 0,
) -> bytes:
    _check_dek(dek)
    mac_key = HKDFExpand(hashes.SHA512(), 32, BINDING_LABEL).derive(dek)
    msg = b"".join(
        (
            BINDING_LABEL,
            b"\x00",
            struct.pack(">BB", version, ord(layout)),
            object_id,
            lp(bucket.encode()),
            lp(key.encode()),
            lp(wrapped.backend.encode()),
            lp(wrapped.key_id.encode()),
            lp(wrapped.algorithm.encode()),
            lp(bytes(wrapped.blob)),
            lp(context.canonical_json()),
            struct.pack(">I", seal_size) if version >= SEALED_VERSION else b"",
        )
    )
    return hmac.digest(mac_key, msg, sha256)  # one-shot, in C


def _build(
    dek: Buffer, layout: Layout, object_id: bytes, wrapped: WrappedKey, context: EncryptionContext,
    bucket: str, key: str, sealed: SealContents | None, seal_salt: bytes | None,
) -> Envelope:
    if sealed is None:
        binding = _binding_mac(dek, FORMAT_VERSION, layout, object_id, wrapped, context, bucket, key)
        return Envelope(FORMAT_VERSION, layout, object_id, wrapped, context, binding)
    plaintext = sealed.encode()  # once: its length is bound, then it is encrypted
    size = len(plaintext) + SEAL_OVERHEAD
    binding = _binding_mac(dek, SEALED_VERSION, layout, object_id, wrapped, context, bucket, key, size)
    seal = seal_plaintext(dek, plaintext, binding, seal_salt)
    return Envelope(SEALED_VERSION, layout, object_id, wrapped, context, binding, seal)


def open_seal(env: Envelope, dek: Buffer) -> SealContents | None:
    """The sealed block's contents (None for a v1 envelope), authenticated under ``dek`` with the
    binding as associated data: call ``verify_binding`` first. A block edited, cut, or taken from
    another object (another binding) is ``SealAuthenticationFailed``."""
    if env.version < SEALED_VERSION:
        return None
    return open_block(dek, env.seal, env.binding)


def _check_layout(layout: str) -> Layout:
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be 'S' or 'K', not {layout!r}")
    return cast(Layout, layout)


def make_envelope(
    dek: Buffer, layout: Layout, object_id: bytes, wrapped: WrappedKey, context: Mapping[str, str],
    bucket: str, key: str, *, sealed: SealContents | None = None, seal_salt: bytes | None = None,
) -> Envelope:
    """The envelope for a new object at ``bucket``/``key``, binding computed: version 1, or
    version 2 with ``sealed`` encrypted into its sealed block (``seal_salt``: for test vectors)."""
    layout = _check_layout(layout)
    if len(object_id) != OBJECT_ID_SIZE:
        raise ValueError(f"object id must be {OBJECT_ID_SIZE} bytes")
    return _build(dek, layout, bytes(object_id), wrapped, EncryptionContext(context), bucket, key, sealed, seal_salt)


def verify_binding(env: Envelope, dek: Buffer, bucket: str, key: str) -> None:
    """Raise ``BindingMismatch`` unless ``env`` was bound to ``bucket``/``key`` under ``dek``."""
    expected = _binding_mac(
        dek, env.version, env.layout, env.object_id, env.wrapped, env.context, bucket, key, len(env.seal)
    )
    if not hmac.compare_digest(expected, env.binding):
        raise BindingMismatch("object metadata is not bound to this bucket and key")


def rebind(
    env: Envelope, dek: Buffer, bucket: str, key: str, wrapped: WrappedKey | None = None,
    context: Mapping[str, str] | None = None, *, sealed: SealContents | None = None, seal_salt: bytes | None = None,
) -> Envelope:
    """The envelope for a copy at ``bucket``/``key`` and/or a re-wrapped DEK.

    Keeps layout, ``object_id`` (the body stays valid) and, unless replaced, the wrapped key and
    context. A v2 envelope keeps its sealed contents (re-sealed under the new binding) unless
    ``sealed`` replaces them; a v1 envelope given ``sealed`` becomes v2 (the body is the same in
    both versions). Does not verify ``env``: call ``verify_binding`` on the source first.
    """
    new_wrapped = env.wrapped if wrapped is None else wrapped
    ctx = env.context if context is None else EncryptionContext(context)
    if sealed is None:
        sealed = open_seal(env, dek)
    return _build(dek, env.layout, env.object_id, new_wrapped, ctx, bucket, key, sealed, seal_salt)


# -- metadata --------------------------------------------------------------------


def _encode_wrapped(w: WrappedKey) -> str:
    return ";".join((_pct(w.backend), _pct(w.key_id), _pct(w.algorithm), b64u(bytes(w.blob))))


def _decode_wrapped(text: str) -> WrappedKey:
    fields = text.split(";")
    if len(fields) != 4:
        raise MalformedMetadata("wrapped key must have 4 fields")
    backend = _unpct(fields[0], "key backend")
    if not backend:
        raise MalformedMetadata("empty key backend")
    return WrappedKey(
        backend=backend,
        key_id=_unpct(fields[1], "key id"),
        algorithm=_unpct(fields[2], "wrap algorithm"),
        blob=unb64u(fields[3], "wrapped key"),
    )


def encode_metadata(env: Envelope) -> dict[str, str]:
    """The envelope as user metadata, keys without ``x-amz-meta-``; ``MetadataTooLarge`` over
    1536 bytes (v1, leaving the client 512) or S3's 2048 (v2: the client's metadata is inside)."""
    meta = {
        META_VERSION: str(env.version),
        META_LAYOUT: env.layout,
        META_OBJECT_ID: b64u(env.object_id),
        META_WRAPPED: _encode_wrapped(env.wrapped),
        META_CONTEXT: b64u(env.context.canonical_json()),
        META_BINDING: b64u(env.binding),
    }
    budget = METADATA_BUDGET
    if env.version >= SEALED_VERSION:
        meta[META_VERSION] = str(SEALED_VERSION)
        meta[META_SEAL] = b64u(env.seal)
        budget = USER_METADATA_LIMIT
    size = len("".join(meta)) + len("".join(meta.values()))  # all ASCII
    if size > budget:
        raise MetadataTooLarge(f"envelope metadata of {size} bytes exceeds {budget}")
    return meta


def decode_metadata(meta: Mapping[str, str]) -> Envelope | None:
    """The envelope in ``meta`` (keys without ``x-amz-meta-``), or None if there is none.

    Raises ``UnsupportedFormatVersion`` for a version other than 1 and 2 and ``MalformedMetadata``
    for missing, extra or badly encoded fields. The binding (and the sealed block) are not verified
    here (that needs the DEK): call ``verify_binding``, then ``open_seal``.
    """
    ours = {k.lower(): v for k, v in meta.items() if k.lower() in ENVELOPE_KEYS}
    if not ours:
        return None
    ck = tuple(map(ours.get, ENVELOPE_KEYS))  # ``ours`` exactly (its keys are ENVELOPE_KEYS)
    env = _DECODED.get(ck)
    if env is None:
        env = _DECODED[ck] = _decode(ours)
        if len(_DECODED) > DECODED_MAX:
            _DECODED.popitem(last=False)
    else:
        _DECODED.move_to_end(ck)
    return env


def _decode(ours: dict[str, str]) -> Envelope:
    version = ours.get(META_VERSION)
    if version is None:
        raise MalformedMetadata(f"envelope metadata without {META_VERSION}")
    if version not in (str(FORMAT_VERSION), str(SEALED_VERSION)):
        raise UnsupportedFormatVersion(f"object format version {version[:16]!r}")
    expected = V1_KEYS if version == str(FORMAT_VERSION) else ENVELOPE_KEYS
    missing = [k for k in expected if k not in ours]
    if missing:
        raise MalformedMetadata(f"envelope metadata without {', '.join(missing)}")
    if len(ours) != len(expected):
        raise MalformedMetadata(f"a version {version} envelope with a sealed block")
    layout = ours[META_LAYOUT]
    if layout not in _LAYOUTS:
        raise MalformedMetadata(f"unknown layout {layout[:16]!r}")
    object_id = unb64u(ours[META_OBJECT_ID], "object id")
    if len(object_id) != OBJECT_ID_SIZE:
        raise MalformedMetadata("object id must be 16 bytes")
    binding = unb64u(ours[META_BINDING], "binding")
    if len(binding) != BINDING_SIZE:
        raise MalformedMetadata("binding must be 32 bytes")
    wrapped = _decode_wrapped(ours[META_WRAPPED])
    context = EncryptionContext.from_canonical_json(unb64u(ours[META_CONTEXT], "encryption context"))
    seal = b""
    if version == str(SEALED_VERSION):
        seal = unb64u(ours[META_SEAL], "sealed block")
        if len(seal) < SEAL_OVERHEAD:
            raise MalformedMetadata("sealed block too short")
    return Envelope(int(version), cast(Layout, layout), object_id, wrapped, context, binding, seal)
