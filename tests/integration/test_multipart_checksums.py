"""Multipart checksums (issue 14 item 2.3): part checksums verified, kept in authenticated part
records, listed by ListParts, checked and combined at Complete (COMPOSITE ``-N`` and FULL_OBJECT),
kept encrypted in the completeness manifest and returned by HEAD, GET and GetObjectAttributes.

The attacker here holds the backend's credentials (``raw``): they can edit, delete, copy and
plant records under ``.s3proxy/``; they must never make the proxy serve a wrong checksum.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from awscrt import checksums as crt
from botocore.exceptions import ClientError

from tests.conftest import Backend, Proxy, proxy_settings, start_proxy, stop_proxy
from tests.integration.helpers import MiB, client_error, rand, signed

PART = 5 * MiB
RAW = {
    "CRC32": lambda b: zlib.crc32(b).to_bytes(4, "big"),
    "CRC32C": lambda b: crt.crc32c(b).to_bytes(4, "big"),
    "CRC64NVME": lambda b: crt.crc64nvme(b).to_bytes(8, "big"),
    "SHA1": lambda b: hashlib.sha1(b).digest(),
    "SHA256": lambda b: hashlib.sha256(b).digest(),
}
MODES = [("CRC32", "COMPOSITE"), ("CRC32", "FULL_OBJECT"), ("CRC32C", "COMPOSITE"), ("CRC32C", "FULL_OBJECT"),
         ("CRC64NVME", "FULL_OBJECT"), ("SHA1", "COMPOSITE"), ("SHA256", "COMPOSITE")]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def expected(alg: str, typ: str, parts: list[bytes]) -> str:
    if typ == "FULL_OBJECT":
        return b64(RAW[alg](b"".join(parts)))
    return b64(RAW[alg](b"".join(RAW[alg](p) for p in parts))) + f"-{len(parts)}"


@pytest.fixture(scope="module")
def replica(backend: Backend) -> Iterator[Proxy]:
    """A second s3proxy on the same backend and keys, with its own (empty) caches."""
    p = start_proxy(proxy_settings(backend, buckets={"plain-passthrough": {"mode": "passthrough"}}))
    yield p
    stop_proxy(p)


def reserved(raw: Any, bucket: str, prefix: str = ".s3proxy/") -> list[str]:
    return [o["Key"] for o in raw.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def upload_parts(s3: Any, bucket: str, key: str, parts: list[bytes], alg: str, typ: str | None = None) -> tuple[str, list[dict[str, Any]]]:
    create: dict[str, str] = {"ChecksumAlgorithm": alg}
    if typ:
        create["ChecksumType"] = typ
    up = s3.create_multipart_upload(Bucket=bucket, Key=key, **create)
    assert up["ChecksumAlgorithm"] == alg
    if typ:
        assert up["ChecksumType"] == typ
    done = []
    for n, body in enumerate(parts, 1):
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=n, Body=body, ChecksumAlgorithm=alg)
        assert r[f"Checksum{alg}"] == b64(RAW[alg](body))
        done.append({"PartNumber": n, "ETag": r["ETag"], f"Checksum{alg}": r[f"Checksum{alg}"]})
    return up["UploadId"], done


@pytest.mark.needs("object_attributes")
@pytest.mark.parametrize(("alg", "typ"), MODES)
def test_each_algorithm_and_type(s3: Any, raw: Any, bucket: str, alg: str, typ: str) -> None:
    parts = [rand(PART), rand(1000)]
    want = expected(alg, typ, parts)
    uid, done = upload_parts(s3, bucket, "o", parts, alg, typ)
    listed = s3.list_parts(Bucket=bucket, Key="o", UploadId=uid)
    assert [p[f"Checksum{alg}"] for p in listed["Parts"]] == [d[f"Checksum{alg}"] for d in done]
    assert listed["ChecksumAlgorithm"] == alg and listed.get("ChecksumType", typ) == typ
    assert [p["Size"] for p in listed["Parts"]] == [len(p) for p in parts]
    extra = {f"Checksum{alg}": want, "ChecksumType": typ} if typ == "FULL_OBJECT" else {}
    out = s3.complete_multipart_upload(Bucket=bucket, Key="o", UploadId=uid, MultipartUpload={"Parts": done}, **extra)
    assert out[f"Checksum{alg}"] == want and out.get("ChecksumType", typ) == typ
    head = s3.head_object(Bucket=bucket, Key="o", ChecksumMode="ENABLED")
    assert head[f"Checksum{alg}"] == want and head["ChecksumType"] == typ
    assert f"Checksum{alg}" not in s3.head_object(Bucket=bucket, Key="o")
    got = s3.get_object(Bucket=bucket, Key="o", ChecksumMode="ENABLED")
    assert got[f"Checksum{alg}"] == want and got["Body"].read() == b"".join(parts)  # botocore validates FULL_OBJECT
    ranged = s3.get_object(Bucket=bucket, Key="o", ChecksumMode="ENABLED", Range="bytes=0-9")
    assert f"Checksum{alg}" not in ranged and ranged["Body"].read() == parts[0][:10]
    attrs = s3.get_object_attributes(Bucket=bucket, Key="o", ObjectAttributes=["Checksum", "ObjectSize"])
    assert attrs["Checksum"][f"Checksum{alg}"] == want and attrs["Checksum"].get("ChecksumType", typ) == typ
    # the storage sees neither the object's nor any part's checksum; records are gone, the manifest stays
    keys = reserved(raw, bucket)
    assert [k for k in keys if not k.startswith(".s3proxy/manifests/")] == []
    stored = b"".join(raw.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys)
    for value in [want.split("-")[0], *(d[f"Checksum{alg}"] for d in done)]:
        assert value.encode() not in stored
        assert value not in repr(raw.head_object(Bucket=bucket, Key="o")["ResponseMetadata"]["HTTPHeaders"])


def test_default_upload_file_and_validated_download_file(s3: Any, bucket: str, tmp_path: Path) -> None:
    """boto3's defaults: upload_file of a >8 MiB file sends CRC32 (COMPOSITE) per part, and
    download_file validates what it can (a full-object CRC32; composite values are skipped)."""
    from boto3.s3.transfer import TransferConfig

    data = rand(8 * MiB + 12345)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    s3.upload_file(str(src), bucket, "big.bin")
    head = s3.head_object(Bucket=bucket, Key="big.bin", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == expected("CRC32", "COMPOSITE", [data[: 8 * MiB], data[8 * MiB:]])
    dst = tmp_path / "dst.bin"
    s3.download_file(bucket, "big.bin", str(dst), ExtraArgs={"ChecksumMode": "ENABLED"})
    assert dst.read_bytes() == data
    # a full-object CRC32 given by the caller makes s3transfer use FULL_OBJECT: the whole-body
    # CRC the proxy combined from the parts is validated by botocore on the way back
    whole = b64(RAW["CRC32"](data))
    cfg = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART)
    s3.upload_file(str(src), bucket, "full.bin", Config=cfg, ExtraArgs={"ChecksumCRC32": whole})
    head = s3.head_object(Bucket=bucket, Key="full.bin", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == whole and head["ChecksumType"] == "FULL_OBJECT"
    got = s3.get_object(Bucket=bucket, Key="full.bin", ChecksumMode="ENABLED")
    assert got["Body"].read() == data
    s3.download_file(bucket, "full.bin", str(dst), ExtraArgs={"ChecksumMode": "ENABLED"})
    assert dst.read_bytes() == data


def test_aws_cli_cp_of_a_big_file(aws_cli: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    data = rand(17 * MiB + 3)
    src, back = tmp_path / "big.bin", tmp_path / "back.bin"
    src.write_bytes(data)
    aws_cli("s3", "cp", str(src), f"s3://{bucket}/cli/big.bin")
    aws_cli("s3", "cp", f"s3://{bucket}/cli/big.bin", str(back))
    assert back.read_bytes() == data
    head = s3.head_object(Bucket=bucket, Key="cli/big.bin", ChecksumMode="ENABLED")
    assert any(k.startswith("Checksum") and k != "ChecksumType" for k in head), head


@pytest.mark.needs("multipart_parts")
def test_parts_and_complete_through_another_replica(s3: Any, replica: Proxy, bucket: str) -> None:
    """Records live in the bucket, not in one process: UploadPart on one proxy, ListParts, a part
    uploaded again and Complete on another with cold caches."""
    parts = [rand(PART), rand(10)]
    uid, done = upload_parts(s3, bucket, "r", parts, "SHA256")
    other = replica.client()
    listed = other.list_parts(Bucket=bucket, Key="r", UploadId=uid)["Parts"]
    assert [p["ChecksumSHA256"] for p in listed] == [d["ChecksumSHA256"] for d in done]
    parts[1] = b"uploaded again"
    r2 = other.upload_part(Bucket=bucket, Key="r", UploadId=uid, PartNumber=2, Body=parts[1], ChecksumAlgorithm="SHA256")
    done[1] = {"PartNumber": 2, "ETag": r2["ETag"], "ChecksumSHA256": r2["ChecksumSHA256"]}
    assert [p["ChecksumSHA256"] for p in s3.list_parts(Bucket=bucket, Key="r", UploadId=uid)["Parts"]] == [
        d["ChecksumSHA256"] for d in done]  # the stale record of the first part 2 is not shown
    want = expected("SHA256", "COMPOSITE", parts)
    assert other.complete_multipart_upload(Bucket=bucket, Key="r", UploadId=uid,
                                           MultipartUpload={"Parts": done})["ChecksumSHA256"] == want
    assert s3.head_object(Bucket=bucket, Key="r", ChecksumMode="ENABLED")["ChecksumSHA256"] == want
    assert s3.get_object(Bucket=bucket, Key="r")["Body"].read() == b"".join(parts)


def test_part_without_a_checksum_gets_one(proxy: Proxy, s3: Any, bucket: str) -> None:
    """A part sent without a checksum in an upload with an algorithm: the proxy computes it (as S3)."""
    uid = s3.create_multipart_upload(Bucket=bucket, Key="n", ChecksumAlgorithm="CRC32C")["UploadId"]
    reply = signed(proxy, "PUT", bucket, "n", query={"partNumber": "1", "uploadId": uid}, body=b"plain part")
    assert reply.status == 200, reply.body
    assert reply.headers["x-amz-checksum-crc32c"] == b64(RAW["CRC32C"](b"plain part"))
    parts = s3.list_parts(Bucket=bucket, Key="n", UploadId=uid)["Parts"]
    assert parts[0]["ChecksumCRC32C"] == b64(RAW["CRC32C"](b"plain part"))
    s3.abort_multipart_upload(Bucket=bucket, Key="n", UploadId=uid)


# ------------------------------------------------------------------------------ refusals


def test_part_with_another_algorithm_is_refused(s3: Any, raw: Any, bucket: str) -> None:
    uid = s3.create_multipart_upload(Bucket=bucket, Key="m", ChecksumAlgorithm="CRC32")["UploadId"]
    with pytest.raises(ClientError) as e:
        s3.upload_part(Bucket=bucket, Key="m", UploadId=uid, PartNumber=1, Body=b"x", ChecksumAlgorithm="SHA256")
    assert client_error(e.value) == (400, "InvalidRequest")
    assert s3.list_parts(Bucket=bucket, Key="m", UploadId=uid).get("Parts", []) == []
    s3.abort_multipart_upload(Bucket=bucket, Key="m", UploadId=uid)
    assert reserved(raw, bucket) == []  # upload record and part records gone with the upload


@pytest.mark.parametrize(("alg", "typ"), [("SHA256", "FULL_OBJECT"), ("CRC64NVME", "COMPOSITE"), ("MD5", None)])
def test_unsupported_modes_are_refused(proxy: Proxy, raw: Any, bucket: str, alg: str, typ: str | None) -> None:
    headers = {"x-amz-checksum-algorithm": alg, **({"x-amz-checksum-type": typ} if typ else {})}
    reply = signed(proxy, "POST", bucket, "u", query={"uploads": ""}, headers=headers)
    assert reply.status == 400 and b"InvalidRequest" in reply.body
    assert reserved(raw, bucket) == []  # refused before the backend: no upload, no record


def test_wrong_part_checksum_at_complete_is_refused(s3: Any, bucket: str) -> None:
    parts = [rand(PART), b"tail"]
    uid, done = upload_parts(s3, bucket, "w", parts, "CRC32")
    bad = [dict(done[0]), {**done[1], "ChecksumCRC32": b64(RAW["CRC32"](b"other"))}]
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="w", UploadId=uid, MultipartUpload={"Parts": bad})
    assert client_error(e.value) == (400, "InvalidPart")
    # a COMPOSITE upload needs every part's checksum in Complete (as S3)
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="w", UploadId=uid, MultipartUpload={"Parts": [
            done[0], {"PartNumber": 2, "ETag": done[1]["ETag"]}]})
    assert client_error(e.value) == (400, "InvalidRequest")
    # nothing was completed; the right list still completes
    out = s3.complete_multipart_upload(Bucket=bucket, Key="w", UploadId=uid, MultipartUpload={"Parts": done})
    assert out["ChecksumCRC32"] == expected("CRC32", "COMPOSITE", parts)


def test_records_go_with_the_upload_and_the_bucket_deletes(s3: Any, raw: Any) -> None:
    """Complete and Abort remove the upload's records; a bucket whose objects are gone deletes
    (even on stores that keep directories)."""
    from tests.integration.helpers import unique

    name = unique()
    s3.create_bucket(Bucket=name)
    parts = [rand(PART), b"tail"]
    uid, done = upload_parts(s3, name, "k", parts, "CRC32C", "FULL_OBJECT")
    uid2, _ = upload_parts(s3, name, "k2", [b"x"], "SHA1")
    assert len(reserved(raw, name, ".s3proxy/parts/")) == 3
    s3.complete_multipart_upload(Bucket=name, Key="k", UploadId=uid, MultipartUpload={"Parts": done})
    s3.abort_multipart_upload(Bucket=name, Key="k2", UploadId=uid2)
    assert [k for k in reserved(raw, name) if not k.startswith(".s3proxy/manifests/")] == []
    s3.delete_object(Bucket=name, Key="k")
    s3.delete_bucket(Bucket=name)
    assert name not in [b["Name"] for b in raw.list_buckets()["Buckets"]]


def test_wrong_whole_object_checksum_at_complete_is_refused(s3: Any, bucket: str) -> None:
    parts = [rand(PART), b"tail"]
    uid, done = upload_parts(s3, bucket, "f", parts, "CRC32C", "FULL_OBJECT")
    with pytest.raises(ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="f", UploadId=uid, MultipartUpload={"Parts": done},
                                     ChecksumCRC32C=b64(RAW["CRC32C"](b"other")), ChecksumType="FULL_OBJECT")
    assert client_error(e.value) == (400, "BadDigest")
    with pytest.raises(ClientError) as e:  # the type given at Create is the type
        s3.complete_multipart_upload(Bucket=bucket, Key="f", UploadId=uid, MultipartUpload={"Parts": done},
                                     ChecksumType="COMPOSITE")
    assert client_error(e.value) == (400, "BadDigest")
    s3.complete_multipart_upload(Bucket=bucket, Key="f", UploadId=uid, MultipartUpload={"Parts": done})
    assert s3.head_object(Bucket=bucket, Key="f", ChecksumMode="ENABLED")["ChecksumCRC32C"] == expected(
        "CRC32C", "FULL_OBJECT", parts)


def test_upload_without_an_algorithm_has_no_object_checksum(s3: Any, raw: Any, bucket: str) -> None:
    """No x-amz-checksum-algorithm at Create: parts are verified and echoed (no records, no cost)."""
    uid = s3.create_multipart_upload(Bucket=bucket, Key="z")["UploadId"]
    r = s3.upload_part(Bucket=bucket, Key="z", UploadId=uid, PartNumber=1, Body=b"abc", ChecksumAlgorithm="SHA256")
    assert r["ChecksumSHA256"] == b64(RAW["SHA256"](b"abc"))
    assert reserved(raw, bucket, ".s3proxy/parts/") == []
    s3.complete_multipart_upload(Bucket=bucket, Key="z", UploadId=uid, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": r["ETag"], "ChecksumSHA256": r["ChecksumSHA256"]}]})
    head = s3.head_object(Bucket=bucket, Key="z", ChecksumMode="ENABLED")
    assert not any(k.startswith("Checksum") and k != "ChecksumType" for k in head)


# ------------------------------------------------------------------------------ storage-side attacks


def _records(raw: Any, bucket: str) -> list[str]:
    return reserved(raw, bucket, ".s3proxy/parts/")


@pytest.mark.parametrize("attack", ["edit", "delete", "swap", "plant"])
def test_tampered_part_records_fail_complete_cleanly(
    s3: Any, raw: Any, replica: Proxy, backend: Backend, bucket: str, attack: str,
) -> None:
    parts = [rand(PART), b"second"]
    uid, done = upload_parts(s3, bucket, "a", parts, "SHA256")
    recs = sorted(_records(raw, bucket))
    assert len(recs) == 2 and all(".s3proxy/parts/" in k for k in recs)
    if attack == "edit":  # flip one character of part 2's record
        name = recs[1]
        i = len(name) - 5
        raw.put_object(Bucket=bucket, Key=name[:i] + ("A" if name[i] != "A" else "B") + name[i + 1:], Body=b"")
        raw.delete_object(Bucket=bucket, Key=name)
    elif attack == "delete":
        raw.delete_object(Bucket=bucket, Key=recs[1])
    elif attack == "swap":  # part 1's (valid) record renamed as part 2's
        head, _, tail = recs[0].rpartition("/")
        raw.put_object(Bucket=bucket, Key=f"{head}/00002.{tail.partition('.')[2]}", Body=b"")
        raw.delete_object(Bucket=bucket, Key=recs[1])
    else:  # a record of a part with the same number from another upload of the same key
        uid2, done2 = upload_parts(s3, bucket, "a", [rand(PART), b"SECOND"], "SHA256")
        other = sorted(k for k in _records(raw, bucket) if k not in recs)
        raw.delete_object(Bucket=bucket, Key=recs[1])
        prefix = recs[1].rpartition("/")[0]
        raw.put_object(Bucket=bucket, Key=prefix + "/" + other[1].rpartition("/")[2], Body=b"")
        s3.abort_multipart_upload(Bucket=bucket, Key="a", UploadId=uid2)
    for client in (replica.client(), s3):  # a cold replica and the proxy that wrote them (records are never cached)
        with pytest.raises(ClientError) as e:
            client.complete_multipart_upload(Bucket=bucket, Key="a", UploadId=uid, MultipartUpload={"Parts": done})
        assert client_error(e.value) == (400, "InvalidPart"), attack
        assert "Contents" not in raw.list_objects_v2(Bucket=bucket, Prefix="a")
    # ListParts never shows a checksum it cannot verify
    listed = replica.client().list_parts(Bucket=bucket, Key="a", UploadId=uid)["Parts"]
    assert "ChecksumSHA256" not in listed[1] and listed[0]["ChecksumSHA256"] == done[0]["ChecksumSHA256"]
    if "multipart_parts" not in backend.capabilities:  # this backend cannot replace a part
        s3.abort_multipart_upload(Bucket=bucket, Key="a", UploadId=uid)
        return
    # recovery: upload the part again
    r = s3.upload_part(Bucket=bucket, Key="a", UploadId=uid, PartNumber=2, Body=parts[1], ChecksumAlgorithm="SHA256")
    done[1] = {"PartNumber": 2, "ETag": r["ETag"], "ChecksumSHA256": r["ChecksumSHA256"]}
    out = replica.client().complete_multipart_upload(Bucket=bucket, Key="a", UploadId=uid, MultipartUpload={"Parts": done})
    assert out["ChecksumSHA256"] == expected("SHA256", "COMPOSITE", parts)


def test_tampered_upload_record_is_refused(s3: Any, raw: Any, replica: Proxy, bucket: str) -> None:
    """The algorithm in the upload record is authenticated: an edit is refused, never used."""
    from tests.integration.test_sidecars import sidecar_key

    uid = s3.create_multipart_upload(Bucket=bucket, Key="t", ChecksumAlgorithm="CRC32")["UploadId"]
    key = sidecar_key(uid)
    rec = json.loads(raw.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert rec["alg"] == "CRC32" and rec["type"] == "COMPOSITE" and "mac" in rec
    raw.put_object(Bucket=bucket, Key=key, Body=json.dumps({**rec, "alg": "SHA256"}).encode())
    with pytest.raises(ClientError) as e:
        replica.client().upload_part(Bucket=bucket, Key="t", UploadId=uid, PartNumber=1, Body=b"x",
                                     ChecksumAlgorithm="SHA256")
    assert client_error(e.value)[0] in (400, 403)
    s3.abort_multipart_upload(Bucket=bucket, Key="t", UploadId=uid)


def test_tampered_manifest_checksum_is_an_integrity_error(s3: Any, raw: Any, replica: Proxy, bucket: str) -> None:
    parts = [rand(PART), b"x"]
    uid, done = upload_parts(s3, bucket, "c", parts, "CRC32", "FULL_OBJECT")
    s3.complete_multipart_upload(Bucket=bucket, Key="c", UploadId=uid, MultipartUpload={"Parts": done})
    [mkey] = reserved(raw, bucket, ".s3proxy/manifests/")
    data = raw.get_object(Bucket=bucket, Key=mkey)["Body"].read()
    body = json.loads(data[32:])
    c = body["c"]
    body["c"] = c[:-3] + ("AAA" if c[-3:] != "AAA" else "BBB")
    raw.put_object(Bucket=bucket, Key=mkey, Body=data[:32] + json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    other = replica.client()
    for call in (lambda: other.head_object(Bucket=bucket, Key="c", ChecksumMode="ENABLED"),
                 lambda: other.get_object(Bucket=bucket, Key="c", ChecksumMode="ENABLED")["Body"].read()):
        with pytest.raises(ClientError) as e:
            call()
        assert client_error(e.value)[0] == 403
    # without the checksum mode HEAD does not read the manifest (as before)
    assert other.head_object(Bucket=bucket, Key="c")["ContentLength"] == PART + 1


@pytest.mark.needs("versioning")
def test_versioned_bucket_keeps_no_record_versions(s3: Any, raw: Any, bucket: str) -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    uid, done = upload_parts(s3, bucket, "v", [rand(PART), b"v"], "CRC32")
    s3.complete_multipart_upload(Bucket=bucket, Key="v", UploadId=uid, MultipartUpload={"Parts": done})
    uid2, _ = upload_parts(s3, bucket, "v2", [b"aborted"], "CRC32")
    s3.abort_multipart_upload(Bucket=bucket, Key="v2", UploadId=uid2)
    versions = raw.list_object_versions(Bucket=bucket, Prefix=".s3proxy/")
    left = [v["Key"] for v in versions.get("Versions", []) + versions.get("DeleteMarkers", [])]
    assert [k for k in left if not k.startswith(".s3proxy/manifests/")] == [], left


def test_upload_part_copy_gets_a_checksum(s3: Any, bucket: str) -> None:
    """UploadPartCopy into an upload with an algorithm: the proxy computes the part's checksum
    as it re-encrypts (S3 answers it in CopyPartResult), so Complete can verify it."""
    src = rand(PART + 5)
    s3.put_object(Bucket=bucket, Key="src", Body=src)
    uid = s3.create_multipart_upload(Bucket=bucket, Key="pc", ChecksumAlgorithm="CRC32")["UploadId"]
    r1 = s3.upload_part_copy(Bucket=bucket, Key="pc", UploadId=uid, PartNumber=1, CopySource={"Bucket": bucket, "Key": "src"},
                             CopySourceRange=f"bytes=0-{PART - 1}")["CopyPartResult"]
    assert r1["ChecksumCRC32"] == b64(RAW["CRC32"](src[:PART]))
    r2 = s3.upload_part(Bucket=bucket, Key="pc", UploadId=uid, PartNumber=2, Body=b"end", ChecksumAlgorithm="CRC32")
    out = s3.complete_multipart_upload(Bucket=bucket, Key="pc", UploadId=uid, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": r1["ETag"], "ChecksumCRC32": r1["ChecksumCRC32"]},
        {"PartNumber": 2, "ETag": r2["ETag"], "ChecksumCRC32": r2["ChecksumCRC32"]}]})
    assert out["ChecksumCRC32"] == expected("CRC32", "COMPOSITE", [src[:PART], b"end"])


def test_backend_requests_per_part_and_complete(proxy: Proxy, s3: Any, backend: Backend, bucket: str) -> None:
    """The cost (FORMAT.md 8): per part one more PUT (the record); per Complete one listing of the
    records, and their removal; nothing more for uploads without an algorithm."""
    seen: list[tuple[str, str]] = []
    client = proxy.state.backend
    inner = client.request

    async def counting(method: str, bkt: Any, key: Any = None, **kw: Any) -> Any:
        q = dict(kw.get("query") or ())
        what = (key or "").split("/")[1] if (key or "").startswith(".s3proxy/") else ("list" if key is None else "object")
        seen.append((method, what + ("?" + ",".join(sorted(q)) if q else "")))
        return await inner(method, bkt, key, **kw)

    def run(alg: str | None) -> dict[str, list[tuple[str, str]]]:
        key = f"cost-{alg}"
        extra = {"ChecksumAlgorithm": alg} if alg else {}
        out: dict[str, list[tuple[str, str]]] = {}
        seen.clear()
        uid = s3.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
        out["create"], seen[:] = list(seen), []
        done = []
        for n, body in enumerate([rand(PART), rand(PART), b"end"], 1):
            r = s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=n, Body=body, **extra)
            done.append({"PartNumber": n, "ETag": r["ETag"], **({f"Checksum{alg}": r[f"Checksum{alg}"]} if alg else {})})
        out["3 parts"], seen[:] = list(seen), []
        s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": done})
        out["complete"] = list(seen)
        return out

    client.request = counting
    try:
        plain, summed = run(None), run("CRC32")
    finally:
        client.request = inner
    for phase in plain:
        for x in (plain, summed):
            x[phase] = [r for r in x[phase] if r[0] != "HEAD"]  # the once-per-process multipart-ETag probe
        print(f"{phase}: {len(plain[phase])} -> {len(summed[phase])}: {summed[phase]}")
    assert len(summed["create"]) == len(plain["create"])
    assert len(summed["3 parts"]) == len(plain["3 parts"]) + 3  # one record PUT per part
    assert [r for r in summed["3 parts"] if r[1].startswith("parts")] == [("PUT", "parts")] * 3
    # Complete: one listing of the records to verify them; to remove them one listing (versions
    # where the backend has them, else a refused ListObjectVersions and a plain listing) and one
    # DeleteObjects (each per 1000 parts)
    more = 3 if "versioning" in backend.capabilities else 4
    assert len(summed["complete"]) == len(plain["complete"]) + more, summed["complete"]


def _chunked_part_head(proxy: Proxy, bucket: str, key: str, uid: str, pn: int, total: int, trailer: str) -> bytes:
    """A signed UploadPart with an aws-chunked body and a trailing checksum (as SDKs send over HTTPS)."""
    from tests.integration.helpers import main_creds, object_url, sign

    ak, sk = main_creds(proxy)
    url = object_url(proxy.url, bucket, key, {"partNumber": str(pn), "uploadId": uid})
    req = sign("PUT", url, ak, sk, payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER", headers={
        "Content-Encoding": "aws-chunked", "X-Amz-Decoded-Content-Length": str(total), "X-Amz-Trailer": trailer})
    head = f"PUT {url.split(proxy.url, 1)[1]} HTTP/1.1\r\nHost: {proxy.url.split('//', 1)[1]}\r\nTransfer-Encoding: chunked\r\n"
    return (head + "".join(f"{k}: {v}\r\n" for k, v in req.headers.items()) + "\r\n").encode()


def test_trailing_part_checksum_is_recorded(proxy: Proxy, s3: Any, bucket: str) -> None:
    from tests.integration.helpers import aws_chunked_body, send_raw

    body = rand(PART)
    uid = s3.create_multipart_upload(Bucket=bucket, Key="tr", ChecksumAlgorithm="CRC32")["UploadId"]
    reply = send_raw(proxy, _chunked_part_head(proxy, bucket, "tr", uid, 1, len(body), "x-amz-checksum-crc32")
                     + aws_chunked_body(body))
    assert reply.status == 200, reply.body
    assert reply.headers["x-amz-checksum-crc32"] == b64(RAW["CRC32"](body))
    assert s3.list_parts(Bucket=bucket, Key="tr", UploadId=uid)["Parts"][0]["ChecksumCRC32"] == b64(RAW["CRC32"](body))
    # a declared trailer of another algorithm is refused before the body is stored; a wrong trailer stores nothing
    sha = b"x-amz-checksum-sha256:" + base64.b64encode(hashlib.sha256(b"x").digest())
    reply = send_raw(proxy, _chunked_part_head(proxy, bucket, "tr", uid, 2, 1, "x-amz-checksum-sha256")
                     + aws_chunked_body(b"x", trailer=sha))
    assert reply.status == 400 and b"InvalidRequest" in (reply.body or b"")
    reply = send_raw(proxy, _chunked_part_head(proxy, bucket, "tr", uid, 3, 1, "x-amz-checksum-crc32")
                     + aws_chunked_body(b"x", trailer=b"x-amz-checksum-crc32:AAAAAA=="))
    assert reply.status == 400 and b"BadDigest" in (reply.body or b"")
    assert [p["PartNumber"] for p in s3.list_parts(Bucket=bucket, Key="tr", UploadId=uid)["Parts"]] == [1]
    s3.abort_multipart_upload(Bucket=bucket, Key="tr", UploadId=uid)


def test_clients_cannot_reach_part_records(proxy: Proxy, s3: Any, raw: Any, bucket: str) -> None:
    """Part records are under the reserved prefix: no identity (anonymous included) reads,
    writes, deletes or lists them through the proxy."""
    from botocore import UNSIGNED

    from tests.conftest import LIMITED_AK, LIMITED_SK

    uid, _ = upload_parts(s3, bucket, "p", [b"part"], "SHA256")
    [rec] = _records(raw, bucket)
    clients = [s3, proxy.client(LIMITED_AK, LIMITED_SK),
               proxy.client(config={"signature_version": UNSIGNED, "s3": {"addressing_style": "path"}})]
    for c in clients:
        for op, kw in (("get_object", {}), ("put_object", {"Body": b""}), ("delete_object", {})):
            with pytest.raises(ClientError) as e:
                getattr(c, op)(Bucket=bucket, Key=rec, **kw)
            assert client_error(e.value)[0] == 403, op
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=".s3proxy/")
    assert _records(raw, bucket) == [rec]
    s3.abort_multipart_upload(Bucket=bucket, Key="p", UploadId=uid)
