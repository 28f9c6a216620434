"""crypto.objectinfo: what the handlers ask about a stored object's layout, checked against the
real encryptors and the range planner (no sockets)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3proxy.crypto import objectinfo, sizes
from s3proxy.crypto.errors import FormatError
from s3proxy.crypto.format import KPartEncryptor, SEncryptor
from s3proxy.crypto.k_table import table_from_sizes


def test_parts_from_etag() -> None:
    assert objectinfo.parts_from_etag('"0123abcd-3"') == 3
    assert objectinfo.parts_from_etag("0123abcd-10000") == 10000
    assert objectinfo.parts_from_etag('"0123abcd"') is None
    assert objectinfo.parts_from_etag('"x-123456"') is None  # six digits: no S3 part count
    assert objectinfo.parts_from_etag(None) is None
    assert objectinfo.parts_from_etag("") is None


def test_layout_questions() -> None:
    assert objectinfo.in_parts("K") and not objectinfo.in_parts("S")
    assert objectinfo.copied_by_parts("K", '"a-2"') and not objectinfo.copied_by_parts("K", '"a"')
    assert not objectinfo.copied_by_parts("S", '"a-2"')
    assert objectinfo.needs_part_table("K", '"a"') and not objectinfo.needs_part_table("K", '"a-2"')
    assert not objectinfo.needs_part_table("S", '"a"')
    assert objectinfo.single_part_table("S", 99) == [(0, 99)]
    assert objectinfo.single_part_table("K", 99) is None
    assert objectinfo.header_size("S") == sizes.S_HEADER_SIZE
    assert objectinfo.header_size("K") == sizes.K_HEADER_SIZE


@pytest.mark.parametrize("p", [0, 1, 16383, 16384, 16385, 100_000])
def test_stored_sizes_are_what_the_encryptors_write(p: int) -> None:
    dek, oid, data = os.urandom(32), os.urandom(16), os.urandom(p)
    enc = SEncryptor(dek, oid)
    assert objectinfo.stored_size(p) == len(enc.update(data) + enc.finalize())
    kenc = KPartEncryptor(dek, oid, 1, p)
    assert objectinfo.stored_part_size(p) == len(kenc.update(data) + kenc.finalize())
    assert objectinfo.plaintext_size("S", objectinfo.stored_size(p), '"etag"') == p
    assert objectinfo.plaintext_size("K", objectinfo.stored_part_size(p), '"etag-1"') == p
    assert objectinfo.plaintext_size("K", objectinfo.stored_part_size(p), '"etag"') is None
    assert objectinfo.part_plaintext_size(objectinfo.stored_part_size(p)) == p


def test_impossible_sizes() -> None:
    with pytest.raises(FormatError):
        objectinfo.plaintext_size("S", 10, None)  # shorter than an empty S object
    with pytest.raises(FormatError):
        objectinfo.plaintext_size("K", sizes.K_PART_OVERHEAD, '"a-2"')  # two parts cannot fit
    with pytest.raises(FormatError):
        objectinfo.part_plaintext_size(sizes.K_PART_OVERHEAD - 1)
    with pytest.raises(FormatError):
        objectinfo.size_from_table("K", [(0, 5)])
    assert objectinfo.listed_size(10, None) is None
    assert objectinfo.listed_size(sizes.K_PART_OVERHEAD, b"2") is None
    assert objectinfo.listed_size(sizes.K_PART_OVERHEAD, b"0") is None
    assert objectinfo.listed_size(sizes.K_PART_OVERHEAD * 2, "9" * 5000) is None  # no number Python parses
    assert objectinfo.listed_size(sizes.K_PART_OVERHEAD + 7, b"1") == 7
    assert objectinfo.listed_size(objectinfo.stored_size(7), None) == 7
    assert objectinfo.listed_part_size(3) == 0  # never negative
    assert objectinfo.listed_part_size(sizes.K_PART_OVERHEAD + 9) == 9


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3 * 1024 * 1024), min_size=1, max_size=12), st.data())
def test_part_arithmetic_agrees_with_the_range_planner(part_sizes: list[int], data: st.DataObject) -> None:
    stored = [objectinfo.stored_part_size(p) for p in part_sizes]
    table = table_from_sizes(stored, sum(stored))
    assert table is not None
    size = sum(part_sizes)
    assert objectinfo.size_from_table("K", table) == size
    assert objectinfo.plaintext_size("K", sum(stored), f'"x-{len(stored)}"') == size
    spans = objectinfo.part_spans(table)
    assert [p for _, p in spans] == part_sizes
    assert objectinfo.last_part_start(table) == size - part_sizes[-1]
    pos = data.draw(st.integers(1, len(table)))
    start, end = objectinfo.part_range("K", table, pos, size)
    assert (start, end) == (spans[pos - 1][0], spans[pos - 1][0] + part_sizes[pos - 1])
    if start < end:  # the planner maps that span onto exactly that part, wholly
        planned = sizes.k_object_spans(part_sizes, start, end)
        assert [(s.index, s.ct_offset) for s in planned] == [(pos - 1, table[pos - 1][0])]
        assert planned[0].span.length == end - start


def test_part_range_of_an_s_object_is_the_whole_object() -> None:
    ct = objectinfo.stored_size(1234)
    assert objectinfo.part_range("S", [(0, ct)], 1, 1234) == (0, 1234)
    assert objectinfo.size_from_table("S", [(0, ct)]) == 1234
