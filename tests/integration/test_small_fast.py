"""The per-request caches of issue 11 against a real backend: a decoded envelope and a rewritten
listing page are reused only while the stored bytes are the same, and a storage-side attacker
who swaps metadata between objects is caught on every request, cached or not."""

from __future__ import annotations

from s3proxy.crypto import envelope as envmod
from tests.integration.helpers import assert_s3_error, get_via_proxy, rand


def _stored(raw, bucket, key):
    return raw.get_object(Bucket=bucket, Key=key)["Body"].read()


def _sizes(s3, bucket, prefix=""):
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = o["Size"]
    return out


def test_listing_shows_a_changed_object_at_once(s3, raw, bucket):
    for i in range(40):  # a page big enough to be cached
        s3.put_object(Bucket=bucket, Key=f"d/{i:03d}", Body=b"x" * i)
    want = {f"d/{i:03d}": i for i in range(40)}
    assert _sizes(s3, bucket) == want
    assert _sizes(s3, bucket) == want  # the cached page: the same answer
    s3.put_object(Bucket=bucket, Key="d/007", Body=b"y" * 4000)  # through the proxy
    want["d/007"] = 4000
    assert _sizes(s3, bucket) == want
    raw.delete_object(Bucket=bucket, Key="d/010")  # around it
    del want["d/010"]
    assert _sizes(s3, bucket) == want
    s3.put_object(Bucket=bucket, Key="d/999", Body=b"")
    want["d/999"] = 0
    assert _sizes(s3, bucket) == want
    r = s3.list_objects_v2(Bucket=bucket, EncodingType="url")
    assert {o["Key"]: o["Size"] for o in r["Contents"]} == want


def test_swapped_metadata_caught_with_a_warm_cache(proxy, s3, raw, bucket):
    a, b = rand(3000), rand(3000)  # same size: the bodies fit either envelope's length
    s3.put_object(Bucket=bucket, Key="a", Body=a, Metadata={"who": "a"})
    s3.put_object(Bucket=bucket, Key="b", Body=b, Metadata={"who": "b"})
    for _ in range(2):  # both envelopes decoded and cached
        assert s3.get_object(Bucket=bucket, Key="a")["Body"].read() == a
        assert s3.get_object(Bucket=bucket, Key="b")["Body"].read() == b
    assert len(envmod._DECODED) >= 2
    meta_a = raw.head_object(Bucket=bucket, Key="a")["Metadata"]
    meta_b = raw.head_object(Bucket=bucket, Key="b")["Metadata"]
    ct_a = _stored(raw, bucket, "a")
    # b's envelope (cached, valid for b) on a's key: not bound to it
    raw.put_object(Bucket=bucket, Key="a", Body=_stored(raw, bucket, "b"), Metadata=meta_b)
    for _ in range(2):
        assert_s3_error(get_via_proxy(proxy, bucket, "a"), 403, "AccessDenied")
    # a's sealed block in a's otherwise-valid envelope swapped for b's: the seal fails
    raw.put_object(Bucket=bucket, Key="a", Body=ct_a, Metadata={**meta_a, "s3proxy-seal": meta_b["s3proxy-seal"]})
    for _ in range(2):
        reply = get_via_proxy(proxy, bucket, "a")
        assert reply.status == 403 and a not in reply.body and b not in reply.body
    # put back as it was: served again (the cached envelope of the original metadata)
    raw.put_object(Bucket=bucket, Key="a", Body=ct_a, Metadata=meta_a)
    r = s3.get_object(Bucket=bucket, Key="a")
    assert r["Body"].read() == a and r["Metadata"] == {"who": "a"}


def test_an_edited_envelope_field_is_decoded_and_refused(proxy, s3, raw, bucket):
    s3.put_object(Bucket=bucket, Key="k", Body=b"hello")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"hello"
    meta = raw.head_object(Bucket=bucket, Key="k")["Metadata"]
    ct = _stored(raw, bucket, "k")
    ctx = envmod.unb64u(meta["s3proxy-ctx"], "ctx")
    evil = envmod.b64u(ctx.replace(b"}", b',"x":"y"}'))
    raw.put_object(Bucket=bucket, Key="k", Body=ct, Metadata={**meta, "s3proxy-ctx": evil})
    for _ in range(2):
        reply = get_via_proxy(proxy, bucket, "k")
        assert reply.status in (403, 400) and b"hello" not in reply.body, reply.status
