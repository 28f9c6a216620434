"""Encrypted object names (issue 15 item 3): each ``/``-separated segment, deterministically.

Sans-IO.  A bucket that opts in stores every object key as the encryption of its
plaintext key, segment by segment, so that GET/PUT/HEAD/DELETE/copy of a key and a
delimiter listing of a "directory" still map to one backend request:

    segment_ct = AES-SIV(name_key, pad(segment), AD = [label, bucket, parent])
    stored     = "~" + base64url(segment_ct)          (no padding)

- AES-SIV (RFC 5297, 512-bit key: two AES-256 keys) is a deterministic AEAD: the
  same segment under the same parent always encrypts the same way (that is what
  makes lookups possible) and any change to a stored segment fails to decrypt.
- The associated data binds a segment to its bucket and to its plaintext parent
  path (every segment before it, each followed by ``/``: ``""`` at the top, ``"a/"``
  under ``a``, ``"/"`` under an empty first segment), so equal names in different
  directories do not look equal, and a stored segment cannot be moved under another
  parent, to another depth, or into another bucket.
- ``pad`` (optional, per bucket) hides the segment length up to a multiple of
  ``pad_to`` bytes (ISO/IEC 7816-4 padding: 0x80 then zeros).
- The ``~`` marks an encrypted segment; base64url's alphabet is safe in S3 keys.

What it does not hide: the number of segments (the depth), which keys share a
parent, the (padded) segment lengths, and equality of whole keys.  What breaks:
listings are no longer in plaintext order (the proxy sorts one level at a time),
a ``prefix=`` that ends inside a segment cannot be served, and keys grow (about
4/3 x + 22 bytes per segment), so long keys hit S3's 1,024-byte limit sooner.

The name key is a random 64-byte key, wrapped by the bucket's key backend (the
proxy keeps the wrapped form; see docs/NAMES.md).  Imports: ``cryptography`` only.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

KEY_SIZE = 64
MARK = "~"
MAX_KEY_BYTES = 1024  # S3's limit on an object key, UTF-8
LABEL = b"s3proxy.dev/names@v1"
TOKEN_LABEL = b"s3proxy.dev/names-token@v1"


class NamesError(ValueError):
    """A name that cannot be encrypted or a stored name that does not decrypt."""


class KeyTooLong(NamesError):
    """The encrypted key would exceed S3's 1,024-byte limit."""


class NotASegmentBoundary(NamesError):
    """A listing prefix that ends inside a segment: encrypted names cannot serve it."""


