"""Requests that must never skip encryption or leak the client's credentials (issue 9, findings 3, 4).

Attackers: an authenticated client who appends sub-resources to reach the backend as a plain
PutObject / GetObject (A6), the same parameters appended *unsigned* to a SigV2 presigned URL
(A4 with a URL in hand), a storage-side writer who plants plaintext (A2), and a backend that
logs the requests it receives (A1: it must not get URLs it could replay against s3proxy).
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import CLIENT_AK, CLIENT_SK
from tests.integration.helpers import object_url, send, send_signed, sign

SECRET = b"top secret plaintext " * 64

SKIPPING = [
    ("PUT", "torrent"),
    ("PUT", "select"),
    ("PUT", "select-type=2"),
    ("PUT", "select&select-type=2"),
    ("PUT", "restore"),
    ("PUT", "attributes"),
    ("PUT", "unknown-subresource"),
    ("PUT", "x-id=PutObject&torrent"),
    ("POST", "restore"),
    ("POST", "select&select-type=2"),
    ("POST", ""),
]


@pytest.mark.parametrize(("method", "query"), SKIPPING)
def test_subresource_writes_never_store_plaintext(attack_proxy: Any, storage: Any, enc_bucket: str, method: str, query: str) -> None:
    key = "obj-" + uuid.uuid4().hex[:8]
    req = sign(method, object_url(attack_proxy.url, enc_bucket, key, query), CLIENT_AK, CLIENT_SK, body=SECRET)
    r = send_signed(req)
    assert r.status in (400, 501), (r.status, r.body)
    assert r.error()["Code"] in ("NotImplemented", "InvalidRequest", "InvalidArgument", "MethodNotAllowed")
    listed = storage.list_objects_v2(Bucket=enc_bucket).get("Contents", [])
    assert listed == [], "something was stored"


def test_subresource_appended_to_sigv2_presigned_put(attack_proxy: Any, storage: Any, enc_bucket: str) -> None:
    presigner = attack_proxy.client(config={"signature_version": "s3"})
    url = presigner.generate_presigned_url("put_object", Params={"Bucket": enc_bucket, "Key": "p"}, ExpiresIn=300)
    for extra in ("torrent", "select&select-type=2", "restore", "attributes"):
        r = send("PUT", url + "&" + extra, {"Content-Length": str(len(SECRET))}, SECRET)
        assert r.status in (400, 403, 501), (extra, r.status, r.body)
        assert storage.list_objects_v2(Bucket=enc_bucket).get("Contents", []) == []
    # the URL itself still works, and stores ciphertext
    r = send("PUT", url, {"Content-Length": str(len(SECRET))}, SECRET)
    assert r.status == 200, r.body
    stored = storage.get_object(Bucket=enc_bucket, Key="p")["Body"].read()
    assert b"top secret" not in stored


@pytest.mark.parametrize("query", ["select", "select&select-type=2", "torrent", "attributes", "unknown-subresource", "restore"])
def test_subresource_reads_never_serve_planted_plaintext_or_ciphertext(
    attack_proxy: Any, storage: Any, victim: Any, enc_bucket: str, query: str
) -> None:
    storage.put_object(Bucket=enc_bucket, Key="planted", Body=b"planted by the storage side")
    victim.put_object(Bucket=enc_bucket, Key="real", Body=SECRET)
    stored = storage.get_object(Bucket=enc_bucket, Key="real")["Body"].read()
    for key in ("planted", "real"):
        r = send_signed(sign("GET", object_url(attack_proxy.url, enc_bucket, key, query), CLIENT_AK, CLIENT_SK))
        body = r.body or b""
        assert b"planted by the storage side" not in body
        assert stored[32:96] not in body
        assert SECRET[:64] not in body or query == "attributes"
        if query != "attributes":
            assert r.status is not None and r.status >= 400, (key, query, r.status)


def test_unknown_query_parameter_on_put_is_refused(attack_proxy: Any, storage: Any, enc_bucket: str) -> None:
    r = send_signed(sign("PUT", object_url(attack_proxy.url, enc_bucket, "k", "foo=bar"), CLIENT_AK, CLIENT_SK, body=b"x"))
    assert r.status == 501, r.body
    assert "foo" in r.error()["Message"]


def test_passthrough_buckets_still_forward_config_calls(victim: Any) -> None:
    victim.create_bucket(Bucket="plain-passthrough") if not _exists(victim, "plain-passthrough") else None
    victim.put_object(Bucket="plain-passthrough", Key="k", Body=b"x")
    victim.put_object_tagging(Bucket="plain-passthrough", Key="k", Tagging={"TagSet": [{"Key": "a", "Value": "b"}]})
    assert victim.get_object_tagging(Bucket="plain-passthrough", Key="k")["TagSet"] == [{"Key": "a", "Value": "b"}]
    victim.delete_object(Bucket="plain-passthrough", Key="k")


def _exists(client: Any, bucket: str) -> bool:
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except Exception:  # noqa: BLE001
        return False


# -- finding 4: the client's presigned credentials never reach the backend ------------------------


@pytest.fixture()
def strict_bucket(strict_proxy: Any) -> Any:
    c = strict_proxy.client(CLIENT_AK, CLIENT_SK)
    name = "adv-" + uuid.uuid4().hex[:12]
    c.create_bucket(Bucket=name)
    c.put_object(Bucket=name, Key="doc.txt", Body=SECRET)
    yield name
    for o in c.list_objects_v2(Bucket=name).get("Contents", []):
        c.delete_object(Bucket=name, Key=o["Key"])
    c.delete_bucket(Bucket=name)


@pytest.mark.parametrize("version", ["s3v4", "s3"])
def test_presigned_get_works_on_a_backend_that_refuses_two_auth_mechanisms(strict_proxy: Any, strict_bucket: str, version: str) -> None:
    """The devstore, like AWS, refuses a request with two authentication mechanisms."""
    c = strict_proxy.client(CLIENT_AK, CLIENT_SK, config={"signature_version": version})
    url = c.generate_presigned_url("get_object", Params={"Bucket": strict_bucket, "Key": "doc.txt"}, ExpiresIn=300)
    r = send("GET", url)
    assert r.status == 200, r.body
    assert r.body == SECRET
    url = c.generate_presigned_url("list_objects_v2", Params={"Bucket": strict_bucket}, ExpiresIn=300)
    r = send("GET", url)
    assert r.status == 200, r.body
    assert b"doc.txt" in (r.body or b"")
    url = c.generate_presigned_url("head_object", Params={"Bucket": strict_bucket, "Key": "doc.txt"}, ExpiresIn=300)
    assert send("HEAD", url).status == 200


def test_backend_never_sees_client_auth_parameters(attack_proxy: Any, victim: Any) -> None:
    """Every query the proxy sends to the backend, recorded at the backend client."""
    from s3proxy.backend import client as backend_client

    seen: list[str] = []
    backend = attack_proxy.state.backend
    original = backend.request

    async def recording(method: str, bucket: Any = None, key: Any = None, **kw: Any) -> Any:
        seen.extend(k for k, _ in kw.get("query") or [])
        seen.extend(h.lower() for h in (kw.get("headers") or {}))
        return await original(method, bucket, key, **kw)

    name = "adv-" + uuid.uuid4().hex[:12]
    victim.create_bucket(Bucket=name)
    victim.put_object(Bucket=name, Key="k", Body=b"x")
    backend.request = recording
    try:
        for version in ("s3v4", "s3"):
            c = attack_proxy.client(CLIENT_AK, CLIENT_SK, config={"signature_version": version})
            for op, params in (("get_object", {"Bucket": name, "Key": "k"}), ("list_objects", {"Bucket": name}),
                               ("get_object_tagging", {"Bucket": name, "Key": "k"})):
                url = c.generate_presigned_url(op, Params=params, ExpiresIn=300)
                assert send("GET", url).status == 200
                # case games: lower-cased copies appended unsigned are dropped too
                parts = urlsplit(url)
                send("GET", url + "&x-amz-signature=abc&signature=abc&awsaccesskeyid=abc")
                assert parts.query
    finally:
        backend.request = original
        victim.delete_object(Bucket=name, Key="k")
        victim.delete_bucket(Bucket=name)
    leaked = {n for n in seen if n.lower() in backend_client.__dict__.get("_NEVER", set()) or n.lower() in {
        "x-amz-credential", "x-amz-signature", "x-amz-algorithm", "x-amz-signedheaders", "x-amz-expires",
        "awsaccesskeyid", "signature", "expires", "x-amz-security-token"}}
    assert not leaked, leaked
    assert seen, "nothing recorded"
