"""Attacks on multipart upload ids (issue 9, findings 1 and 2).

Attacker: ``mallory``, an identity that may write only under ``mallory/``, who can also read
the backend (A1: the victim's envelope metadata is not secret).  Goal: get bytes of her
choosing stored as parts encrypted under the *victim's* data key and object id (so that a
storage-side writer can later move the result to the victim's key, where it would decrypt as
authentic), or act on the victim's upload by naming her own key with its upload id.
"""

from __future__ import annotations

import base64
import struct
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.adversarial.conftest import MALLORY_AK, MALLORY_SK
from tests.integration.helpers import client_error, object_url, send, send_signed, sign

SEP = "~"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def token_fields(meta: dict[str, str]) -> tuple[bytes, tuple[str, str, str, bytes], bytes]:
    """(object id, wrapped key fields, context json) from a victim's envelope metadata on the backend."""
    from urllib.parse import unquote

    oid = unb64u(meta["s3proxy-id"])
    backend, key_id, alg, blob = meta["s3proxy-key"].split(";")
    ctx = unb64u(meta["s3proxy-ctx"])
    return oid, (unquote(backend), unquote(key_id), unquote(alg), unb64u(blob)), ctx


def build_token(version: int, oid: bytes, wrapped: tuple[str, str, str, bytes], ctx: bytes, tag: bytes) -> str:
    backend, key_id, alg, blob = wrapped
    body = (
        bytes([version]) + oid
        + struct.pack(">B", len(backend.encode())) + backend.encode()
        + struct.pack(">H", len(key_id.encode())) + key_id.encode()
        + struct.pack(">B", len(alg.encode())) + alg.encode()
        + struct.pack(">H", len(blob)) + blob
        + struct.pack(">H", len(ctx)) + ctx
    )
    return b64u(body + tag)


@pytest.fixture()
def shared_bucket(victim: Any) -> Any:
    name = "adv-" + uuid.uuid4().hex[:12]
    victim.create_bucket(Bucket=name)
    yield name
    for u in victim.list_multipart_uploads(Bucket=name).get("Uploads", []):
        victim.abort_multipart_upload(Bucket=name, Key=u["Key"], UploadId=u["UploadId"])
    for o in victim.list_objects_v2(Bucket=name).get("Contents", []):
        victim.delete_object(Bucket=name, Key=o["Key"])
    victim.delete_bucket(Bucket=name)


def backend_parts(storage: Any, bucket: str, key: str, backend_id: str) -> list[Any]:
    try:
        return list(storage.list_parts(Bucket=bucket, Key=key, UploadId=backend_id).get("Parts", []))
    except ClientError:
        return []


