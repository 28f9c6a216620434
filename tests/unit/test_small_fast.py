"""Per-request CPU of small objects and listings (issue 11, round three): the caches and
shortcuts give exactly what the work they save gave, and nothing a storage-side attacker
changes is served from them."""

from __future__ import annotations

import json
import random

import pytest

from s3proxy.crypto import envelope as envmod
from s3proxy.crypto import sizes
from s3proxy.crypto.envelope import (
    EncryptionContext,
    SealContents,
    decode_metadata,
    encode_metadata,
    make_envelope,
    open_seal,
    verify_binding,
)
from s3proxy.crypto.errors import BindingMismatch, FormatError, MalformedMetadata, SealAuthenticationFailed
from s3proxy.crypto.seal import seal_block, seal_plaintext
from s3proxy.http import authz, handlers, listing
from s3proxy.http.memo import PAGE_CACHE_BYTES, EtagMemo
from s3proxy.keys.base import WrappedKey

DEK = bytearray(range(32))
OTHER_DEK = bytearray(range(1, 33))
WRAPPED = WrappedKey("local", "k1", "AES256-GCM", b"w" * 40)


def _env(key: str = "k", dek: bytearray = DEK, meta: dict[str, str] | None = None, version: int = 2) -> envmod.Envelope:
    sealed = SealContents(meta or {"a": "1"}, etag='"x"') if version == 2 else None
    return make_envelope(dek, "S", envmod.new_object_id(), WRAPPED, {"bucket": "b"}, "b", key, sealed=sealed)


# ---------------------------------------------------------------- decoded envelopes


def test_decoded_envelope_is_cached_per_distinct_metadata() -> None:
    meta = encode_metadata(_env())
    first = decode_metadata(meta)
    assert first is not None
    again = decode_metadata(dict(meta))
    assert again is first  # decoded once
    upper = {k.upper(): v for k, v in meta.items()}
    assert decode_metadata({**upper, "color": "red"}) is first  # the same envelope fields
    envmod._DECODED.clear()
    fresh = decode_metadata(meta)
    assert fresh == first and fresh is not first


def test_changed_metadata_is_decoded_again() -> None:
    meta = encode_metadata(_env())
    env = decode_metadata(meta)
    other = encode_metadata(_env())
    env2 = decode_metadata(other)
    assert env2 is not None and env is not None and env2.object_id != env.object_id
    for name in meta:
        if meta[name] == other[name]:
            continue  # version, layout, wrapped key, context: the same in both
        changed = dict(meta)
        changed[name] = other[name]
        try:
            got = decode_metadata(changed)
        except FormatError:
            continue
        assert got is not env and got is not env2  # a mix of the two: its own envelope


def test_malformed_metadata_is_refused_every_time_and_not_cached() -> None:
    meta = encode_metadata(_env())
    bad = {**meta, "s3proxy-id": meta["s3proxy-id"] + "A"}
    n = len(envmod._DECODED)
    for _ in range(3):
        with pytest.raises(MalformedMetadata):
            decode_metadata(bad)
    without_seal = {k: v for k, v in meta.items() if k != "s3proxy-seal"}
    for _ in range(2):
        with pytest.raises(MalformedMetadata):
            decode_metadata(without_seal)
    assert len(envmod._DECODED) == n


def test_a_cached_envelope_still_fails_binding_and_seal_checks() -> None:
    """The cache decodes; it never verifies: metadata moved to another key, or opened under
    another DEK, fails on every request, also once its envelope is cached."""
    env = decode_metadata(encode_metadata(_env("k")))
    assert env is not None
    for _ in range(2):
        verify_binding(decode_metadata(encode_metadata(env)), DEK, "b", "k")  # type: ignore[arg-type]
        with pytest.raises(BindingMismatch):
            verify_binding(decode_metadata(encode_metadata(env)), DEK, "b", "other-key")  # type: ignore[arg-type]
        with pytest.raises(BindingMismatch):
            verify_binding(env, OTHER_DEK, "b", "k")
        with pytest.raises(SealAuthenticationFailed):
            open_seal(env, OTHER_DEK)
        assert open_seal(env, DEK) == SealContents({"a": "1"}, etag='"x"')
    # a sealed block swapped in from another object of the same bucket and key
    env2 = _env("k", meta={"a": "2"})
    swapped = {**encode_metadata(env), "s3proxy-seal": encode_metadata(env2)["s3proxy-seal"]}
    decoded = decode_metadata(swapped)
    assert decoded is not None
    with pytest.raises((BindingMismatch, SealAuthenticationFailed)):  # its size is bound; it is authenticated
        verify_binding(decoded, DEK, "b", "k")
        open_seal(decoded, DEK)


