"""Checksum headers (s3proxy/aws/checksums.py): any header set checks the body or fails with a 4xx."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from s3proxy.aws.checksums import ALGORITHMS, Checker, ChecksumError, digest_b64
from tests.fuzz.helpers import FUZZ, s3_outcome, tricky_text

NAMES = ["content-md5", *(f"x-amz-checksum-{a}" for a in ALGORITHMS), "x-amz-checksum-algorithm", "x-amz-checksum-type",
         "x-amz-checksum-mode", "x-amz-checksum-md5", "x-amz-checksum-", "X-Amz-Checksum-CRC32", " content-md5 ",
         "x-amz-checksum-\udcff", "x-amz-checksum-crc32\x00"]
names = st.sampled_from(NAMES) | tricky_text
values = st.sampled_from(["", "AAAAAA==", "AAAAAA", "1B2M2Y8AsgTpgAmY7PhCfg==", "=", "²", "é" * 8, "\udcff", " AAAAAA== ",
                          "AAAAAAAAAAA=", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]) | st.binary(max_size=40).map(
    lambda b: base64.b64encode(b).decode()
) | tricky_text


@FUZZ
@given(
    headers=st.dictionaries(names, values, max_size=4),
    trailer_names=st.lists(names, max_size=3),
    body=st.lists(st.binary(max_size=30), max_size=3),
    trailer_values=st.lists(st.tuples(names, values), max_size=3),
)
def test_any_checksum_headers(
    headers: dict[str, str], trailer_names: list[str], body: list[bytes], trailer_values: list[tuple[str, str]]
) -> None:
    checker = s3_outcome(lambda: Checker.from_headers(headers, trailer_names))
    if isinstance(checker, ChecksumError):
        return
    assert isinstance(checker, Checker)
    for piece in body:
        checker.update(piece)
    for name, value in trailer_values:
        if isinstance(s3_outcome(lambda n=name, v=value: checker.expect(n, v)), ChecksumError):  # type: ignore[misc]
            return
    s3_outcome(checker.computed)
    s3_outcome(checker.verify)


@FUZZ
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    md5=st.booleans(),
    body=st.lists(st.binary(max_size=100), max_size=4),
    as_trailer=st.booleans(),
    corrupt=st.booleans(),
)
def test_correct_digests_verify(algorithm: str, md5: bool, body: list[bytes], as_trailer: bool, corrupt: bool) -> None:
    data = b"".join(body)
    name = f"x-amz-checksum-{algorithm}"
    value = digest_b64(name, data)
    if corrupt:
        raw = bytearray(base64.b64decode(value))
        raw[0] ^= 1
        value = base64.b64encode(raw).decode()
    headers = {} if as_trailer else {name: value}
    if md5:
        headers["Content-MD5"] = digest_b64("content-md5", data)
    checker = Checker.from_headers(headers, [name] if as_trailer else [])
    for piece in body:
        checker.update(piece)
    if as_trailer:
        checker.expect(name, value)
    result = s3_outcome(checker.verify)
    if corrupt:
        assert isinstance(result, ChecksumError) and (result.code, result.status) == ("BadDigest", 400)
    else:
        assert result is None
