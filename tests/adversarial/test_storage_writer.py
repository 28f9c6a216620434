"""A storage-side writer (A2, A3) plants, truncates and rearranges objects and envelopes.

Promise: the client gets the authentic plaintext or a 4xx S3 error (or, once the body has
started, a broken connection); never forged bytes, never a 500 from what the backend holds.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import CLIENT_AK, CLIENT_SK
from tests.integration.helpers import multipart_upload, object_url, send_signed, sign

MiB = 1024 * 1024


def envelope_of(storage: Any, bucket: str, key: str) -> dict[str, str]:
    return {k: v for k, v in storage.head_object(Bucket=bucket, Key=key)["Metadata"].items() if k.startswith("s3proxy-")}


def read_all_ways(proxy: Any, bucket: str, key: str) -> list[tuple[str, Any]]:
    out = []
    for method, headers, query in (
        ("HEAD", {}, []),
        ("GET", {}, []),
        ("GET", {"Range": "bytes=0-10"}, []),
        ("GET", {"Range": "bytes=-5"}, []),
        ("GET", {}, [("partNumber", "1")]),
        ("HEAD", {}, [("partNumber", "2")]),
        ("GET", {}, [("attributes", "")]),
    ):
        hdrs = dict(headers)
        if query and query[0][0] == "attributes":
            hdrs["x-amz-object-attributes"] = "ObjectSize,ObjectParts,ETag"
        r = send_signed(sign(method, object_url(proxy.url, bucket, key, query), CLIENT_AK, CLIENT_SK, headers=hdrs))
        out.append((f"{method} {headers} {query}", r))
    return out


def assert_no_forgery(results: list[tuple[str, Any]], forged: bytes = b"") -> None:
    for what, r in results:
        assert r.status is not None or r.aborted, what
        if r.status is not None:
            assert r.status < 500, (what, r.status, r.body)
        if r.status is not None and r.status < 300 and not what.startswith("HEAD") and "attributes" not in what:
            assert r.aborted, (what, "a tampered object was served as complete", r.body[:100] if r.body else r.body)
        if forged and r.body:
            assert forged not in r.body


@pytest.mark.parametrize("layout", ["S", "K"])
def test_envelope_on_a_zero_byte_body(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str, layout: str) -> None:
    if layout == "S":
        victim.put_object(Bucket=enc_bucket, Key="src", Body=b"x" * 1000)
    else:
        multipart_upload(victim, enc_bucket, "src", [b"a" * (5 * MiB), b"b" * 100])
    storage.put_object(Bucket=enc_bucket, Key="src", Body=b"", Metadata=envelope_of(storage, enc_bucket, "src"))
    assert_no_forgery(read_all_ways(attack_proxy, enc_bucket, "src"))


def test_envelope_moved_onto_another_body(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    """S envelope on a K body, K envelope on an S body, envelope of one object on another's body."""
    victim.put_object(Bucket=enc_bucket, Key="single", Body=b"s" * 70000)
    multipart_upload(victim, enc_bucket, "multi", [b"m" * (5 * MiB), b"n" * 1000])
    victim.put_object(Bucket=enc_bucket, Key="other", Body=b"forged-content" * 100)
    s_env, k_env = envelope_of(storage, enc_bucket, "single"), envelope_of(storage, enc_bucket, "multi")
    other_body = storage.get_object(Bucket=enc_bucket, Key="other")["Body"].read()
    multi_body = storage.get_object(Bucket=enc_bucket, Key="multi")["Body"].read()
    storage.put_object(Bucket=enc_bucket, Key="single", Body=other_body, Metadata=s_env)
    assert_no_forgery(read_all_ways(attack_proxy, enc_bucket, "single"), b"forged-content")
    storage.put_object(Bucket=enc_bucket, Key="multi", Body=other_body, Metadata=k_env)
    assert_no_forgery(read_all_ways(attack_proxy, enc_bucket, "multi"), b"forged-content")
    storage.put_object(Bucket=enc_bucket, Key="single", Body=multi_body, Metadata=s_env)
    assert_no_forgery(read_all_ways(attack_proxy, enc_bucket, "single"))


@pytest.mark.parametrize(
    "field,value",
    [
        ("s3proxy-v", "1"), ("s3proxy-v", "3"), ("s3proxy-v", "x"), ("s3proxy-layout", "Z"), ("s3proxy-id", "AAAA"),
        ("s3proxy-key", "local;k1;AES256-GCM;!!"), ("s3proxy-key", "nope"), ("s3proxy-ctx", "e30"),
        ("s3proxy-mac", "A" * 43), ("s3proxy-key", "sse-c;x;none;AAAA"),
    ],
)
def test_altered_envelope_fields(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str, field: str, value: str) -> None:
    victim.put_object(Bucket=enc_bucket, Key="k", Body=b"secret" * 100)
    env = envelope_of(storage, enc_bucket, "k")
    body = storage.get_object(Bucket=enc_bucket, Key="k")["Body"].read()
    env[field] = value
    storage.put_object(Bucket=enc_bucket, Key="k", Body=body, Metadata=env)
    results = read_all_ways(attack_proxy, enc_bucket, "k")
    for what, r in results:
        assert r.status is not None and 400 <= r.status < 500, (what, r.status, r.body)


def test_planted_plaintext_is_never_served(attack_proxy: Any, storage: Any, enc_bucket: str) -> None:
    storage.put_object(Bucket=enc_bucket, Key="planted", Body=b"planted plaintext")
    for what, r in read_all_ways(attack_proxy, enc_bucket, "planted"):
        assert r.status is not None and 400 <= r.status < 500, (what, r.status)
        assert b"planted plaintext" not in (r.body or b"")