def test_decoded_cache_is_bounded() -> None:
    envmod._DECODED.clear()
    base = encode_metadata(_env())
    for i in range(envmod.DECODED_MAX + 50):
        meta = dict(base)
        meta["s3proxy-id"] = envmod.b64u(i.to_bytes(16, "big"))
        decode_metadata(meta)
    assert len(envmod._DECODED) == envmod.DECODED_MAX


# ---------------------------------------------------------------- canonical JSON, sealed block


@pytest.mark.parametrize("items", [
    {}, {"bucket": "b"}, {"bucket": "b", "a": "é\u2028\"\\\n\x00"}, {"z": "1", "Z": "2", "é": "ß", "\U0001f600": "x"},
])
def test_context_json_is_the_canonical_json(items: dict[str, str]) -> None:
    expected = json.dumps(items, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ctx = EncryptionContext(items)
    assert ctx.canonical_json() == expected
    assert ctx.canonical_json() is ctx.canonical_json()
    assert EncryptionContext(dict(items)).canonical_json() == expected
    assert EncryptionContext.from_canonical_json(expected) == ctx


def test_context_json_random() -> None:
    rng = random.Random(5)
    alphabet = "ab\"\\/\n\t\x01é\u00ff\u2028\U0001f600 {}:,"
    for _ in range(500):
        items = {"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))): "".join(
            rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(0, 4))}
        expected = json.dumps(items, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert EncryptionContext(items).canonical_json() == expected


def test_lone_surrogates_still_refused() -> None:
    with pytest.raises(UnicodeEncodeError):
        EncryptionContext({"a": "\ud800"}).canonical_json()


def test_seal_encoding_and_plaintext_sealing_unchanged() -> None:
    contents = SealContents({"a": "é", "b": "\u2028"}, {"alg": "CRC32", "v": "x", "type": "FULL_OBJECT"}, '"e"',
                            True, {"t": "v"}, {"content-type": "text/plain"})
    obj = {"m": {"a": "é", "b": "\u2028"}, "h": {"content-type": "text/plain"}, "t": {"t": "v"},
           "c": {"alg": "CRC32", "v": "x", "type": "FULL_OBJECT"}, "e": '"e"', "mf": 1}
    assert contents.encode() == json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    salt = bytes(24)
    assert seal_block(DEK, contents, b"B" * 32, salt) == seal_plaintext(DEK, contents.encode(), b"B" * 32, salt)
    env = make_envelope(DEK, "S", bytes(16), WRAPPED, {"bucket": "b"}, "b", "k", sealed=contents, seal_salt=salt)
    verify_binding(env, DEK, "b", "k")
    assert open_seal(env, DEK) == contents
    assert len(env.seal) == len(contents.encode()) + envmod.SEAL_OVERHEAD


# ---------------------------------------------------------------- authorisation by headers


def _old_header_actions(headers: dict[str, str]) -> set[str]:
    for name, value in headers.items():
        n = name.lower()
        if n == "x-amz-acl" and value.strip().lower() not in authz.HARMLESS_CANNED_ACLS:
            return {"admin"}
        if n.startswith(("x-amz-grant-", "x-amz-object-lock-")) or n == "x-amz-bypass-governance-retention":
            return {"admin"}
    return set()


def test_header_actions_is_the_per_header_loop() -> None:
    rng = random.Random(3)
    names = ["x-amz-acl", "X-Amz-Acl", "x-amz-acl-x", "x-amz-grant-read", "X-AMZ-GRANT-WRITE", "x-amz-grant",
             "x-amz-object-lock-mode", "X-Amz-Object-Loc\u212a-Mode", "x-amz-bypass-governance-retention",
             "x-amz-bypass-governance-retention2", "content-type", "x-amz-meta-x-amz-acl", "host",
             "x-amz-date", "a\nx-amz-grant-read", "x-amz-grant-\n", "authorization"]
    values = ["private", " PRIVATE ", "public-read", "bucket-owner-full-control", "", "x"]
    for _ in range(3000):
        headers = {rng.choice(names): rng.choice(values) for _ in range(rng.randint(0, 5))}
        assert authz.header_actions(headers) == _old_header_actions(headers), headers


def test_header_actions_multidict() -> None:
    from multidict import CIMultiDict

    h = CIMultiDict([("X-Amz-Acl", "private"), ("x-amz-acl", "public-read")])
    assert authz.header_actions(h) == {"admin"}
    assert authz.header_actions(CIMultiDict([("X-Amz-Acl", "private"), ("Host", "h")])) == set()


def test_dispatch_table() -> None:
    from s3proxy.http import listing as listing_mod
    from s3proxy.http import reads

    assert handlers._TABLE["GetObject"] is reads.get_object
    assert handlers._TABLE["ListObjectsV2"] is listing_mod.list_objects
    assert "DeleteObject" not in handlers._TABLE  # passthrough


# ---------------------------------------------------------------- listing pages


def _page(n: int, sizes_: list[int] | None = None, etag: bytes | None = None) -> bytes:
    parts = [b"<ListBucketResult><Name>b</Name>"]
    for i in range(n):
        size = sizes_[i] if sizes_ else sizes.s_ciphertext_size(1000 + i)
        tag = etag or b"&quot;" + b"%032x" % i + b"&quot;"
        parts.append(b"<Contents><Key>k/%05d</Key><LastModified>t</LastModified><ETag>%s</ETag><Size>%d</Size>"
                     b"<StorageClass>STANDARD</StorageClass></Contents>" % (i, tag, size))
    parts.append(b"<IsTruncated>false</IsTruncated></ListBucketResult>")
    return b"".join(parts)


def _memo(minus_n: bool | None = True) -> EtagMemo:
    memo = EtagMemo()
    memo.minus_n = minus_n
    return memo


def test_page_rewritten_once_and_equal() -> None:
    memo = _memo()
    xml = _page(200)
    out = listing._fast_page("b", False, memo, xml)
    assert out == listing._canonical_listing("b", False, _memo(), xml)
    assert len(memo.pages) == 1
    assert listing._fast_page("b", False, memo, bytes(xml)) is out  # from the cache
    assert listing._fast_page("b", True, memo, xml) == out and len(memo.pages) == 2  # encoding-type: own entry
    assert listing._fast_page("other", False, memo, xml) == out and len(memo.pages) == 3


def test_changed_page_is_not_served_from_the_cache() -> None:
    memo = _memo()
    xml = _page(100)
    out = listing._fast_page("b", False, memo, xml)
    assert out is not None and b"<Size>1050</Size>" in out
    changed = xml.replace(b"<Size>%d</Size>" % sizes.s_ciphertext_size(1050), b"<Size>%d</Size>" % sizes.s_ciphertext_size(7))
    out2 = listing._fast_page("b", False, memo, changed)
    assert out2 is not None and b"<Size>1050</Size>" not in out2 and b"<Size>7</Size>" in out2
    assert out2 == listing._canonical_listing("b", False, _memo(), changed)


def test_page_depends_on_minus_n_and_the_raw_sizes() -> None:
    xml = _page(100)
    memo = _memo(None)  # plain ETags, "-N" unknown: every entry's layout is hidden
    assert listing._fast_page("b", False, memo, xml) is None  # not HEADed yet: the general path
    assert not memo.pages
    raw = listing._raw_sizes(memo)
    for i in range(100):
        raw[("b", False, b"k/%05d" % i, b"&quot;" + b"%032x" % i + b"&quot;", sizes.s_ciphertext_size(1000 + i))] = 5
    out = listing._fast_page("b", False, memo, xml)
    assert out is not None and out.count(b"<Size>5</Size>") == 100
    memo.minus_n = True  # now the listing shows the layouts: the S sizes
    out2 = listing._fast_page("b", False, memo, xml)
    assert out2 is not None and b"<Size>5</Size>" not in out2 and b"<Size>1000</Size>" in out2
    listing.clear_pages(memo)
    assert not memo.pages and memo.pages_bytes == 0


def test_page_cache_keeps_what_the_rewrite_learns() -> None:
    """A page with "-N" ETags teaches the backend's ETag style; a cached page teaches it too."""
    xml = _page(100, [3 * sizes.k_part_ciphertext_size(5 << 20)] * 100, b"&quot;" + b"a" * 32 + b"-3&quot;")
    memo = _memo(False)
    out = listing._fast_page("b", False, memo, xml)
    assert memo.minus_n is True and out is not None
    memo.minus_n = False  # e.g. the capability probe said "no" meanwhile
    assert listing._fast_page("b", False, memo, xml) is out  # the entry made under minus_n False
    assert memo.minus_n is True


def test_page_cache_is_bounded() -> None:
    memo = _memo()
    xml = _page(1000)
    n = PAGE_CACHE_BYTES // len(xml) + 5
    for i in range(n):
        listing._fast_page(f"b{i}", False, memo, xml)
    assert memo.pages_bytes <= PAGE_CACHE_BYTES
    assert memo.pages_bytes == sum(len(v[0]) for v in memo.pages.values())
    assert ("b0", False, True) not in {k[:3] for k in memo.pages}  # the oldest went first


def test_small_pages_are_not_cached() -> None:
    memo = _memo()
    xml = _page(2)
    assert listing._fast_page("b", False, memo, xml) == listing._canonical_listing("b", False, _memo(), xml)
    assert not memo.pages


# ---------------------------------------------------------------- per-request metrics


def _exposition(m: object) -> list[str]:
    from prometheus_client import generate_latest

    text = generate_latest(m.registry).decode()  # type: ignore[attr-defined]
    out = []
    for line in text.splitlines():
        if "_created" in line:
            continue
        if "_sum{" in line:  # summed in another order: the last digits may differ
            name, value = line.rsplit(" ", 1)
            line = f"{name} {float(value):.9g}"
        out.append(line)
    return out


def test_deferred_request_metrics_export_what_direct_ones_do() -> None:
    from s3proxy.observability import Metrics
    from s3proxy.state import RequestMetrics

    rng = random.Random(4)
    deferred_m, direct_m = Metrics(), Metrics()
    deferred, direct = RequestMetrics(deferred_m), RequestMetrics(direct_m)
    direct.deferred = False
    assert deferred.deferred
    for round_ in range(3):
        for _ in range(200):
            op, status = rng.choice(["GetObject", "PutObject", "ListObjectsV2"]), rng.choice([200, 404, 503])
            seconds = rng.choice([0.0, 0.001, 0.0025, 0.3, 1e-6, 7.0, 400.0, rng.random()])
            for rm in (deferred, direct):
                rm.begin()
            for rm in (deferred, direct):
                rm.end(op, status, seconds)
        deferred.begin()
        direct.begin()  # one request still in flight at the scrape
        assert _exposition(deferred_m) == _exposition(direct_m), round_
        assert deferred_m.registry.get_sample_value("s3proxy_in_flight_requests") == round_ + 1
    names = {line.split("{")[0].split(" ")[0] for line in _exposition(deferred_m) if not line.startswith("#")}
    assert {"s3proxy_requests_total", "s3proxy_request_seconds_bucket", "s3proxy_request_seconds_count",
            "s3proxy_request_seconds_sum", "s3proxy_in_flight_requests"} <= names


def test_request_metrics_go_straight_to_multiprocess_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from s3proxy import observability
    from s3proxy.observability import Metrics
    from s3proxy.state import RequestMetrics

    observability.enable_multiprocess_metrics(str(tmp_path))
    try:
        m = Metrics()
        rm = RequestMetrics(m)
        assert not rm.deferred
        rm.begin()
        rm.end("GetObject", 200, 0.01)
        text = observability.exposition(m.registry).decode()
        assert 's3proxy_requests_total{op="GetObject",status="200"} 1.0' in text
    finally:
        observability.disable_multiprocess_metrics()


# ---------------------------------------------------------------- envelope headers (objects.py patch)


def test_envelope_fields_is_the_envelope_part_of_user_metadata() -> None:
    from multidict import CIMultiDict, CIMultiDictProxy

    from s3proxy.aws.errors import S3Error
    from s3proxy.http import objects

    fields = getattr(objects, "envelope_fields", None)
    if fields is None:
        pytest.skip("the objects.py patch of issue 11 (envelope_fields) is not applied yet")
    meta = encode_metadata(_env())
    rng = random.Random(6)
    for _ in range(300):
        items = []
        for k, v in meta.items():
            for _ in range(rng.choice([0, 1, 1, 1, 2])):  # missing, once, repeated
                name = rng.choice(["x-amz-meta-", "X-Amz-Meta-", "X-AMZ-META-"]) + rng.choice([k, k.upper(), k.title()])
                items.append((name, rng.choice([v, v + "x"])))
        items += [("x-amz-meta-color", "red"), ("Content-Type", "x"), ("x-amz-meta-s3proxy-other", "1")]
        rng.shuffle(items)
        headers = CIMultiDictProxy(CIMultiDict(items))
        expected = {k: v for k, v in objects.user_metadata(headers).items() if k in envmod.ENVELOPE_KEYS}
        assert fields(headers) == expected
        try:
            want = decode_metadata(objects.user_metadata(headers))
        except FormatError:
            with pytest.raises(S3Error):
                objects.read_envelope(headers)
            continue
        assert objects.read_envelope(headers) == want
    assert fields({"X-Amz-Meta-S3proxy-V": "2", "x-amz-meta-a": "b"}) == {"s3proxy-v": "2", "a": "b"}  # a plain dict


def test_byte_counters_add_up_until_collected() -> None:
    from s3proxy.observability import Metrics

    m = Metrics()
    for n in (1, 4096, 0, 7):
        m.decrypted.inc(n)
        m.bytes_out.inc(n)
    m.encrypted.inc()
    with pytest.raises(ValueError):
        m.bytes_in.inc(-1)
    get = m.registry.get_sample_value
    assert get("s3proxy_decrypted_bytes_total") == get("s3proxy_client_bytes_out_total") == 4104
    assert get("s3proxy_encrypted_bytes_total") == 1 and get("s3proxy_client_bytes_in_total") == 0
    m.decrypted.inc(6)
    assert get("s3proxy_decrypted_bytes_total") == 4110  # every collection sees what came before it


def _old_operation(r, method):  # type: ignore[no-untyped-def]
    names = {k for k, _ in r.query} - {"x-id"}
    if r.bucket is None:
        return "ListBuckets" if r.op == "ListBuckets" else r.op
    if r.key is None:
        if r.op != "BucketConfig":
            if names & authz._BUCKET_CONFIG_NAMES - authz._OWN_SUBRESOURCES.get(r.op, set()):
                return authz.AMBIGUOUS
            return r.op
        return authz._bucket_operation(method, names)
    subs = names & authz.OBJECT_SUBRESOURCES
    if r.op == "ObjectConfig":
        if len(subs) != 1:
            return authz.AMBIGUOUS
        (sub,) = subs
        if sub == "restore" and method == "POST":
            return "RestoreObject"
        if sub in authz._OBJECT_SUB_NAMES and method in ("GET", "PUT") or (sub == "tagging" and method == "DELETE"):
            return f"{authz._VERB[method]}Object{authz._OBJECT_SUB_NAMES[sub]}"
        return authz.AMBIGUOUS
    if r.op == "DeleteObject" and subs:
        return "DeleteObjectTagging" if subs == {"tagging"} else authz.AMBIGUOUS
    if subs - authz._OWN_SUBRESOURCES.get(r.op, set()):
        return authz.AMBIGUOUS
    return r.op


def test_operation_without_a_query_is_the_general_case() -> None:
    from s3proxy.http.router import route

    hosts = ["s3.local", "b.s3.local"]
    paths = ["/", "/b", "/b/", "/b/k", "/b/k/x", "/k"]
    queries = ["", "acl", "x-id=GetObject", "tagging", "uploads", "list-type=2", "versions", "delete", "uploadId=1"]
    headers_sets = [{}, {"x-amz-copy-source": "/a/b"}, {"content-type": "multipart/form-data; boundary=x"}]
    for method in ("GET", "PUT", "HEAD", "POST", "DELETE", "OPTIONS", "PATCH"):
        for host in hosts:
            for path in paths:
                for q in queries:
                    for h in headers_sets:
                        r = route(method, host, path, q, h, "s3.local")
                        assert authz.operation(r, method) == _old_operation(r, method), (method, host, path, q, h)


def test_key_cache_metrics_follow_its_counts_at_each_collection() -> None:
    import asyncio

    from prometheus_client import CollectorRegistry

    from s3proxy.keys.cache import DataKeyCache

    reg = CollectorRegistry()
    cache = DataKeyCache(registry=reg)
    assert cache._deferred

    async def load() -> bytearray:
        return bytearray(32)

    async def reads(n: int) -> None:
        for _ in range(n):
            (await cache.data_key_for_read(WRAPPED, {"bucket": "b"}, load))[0][:] = bytes(32)

    asyncio.run(reads(5))
    get = reg.get_sample_value
    assert get("s3proxy_key_cache_misses_total", {"side": "decrypt"}) == 1
    assert get("s3proxy_key_cache_hits_total", {"side": "decrypt"}) == 4
    assert get("s3proxy_key_cache_backend_calls_total", {"side": "decrypt"}) == 1
    asyncio.run(reads(3))
    assert get("s3proxy_key_cache_hits_total", {"side": "decrypt"}) == 7 == cache.stats["decrypt"].hits
    assert get("s3proxy_key_cache_hits_total", {"side": "decrypt"}) == 7  # collected twice: added once
