"""The devstore as an AWS-strict backend: versioning, tags, bucket configurations, attributes.

Each test states the S3 behaviour (AWS documentation) the store follows, and attacks it the way a
client of the backend could: naming versions that do not exist or are delete markers, malformed
ids, oversized tag sets, configurations that are not the document they claim to be.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from botocore.exceptions import ClientError

MiB = 1 << 20


def _err(e: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    r = e.value.response
    return int(r["ResponseMetadata"]["HTTPStatusCode"]), str(r["Error"]["Code"])


def _enable(s3: Any, bucket: str, status: str = "Enabled") -> None:
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": status})


def test_versioning_status_round_trip_and_survives_restart(devstore: Any, s3: Any, bucket: str) -> None:
    assert "Status" not in s3.get_bucket_versioning(Bucket=bucket)
    _enable(s3, bucket)
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["VersionId"]
    devstore.restart()
    s3 = devstore.client()
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    assert s3.get_object(Bucket=bucket, Key="k", VersionId=v1)["Body"].read() == b"one"
    _enable(s3, bucket, "Suspended")
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Suspended"


def test_versioning_config_refuses_bad_documents(devstore: Any, bucket: str) -> None:
    for body in (b"<VersioningConfiguration><Status>On</Status></VersioningConfiguration>",
                 b"<Other><Status>Enabled</Status></Other>", b"not xml"):
        status, _, data = devstore.request("PUT", f"/{bucket}", [("versioning", "")], body=body)
        assert (status, b"MalformedXML" in data) == (400, True), data


def test_versions_delete_markers_and_listing(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"before")  # the "null" version, kept when enabling
    _enable(s3, bucket)
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["VersionId"]
    v2 = s3.put_object(Bucket=bucket, Key="k", Body=b"second")["VersionId"]
    assert v1 != v2 and "null" not in (v1, v2)
    assert s3.get_object(Bucket=bucket, Key="k")["VersionId"] == v2
    assert s3.get_object(Bucket=bucket, Key="k", VersionId="null")["Body"].read() == b"before"
    assert s3.head_object(Bucket=bucket, Key="k", VersionId=v1)["ContentLength"] == 3
    assert s3.get_object(Bucket=bucket, Key="k", VersionId=v1, Range="bytes=1-1")["Body"].read() == b"n"
    listed = s3.list_object_versions(Bucket=bucket)
    assert [(v["VersionId"], v["IsLatest"], v["Size"]) for v in listed["Versions"]] == [
        (v2, True, 6), (v1, False, 3), ("null", False, 6)]
    # DeleteObject without a version: a delete marker hides the key, versions stay readable
    d = s3.delete_object(Bucket=bucket, Key="k")
    assert d["DeleteMarker"] is True and d["VersionId"] not in (v1, v2)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k")
    assert _err(e) == (404, "NoSuchKey")
    assert e.value.response["ResponseMetadata"]["HTTPHeaders"].get("x-amz-delete-marker") == "true"
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    # GET/HEAD of the marker by id: 405 MethodNotAllowed (GetObject API reference)
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k", VersionId=d["VersionId"])
    assert _err(e) == (405, "MethodNotAllowed")
    markers = s3.list_object_versions(Bucket=bucket)["DeleteMarkers"]
    assert [(m["VersionId"], m["IsLatest"]) for m in markers] == [(d["VersionId"], True)]
    # removing the marker brings the newest version back
    s3.delete_object(Bucket=bucket, Key="k", VersionId=d["VersionId"])
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"second"
    # removing the current version by id promotes the one before it
    s3.delete_object(Bucket=bucket, Key="k", VersionId=v2)
    assert s3.get_object(Bucket=bucket, Key="k")["VersionId"] == v1
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k", VersionId=v2)
    assert _err(e) == (404, "NoSuchVersion")


def test_version_ids_are_checked(s3: Any, bucket: str) -> None:
    _enable(s3, bucket)
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    for bad in ("../../etc", "123", "x" * 32):
        with pytest.raises(ClientError) as e:
            s3.get_object(Bucket=bucket, Key="k", VersionId=bad)
        assert _err(e) == (400, "InvalidArgument")
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k", VersionId="0" * 20 + "0" * 12)
    assert _err(e) == (404, "NoSuchVersion")
    # a version of another key is not a version of this one
    other = s3.put_object(Bucket=bucket, Key="other", Body=b"y")["VersionId"]
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="k", VersionId=other)
    assert _err(e) == (404, "NoSuchVersion")


def test_suspended_versioning_writes_null_versions(s3: Any, bucket: str) -> None:
    _enable(s3, bucket)
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["VersionId"]
    _enable(s3, bucket, "Suspended")
    s3.put_object(Bucket=bucket, Key="k", Body=b"n1")
    s3.put_object(Bucket=bucket, Key="k", Body=b"n2")  # replaces the "null" version
    vers = s3.list_object_versions(Bucket=bucket)["Versions"]
    assert [(v["VersionId"], v["Size"]) for v in vers] == [("null", 2), (v1, 3)]
    d = s3.delete_object(Bucket=bucket, Key="k")  # a "null" delete marker, replacing the null version
    assert d["VersionId"] == "null" and d["DeleteMarker"] is True
    listed = s3.list_object_versions(Bucket=bucket)
    assert [v["VersionId"] for v in listed["Versions"]] == [v1]
    assert [m["VersionId"] for m in listed["DeleteMarkers"]] == ["null"]


def test_versioned_bucket_is_not_empty_until_every_version_is_gone(s3: Any, bucket: str) -> None:
    _enable(s3, bucket)
    v = s3.put_object(Bucket=bucket, Key="k", Body=b"x")["VersionId"]
    m = s3.delete_object(Bucket=bucket, Key="k")["VersionId"]
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket=bucket)
    assert _err(e) == (409, "BucketNotEmpty")
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k", "VersionId": v}, {"Key": "k", "VersionId": m}]})
    assert sorted(d["VersionId"] for d in r["Deleted"]) == sorted([v, m])
    s3.delete_bucket(Bucket=bucket)


def test_list_versions_pagination(s3: Any, bucket: str) -> None:
    _enable(s3, bucket)
    want = []
    for key in ("a", "b/1", "b/2", "c"):
        for i in range(3):
            want.append((key, s3.put_object(Bucket=bucket, Key=key, Body=b"x" * i)["VersionId"]))
    got = []
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, PaginationConfig={"PageSize": 2}):
        got += [(v["Key"], v["VersionId"]) for v in page.get("Versions", [])]
    assert sorted(got) == sorted(want) and len(got) == len(want)
    top = s3.list_object_versions(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["b/"]
    assert {v["Key"] for v in top["Versions"]} == {"a", "c"}


def test_copy_from_a_version_and_self_copy_rules(s3: Any, bucket: str) -> None:
    _enable(s3, bucket)
    v1 = s3.put_object(Bucket=bucket, Key="k", Body=b"one")["VersionId"]
    s3.put_object(Bucket=bucket, Key="k", Body=b"two")
    r = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "k", "VersionId": v1})
    assert r["CopySourceVersionId"] == v1
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == b"one"
    with pytest.raises(ClientError) as e:  # the current version onto itself, nothing changed
        s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k"})
    assert _err(e) == (400, "InvalidRequest")
    s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "k", "VersionId": v1})  # a restore
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"one"


def test_multipart_complete_makes_a_version(make_devstore: Any, tmp_path: Any) -> None:
    store = make_devstore(tmp_path / "mp", min_part_size=5 * MiB)
    s3 = store.client()
    s3.create_bucket(Bucket="mpb")
    _enable(s3, "mpb")
    up = s3.create_multipart_upload(Bucket="mpb", Key="k", Tagging="a=1")["UploadId"]
    p1 = s3.upload_part(Bucket="mpb", Key="k", UploadId=up, PartNumber=1, Body=os.urandom(5 * MiB))["ETag"]
    p2 = s3.upload_part(Bucket="mpb", Key="k", UploadId=up, PartNumber=2, Body=b"tail")["ETag"]
    done = s3.complete_multipart_upload(Bucket="mpb", Key="k", UploadId=up, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": p1}, {"PartNumber": 2, "ETag": p2}]})
    assert done["VersionId"] and done["ETag"].endswith('-2"')
    assert s3.get_object_tagging(Bucket="mpb", Key="k")["TagSet"] == [{"Key": "a", "Value": "1"}]
    attrs = s3.get_object_attributes(Bucket="mpb", Key="k", ObjectAttributes=["ETag", "ObjectSize", "ObjectParts"])
    assert attrs["ObjectSize"] == 5 * MiB + 4 and attrs["ObjectParts"]["TotalPartsCount"] == 2
    assert attrs["ETag"] == done["ETag"].strip('"') and attrs["VersionId"] == done["VersionId"]


def test_object_tagging(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="t", Body=b"x", Tagging="a=1&b=two%20words")
    got = s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in got) == [("a", "1"), ("b", "two words")]
    assert s3.head_object(Bucket=bucket, Key="t")["ResponseMetadata"]["HTTPHeaders"]["x-amz-tagging-count"] == "2"
    s3.put_object_tagging(Bucket=bucket, Key="t", Tagging={"TagSet": [{"Key": "c", "Value": "3"}]})
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == [{"Key": "c", "Value": "3"}]
    s3.copy_object(Bucket=bucket, Key="t2", CopySource={"Bucket": bucket, "Key": "t"})  # COPY directive: tags too
    assert s3.get_object_tagging(Bucket=bucket, Key="t2")["TagSet"] == [{"Key": "c", "Value": "3"}]
    s3.copy_object(Bucket=bucket, Key="t3", CopySource={"Bucket": bucket, "Key": "t"}, TaggingDirective="REPLACE",
                   Tagging="d=4")
    assert s3.get_object_tagging(Bucket=bucket, Key="t3")["TagSet"] == [{"Key": "d", "Value": "4"}]
    s3.delete_object_tagging(Bucket=bucket, Key="t")
    assert s3.get_object_tagging(Bucket=bucket, Key="t")["TagSet"] == []
    with pytest.raises(ClientError) as e:
        s3.put_object_tagging(Bucket=bucket, Key="missing", Tagging={"TagSet": []})
    assert _err(e) == (404, "NoSuchKey")


@pytest.mark.parametrize("tags", [
    [{"Key": f"k{i}", "Value": "v"} for i in range(11)],
    [{"Key": "k" * 129, "Value": "v"}],
    [{"Key": "k", "Value": "v" * 257}],
    [{"Key": "k", "Value": "1"}, {"Key": "k", "Value": "2"}],
])
def test_tag_limits(s3: Any, bucket: str, tags: list[dict[str, str]]) -> None:
    s3.put_object(Bucket=bucket, Key="t", Body=b"x")
    with pytest.raises(ClientError) as e:
        s3.put_object_tagging(Bucket=bucket, Key="t", Tagging={"TagSet": tags})
    assert _err(e)[0] == 400 and _err(e)[1] in ("InvalidTag", "BadRequest")
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="u", Body=b"x", Tagging="&".join(f"{t['Key']}={t['Value']}" for t in tags))
    assert _err(e)[0] == 400


def test_bucket_configurations_are_kept(s3: Any, bucket: str) -> None:
    rules = [{"AllowedMethods": ["GET"], "AllowedOrigins": ["https://example.com"]}]
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": rules})
    assert s3.get_bucket_cors(Bucket=bucket)["CORSRules"][0]["AllowedOrigins"] == ["https://example.com"]
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                                                      "Resource": f"arn:aws:s3:::{bucket}/*"}]}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    assert json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]) == policy
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "team", "Value": "storage"}]})
    assert s3.get_bucket_tagging(Bucket=bucket)["TagSet"] == [{"Key": "team", "Value": "storage"}]
    s3.delete_bucket_cors(Bucket=bucket)
    s3.delete_bucket_policy(Bucket=bucket)
    s3.delete_bucket_tagging(Bucket=bucket)
    for name, code in (("get_bucket_cors", "NoSuchCORSConfiguration"), ("get_bucket_policy", "NoSuchBucketPolicy"),
                       ("get_bucket_tagging", "NoSuchTagSet")):
        with pytest.raises(ClientError) as e:
            getattr(s3, name)(Bucket=bucket)
        assert _err(e) == (404, code)


def test_bucket_configurations_refuse_other_documents(devstore: Any, bucket: str) -> None:
    for sub, body, code in (("cors", b"<Tagging><TagSet/></Tagging>", b"MalformedXML"),
                            ("policy", b"not json", b"MalformedPolicy"),
                            ("policy", b"[]", b"MalformedPolicy"),
                            ("lifecycle", b'<!DOCTYPE x [<!ENTITY e "b">]><LifecycleConfiguration/>', b"MalformedXML")):
        status, _, data = devstore.request("PUT", f"/{bucket}", [(sub, "")], body=body)
        assert status == 400 and code in data, (sub, data)


def test_object_attributes(s3: Any, bucket: str) -> None:
    put = s3.put_object(Bucket=bucket, Key="a", Body=b"12345")
    attrs = s3.get_object_attributes(Bucket=bucket, Key="a", ObjectAttributes=["ETag", "ObjectSize", "StorageClass"])
    assert (attrs["ETag"], attrs["ObjectSize"], attrs["StorageClass"]) == (put["ETag"].strip('"'), 5, "STANDARD")
    with pytest.raises(ClientError) as e:
        s3.get_object_attributes(Bucket=bucket, Key="missing", ObjectAttributes=["ETag"])
    assert _err(e) == (404, "NoSuchKey")


def test_object_attributes_header_is_checked(devstore: Any, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a", Body=b"x")
    for value, code in ((None, b"InvalidRequest"), ("Size", b"InvalidArgument")):
        headers = {"x-amz-object-attributes": value} if value else {}
        status, _, data = devstore.request("GET", f"/{bucket}/a", [("attributes", "")], headers=headers)
        assert status == 400 and code in data, data


def test_cors_preflight_and_actual_requests(devstore: Any, s3: Any, bucket: str) -> None:
    """OPTIONS is answered unsigned from the bucket's CORS rules (OPTIONS object API reference);
    a normal request carrying Origin gets the matching rule's headers, any other gets none."""
    pre = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "PUT"}
    status, _, data = devstore.request("OPTIONS", f"/{bucket}/k", headers=pre, sign=False)
    assert status == 403 and b"AccessForbidden" in data  # no configuration yet
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [{
        "AllowedMethods": ["GET", "PUT"], "AllowedOrigins": ["https://*.example.com"], "AllowedHeaders": ["x-amz-*"],
        "ExposeHeaders": ["ETag"], "MaxAgeSeconds": 60}]})
    status, h, _ = devstore.request("OPTIONS", f"/{bucket}/k", headers={**pre, "Access-Control-Request-Headers":
                                                                       "x-amz-date"}, sign=False)
    assert status == 200 and h["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert h["Access-Control-Allow-Methods"] == "GET, PUT" and h["Access-Control-Max-Age"] == "60"
    for headers, code in (({**pre, "Origin": "https://evil.test"}, 403),
                          ({**pre, "Access-Control-Request-Method": "DELETE"}, 403),
                          ({**pre, "Access-Control-Request-Headers": "authorization"}, 403),
                          ({"Access-Control-Request-Method": "PUT"}, 400)):
        assert devstore.request("OPTIONS", f"/{bucket}/k", headers=headers, sign=False)[0] == code, headers
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    status, h, _ = devstore.request("GET", f"/{bucket}/k", headers={"Origin": "https://app.example.com"})
    assert status == 200 and h["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert h["Access-Control-Expose-Headers"] == "ETag"
    status, h, _ = devstore.request("GET", f"/{bucket}/k", headers={"Origin": "https://evil.test"})
    assert status == 200 and "Access-Control-Allow-Origin" not in h
    # OPTIONS never reaches anything else: an unsigned GET is still refused
    assert devstore.request("GET", f"/{bucket}/k", sign=False)[0] == 403


def test_content_encoding_is_stored_not_decoded(devstore: Any, s3: Any, bucket: str) -> None:
    """A body sent with Content-Encoding: gzip (or anything) is kept byte for byte, as S3 does;
    it need not even be valid gzip (s3proxy sends ciphertext under the client's encoding)."""
    import gzip

    for key, body in (("real.gz", gzip.compress(b"hello " * 100)), ("fake.gz", os.urandom(1000))):
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentEncoding="gzip")
        got = devstore.request("GET", f"/{bucket}/{key}", headers={"Accept-Encoding": "gzip"})
        assert got[0] == 200 and got[2] == body and got[1]["Content-Encoding"] == "gzip"
