"""Listing rewrite (issue 11): the one-pass splice gives byte for byte what the per-entry regex
substitutions gave (the earlier implementation, kept here as the oracle), on well-formed and
storage-side-crafted listings."""

from __future__ import annotations

import random
import re

from s3proxy.crypto import sizes
from s3proxy.crypto.errors import FormatError
from s3proxy.http import listing
from s3proxy.http.memo import EtagMemo

# ---------------------------------------------------------------- the oracle (before issue 11)

_ENTRY = re.compile(rb"<(Contents|Version)>(.*?)</\1>", re.S)
_SIZE = re.compile(rb"<Size>(\d+)</Size>")
_ETAG = re.compile(rb"<ETag>(.*?)</ETag>", re.S)
_PARTS = re.compile(rb"-(\d+)(?:&quot;|&#34;|\")?\s*$")
_CHECKSUM_EL = re.compile(
    rb"<Checksum(?:CRC32C?|CRC64NVME|SHA1|SHA256|Type)>[^<]*</Checksum(?:CRC32C?|CRC64NVME|SHA1|SHA256|Type)>")
_PLAIN_ETAG = re.compile(rb"<ETag>((?:&quot;|&#34;|\")?)([0-9a-fA-F]{32})((?:&quot;|&#34;|\")?)</ETag>")


def _old_plain(size: int, etag: bytes) -> int | None:
    m = _PARTS.search(etag.strip())
    try:
        if m:
            return sizes.k_object_plaintext_size(size, int(m.group(1)))
        return sizes.s_plaintext_size(size)
    except (FormatError, ValueError):
        return None


def _old_opaque(entry: bytes) -> bytes:
    return _PLAIN_ETAG.sub(
        lambda e: b"<ETag>" + (e.group(1) or b"&quot;") + e.group(2) + b"-1" + (e.group(3) or b"&quot;") + b"</ETag>",
        entry, count=1,
    )


def _old_fix(m: re.Match[bytes]) -> bytes:
    body = m.group(2)
    sm, em = _SIZE.search(body), _ETAG.search(body)
    if sm is None or em is None:
        return m.group(0)
    plain = _old_plain(int(sm.group(1)), em.group(1))
    if plain is None:
        return m.group(0)
    body = body[: sm.start()] + b"<Size>%d</Size>" % plain + body[sm.end():]
    body = _old_opaque(_CHECKSUM_EL.sub(b"", body))
    tag = m.group(1)
    return b"<" + tag + b">" + body + b"</" + tag + b">"


def old_rewrite(xml: bytes) -> bytes:
    return _ENTRY.sub(_old_fix, xml)


# ---------------------------------------------------------------- generated listings

QUOTES = [b"&quot;", b"&#34;", b'"', b""]


def _etag(rng: random.Random) -> bytes:
    md5 = bytes(rng.choice(b"0123456789abcdefABCDEF") for _ in range(32))
    q = rng.choice(QUOTES)
    kind = rng.random()
    if kind < 0.5:
        return q + md5 + q
    if kind < 0.8:
        return q + md5 + b"-%d" % rng.randint(0, 12) + q + rng.choice([b"", b" ", b"\n"])
    return rng.choice([b"", b"xyz", md5[:31], q + md5 + b"-" + q, b" " + q + md5 + q + b" "])


def _size(rng: random.Random) -> bytes:
    p = rng.choice([0, 1, 100, 4096, 65535, 65536, 1 << 20, rng.randint(0, 10 << 20)])
    c = sizes.s_ciphertext_size(p) if rng.random() < 0.6 else p + rng.randint(0, 200)
    return b"%d" % c


def _entry(rng: random.Random) -> bytes:
    tag = rng.choice([b"Contents", b"Contents", b"Version"])
    els = [b"<Key>k&amp;%d</Key>" % rng.randint(0, 99), b"<LastModified>2026-01-01T00:00:00.000Z</LastModified>",
           b"<ETag>" + _etag(rng) + b"</ETag>", b"<Size>" + _size(rng) + b"</Size>",
           b"<StorageClass>STANDARD</StorageClass>"]
    if rng.random() < 0.3:
        els.append(b"<ChecksumCRC32>AAAAAA==</ChecksumCRC32><ChecksumType>FULL_OBJECT</ChecksumType>")
    if rng.random() < 0.2:
        els.append(b"<ChecksumAlgorithm>CRC32</ChecksumAlgorithm>")
    rng.shuffle(els)
    if rng.random() < 0.05:
        els = [e for e in els if not e.startswith(rng.choice([b"<Size>", b"<ETag>"]))]
    if rng.random() < 0.04:  # crafted by the storage side: a Size inside the ETag, two ETags
        els.append(rng.choice([b"<ETag>a<Size>99</Size>b</ETag>", b"<ETag>" + _etag(rng) + b"</ETag>"]))
    return b"<" + tag + b">" + b"".join(els) + b"</" + tag + b">"


