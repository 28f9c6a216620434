"""Objects written by the AWS S3 Encryption Client (S3EC): their metadata, key material and content.

Sans-IO.  From an object's user metadata (and its instruction file, when the S3EC
stored its metadata there) this module says which S3EC message format and
algorithm suite the object uses and what must be unwrapped; given the data key it
decrypts the content.  It never fetches, never unwraps: the caller does both
(the proxy through its key manager, with the AWS KMS backend).

Formats (AWS's public specification, s3-encryption/data-format/content-metadata.md
in awslabs/aws-encryption-sdk-specification):

- V1: ``x-amz-key`` + ``x-amz-iv`` + ``x-amz-matdesc``; content AES-256-CBC (legacy).
- V2: ``x-amz-key-v2`` + ``x-amz-iv`` + ``x-amz-matdesc`` + ``x-amz-wrap-alg`` +
  ``x-amz-cek-alg`` (+ ``x-amz-tag-len``); content AES-256-GCM, 12-byte IV, no AAD,
  the 16-byte tag appended to the ciphertext; or AES-256-CBC (legacy).
- V3: ``x-amz-c`` (``115``) + ``x-amz-3`` + ``x-amz-w`` + ``x-amz-d`` (key
  commitment) + ``x-amz-i`` (message id) + ``x-amz-t`` (KMS encryption context)
  or ``x-amz-m`` (material description).  Content AES-256-GCM under a key derived
  with HKDF-SHA512 (salt = message id, info = suite id || "DERIVEKEY"), IV twelve
  0x01 bytes, AAD the suite id bytes; the commitment (info suite id ||
  "COMMITKEY", 28 bytes) is checked in constant time before decrypting.

Wrapping: only KMS wrapping is readable here (``kms+context``, V3 ``12``; and the
legacy ``kms`` when the operator opts in), since s3proxy holds no raw master keys
of the S3EC.  Legacy unauthenticated content (CBC) is refused unless opted in,
as the S3EC itself requires.

Imports: the standard library and ``cryptography`` only.
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.header
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import AEADDecryptionContext, Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

TAG_SIZE = 16
BLOCK = 16
GCM_IV_SIZE = 12
KC_SUITE_ID = 0x0073
KC_SUITE_BYTES = KC_SUITE_ID.to_bytes(2, "big")
KC_MESSAGE_ID_SIZE = 28
KC_COMMIT_SIZE = 28
KC_IV = b"\x01" * GCM_IV_SIZE
KEY_SIZE = 32

SUITE_GCM = "AES/GCM/NoPadding"
SUITE_CBC = "AES/CBC/PKCS5Padding"
SUITE_KC_GCM = "115"

WRAP_KMS_CONTEXT = "kms+context"
WRAP_KMS_LEGACY = "kms"
_V3_WRAP = {"12": WRAP_KMS_CONTEXT, "02": "AES/GCM", "22": "RSA-OAEP-SHA1"}

# Reserved encryption-context keys the S3EC adds itself.
CONTEXT_CEK_ALG = "aws:x-amz-cek-alg"
CONTEXT_V1_CMK = "kms_cmk_id"

_V1_ONLY = ("x-amz-key",)
_V2_ONLY = ("x-amz-key-v2", "x-amz-wrap-alg", "x-amz-cek-alg", "x-amz-tag-len")
_V3_ONLY = ("x-amz-c", "x-amz-3", "x-amz-w", "x-amz-d", "x-amz-i", "x-amz-t", "x-amz-m")
# V3 keys that must live in the object's own metadata, never in the instruction file.
_V3_OBJECT_ONLY = ("x-amz-c", "x-amz-d", "x-amz-i")
# Keys that say where the content key is: never in both the object and its instruction file.
_CONTENT_KEYS = (
    "x-amz-key", "x-amz-key-v2", "x-amz-3", "x-amz-iv", "x-amz-cek-alg", "x-amz-wrap-alg", "x-amz-w",
    "x-amz-matdesc", "x-amz-t", "x-amz-m",
)
INSTRUCTION_SUFFIX = ".instruction"
INSTRUCTION_MARKER = "x-amz-crypto-instr-file"


class S3ECError(ValueError):
    """The object claims to be an S3EC object but cannot be read safely (tampered, unsupported)."""


class S3ECLegacyRefused(S3ECError):
    """A legacy (unauthenticated content or context-free KMS wrap) object, and legacy reads are off."""


class S3ECUnsupported(S3ECError):
    """A valid S3EC object that s3proxy cannot decrypt (a raw AES or RSA master key)."""


@dataclass(frozen=True)
class S3ECObject:
    """What an S3EC object needs to be decrypted (no secrets: the data key is still wrapped)."""

    format: int  # message format version: 1, 2 or 3
    suite: str  # SUITE_GCM, SUITE_CBC or SUITE_KC_GCM
    wrap: str  # WRAP_KMS_CONTEXT or WRAP_KMS_LEGACY
    encrypted_key: bytes
    context: dict[str, str]  # the KMS encryption context to pass to Decrypt
    iv: bytes = b""  # V1/V2 content IV
    message_id: bytes = b""  # V3
    commitment: bytes = b""  # V3
    plaintext_length: int | None = None  # from x-amz-unencrypted-content-length, when present
    from_instruction_file: bool = False
    notes: tuple[str, ...] = field(default=())

    @property
    def authenticated(self) -> bool:
        return self.suite != SUITE_CBC


# --------------------------------------------------------------------- detection


def _lower(meta: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in meta.items()}


def kind(meta: Mapping[str, str]) -> str | None:
    """``"object"`` when the user metadata holds a complete S3EC header set,
    ``"instruction"`` when it holds V3's object-only keys and the rest must come from
    the instruction file, ``None`` when nothing says S3EC (the object may still have an
    instruction file: V1/V2 objects written in instruction-file mode carry no marker)."""
    m = _lower(meta)
    if ("x-amz-key" in m or "x-amz-key-v2" in m) and "x-amz-iv" in m:
        return "object"
    if "x-amz-3" in m and "x-amz-d" in m and "x-amz-i" in m:
        return "object"
    if any(k in m for k in _V3_OBJECT_ONLY):
        return "instruction"
    return None


def parse_instruction_file(body: bytes) -> dict[str, str]:
    """The key/value map of an instruction file (a JSON object of strings)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise S3ECError("the instruction file is not JSON") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise S3ECError("the instruction file is not a JSON object of strings")
    return {k.lower(): v for k, v in data.items()}


