"""The completeness manifest (docs/FORMAT.md 8) and the sealed block's manifest promise ``"mf"``."""

from __future__ import annotations

import json
import os

import pytest

from s3proxy.crypto.envelope import SealContents
from s3proxy.crypto.errors import MalformedMetadata
from s3proxy.crypto.format import KPartEncryptor
from s3proxy.crypto.manifest import Manifest, ManifestMismatch, decode_manifest, manifest_key
from s3proxy.crypto.streams import KObjectDecryptor

DEK = bytes(range(32))
OID = bytes(range(16))
M = Manifest(OID, ((1, 5 << 20), (2, 10), (4, 7)))


def test_roundtrip_and_layout() -> None:
    data = M.encode(DEK)
    got = decode_manifest(data, DEK, OID)
    assert got == M and got.total == (5 << 20) + 17
    body = json.loads(data[32:])
    assert body == {"n": 3, "oid": OID.hex(), "parts": [[1, 5 << 20], [2, 10], [4, 7]], "total": (5 << 20) + 17, "v": 1}
    assert manifest_key(OID) == ".s3proxy/manifests/" + OID.hex()


@pytest.mark.parametrize("case", ["other-dek", "other-oid", "mac", "body", "truncated", "empty", "non-canonical"])
def test_forgeries_are_refused(case: str) -> None:
    data = M.encode(DEK)
    dek, oid = DEK, OID
    if case == "other-dek":
        dek = os.urandom(32)
    elif case == "other-oid":
        oid = os.urandom(16)
    elif case == "mac":
        data = bytes([data[0] ^ 1]) + data[1:]
    elif case == "body":
        data = data.replace(b"[2,10]", b"[2,11]")
    elif case == "truncated":
        data = data[:-1]
    elif case == "empty":
        data = b""
    elif case == "non-canonical":  # re-MAC'd by a DEK holder, but not canonical: still refused
        from s3proxy.crypto.manifest import _mac

        body = data[32:].replace(b",", b", ")
        data = _mac(DEK, OID, body) + body
    with pytest.raises(ManifestMismatch):
        decode_manifest(data, dek, oid)


def test_manifest_from_another_object_with_the_same_dek_is_refused() -> None:
    other = os.urandom(16)
    data = Manifest(other, M.parts).encode(DEK)
    with pytest.raises(ManifestMismatch):
        decode_manifest(data, DEK, OID)


def test_check_parts() -> None:
    M.check_parts([(1, 5 << 20), (2, 10), (4, 7)])
    M.check_parts([(None, 5 << 20), (None, 10), (None, 7)])
    for parts in ([(1, 5 << 20), (2, 10)], [(1, 5 << 20), (3, 10), (4, 7)], [(1, 5 << 20), (2, 10), (4, 8)]):
        with pytest.raises(ManifestMismatch):
            M.check_parts(parts)


def test_seal_promise_roundtrip_and_strictness() -> None:
    c = SealContents({"a": "b"}, manifest=True)
    assert c.encode() == b'{"m":{"a":"b"},"mf":1}'
    assert SealContents.decode(c.encode()) == c
    assert SealContents.decode(b"{}").manifest is False
    for bad in (b'{"mf":2}', b'{"mf":true}', b'{"mf":"1"}', b'{"mf":1.0}', b'{"mf":0}'):
        with pytest.raises(MalformedMetadata):
            SealContents.decode(bad)


def _k_object(parts: list[tuple[int, bytes]]) -> bytes:
    out = b""
    for pn, pt in parts:
        enc = KPartEncryptor(DEK, OID, pn, len(pt))
        out += bytes(enc.header()) + bytes(enc.update(pt)) + bytes(enc.finalize())
    return out


def test_streaming_reader_checks_each_part_against_the_manifest() -> None:
    parts = [(1, b"a" * 100), (3, b"b" * 50)]
    ct = _k_object(parts)
    dec = KObjectDecryptor(DEK, OID, 2, [(1, 100), (3, 50)])
    assert bytes(dec.update(ct)) + dec.finalize() == b"a" * 100 + b"b" * 50
    for expected in ([(1, 100), (2, 50)], [(1, 100), (3, 51)], [(1, 99), (3, 50)]):
        dec = KObjectDecryptor(DEK, OID, 2, expected)
        with pytest.raises(ManifestMismatch):
            dec.update(ct)
    with pytest.raises(ManifestMismatch):
        KObjectDecryptor(DEK, OID, 3, [(1, 100), (3, 50)])
