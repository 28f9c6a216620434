"""Checksums of the plaintext: known vectors, botocore's implementations, every failure."""

from __future__ import annotations

import base64
import hashlib
import time
import zlib
from collections.abc import Callable

import pytest
from botocore.httpchecksum import (
    Crc32Checksum,
    CrtCrc32cChecksum,
    CrtCrc64NvmeChecksum,
    Sha1Checksum,
    Sha256Checksum,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from s3proxy.aws.checksums import (
    ALGORITHMS,
    Checker,
    ChecksumError,
    digest_b64,
)

CHECK = b"123456789"
BOTOCORE = {
    "crc32": Crc32Checksum,
    "crc32c": CrtCrc32cChecksum,
    "crc64nvme": CrtCrc64NvmeChecksum,
    "sha1": Sha1Checksum,
    "sha256": Sha256Checksum,
}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def b64int(value: int, size: int) -> str:
    return b64(value.to_bytes(size, "big"))


def fails(code: str, fn: Callable[[], object]) -> ChecksumError:
    with pytest.raises(ChecksumError) as info:
        fn()
    assert (info.value.code, info.value.status) == (code, 400), info.value.message
    return info.value


# --------------------------------------------------------------------------
# Vectors and agreement with botocore


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("x-amz-checksum-crc32", b64int(0xCBF43926, 4)),
        ("x-amz-checksum-crc32c", b64int(0xE3069283, 4)),
        ("x-amz-checksum-crc64nvme", b64int(0xAE8B14860A799888, 8)),
        ("x-amz-checksum-sha1", b64(hashlib.sha1(CHECK).digest())),
        ("x-amz-checksum-sha256", b64(hashlib.sha256(CHECK).digest())),
        ("content-md5", b64(hashlib.md5(CHECK).digest())),
        ("Content-MD5", "JfnnlDI7RTiF9RgfG2JNCw=="),
    ],
)
def test_check_values(name: str, expected: str) -> None:
    assert digest_b64(name, CHECK) == expected


def reference_crc(poly: int, width: int, data: bytes) -> int:
    """A bitwise reflected CRC, independent of awscrt (which botocore uses too)."""
    mask = (1 << width) - 1
    crc = mask
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
    return crc ^ mask


def test_reference_crc_vectors() -> None:
    assert reference_crc(0x82F63B78, 32, CHECK) == 0xE3069283
    assert reference_crc(0x9A6C9329AC4BC9B5, 64, CHECK) == 0xAE8B14860A799888


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=4))
def test_streamed_crcs_match_a_reference(data: bytes, cuts: list[int]) -> None:
    for algorithm, poly, width in (("crc32c", 0x82F63B78, 32), ("crc64nvme", 0x9A6C9329AC4BC9B5, 64)):
        name = f"x-amz-checksum-{algorithm}"
        checker = Checker()
        checker.expect(name, None)
        start = 0
        for cut in [*sorted(cuts), len(data)]:
            checker.update(memoryview(data)[start:cut])
            start = max(start, cut)
        expected = b64int(reference_crc(poly, width, data), width // 8)
        assert checker.computed() == {name: expected}
        assert digest_b64(name, data) == expected


@settings(max_examples=100, deadline=None)
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    data=st.binary(max_size=5000),
    splits=st.lists(st.integers(min_value=0, max_value=5000), max_size=8),
)
def test_streaming_matches_botocore(algorithm: str, data: bytes, splits: list[int]) -> None:
    reference = BOTOCORE[algorithm]()
    reference.update(data)
    name = f"x-amz-checksum-{algorithm}"
    checker = Checker()
    checker.expect(name, reference.b64digest())
    start = 0
    for cut in [*sorted(splits), len(data)]:
        checker.update(memoryview(data)[start:cut] if cut % 2 else data[start:cut])
        start = max(start, cut)
    checker.verify()
    assert checker.computed() == {name: reference.b64digest()}
    assert digest_b64(name, data) == reference.b64digest()


# --------------------------------------------------------------------------
# Checker


