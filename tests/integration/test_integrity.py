"""Confidentiality and integrity end to end: what lands on the backend, and what
the proxy does when the stored ciphertext or metadata was changed around it.

``raw`` (a client straight to the backend) plays the attacker with write
access to the storage.  A read of tampered data must end in an S3 error or a
broken connection, never a clean 2xx with wrong (or even right) bytes.
"""

from __future__ import annotations

import base64
import hashlib
import zlib

import pytest
from botocore.exceptions import ClientError

from s3proxy.crypto import sizes
from tests.integration.helpers import (
    KiB,
    MiB,
    absent,
    assert_no_plaintext,
    assert_read_fails,
    assert_s3_error,
    aws_chunked_body,
    client_error,
    empty_bucket,
    get_via_proxy,
    multipart_upload,
    rand,
    raw_put_head,
    send_raw,
    unique,
)

PART = 5 * MiB
S_SIZE = 100_000  # 6 full 16 KiB chunks + a final one of 1696 bytes
CHUNK_CT = sizes.S_FULL_CHUNK_CT
H_S = sizes.S_HEADER_SIZE


@pytest.fixture()
def bucket2(s3):
    name = unique()
    s3.create_bucket(Bucket=name)
    yield name
    empty_bucket(s3, name)


def stored(raw, bucket, key):
    return raw.get_object(Bucket=bucket, Key=key)["Body"].read()


def raw_rewrite(raw, bucket, key, body, meta_from=None):
    """Replace an object's body on the backend, keeping (or borrowing) its metadata."""
    h = raw.head_object(Bucket=bucket, Key=meta_from or key)
    raw.put_object(Bucket=bucket, Key=key, Body=body, Metadata=h["Metadata"], ContentType=h.get("ContentType", "binary/octet-stream"))


def raw_part_lengths(raw, bucket, key, n):
    return [raw.head_object(Bucket=bucket, Key=key, PartNumber=i)["ContentLength"] for i in range(1, n + 1)]


def raw_rewrite_multipart(raw, bucket, key, part_bodies, meta_from=None):
    """Re-create a multipart object on the backend (same metadata, ``-N`` ETag) from ciphertext parts."""
    h = raw.head_object(Bucket=bucket, Key=meta_from or key)
    multipart_upload(raw, bucket, key, part_bodies, Metadata=h["Metadata"])


# --------------------------------------------------------------------- nothing in the clear


@pytest.mark.parametrize("how", ["single", "empty", "multipart", "copy-single", "copy-multipart", "copy-other-bucket",
                                 "upload-part-copy", "aws-chunked"])
@pytest.mark.smoke
def test_no_plaintext_on_backend(proxy, s3, raw, bucket, bucket2, how):
    if how == "empty":
        s3.put_object(Bucket=bucket, Key="k", Body=b"")
        body = stored(raw, bucket, "k")
        assert len(body) == sizes.s_ciphertext_size(0)
        return
    part_sizes: list[int]
    if how in ("single", "copy-single", "copy-other-bucket", "aws-chunked"):
        data = rand(MiB + 3)
        part_sizes = []
        if how == "aws-chunked":
            r = send_raw(proxy, raw_put_head(proxy, bucket, "src", "chunked", len(data)) + aws_chunked_body(data))
            assert r.status == 200, r
        else:
            s3.put_object(Bucket=bucket, Key="src", Body=data)
    else:
        parts = [rand(PART), rand(300 * KiB + 1)]
        data = b"".join(parts)
        part_sizes = [len(p) for p in parts]
        multipart_upload(s3, bucket, "src", parts)
    dst_bucket, key = bucket, "src"
    if how.startswith("copy"):
        dst_bucket = bucket2 if how == "copy-other-bucket" else bucket
        key = "dst"
        s3.copy_object(Bucket=dst_bucket, Key=key, CopySource={"Bucket": bucket, "Key": "src"})
    elif how == "upload-part-copy":
        key = "dst"
        uid = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        done = []
        for i, (a, z) in enumerate([(0, PART - 1), (PART, len(data) - 1)], start=1):
            r = s3.upload_part_copy(Bucket=bucket, Key=key, UploadId=uid, PartNumber=i,
                                    CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange=f"bytes={a}-{z}")
            done.append({"PartNumber": i, "ETag": r["CopyPartResult"]["ETag"]})
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": done})
    body = stored(raw, dst_bucket, key)
    # Exact ciphertext size: no aws-chunked framing, trailers or padding stored.
    if part_sizes:
        assert len(body) == sum(sizes.k_part_ciphertext_size(p) for p in part_sizes)
    else:
        assert len(body) == sizes.s_ciphertext_size(len(data))
    assert_no_plaintext(data, body, extra=tuple(range(PART - 64, PART + 64, 16)))
    meta = raw.head_object(Bucket=dst_bucket, Key=key)["Metadata"]
    assert not any(data[i:i + 16].hex() in v or base64.b64encode(data[i:i + 12]).decode() in v
                   for i in (0, 1000) for v in meta.values())
    assert s3.get_object(Bucket=dst_bucket, Key=key)["Body"].read() == data


