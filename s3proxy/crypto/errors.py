"""The format's errors: every way a ciphertext, envelope or token can fail to read (FORMAT.md).

Imports nothing of s3proxy."""

from __future__ import annotations


class FormatError(Exception):
    """Base of every object-format failure. Never carries key material."""


class InvalidCiphertextSize(FormatError):
    """A ciphertext length that no plaintext length maps to."""


class CommitmentMismatch(FormatError):
    """The header commitment does not match: wrong key, object id, part number or length."""


class ChunkAuthenticationFailed(FormatError):
    """An AES-GCM tag did not verify: tampered, reordered or spliced chunk."""


class Truncated(FormatError):
    """The stream ended before the length it implies or declares."""


class ManifestMismatch(FormatError):
    """A multipart object's parts differ from its completeness manifest (or it has none)."""


class TrailingData(FormatError):
    """More bytes than the declared length."""


class UnsupportedFormatVersion(FormatError):
    """A format version this reader does not know."""


class InvalidHeader(FormatError):
    """A K part header with a wrong layout byte or part number."""


class PartOrderError(FormatError):
    """Part numbers not strictly increasing, or not the part asked for."""


class BindingMismatch(FormatError):
    """The placement-binding MAC does not verify."""


class MalformedMetadata(FormatError):
    """Envelope metadata present but incomplete or badly encoded."""


class MetadataTooLarge(FormatError):
    """The encoded envelope exceeds its size budget."""


class InvalidUploadToken(FormatError):
    """An upload token that does not parse."""


class SealAuthenticationFailed(FormatError):
    """The sealed metadata block (envelope v2) does not decrypt under its object's key and binding."""