class UndecryptableName(NamesError):
    """A stored key that is not the encryption of any name under this key (tampered or foreign)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise UndecryptableName("not base64url") from exc


def _pad(data: bytes, pad_to: int) -> bytes:
    if pad_to <= 1:
        return data
    padded = data + b"\x80"
    return padded + b"\x00" * (-len(padded) % pad_to)


def _unpad(data: bytes, pad_to: int) -> bytes:
    if pad_to <= 1:
        return data
    stripped = data.rstrip(b"\x00")
    if not stripped.endswith(b"\x80") or len(data) % pad_to:
        raise UndecryptableName("bad padding")
    return stripped[:-1]


@dataclass(frozen=True)
class NameCipher:
    """Encrypts and decrypts the object keys of one bucket."""

    key: bytes
    bucket: str
    pad_to: int = 0  # 0: no length hiding; else pad each segment to a multiple of this

    def __post_init__(self) -> None:
        if len(self.key) != KEY_SIZE:
            raise ValueError("a name key is 64 bytes (AES-SIV with two AES-256 keys)")
        if self.pad_to < 0 or self.pad_to > 256:
            raise ValueError("pad_to must be between 0 and 256")

    @functools.cached_property
    def _siv(self) -> AESSIV:  # one key schedule per cipher, not per segment
        return AESSIV(self.key)

    def _ad(self, parent: str) -> list[bytes]:
        return [LABEL, self.bucket.encode(), hashlib.sha256(parent.encode()).digest()]

    def encrypt_segment(self, segment: str, parent: str) -> str:
        if segment == "":
            return ""  # "a//b" and a trailing "/" keep their empty segments: S3 allows them
        ct = self._siv.encrypt(_pad(segment.encode(), self.pad_to), self._ad(parent))
        return MARK + _b64(ct)

    def decrypt_segment(self, stored: str, parent: str) -> str:
        if stored == "":
            return ""
        if not stored.startswith(MARK):
            raise UndecryptableName("not an encrypted segment")
        try:
            plain = self._siv.decrypt(_unb64(stored[1:]), self._ad(parent))
        except InvalidTag:
            raise UndecryptableName("segment does not authenticate") from None
        try:
            return _unpad(plain, self.pad_to).decode()
        except UnicodeDecodeError:
            raise UndecryptableName("segment is not UTF-8") from None

    def encrypt_key(self, key: str) -> str:
        """The stored key of a plaintext key; raises KeyTooLong past S3's limit."""
        out: list[str] = []
        parent = ""  # the plaintext path before the segment, each segment followed by "/"
        for seg in key.split("/"):
            out.append(self.encrypt_segment(seg, parent))
            parent += seg + "/"
        stored = "/".join(out)
        if len(stored.encode()) > MAX_KEY_BYTES:
            raise KeyTooLong(f"the encrypted key would be {len(stored.encode())} bytes (S3 allows {MAX_KEY_BYTES})")
        return stored

    def decrypt_key(self, stored: str, memo: dict[str, str] | None = None) -> str:
        """The plaintext key; ``memo`` (stored parent -> plaintext parent, filled as it goes) saves
        decrypting the same parents again when many keys of one listing share them."""
        head, sep, last = stored.rpartition("/")
        if not sep:
            return self.decrypt_segment(stored, "")
        parent = memo.get(head) if memo is not None else None
        if parent is None:
            parent = ""
            for seg in head.split("/"):
                parent += self.decrypt_segment(seg, parent) + "/"
            if memo is not None and len(memo) < 100_000:
                memo[head] = parent
        return parent + self.decrypt_segment(last, parent)

    def encrypt_prefix(self, prefix: str) -> str:
        """A listing prefix: "" or whole segments ending in "/"; anything else cannot be served."""
        if prefix == "":
            return ""
        if not prefix.endswith("/"):
            raise NotASegmentBoundary(
                "a prefix that ends inside a name cannot be listed in a bucket with encrypted names; "
                "end it with '/'"
            )
        return self.encrypt_key(prefix[:-1]) + "/"

    def decrypt_prefix(self, stored: str) -> str:
        """A CommonPrefix from the backend (whole segments ending in "/")."""
        if not stored.endswith("/"):
            raise UndecryptableName("a common prefix without its delimiter")
        return self.decrypt_key(stored[:-1]) + "/"

    def seal_token(self, text: str) -> str:
        """An opaque, authenticated listing continuation token for ``text`` (a plaintext key)."""
        ct = self._siv.encrypt(text.encode(), [TOKEN_LABEL, self.bucket.encode()])
        return MARK + _b64(ct)

    def open_token(self, token: str) -> str:
        """The key inside a token from ``seal_token``; UndecryptableName if forged or foreign."""
        if not token.startswith(MARK):
            raise UndecryptableName("not a continuation token of this bucket")
        try:
            return self._siv.decrypt(_unb64(token[1:]), [TOKEN_LABEL, self.bucket.encode()]).decode()
        except (InvalidTag, UnicodeDecodeError):
            raise UndecryptableName("not a continuation token of this bucket") from None

    def max_plaintext_segment(self) -> int:
        """The longest single-segment name (UTF-8 bytes) whose encryption fits S3's key limit."""
        n = 0
        while len(self.encrypt_segment("x" * (n + 1), "")) <= MAX_KEY_BYTES:
            n += 1
        return n