# --------------------------------------------------------------------- parsing


def _b64(m: Mapping[str, str], name: str) -> bytes:
    value = m.get(name)
    if value is None:
        raise S3ECError(f"S3EC metadata {name} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise S3ECError(f"S3EC metadata {name} is not base64") from exc


def _decode_header_value(value: str) -> str:
    """Undo S3's RFC 2047 encoding of non-ASCII metadata values (``=?UTF-8?B?...?=``)."""
    if "=?" not in value:
        return value
    try:
        parts = email.header.decode_header(value)
    except (ValueError, email.errors.HeaderParseError) as exc:
        raise S3ECError("undecodable encoded metadata value") from exc
    out = []
    for chunk, charset in parts:
        out.append(chunk.decode(charset or "utf-8") if isinstance(chunk, bytes) else chunk)
    return "".join(out)


def _json_map(m: Mapping[str, str], name: str) -> dict[str, str]:
    raw = m.get(name)
    if raw is None:
        return {}
    try:
        data = json.loads(_decode_header_value(raw))
    except ValueError as exc:
        raise S3ECError(f"S3EC metadata {name} is not JSON") from exc
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise S3ECError(f"S3EC metadata {name} is not a JSON object of strings")
    return data


def _length(m: Mapping[str, str]) -> int | None:
    raw = m.get("x-amz-unencrypted-content-length")
    if raw is None:
        return None
    if not raw.isdigit():
        raise S3ECError("x-amz-unencrypted-content-length is not a number")
    return int(raw)


def _check_wrap(wrap: str, allow_legacy: bool) -> str:
    if wrap == WRAP_KMS_CONTEXT:
        return wrap
    if wrap == WRAP_KMS_LEGACY:
        if not allow_legacy:
            raise S3ECLegacyRefused("the data key is wrapped with the legacy 'kms' mode (no encryption context)")
        return wrap
    raise S3ECUnsupported(f"the data key is wrapped with {wrap!r}; s3proxy reads only KMS-wrapped S3EC objects")


def parse(
    meta: Mapping[str, str], instruction: Mapping[str, str] | None = None, *, allow_legacy: bool = False
) -> S3ECObject:
    """The S3EC description of an object from its user metadata (names without ``x-amz-meta-``).

    ``instruction``: the parsed instruction file, when the metadata is not complete.
    Raises S3ECError (or a subclass) for anything malformed, mixed, unsupported or legacy.
    """
    obj = _lower(meta)
    if instruction is not None:
        inst = _lower(instruction)
        if any(k in inst for k in _V3_OBJECT_ONLY):
            raise S3ECError("the instruction file holds keys that only the object's metadata may hold")
        if any(k in obj for k in _CONTENT_KEYS):
            raise S3ECError("content metadata in both the object and its instruction file")
        m = {**inst, **{k: obj[k] for k in _V3_OBJECT_ONLY if k in obj}}
    else:
        m = obj
    versions = [v for v, keys in ((1, ("x-amz-key",)), (2, ("x-amz-key-v2",)), (3, ("x-amz-3",))) if any(k in m for k in keys)]
    if len(versions) != 1:
        raise S3ECError("S3EC metadata names no data key, or data keys of several formats")
    version = versions[0]
    if version == 3:
        if any(k in m for k in _V1_ONLY + _V2_ONLY + ("x-amz-iv", "x-amz-matdesc")):
            raise S3ECError("V3 S3EC metadata mixed with keys of another format")
        return _parse_v3(m, instruction is not None, allow_legacy)
    if any(k in m for k in _V3_ONLY):
        raise S3ECError("V1/V2 S3EC metadata mixed with V3 keys")
    if version == 1 and any(k in m for k in _V2_ONLY):
        raise S3ECError("V1 S3EC metadata mixed with V2 keys")
    return _parse_v12(m, version, instruction is not None, allow_legacy)


def _parse_v12(m: Mapping[str, str], version: int, from_file: bool, allow_legacy: bool) -> S3ECObject:
    if version == 1:
        suite, wrap = SUITE_CBC, WRAP_KMS_LEGACY
        key = _b64(m, "x-amz-key")
    else:
        suite = m.get("x-amz-cek-alg", "")
        wrap = m.get("x-amz-wrap-alg", "")
        key = _b64(m, "x-amz-key-v2")
    iv = _b64(m, "x-amz-iv")
    if suite == SUITE_GCM:
        if m.get("x-amz-tag-len", "128") != "128":
            raise S3ECError("unsupported GCM tag length")
        if len(iv) != GCM_IV_SIZE:
            raise S3ECError("the GCM IV is not 12 bytes")
    elif suite == SUITE_CBC:
        if "x-amz-tag-len" in m:
            raise S3ECError("a tag length on CBC content")
        if len(iv) != BLOCK:
            raise S3ECError("the CBC IV is not 16 bytes")
        if not allow_legacy:
            raise S3ECLegacyRefused("the content is AES-CBC (unauthenticated)")
    else:
        raise S3ECUnsupported(f"content algorithm {suite!r} is not an S3EC algorithm s3proxy reads")
    wrap = _check_wrap(wrap, allow_legacy)
    return S3ECObject(
        format=version, suite=suite, wrap=wrap, encrypted_key=key, context=_json_map(m, "x-amz-matdesc"),
        iv=iv, plaintext_length=_length(m), from_instruction_file=from_file,
    )


def _parse_v3(m: Mapping[str, str], from_file: bool, allow_legacy: bool) -> S3ECObject:
    if m.get("x-amz-c") != SUITE_KC_GCM:
        raise S3ECUnsupported(f"V3 content algorithm {m.get('x-amz-c')!r} is not one s3proxy reads")
    wrap = _V3_WRAP.get(m.get("x-amz-w", ""), m.get("x-amz-w", ""))
    wrap = _check_wrap(wrap, allow_legacy)
    message_id = _b64(m, "x-amz-i")
    commitment = _b64(m, "x-amz-d")
    if len(message_id) != KC_MESSAGE_ID_SIZE or len(commitment) != KC_COMMIT_SIZE:
        raise S3ECError("V3 message id or key commitment of the wrong size")
    return S3ECObject(
        format=3, suite=SUITE_KC_GCM, wrap=wrap, encrypted_key=_b64(m, "x-amz-3"),
        context=_json_map(m, "x-amz-t"), message_id=message_id, commitment=commitment,
        plaintext_length=_length(m), from_instruction_file=from_file,
    )


# --------------------------------------------------------------------- sizes


def plaintext_size(obj: S3ECObject, ciphertext_size: int) -> int | None:
    """The plaintext length, or None when only the content can tell (CBC without a length)."""
    if obj.suite == SUITE_CBC:
        if obj.plaintext_length is not None:
            if not (obj.plaintext_length < ciphertext_size <= obj.plaintext_length + BLOCK) or ciphertext_size % BLOCK:
                raise S3ECError("the CBC ciphertext size does not match the stated length")
        return obj.plaintext_length
    size = ciphertext_size - TAG_SIZE
    if size < 0:
        raise S3ECError("the object is shorter than a GCM tag")
    if obj.plaintext_length is not None and obj.plaintext_length != size:
        raise S3ECError("x-amz-unencrypted-content-length does not match the ciphertext size")
    return size


# --------------------------------------------------------------------- content


def _derive_kc(data_key: bytes | bytearray, message_id: bytes) -> tuple[bytes, bytes]:
    prk = hmac.new(message_id, bytes(data_key), hashlib.sha512).digest()
    enc = HKDFExpand(hashes.SHA512(), KEY_SIZE, KC_SUITE_BYTES + b"DERIVEKEY").derive(prk)
    commit = HKDFExpand(hashes.SHA512(), KC_COMMIT_SIZE, KC_SUITE_BYTES + b"COMMITKEY").derive(prk)
    return enc, commit


def content_key(obj: S3ECObject, data_key: bytes | bytearray) -> bytes:
    """The AES key of the content; for V3 after checking the key commitment (constant time)."""
    if len(data_key) != KEY_SIZE:
        raise S3ECError("the unwrapped data key is not 256 bits")
    if obj.suite != SUITE_KC_GCM:
        return bytes(data_key)
    enc, commit = _derive_kc(data_key, obj.message_id)
    if not hmac.compare_digest(commit, obj.commitment):
        raise S3ECError("the key commitment does not match the data key")
    return enc


class ContentDecryptor:
    """Decrypts an S3EC object's whole content, fed in pieces.

    ``update`` returns plaintext that is NOT yet authenticated for GCM: callers must
    hold it back (spool it) until ``finalize`` returns without raising.
    """

    def __init__(self, obj: S3ECObject, data_key: bytes | bytearray) -> None:
        key = content_key(obj, data_key)
        self._suite = obj.suite
        self._tail = b""
        if obj.suite == SUITE_CBC:
            self._ctx = Cipher(algorithms.AES(key), modes.CBC(obj.iv)).decryptor()
            self._unpad = padding.PKCS7(128).unpadder()
        else:
            iv = KC_IV if obj.suite == SUITE_KC_GCM else obj.iv
            self._ctx = Cipher(algorithms.AES(key), modes.GCM(iv)).decryptor()
            if obj.suite == SUITE_KC_GCM:
                self._ctx.authenticate_additional_data(KC_SUITE_BYTES)

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        if self._suite == SUITE_CBC:
            return self._unpad.update(self._ctx.update(data))
        buf = self._tail + bytes(data)
        if len(buf) <= TAG_SIZE:
            self._tail = buf
            return b""
        self._tail = buf[-TAG_SIZE:]
        return self._ctx.update(buf[:-TAG_SIZE])

    def finalize(self) -> bytes:
        try:
            if self._suite == SUITE_CBC:
                return self._unpad.update(self._ctx.finalize()) + self._unpad.finalize()
            if len(self._tail) != TAG_SIZE:
                raise S3ECError("the object is shorter than a GCM tag")
            return cast(AEADDecryptionContext, self._ctx).finalize_with_tag(self._tail)
        except S3ECError:
            raise
        except Exception as exc:  # InvalidTag, bad padding
            raise S3ECError("the S3EC content failed authentication") from exc


def ctr_range_decryptor(obj: S3ECObject, data_key: bytes | bytearray, start_block: int) -> CipherContext:
    """An AES-CTR decryptor positioned at 16-byte block ``start_block`` of GCM content.

    Only for content already authenticated as a whole (a spooled, verified copy):
    GCM's keystream for block i is AES(J0 + 1 + i) with J0 = IV || 0x00000001.
    """
    if obj.suite == SUITE_CBC:
        raise S3ECError("ranges of CBC content are read from the start")
    key = content_key(obj, data_key)
    iv = KC_IV if obj.suite == SUITE_KC_GCM else obj.iv
    counter = (int.from_bytes(iv + b"\x00\x00\x00\x01", "big") + 1 + start_block) % (1 << 128)
    return Cipher(algorithms.AES(key), modes.CTR(counter.to_bytes(16, "big"))).decryptor()


def kms_context(obj: S3ECObject) -> dict[str, str]:
    """The encryption context KMS Decrypt must be called with (the stored one, as the S3EC does)."""
    return dict(obj.context)
