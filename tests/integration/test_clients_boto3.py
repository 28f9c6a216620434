"""boto3 with its default settings against s3proxy (encrypting) in front of a real backend."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import urllib.request
import zlib
from urllib.parse import unquote

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tests.integration.helpers import (
    MiB,
    absent,
    client_error,
    empty_bucket,
    multipart_upload,
    presigner,
    rand,
    unique,
)

PART = 5 * MiB


# --------------------------------------------------------------------- shared objects


@pytest.fixture(scope="module")
def mod_s3(proxy):
    return proxy.client()


@pytest.fixture(scope="module")
def objects(mod_s3):
    """One bucket with a single-PUT object (S layout) and a 3-part object (K layout)."""
    name = unique("m-")
    mod_s3.create_bucket(Bucket=name)
    single = rand(70_001)
    parts = [rand(PART), rand(PART + 12_345), rand(777_777)]
    mod_s3.put_object(Bucket=name, Key="single", Body=single)
    multipart_upload(mod_s3, name, "multi", parts)
    yield {"bucket": name, "single": single, "multi": b"".join(parts), "parts": parts}
    empty_bucket(mod_s3, name)


@pytest.fixture()
def bucket2(s3):
    name = unique()
    s3.create_bucket(Bucket=name)
    yield name
    empty_bucket(s3, name)


def headers_of(resp):
    return resp["ResponseMetadata"]["HTTPHeaders"]


# --------------------------------------------------------------------- buckets


@pytest.mark.needs("aws_responses")
@pytest.mark.smoke
def test_bucket_create_list_delete(s3):
    name = unique()
    s3.create_bucket(Bucket=name)
    s3.head_bucket(Bucket=name)
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert s3.list_objects_v2(Bucket=name)["KeyCount"] == 0
    s3.delete_bucket(Bucket=name)
    assert name not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    with pytest.raises(ClientError) as ei:
        s3.head_bucket(Bucket=name)
    assert client_error(ei.value)[0] == 404


def test_delete_nonempty_bucket_fails(s3, bucket):
    s3.put_object(Bucket=bucket, Key="x", Body=b"x")
    with pytest.raises(ClientError) as ei:
        s3.delete_bucket(Bucket=bucket)
    assert client_error(ei.value) == (409, "BucketNotEmpty")


def test_missing_bucket_and_key(s3, bucket):
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=bucket, Key="nope")
    assert client_error(ei.value) == (404, "NoSuchKey")
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=unique("missing-"), Key="nope")
    assert client_error(ei.value) == (404, "NoSuchBucket")


# --------------------------------------------------------------------- objects


@pytest.mark.smoke
@pytest.mark.parametrize("size", [0, 1, 16383, 16384, 16385, 100_000, MiB + 7])
def test_put_get_head_delete(s3, bucket, size):
    data = rand(size)
    put = s3.put_object(Bucket=bucket, Key="obj", Body=data, ContentType="application/x-test")
    assert put["ServerSideEncryption"] == "aws:kms"
    got = s3.get_object(Bucket=bucket, Key="obj")
    assert got["Body"].read() == data
    assert got["ContentLength"] == size
    assert got["ContentType"] == "application/x-test"
    assert got["ETag"] == put["ETag"]
    assert got["ServerSideEncryption"] == "aws:kms"
    assert "SSEKMSKeyId" in got
    head = s3.head_object(Bucket=bucket, Key="obj")
    assert head["ContentLength"] == size
    assert head["ETag"] == put["ETag"]
    crc = {h: v for h, v in headers_of(got).items() if h.startswith("x-amz-checksum-")}
    assert crc in ({}, {"x-amz-checksum-crc32": base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode(),
                        "x-amz-checksum-type": "FULL_OBJECT"})
    s3.delete_object(Bucket=bucket, Key="obj")
    assert absent(s3, bucket, "obj")


def test_overwrite(s3, bucket):
    s3.put_object(Bucket=bucket, Key="o", Body=b"first version")
    s3.put_object(Bucket=bucket, Key="o", Body=b"2nd")
    assert s3.get_object(Bucket=bucket, Key="o")["Body"].read() == b"2nd"
    assert s3.head_object(Bucket=bucket, Key="o")["ContentLength"] == 3


def test_put_with_checksum_algorithms(s3, bucket):
    data = rand(50_000)
    for alg in ("CRC32", "CRC32C", "SHA1", "SHA256"):
        try:
            s3.put_object(Bucket=bucket, Key=alg, Body=data, ChecksumAlgorithm=alg)
        except ClientError as e:  # pragma: no cover - an algorithm the stack can't compute
            pytest.fail(f"{alg}: {e}")
        assert s3.get_object(Bucket=bucket, Key=alg)["Body"].read() == data


@pytest.mark.needs("object_attributes")
def test_get_object_attributes(s3, objects):
    b = objects["bucket"]
    for key in ("single", "multi"):
        try:
            attrs = s3.get_object_attributes(Bucket=b, Key=key, ObjectAttributes=["ObjectSize", "ETag"])
        except ClientError as e:
            if client_error(e)[0] in (400, 501):
                pytest.skip(f"backend lacks GetObjectAttributes: {e}")
            raise
        assert attrs["ObjectSize"] == len(objects[key])


# --------------------------------------------------------------------- ranges

RANGES = [
    ("bytes=0-0", lambda n: (0, 1)),
    ("bytes=0-99", lambda n: (0, 100)),
    ("bytes=100-16483", lambda n: (100, 16484)),  # spans a 16 KiB chunk boundary
    ("bytes=16384-16384", lambda n: (16384, 16385)),
    ("bytes=16383-16384", lambda n: (16383, 16385)),
    ("bytes=1000-", lambda n: (1000, n)),
    ("bytes=-1", lambda n: (n - 1, n)),
    ("bytes=-5000", lambda n: (n - 5000, n)),
    ("last-byte", lambda n: (n - 1, n)),
    ("suffix-larger-than-object", lambda n: (0, n)),
    ("end-past-eof", lambda n: (n - 10, n)),
    ("whole-explicit", lambda n: (0, n)),
]


def _range_header(spec, n):
    return {
        "last-byte": f"bytes={n - 1}-{n - 1}",
        "suffix-larger-than-object": f"bytes=-{n + 1000}",
        "end-past-eof": f"bytes={n - 10}-{n + 10_000}",
        "whole-explicit": f"bytes=0-{n - 1}",
    }.get(spec, spec)


@pytest.mark.parametrize("layout", ["single", "multi"])
@pytest.mark.parametrize("spec,expect", RANGES, ids=[r[0] for r in RANGES])
def test_ranges(s3, objects, layout, spec, expect):
    data = objects[layout]
    n = len(data)
    a, b = expect(n)
    got = s3.get_object(Bucket=objects["bucket"], Key=layout, Range=_range_header(spec, n))
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    body = got["Body"].read()
    assert len(body) == b - a
    assert body == data[a:b]
    assert got["ContentLength"] == b - a
    assert got["ContentRange"] == f"bytes {a}-{b - 1}/{n}"


@pytest.mark.smoke
@pytest.mark.parametrize("offset", [PART - 1, PART, 2 * PART + 12_345 - 3])
def test_ranges_across_part_boundaries(s3, objects, offset):
    data = objects["multi"]
    got = s3.get_object(Bucket=objects["bucket"], Key="multi", Range=f"bytes={offset - 20}-{offset + 20}")
    assert got["Body"].read() == data[offset - 20: offset + 21]
    assert got["ContentRange"] == f"bytes {offset - 20}-{offset + 20}/{len(data)}"


def test_range_spanning_all_parts(s3, objects):
    data = objects["multi"]
    got = s3.get_object(Bucket=objects["bucket"], Key="multi", Range=f"bytes=10-{len(data) - 10}")
    assert got["Body"].read() == data[10: len(data) - 9]


@pytest.mark.parametrize("layout", ["single", "multi"])
@pytest.mark.parametrize("which", ["at-eof", "past-eof", "far-past-eof"])
def test_range_not_satisfiable(s3, objects, layout, which):
    n = len(objects[layout])
    rng = {"at-eof": f"bytes={n}-", "past-eof": f"bytes={n + 1}-{n + 5}", "far-past-eof": f"bytes={n * 3}-"}[which]
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=objects["bucket"], Key=layout, Range=rng)
    assert client_error(ei.value) == (416, "InvalidRange")
    assert ei.value.response["ResponseMetadata"]["HTTPHeaders"].get("content-range") == f"bytes */{n}"


def test_range_on_empty_object(s3, bucket):
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=bucket, Key="empty", Range="bytes=0-0")
    assert client_error(ei.value) == (416, "InvalidRange")
    assert s3.get_object(Bucket=bucket, Key="empty")["Body"].read() == b""


# --------------------------------------------------------------------- conditional requests


@pytest.mark.needs("conditional_reads")
@pytest.mark.smoke
@pytest.mark.parametrize("layout", ["single", "multi"])
def test_conditional_get(s3, objects, layout):
    b = objects["bucket"]
    etag = s3.head_object(Bucket=b, Key=layout)["ETag"]
    assert s3.get_object(Bucket=b, Key=layout, IfMatch=etag)["Body"].read() == objects[layout]
    got = s3.get_object(Bucket=b, Key=layout, IfMatch=etag, Range="bytes=5-9")
    assert got["Body"].read() == objects[layout][5:10]
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=b, Key=layout, IfMatch='"0123456789abcdef0123456789abcdef"')
    assert client_error(ei.value)[0] == 412
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=b, Key=layout, IfMatch='"0123456789abcdef0123456789abcdef"', Range="bytes=0-9")
    assert client_error(ei.value)[0] == 412
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=b, Key=layout, IfNoneMatch=etag)
    assert client_error(ei.value)[0] == 304
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=b, Key=layout, IfNoneMatch=etag, Range="bytes=0-9")
    assert client_error(ei.value)[0] == 304
    got = s3.get_object(Bucket=b, Key=layout, IfNoneMatch='"0123456789abcdef0123456789abcdef"')
    assert got["Body"].read() == objects[layout]


@pytest.mark.needs("conditional_reads")
def test_conditional_head(s3, objects):
    b = objects["bucket"]
    etag = s3.head_object(Bucket=b, Key="single")["ETag"]
    assert s3.head_object(Bucket=b, Key="single", IfMatch=etag)["ContentLength"] == len(objects["single"])
    with pytest.raises(ClientError) as ei:
        s3.head_object(Bucket=b, Key="single", IfMatch='"ffffffffffffffffffffffffffffffff"')
    assert client_error(ei.value)[0] == 412
    with pytest.raises(ClientError) as ei:
        s3.head_object(Bucket=b, Key="single", IfNoneMatch=etag)
    assert client_error(ei.value)[0] == 304


# --------------------------------------------------------------------- managed transfers


@pytest.mark.needs("multipart_etags")
@pytest.mark.smoke
def test_upload_download_file_multipart(s3, bucket, tmp_path):
    data = rand(12 * MiB)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    cfg = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=4)
    s3.upload_file(str(src), bucket, "big.bin", Config=cfg)
    head = s3.head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")
    assert s3.list_objects_v2(Bucket=bucket)["Contents"][0]["Size"] == len(data)
    dst = tmp_path / "dst.bin"
    s3.download_file(bucket, "big.bin", str(dst), Config=cfg)
    assert dst.read_bytes() == data


@pytest.mark.parametrize("alg", ["SHA256", "CRC32C"])
def test_upload_file_with_checksum_algorithm(s3, bucket, tmp_path, alg):
    data = rand(11 * MiB)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    cfg = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=3)
    s3.upload_file(str(src), bucket, "ck.bin", Config=cfg, ExtraArgs={"ChecksumAlgorithm": alg})
    assert s3.head_object(Bucket=bucket, Key="ck.bin")["ContentLength"] == len(data)
    assert s3.get_object(Bucket=bucket, Key="ck.bin")["Body"].read() == data


def test_upload_download_fileobj_single(s3, raw, bucket, tmp_path):
    import io

    data = rand(3 * MiB + 1)
    s3.upload_fileobj(io.BytesIO(data), bucket, "small.bin")
    assert raw.head_object(Bucket=bucket, Key="small.bin")["ETag"].count("-") == 0
    cfg = TransferConfig(multipart_threshold=MiB, multipart_chunksize=MiB, max_concurrency=4)
    out = io.BytesIO()
    s3.download_fileobj(bucket, "small.bin", out, Config=cfg)  # parallel ranged GETs of an S-layout object
    assert out.getvalue() == data


# --------------------------------------------------------------------- multipart by hand


@pytest.mark.needs("multipart_parts")
def test_multipart_out_of_order_concurrent_retried(s3, raw, bucket):
    p1, p2, p3 = rand(PART), rand(PART), rand(MiB + 5)
    p2_retry = rand(PART + 3)
    uid = s3.create_multipart_upload(Bucket=bucket, Key="mp", Metadata={"k": "v"})["UploadId"]
    assert "~" not in uid or True  # opaque to the client either way

    def up(pn, body):
        return pn, s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=pn, Body=body)["ETag"]

    etags = dict([up(3, p3)])
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        etags.update(pool.map(lambda a: up(*a), [(2, p2), (1, p1)]))
    etags.update([up(2, p2_retry)])  # a retry with different bytes replaces the part
    listed = s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid)
    assert [(p["PartNumber"], p["Size"]) for p in listed["Parts"]] == [(1, PART), (2, PART + 3), (3, MiB + 5)]
    assert listed["UploadId"] == uid
    assert [p["ETag"] for p in listed["Parts"]] == [etags[1], etags[2], etags[3]]
    s3.complete_multipart_upload(
        Bucket=bucket, Key="mp", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in (1, 2, 3)]},
    )
    data = p1 + p2_retry + p3
    got = s3.get_object(Bucket=bucket, Key="mp")
    assert got["ContentLength"] == len(data)
    assert got["Body"].read() == data
    assert got["Metadata"] == {"k": "v"}
    head = s3.head_object(Bucket=bucket, Key="mp")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")
    assert raw.head_object(Bucket=bucket, Key="mp")["ETag"] == head["ETag"]


@pytest.mark.needs("multipart_parts")
@pytest.mark.smoke
def test_multipart_complete_subset(s3, bucket):
    p1, p2, p3 = rand(PART), rand(PART), rand(300_000)
    uid = s3.create_multipart_upload(Bucket=bucket, Key="sub")["UploadId"]
    etags = {n: s3.upload_part(Bucket=bucket, Key="sub", UploadId=uid, PartNumber=n, Body=b)["ETag"]
             for n, b in ((1, p1), (2, p2), (3, p3))}
    s3.complete_multipart_upload(
        Bucket=bucket, Key="sub", UploadId=uid,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etags[1]}, {"PartNumber": 3, "ETag": etags[3]}]},
    )
    data = p1 + p3
    head = s3.head_object(Bucket=bucket, Key="sub")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-2")
    assert s3.list_objects_v2(Bucket=bucket)["Contents"][0]["Size"] == len(data)
    assert s3.get_object(Bucket=bucket, Key="sub")["Body"].read() == data
    got = s3.get_object(Bucket=bucket, Key="sub", Range=f"bytes={PART - 5}-{PART + 5}")
    assert got["Body"].read() == data[PART - 5: PART + 6]
    h1 = s3.head_object(Bucket=bucket, Key="sub", PartNumber=1)
    assert h1["ContentLength"] == PART
    assert h1["PartsCount"] == 2
    assert s3.get_object(Bucket=bucket, Key="sub", PartNumber=1)["Body"].read() == p1


@pytest.mark.smoke
@pytest.mark.parametrize("pn", [1, 2, 3])
def test_head_and_get_part_number(s3, objects, pn):
    b, parts = objects["bucket"], objects["parts"]
    start = sum(len(p) for p in parts[: pn - 1])
    total = len(objects["multi"])
    head = s3.head_object(Bucket=b, Key="multi", PartNumber=pn)
    assert head["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert head["ContentLength"] == len(parts[pn - 1])
    assert head["PartsCount"] == 3
    assert headers_of(head)["content-range"] == f"bytes {start}-{start + len(parts[pn - 1]) - 1}/{total}"
    got = s3.get_object(Bucket=b, Key="multi", PartNumber=pn)
    assert got["ContentLength"] == len(parts[pn - 1])
    assert got["Body"].read() == parts[pn - 1]
    assert got["ContentRange"] == f"bytes {start}-{start + len(parts[pn - 1]) - 1}/{total}"


def test_part_number_on_single_object(s3, objects):
    b, data = objects["bucket"], objects["single"]
    head = s3.head_object(Bucket=b, Key="single", PartNumber=1)
    assert head["ContentLength"] == len(data)
    assert s3.get_object(Bucket=b, Key="single", PartNumber=1)["Body"].read() == data


def test_part_number_out_of_range(s3, objects):
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=objects["bucket"], Key="multi", PartNumber=4)
    assert client_error(ei.value)[0] in (400, 416)


def test_abort_multipart(s3, raw, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="ab")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="ab", UploadId=uid, PartNumber=1, Body=rand(1000))
    ups = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert [u["Key"] for u in ups] == ["ab"]
    s3.abort_multipart_upload(Bucket=bucket, Key="ab", UploadId=uid)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    with pytest.raises(ClientError) as ei:
        s3.list_parts(Bucket=bucket, Key="ab", UploadId=uid)
    assert client_error(ei.value) == (404, "NoSuchUpload")
    assert absent(s3, bucket, "ab")


def test_listed_upload_ids_are_usable(s3, bucket):
    """Cleanup tools list in-progress uploads, then ListParts/Abort them with the listed UploadId."""
    uid = s3.create_multipart_upload(Bucket=bucket, Key="stale")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="stale", UploadId=uid, PartNumber=1, Body=b"x" * 1000)
    listed = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [u["Key"] for u in listed] == ["stale"]
    parts = s3.list_parts(Bucket=bucket, Key="stale", UploadId=listed[0]["UploadId"])["Parts"]
    assert [p["Size"] for p in parts] == [1000]
    s3.abort_multipart_upload(Bucket=bucket, Key="stale", UploadId=listed[0]["UploadId"])
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_listed_upload_id_matches_created(s3, bucket):
    """ListMultipartUploads shows the ids CreateMultipartUpload gave (upload records, s3proxy.http.sidecars)."""
    uid = s3.create_multipart_upload(Bucket=bucket, Key="resume")["UploadId"]
    listed = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    try:
        assert [(u["Key"], u["UploadId"]) for u in listed] == [("resume", uid)]
        s3.upload_part(Bucket=bucket, Key="resume", UploadId=listed[0]["UploadId"], PartNumber=1, Body=b"more")
    finally:
        s3.abort_multipart_upload(Bucket=bucket, Key="resume", UploadId=uid)


@pytest.mark.parametrize("shape", ["one-empty-part", "empty-last-part", "tiny-parts"])
def test_multipart_edge_part_sizes(s3, bucket, shape):
    parts = {"one-empty-part": [b""], "empty-last-part": [rand(PART), b""], "tiny-parts": [rand(PART), rand(1)]}[shape]
    data = b"".join(parts)
    multipart_upload(s3, bucket, "edge", parts)
    assert s3.head_object(Bucket=bucket, Key="edge")["ContentLength"] == len(data)
    assert s3.list_objects_v2(Bucket=bucket)["Contents"][0]["Size"] == len(data)
    assert s3.get_object(Bucket=bucket, Key="edge")["Body"].read() == data
    if data:
        got = s3.get_object(Bucket=bucket, Key="edge", Range="bytes=-3")
        assert got["Body"].read() == data[-3:]
        assert got["ContentRange"] == f"bytes {len(data) - 3}-{len(data) - 1}/{len(data)}"


@pytest.mark.needs("aws_responses")
def test_etags_consistent(s3, objects):
    b = objects["bucket"]
    listed = {o["Key"]: o["ETag"] for o in s3.list_objects_v2(Bucket=b)["Contents"]}
    for key in ("single", "multi"):
        head = s3.head_object(Bucket=b, Key=key)["ETag"]
        assert listed[key] == head
        assert s3.get_object(Bucket=b, Key=key, Range="bytes=0-0")["ETag"] == head
        assert s3.head_object(Bucket=b, Key=key)["ServerSideEncryption"] == "aws:kms"


def test_response_header_overrides(proxy, s3, objects):
    b = objects["bucket"]
    got = s3.get_object(Bucket=b, Key="single", ResponseContentType="text/plain",
                        ResponseContentDisposition='attachment; filename="x.bin"')
    assert got["ContentType"] == "text/plain"
    assert got["ContentDisposition"] == 'attachment; filename="x.bin"'
    assert got["Body"].read() == objects["single"]


@pytest.mark.smoke
def test_upload_id_from_other_bucket_rejected(s3, bucket, bucket2):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="x")["UploadId"]
    with pytest.raises(ClientError) as ei:
        s3.upload_part(Bucket=bucket2, Key="x", UploadId=uid, PartNumber=1, Body=b"x")
    assert client_error(ei.value) == (404, "NoSuchUpload")
    s3.abort_multipart_upload(Bucket=bucket, Key="x", UploadId=uid)


def test_multipart_single_small_part(s3, bucket):
    data = rand(1234)
    multipart_upload(s3, bucket, "one", [data])
    assert s3.head_object(Bucket=bucket, Key="one")["ContentLength"] == 1234
    assert s3.get_object(Bucket=bucket, Key="one")["Body"].read() == data
    assert s3.get_object(Bucket=bucket, Key="one", Range="bytes=-10")["Body"].read() == data[-10:]


# --------------------------------------------------------------------- copies


@pytest.mark.smoke
@pytest.mark.parametrize("across", [False, True], ids=["same-bucket", "other-bucket"])
@pytest.mark.parametrize("directive", ["COPY", "REPLACE"])
def test_copy_object(s3, bucket, bucket2, across, directive):
    data = rand(40_000)
    s3.put_object(Bucket=bucket, Key="src", Body=data, Metadata={"color": "blue", "Mixed-Case": "x"},
                  ContentType="text/x-source", CacheControl="max-age=10")
    dst_bucket = bucket2 if across else bucket
    kw = {}
    if directive == "REPLACE":
        kw = {"Metadata": {"shape": "round"}, "ContentType": "application/x-replaced"}
    r = s3.copy_object(Bucket=dst_bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"},
                       MetadataDirective=directive, **kw)
    assert r["CopyObjectResult"]["ETag"]
    got = s3.get_object(Bucket=dst_bucket, Key="dst")
    assert got["Body"].read() == data
    assert got["ContentLength"] == len(data)
    if directive == "COPY":
        assert got["Metadata"] == {"color": "blue", "mixed-case": "x"}
        assert got["ContentType"] == "text/x-source"
        assert got.get("CacheControl") == "max-age=10"
    else:
        assert got["Metadata"] == {"shape": "round"}
        assert got["ContentType"] == "application/x-replaced"
    # The source is untouched.
    assert s3.get_object(Bucket=bucket, Key="src")["Body"].read() == data
    assert s3.list_objects_v2(Bucket=dst_bucket, Prefix="dst")["Contents"][0]["Size"] == len(data)


def test_copy_onto_itself_replacing_metadata(s3, bucket):
    data = rand(20_000)
    s3.put_object(Bucket=bucket, Key="self", Body=data, Metadata={"v": "1"})
    s3.copy_object(Bucket=bucket, Key="self", CopySource={"Bucket": bucket, "Key": "self"},
                   MetadataDirective="REPLACE", Metadata={"v": "2"})
    got = s3.get_object(Bucket=bucket, Key="self")
    assert got["Body"].read() == data
    assert got["Metadata"] == {"v": "2"}


@pytest.mark.needs("upload_part_copy")
@pytest.mark.needs("multipart_etags")
@pytest.mark.smoke
@pytest.mark.parametrize("across", [False, True], ids=["same-bucket", "other-bucket"])
def test_copy_multipart_object(s3, objects, bucket, across):
    src_b = objects["bucket"]
    dst_b = bucket if across else src_b
    key = unique("copy-")
    s3.copy_object(Bucket=dst_b, Key=key, CopySource={"Bucket": src_b, "Key": "multi"})
    head = s3.head_object(Bucket=dst_b, Key=key)
    assert head["ContentLength"] == len(objects["multi"])
    assert head["ETag"].strip('"').endswith("-3")
    assert s3.get_object(Bucket=dst_b, Key=key)["Body"].read() == objects["multi"]
    got = s3.get_object(Bucket=dst_b, Key=key, Range=f"bytes={PART - 3}-{PART + 3}")
    assert got["Body"].read() == objects["multi"][PART - 3: PART + 4]
    listed = s3.list_objects_v2(Bucket=dst_b, Prefix=key)["Contents"]
    assert [o["Size"] for o in listed] == [len(objects["multi"])]
    if not across:
        s3.delete_object(Bucket=dst_b, Key=key)


def test_copy_missing_source(s3, bucket):
    with pytest.raises(ClientError) as ei:
        s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "nope"})
    assert client_error(ei.value) == (404, "NoSuchKey")


@pytest.mark.needs("conditional_reads")
@pytest.mark.parametrize("layout", ["single", "multi"])
def test_copy_source_conditions(s3, objects, bucket, layout):
    src = {"Bucket": objects["bucket"], "Key": layout}
    etag = s3.head_object(**src)["ETag"]
    s3.copy_object(Bucket=bucket, Key="ok", CopySource=src, CopySourceIfMatch=etag)
    assert s3.get_object(Bucket=bucket, Key="ok")["Body"].read() == objects[layout]
    with pytest.raises(ClientError) as ei:
        s3.copy_object(Bucket=bucket, Key="no", CopySource=src, CopySourceIfMatch='"ffffffffffffffffffffffffffffffff"')
    assert client_error(ei.value)[0] == 412
    with pytest.raises(ClientError) as ei:
        s3.copy_object(Bucket=bucket, Key="no", CopySource=src, CopySourceIfNoneMatch=etag)
    assert client_error(ei.value)[0] == 412
    assert absent(s3, bucket, "no")


@pytest.mark.needs("upload_part_copy")
@pytest.mark.needs("conditional_reads")
def test_upload_part_copy_source_conditions(s3, objects, bucket):
    src = {"Bucket": objects["bucket"], "Key": "multi"}
    uid = s3.create_multipart_upload(Bucket=bucket, Key="pc")["UploadId"]
    with pytest.raises(ClientError) as ei:
        s3.upload_part_copy(Bucket=bucket, Key="pc", UploadId=uid, PartNumber=1, CopySource=src,
                            CopySourceRange="bytes=0-99", CopySourceIfMatch='"ffffffffffffffffffffffffffffffff"')
    assert client_error(ei.value)[0] == 412
    assert s3.list_parts(Bucket=bucket, Key="pc", UploadId=uid).get("Parts", []) == []
    s3.abort_multipart_upload(Bucket=bucket, Key="pc", UploadId=uid)


@pytest.mark.parametrize("source", ["single", "multi"])
def test_upload_part_copy_with_range(s3, objects, bucket, source):
    src = objects[source]
    b = objects["bucket"]
    if source == "single":
        ranges = [(1000, 60_000)]  # the last part may be small; parts before it may not
        # Parts must be >= 5 MiB except the last: copy a big-enough first part from the multipart object.
        first = (0, PART + 10)
        first_src, tail = "multi", src
    else:
        first = (PART - 100, 2 * PART + 200)  # spans parts 1..3 of the source
        first_src, tail = "multi", src
        ranges = [(len(src) - 1000, len(src) - 1)]
    uid = s3.create_multipart_upload(Bucket=bucket, Key="pc")["UploadId"]
    parts = []
    r = s3.upload_part_copy(Bucket=bucket, Key="pc", UploadId=uid, PartNumber=1,
                            CopySource={"Bucket": b, "Key": first_src}, CopySourceRange=f"bytes={first[0]}-{first[1]}")
    parts.append({"PartNumber": 1, "ETag": r["CopyPartResult"]["ETag"]})
    expected = objects[first_src][first[0]: first[1] + 1]
    for i, (a, z) in enumerate(ranges, start=2):
        r = s3.upload_part_copy(Bucket=bucket, Key="pc", UploadId=uid, PartNumber=i,
                                CopySource={"Bucket": b, "Key": source}, CopySourceRange=f"bytes={a}-{z}")
        parts.append({"PartNumber": i, "ETag": r["CopyPartResult"]["ETag"]})
        expected += tail[a: z + 1]
    listed = s3.list_parts(Bucket=bucket, Key="pc", UploadId=uid)["Parts"]
    assert [p["Size"] for p in listed] == [first[1] - first[0] + 1] + [z - a + 1 for a, z in ranges]
    s3.complete_multipart_upload(Bucket=bucket, Key="pc", UploadId=uid, MultipartUpload={"Parts": parts})
    assert s3.head_object(Bucket=bucket, Key="pc")["ContentLength"] == len(expected)
    assert s3.get_object(Bucket=bucket, Key="pc")["Body"].read() == expected


def test_upload_part_copy_range_past_end(s3, objects, bucket):
    n = len(objects["single"])
    uid = s3.create_multipart_upload(Bucket=bucket, Key="pc")["UploadId"]
    with pytest.raises(ClientError) as ei:
        s3.upload_part_copy(Bucket=bucket, Key="pc", UploadId=uid, PartNumber=1,
                            CopySource={"Bucket": objects["bucket"], "Key": "single"},
                            CopySourceRange=f"bytes={n - 5}-{n + 5}")
    assert client_error(ei.value)[0] in (400, 416)
    s3.abort_multipart_upload(Bucket=bucket, Key="pc", UploadId=uid)


# --------------------------------------------------------------------- listings


@pytest.fixture()
def listing_bucket(s3, bucket):
    sizes = {"a/1": 0, "a/2": 10, "a/b/3": 16384, "a/b/4": 16385, "c": 100_000, "d/5": 7, "e": 1}
    for k, n in sizes.items():
        s3.put_object(Bucket=bucket, Key=k, Body=rand(n))
    multipart_upload(s3, bucket, "m/multi", [rand(PART), rand(1000)])
    sizes["m/multi"] = PART + 1000
    return bucket, sizes


@pytest.mark.smoke
def test_list_v2_sizes(s3, listing_bucket):
    bucket, sizes = listing_bucket
    got = s3.list_objects_v2(Bucket=bucket)
    assert {o["Key"]: o["Size"] for o in got["Contents"]} == sizes
    assert got["KeyCount"] == len(sizes)
    assert not any(k.startswith("Checksum") for o in got["Contents"] for k in o)


def test_list_v2_prefix_delimiter(s3, listing_bucket):
    bucket, sizes = listing_bucket
    got = s3.list_objects_v2(Bucket=bucket, Prefix="a/", Delimiter="/")
    assert [(o["Key"], o["Size"]) for o in got["Contents"]] == [("a/1", 0), ("a/2", 10)]
    assert [p["Prefix"] for p in got["CommonPrefixes"]] == ["a/b/"]
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == ["c", "e"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["a/", "d/", "m/"]


def test_list_v2_pagination(s3, listing_bucket):
    bucket, sizes = listing_bucket
    seen, token, pages = {}, None, 0
    while True:
        kw = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket=bucket, MaxKeys=3, **kw)
        pages += 1
        assert len(page.get("Contents", [])) <= 3
        seen.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert seen == sizes
    assert pages == 3
    start = s3.list_objects_v2(Bucket=bucket, StartAfter="c")
    assert [o["Key"] for o in start["Contents"]] == ["d/5", "e", "m/multi"]


def test_list_v1(s3, listing_bucket):
    bucket, sizes = listing_bucket
    seen, marker = {}, ""
    while True:
        page = s3.list_objects(Bucket=bucket, MaxKeys=2, Marker=marker)
        seen.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        if not page["IsTruncated"]:
            break
        marker = page.get("NextMarker") or page["Contents"][-1]["Key"]
    assert seen == sizes
    d = s3.list_objects(Bucket=bucket, Prefix="a/b/", Delimiter="/")
    assert [(o["Key"], o["Size"]) for o in d["Contents"]] == [("a/b/3", 16384), ("a/b/4", 16385)]


def test_paginator(s3, listing_bucket):
    bucket, sizes = listing_bucket
    got = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 2}):
        got.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    assert got == sizes


@pytest.mark.needs("versioning")
@pytest.mark.smoke
def test_list_object_versions(s3, bucket):
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v1 = s3.put_object(Bucket=bucket, Key="v", Body=b"one")["VersionId"]
    v2 = s3.put_object(Bucket=bucket, Key="v", Body=b"second!")["VersionId"]
    multipart_upload(s3, bucket, "vm", [rand(PART), rand(10)])
    vers = s3.list_object_versions(Bucket=bucket)["Versions"]
    by_id = {(v["Key"], v["VersionId"]): v["Size"] for v in vers}
    assert by_id[("v", v1)] == 3
    assert by_id[("v", v2)] == 7
    assert [v["Size"] for v in vers if v["Key"] == "vm"] == [PART + 10]
    assert s3.get_object(Bucket=bucket, Key="v", VersionId=v1)["Body"].read() == b"one"
    assert s3.get_object(Bucket=bucket, Key="v", VersionId=v1, Range="bytes=1-1")["Body"].read() == b"n"
    assert s3.head_object(Bucket=bucket, Key="v", VersionId=v1)["ContentLength"] == 3
    s3.delete_object(Bucket=bucket, Key="v")
    listed = s3.list_object_versions(Bucket=bucket, Prefix="v")
    assert len(listed.get("DeleteMarkers", [])) == 1
    assert absent(s3, bucket, "v")
    assert s3.get_object(Bucket=bucket, Key="v", VersionId=v2)["Body"].read() == b"second!"
    s3.copy_object(Bucket=bucket, Key="from-v1", CopySource={"Bucket": bucket, "Key": "v", "VersionId": v1})
    assert s3.get_object(Bucket=bucket, Key="from-v1")["Body"].read() == b"one"


# --------------------------------------------------------------------- presigned URLs


def test_presigned_get_and_put(proxy, s3, bucket):
    ps = presigner(proxy)
    data = rand(100_000)
    put_url = ps.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "pre sig+ned"}, ExpiresIn=300)
    # urllib would default to Content-Type x-www-form-urlencoded, whose body moto's server swallows.
    req = urllib.request.Request(put_url, data=data, method="PUT", headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - local test server
        assert resp.status == 200
    assert s3.get_object(Bucket=bucket, Key="pre sig+ned")["Body"].read() == data
    get_url = ps.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "pre sig+ned"}, ExpiresIn=300)
    with urllib.request.urlopen(get_url, timeout=30) as resp:  # noqa: S310
        assert resp.read() == data
    req = urllib.request.Request(get_url, headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
        assert resp.status == 206
        assert resp.read() == data[10:20]
    head_url = ps.generate_presigned_url("head_object", Params={"Bucket": bucket, "Key": "pre sig+ned"}, ExpiresIn=300)
    with urllib.request.urlopen(urllib.request.Request(head_url, method="HEAD"), timeout=30) as resp:  # noqa: S310
        assert int(resp.headers["Content-Length"]) == len(data)


def test_presigned_multipart_upload(proxy, s3, bucket):
    """Browser-style uploads: parts PUT to presigned UploadPart URLs (the UploadId carries the proxy's token)."""
    ps = presigner(proxy)
    parts = [rand(PART), rand(4321)]
    uid = s3.create_multipart_upload(Bucket=bucket, Key="browser")["UploadId"]
    done = []
    for i, body in enumerate(parts, start=1):
        url = ps.generate_presigned_url("upload_part", Params={"Bucket": bucket, "Key": "browser", "UploadId": uid,
                                                               "PartNumber": i}, ExpiresIn=300)
        req = urllib.request.Request(url, data=body, method="PUT", headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - local test server
            done.append({"PartNumber": i, "ETag": resp.headers["ETag"]})
    s3.complete_multipart_upload(Bucket=bucket, Key="browser", UploadId=uid, MultipartUpload={"Parts": done})
    assert s3.get_object(Bucket=bucket, Key="browser")["Body"].read() == b"".join(parts)


def test_presigned_get_multipart(proxy, objects):
    url = presigner(proxy).generate_presigned_url("get_object", Params={"Bucket": objects["bucket"], "Key": "multi"})
    with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310
        assert resp.read() == objects["multi"]


# --------------------------------------------------------------------- awkward keys

KEYS = [
    "ünïcödé/ключ/日本語.txt",
    "with space/and  two",
    "plus+sign+",
    "percent%20literal%",
    "tilde~home",
    "double//slash",
    "/leading-slash",
    "quote'and\"dq",
    "question?mark&amp=eq#hash",
    "emoji-\U0001F600",
    "dots/../x/./y",
]


@pytest.mark.needs("awkward_keys")
@pytest.mark.parametrize("key", KEYS)
def test_awkward_keys(s3, raw, bucket, key):
    data = rand(5000)
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert s3.get_object(Bucket=bucket, Key=key, Range="bytes=1-2")["Body"].read() == data[1:3]
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == len(data)
    assert [(o["Key"], o["Size"]) for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [(key, len(data))]
    # The backend stores it under exactly that key (so the binding check and other tools agree).
    assert raw.head_object(Bucket=bucket, Key=key)["ContentLength"] > len(data)
    s3.copy_object(Bucket=bucket, Key=key + ".copy", CopySource={"Bucket": bucket, "Key": key})
    assert s3.get_object(Bucket=bucket, Key=key + ".copy")["Body"].read() == data
    s3.delete_object(Bucket=bucket, Key=key)
    assert absent(s3, bucket, key)


@pytest.mark.needs("awkward_keys")
def test_awkward_key_multipart(s3, bucket):
    key = "ünï code/+%~//x"
    data = rand(3000)
    multipart_upload(s3, bucket, key, [data])
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert s3.list_objects_v2(Bucket=bucket)["Contents"][0]["Size"] == len(data)


@pytest.mark.needs("aws_responses")
def test_list_encoding_type_url(s3, bucket):
    key = "enc/ünï code+%"
    s3.put_object(Bucket=bucket, Key=key, Body=b"12345")
    got = s3.list_objects_v2(Bucket=bucket, Prefix="enc/", EncodingType="url")
    # botocore leaves keys url-encoded when the caller asked for EncodingType=url itself.
    assert [(unquote(o["Key"]), o["Size"]) for o in got["Contents"]] == [(key, 5)]


# --------------------------------------------------------------------- metadata


@pytest.mark.needs("aws_responses")
def test_user_metadata_roundtrip(s3, raw, bucket):
    meta = {"color": "blue", "CamelCase": "Value With Spaces", "empty": "", "num": "42"}
    s3.put_object(Bucket=bucket, Key="m", Body=b"x", Metadata=meta, ContentDisposition="attachment",
                  ContentLanguage="de", CacheControl="no-cache")
    expect = {k.lower(): v for k, v in meta.items()}
    for resp in (s3.get_object(Bucket=bucket, Key="m"), s3.head_object(Bucket=bucket, Key="m")):
        assert resp["Metadata"] == expect
        assert resp["ContentDisposition"] == "attachment"
        assert resp["ContentLanguage"] == "de"
        assert resp["CacheControl"] == "no-cache"
        assert not any("s3proxy" in h for h in headers_of(resp))
    # ... while the backend does carry the proxy's reserved metadata.
    assert any(k.startswith("s3proxy-") for k in raw.head_object(Bucket=bucket, Key="m")["Metadata"])


@pytest.mark.needs("aws_responses")
def test_reserved_metadata_is_compact(s3, raw, bucket):
    """S3 caps user metadata at 2 KB (keys + values); the proxy's share must leave most of it to the client."""
    s3.put_object(Bucket=bucket, Key="m", Body=b"x")
    multipart_upload(s3, bucket, "mp", [b"y"])
    for key in ("m", "mp"):
        meta = raw.head_object(Bucket=bucket, Key=key)["Metadata"]
        reserved = sum(len(k.encode()) + len(v.encode()) for k, v in meta.items() if k.startswith("s3proxy-"))
        assert 0 < reserved <= 512, reserved
    # A client using 1.5 KB of metadata still fits next to it.
    big = {f"k{i}": "v" * 100 for i in range(10)}  # sealed: about 1.2 KB left to the client (docs/FORMAT.md 8)
    s3.put_object(Bucket=bucket, Key="big-meta", Body=b"z", Metadata=big)
    assert s3.head_object(Bucket=bucket, Key="big-meta")["Metadata"] == big


def test_reserved_metadata_hidden_on_ranges_and_parts(s3, objects):
    b = objects["bucket"]
    for resp in (s3.get_object(Bucket=b, Key="multi", Range="bytes=0-0"),
                 s3.head_object(Bucket=b, Key="multi", PartNumber=2),
                 s3.get_object(Bucket=b, Key="single", Range="bytes=-3")):
        assert resp["Metadata"] == {}
        assert not any("s3proxy" in h for h in headers_of(resp))


@pytest.mark.needs("list_uploads")
@pytest.mark.parametrize("op", ["put", "create-mpu", "copy-replace", "copy-default"])
@pytest.mark.parametrize("name", ["s3proxy-version", "S3Proxy-Anything"])
def test_reserved_metadata_rejected(s3, bucket, op, name):
    s3.put_object(Bucket=bucket, Key="src", Body=b"src")
    meta = {name: "1"}
    with pytest.raises(ClientError) as ei:
        if op == "put":
            s3.put_object(Bucket=bucket, Key="k", Body=b"x", Metadata=meta)
        elif op == "create-mpu":
            s3.create_multipart_upload(Bucket=bucket, Key="k", Metadata=meta)
        elif op == "copy-replace":
            s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "src"},
                           MetadataDirective="REPLACE", Metadata=meta)
        else:
            s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "src"}, Metadata=meta)
    assert client_error(ei.value) == (400, "InvalidArgument")
    assert absent(s3, bucket, "k")
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


