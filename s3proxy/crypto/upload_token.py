"""The upload token: an envelope carried in a multipart UploadId (FORMAT.md, "Upload token").

UploadPart encrypts a part statelessly from what the client sends back in its UploadId: the object
id, the wrapped DEK and the encryption context, tagged under a key derived from the DEK that binds
them to bucket, key and backend upload id. ``decode_upload_token`` parses without trusting;
``verify_upload_token`` checks the tag in constant time. Pure: no I/O, no asyncio.
"""

from __future__ import annotations

import hmac
import struct
from hashlib import sha256
from typing import Final, NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from s3proxy.crypto.envelope import EncryptionContext, Envelope, b64u, lp, unb64u
from s3proxy.crypto.errors import InvalidUploadToken, UnsupportedFormatVersion
from s3proxy.crypto.format import OBJECT_ID_SIZE, Buffer, _check_dek
from s3proxy.keys.base import WrappedKey

__all__ = ["UploadToken", "decode_upload_token", "encode_upload_token", "verify_upload_token"]

TOKEN_VERSION: Final = 2  # 1: untagged (refused since 2026-12)
TOKEN_LABEL: Final = b"s3proxy.dev/upload-token@v2"
TOKEN_TAG_SIZE: Final = 32
MAX_TOKEN_CHARS: Final = 8192


class UploadToken(NamedTuple):
    """What UploadPart needs to encrypt a part statelessly, and the tag that proves s3proxy made it.

    ``signed`` is the token's bytes before the tag; ``verify_upload_token`` checks ``tag`` over it
    and the upload's bucket, key and backend upload id. Nothing decoded is trusted before that.
    """

    object_id: bytes
    wrapped: WrappedKey
    context: EncryptionContext
    tag: bytes = b""
    signed: bytes = b""


# (length prefix, field) in token order
_TOKEN_FIELDS: Final = (
    (">B", "backend"),
    (">H", "key id"),
    (">B", "algorithm"),
    (">H", "wrapped key"),
    (">H", "context"),
)


def _token_tag(dek: Buffer, signed: bytes, bucket: str, key: str, backend_upload_id: str) -> bytes:
    _check_dek(dek)
    mac_key = HKDFExpand(hashes.SHA512(), 32, TOKEN_LABEL).derive(dek)
    msg = b"".join(
        (TOKEN_LABEL, b"\x00", lp(bucket.encode()), lp(key.encode()), lp(backend_upload_id.encode()), signed)
    )
    return hmac.digest(mac_key, msg, sha256)  # one-shot, in C


def encode_upload_token(env: Envelope, dek: Buffer, bucket: str, key: str, backend_upload_id: str) -> str:
    """A compact base64url token (``[A-Za-z0-9_-]``): object id, wrapped DEK, context and a
    tag under a key derived from the DEK that binds them to bucket, key and backend upload id."""
    w = env.wrapped
    values = (
        w.backend.encode(),
        w.key_id.encode(),
        w.algorithm.encode(),
        bytes(w.blob),
        env.context.canonical_json(),
    )
    parts = [struct.pack(">B", TOKEN_VERSION), env.object_id]
    for (fmt, what), value in zip(_TOKEN_FIELDS, values, strict=True):
        if len(value) >= 1 << (8 * struct.calcsize(fmt)):
            raise ValueError(f"{what} too long for an upload token")
        parts.append(struct.pack(fmt, len(value)) + value)
    signed = b"".join(parts)
    return b64u(signed + _token_tag(dek, signed, bucket, key, backend_upload_id))


def decode_upload_token(token: str) -> UploadToken:
    """Parse a token (``InvalidUploadToken``, ``UnsupportedFormatVersion`` for v1 tokens,
    which carry no tag). The result is unauthenticated until ``verify_upload_token``."""
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidUploadToken("upload token too long")
    data = unb64u(token, "upload token", InvalidUploadToken)
    if not data:
        raise InvalidUploadToken("empty upload token")
    if data[0] != TOKEN_VERSION:
        raise UnsupportedFormatVersion(f"upload token version {data[0]}")
    if len(data) < 1 + OBJECT_ID_SIZE + TOKEN_TAG_SIZE:
        raise InvalidUploadToken("upload token too short")
    signed, tag = data[:-TOKEN_TAG_SIZE], data[-TOKEN_TAG_SIZE:]
    off = 1
    object_id = signed[off : off + OBJECT_ID_SIZE]
    off += OBJECT_ID_SIZE
    values: list[bytes] = []
    for fmt, what in _TOKEN_FIELDS:
        size = struct.calcsize(fmt)
        if off + size > len(signed):
            raise InvalidUploadToken(f"upload token ends before {what}")
        (n,) = struct.unpack_from(fmt, signed, off)
        off += size
        if off + n > len(signed):
            raise InvalidUploadToken(f"upload token ends inside {what}")
        values.append(signed[off : off + n])
        off += n
    if off != len(signed):
        raise InvalidUploadToken("trailing bytes in upload token")
    try:
        backend, key_id, algorithm = (v.decode("utf-8") for v in values[:3])
    except UnicodeDecodeError:
        raise InvalidUploadToken("upload token text is not UTF-8") from None
    wrapped = WrappedKey(backend=backend, key_id=key_id, algorithm=algorithm, blob=values[3])
    context = EncryptionContext.from_canonical_json(values[4], InvalidUploadToken)
    return UploadToken(object_id, wrapped, context, tag, signed)


def verify_upload_token(token: UploadToken, dek: Buffer, bucket: str, key: str, backend_upload_id: str) -> None:
    """Raise ``InvalidUploadToken`` unless s3proxy made ``token`` for this upload (constant time)."""
    expected = _token_tag(dek, token.signed, bucket, key, backend_upload_id)
    if not token.tag or not hmac.compare_digest(expected, token.tag):
        raise InvalidUploadToken("upload token is not valid for this bucket, key and upload")
