"""Conditional requests and byte ranges as S3 evaluates them: ``If-Match``/``If-None-Match``/
``If-(Un)Modified-Since`` on reads, ``x-amz-copy-source-if-*`` on copies, ``If-None-Match: *``
and ``If-Match`` on writes (checked again at commit), and the ``Range`` header.  No I/O."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime

from aiohttp import web
from multidict import CIMultiDictProxy

from s3proxy.devstore.errors import S3Error, precondition_failed
from s3proxy.devstore.protocol import not_implemented
from s3proxy.devstore.records import ObjectInfo

RANGE = re.compile(r"[ \t]*bytes[ \t]*=[ \t]*([0-9]{0,20})[ \t]*-[ \t]*([0-9]{0,20})[ \t]*", re.IGNORECASE | re.ASCII)


def parse_http_date(value: str) -> float | None:
    try:
        t = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def etag_matches(header: str, etag: str) -> bool:
    for token in header.split(","):
        token = token.strip()
        if token == "*":
            return True
        if token.startswith("W/"):
            token = token[2:]
        if token.strip('"') == etag:
            return True
    return False


def check_conditions(h: CIMultiDictProxy[str], info: ObjectInfo, *, copy_source: bool = False) -> bool:
    """Evaluate conditional headers (RFC 7232 order, as S3).

    Returns True for "304 Not Modified"; raises 412 PreconditionFailed.  For
    ``x-amz-copy-source-if-*`` every failure is a 412.
    """
    prefix = "x-amz-copy-source-" if copy_source else ""
    get = h.get
    if_match = get(prefix + "if-match")
    if_none_match = get(prefix + "if-none-match")
    if_modified = get(prefix + "if-modified-since")
    if_unmodified = get(prefix + "if-unmodified-since")
    modified = int(info.last_modified)
    if if_match is not None:
        if not etag_matches(if_match, info.etag):
            raise precondition_failed("x-amz-copy-source-If-Match" if copy_source else "If-Match")
    elif if_unmodified is not None:
        t = parse_http_date(if_unmodified)
        if t is not None and modified > t:
            raise precondition_failed("If-Unmodified-Since" if not copy_source else "x-amz-copy-source-If-Unmodified-Since")
    if if_none_match is not None:
        if etag_matches(if_none_match, info.etag):
            if copy_source:
                raise precondition_failed("x-amz-copy-source-If-None-Match")
            return True
    elif if_modified is not None:
        t = parse_http_date(if_modified)
        if t is not None and modified <= t:
            if copy_source:
                raise precondition_failed("x-amz-copy-source-If-Modified-Since")
            return True
    return False


def write_conditions(request: web.Request, key: str) -> Callable[[ObjectInfo | None], None] | None:
    """Conditional writes (``If-None-Match: *``, ``If-Match: <etag>``), checked at commit."""
    if_none_match = request.headers.get("If-None-Match")
    if_match = request.headers.get("If-Match")
    if if_none_match is None and if_match is None:
        return None
    if if_none_match is not None and if_none_match.strip() != "*":
        raise not_implemented("If-None-Match other than *")

    def check(old: ObjectInfo | None) -> None:
        if if_none_match is not None and old is not None:
            raise precondition_failed("If-None-Match")
        if if_match is not None:
            if old is None:
                raise S3Error("NoSuchKey", "The specified key does not exist.", 404, extra={"Key": key})
            if not etag_matches(if_match, old.etag):
                raise precondition_failed("If-Match")

    return check


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """(start, length) of a ``Range`` header; None when S3 would ignore it; raises InvalidRange."""
    m = RANGE.fullmatch(value)
    if m is None:
        return None
    a, b = m.group(1), m.group(2)
    if a == "" and b == "":
        return None
    if a == "":
        n = int(b)
        if n == 0 or size == 0:
            raise invalid_range(size, value)
        start = max(0, size - n)
        return start, size - start
    start = int(a)
    if b != "" and int(b) < start:
        return None
    if start >= size:
        raise invalid_range(size, value)
    end = size - 1 if b == "" else min(int(b), size - 1)
    return start, end - start + 1


def invalid_range(size: int, requested: str) -> S3Error:
    return S3Error(
        "InvalidRange",
        "The requested range is not satisfiable",
        416,
        extra={"RangeRequested": requested, "ActualObjectSize": str(size)},
        headers={"Content-Range": f"bytes */{size}"},
    )
