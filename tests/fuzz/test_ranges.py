"""Range header parsing (s3proxy/aws/ranges.py): any header gives a range, None (ignored) or a 416."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from s3proxy.aws.ranges import ByteRange, parse_range
from tests.fuzz.helpers import FUZZ, no_hang, s3_outcome, tricky_text

_REF = re.compile(r"[ \t]*bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*", re.IGNORECASE | re.ASCII)


def reference(value: str) -> tuple[int | None, int | None, int | None] | None:
    """What the header means, ASCII digits only: (start, end, suffix), or None to ignore it."""
    m = _REF.fullmatch(value)
    if not m or m.group(1) == m.group(2) == "":
        return None
    a, b = m.group(1), m.group(2)
    if a == "":
        return None, None, int(b)
    if b == "":
        return int(a), None, None
    if int(b) < int(a):
        return None
    return int(a), int(b), None


numbers = st.integers(min_value=0, max_value=2**70).map(str) | st.sampled_from(["", "0", "00", "007", "²", "٣", "+1", "1_0", "-1"])
spaces = st.sampled_from(["", " ", "\t", "  ", "\u3000", "\xa0", "\n"])
structured = st.builds(
    lambda s1, unit, s2, eq, s3, a, s4, dash, s5, b, s6: f"{s1}{unit}{s2}{eq}{s3}{a}{s4}{dash}{s5}{b}{s6}",
    spaces, st.sampled_from(["bytes", "BYTES", "Bytes", "items", ""]), spaces, st.sampled_from(["=", ""]), spaces,
    numbers, spaces, st.sampled_from(["-", "", "--", ","]), spaces, numbers, spaces,
)


@FUZZ
@given(value=st.one_of(structured, tricky_text, st.text()), size=st.integers(min_value=0, max_value=2**64))
def test_parse_range_any_header(value: str, size: int) -> None:
    with no_hang():
        r = parse_range(value)
    ref = reference(value)
    m = _REF.fullmatch(value)
    huge = m is not None and any(len(g.lstrip("0")) > 20 for g in m.groups())
    if not huge:
        # Exactly the ASCII meaning; anything else (Unicode digits or spaces, '+', '_') is ignored.
        got = None if r is None else (r.start, r.end, r.suffix)
        assert got == ref, (value, r, ref)
    if r is None:
        return
    assert isinstance(r, ByteRange)
    out = s3_outcome(lambda: r.resolve(size))
    if isinstance(out, tuple):
        start, end = out
        assert 0 <= start < end <= size
        if r.suffix is not None:
            assert end == size and end - start == min(r.suffix, size)
        else:
            assert start == r.start
            assert end == (size if r.end is None else min(r.end + 1, size))
    else:
        assert out.status == 416 and out.code == "InvalidRange"
        assert out.headers["Content-Range"] == f"bytes */{size}"


@FUZZ
@given(a=st.integers(min_value=0, max_value=10**6), b=st.integers(min_value=0, max_value=10**6))
def test_ascii_ranges_parse_exactly(a: int, b: int) -> None:
    assert parse_range(f"bytes={a}-") == ByteRange(a, None)
    assert parse_range(f"bytes=-{b}") == ByteRange(None, None, b)
    assert parse_range(f"bytes={a}-{b}") == (ByteRange(a, b) if b >= a else None)