def test_same_plaintext_different_ciphertext(s3, raw, bucket):
    data = rand(50_000)
    s3.put_object(Bucket=bucket, Key="a", Body=data)
    s3.put_object(Bucket=bucket, Key="b", Body=data)
    a, b = stored(raw, bucket, "a"), stored(raw, bucket, "b")
    assert len(a) == len(b)
    assert a[:64] != b[:64]
    assert a[H_S:H_S + 16] not in b


# --------------------------------------------------------------------- tampering with S-layout objects


def _flip(body: bytes, offset: int) -> bytes:
    out = bytearray(body)
    out[offset] ^= 0x01
    return bytes(out)


# kind -> (transform of the stored body, ranges that must fail, a range that may succeed (or None))
S_TAMPER = {
    "header-salt": (lambda c: _flip(c, 3), ["bytes=0-99", "bytes=-10", "bytes=50000-50010"], None),
    "header-commitment": (lambda c: _flip(c, 40), ["bytes=0-99", "bytes=50000-50010"], None),
    "first-chunk": (lambda c: _flip(c, H_S + 5), ["bytes=0-9", "bytes=100-16390"], "bytes=40000-40099"),
    "middle-chunk": (lambda c: _flip(c, H_S + 3 * CHUNK_CT + 100), ["bytes=49200-49300"], "bytes=0-99"),
    "middle-tag": (lambda c: _flip(c, H_S + 4 * CHUNK_CT - 1), ["bytes=49200-49300"], "bytes=0-99"),
    "last-tag": (lambda c: _flip(c, len(c) - 1), ["bytes=-10", "bytes=99000-"], "bytes=0-99"),
    "truncate-16": (lambda c: c[:-16], ["bytes=-10", "bytes=99000-"], "bytes=0-99"),
    "truncate-final-chunk": (lambda c: c[:H_S + 6 * CHUNK_CT], ["bytes=-10", "bytes=98000-98303"], "bytes=0-99"),
    "truncate-to-header": (lambda c: c[:H_S], ["bytes=0-0"], None),
    "append-16": (lambda c: c + bytes(16), ["bytes=-10"], "bytes=0-99"),
    "append-chunk": (lambda c: c + c[H_S + CHUNK_CT: H_S + 2 * CHUNK_CT], ["bytes=-10"], "bytes=0-99"),
    "swap-chunks": (lambda c: c[:H_S + CHUNK_CT] + c[H_S + 2 * CHUNK_CT:H_S + 3 * CHUNK_CT]
                    + c[H_S + CHUNK_CT:H_S + 2 * CHUNK_CT] + c[H_S + 3 * CHUNK_CT:],
                    ["bytes=16384-16400", "bytes=32768-32800"], "bytes=0-99"),
    "duplicate-chunk": (lambda c: c[:H_S + 2 * CHUNK_CT] + c[H_S + CHUNK_CT:H_S + 2 * CHUNK_CT] + c[H_S + 3 * CHUNK_CT:],
                        ["bytes=32768-32800"], "bytes=0-99"),
    "empty-body": (lambda c: b"", ["bytes=0-0"], None),
}


