"""Part tables of K objects (docs/FORMAT.md 2.2, 2.4), sans-IO: where each part lies in the
stored object, as ``[(offset, stored length)]``, from the 70-byte part headers.

A header's length and number are unauthenticated until its part is decrypted (the commitment
covers them), so a table only says where to look; a wrong one fails authentication later.
What is checked here: every part is at least ``K_PART_OVERHEAD`` long, the lengths add up to
the object's size, there are exactly ``n`` parts when the ETag says ``-N``, and part numbers
strictly increase (``PartNumberSequence``).

- ``uniform_guess``: all parts but the last as long as the first (how S3 clients upload),
  confirmed by ``confirm_guess`` with the headers at the guessed boundaries;
- ``HeaderWalk``: otherwise walk header by header (``next_offset``, ``feed``, ``table``);
- ``table_from_sizes``: part sizes a backend reported (``HEAD ?partNumber=``), when they fit.

``crypto.streams.k_part_table`` drives these through a ``fetch(start, end)`` callable.

Imports: ``crypto.errors``, ``crypto.sizes``, ``crypto.k_body``.
"""

from __future__ import annotations

from collections.abc import Sequence

from s3proxy.crypto.chunked import Buffer
from s3proxy.crypto.errors import FormatError, InvalidCiphertextSize, Truncated
from s3proxy.crypto.k_body import PartNumberSequence, parse_k_header
from s3proxy.crypto.sizes import K_HEADER_SIZE, K_PART_OVERHEAD, MAX_PART_NUMBER

__all__ = ["HeaderWalk", "PartTable", "check_part_count", "confirm_guess", "part_info", "table_from_sizes",
           "uniform_guess"]

PartTable = list[tuple[int, int]]


def check_part_count(n: int | None) -> None:
    """An ETag's ``-N`` that no K object has."""
    if n is not None and not 1 <= n <= MAX_PART_NUMBER:
        raise InvalidCiphertextSize(f"K object with {n} parts")


def part_info(header: Buffer) -> tuple[int, int]:
    """(stored length, part number) from a part header; FormatError if it is not one."""
    h = parse_k_header(header)
    return h.part_size, h.part_number


def _offsets(sizes: Sequence[int]) -> PartTable:
    table, off = [], 0
    for c in sizes:
        table.append((off, c))
        off += c
    return table


def uniform_guess(ct_total: int, n: int | None, first_size: int) -> PartTable | None:
    """``n`` parts, all but the last ``first_size`` long; None when that cannot be the layout."""
    if n is None:
        return None
    last = ct_total - (n - 1) * first_size
    if not K_PART_OVERHEAD <= last <= first_size:
        return None
    return _offsets([first_size] * (n - 1) + [last])


def confirm_guess(guess: PartTable, first_number: int, headers: Sequence[Buffer]) -> bool:
    """Whether the headers read at ``guess``'s boundaries after the first are part headers of the
    guessed lengths; raises ``PartOrderError`` when they are but their numbers do not increase."""
    infos = []
    for header, (_, size) in zip(headers, guess[1:], strict=True):
        try:
            info = part_info(header)
        except FormatError:
            return False  # not a part boundary: the guess was wrong
        if info[0] != size:
            return False
        infos.append(info)
    order = PartNumberSequence()
    for number in [first_number, *(pn for _, pn in infos)]:
        order.check(number)
    return True


class HeaderWalk:
    """Walk the part headers from the first: ask ``next_offset`` where the next header is,
    ``feed`` it, and take ``table()`` when ``next_offset`` is None."""

    def __init__(self, ct_total: int, n: int | None) -> None:
        check_part_count(n)
        self._total = ct_total
        self._n = n
        self._sizes: list[int] = []
        self._off = 0
        self._order = PartNumberSequence()

    @property
    def next_offset(self) -> int | None:
        if self._off >= self._total or len(self._sizes) >= (self._n or MAX_PART_NUMBER):
            return None
        if self._off + K_HEADER_SIZE > self._total:
            raise Truncated(f"K object ends inside the part header at {self._off}")
        return self._off

    def feed(self, header: Buffer) -> None:
        size, number = part_info(header)
        self._order.check(number)
        self._sizes.append(size)
        self._off += size

    def table(self) -> PartTable:
        if self._off != self._total or (self._n is not None and len(self._sizes) != self._n):
            raise InvalidCiphertextSize("the part headers do not add up to the object size")
        return _offsets(self._sizes)


def table_from_sizes(sizes: Sequence[int] | None, ct_total: int) -> PartTable | None:
    """The table of part sizes a backend reported, if they can be a K object of ``ct_total`` bytes."""
    if not sizes or sum(sizes) != ct_total or not all(c >= K_PART_OVERHEAD for c in sizes):
        return None
    return _offsets(sizes)