def test_header_checks_pass_and_fail() -> None:
    body = b"hello world" * 1000
    good = {
        "Content-MD5": b64(hashlib.md5(body).digest()),
        "X-Amz-Checksum-CRC32": b64int(zlib.crc32(body), 4),
        "x-amz-checksum-algorithm": "CRC32",
        "x-amz-checksum-type": "FULL_OBJECT",
        "x-amz-sdk-checksum-algorithm": "CRC32",
        "content-type": "text/plain",
    }
    checker = Checker.from_headers(good, [])
    assert set(checker.names) == {"content-md5", "x-amz-checksum-crc32"}
    checker.update(body)
    checker.verify()
    checker.verify()  # idempotent

    wrong = Checker.from_headers(good, [])
    wrong.update(body + b"!")
    err = fails("BadDigest", wrong.verify)
    assert err.message == "The Content-MD5 you specified did not match what we received."

    crc_only = Checker.from_headers({"x-amz-checksum-crc32": good["X-Amz-Checksum-CRC32"]}, [])
    crc_only.update(body[:-1])
    err = fails("BadDigest", crc_only.verify)
    assert err.message == "The CRC32 you specified did not match the calculated checksum."


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_detects_a_flipped_bit(algorithm: str) -> None:
    body = bytearray(b"\x00" * 4096)
    name = f"x-amz-checksum-{algorithm}"
    value = digest_b64(name, bytes(body))
    body[1234] ^= 0x10
    checker = Checker.from_headers({name: value}, [])
    checker.update(bytes(body))
    fails("BadDigest", checker.verify)


def test_empty_body() -> None:
    checker = Checker.from_headers(
        {"content-md5": "1B2M2Y8AsgTpgAmY7PhCfg==", "x-amz-checksum-crc64nvme": "AAAAAAAAAAA="}, []
    )
    checker.update(b"")
    checker.verify()


def test_case_insensitive_multidict() -> None:
    headers = CIMultiDict([("CONTENT-MD5", b64(hashlib.md5(b"x").digest())), ("x-amz-checksum-sha1", "")])
    fails("InvalidRequest", lambda: Checker.from_headers(headers, []))
    headers = CIMultiDict([("CONTENT-MD5", b64(hashlib.md5(b"x").digest()))])
    checker = Checker.from_headers(headers, [])
    checker.update(memoryview(b"x"))
    checker.verify()


def test_trailing_checksum() -> None:
    body = b"payload" * 100
    value = digest_b64("x-amz-checksum-crc32c", body)
    names = ["X-Amz-Checksum-CRC32C", "x-amz-checksum-crc32c"]
    checker = Checker.from_headers({"x-amz-trailer": "ignored-here"}, names)
    assert checker.names == ("x-amz-checksum-crc32c",)
    checker.update(body[:10])
    checker.update(body[10:])
    checker.expect("x-amz-checksum-crc32c", value)
    checker.verify()


def test_trailing_checksum_never_sent() -> None:
    checker = Checker.from_headers({}, ["x-amz-checksum-crc32"])
    checker.update(b"abc")
    err = fails("InvalidRequest", checker.verify)
    assert "x-amz-checksum-crc32" in err.message


def test_trailing_checksum_mismatch() -> None:
    checker = Checker.from_headers({}, ["x-amz-checksum-sha256"])
    checker.update(b"abc")
    checker.expect("x-amz-checksum-sha256", b64(hashlib.sha256(b"abd").digest()))
    err = fails("BadDigest", checker.verify)
    assert "SHA256" in err.message


def test_undeclared_checksum_after_the_body_started() -> None:
    checker = Checker()
    checker.update(b"abc")
    fails("InvalidRequest", lambda: checker.expect("x-amz-checksum-crc32", "NSRBwg=="))
    # Before any data, a late declaration is fine.
    late = Checker()
    late.update(b"")
    late.expect("x-amz-checksum-crc32", b64int(zlib.crc32(b"abc"), 4))
    late.update(b"abc")
    late.verify()