def check_tampered(proxy, bucket, key, data, bad_ranges, maybe_range):
    assert_read_fails(get_via_proxy(proxy, bucket, key))
    for rng in bad_ranges:
        r = get_via_proxy(proxy, bucket, key, rng)
        assert_read_fails(r)
    if maybe_range:
        r = get_via_proxy(proxy, bucket, key, maybe_range)
        if r.status == 206 and not r.aborted:
            a, _, z = maybe_range[len("bytes="):].partition("-")
            want = data[-int(z):] if a == "" else data[int(a): int(z) + 1]
            assert r.body == want, "an untouched range came back with wrong bytes"
        else:
            assert_read_fails(r)


@pytest.mark.parametrize("kind", list(S_TAMPER))
def test_tampered_single(proxy, s3, raw, bucket, kind):
    data = rand(S_SIZE)
    s3.put_object(Bucket=bucket, Key="t", Body=data)
    s3.put_object(Bucket=bucket, Key="control", Body=data)
    transform, bad, maybe = S_TAMPER[kind]
    ct = stored(raw, bucket, "t")
    assert len(ct) == sizes.s_ciphertext_size(S_SIZE)
    raw_rewrite(raw, bucket, "t", transform(ct))
    check_tampered(proxy, bucket, "t", data, bad, maybe)
    # The proxy keeps working, and an untouched object still reads fine.
    assert s3.get_object(Bucket=bucket, Key="control")["Body"].read() == data


@pytest.mark.smoke
def test_tampered_single_via_boto3(s3, raw, bucket):
    """What a real client sees: an exception, not data."""
    data = rand(S_SIZE)
    s3.put_object(Bucket=bucket, Key="t", Body=data)
    raw_rewrite(raw, bucket, "t", _flip(stored(raw, bucket, "t"), H_S + 3 * CHUNK_CT + 7))
    with pytest.raises(Exception) as ei:  # noqa: PT011 - ClientError or a streaming/connection error
        s3.get_object(Bucket=bucket, Key="t")["Body"].read()
    assert not isinstance(ei.value, AssertionError)


def test_swap_bodies_keeping_metadata(proxy, s3, raw, bucket):
    a, b = rand(S_SIZE), rand(S_SIZE)
    s3.put_object(Bucket=bucket, Key="a", Body=a)
    s3.put_object(Bucket=bucket, Key="b", Body=b)
    ca, cb = stored(raw, bucket, "a"), stored(raw, bucket, "b")
    raw_rewrite(raw, bucket, "a", cb)
    raw_rewrite(raw, bucket, "b", ca)
    for key, data in (("a", a), ("b", b)):
        check_tampered(proxy, bucket, key, data, ["bytes=0-99", "bytes=-100"], None)


def test_splice_chunk_from_other_object(proxy, s3, raw, bucket):
    a, b = rand(S_SIZE), rand(S_SIZE)
    s3.put_object(Bucket=bucket, Key="a", Body=a)
    s3.put_object(Bucket=bucket, Key="b", Body=b)
    ca, cb = stored(raw, bucket, "a"), stored(raw, bucket, "b")
    lo, hi = H_S + 2 * CHUNK_CT, H_S + 3 * CHUNK_CT
    raw_rewrite(raw, bucket, "a", ca[:lo] + cb[lo:hi] + ca[hi:])
    check_tampered(proxy, bucket, "a", a, ["bytes=32768-32800"], "bytes=0-99")


