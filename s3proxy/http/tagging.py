"""Tags and system headers kept in the sealed block (docs/FORMAT.md 8 ``"t"`` and ``"h"``).

A bucket with ``tags: sealed`` keeps each object's tags inside its sealed block
and never sends them to the backend; the proxy then checks them itself, with
S3's rules and error codes (at most 10 tags, keys of 1 to 128 and values of up
to 256 UTF-16 code units, letters, digits, spaces and ``_ . : / = + - @``, no
``aws:`` keys, no duplicates).  A bucket's ``seal_headers`` (Content-Type,
Content-Disposition, Content-Language) are kept there too; the backend stores
``application/octet-stream`` and neither of the others.  Pure: which headers
go where, parsing and rendering; the tagging operations are
``s3proxy.http.tagging_ops``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from typing import Final
from urllib.parse import parse_qsl, quote

from multidict import CIMultiDict

from s3proxy.aws import xmlsafe
from s3proxy.aws.errors import S3Error
from s3proxy.config import BucketSettings
from s3proxy.crypto.seal import SealContents

MAX_TAGS: Final = 10  # per object (S3 "Categorizing your storage using tags")
MAX_KEY: Final = 128  # UTF-16 code units, as S3 counts
MAX_VALUE: Final = 256
TAGGING: Final = "x-amz-tagging"
DIRECTIVE: Final = "x-amz-tagging-directive"
COUNT: Final = "x-amz-tagging-count"
OCTET_STREAM: Final = "application/octet-stream"  # what the backend stores for a sealed Content-Type
_PUNCTUATION: Final = frozenset("_.:/=+-@")
_SPELLED: Final = {"content-type": "Content-Type", "content-disposition": "Content-Disposition",
                   "content-language": "Content-Language"}


def sealed(settings: BucketSettings) -> bool:
    """Whether a bucket keeps tags in the sealed block (and the backend sees none)."""
    return settings.tags == "sealed"


def _units(text: str) -> int | None:
    try:
        return len(text.encode("utf-16-le")) // 2
    except UnicodeEncodeError:  # a lone surrogate (a header byte that was not UTF-8)
        return None


def _allowed(text: str) -> bool:
    return all(c in _PUNCTUATION or unicodedata.category(c)[0] in "LNZ" for c in text)


def check(tags: Iterable[tuple[str, str]]) -> dict[str, str]:
    """A tag set as S3 accepts it, as a dict; else S3's error (``BadRequest`` over 10 tags,
    ``InvalidTag`` for a bad key, value or a repeated key)."""
    pairs = list(tags)
    if len(pairs) > MAX_TAGS:
        raise S3Error("BadRequest", f"Object tags cannot be greater than {MAX_TAGS}", 400)
    out: dict[str, str] = {}
    for key, value in pairs:
        n = _units(key)
        if n is None or not 1 <= n <= MAX_KEY or not _allowed(key):
            raise S3Error("InvalidTag", "The TagKey you have provided is invalid", 400)
        if key.lower().startswith("aws:"):
            raise S3Error("InvalidTag", "Your TagKey cannot be prefixed with aws:", 400)
        n = _units(value)
        if n is None or n > MAX_VALUE or not _allowed(value):
            raise S3Error("InvalidTag", "The TagValue you have provided is invalid", 400)
        if key in out:
            raise S3Error("InvalidTag", "Cannot provide multiple Tags with the same key", 400)
        out[key] = value
    return out


def from_header(value: str | None) -> dict[str, str]:
    """``x-amz-tagging`` (PutObject, CreateMultipartUpload, CopyObject with REPLACE, the POST
    form's tags): URL-encoded query parameters, keys not repeated."""
    if value is None or not value.strip():
        return {}
    try:
        pairs = parse_qsl(value, keep_blank_values=True, strict_parsing=True, errors="strict")
    except (ValueError, UnicodeDecodeError):
        pairs = []
    if not pairs or len({k for k, _ in pairs}) != len(pairs):
        raise S3Error(
            "InvalidArgument", "The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL query "
            "parameters without tag name duplicates.", 400,
        )
    return check(pairs)


def from_xml(body: bytes) -> dict[str, str]:
    """A ``Tagging`` document (PutObjectTagging, the POST form's ``tagging`` field)."""
    try:
        pairs = xmlsafe.tagging(body)  # well-formed, at most 50 (bucket tags' limit), XML-safe text
    except S3Error as e:
        if e.code == "InvalidTag" and "greater than" in e.message:
            raise S3Error("BadRequest", f"Object tags cannot be greater than {MAX_TAGS}", 400) from None
        raise
    return check(pairs)


def to_header(tags: Mapping[str, str]) -> str:
    """The ``x-amz-tagging`` value for ``tags`` (a copy into a bucket that keeps tags plain)."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in tags.items())


def to_xml(tags: Mapping[str, str]) -> bytes:
    """GetObjectTagging's answer."""
    return xmlsafe.tagging_xml(tags.items())


def form_field(value: str) -> str:
    """A POST form's ``tagging`` field (a ``Tagging`` document) as an ``x-amz-tagging`` value."""
    return to_header(from_xml(value.encode("utf-8", "surrogateescape")))


# -- sealed system headers -------------------------------------------------------------------------


def sealed_headers(settings: BucketSettings, headers: Mapping[str, str]) -> dict[str, str]:
    """The values of the bucket's ``seal_headers`` among a request's ``headers`` (for ``"h"``)."""
    lower = {k.lower(): v for k, v in headers.items()}
    return {name: lower[name] for name in settings.seal_headers if name in lower}


def for_backend(settings: BucketSettings, headers: Mapping[str, str], sealed: Iterable[str] = ()) -> dict[str, str]:
    """Backend headers of a write (names lower case) without what the bucket seals: its
    ``seal_headers`` and the ``sealed`` names (a copy's source's ``"h"``), Content-Type replaced by
    ``application/octet-stream``; ``x-amz-tagging`` and its directive when the bucket seals tags
    (a copy then sets the directive ``REPLACE`` itself: the backend keeps no tags)."""
    drop = {*settings.seal_headers, *sealed}
    if settings.tags == "sealed":
        drop |= {TAGGING, DIRECTIVE}
    out = {k: v for k, v in headers.items() if k.lower() not in drop}
    if "content-type" in drop:
        out["content-type"] = OCTET_STREAM
    return out


def answer(hdrs: CIMultiDict[str], contents: SealContents | None, settings: BucketSettings,
           query: Mapping[str, str]) -> None:
    """Client response headers of a read: the sealed headers (a ``response-content-*`` override
    in ``query`` still wins) and, when the bucket seals tags, ``x-amz-tagging-count`` from ``"t"``.
    A header the bucket seals that the object's ``"h"`` lacks is never the backend's (a value a
    backend writer planted): absent, Content-Type ``application/octet-stream``."""
    if contents is not None:
        for unsent in settings.seal_headers:
            if unsent not in contents.headers and ("response-" + unsent) not in query:
                hdrs.popall(_SPELLED[unsent], None)
                if unsent == "content-type":
                    hdrs[_SPELLED[unsent]] = OCTET_STREAM
        for name, value in contents.headers.items():
            override = query.get("response-" + name)
            hdrs[_SPELLED[name]] = value if override is None else override.replace("\r", " ").replace("\n", " ")
    if settings.tags == "sealed":
        hdrs.popall(COUNT, None)
        if contents is not None and contents.tags:
            hdrs[COUNT] = str(len(contents.tags))
