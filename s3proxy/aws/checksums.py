"""Streaming integrity checks of a request's plaintext body.

A :class:`Checker` collects every digest the client promised for one body --
``Content-MD5`` and one ``x-amz-checksum-<algorithm>``, given as a header or
declared in ``x-amz-trailer`` and sent after the body -- hashes the body once
as it streams, and compares in constant time at the end.

Values are base64 of the big-endian digest, as S3 defines them.  CRC32 uses
zlib; MD5, SHA-1 and SHA-256 hashlib; CRC32C and CRC64NVME the C code of
``awscrt.checksums`` (a required dependency, as botocore uses it too).

Errors (:class:`ChecksumError`): ``BadDigest`` 400 when a digest does not
match (S3 uses it for ``Content-MD5`` and ``x-amz-checksum-*`` alike);
``InvalidDigest`` 400 for a malformed ``Content-MD5``; ``InvalidRequest`` 400
for a malformed checksum value, an unknown algorithm, more than one checksum
algorithm, or a declared trailing checksum that never came.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import zlib
from collections.abc import Mapping, Sequence
from typing import Final, Protocol

from awscrt import checksums as _crt

from s3proxy.aws.errors import S3Error
from s3proxy.aws.sigv4 import wire_text

__all__ = [
    "ALGORITHMS", "ELEMENTS", "ChecksumError", "Checker", "Hasher", "combine_crcs", "decode_b64", "digest_b64", "etag_from_md5",
    "multipart_checksum", "response_checksum", "stored_checksum", "upload_mode",
]

ALGORITHMS: Final = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")

_PREFIX: Final = "x-amz-checksum-"
# x-amz-checksum-* headers that describe a checksum but carry no value.
_NOT_VALUES: Final = frozenset({"x-amz-checksum-algorithm", "x-amz-checksum-type", "x-amz-checksum-mode"})
_SIZES: Final = {"md5": 16, "crc32": 4, "crc32c": 4, "crc64nvme": 8, "sha1": 20, "sha256": 32}


class ChecksumError(S3Error):
    """An integrity check failed or could not be set up, as an S3 error."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        # Messages quote header names and x-amz-trailer entries, which may
        # hold lone surrogates (aiohttp decodes with surrogateescape).
        super().__init__(code, wire_text(message), status)