@pytest.mark.needs("aws_responses")
@pytest.mark.parametrize("across", [False, True], ids=["same-bucket", "other-bucket"])
@pytest.mark.parametrize("layout", ["single", "multi"])
def test_copy_around_proxy_fails(proxy, s3, raw, bucket, bucket2, across, layout):
    data = rand(S_SIZE) if layout == "single" else rand(PART + 1000)
    if layout == "single":
        s3.put_object(Bucket=bucket, Key="orig", Body=data)
    else:
        multipart_upload(s3, bucket, "orig", [data[:PART], data[PART:]])
    dst = bucket2 if across else bucket
    raw.copy_object(Bucket=dst, Key="moved", CopySource={"Bucket": bucket, "Key": "orig"})
    assert raw.head_object(Bucket=dst, Key="moved")["Metadata"] == raw.head_object(Bucket=bucket, Key="orig")["Metadata"]
    r = get_via_proxy(proxy, dst, "moved")
    assert_read_fails(r)
    assert r.status is not None and r.status >= 400  # detected from metadata, before any byte
    assert_read_fails(get_via_proxy(proxy, dst, "moved", "bytes=0-9"))
    if across:  # the same key in another bucket
        raw.copy_object(Bucket=dst, Key="orig", CopySource={"Bucket": bucket, "Key": "orig"})
        assert_read_fails(get_via_proxy(proxy, dst, "orig"))
    # The original (and a copy made *through* the proxy) still read fine.
    assert s3.get_object(Bucket=bucket, Key="orig")["Body"].read() == data
    s3.copy_object(Bucket=dst, Key="proper", CopySource={"Bucket": bucket, "Key": "orig"})
    assert s3.get_object(Bucket=dst, Key="proper")["Body"].read() == data


@pytest.mark.needs("aws_responses")
@pytest.mark.parametrize("field", ["s3proxy-mac", "s3proxy-id", "s3proxy-key", "s3proxy-v", "s3proxy-layout", "drop-all"])
def test_tampered_metadata(proxy, s3, raw, bucket, field):
    data = rand(S_SIZE)
    s3.put_object(Bucket=bucket, Key="t", Body=data)
    s3.put_object(Bucket=bucket, Key="other", Body=rand(10))
    h = raw.head_object(Bucket=bucket, Key="t")
    meta = dict(h["Metadata"])
    if field == "drop-all":
        meta = {k: v for k, v in meta.items() if not k.startswith("s3proxy-")}
    elif field not in meta:
        pytest.skip(f"no {field} in this format's metadata: {sorted(meta)}")
    elif field == "s3proxy-id":
        meta[field] = raw.head_object(Bucket=bucket, Key="other")["Metadata"][field]
    elif field == "s3proxy-v":
        meta[field] = "99"
    elif field == "s3proxy-layout":
        meta[field] = "K" if meta[field] == "S" else "S"
    else:
        v = meta[field]
        i = len(v) // 2
        meta[field] = v[:i] + ("A" if v[i] != "A" else "B") + v[i + 1:]
    raw.put_object(Bucket=bucket, Key="t", Body=stored(raw, bucket, "t"), Metadata=meta)
    for rng in (None, "bytes=0-9"):
        r = get_via_proxy(proxy, bucket, "t", rng)
        assert_read_fails(r)
        assert r.status is not None and r.status >= 400
        assert_s3_error(r, r.status, r.error()["Code"])


# --------------------------------------------------------------------- tampering with multipart (K-layout) objects

MP_PARTS = (PART, 200_000)  # part 2: 1020 chunks of 196 bytes + 80, then 3 empty trailing chunks
FULL_LAST = 196 * sizes.K_CHUNKS  # a last part whose K chunks are all full


