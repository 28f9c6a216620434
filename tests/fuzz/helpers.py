"""Shared pieces of the fuzz tests: settings, the 4xx-or-correct property, a hang guard."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from s3proxy.aws.errors import S3Error, error_xml

EXAMPLES = int(os.environ.get("S3PROXY_FUZZ_EXAMPLES", "200"))
# One input may take this long at most (a generous bound: the slowest case,
# a 5 MiB K part, decrypts in well under a second).
HANG_SECONDS = 10.0

FUZZ = settings(
    deadline=None,
    max_examples=EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

T = TypeVar("T")


class Hang(Exception):
    """An input took longer than HANG_SECONDS."""


@contextmanager
def no_hang(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Fail (raise Hang) if the block runs longer than ``seconds`` (main thread, POSIX)."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise Hang(f"no result after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check_s3_error(err: BaseException) -> S3Error:
    """``err`` must be an S3Error with a 4xx status that renders as an S3 error body."""
    assert isinstance(err, S3Error), f"{type(err).__name__}: {err!r}"
    assert 400 <= err.status < 500, (err.status, err.code, err.message)
    assert err.code and err.code.isascii() and err.code.isalnum(), err.code
    # What the client sees must render: every piece encodable as UTF-8.
    body = error_xml(err.code, err.message, "REQUESTID", "/bucket/key", err.extra)
    assert body.startswith(b"<?xml")
    for name, value in err.headers.items():
        name.encode("latin-1")
        value.encode("latin-1")
    return err


def s3_outcome(fn: Callable[[], T]) -> T | S3Error:
    """Run ``fn``: its result, or the S3Error it raised (checked); any other exception fails the test."""
    with no_hang():
        try:
            return fn()
        except S3Error as err:
            return check_s3_error(err)


# Text a client can put in a request: anything, with a bias towards the
# characters parsers trip on.
TRICKY_CHARS = (
    "0123456789²³¹٠١٢٣٤٥٦٧٨٩０１２३߀᠐𝟎𝟗+-_ .,;:=&?/%\t\r\n\x00\x0b\x0c\x1c\x85\xa0\u2028\u3000"
    "abcdefABCDEFxXzZ\udcff\udc80\ud800é€"
)
tricky_text = st.text(alphabet=st.sampled_from(TRICKY_CHARS), max_size=24) | st.text(max_size=24)


def unicode_digit_variants(n: int) -> list[str]:
    """``str(n)`` with its digits replaced by look-alikes int() and isdigit() accept, plus int() syntax S3 refuses."""
    s = str(n)
    out = [
        s.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")),  # Arabic-Indic: int() accepts
        s.translate(str.maketrans("0123456789", "０１２３４５６７８９")),  # full-width: int() accepts
        s.translate(str.maketrans("0123456789", "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗")),  # mathematical digits
        s[:-1] + "²",  # isdigit() accepts, int() refuses
        "+" + s,
        " " + s,
        s + " ",
        "\t" + s,
        s[:1] + "_" + s[1:] if len(s) > 1 else s + "_0",
        "-" + s,
        "0x" + s,
        s + "\x00",
    ]
    return [v for v in out if v != s]
