"""Attacks on the reserved prefix ``.s3proxy/`` and the upload sidecars kept there.

Attackers: a client with full grants (``victim``), a prefix-limited one (``mallory``), an anonymous
client, and a storage-side writer (``storage``) who plants or edits sidecars.  Goals: read, write or
delete the proxy's own records through the proxy; make ListMultipartUploads hand out an id that lets
a client act on an upload it should not.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.integration.helpers import object_url, send

SIDECAR = ".s3proxy/uploads/"


def sidecar_key(backend_id: str) -> str:
    return SIDECAR + hashlib.sha256(backend_id.encode()).hexdigest()


def code(e: pytest.ExceptionInfo[ClientError]) -> str:
    return str(e.value.response["Error"]["Code"])


def test_client_cannot_touch_reserved_keys(victim: Any, storage: Any, enc_bucket: str) -> None:
    b = enc_bucket
    up = victim.create_multipart_upload(Bucket=b, Key="x")["UploadId"]
    sk = sidecar_key(up.rpartition("~")[0])
    victim.put_object(Bucket=b, Key="plain", Body=b"p")
    for call in (
        lambda: victim.get_object(Bucket=b, Key=sk),
        lambda: victim.head_object(Bucket=b, Key=sk),
        lambda: victim.put_object(Bucket=b, Key=sk, Body=b"{}"),
        lambda: victim.put_object(Bucket=b, Key=".s3proxy/manifests/abc", Body=b"{}"),
        lambda: victim.delete_object(Bucket=b, Key=sk),
        lambda: victim.copy_object(Bucket=b, Key="stolen", CopySource={"Bucket": b, "Key": sk}),
        lambda: victim.copy_object(Bucket=b, Key=".s3proxy/uploads/evil", CopySource={"Bucket": b, "Key": "plain"}),
        lambda: victim.create_multipart_upload(Bucket=b, Key=".s3proxy/uploads/evil"),
        lambda: victim.get_object_tagging(Bucket=b, Key=sk),
        lambda: victim.put_object_tagging(Bucket=b, Key=sk, Tagging={"TagSet": []}),
    ):
        with pytest.raises(ClientError) as e:
            call()
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] in (403, 404) and code(e) in ("AccessDenied", "403")
    with pytest.raises(ClientError) as e:
        victim.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "plain"}, {"Key": sk}]})
    assert code(e) == "AccessDenied"
    assert storage.get_object(Bucket=b, Key=sk)["Body"].read()  # still there, untouched
    assert victim.get_object(Bucket=b, Key="plain")["Body"].read() == b"p"  # nothing of the batch ran
    victim.abort_multipart_upload(Bucket=b, Key="x", UploadId=up)
    victim.delete_object(Bucket=b, Key="plain")


def test_anonymous_cannot_read_reserved_keys(attack_proxy: Any, victim: Any, enc_bucket: str) -> None:
    up = victim.create_multipart_upload(Bucket=enc_bucket, Key="x")["UploadId"]
    r = send("GET", object_url(attack_proxy.url, enc_bucket, sidecar_key(up.rpartition("~")[0])))
    assert r.status == 403
    assert up.rpartition("~")[2][:16].encode() not in r.body
    victim.abort_multipart_upload(Bucket=enc_bucket, Key="x", UploadId=up)


def test_limited_client_lists_no_reserved_keys(mallory: Any, victim: Any, enc_bucket: str) -> None:
    up = victim.create_multipart_upload(Bucket=enc_bucket, Key="mallory/x")["UploadId"]
    with pytest.raises(ClientError) as e:
        mallory.list_objects_v2(Bucket=enc_bucket, Prefix=".s3proxy/")
    assert code(e) == "AccessDenied"
    assert mallory.list_objects_v2(Bucket=enc_bucket, Prefix="mallory/").get("Contents", []) == []
    assert [u["UploadId"] for u in mallory.list_multipart_uploads(Bucket=enc_bucket, Prefix="mallory/")["Uploads"]] == [up]
    victim.abort_multipart_upload(Bucket=enc_bucket, Key="mallory/x", UploadId=up)


def test_forged_sidecar_gives_no_access(victim: Any, mallory: Any, storage: Any, enc_bucket: str) -> None:
    """A storage-side writer maps the victim's upload to mallory's id (another backend id: refused, the
    upload lists bare) or to the victim's backend id with mallory's token (listed, but the token is
    bound to mallory's upload, key and DEK: every use is NoSuchUpload)."""
    b = enc_bucket
    vid = victim.create_multipart_upload(Bucket=b, Key="victim/data")["UploadId"]
    mid = mallory.create_multipart_upload(Bucket=b, Key="mallory/x")["UploadId"]
    v_backend, m_backend = vid.rpartition("~")[0], mid.rpartition("~")[0]
    # (1) the sidecar names another backend upload: ignored
    storage.put_object(Bucket=b, Key=sidecar_key(v_backend), Body=json.dumps({"v": 1, "id": mid}).encode())
    listed = {u["Key"]: u["UploadId"] for u in victim.list_multipart_uploads(Bucket=b)["Uploads"]}
    assert listed["victim/data"] in (vid, v_backend)  # the real id (cached) or bare; never mallory's
    # (2) the victim's backend id with mallory's token, through a fresh proxy cache
    forged = v_backend + "~" + mid.rpartition("~")[2]
    storage.put_object(Bucket=b, Key=sidecar_key(v_backend), Body=json.dumps({"v": 1, "id": forged}).encode())
    for who, key in ((mallory, "mallory/x"), (mallory, "victim/data"), (victim, "victim/data")):
        with pytest.raises(ClientError) as e:
            who.upload_part(Bucket=b, Key=key, UploadId=forged, PartNumber=1, Body=b"evil")
        assert code(e) in ("NoSuchUpload", "AccessDenied")
    # (3) garbage and oversized sidecars are ignored, the listing still answers
    storage.put_object(Bucket=b, Key=sidecar_key(m_backend), Body=b"\x00" * (64 << 10))
    listed = {u["Key"]: u["UploadId"] for u in mallory.list_multipart_uploads(Bucket=b, Prefix="mallory/")["Uploads"]}
    assert listed["mallory/x"] in (mid, m_backend)
    assert storage.list_parts(Bucket=b, Key="victim/data", UploadId=v_backend).get("Parts", []) == []
    victim.abort_multipart_upload(Bucket=b, Key="victim/data", UploadId=vid)
    mallory.abort_multipart_upload(Bucket=b, Key="mallory/x", UploadId=mid)