def _listing(rng: random.Random, n: int) -> bytes:
    parts = [b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult><Name>b</Name>']
    for _ in range(n):
        parts.append(_entry(rng) if rng.random() < 0.9 else b"<CommonPrefixes><Prefix>p/</Prefix></CommonPrefixes>")
    parts.append(b"<IsTruncated>false</IsTruncated></ListBucketResult>")
    return b"".join(parts)


def test_rewrite_matches_the_per_entry_substitutions() -> None:
    rng = random.Random(11)
    for _ in range(300):
        xml = _listing(rng, rng.randint(0, 30))
        assert listing.rewrite_listing(xml) == old_rewrite(xml), xml


def test_plain_etag_marked_and_sizes_plaintext() -> None:
    c = sizes.s_ciphertext_size(1000)
    xml = (b"<ListBucketResult><Contents><Key>a</Key><ETag>&quot;" + b"0" * 32 + b"&quot;</ETag><Size>%d</Size>"
           b"<ChecksumCRC32>x</ChecksumCRC32></Contents><Contents><Key>b</Key><Size>%d</Size><ETag>" + b"1" * 32
           + b"</ETag></Contents></ListBucketResult>") % (c, c)
    out = listing.rewrite_listing(xml)
    assert out == (b"<ListBucketResult><Contents><Key>a</Key><ETag>&quot;" + b"0" * 32 + b"-1&quot;</ETag>"
                   b"<Size>1000</Size></Contents><Contents><Key>b</Key><Size>1000</Size><ETag>&quot;" + b"1" * 32
                   + b"-1&quot;</ETag></Contents></ListBucketResult>")


def test_nothing_to_rewrite_is_the_same_bytes() -> None:
    xml = b"<ListBucketResult><CommonPrefixes><Prefix>a/</Prefix></CommonPrefixes></ListBucketResult>"
    assert listing.rewrite_listing(xml) is xml


# ---------------------------------------------------------------- the usual-shape fast path


def _usual(rng: random.Random, n: int, tag: bytes = b"Contents") -> bytes:
    parts = [b"<ListBucketResult><Name>b</Name>"]
    for i in range(n):
        md5 = bytes(rng.choice(b"0123456789abcdef") for _ in range(32))
        etag = rng.choice([b"&quot;" + md5 + b"&quot;", b'"' + md5 + b'"', md5, b"&quot;" + md5 + b"-3&quot;"])
        size = b"%d" % sizes.s_ciphertext_size(rng.randint(0, 1 << 20))
        if b"-3" in etag:
            size = b"%d" % (3 * sizes.k_part_ciphertext_size(5 << 20))
        extra = rng.choice([b"", b"<ChecksumAlgorithm>CRC32</ChecksumAlgorithm>", b"<Owner><ID>x</ID></Owner>"])
        parts.append(b"<%s><Key>k/%d&amp;</Key><LastModified>t</LastModified><ETag>%s</ETag>%s<Size>%s</Size>"
                     b"<StorageClass>STANDARD</StorageClass></%s>" % (tag, i, etag, extra, size, tag))
    parts.append(b"<IsTruncated>false</IsTruncated></ListBucketResult>")
    return b"".join(parts)


def test_fast_path_equals_the_general_rewrite() -> None:
    rng = random.Random(7)
    for n in (0, 1, 5, 200):
        for tag in (b"Contents", b"Version"):
            xml = _usual(rng, n, tag)
            memo = EtagMemo()
            memo.minus_n = True
            out = listing._canonical_listing("b", False, memo, xml)
            assert out is not None and out == old_rewrite(xml)


def test_fast_path_declines_other_shapes_and_uncached_hidden_entries() -> None:
    rng = random.Random(8)
    for _ in range(200):
        xml = _listing(rng, rng.randint(1, 10))
        memo = EtagMemo()
        memo.minus_n = True
        out = listing._canonical_listing("b", False, memo, xml)
        if out is not None:  # only when every entry has the usual shape and a visible layout
            assert out == old_rewrite(xml)
    xml = _usual(rng, 3).replace(b"&quot;", b"").replace(b"-3", b"")  # plain ETags
    memo = EtagMemo()  # minus_n unknown: every plain-ETag entry is hidden
    assert listing._canonical_listing("b", False, memo, xml) is None


def test_fast_path_takes_hidden_sizes_from_the_raw_cache() -> None:
    xml = (b"<ListBucketResult><Contents><Key>a&amp;b</Key><ETag>&quot;" + b"a" * 32 + b"&quot;</ETag><Size>5000</Size>"
           b"</Contents><Contents><Key>c</Key><ETag>" + b"b" * 32 + b"</ETag><Size>77</Size></Contents></ListBucketResult>")
    memo = EtagMemo()
    raw = listing._raw_sizes(memo)
    raw[("b", False, b"a&amp;b", b"&quot;" + b"a" * 32 + b"&quot;", 5000)] = 4242
    assert listing._canonical_listing("b", False, memo, xml) is None  # "c" is not cached
    raw[("b", False, b"c", b"b" * 32, 77)] = None  # HEADed: not an s3proxy object
    out = listing._canonical_listing("b", False, memo, xml)
    assert out == xml.replace(b"<Size>5000</Size>", b"<Size>4242</Size>").replace(
        b"a" * 32 + b"&quot;", b"a" * 32 + b"-1&quot;")
    assert listing._canonical_listing("other-bucket", False, memo, xml) is None
    assert listing._canonical_listing("b", True, memo, xml) is None  # encoding-type=url: other keys


def test_page_level_minus_n_check_is_the_per_etag_one() -> None:
    from s3proxy.http.memo import PARTS_RE

    rng = random.Random(9)
    alphabet = [b"a", b"0", b"7", b"-", b"-1", b"-12", b"&quot;", b"&#34;", b'"', b" ", b"\n", b"\t", b"x-", b"&amp;"]
    for _ in range(3000):
        v = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        assert bool(listing._ANY_PARTS.search(b"<Size>1</Size><ETag>" + v + b"</ETag>")) == bool(PARTS_RE.search(v)), v
    memo = EtagMemo()
    listing._canonical_listing("b", False, memo, _usual(random.Random(1), 20).replace(b"-3&quot;", b"&quot;"))
    assert memo.minus_n is None
    listing._canonical_listing("b", False, memo, _usual(random.Random(2), 20))
    assert memo.minus_n is True
