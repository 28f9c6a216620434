"""Encrypted body format: S bodies (Cobblestone-256) and K parts (docs/FORMAT.md).

The public face of ``crypto.chunked`` (key schedule, chunk geometry), ``crypto.s_body``
(the S layout) and ``crypto.k_body`` (the K layout, and ``KObjectDecryptor``, the one
reader of whole K objects).  Import the body classes from here.

Pure and sans-IO: every class takes bytes-like input in ``update()``,
returns bytes-like output, and never touches a socket or the event loop. The async adapters in
``crypto.streams`` drive these objects.

Rules that hold for every class here:

- Decryptors release plaintext only after the tag of its chunk verified, and
  as soon as a whole chunk is available. After a failure they keep failing.
- Every ``update()``/``finalize()`` returns a freshly allocated ``bytearray``
  that the caller owns: never a view into a reused buffer, and exactly one
  allocation per call (each call plans its output size, then encrypts or
  decrypts straight into it). Returning ``bytes`` would need a second
  MiB-sized allocation per call, which measured 5-8x slower with glibc.
- The DEK is never shown in a repr nor put in an exception message, and not
  stored on an object (except ``KObjectDecryptor``, which keeps a copy it
  zeroes once the last part is read, on failure and at ``finalize()``). Derived keys live only inside
  ``AESGCM`` objects (created once per body or part) and the Rust
  Cobblestone state.
- Nonces are ``base_nonce XOR chunk index`` under a key derived from a fresh
  24-byte random salt: a DEK may be reused for any number of bodies and parts.
"""

from __future__ import annotations

from s3proxy.crypto.chunked import (
    COBBLESTONE_INFO_PREFIX as COBBLESTONE_INFO_PREFIX,
)
from s3proxy.crypto.chunked import (
    DEK_SIZE as DEK_SIZE,
)
from s3proxy.crypto.chunked import (
    FORMAT_VERSION as FORMAT_VERSION,
)
from s3proxy.crypto.chunked import (
    K_INFO_LABEL as K_INFO_LABEL,
)
from s3proxy.crypto.chunked import (
    KEY_SIZE as KEY_SIZE,
)
from s3proxy.crypto.chunked import (
    LAYOUT_K as LAYOUT_K,
)
from s3proxy.crypto.chunked import (
    LAYOUT_S as LAYOUT_S,
)
from s3proxy.crypto.chunked import (
    OBJECT_ID_SIZE as OBJECT_ID_SIZE,
)
from s3proxy.crypto.chunked import (
    S_CONTEXT_PREFIX as S_CONTEXT_PREFIX,
)
from s3proxy.crypto.chunked import (
    Buffer as Buffer,
)
from s3proxy.crypto.chunked import (
    _check_dek as _check_dek,
)
from s3proxy.crypto.chunked import (
    _cobblestone_okm as _cobblestone_okm,
)
from s3proxy.crypto.chunked import (
    _k_okm as _k_okm,
)
from s3proxy.crypto.chunked import (
    s_context as s_context,
)
from s3proxy.crypto.errors import (
    BindingMismatch as BindingMismatch,
)
from s3proxy.crypto.errors import (
    ChunkAuthenticationFailed as ChunkAuthenticationFailed,
)
from s3proxy.crypto.errors import (
    CommitmentMismatch as CommitmentMismatch,
)
from s3proxy.crypto.errors import (
    FormatError as FormatError,
)
from s3proxy.crypto.errors import (
    InvalidCiphertextSize as InvalidCiphertextSize,
)
from s3proxy.crypto.errors import (
    InvalidHeader as InvalidHeader,
)
from s3proxy.crypto.errors import (
    InvalidUploadToken as InvalidUploadToken,
)
from s3proxy.crypto.errors import (
    MalformedMetadata as MalformedMetadata,
)
from s3proxy.crypto.errors import (
    ManifestMismatch as ManifestMismatch,
)
from s3proxy.crypto.errors import (
    MetadataTooLarge as MetadataTooLarge,
)
from s3proxy.crypto.errors import (
    PartOrderError as PartOrderError,
)
from s3proxy.crypto.errors import (
    SealAuthenticationFailed as SealAuthenticationFailed,
)
from s3proxy.crypto.errors import (
    TrailingData as TrailingData,
)
from s3proxy.crypto.errors import (
    Truncated as Truncated,
)
from s3proxy.crypto.errors import (
    UnsupportedFormatVersion as UnsupportedFormatVersion,
)
from s3proxy.crypto.k_body import (
    KObjectDecryptor as KObjectDecryptor,
)
from s3proxy.crypto.k_body import (
    KPartDecryptor as KPartDecryptor,
)
from s3proxy.crypto.k_body import (
    KPartEncryptor as KPartEncryptor,
)
from s3proxy.crypto.k_body import (
    KPartHeader as KPartHeader,
)
from s3proxy.crypto.k_body import (
    PartNumberSequence as PartNumberSequence,
)
from s3proxy.crypto.k_body import (
    parse_k_header as parse_k_header,
)
from s3proxy.crypto.s_body import (
    SDecryptor as SDecryptor,
)
from s3proxy.crypto.s_body import (
    SEncryptor as SEncryptor,
)
from s3proxy.crypto.s_body import (
    SRangeDecryptor as SRangeDecryptor,
)
from s3proxy.crypto.s_body import (
    _SeededCobblestone as _SeededCobblestone,
)

__all__ = [
    "DEK_SIZE",
    "FORMAT_VERSION",
    "OBJECT_ID_SIZE",
    "BindingMismatch",
    "ChunkAuthenticationFailed",
    "ManifestMismatch",
    "CommitmentMismatch",
    "FormatError",
    "InvalidCiphertextSize",
    "InvalidHeader",
    "InvalidUploadToken",
    "KObjectDecryptor",
    "KPartDecryptor",
    "KPartEncryptor",
    "KPartHeader",
    "MalformedMetadata",
    "MetadataTooLarge",
    "PartNumberSequence",
    "PartOrderError",
    "SDecryptor",
    "SEncryptor",
    "SRangeDecryptor",
    "SealAuthenticationFailed",
    "TrailingData",
    "Truncated",
    "UnsupportedFormatVersion",
    "parse_k_header",
    "s_context",
]