def test_forged_token_naming_the_victims_data_key_is_refused(victim: Any, mallory: Any, storage: Any, shared_bucket: str) -> None:
    """Finding 1: a token built from the victim's public envelope, with any tag Mallory can make."""
    b = shared_bucket
    up = victim.create_multipart_upload(Bucket=b, Key="victim/report.pdf")["UploadId"]
    victim.upload_part(Bucket=b, Key="victim/report.pdf", UploadId=up, PartNumber=1, Body=b"genuine")
    # the envelope of the victim's upload is on the backend as the upload's metadata; once completed,
    # as the object's. Complete it so Mallory can read it the way A1 does.
    parts = victim.list_parts(Bucket=b, Key="victim/report.pdf", UploadId=up)["Parts"]
    victim.complete_multipart_upload(Bucket=b, Key="victim/report.pdf", UploadId=up,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": parts[0]["ETag"]}]})
    meta = storage.head_object(Bucket=b, Key="victim/report.pdf")["Metadata"]
    oid, wrapped, ctx = token_fields(meta)

    own = mallory.create_multipart_upload(Bucket=b, Key="mallory/x")["UploadId"]
    backend_id, _, own_token = own.rpartition(SEP)
    own_tag = unb64u(own_token)[-32:]
    forgeries = {
        "v1 (untagged) token": build_token(1, oid, wrapped, ctx, b""),
        "v2, zero tag": build_token(2, oid, wrapped, ctx, bytes(32)),
        "v2, her own token's tag": build_token(2, oid, wrapped, ctx, own_tag),
        "v2, no tag": build_token(2, oid, wrapped, ctx, b""),
    }
    for what, token in forgeries.items():
        forged = backend_id + SEP + token
        with pytest.raises(ClientError) as ei:
            mallory.upload_part(Bucket=b, Key="mallory/x", UploadId=forged, PartNumber=1, Body=b"forged by mallory")
        assert client_error(ei.value) == (404, "NoSuchUpload"), what
        with pytest.raises(ClientError) as ei:
            mallory.complete_multipart_upload(Bucket=b, Key="mallory/x", UploadId=forged,
                                              MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"x"'}]})
        assert client_error(ei.value)[0] == 404, what
    assert backend_parts(storage, b, "mallory/x", backend_id) == [], "a forged token stored a part"
    # her own, genuine upload still works
    mallory.upload_part(Bucket=b, Key="mallory/x", UploadId=own, PartNumber=1, Body=b"hers")
    mallory.abort_multipart_upload(Bucket=b, Key="mallory/x", UploadId=own)


def test_token_altered_in_any_byte_is_refused(victim: Any, storage: Any, shared_bucket: str) -> None:
    b = shared_bucket
    up = victim.create_multipart_upload(Bucket=b, Key="k")["UploadId"]
    backend_id, _, token = up.rpartition(SEP)
    raw = unb64u(token)
    for i in sorted({0, 1, 17, 18, len(raw) // 2, len(raw) - 33, len(raw) - 32, len(raw) - 1}):
        bad = bytearray(raw)
        bad[i] ^= 0x80
        with pytest.raises(ClientError) as ei:
            victim.upload_part(Bucket=b, Key="k", UploadId=backend_id + SEP + b64u(bytes(bad)), PartNumber=1, Body=b"x")
        assert client_error(ei.value)[0] in (400, 403, 404), i
    for cut in (1, 32, 33, len(raw) - 1):
        with pytest.raises(ClientError) as ei:
            victim.upload_part(Bucket=b, Key="k", UploadId=backend_id + SEP + b64u(raw[:-cut]), PartNumber=1, Body=b"x")
        assert client_error(ei.value)[0] in (400, 403, 404), cut
    assert backend_parts(storage, b, "k", backend_id) == []
    victim.upload_part(Bucket=b, Key="k", UploadId=up, PartNumber=1, Body=b"x")


def test_token_transplanted_to_another_backend_upload_is_refused(victim: Any, storage: Any, shared_bucket: str) -> None:
    """A genuine token glued to another backend upload id of the same key."""
    b = shared_bucket
    first = victim.create_multipart_upload(Bucket=b, Key="k")["UploadId"]
    second = victim.create_multipart_upload(Bucket=b, Key="k")["UploadId"]
    b1, _, t1 = first.rpartition(SEP)
    b2, _, _ = second.rpartition(SEP)
    with pytest.raises(ClientError) as ei:
        victim.upload_part(Bucket=b, Key="k", UploadId=b2 + SEP + t1, PartNumber=1, Body=b"x")
    assert client_error(ei.value) == (404, "NoSuchUpload")
    assert backend_parts(storage, b, "k", b2) == []


def test_token_of_another_bucket_is_refused(victim: Any, storage: Any, shared_bucket: str) -> None:
    other = "adv-" + uuid.uuid4().hex[:12]
    victim.create_bucket(Bucket=other)
    try:
        up = victim.create_multipart_upload(Bucket=other, Key="k")["UploadId"]
        for op in ("upload", "list", "complete", "abort"):
            with pytest.raises(ClientError) as ei:
                if op == "upload":
                    victim.upload_part(Bucket=shared_bucket, Key="k", UploadId=up, PartNumber=1, Body=b"x")
                elif op == "list":
                    victim.list_parts(Bucket=shared_bucket, Key="k", UploadId=up)
                elif op == "complete":
                    victim.complete_multipart_upload(Bucket=shared_bucket, Key="k", UploadId=up,
                                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"x"'}]})
                else:
                    victim.abort_multipart_upload(Bucket=shared_bucket, Key="k", UploadId=up)
            assert client_error(ei.value)[0] == 404, op
        victim.abort_multipart_upload(Bucket=other, Key="k", UploadId=up)
    finally:
        victim.delete_bucket(Bucket=other)


@pytest.mark.parametrize("form", ["full", "bare"])
def test_victims_upload_under_the_attackers_key_is_refused(
    victim: Any, mallory: Any, storage: Any, shared_bucket: str, form: str
) -> None:
    """Finding 2: Mallory names her own key with the victim's upload id (the backend, moto here,
    would accept it); every multipart operation refuses and the victim's upload is untouched."""
    b = shared_bucket
    up = victim.create_multipart_upload(Bucket=b, Key="victim/data.bin")["UploadId"]
    r1 = victim.upload_part(Bucket=b, Key="victim/data.bin", UploadId=up, PartNumber=1, Body=b"victim's bytes")
    backend_id = up.rpartition(SEP)[0]
    uid = up if form == "full" else backend_id
    key = "mallory/data.bin"
    attempts = {
        "UploadPart": lambda: mallory.upload_part(Bucket=b, Key=key, UploadId=uid, PartNumber=2, Body=b"mallory's"),
        "ListParts": lambda: mallory.list_parts(Bucket=b, Key=key, UploadId=uid),
        "Complete": lambda: mallory.complete_multipart_upload(
            Bucket=b, Key=key, UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": r1["ETag"]}]}),
        "Abort": lambda: mallory.abort_multipart_upload(Bucket=b, Key=key, UploadId=uid),
    }
    for op, attempt in attempts.items():
        with pytest.raises(ClientError) as ei:
            attempt()
        assert client_error(ei.value) == (404, "NoSuchUpload"), op
    # the victim's upload is intact and completes with the victim's bytes only
    parts = victim.list_parts(Bucket=b, Key="victim/data.bin", UploadId=up)["Parts"]
    assert [p["PartNumber"] for p in parts] == [1]
    victim.complete_multipart_upload(Bucket=b, Key="victim/data.bin", UploadId=up,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": r1["ETag"]}]})
    assert victim.get_object(Bucket=b, Key="victim/data.bin")["Body"].read() == b"victim's bytes"
    with pytest.raises(ClientError):
        storage.head_object(Bucket=b, Key=key)


def test_bare_upload_id_from_listing_still_manages_own_upload(victim: Any, shared_bucket: str) -> None:
    """The ids ListMultipartUploads shows (bare backend ids) keep working for their own key."""
    b = shared_bucket
    up = victim.create_multipart_upload(Bucket=b, Key="a/b c+d")["UploadId"]
    victim.upload_part(Bucket=b, Key="a/b c+d", UploadId=up, PartNumber=1, Body=b"x")
    listed = [u for u in victim.list_multipart_uploads(Bucket=b)["Uploads"] if u["Key"] == "a/b c+d"]
    assert len(listed) == 1
    bare = listed[0]["UploadId"]
    assert [p["PartNumber"] for p in victim.list_parts(Bucket=b, Key="a/b c+d", UploadId=bare)["Parts"]] == [1]
    victim.abort_multipart_upload(Bucket=b, Key="a/b c+d", UploadId=bare)
    assert victim.list_multipart_uploads(Bucket=b).get("Uploads", []) == []


def test_malformed_upload_ids_are_4xx(victim: Any, shared_bucket: str, attack_proxy: Any) -> None:
    b = shared_bucket
    for uid in ["~", "x~", "~AAAA", "x~!!!", "x~" + "A" * 20000, "x~\u00b2", "\u00b2", "x" * 3000]:
        req = sign("PUT", object_url(attack_proxy.url, b, "mallory/k", [("partNumber", "1"), ("uploadId", uid)]),
                   MALLORY_AK, MALLORY_SK, body=b"x")
        r = send_signed(req)
        assert r.status is not None and 400 <= r.status < 500, (uid[:20], r.status, r.body)
    assert send("GET", attack_proxy.url + "/").status == 403  # the proxy still serves