@pytest.fixture()
def mp_object(request, s3, raw, bucket):
    """A 2-part object; its last part's size is ``request.param`` (indirect) or MP_PARTS[1]."""
    parts = [rand(PART), rand(getattr(request, "param", MP_PARTS[1]))]
    multipart_upload(s3, bucket, "mp", parts)
    lens = raw_part_lengths(raw, bucket, "mp", len(parts))
    assert lens == [sizes.k_part_ciphertext_size(len(p)) for p in parts]
    ct = stored(raw, bucket, "mp")
    cts = [ct[:lens[0]], ct[lens[0]:]]
    return b"".join(parts), cts


def _k_chunk(p, k):
    cs = sizes.k_chunk_size(p)
    return sizes.k_chunk_ct_offset(p, cs, k)


K_TAMPER = {
    "part1-header": (lambda c1, c2: (_flip(c1, 20), c2), ["bytes=0-9", "bytes=100000-100010"], f"bytes={PART + 10}-{PART + 20}"),
    "part2-header": (lambda c1, c2: (c1, _flip(c2, 30)), [f"bytes={PART}-{PART + 9}", "bytes=-5"], "bytes=0-99"),
    "part1-middle-chunk": (lambda c1, c2: (_flip(c1, _k_chunk(PART, 500) + 10), c2),
                           [f"bytes={500 * 5120 + 5}-{500 * 5120 + 15}"], "bytes=0-99"),
    # The last tag belongs to an empty trailing chunk: only reads that cover it (the full GET) must fail.
    "last-tag": (lambda c1, c2: (c1, _flip(c2, len(c2) - 1)), [], "bytes=-1"),
    "truncate-last-part": (lambda c1, c2: (c1, c2[:-16]), ["bytes=-1"], "bytes=0-99"),
    "truncate-last-part-1": (lambda c1, c2: (c1, c2[:-1]), ["bytes=-1"], "bytes=0-99"),
    "truncate-last-part-300": (lambda c1, c2: (c1, c2[:-300]), ["bytes=-1"], "bytes=0-99"),
    "truncate-first-part": (lambda c1, c2: (c1[:-16], c2), [f"bytes={PART - 1}-{PART}"], "bytes=0-99"),
    "append-first-part": (lambda c1, c2: (c1 + bytes(16), c2), [f"bytes={PART - 1}-{PART}"], "bytes=0-99"),
    "append-last-part": (lambda c1, c2: (c1, c2 + bytes(16)), ["bytes=-1"], "bytes=0-99"),
    "swap-chunks-in-part": (lambda c1, c2: (c1[:_k_chunk(PART, 10)] + c1[_k_chunk(PART, 11):_k_chunk(PART, 12)]
                                            + c1[_k_chunk(PART, 10):_k_chunk(PART, 11)] + c1[_k_chunk(PART, 12):], c2),
                            ["bytes=51200-51300"], f"bytes={PART + 10}-{PART + 20}"),
}


K_CASES = [pytest.param(k, MP_PARTS[1], id=k) for k in K_TAMPER] + [
    pytest.param(k, FULL_LAST, id=f"{k}-full-chunks") for k in K_TAMPER if k.startswith(("truncate-last", "last-tag", "append-last"))
]


@pytest.mark.needs("part_number")
@pytest.mark.parametrize("kind,mp_object", K_CASES, indirect=["mp_object"])
def test_tampered_multipart(proxy, s3, raw, bucket, mp_object, kind):
    data, (c1, c2) = mp_object
    transform, bad, maybe = K_TAMPER[kind]
    raw_rewrite_multipart(raw, bucket, "mp", list(transform(c1, c2)))
    assert raw.head_object(Bucket=bucket, Key="mp")["ETag"].strip('"').endswith("-2")
    check_tampered(proxy, bucket, "mp", data, bad, maybe)


