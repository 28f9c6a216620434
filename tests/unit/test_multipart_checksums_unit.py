"""Multipart checksums: CRC combine, composite values, upload modes, part records, the manifest's "c"."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import zlib

import pytest
from awscrt import checksums as crt

from s3proxy.aws.checksums import ChecksumError, Hasher, combine_crcs, decode_b64, multipart_checksum, upload_mode
from s3proxy.crypto.manifest import (
    Manifest,
    ManifestMismatch,
    PartRecord,
    PartRecordInvalid,
    decode_manifest,
    open_part_record,
    part_records_prefix,
    seal_part_record,
    upload_record_mac,
)

CRCS = {
    "CRC32": lambda b: zlib.crc32(b).to_bytes(4, "big"),
    "CRC32C": lambda b: crt.crc32c(b).to_bytes(4, "big"),
    "CRC64NVME": lambda b: crt.crc64nvme(b).to_bytes(8, "big"),
}
DIGESTS = {**CRCS, "SHA1": lambda b: hashlib.sha1(b).digest(), "SHA256": lambda b: hashlib.sha256(b).digest()}


@pytest.mark.parametrize("alg", sorted(CRCS))
@pytest.mark.parametrize("seed", range(6))
def test_full_object_crc_is_the_crc_of_the_whole_body(alg: str, seed: int) -> None:
    rnd = random.Random(seed)
    parts = [rnd.randbytes(rnd.choice([0, 1, 7, 1000, 65537, 300_001])) for _ in range(rnd.randint(1, 6))]
    whole = CRCS[alg](b"".join(parts))
    assert combine_crcs(alg, [(CRCS[alg](p), len(p)) for p in parts]) == whole
    rec = multipart_checksum(alg, "FULL_OBJECT", [(CRCS[alg](p), len(p)) for p in parts])
    assert rec == {"alg": alg, "v": base64.b64encode(whole).decode(), "type": "FULL_OBJECT"}


def test_full_object_crc32_of_a_big_body_matches_zlib() -> None:
    body = os.urandom(9 << 20)
    cuts = [(0, 8 << 20), (8 << 20, 9 << 20)]
    parts = [(zlib.crc32(body[a:b]).to_bytes(4, "big"), b - a) for a, b in cuts]
    assert combine_crcs("crc32", parts) == zlib.crc32(body).to_bytes(4, "big")


@pytest.mark.parametrize("alg", ["CRC32", "CRC32C", "SHA1", "SHA256"])
def test_composite_is_the_checksum_of_the_part_checksums_with_the_count(alg: str) -> None:
    parts = [os.urandom(100), os.urandom(5), os.urandom(33)]
    raws = [DIGESTS[alg](p) for p in parts]
    rec = multipart_checksum(alg, "COMPOSITE", [(r, len(p)) for r, p in zip(raws, parts, strict=True)])
    assert rec["v"] == base64.b64encode(DIGESTS[alg](b"".join(raws))).decode() + "-3"
    assert rec["type"] == "COMPOSITE" and rec["alg"] == alg


def test_composite_matches_a_published_aws_value() -> None:
    # ceph/s3-tests (test_multipart_use_cksum_helper_sha256): three parts of 5 MiB 'A', 'B', 'C'
    # (the last 5 MiB too), whose composite SHA-256 S3 answers as below.
    size = 5 * 1024 * 1024
    raws = [hashlib.sha256(c * size).digest() for c in (b"A", b"B", b"C")]
    assert base64.b64encode(raws[2]).decode() == "Vw7oB/nKQ5xWb3hNgbyfkvDiivl+U+/Dft48nfJfDow="  # their part 3
    got = multipart_checksum("SHA256", "COMPOSITE", [(r, size) for r in raws])["v"]
    assert got == "uWBwpe1dxI4Vw8Gf0X9ynOdw/SS6VBzfWm9giiv1sf4=-3"


def test_hasher_and_decode() -> None:
    h = Hasher("crc32c")
    h.update(b"abc")
    h.update(memoryview(b"def"))
    assert h.digest() == crt.crc32c(b"abcdef").to_bytes(4, "big")
    assert decode_b64("SHA256", base64.b64encode(b"x" * 32).decode()) == b"x" * 32
    assert decode_b64("SHA256", base64.b64encode(b"x" * 31).decode()) is None
    assert decode_b64("CRC32", "not base64!") is None


@pytest.mark.parametrize(("alg", "typ", "want"), [
    (None, None, None), ("crc32", None, ("CRC32", "COMPOSITE")), ("CRC64NVME", None, ("CRC64NVME", "FULL_OBJECT")),
    ("CRC32C", "full_object", ("CRC32C", "FULL_OBJECT")), ("SHA256", "COMPOSITE", ("SHA256", "COMPOSITE")),
])
def test_upload_modes(alg: str | None, typ: str | None, want: tuple[str, str] | None) -> None:
    assert upload_mode(alg, typ) == want


@pytest.mark.parametrize(("alg", "typ"), [
    ("SHA256", "FULL_OBJECT"), ("SHA1", "FULL_OBJECT"), ("CRC64NVME", "COMPOSITE"), ("MD5", None), ("CRC32", "PARTIAL"),
    (None, "COMPOSITE"),
])
def test_refused_upload_modes(alg: str | None, typ: str | None) -> None:
    with pytest.raises(ChecksumError) as e:
        upload_mode(alg, typ)
    assert e.value.code == "InvalidRequest" and e.value.status == 400


# -- part records ----------------------------------------------------------------------------------

DEK, OID = bytes(range(32)), bytes(range(16))
BIND = dict(object_id=OID, bucket="b", key="k/x", backend_upload_id="up-1", etag='"abc"')


def _name(key: str) -> str:
    prefix = part_records_prefix("up-1")
    assert key.startswith(prefix)
    return key[len(prefix):]


@pytest.mark.parametrize("alg", sorted(DIGESTS))
def test_part_record_roundtrip(alg: str) -> None:
    rec = PartRecord(7, alg, DIGESTS[alg](b"part"))
    key = seal_part_record(DEK, record=rec, **BIND)
    assert key.startswith(".s3proxy/parts/" + hashlib.sha256(b"up-1").hexdigest() + "/00007.")
    assert len(key.rsplit("/", 1)[1]) < 120  # one file name on filesystem-backed stores
    assert open_part_record(DEK, name=_name(key), **{**BIND, "etag": "abc"}) == rec
    assert DIGESTS[alg](b"part") not in base64.urlsafe_b64decode(key.rsplit(".", 1)[1] + "==")  # encrypted


@pytest.mark.parametrize("change", ["dek", "object_id", "bucket", "key", "backend_upload_id", "etag", "number", "bit"])
def test_part_record_forgeries_are_refused(change: str) -> None:
    key = seal_part_record(DEK, record=PartRecord(2, "CRC32", b"\x01\x02\x03\x04"), **BIND)
    name, dek, bind = _name(key), DEK, dict(BIND)
    if change == "dek":
        dek = os.urandom(32)
    elif change == "object_id":
        bind["object_id"] = os.urandom(16)
    elif change == "number":
        name = "00003" + name[5:]
    elif change == "bit":
        tail = name[-5:]
        name = name[:-5] + ("A" if tail[0] != "A" else "B") + tail[1:]
    else:
        bind[change] = bind[change] + "x"
    with pytest.raises(PartRecordInvalid):
        open_part_record(dek, name=name, **bind)


@pytest.mark.parametrize("name", ["", "00001", "00001.", "1.AAAA", "00000.AAAA", "10001.AAAA", "00001.!!!!", "00001." + "A" * 40])
def test_malformed_part_record_names_are_refused(name: str) -> None:
    with pytest.raises(PartRecordInvalid):
        open_part_record(DEK, name=name, **BIND)


def test_upload_record_mac_binds_every_field() -> None:
    base = upload_record_mac(DEK, "b", "k", "up", "CRC32", "COMPOSITE")
    assert base == upload_record_mac(DEK, "b", "k", "up", "CRC32", "COMPOSITE")
    others = {upload_record_mac(os.urandom(32), "b", "k", "up", "CRC32", "COMPOSITE"),
              upload_record_mac(DEK, "c", "k", "up", "CRC32", "COMPOSITE"),
              upload_record_mac(DEK, "b", "kk", "up", "CRC32", "COMPOSITE"),
              upload_record_mac(DEK, "b", "k", "up2", "CRC32", "COMPOSITE"),
              upload_record_mac(DEK, "b", "k", "up", "CRC32C", "COMPOSITE"),
              upload_record_mac(DEK, "b", "k", "up", "CRC32", "FULL_OBJECT"),
              upload_record_mac(DEK, "b", "k", "up", None, None)}
    assert base not in others and len(others) == 7


# -- the manifest's "c" ----------------------------------------------------------------------------

C = {"alg": "SHA256", "v": base64.b64encode(b"s" * 32).decode() + "-2", "type": "COMPOSITE"}


def test_manifest_checksum_is_sealed_and_roundtrips() -> None:
    m = Manifest(OID, ((1, 10), (2, 5)), C)
    data = m.encode(DEK)
    got = decode_manifest(data, DEK, OID)
    assert got == m and got.checksum == C
    assert C["v"].encode() not in data and b"SHA256" not in data  # encrypted on the storage
    body = json.loads(data[32:])
    assert set(body) == {"c", "n", "oid", "parts", "total", "v"} and isinstance(body["c"], str)
    assert got.encode(DEK) == data  # re-encoding keeps the stored "c"


def test_manifest_checksum_forgeries_are_refused() -> None:
    from s3proxy.crypto.manifest import _mac, _seal_checksum

    data = Manifest(OID, ((1, 10),), C).encode(DEK)
    body = json.loads(data[32:])
    # edited "c" without the DEK: the MAC fails
    body2 = dict(body, c=body["c"][:-2] + ("AA" if body["c"][-2:] != "AA" else "BB"))
    raw = json.dumps(body2, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(ManifestMismatch):
        decode_manifest(data[:32] + raw, DEK, OID)
    # a DEK holder's "c" sealed for another object id, re-MAC'd: the seal fails
    body3 = dict(body, c=_seal_checksum(DEK, os.urandom(16), C))
    raw = json.dumps(body3, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(ManifestMismatch):
        decode_manifest(_mac(DEK, OID, raw) + raw, DEK, OID)
    # a plaintext "c" (the shape before it was sealed), re-MAC'd: refused
    body4 = dict(body, c=C)
    raw = json.dumps(body4, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(ManifestMismatch):
        decode_manifest(_mac(DEK, OID, raw) + raw, DEK, OID)
