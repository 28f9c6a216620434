"""HTTP Range parsing for S3 (pure).

S3 supports one range per request: ``bytes=a-b``, ``bytes=a-``, ``bytes=-n``.
A header S3 would ignore (syntax it doesn't understand, several ranges) is
ignored here too and the whole object is returned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from s3proxy.aws.errors import S3Error
from s3proxy.aws.numbers import MAX_DIGITS, parse_uint

# ASCII digits and blanks only: ``\d`` and ``\s`` would accept Unicode digits
# (which int() then parses, or refuses with a 500) and Unicode spaces.
_RANGE = re.compile(r"[ \t]*bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*", re.IGNORECASE | re.ASCII)
# Larger than any object: a longer number is clamped to it (int() of a
# 5000-digit string would raise ValueError).
_HUGE = 10**MAX_DIGITS


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
    m = _RANGE.fullmatch(value)
    if not m:
        return None
    a, b = m.group(1), m.group(2)
    if a == "" and b == "":
        return None
    if a == "":
        return ByteRange(None, None, _number(b))
    start = _number(a)
    if b == "":
        return ByteRange(start, None)
    end = _number(b)
    if end < start:
        return None  # S3 ignores a range whose last byte precedes its first
    return ByteRange(start, end)


def _number(digits: str) -> int:
    """A run of ASCII digits (the regex matched it) as an int, clamped to ``_HUGE``."""
    n = parse_uint(digits.lstrip("0") or "0")
    return _HUGE if n is None else min(n, _HUGE)