@pytest.mark.needs("part_number")
def test_multipart_part_from_other_upload(proxy, s3, raw, bucket, mp_object):
    """Part 2 replaced by part 2 of another object of the same shape (same sizes)."""
    data, (c1, _) = mp_object
    multipart_upload(s3, bucket, "other", [rand(n) for n in (PART, len(data) - PART)])
    other = stored(raw, bucket, "other")
    raw_rewrite_multipart(raw, bucket, "mp", [c1, other[len(c1):]])
    check_tampered(proxy, bucket, "mp", data, [f"bytes={PART}-{PART + 9}"], "bytes=0-99")


@pytest.mark.needs("part_number")
@pytest.mark.smoke
def test_multipart_collapsed_to_single_put(proxy, s3, raw, bucket, mp_object):
    """The same (authentic) ciphertext stored with one PUT, no ``-N`` ETag: refused or read exactly, never misread."""
    data, (c1, c2) = mp_object
    raw_rewrite(raw, bucket, "mp", c1 + c2)
    for rng, want in ((None, data), ("bytes=0-9", data[:10]), (f"bytes={PART - 5}-{PART + 4}", data[PART - 5:PART + 5])):
        r = get_via_proxy(proxy, bucket, "mp", rng)
        if r.status in (200, 206) and not r.aborted:
            assert r.body == want
        else:
            assert_read_fails(r)


@pytest.mark.needs("part_number")
def test_multipart_truncated_and_collapsed(proxy, s3, raw, bucket, mp_object):
    data, (c1, c2) = mp_object
    raw_rewrite(raw, bucket, "mp", c1 + c2[:-16])
    assert_read_fails(get_via_proxy(proxy, bucket, "mp"))


@pytest.mark.smoke
def test_multipart_parts_swapped_positions(proxy, s3, raw, bucket):
    """Two equal-size parts stored in the opposite order."""
    parts = [rand(PART), rand(PART)]
    multipart_upload(s3, bucket, "sw", parts)
    ct = stored(raw, bucket, "sw")
    n = len(ct) // 2
    raw_rewrite_multipart(raw, bucket, "sw", [ct[n:], ct[:n]])
    check_tampered(proxy, bucket, "sw", b"".join(parts), ["bytes=0-9", f"bytes={PART}-{PART + 9}"], None)


# --------------------------------------------------------------------- integrity headers on upload


def _md5_b64(b: bytes) -> str:
    return base64.b64encode(hashlib.md5(b).digest()).decode()  # noqa: S324 - Content-MD5 is MD5


def _crc32_b64(b: bytes) -> str:
    return base64.b64encode(zlib.crc32(b).to_bytes(4, "big")).decode()


@pytest.mark.parametrize("existing", [False, True], ids=["new-key", "over-old-version"])
def test_content_md5_mismatch(s3, raw, bucket, existing):
    if existing:
        s3.put_object(Bucket=bucket, Key="k", Body=b"old contents")
    data = rand(200_000)
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=bucket, Key="k", Body=data, ContentMD5=_md5_b64(data + b"x"))
    assert client_error(ei.value) == (400, "BadDigest")
    if existing:
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"old contents"
    else:
        assert absent(s3, bucket, "k") and absent(raw, bucket, "k")


def test_content_md5_match(s3, bucket):
    data = rand(200_000)
    s3.put_object(Bucket=bucket, Key="k", Body=data, ContentMD5=_md5_b64(data))
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == data


@pytest.mark.parametrize("alg", ["CRC32", "SHA256"])
@pytest.mark.parametrize("existing", [False, True], ids=["new-key", "over-old-version"])
def test_checksum_header_mismatch(s3, raw, bucket, alg, existing):
    if existing:
        s3.put_object(Bucket=bucket, Key="k", Body=b"old contents")
    data = rand(150_000)
    wrong = data[:-1] + bytes([data[-1] ^ 1])
    value = _crc32_b64(wrong) if alg == "CRC32" else base64.b64encode(hashlib.sha256(wrong).digest()).decode()
    with pytest.raises(ClientError) as ei:
        s3.put_object(Bucket=bucket, Key="k", Body=data, **{f"Checksum{alg}": value})
    status, code = client_error(ei.value)
    assert status == 400 and code in ("BadDigest", "XAmzContentChecksumMismatch", "InvalidRequest"), (status, code)
    if existing:
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"old contents"
    else:
        assert absent(s3, bucket, "k") and absent(raw, bucket, "k")