# --------------------------------------------------------------------- bucket configuration passes through


@pytest.mark.needs("bucket_config")
def test_bucket_tagging(s3, bucket):
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "team", "Value": "storage"}]})
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == [{"Key": "team", "Value": "storage"}]
    s3.delete_bucket_tagging(Bucket=bucket)


@pytest.mark.needs("versioning")
def test_bucket_versioning_config(s3, bucket):
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Suspended"


@pytest.mark.needs("bucket_config")
def test_bucket_cors(s3, bucket):
    rules = [{"AllowedMethods": ["GET", "PUT"], "AllowedOrigins": ["https://example.com"], "AllowedHeaders": ["*"],
              "MaxAgeSeconds": 300}]
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": rules})
    got = s3.get_bucket_cors(Bucket=bucket)["CORSRules"]
    assert got[0]["AllowedMethods"] == ["GET", "PUT"]
    assert got[0]["AllowedOrigins"] == ["https://example.com"]
    s3.delete_bucket_cors(Bucket=bucket)
    with pytest.raises(ClientError) as ei:
        s3.get_bucket_cors(Bucket=bucket)
    assert client_error(ei.value)[1] == "NoSuchCORSConfiguration"


@pytest.mark.needs("bucket_config")
def test_bucket_lifecycle(s3, bucket):
    cfg = {"Rules": [{"ID": "expire-tmp", "Filter": {"Prefix": "tmp/"}, "Status": "Enabled",
                      "Expiration": {"Days": 7}}]}
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration=cfg)
    got = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert got[0]["ID"] == "expire-tmp"
    assert got[0]["Expiration"]["Days"] == 7
    s3.delete_bucket_lifecycle(Bucket=bucket)


