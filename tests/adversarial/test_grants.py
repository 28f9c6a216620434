"""Grants: the action every operation needs (docs/GRANTS.md), attacked by limited identities.

Findings:

* "ListBuckets lists every bucket to an identity granted only some" -> the list is
  filtered to the buckets the identity has a grant on; no "list" anywhere: AccessDenied.
* "A plain write grant allows PutObjectAcl" -> ACL changes (PutObjectAcl, ACL headers
  granting anything on uploads and copies), object-lock settings and governance bypass
  need "admin"; tagging stays "write".
* "DeleteObjects' per-key check is unreachable and matches keys with a regex (``<Key >``
  slips past)" -> a prefix-limited identity may DeleteObjects its own keys; every key the
  body names (however the XML spells it) is checked.

``test_walk_*`` walk the table of docs/GRANTS.md operation by operation: an identity with
exactly the actions an operation needs gets past authorisation, and one lacking any of
them gets 403 AccessDenied.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from botocore.exceptions import ClientError

from s3proxy.http.router import route
from tests.conftest import CLIENT_AK, CLIENT_SK, Backend, Proxy, proxy_settings, start_proxy, stop_proxy
from tests.integration.helpers import absent, assert_s3_error, client_error, empty_bucket, object_url, send, signed

ACTIONS = ("read", "write", "list", "delete", "admin")


def creds_for(name: str) -> tuple[str, str]:
    digest = hashlib.sha256(name.encode()).hexdigest().upper()
    return "AKIDGRANT" + digest[:11], "grant-secret-" + digest[:32]


def ident(name: str, allow: list[dict[str, Any]]) -> dict[str, Any]:
    ak, sk = creds_for(name)
    return {"name": name, "access_key": ak, "secret_key": sk, "allow": allow}


def exact(actions: frozenset[str]) -> str:
    return "exact:" + "+".join(sorted(actions))


def all_but(action: str) -> str:
    return "all-but:" + action


# --------------------------------------------------------------------- the table

XML_DELETE = b'<Delete><Object><Key>obj</Key></Object></Delete>'
XML_TAGGING = b"<Tagging><TagSet><Tag><Key>k</Key><Value>v</Value></Tag></TagSet></Tagging>"
XML_RETENTION = b"<Retention><Mode>GOVERNANCE</Mode><RetainUntilDate>2099-01-01T00:00:00Z</RetainUntilDate></Retention>"
XML_LEGAL_HOLD = b"<LegalHold><Status>ON</Status></LegalHold>"
XML_COMPLETE = b"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"x\"</ETag></Part></CompleteMultipartUpload>"
XML_RESTORE = b"<RestoreRequest><Days>1</Days></RestoreRequest>"
XML_SELECT = (b"<SelectObjectContentRequest><Expression>select * from s3object</Expression><ExpressionType>SQL"
              b"</ExpressionType><InputSerialization><CSV/></InputSerialization><OutputSerialization><CSV/>"
              b"</OutputSerialization></SelectObjectContentRequest>")


@dataclass(frozen=True)
class Op:
    name: str  # as docs/GRANTS.md names it (``authz.operation``)
    method: str
    key: str | None  # "obj" exists; None: a bucket-level request; "/": the service
    query: str = ""
    needs: frozenset[str] = frozenset()
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    id: str = ""

    @property
    def test_id(self) -> str:
        return self.id or self.name


def op(name: str, method: str, key: str | None, query: str = "", needs: str = "", *, headers: dict[str, str] | None = None,
       body: bytes = b"", id: str = "") -> Op:
    return Op(name, method, key, query, frozenset(needs.split("+")), headers or {}, body, id)


def copy_from(bucket_placeholder: str = "{bucket}") -> dict[str, str]:
    return {"x-amz-copy-source": f"/{bucket_placeholder}/obj"}


OPS = [
    # service and bucket level
    op("ListBuckets", "GET", "/", "", "list"),
    op("HeadBucket", "HEAD", None, "", "list"),
    op("GetBucketLocation", "GET", None, "location", "list"),
    op("ListObjects", "GET", None, "", "list"),
    op("ListObjectsV2", "GET", None, "list-type=2", "list"),
    op("ListObjectVersions", "GET", None, "versions", "list"),
    op("ListMultipartUploads", "GET", None, "uploads", "list"),
    op("CreateBucket", "PUT", None, "", "admin", id="CreateBucket"),
    op("DeleteBucket", "DELETE", None, "", "admin"),
    op("GetBucketAcl", "GET", None, "acl", "admin"),
    op("PutBucketAcl", "PUT", None, "acl", "admin", headers={"x-amz-acl": "private"}),
    op("GetBucketVersioning", "GET", None, "versioning", "admin"),
    op("PutBucketTagging", "PUT", None, "tagging", "admin", body=XML_TAGGING),
    op("GetBucketPolicy", "GET", None, "policy", "admin"),
    op("DeleteBucketCors", "DELETE", None, "cors", "admin"),
    op("DeleteObjects", "POST", None, "delete", "delete", body=XML_DELETE),
    op("DeleteObjects", "POST", None, "delete", "delete+admin", body=XML_DELETE,
       headers={"x-amz-bypass-governance-retention": "true"}, id="DeleteObjects+bypass-governance"),
    op("PostObject", "POST", None, "", "admin", headers={"Content-Type": "multipart/form-data; boundary=xyz"},
       body=b"--xyz\r\nContent-Disposition: form-data; name=\"key\"\r\n\r\npost\r\n--xyz--\r\n"),
    # reading objects
    op("GetObject", "GET", "obj", "", "read"),
    op("HeadObject", "HEAD", "obj", "", "read"),
    op("GetObjectAttributes", "GET", "obj", "attributes", "read", headers={"x-amz-object-attributes": "ObjectSize"}),
    op("GetObjectTagging", "GET", "obj", "tagging", "read"),
    op("GetObjectAcl", "GET", "obj", "acl", "read"),
    op("GetObjectRetention", "GET", "obj", "retention", "read"),
    op("GetObjectLegalHold", "GET", "obj", "legal-hold", "read"),
    op("GetObjectTorrent", "GET", "obj", "torrent", "read"),
    op("SelectObjectContent", "POST", "obj", "select&select-type=2", "read", body=XML_SELECT),
    # writing objects
    op("PutObject", "PUT", "new", "", "write", body=b"new"),
    op("PutObject", "PUT", "new", "", "write", headers={"x-amz-acl": "private"}, body=b"n", id="PutObject+acl-private"),
    op("PutObject", "PUT", "new", "", "write", headers={"x-amz-acl": "bucket-owner-full-control"}, body=b"n",
       id="PutObject+acl-bucket-owner-full-control"),
    op("PutObject", "PUT", "new", "", "write", headers={"x-amz-tagging": "a=b"}, body=b"n", id="PutObject+tagging"),
    op("PutObject", "PUT", "new", "", "write+admin", headers={"x-amz-acl": "public-read"}, body=b"n",
       id="PutObject+acl-public-read"),
    op("PutObject", "PUT", "new", "", "write+admin", headers={"x-amz-grant-read": "uri=\"http://acs.amazonaws.com/groups/global/AllUsers\""},
       body=b"n", id="PutObject+grant-read"),
    op("PutObject", "PUT", "new", "", "write+admin", headers={"x-amz-object-lock-legal-hold": "ON"}, body=b"n",
       id="PutObject+object-lock"),
    op("CopyObject", "PUT", "copy", "", "read+write", headers=copy_from()),
    op("CopyObject", "PUT", "copy", "", "read+write+admin", headers={**copy_from(), "x-amz-acl": "public-read-write"},
       id="CopyObject+acl-public-read-write"),
    op("CreateMultipartUpload", "POST", "mp", "uploads", "write"),
    op("CreateMultipartUpload", "POST", "mp", "uploads", "write+admin", headers={"x-amz-grant-full-control": "id=\"x\""},
       id="CreateMultipartUpload+grant"),
    op("UploadPart", "PUT", "mp", "partNumber=1&uploadId=bogus", "write", body=b"part"),
    op("UploadPartCopy", "PUT", "mp", "partNumber=1&uploadId=bogus", "read+write", headers=copy_from()),
    op("CompleteMultipartUpload", "POST", "mp", "uploadId=bogus", "write", body=XML_COMPLETE),
    op("ListParts", "GET", "mp", "uploadId=bogus", "list"),
    op("PutObjectTagging", "PUT", "obj", "tagging", "write", body=XML_TAGGING),
    op("DeleteObjectTagging", "DELETE", "obj", "tagging", "write"),
    op("RestoreObject", "POST", "obj", "restore", "write", body=XML_RESTORE),
    # permissions and object lock
    op("PutObjectAcl", "PUT", "obj", "acl", "admin", headers={"x-amz-acl": "private"}),
    op("PutObjectAcl", "PUT", "obj", "acl", "admin", headers={"x-amz-acl": "public-read"}, id="PutObjectAcl+public-read"),
    op("PutObjectRetention", "PUT", "obj", "retention", "admin", body=XML_RETENTION),
    op("PutObjectLegalHold", "PUT", "obj", "legal-hold", "admin", body=XML_LEGAL_HOLD),
    # deleting
    op("AbortMultipartUpload", "DELETE", "mp", "uploadId=bogus", "delete"),
    op("DeleteObject", "DELETE", "obj", "", "delete"),
    op("DeleteObject", "DELETE", "obj", "", "delete+admin", headers={"x-amz-bypass-governance-retention": "true"},
       id="DeleteObject+bypass-governance"),
    # several sub-resources at once: nobody can tell which one the backend acts on
    op("Ambiguous", "GET", None, "location&acl", "admin", id="Ambiguous-location-acl"),
    op("Ambiguous", "GET", None, "list-type=2&policy", "admin", id="Ambiguous-list-policy"),
    op("Ambiguous", "GET", "mp", "uploadId=bogus&acl", "admin", id="Ambiguous-listparts-acl"),
]
NEEDS = sorted({o.needs for o in OPS}, key=sorted)

GRANT_IDENTITIES = (
    [{"name": "owner", "access_key": CLIENT_AK, "secret_key": CLIENT_SK}]
    + [ident(exact(s), [{"bucket": "*", "actions": sorted(s)}]) for s in NEEDS]
    + [ident(all_but(a), [{"bucket": "*", "actions": [x for x in ACTIONS if x != a]}]) for a in ACTIONS]
)


def with_body_headers(o: Op) -> dict[str, str]:
    headers = dict(o.headers)
    if o.body and o.name in ("DeleteObjects", "PutBucketTagging", "PutObjectTagging", "PutObjectRetention",
                             "PutObjectLegalHold"):
        headers["Content-MD5"] = base64.b64encode(hashlib.md5(o.body).digest()).decode()
    return headers


# --------------------------------------------------------------------- unit walk: classification


@pytest.mark.parametrize("o", OPS, ids=[o.test_id for o in OPS])
def test_walk_table_classification(o: Op) -> None:
    from s3proxy.http.authz import operation, required_actions

    path = "/" if o.key == "/" else "/bkt" + ("" if o.key is None else "/" + o.key)
    headers = {k.lower(): v.replace("{bucket}", "bkt") for k, v in with_body_headers(o).items()}
    r = route(o.method, "localhost", path, o.query, headers, None)
    assert operation(r, o.method) == o.name
    assert required_actions(r, o.method, headers) | ({"read"} if "x-amz-copy-source" in headers else set()) == o.needs


# --------------------------------------------------------------------- HTTP walk


@pytest.fixture(scope="module")
def gproxy(backend: Backend) -> Iterator[Proxy]:
    p = start_proxy(proxy_settings(backend, identities=GRANT_IDENTITIES,
                                   buckets={"grants-public": {"public_read": True}}))
    yield p
    stop_proxy(p)


@pytest.fixture()
def gbucket(gproxy: Proxy) -> Iterator[str]:
    s3 = gproxy.client()
    name = "gr-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="obj", Body=b"the object")
    yield name
    empty_bucket(s3, name)


def call(p: Proxy, o: Op, bucket: str, who: str) -> Any:
    headers = {k: v.replace("{bucket}", bucket) for k, v in with_body_headers(o).items()}
    if o.key == "/":
        b, k = None, None
    elif o.name == "CreateBucket":
        b, k = bucket + "-new", None
    else:
        b, k = bucket, o.key
    return signed(p, o.method, b, k, query=o.query, headers=headers, body=o.body, creds=creds_for(who))


def is_denied(reply: Any) -> bool:
    if reply.status != 403:
        return False
    return reply.body == b"" or reply.error().get("Code") == "AccessDenied"  # HEAD: no body


@pytest.mark.parametrize("o", OPS, ids=[o.test_id for o in OPS])
def test_walk_table_over_http(gproxy: Proxy, gbucket: str, o: Op) -> None:
    """Lacking any one needed action: 403 AccessDenied; exactly the needed actions: past authorisation."""
    for missing in sorted(o.needs):
        reply = call(gproxy, o, gbucket, all_but(missing))
        assert is_denied(reply), (missing, reply.status, reply.body)
        if o.method != "HEAD":
            assert_s3_error(reply, 403, "AccessDenied")
    assert gproxy.client().get_object(Bucket=gbucket, Key="obj")["Body"].read() == b"the object"
    reply = call(gproxy, o, gbucket, exact(o.needs))
    assert not is_denied(reply), (reply.status, reply.body)
    if o.name == "CreateBucket":
        empty_bucket(gproxy.client(), gbucket + "-new")


ANONYMOUS = [
    ("GET", "obj", "", True), ("HEAD", "obj", "", True),
    ("GET", "obj", "acl", False), ("GET", "obj", "tagging", False), ("GET", None, "", False),
    ("PUT", "new", "", False), ("PUT", "obj", "acl", False), ("DELETE", "obj", "", False),
    ("GET", "obj", "torrent", False), ("POST", None, "delete", False),
]


@pytest.fixture(scope="module")
def public_bucket(gproxy: Proxy) -> Iterator[str]:
    s3 = gproxy.client()
    s3.create_bucket(Bucket="grants-public")
    s3.put_object(Bucket="grants-public", Key="obj", Body=b"public object")
    yield "grants-public"
    empty_bucket(s3, "grants-public")


@pytest.mark.parametrize("method,key,query,ok", ANONYMOUS)
def test_anonymous_on_public_read_bucket(gproxy: Proxy, public_bucket: str, method: str, key: str | None,
                                         query: str, ok: bool) -> None:
    headers = {"x-amz-acl": "public-read"} if query == "acl" else {}
    body = XML_DELETE if query == "delete" else (b"x" if method == "PUT" else None)
    reply = send(method, object_url(gproxy.url, public_bucket, key, query), headers, body)
    if ok:
        assert reply.status == 200
        if method == "GET":
            assert reply.body == b"public object"
    else:
        assert is_denied(reply), (reply.status, reply.body)
    assert gproxy.client().get_object(Bucket=public_bucket, Key="obj")["Body"].read() == b"public object"


# --------------------------------------------------------------------- ACL, lock and tagging attacks


@pytest.fixture(scope="module")
def writer_proxy(backend: Backend) -> Iterator[Proxy]:
    """``writer`` may read, write, list and delete (no admin) in every bucket."""
    p = start_proxy(proxy_settings(backend, identities=[
        {"name": "owner", "access_key": CLIENT_AK, "secret_key": CLIENT_SK},
        ident("writer", [{"bucket": "*", "actions": ["read", "write", "list", "delete"]}]),
        ident("reader", [{"bucket": "*", "actions": ["read", "list"]}]),
    ], buckets={"grants-passthrough": {"mode": "passthrough"}}))
    yield p
    stop_proxy(p)


@pytest.fixture(params=["encrypt", "passthrough"])
def wbucket(writer_proxy: Proxy, request: pytest.FixtureRequest) -> Iterator[str]:
    s3 = writer_proxy.client()
    name = "grants-passthrough" if request.param == "passthrough" else "gw-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="obj", Body=b"private data")
    yield name
    empty_bucket(s3, name)


def client_as(p: Proxy, name: str) -> Any:
    return p.client(*creds_for(name))


def public_grants(s3: Any, bucket: str, key: str) -> list[Any]:
    acl = s3.get_object_acl(Bucket=bucket, Key=key)
    return [g for g in acl["Grants"] if g["Grantee"].get("URI", "").endswith(("AllUsers", "AuthenticatedUsers"))]


def denied(fn: Any) -> None:
    with pytest.raises(ClientError) as ei:
        fn()
    assert client_error(ei.value) == (403, "AccessDenied")


def test_write_grant_cannot_make_an_object_public(writer_proxy: Proxy, wbucket: str) -> None:
    owner, writer = writer_proxy.client(), client_as(writer_proxy, "writer")
    denied(lambda: writer.put_object_acl(Bucket=wbucket, Key="obj", ACL="public-read"))
    denied(lambda: writer.put_object_acl(
        Bucket=wbucket, Key="obj", GrantRead='uri="http://acs.amazonaws.com/groups/global/AllUsers"'))
    assert public_grants(owner, wbucket, "obj") == []
    denied(lambda: writer.put_object(Bucket=wbucket, Key="pub", Body=b"x", ACL="public-read"))
    denied(lambda: writer.put_object(Bucket=wbucket, Key="pub", Body=b"x",
                                     GrantRead='uri="http://acs.amazonaws.com/groups/global/AllUsers"'))
    denied(lambda: writer.copy_object(Bucket=wbucket, Key="pub", CopySource={"Bucket": wbucket, "Key": "obj"},
                                      ACL="public-read"))
    denied(lambda: writer.create_multipart_upload(Bucket=wbucket, Key="pub", ACL="public-read-write"))
    assert absent(owner, wbucket, "pub")
    assert owner.list_multipart_uploads(Bucket=wbucket).get("Uploads", []) == []
    denied(lambda: writer.put_bucket_acl(Bucket=wbucket, ACL="public-read"))


def test_write_grant_keeps_harmless_acls_and_tagging(writer_proxy: Proxy, wbucket: str) -> None:
    owner, writer, reader = writer_proxy.client(), client_as(writer_proxy, "writer"), client_as(writer_proxy, "reader")
    writer.put_object(Bucket=wbucket, Key="w1", Body=b"a", ACL="private")
    writer.put_object(Bucket=wbucket, Key="w2", Body=b"b", ACL="bucket-owner-full-control", Tagging="t=1")
    assert public_grants(owner, wbucket, "w2") == []
    writer.put_object_tagging(Bucket=wbucket, Key="obj", Tagging={"TagSet": [{"Key": "k", "Value": "v"}]})
    assert reader.get_object_tagging(Bucket=wbucket, Key="obj")["TagSet"] == [{"Key": "k", "Value": "v"}]
    denied(lambda: reader.put_object_tagging(Bucket=wbucket, Key="obj", Tagging={"TagSet": []}))
    denied(lambda: reader.delete_object_tagging(Bucket=wbucket, Key="obj"))
    writer.delete_object_tagging(Bucket=wbucket, Key="obj")
    assert owner.get_object_tagging(Bucket=wbucket, Key="obj")["TagSet"] == []
    reader.get_object_acl(Bucket=wbucket, Key="obj")


def test_write_grant_cannot_touch_object_lock(writer_proxy: Proxy) -> None:
    owner, writer = writer_proxy.client(), client_as(writer_proxy, "writer")
    b = "gl-" + uuid.uuid4().hex[:12]
    owner.create_bucket(Bucket=b, ObjectLockEnabledForBucket=True)
    try:
        owner.put_object(Bucket=b, Key="obj", Body=b"locked?")
        denied(lambda: writer.put_object_retention(
            Bucket=b, Key="obj", Retention={"Mode": "COMPLIANCE", "RetainUntilDate": "2099-01-01T00:00:00Z"}))
        denied(lambda: writer.put_object_legal_hold(Bucket=b, Key="obj", LegalHold={"Status": "ON"}))
        denied(lambda: writer.put_object(Bucket=b, Key="l", Body=b"x", ObjectLockMode="COMPLIANCE",
                                         ObjectLockRetainUntilDate="2099-01-01T00:00:00Z"))
        denied(lambda: writer.put_object(Bucket=b, Key="l", Body=b"x", ObjectLockLegalHoldStatus="ON"))
        denied(lambda: writer.delete_object(Bucket=b, Key="obj", BypassGovernanceRetention=True))
        assert absent(owner, b, "l")
        head = owner.head_object(Bucket=b, Key="obj")
        assert "ObjectLockMode" not in head and head.get("ObjectLockLegalHoldStatus") != "ON"
        writer.delete_object(Bucket=b, Key="obj")  # plain delete: still "delete"
    finally:
        empty_bucket(owner, b)


# --------------------------------------------------------------------- DeleteObjects per key


@pytest.fixture(scope="module")
def prefix_proxy(backend: Backend) -> Iterator[Proxy]:
    """``mine`` may do anything but admin under ``mine/`` only; ``norights`` may only read."""
    p = start_proxy(proxy_settings(backend, identities=[
        {"name": "owner", "access_key": CLIENT_AK, "secret_key": CLIENT_SK},
        ident("mine", [{"bucket": "*", "prefix": "mine/", "actions": ["read", "write", "list", "delete"]}]),
        ident("norights", [{"bucket": "*", "actions": ["read"]}]),
    ], buckets={"grants-del-passthrough": {"mode": "passthrough"}}))
    yield p
    stop_proxy(p)


@pytest.fixture(params=["encrypt", "passthrough"])
def dbucket(prefix_proxy: Proxy, request: pytest.FixtureRequest) -> Iterator[str]:
    s3 = prefix_proxy.client()
    name = "grants-del-passthrough" if request.param == "passthrough" else "gd-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    for k in ("mine/a", "mine/b", "theirs/secret", "mine"):
        s3.put_object(Bucket=name, Key=k, Body=b"data of " + k.encode())
    yield name
    empty_bucket(s3, name)


def delete_objects_raw(p: Proxy, bucket: str, who: str, xml: bytes) -> Any:
    md5 = base64.b64encode(hashlib.md5(xml).digest()).decode()
    return signed(p, "POST", bucket, None, query="delete", headers={"Content-MD5": md5}, body=xml, creds=creds_for(who))


def test_prefix_limited_identity_deletes_its_own_keys(prefix_proxy: Proxy, dbucket: str) -> None:
    owner, mine = prefix_proxy.client(), client_as(prefix_proxy, "mine")
    out = mine.delete_objects(Bucket=dbucket, Delete={"Objects": [{"Key": "mine/a"}, {"Key": "mine/b"}]})
    assert sorted(d["Key"] for d in out["Deleted"]) == ["mine/a", "mine/b"]
    assert absent(owner, dbucket, "mine/a") and absent(owner, dbucket, "mine/b")
    assert not absent(owner, dbucket, "theirs/secret")


def test_delete_objects_outside_the_prefix_is_refused_whole(prefix_proxy: Proxy, dbucket: str) -> None:
    owner, mine = prefix_proxy.client(), client_as(prefix_proxy, "mine")
    for keys in (["theirs/secret"], ["mine/a", "theirs/secret"], ["mine"]):
        denied(lambda keys=keys: mine.delete_objects(Bucket=dbucket, Delete={"Objects": [{"Key": k} for k in keys]}))
    for k in ("mine/a", "theirs/secret", "mine"):
        assert not absent(owner, dbucket, k)


@pytest.mark.parametrize("xml", [
    b"<Delete><Object><Key >theirs/secret</Key ></Object></Delete>",
    b'<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Object><Key\n>theirs/secret</Key\t></Object></Delete>',
    b"<Delete><Object><Key>mine/a</Key></Object><Object><Key  >theirs/secret</Key></Object></Delete>",
    b"<Delete><Object><Key>theirs&#47;secret</Key></Object></Delete>",
    b"<Delete><Object><Key>their<!-- -->s/secret</Key></Object></Delete>",
    b"<Delete><Object><Key><![CDATA[theirs/secret]]></Key></Object></Delete>",
    b"<Delete><Object><s3:Key xmlns:s3=\"http://s3.amazonaws.com/doc/2006-03-01/\">theirs/secret</s3:Key></Object></Delete>",
    b"<Delete><Object><Key>mine/a</Key><Key>theirs/secret</Key></Object></Delete>",
    '<?xml version="1.0" encoding="UTF-16"?><Delete><Object><Key>theirs/secret</Key></Object></Delete>'.encode("utf-16"),
], ids=["space", "namespace-newline-tab", "second-object", "char-ref", "comment", "cdata", "prefixed", "two-keys",
        "utf-16"])
def test_delete_objects_key_spellings_cannot_slip_past(prefix_proxy: Proxy, dbucket: str, xml: bytes) -> None:
    owner = prefix_proxy.client()
    reply = delete_objects_raw(prefix_proxy, dbucket, "mine", xml)
    assert reply.status in (400, 403), (reply.status, reply.body)
    assert reply.error()["Code"] in ("AccessDenied", "MalformedXML")
    for k in ("mine/a", "theirs/secret"):
        assert not absent(owner, dbucket, k)


def test_delete_objects_needs_delete_somewhere_in_the_bucket(prefix_proxy: Proxy, dbucket: str) -> None:
    owner = prefix_proxy.client()
    reply = delete_objects_raw(prefix_proxy, dbucket, "norights", b"<Delete><Object><Key>mine/a</Key></Object></Delete>")
    assert_s3_error(reply, 403, "AccessDenied")
    reply = send("POST", object_url(prefix_proxy.url, dbucket, None, "delete"), {},
                 b"<Delete><Object><Key>mine/a</Key></Object></Delete>")
    assert_s3_error(reply, 403, "AccessDenied")
    assert not absent(owner, dbucket, "mine/a")


# --------------------------------------------------------------------- ListBuckets


@pytest.fixture(scope="module")
def lb_proxy(backend: Backend) -> Iterator[Proxy]:
    suffix = uuid.uuid4().hex[:10]
    a, b = f"lb-a-{suffix}", f"lb-b-{suffix}"
    p = start_proxy(proxy_settings(backend, identities=[
        {"name": "owner", "access_key": CLIENT_AK, "secret_key": CLIENT_SK},
        ident("only-a", [{"bucket": a, "actions": ["read", "list"]}]),
        ident("a-prefix-write-b-list", [{"bucket": a, "prefix": "x/", "actions": ["write"]},
                                        {"bucket": b, "prefix": "y/", "actions": ["list"]}]),
        ident("a-read-only", [{"bucket": a, "actions": ["read"]}]),
        ident("list-elsewhere", [{"bucket": "no-such-bucket-" + suffix, "actions": ["list"]}]),
        ident("everything", [{"bucket": "*", "prefix": "public/", "actions": ["read", "list"]}]),
    ]))
    p.extra["a"], p.extra["b"] = a, b
    s3 = p.client()
    s3.create_bucket(Bucket=a)
    s3.create_bucket(Bucket=b)
    yield p
    empty_bucket(s3, a)
    empty_bucket(s3, b)
    stop_proxy(p)


def bucket_names(client: Any) -> set[str]:
    return {b["Name"] for b in client.list_buckets()["Buckets"]}


def test_list_buckets_shows_only_granted_buckets(lb_proxy: Proxy) -> None:
    a, b = lb_proxy.extra["a"], lb_proxy.extra["b"]
    assert {a, b} <= bucket_names(lb_proxy.client())
    assert bucket_names(client_as(lb_proxy, "only-a")) == {a}
    assert bucket_names(client_as(lb_proxy, "a-prefix-write-b-list")) == {a, b}
    assert bucket_names(client_as(lb_proxy, "list-elsewhere")) == set()
    assert {a, b} <= bucket_names(client_as(lb_proxy, "everything"))


def test_list_buckets_needs_list_somewhere(lb_proxy: Proxy) -> None:
    denied(lambda: client_as(lb_proxy, "a-read-only").list_buckets())
    assert_s3_error(send("GET", lb_proxy.url + "/"), 403, "AccessDenied")


def test_list_buckets_answer_is_s3_xml(lb_proxy: Proxy) -> None:
    reply = signed(lb_proxy, "GET", None, creds=creds_for("only-a"))
    assert reply.status == 200
    assert reply.header("x-amz-request-id")
    assert reply.header("content-type", ).startswith("application/xml")
    assert b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"' in (reply.body or b"")
    assert lb_proxy.extra["b"].encode() not in (reply.body or b"")


@pytest.mark.parametrize("op_name,method,query,name", [
    ("ObjectConfig", "DELETE", (("tagging", ""),), "DeleteObjectTagging"),
    ("ObjectConfig", "POST", (("restore", ""),), "RestoreObject"),
    ("ObjectConfig", "GET", (("torrent", ""),), "GetObjectTorrent"),
    ("ObjectConfig", "PUT", (("acl", ""), ("versionId", "v")), "PutObjectAcl"),
    ("ObjectConfig", "PUT", (("acl", ""), ("tagging", "")), "Ambiguous"),
    ("ObjectConfig", "POST", (), "Ambiguous"),
    ("PutObject", "PUT", (("x-id", "PutObject"),), "PutObject"),
])
def test_operation_names_do_not_lean_on_router_details(op_name: str, method: str, query: Any, name: str) -> None:
    """Whichever way the router names these, authz names them (and so grants them) the same."""
    from s3proxy.http.authz import action_for, operation
    from s3proxy.http.router import Route

    r = Route(op_name, "b", "k", query)
    assert operation(r, method) == name
    if name == "Ambiguous":
        assert action_for(r, method) == "admin"
