"""HTTP Range parsing for S3 (pure).

S3 supports one range per request: ``bytes=a-b``, ``bytes=a-``, ``bytes=-n``.
A header S3 would ignore (syntax it doesn't understand, several ranges) is
ignored here too and the whole object is returned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from s3proxy.http.errors import S3Error

_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class ByteRange:
    start: int | None  # None: suffix range
    end: int | None  # inclusive; None: open
    suffix: int | None = None

    def resolve(self, size: int) -> tuple[int, int]:
        """[start, end) within an object of ``size`` bytes; raises InvalidRange."""
        if self.suffix is not None:
            if self.suffix == 0 or size == 0:
                raise invalid_range(size)
            return max(0, size - self.suffix), size
        assert self.start is not None
        if self.start >= size:
            raise invalid_range(size)
        end = size if self.end is None else min(self.end + 1, size)
        return self.start, end


def invalid_range(size: int) -> S3Error:
    return S3Error(
        "InvalidRange",
        "The requested range is not satisfiable",
        416,
        headers={"Content-Range": f"bytes */{size}"},
        extra={"ActualObjectSize": str(size)},
    )


def parse_range(value: str | None) -> ByteRange | None:
    if not value:
        return None
    m = _RANGE.match(value)
    if not m:
        return None
    a, b = m.group(1), m.group(2)
    if a == "" and b == "":
        return None
    if a == "":
        return ByteRange(None, None, int(b))
    start = int(a)
    if b == "":
        return ByteRange(start, None)
    end = int(b)
    if end < start:
        return None  # S3 ignores a range whose last byte precedes its first
    return ByteRange(start, end)