class _Digest(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...
    def digest(self) -> bytes: ...


class _Crc:
    __slots__ = ("_crc", "_kind")

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._crc = 0

    def update(self, data: bytes | memoryview, /) -> None:
        if self._kind == "crc32":
            self._crc = zlib.crc32(data, self._crc)
        elif self._kind == "crc32c":
            self._crc = _crt.crc32c(data, self._crc)
        else:
            self._crc = _crt.crc64nvme(data, self._crc)

    def digest(self) -> bytes:
        return self._crc.to_bytes(8 if self._kind == "crc64nvme" else 4, "big")


def _new_digest(algorithm: str) -> _Digest:
    if algorithm == "md5":
        return hashlib.md5(usedforsecurity=False)
    if algorithm in ("sha1", "sha256"):
        return hashlib.new(algorithm)
    return _Crc(algorithm)


def _algorithm_of(name: str) -> str:
    if name == "content-md5":
        return "md5"
    if name.startswith(_PREFIX) and name not in _NOT_VALUES:
        algorithm = name[len(_PREFIX) :]
        if algorithm in ALGORITHMS:
            return algorithm
        raise ChecksumError("InvalidRequest", f"The algorithm type you specified in {name} header is invalid.")
    raise ChecksumError("InvalidRequest", f"{name} is not an integrity check header.")


def digest_b64(name: str, data: bytes | memoryview) -> str:
    """The base64 digest of ``data`` for ``content-md5`` or ``x-amz-checksum-<alg>``."""
    digest = _new_digest(_algorithm_of(name.strip().lower()))
    digest.update(data)
    return base64.b64encode(digest.digest()).decode("ascii")


def _decode_value(name: str, algorithm: str, value: str) -> bytes:
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _SIZES[algorithm]:
        if algorithm == "md5":
            raise ChecksumError("InvalidDigest", "The Content-MD5 you specified is not valid.")
        raise ChecksumError("InvalidRequest", f"Value for {name} header is invalid.")
    return raw


class Checker:
    """Every expected digest of one body, checked while the body streams."""

    def __init__(self) -> None:
        self._expected: dict[str, bytes | None] = {}  # name -> raw digest, None until known
        self._digests: dict[str, _Digest] = {}  # algorithm -> running digest
        self._started = False

    @property
    def names(self) -> tuple[str, ...]:
        """The header names being checked (``content-md5``, ``x-amz-checksum-...``)."""
        return tuple(self._expected)

    def expect(self, name: str, b64value: str | None) -> None:
        """Expect ``name`` to match ``b64value``; ``None`` declares a value that comes later (trailer)."""
        key = name.strip().lower()
        algorithm = _algorithm_of(key)
        raw = _decode_value(key, algorithm, b64value) if b64value is not None else None
        if key not in self._expected:
            if self._started and algorithm not in self._digests:
                raise ChecksumError("InvalidRequest", f"{key} was not declared before the body was sent.")
            self._expected[key] = raw
            self._digests.setdefault(algorithm, _new_digest(algorithm))
            return
        old = self._expected[key]
        if raw is None:
            return
        if old is not None and not hmac.compare_digest(old, raw):
            raise ChecksumError("InvalidRequest", f"Conflicting values for {key}.")
        self._expected[key] = raw

    def update(self, data: bytes | memoryview) -> None:
        """Hash the next piece of the plaintext body."""
        if len(data):
            self._started = True
            for digest in self._digests.values():
                digest.update(data)

    def computed(self) -> dict[str, str]:
        """The base64 digests computed so far, by expected header name."""
        return {
            key: base64.b64encode(self._digests[_algorithm_of(key)].digest()).decode("ascii")
            for key in self._expected
        }

    def verify(self) -> None:
        """Compare every expected digest with the body hashed; raise :class:`ChecksumError`."""
        for key, raw in self._expected.items():
            algorithm = _algorithm_of(key)
            if raw is None:
                raise ChecksumError(
                    "InvalidRequest", f"The trailing checksum {key} declared in x-amz-trailer was not sent."
                )
            if not hmac.compare_digest(self._digests[algorithm].digest(), raw):
                if algorithm == "md5":
                    raise ChecksumError("BadDigest", "The Content-MD5 you specified did not match what we received.")
                raise ChecksumError(
                    "BadDigest", f"The {algorithm.upper()} you specified did not match the calculated checksum."
                )

    @staticmethod
    def from_headers(headers: Mapping[str, str], trailer_names: Sequence[str]) -> Checker:
        """A checker for ``Content-MD5`` and ``x-amz-checksum-*`` headers plus trailing checksums.

        ``trailer_names`` are the names listed in ``x-amz-trailer`` (the
        header itself is not read here).  ``x-amz-checksum-algorithm``,
        ``-type`` and ``-mode`` carry no value and are skipped.  S3 allows one
        checksum algorithm per request, besides ``Content-MD5``.
        """
        checker = Checker()
        in_headers: set[str] = set()
        for name, value in headers.items():
            key = name.strip().lower()
            if key == "content-md5" or (key.startswith(_PREFIX) and key not in _NOT_VALUES):
                checker.expect(key, value)
                if key != "content-md5":
                    in_headers.add(key)
        trailing: list[str] = []
        for name in trailer_names:
            key = name.strip().lower()
            if not key or key in trailing:
                continue
            if not key.startswith(_PREFIX) or key in _NOT_VALUES:
                raise ChecksumError("InvalidRequest", f"The trailer {key} is not supported.")
            if key in in_headers:
                raise ChecksumError("InvalidRequest", f"{key} is given both as a header and as a trailer.")
            checker.expect(key, None)
            trailing.append(key)
        if len(in_headers) + len(trailing) > 1:
            raise ChecksumError(
                "InvalidRequest",
                "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed.",
            )
        return checker


# -- checksums kept in the sealed block (envelope v2, docs/FORMAT.md 8) -------------------------


def stored_checksum(values: Mapping[str, str], checksum_type: str = "FULL_OBJECT") -> dict[str, str] | None:
    """The sealed-block record ``{"alg", "v", "type"}`` of the one ``x-amz-checksum-<alg>`` in
    ``values`` (a body's verified checksums), or None."""
    for name, value in values.items():
        key = name.strip().lower()
        if key.startswith(_PREFIX) and key[len(_PREFIX) :] in ALGORITHMS:
            return {"alg": key[len(_PREFIX) :].upper(), "v": value.strip(), "type": checksum_type}
    return None


def response_checksum(record: Mapping[str, str]) -> dict[str, str]:
    """The response headers (``x-amz-checksum-<alg>``, ``x-amz-checksum-type``) of a stored record."""
    return {_PREFIX + record["alg"].lower(): record["v"], "x-amz-checksum-type": record["type"]}


def etag_from_md5(content_md5: str | None) -> str | None:
    """The S3 ETag (quoted hex MD5) for a verified ``Content-MD5`` (base64), or None."""
    if content_md5 is None:
        return None
    try:
        raw = base64.b64decode(content_md5.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return f'"{raw.hex()}"' if len(raw) == _SIZES["md5"] else None


# -- multipart checksums (docs/FORMAT.md 8) ------------------------------------------------------

# Which type each algorithm allows (S3: CRC64NVME is full-object only, SHA-1/SHA-256 composite only).
FULL_OBJECT_ALGORITHMS: Final = frozenset({"CRC32", "CRC32C", "CRC64NVME"})
COMPOSITE_ALGORITHMS: Final = frozenset({"CRC32", "CRC32C", "SHA1", "SHA256"})
ELEMENTS: Final = {"CRC32": "ChecksumCRC32", "CRC32C": "ChecksumCRC32C", "CRC64NVME": "ChecksumCRC64NVME",
                   "SHA1": "ChecksumSHA1", "SHA256": "ChecksumSHA256"}


def upload_mode(algorithm: str | None, checksum_type: str | None) -> tuple[str, str] | None:
    """(ALGORITHM, TYPE) of a CreateMultipartUpload's ``x-amz-checksum-algorithm`` and
    ``x-amz-checksum-type``, or None without an algorithm; S3's defaults (FULL_OBJECT for
    CRC64NVME, COMPOSITE otherwise) and its refusals (``InvalidRequest``)."""
    alg = (algorithm or "").strip().upper()
    typ = (checksum_type or "").strip().upper()
    if not alg:
        if typ:
            raise ChecksumError("InvalidRequest", "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header.")
        return None
    if alg.lower() not in ALGORITHMS:
        raise ChecksumError("InvalidRequest", "Checksum algorithm provided is unsupported. Please try again with any of the valid types: [CRC32, CRC32C, CRC64NVME, SHA1, SHA256]")
    if not typ:
        typ = "FULL_OBJECT" if alg == "CRC64NVME" else "COMPOSITE"
    if typ not in ("FULL_OBJECT", "COMPOSITE"):
        raise ChecksumError("InvalidRequest", "Value for x-amz-checksum-type header is invalid.")
    if alg not in (FULL_OBJECT_ALGORITHMS if typ == "FULL_OBJECT" else COMPOSITE_ALGORITHMS):
        raise ChecksumError("InvalidRequest", f"The {typ} checksum type cannot be used with the {alg.lower()} checksum algorithm.")
    return alg, typ


class Hasher:
    """One algorithm's running digest of a plaintext (a part the client sent without a checksum)."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm.upper()
        self._digest = _new_digest(self.algorithm.lower())

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._digest.update(data if isinstance(data, bytes | memoryview) else memoryview(data))

    def digest(self) -> bytes:
        return self._digest.digest()


def decode_b64(algorithm: str, value: str) -> bytes | None:
    """The raw digest of a base64 ``algorithm`` value, or None when it is not one."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == _SIZES.get(algorithm.lower(), -1) else None


def combine_crcs(algorithm: str, parts: Sequence[tuple[bytes, int]]) -> bytes:
    """The CRC of the concatenation of parts given as (raw big-endian CRC, length): the
    FULL_OBJECT value of a multipart upload (awscrt's GF(2) combine; no byte is read again)."""
    alg = algorithm.upper()
    combine = {"CRC32": _crt.combine_crc32, "CRC32C": _crt.combine_crc32c, "CRC64NVME": _crt.combine_crc64nvme}[alg]
    size = _SIZES[alg.lower()]
    crc = None
    for raw, length in parts:
        value = int.from_bytes(raw, "big")
        crc = value if crc is None else combine(crc, value, length)
    return (crc or 0).to_bytes(size, "big")


def multipart_checksum(algorithm: str, checksum_type: str, parts: Sequence[tuple[bytes, int]]) -> dict[str, str]:
    """The object's record ``{"alg", "v", "type"}`` from its parts' (raw digest, plaintext length):
    COMPOSITE = the algorithm over the concatenated part digests, base64 + ``-N``;
    FULL_OBJECT = the combined CRC (base64)."""
    alg = algorithm.upper()
    if checksum_type == "FULL_OBJECT":
        value = base64.b64encode(combine_crcs(alg, parts)).decode("ascii")
    else:
        d = _new_digest(alg.lower())
        for raw, _ in parts:
            d.update(raw)
        value = base64.b64encode(d.digest()).decode("ascii") + f"-{len(parts)}"
    return {"alg": alg, "v": value, "type": checksum_type}