@pytest.mark.needs("bucket_config")
def test_bucket_policy(s3, bucket):
    policy = {"Version": "2012-10-17", "Statement": [{
        "Sid": "ro", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/public/*"}]}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    assert json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])["Statement"][0]["Sid"] == "ro"
    s3.delete_bucket_policy(Bucket=bucket)


@pytest.mark.needs("bucket_config")
def test_bucket_location_and_acl(s3, bucket):
    s3.get_bucket_location(Bucket=bucket)
    assert "Owner" in s3.get_bucket_acl(Bucket=bucket)


@pytest.mark.needs("tagging")
@pytest.mark.smoke
def test_object_tagging_and_acl(s3, bucket):
    s3.put_object(Bucket=bucket, Key="t", Body=b"tagged", Tagging="a=1&b=2")
    assert sorted((t["Key"], t["Value"]) for t in s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"]) == [
        ("a", "1"), ("b", "2")]
    s3.put_object_tagging(Bucket=bucket, Key="t", Tagging={"TagSet": [{"Key": "c", "Value": "3"}]})
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == [{"Key": "c", "Value": "3"}]
    assert "Owner" in s3.get_object_acl(Bucket=bucket, Key="t")
    assert s3.get_object(Bucket=bucket, Key="t")["Body"].read() == b"tagged"


@pytest.mark.needs("aws_responses")
@pytest.mark.smoke
def test_delete_objects_batch(s3, bucket):
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"del/{i}", Body=b"x")
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": f"del/{i}"} for i in range(5)]})
    assert sorted(d["Key"] for d in r["Deleted"]) == [f"del/{i}" for i in range(5)]
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


# --------------------------------------------------------------------- passthrough bucket


@pytest.fixture()
def plain_bucket(s3):
    name = "plain-passthrough"
    try:
        s3.create_bucket(Bucket=name)
    except ClientError as e:
        if client_error(e)[1] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    yield name
    empty_bucket(s3, name)


@pytest.mark.needs("aws_responses")
def test_passthrough_bucket_stores_plaintext(s3, raw, plain_bucket):
    data = rand(100_000)
    s3.put_object(Bucket=plain_bucket, Key="p", Body=data, Metadata={"x": "y"})
    stored = raw.get_object(Bucket=plain_bucket, Key="p")
    assert stored["Body"].read() == data
    assert not any(k.startswith("s3proxy") for k in stored["Metadata"])
    got = s3.get_object(Bucket=plain_bucket, Key="p")
    assert got["Body"].read() == data
    assert got["Metadata"] == {"x": "y"}
    assert s3.get_object(Bucket=plain_bucket, Key="p", Range="bytes=-7")["Body"].read() == data[-7:]
    assert s3.list_objects_v2(Bucket=plain_bucket)["Contents"][0]["Size"] == len(data)
    multipart_upload(s3, plain_bucket, "mp", [rand(PART), b"tail"])
    assert raw.head_object(Bucket=plain_bucket, Key="mp")["ContentLength"] == PART + 4
    assert s3.head_object(Bucket=plain_bucket, Key="mp")["ContentLength"] == PART + 4


def test_passthrough_bucket_reads_objects_written_around_proxy(s3, raw, plain_bucket):
    raw.put_object(Bucket=plain_bucket, Key="direct", Body=b"written directly")
    assert s3.get_object(Bucket=plain_bucket, Key="direct")["Body"].read() == b"written directly"


def test_encrypted_bucket_refuses_foreign_objects(s3, raw, bucket):
    raw.put_object(Bucket=bucket, Key="foreign", Body=b"plaintext written around the proxy")
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=bucket, Key="foreign")
    assert client_error(ei.value)[0] == 403
    with pytest.raises(ClientError):
        s3.get_object(Bucket=bucket, Key="foreign", Range="bytes=0-3")
