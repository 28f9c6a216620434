"""Backend capabilities as values: the names, a finding per name, and the named profiles.

Pure data (no I/O): ``s3proxy.backend.probes`` probes a backend and produces the same
``Capabilities`` a profile gives.  ``PROFILES`` holds what each backend's documentation says;
the sources are listed in docs/BACKENDS.md.  "unknown" means not documented either way, and
s3proxy then behaves as if the capability were missing.  ``copies_pinned`` is the gate the
proxy's self-copies ask (``s3proxy.http``).

Imports nothing of the proxy (the probe, the watch and the handlers import it, never the reverse).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Value = Literal["yes", "no", "unknown"]

# Every capability, in the order the probe asks and doctor prints.
CAPABILITIES: tuple[str, ...] = (
    "put_get",             # PutObject + GetObject of a small body (s3proxy cannot work without)
    "range_get",           # GET with Range answers 206 with exactly those bytes (required)
    "multipart_upload",    # Create/UploadPart/Complete (required for large objects)
    "multipart_etags",     # listings show multipart objects with "<md5>-N" ETags
    "upload_part_copy",    # UploadPartCopy copies the source bytes
    "min_part_size",       # non-last parts below 5 MiB are refused at Complete
    "put_if_none_match",   # PUT with If-None-Match: * fails (412) when the key exists
    "put_if_match",        # PUT with If-Match: <etag> is checked (412 on a mismatch)
    "complete_if_none_match",  # CompleteMultipartUpload with If-None-Match: * is checked
    "copy_if_match",  # CopyObject checks x-amz-copy-source-if-match and the destination If-Match (412)
    "versioning",          # GetBucketVersioning answers (the status is in the reason)
    "tagging",             # object tagging stored and returned
    "object_attributes",   # GetObjectAttributes
    "checksums",           # a wrong x-amz-checksum-sha256 on PUT is refused
    "checksum_mode",       # HEAD with x-amz-checksum-mode: ENABLED returns the checksum
    "user_metadata",       # user metadata of 2 KiB (S3's limit) stored and returned intact
    "metadata_persistent",  # user metadata survives a restart of the backend (docs only)
)


@dataclass(frozen=True)
class Finding:
    value: Value
    reason: str
    amount: int | None = None  # user_metadata: the largest size (bytes) seen stored


@dataclass(frozen=True)
class Capabilities:
    findings: Mapping[str, Finding]
    source: str  # "probe" or "profile:<name>"
    bucket: str | None = None
    requests: int = 0
    seconds: float = 0.0
    at: float = field(default_factory=time.time)
    bucket_versioning: str = ""  # the probed bucket's versioning status: "", "Enabled" or "Suspended"

    def value(self, name: str) -> Value:
        f = self.findings.get(name)
        return f.value if f is not None else "unknown"

    def reachable(self) -> bool:
        """Whether the backend answered at all (a probe of a down backend is all unknown)."""
        return self.source != "probe" or self.value("put_get") != "unknown"


# CopyObject checks ``x-amz-copy-source-if-match`` and the destination's ``If-Match`` (412 on a
# mismatch): the proxy's self-copies (sealed re-tagging, a trailing checksum) rely on both.
COPY_IF_MATCH = "copy_if_match"


def copies_pinned(caps: Capabilities | None) -> bool:
    """Whether self-copies may rely on COPY_IF_MATCH: not where it is known missing (unknown:
    yes, as AWS, MinIO and Ceph document it; a probe or profile that says "no" turns them off)."""
    return caps is None or caps.value(COPY_IF_MATCH) != "no"


def finding(value: Value, reason: str, amount: int | None = None) -> Finding:
    return Finding(value, reason, amount)


# ---------------------------------------------------------------------------- profiles
# What each backend's documentation says (docs/BACKENDS.md lists the sources).  "unknown":
# not documented either way; s3proxy then behaves as if the capability were missing.

_AWS: dict[str, Finding] = {
    "put_get": finding("yes", "S3 API"), "range_get": finding("yes", "S3 API"),
    "multipart_upload": finding("yes", "S3 API"), "multipart_etags": finding("yes", "S3 multipart ETags end in -N"),
    "upload_part_copy": finding("yes", "S3 API"), "min_part_size": finding("yes", "5 MiB minimum part size"),
    "put_if_none_match": finding("yes", "conditional writes (2024)"), "put_if_match": finding("yes", "conditional writes (2024)"),
    "complete_if_none_match": finding("yes", "conditional writes (2024)"), "versioning": finding("yes", "S3 API"),
    "tagging": finding("yes", "S3 API"), "object_attributes": finding("yes", "S3 API"), "checksums": finding("yes", "S3 API"),
    "checksum_mode": finding("yes", "S3 API"), "user_metadata": finding("yes", "2 KB of user metadata", 2048),
    "metadata_persistent": finding("yes", "stored with the object"),
    "copy_if_match": finding("yes", "x-amz-copy-source-if-match; If-Match on CopyObject (conditional writes)"),
}


def _profile(base: Mapping[str, Finding], **over: Finding) -> dict[str, Finding]:
    return {**base, **over}


PROFILES: dict[str, dict[str, Finding]] = {
    "aws": _AWS,
    "minio": _profile(
        _AWS, copy_if_match=finding("unknown", "destination If-Match on CopyObject not documented"), complete_if_none_match=finding("unknown", "not documented"),
        put_if_match=finding("unknown", "not documented for PUT"), put_if_none_match=finding("unknown", "not documented for PUT"),
    ),
    "ceph": _profile(
        _AWS, copy_if_match=finding("unknown", "destination If-Match on CopyObject not documented"), put_if_none_match=finding("unknown", "release dependent"), put_if_match=finding("unknown", "release dependent"),
        complete_if_none_match=finding("unknown", "release dependent"),
        object_attributes=finding("unknown", "release dependent (Squid and later)"),
        checksums=finding("unknown", "release dependent"), checksum_mode=finding("unknown", "release dependent"),
        user_metadata=finding("yes", "no defined limit; 16,000 bytes per request", 2048),
    ),
    # rclone serve s3 (docs: "Supported operations", "Versioning is not currently supported",
    # metadata "only saved in memory"; issue #7454: multipart copy), checked by probe on v1.75.2.
    "rclone": {
        "put_get": finding("yes", "serve s3"),
        "range_get": finding("yes", "the range with Content-Range, status 200 (not 206)"),
        "multipart_upload": finding("yes", "serve s3"),
        "multipart_etags": finding("no", "lists multipart objects with a plain ETag"),
        "upload_part_copy": finding("no", "multipart copy does not work (rclone #7454)"),
        "min_part_size": finding("no", "not enforced"),
        "put_if_none_match": finding("no", "ignored"), "put_if_match": finding("no", "ignored"),
        "complete_if_none_match": finding("no", "ignored"),
        "copy_if_match": finding("unknown", "not documented"),
        "versioning": finding("yes", "GetBucketVersioning answers; versioning is not supported"),
        "tagging": finding("no", "not a supported operation"),
        "object_attributes": finding("no", "not a supported operation"),
        "checksums": finding("no", "not verified"),
        "checksum_mode": finding("yes", "x-amz-checksum-* kept as metadata and returned"),
        "user_metadata": finding("no", "about 1,800 bytes", 1792),
        "metadata_persistent": finding("no", "metadata other than mtime is kept in memory only"),
    },
    "garage": _profile(
        _AWS, copy_if_match=finding("unknown", "destination If-Match on CopyObject not documented"), versioning=finding("no", "GetBucketVersioning is a stub"), tagging=finding("no", "not implemented (501)"),
        object_attributes=finding("no", "not implemented (501)"), put_if_none_match=finding("unknown", "not documented"),
        put_if_match=finding("unknown", "not documented"), complete_if_none_match=finding("unknown", "not documented"),
        checksums=finding("unknown", "release dependent"), checksum_mode=finding("unknown", "release dependent"),
        min_part_size=finding("unknown", "not documented"), user_metadata=finding("unknown", "limit not documented"),
    ),
    "seaweedfs": _profile(
        _AWS, copy_if_match=finding("unknown", "destination If-Match on CopyObject not documented"), put_if_none_match=finding("unknown", "release dependent"), put_if_match=finding("unknown", "release dependent"),
        complete_if_none_match=finding("unknown", "release dependent"), object_attributes=finding("unknown", "not documented"),
        checksums=finding("unknown", "not documented"), checksum_mode=finding("unknown", "not documented"),
        min_part_size=finding("unknown", "not documented"), versioning=finding("unknown", "release dependent"),
        user_metadata=finding("unknown", "limit not documented"),
    ),
    "custom": {},  # nothing pinned, nothing probed: every capability unknown (the safe behaviour)
}


def from_profile(name: str) -> Capabilities:
    pinned = PROFILES[name]
    findings = {c: pinned.get(c, finding("unknown", f"not pinned by profile {name}")) for c in CAPABILITIES}
    return Capabilities(findings, f"profile:{name}")