def test_checksum_header_match_echoed(s3, bucket):
    data = rand(150_000)
    r = s3.put_object(Bucket=bucket, Key="k", Body=data, ChecksumCRC32=_crc32_b64(data))
    assert r.get("ChecksumCRC32") == _crc32_b64(data)
    got = s3.get_object(Bucket=bucket, Key="k", ChecksumMode="ENABLED")
    assert got["Body"].read() == data  # boto3 validates any checksum it gets back: none may be of ciphertext


@pytest.mark.smoke
def test_checksum_trailer_mismatch(proxy, s3, raw, bucket):
    data = rand(300_000)
    bad = b"x-amz-checksum-crc32:" + _crc32_b64(data + b"!").encode()
    r = send_raw(proxy, raw_put_head(proxy, bucket, "k", "chunked", len(data)) + aws_chunked_body(data, trailer=bad))
    assert r.status == 400, r
    assert_s3_error(r, 400, ("BadDigest", "XAmzContentChecksumMismatch"))
    assert absent(s3, bucket, "k") and absent(raw, bucket, "k")


def test_upload_part_md5_mismatch(s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp")["UploadId"]
    data = rand(100_000)
    with pytest.raises(ClientError) as ei:
        s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=data, ContentMD5=_md5_b64(b"other"))
    assert client_error(ei.value) == (400, "BadDigest")
    assert s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid).get("Parts", []) == []
    s3.abort_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid)


# --------------------------------------------------------------------- no extra backend requests


@pytest.fixture()
def twenty(s3, bucket):
    sizes_ = {}
    for i in range(18):
        n = i * 1000 + (i % 3)
        s3.put_object(Bucket=bucket, Key=f"obj/{i:02d}", Body=rand(n))
        sizes_[f"obj/{i:02d}"] = n
    for i in (18, 19):
        multipart_upload(s3, bucket, f"obj/{i:02d}", [rand(777 * i)])
        sizes_[f"obj/{i:02d}"] = 777 * i
    return bucket, sizes_


def _count(proxy, fn):
    before = proxy.state.backend.requests_sent
    result = fn()
    return proxy.state.backend.requests_sent - before, result


@pytest.mark.needs("multipart_etags")
@pytest.mark.smoke
@pytest.mark.parametrize("op", ["v2", "v1", "versions"])
def test_listing_makes_one_backend_request(proxy, s3, twenty, op):
    bucket, expected = twenty
    call = {
        "v2": lambda: s3.list_objects_v2(Bucket=bucket)["Contents"],
        "v1": lambda: s3.list_objects(Bucket=bucket)["Contents"],
        "versions": lambda: s3.list_object_versions(Bucket=bucket)["Versions"],
    }[op]
    n, entries = _count(proxy, call)
    assert n == 1
    assert {o["Key"]: o["Size"] for o in entries} == expected


@pytest.mark.needs("multipart_etags")
def test_head_and_get_request_counts(proxy, s3, twenty):
    bucket, expected = twenty
    n, head = _count(proxy, lambda: s3.head_object(Bucket=bucket, Key="obj/05"))
    assert (n, head["ContentLength"]) == (1, expected["obj/05"])
    n, head = _count(proxy, lambda: s3.head_object(Bucket=bucket, Key="obj/19"))
    assert (n, head["ContentLength"]) == (1, expected["obj/19"])
    n, body = _count(proxy, lambda: s3.get_object(Bucket=bucket, Key="obj/07")["Body"].read())
    assert n == 1 and len(body) == expected["obj/07"]