def test_conflicting_values() -> None:
    checker = Checker()
    checker.expect("x-amz-checksum-crc32", "NSRBwg==")
    checker.expect("x-amz-checksum-crc32", "NSRBwg==")
    checker.expect("x-amz-checksum-crc32", None)
    fails("InvalidRequest", lambda: checker.expect("x-amz-checksum-crc32", "AAAAAA=="))
    headers = CIMultiDict([("content-md5", "1B2M2Y8AsgTpgAmY7PhCfg=="), ("Content-MD5", "JfnnlDI7RTiF9RgfG2JNCw==")])
    fails("InvalidRequest", lambda: Checker.from_headers(headers, []))


@pytest.mark.parametrize(
    "value", ["", "not base64!", "NSRBwg", "NSRBwg===", "AAAAAAAA", "AA==", " ", "NSRB\nwg=="]
)
def test_malformed_checksum_value(value: str) -> None:
    err = fails("InvalidRequest", lambda: Checker.from_headers({"x-amz-checksum-crc32": value}, []))
    assert err.message == "Value for x-amz-checksum-crc32 header is invalid."


@pytest.mark.parametrize("value", ["", "abc", b64(b"x" * 15), b64(b"x" * 17), "1B2M2Y8AsgTpgAmY7PhCfg"])
def test_malformed_content_md5(value: str) -> None:
    err = fails("InvalidDigest", lambda: Checker.from_headers({"Content-MD5": value}, []))
    assert err.message == "The Content-MD5 you specified is not valid."


@pytest.mark.parametrize(
    "name", ["x-amz-checksum-md5", "x-amz-checksum-xxhash64", "x-amz-checksum-", "x-amz-checksum-CRC99"]
)
def test_unknown_algorithm(name: str) -> None:
    fails("InvalidRequest", lambda: Checker.from_headers({name: "AAAAAA=="}, []))
    fails("InvalidRequest", lambda: Checker.from_headers({}, [name]))


@pytest.mark.parametrize("name", ["content-type", "x-amz-meta-a", "x-amz-checksum-algorithm", "x-amz-checksum-type"])
def test_unsupported_trailers_and_names(name: str) -> None:
    fails("InvalidRequest", lambda: Checker.from_headers({}, [name]))
    fails("InvalidRequest", lambda: Checker().expect(name, None))


def test_single_checksum_algorithm() -> None:
    crc32 = b64int(zlib.crc32(b""), 4)
    sha1 = b64(hashlib.sha1(b"").digest())
    err = fails(
        "InvalidRequest",
        lambda: Checker.from_headers({"x-amz-checksum-crc32": crc32, "x-amz-checksum-sha1": sha1}, []),
    )
    assert "Multiple checksum Types" in err.message
    fails("InvalidRequest", lambda: Checker.from_headers({"x-amz-checksum-crc32": crc32}, ["x-amz-checksum-sha1"]))
    fails("InvalidRequest", lambda: Checker.from_headers({}, ["x-amz-checksum-crc32", "x-amz-checksum-sha1"]))
    fails("InvalidRequest", lambda: Checker.from_headers({"x-amz-checksum-crc32": crc32}, ["x-amz-checksum-crc32"]))
    # Content-MD5 comes on top of one checksum.
    Checker.from_headers({"content-md5": "1B2M2Y8AsgTpgAmY7PhCfg==", "x-amz-checksum-crc32": crc32}, [])


def test_no_expectations() -> None:
    checker = Checker.from_headers({"content-length": "3"}, [])
    checker.update(b"abc")
    checker.verify()
    assert checker.names == () and checker.computed() == {}


def test_error_fields() -> None:
    err = ChecksumError("BadDigest", "no")
    assert (err.code, err.message, err.status, str(err)) == ("BadDigest", "no", 400, "BadDigest: no")


# --------------------------------------------------------------------------
# Speed


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_throughput(algorithm: str) -> None:
    piece = bytes(range(256)) * 4096  # 1 MiB
    name = f"x-amz-checksum-{algorithm}"
    checker = Checker()
    checker.expect(name, None)
    t = time.perf_counter()
    for _ in range(32):
        checker.update(memoryview(piece))
    elapsed = time.perf_counter() - t
    assert elapsed < 2.0, (algorithm, elapsed)  # 32 MiB: C speed, well under 0.2 s here
