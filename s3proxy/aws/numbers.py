"""Numbers from the wire: ASCII digits only, bounded, never a 500.

``str.isdigit()`` and ``int()`` accept Unicode digits (``²``, ``٣``) and
``int()`` accepts ``+``, ``_`` and whitespace; S3 accepts none of these.
Every integer s3proxy reads from a request (Expires, partNumber, max-keys,
Content-Length, chunk sizes, ranges) goes through ``parse_uint``.
"""

from __future__ import annotations

import re
from typing import Final

_DEC: Final = re.compile(r"[0-9]+", re.ASCII)
_HEX: Final = re.compile(r"[0-9a-fA-F]+", re.ASCII)
MAX_DIGITS: Final = 20  # 2**64 has 20 decimal digits; longer is never a valid S3 number


def parse_uint(text: str | None, *, max_digits: int = MAX_DIGITS) -> int | None:
    """A non-negative decimal integer of ASCII digits, or None."""
    if text is None or len(text) > max_digits or not _DEC.fullmatch(text):
        return None
    return int(text, 10)


def parse_hex(text: str | None, *, max_digits: int = 16) -> int | None:
    """A non-negative hexadecimal integer of ASCII hex digits, or None."""
    if text is None or len(text) > max_digits or not _HEX.fullmatch(text):
        return None
    return int(text, 16)
