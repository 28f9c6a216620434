"""The sealed block (docs/FORMAT.md 8, ``s3proxy.crypto.seal``): the members ``"t"`` (tags) and
``"h"`` (sealed system headers) next to ``"m"``, ``"c"``, ``"e"``, ``"mf"``; strict canonical
decoding; the block's cipher against tampering and swapping; the metadata bytes each member costs."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3proxy.crypto.envelope import (
    USER_METADATA_LIMIT,
    decode_metadata,
    encode_metadata,
    make_envelope,
    open_seal,
    rebind,
    verify_binding,
)
from s3proxy.crypto.errors import MalformedMetadata, MetadataTooLarge, SealAuthenticationFailed
from s3proxy.crypto.seal import (
    SEAL_OVERHEAD,
    SEALABLE_HEADERS,
    SealContents,
    open_block,
    seal_block,
    sealed_size,
)
from s3proxy.keys.base import WrappedKey

DEK = bytes(range(32))
OTHER_DEK = bytes(range(1, 33))
OID = bytes(range(16))
WRAPPED = WrappedKey("local", "k1", "AES256-GCM", bytes(range(60)))
KMS_WRAPPED = WrappedKey("aws-kms", "arn:aws:kms:eu-west-1:123456789012:key/" + "0" * 36, "SYMMETRIC_DEFAULT", bytes(184))
BINDING = bytes(range(32, 64))

FULL = SealContents(
    {"owner": "jane"},
    {"alg": "CRC32", "v": "AAAAAA==", "type": "FULL_OBJECT"},
    '"0123456789abcdef0123456789abcdef"',
    True,
    {"patient": "jane-doe", "ünï": "\u2603 snow", "empty": ""},
    {"content-type": "text/plain; charset=utf-8", "content-disposition": 'attachment; filename="x.pdf"'},
)


def sized(contents: SealContents, wrapped: WrappedKey = WRAPPED, bucket: str = "my-bucket") -> int:
    env = make_envelope(DEK, "S", OID, wrapped, {"bucket": bucket}, bucket, "k", sealed=contents)
    return sum(len(k) + len(v) for k, v in encode_metadata(env).items())


# -- the plaintext ------------------------------------------------------------------------------


def test_round_trip_every_member() -> None:
    assert SealContents.decode(FULL.encode()) == FULL
    text = FULL.encode().decode("ascii")
    assert list(json.loads(text)) == ["c", "e", "h", "m", "mf", "t"]  # canonical: keys sorted
    assert "\\u2603" in text and "\\u00fc" in text  # ASCII only


def test_empty_members_are_omitted_and_defaults_hold() -> None:
    assert SealContents().encode() == b"{}"
    assert SealContents(tags={}, headers={}).encode() == b"{}"
    c = SealContents.decode(b'{"t":{"a":"b"}}')
    assert c.tags == {"a": "b"} and c.headers == {} and c.meta == {} and not c.manifest
    assert SealContents.decode(b'{"h":{"content-language":"de"}}').headers == {"content-language": "de"}


def test_positional_order_is_unchanged() -> None:
    """Older callers build SealContents(meta, checksum, etag, manifest) positionally."""
    c = SealContents({"a": "1"}, None, '"e"', True)
    assert (c.meta, c.etag, c.manifest, c.tags, c.headers) == ({"a": "1"}, '"e"', True, {}, {})


@pytest.mark.parametrize(
    "plaintext",
    [
        b'{"t":{}}',  # empty members are omitted, never written
        b'{"h":{}}',
        b'{"t":[]}',
        b'{"t":{"a":1}}',
        b'{"t":"a=b"}',
        b'{"h":{"content-type":null}}',
        b'{"h":{"cache-control":"no-store"}}',  # not a sealable header
        b'{"h":{"Content-Type":"text/plain"}}',  # names are lower case
        b'{"t":{"b":"1","a":"2"}}',  # not sorted
        b'{"t": {"a":"b"}}',  # whitespace
        b'{"t":{"\xc3\xbc":"x"}}',  # not ASCII
        b'{"x":{}}',
        b'{"tags":{"a":"b"}}',
        b'{"m":{"a":"b"},"t":{"a":"b"},"z":1}',
    ],
)
def test_strict_decoding(plaintext: bytes) -> None:
    with pytest.raises(MalformedMetadata):
        SealContents.decode(plaintext)


def test_sealable_headers_all_decode() -> None:
    for name in SEALABLE_HEADERS:
        c = SealContents(headers={name: "v"})
        assert SealContents.decode(c.encode()) == c


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=30), max_size=10),
    st.dictionaries(st.sampled_from(SEALABLE_HEADERS), st.text(max_size=40)),
)
def test_round_trip_property(tags: dict[str, str], headers: dict[str, str]) -> None:
    c = SealContents(tags=tags, headers=headers)
    assert SealContents.decode(c.encode()) == c


# -- the cipher ------------------------------------------------------------------------------------


def test_block_round_trip_and_size() -> None:
    block = seal_block(DEK, FULL, BINDING)
    assert len(block) == sealed_size(FULL) == len(FULL.encode()) + SEAL_OVERHEAD
    assert open_block(DEK, block, BINDING) == FULL
    assert seal_block(DEK, FULL, BINDING) != block  # a fresh salt each time
    assert seal_block(DEK, FULL, BINDING, bytes(24)) == seal_block(DEK, FULL, BINDING, bytes(24))
    with pytest.raises(ValueError):
        seal_block(DEK, FULL, BINDING, bytes(23))


def test_block_nothing_in_the_clear() -> None:
    block = seal_block(DEK, FULL, BINDING)
    for marker in (b"patient", b"jane-doe", b"text/plain", b"attachment"):
        assert marker not in block


def test_block_every_flip_and_cut_fails() -> None:
    block = seal_block(DEK, SealContents(tags={"k": "v"}), BINDING)
    for i in range(len(block)):
        bad = bytearray(block)
        bad[i] ^= 0x01
        with pytest.raises(SealAuthenticationFailed):
            open_block(DEK, bytes(bad), BINDING)
    for n in range(len(block)):
        with pytest.raises(SealAuthenticationFailed):
            open_block(DEK, block[:n], BINDING)
    with pytest.raises(SealAuthenticationFailed):
        open_block(DEK, block + b"\x00", BINDING)
    with pytest.raises(SealAuthenticationFailed):
        open_block(OTHER_DEK, block, BINDING)
    with pytest.raises(SealAuthenticationFailed):
        open_block(DEK, block, bytes(32))


def test_swapping_blocks_between_objects_fails() -> None:
    """A storage-side attacker moves the sealed block (tags, headers) of one object onto another:
    both under the same DEK even, the binding (other key, other object id) refuses it."""
    a = make_envelope(DEK, "S", OID, WRAPPED, {"bucket": "b"}, "b", "a", sealed=SealContents(tags={"class": "secret"}))
    b = make_envelope(DEK, "S", bytes(16), WRAPPED, {"bucket": "b"}, "b", "b", sealed=SealContents(tags={"class": "public"}))
    assert len(a.seal) == len(b.seal)  # same length: only the binding tells them apart
    swapped = dataclasses.replace(b, seal=a.seal)
    verify_binding(swapped, DEK, "b", "b")  # the block's length is what the binding covers...
    with pytest.raises(SealAuthenticationFailed):  # ...and the block authenticates only with its own binding
        open_seal(swapped, DEK)
    moved = decode_metadata({**encode_metadata(b), "s3proxy-seal": encode_metadata(a)["s3proxy-seal"]})
    assert moved is not None
    with pytest.raises(SealAuthenticationFailed):
        open_seal(moved, DEK)


def test_rebind_keeps_tags_and_headers() -> None:
    """Copies and rewrap re-seal the same contents: the new members survive."""
    e = make_envelope(DEK, "K", OID, WRAPPED, {"bucket": "b"}, "b", "k", sealed=FULL)
    moved = rebind(e, DEK, "other", "k2", wrapped=KMS_WRAPPED)
    verify_binding(moved, DEK, "other", "k2")
    assert open_seal(moved, DEK) == FULL
    retagged = rebind(e, DEK, "b", "k", sealed=dataclasses.replace(FULL, tags={}))
    got = open_seal(retagged, DEK)
    assert got is not None and got.tags == {} and got.headers == FULL.headers and got.meta == FULL.meta


# -- what each member costs ------------------------------------------------------------------------


def test_metadata_bytes_per_tag_and_header() -> None:
    """Each tag or sealed header (name k, value v, ASCII) adds about 4/3 (len k + len v + 6) bytes
    of backend metadata (base64 of the JSON '"k":"v",'), the member itself about 8 more.  The
    numbers in docs/FORMAT.md 8 come from here."""
    base = sized(SealContents())
    one = sized(SealContents(tags={"k" * 10: "v" * 20}))
    two = sized(SealContents(tags={"k" * 10: "v" * 20, "l" * 10: "w" * 20}))
    assert one - base in range(53, 57)  # ',"t":{"kkkkkkkkkk":"vvvv...v"}' = 41 bytes of JSON -> 55
    assert two - one in range(46, 50)  # one more ',"k":"v"': 36 bytes -> 48
    ct = sized(SealContents(headers={"content-type": "application/pdf"}))
    assert ct - base in range(49, 53)  # ',"h":{"content-type":"application/pdf"}' -> 51


def test_largest_tag_set_does_not_fit_and_is_refused() -> None:
    """S3 allows 10 tags of 128 + 256 characters; sealed, they exceed the 2 KB of metadata the
    backend keeps: refused (``MetadataTooLarge``), never truncated."""
    big = {f"{i:0128d}": "v" * 256 for i in range(10)}
    with pytest.raises(MetadataTooLarge):
        sized(SealContents(tags=big))
    # ten tags of 32 + 64 characters fit next to an empty metadata block (local key)
    medium = {f"{i:032d}": "v" * 64 for i in range(10)}
    assert sized(SealContents(tags=medium)) <= USER_METADATA_LIMIT
