"""Small objects are read whole and sent as one response (issue 11, ``reads._get_small``).

Nothing is sent before the last chunk is authenticated, so a storage-side attacker who
tampers with a small object gets the client a clean S3 error (403 InvalidObjectState),
never a 200 and never any plaintext; sizes around the threshold read back exactly, and
larger objects still stream.
"""

from __future__ import annotations

import pytest

from s3proxy.crypto import sizes
from s3proxy.http import reads
from s3proxy.http.reads import SMALL_OBJECT
from tests.integration.helpers import KiB, assert_s3_error, get_via_proxy, rand

H_S = sizes.S_HEADER_SIZE
CHUNK_CT = sizes.S_FULL_CHUNK_CT
BIGGEST_SMALL = sizes.s_plaintext_size(SMALL_OBJECT - SMALL_OBJECT % CHUNK_CT + H_S + 100)


def stored(raw, bucket, key):
    return raw.get_object(Bucket=bucket, Key=key)["Body"].read()


def raw_rewrite(raw, bucket, key, body):
    h = raw.head_object(Bucket=bucket, Key=key)
    raw.put_object(Bucket=bucket, Key=key, Body=body, Metadata=h["Metadata"])


def failures(proxy) -> float:
    return proxy.state.metrics.integrity_failures._value.get()


def _flip(body: bytes, offset: int) -> bytes:
    out = bytearray(body)
    out[offset] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize("size", [0, 1, 4 * KiB, 16 * KiB, 16 * KiB + 1, 64 * KiB, BIGGEST_SMALL,
                                  sizes.s_plaintext_size(sizes.s_ciphertext_size(BIGGEST_SMALL) + CHUNK_CT)])
def test_sizes_around_the_threshold_read_back(proxy, s3, bucket, size, monkeypatch):
    calls = []
    whole = reads._get_small

    async def counted(*args, **kwargs):
        calls.append(1)
        return await whole(*args, **kwargs)

    monkeypatch.setattr(reads, "_get_small", counted)
    data = rand(size)
    s3.put_object(Bucket=bucket, Key="k", Body=data, Metadata={"m": "v"})
    r = s3.get_object(Bucket=bucket, Key="k")
    assert r["Body"].read() == data
    assert r["ContentLength"] == size and r["Metadata"] == {"m": "v"}
    assert r["ResponseMetadata"]["HTTPHeaders"].get("accept-ranges") == "bytes"
    reply = get_via_proxy(proxy, bucket, "k")
    assert reply.status == 200 and reply.body == data and not reply.aborted
    assert len(calls) == (2 if size <= BIGGEST_SMALL else 0)  # larger objects stream


TAMPER = {
    "header": lambda c: _flip(c, 3),
    "commitment": lambda c: _flip(c, 40),
    "first-chunk": lambda c: _flip(c, H_S + 5),
    "last-tag": lambda c: _flip(c, len(c) - 1),
    "truncate-16": lambda c: c[:-16],
    "truncate-chunk": lambda c: c[:H_S + CHUNK_CT],
    "append-16": lambda c: c + bytes(16),
    "swap-chunks": lambda c: c[:H_S] + c[H_S + CHUNK_CT:H_S + 2 * CHUNK_CT] + c[H_S:H_S + CHUNK_CT] + c[H_S + 2 * CHUNK_CT:],
    "empty": lambda c: b"",
}


@pytest.mark.parametrize("kind", list(TAMPER))
def test_tampered_small_object_is_a_clean_error(proxy, s3, raw, bucket, kind):
    data = rand(40 * KiB)
    s3.put_object(Bucket=bucket, Key="t", Body=data)
    raw_rewrite(raw, bucket, "t", TAMPER[kind](stored(raw, bucket, "t")))
    before = failures(proxy)
    reply = get_via_proxy(proxy, bucket, "t")
    if kind == "empty":  # an empty body is not an s3proxy object at all
        assert reply.status is None or reply.aborted or reply.status >= 400
        return
    assert_s3_error(reply, 403, "InvalidObjectState")
    assert data[:16] not in (reply.body or b"") and data[-16:] not in (reply.body or b"")
    if kind != "truncate-chunk":  # (that one is no valid S length: refused before any decryption)
        assert failures(proxy) > before


def test_object_of_another_object_is_refused(proxy, s3, raw, bucket):
    """Ciphertext moved between two small objects (same key, metadata kept): the binding fails."""
    s3.put_object(Bucket=bucket, Key="a", Body=rand(10 * KiB))
    s3.put_object(Bucket=bucket, Key="b", Body=rand(10 * KiB))
    raw_rewrite(raw, bucket, "a", stored(raw, bucket, "b"))
    reply = get_via_proxy(proxy, bucket, "a")
    assert_s3_error(reply, 403, "InvalidObjectState")
