"""Sealed tags (issue 15 item 2, docs/FORMAT.md 8 ``"t"``): a bucket with ``tags: sealed``.

Tags given on PUT, CreateMultipartUpload, CopyObject (tagging directive COPY and REPLACE) are
checked with S3's rules and kept in the sealed block; the backend never sees them (its raw HEAD,
GET ?tagging and, on the strict store, its files hold no marker).  Get/Put/DeleteObjectTagging
work through the proxy (Put and Delete as a metadata-only self-copy that keeps the client-facing
ETag); a storage-side attacker who moves a sealed block fails; a limited identity and anonymous
callers cannot tag.  The default (``plain``) still relays tags to the backend.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore import UNSIGNED
from botocore.exceptions import ClientError

from tests.conftest import VENV_BIN, Backend, Proxy, empty_and_delete_bucket, proxy_settings, start_proxy, stop_proxy
from tests.integration.helpers import MiB, limited, multipart_upload

pytestmark = pytest.mark.needs("aws_responses")

MARK = "zq8tagmark"
SEALED = "tsealed-" + uuid.uuid4().hex[:10]
PLAIN = "tplain-" + uuid.uuid4().hex[:10]
VERSIONED = "tsealedv-" + uuid.uuid4().hex[:10]


@pytest.fixture(scope="module")
def tproxy(backend: Backend) -> Iterator[Proxy]:
    p = start_proxy(proxy_settings(backend, buckets={SEALED: {"tags": "sealed"}, VERSIONED: {"tags": "sealed"}}))
    s3 = p.client()
    for b in (SEALED, PLAIN, VERSIONED):
        s3.create_bucket(Bucket=b)
    s3.put_bucket_versioning(Bucket=VERSIONED, VersioningConfiguration={"Status": "Enabled"})
    yield p
    for b in (SEALED, PLAIN, VERSIONED):
        empty_and_delete_bucket(s3, b)
    stop_proxy(p)


@pytest.fixture()
def c(tproxy: Proxy) -> Any:
    return tproxy.client()


def tags_of(client: Any, bucket: str, key: str, **kw: Any) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in client.get_object_tagging(Bucket=bucket, Key=key, **kw)["TagSet"]}


def tagset(tags: dict[str, str]) -> dict[str, Any]:
    return {"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]}


def code(e: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    return e.value.response["ResponseMetadata"]["HTTPStatusCode"], e.value.response["Error"]["Code"]


def store_files(bucket: str) -> list[Path]:
    """The strict store's files of ``bucket`` (its root is a temporary directory named by conftest)."""
    dirs = list(Path(tempfile.gettempdir()).glob(f"s3proxy-strict-*/data/{bucket}"))
    return [p for d in dirs for p in d.rglob("*") if p.is_file()]


def assert_backend_sees_no_tags(raw: Any, backend: Backend, bucket: str, key: str) -> None:
    head = raw.head_object(Bucket=bucket, Key=key)
    assert MARK not in repr(head["ResponseMetadata"]["HTTPHeaders"]).lower()
    assert "x-amz-tagging-count" not in head["ResponseMetadata"]["HTTPHeaders"]
    assert raw.get_object_tagging(Bucket=bucket, Key=key)["TagSet"] == []
    got = raw.get_object(Bucket=bucket, Key=key)
    assert MARK.encode() not in got["Body"].read()
    if backend.kind == "strict":
        files = store_files(bucket)
        assert files
        for f in files:
            assert MARK.encode() not in f.read_bytes().lower(), f


def test_put_with_tags_sealed(c: Any, raw: Any, backend: Backend) -> None:
    c.put_object(Bucket=SEALED, Key="a", Body=b"body", Tagging=f"patient=jane-{MARK}&ward=7")
    assert tags_of(c, SEALED, "a") == {"patient": f"jane-{MARK}", "ward": "7"}
    assert c.head_object(Bucket=SEALED, Key="a")["TagCount"] == 2
    got = c.get_object(Bucket=SEALED, Key="a")
    assert got["TagCount"] == 2 and got["Body"].read() == b"body"
    assert_backend_sees_no_tags(raw, backend, SEALED, "a")
    c.put_object(Bucket=SEALED, Key="untagged", Body=b"x")
    assert "TagCount" not in c.head_object(Bucket=SEALED, Key="untagged")
    assert tags_of(c, SEALED, "untagged") == {}


@pytest.mark.parametrize("layout", ["S", "K"])
def test_put_and_delete_object_tagging(c: Any, raw: Any, backend: Backend, layout: str) -> None:
    key = "retag-" + layout
    if layout == "S":
        c.put_object(Bucket=SEALED, Key=key, Body=b"s" * 1000, ContentType="text/x-kept", Metadata={"m": "1"})
    else:
        multipart_upload(c, SEALED, key, [b"k" * (5 * MiB), b"tail"], ContentType="text/x-kept", Metadata={"m": "1"})
    before = c.head_object(Bucket=SEALED, Key=key)
    c.put_object_tagging(Bucket=SEALED, Key=key, Tagging=tagset({"owner": f"x-{MARK}", "ü nï": "é ok"}))
    assert tags_of(c, SEALED, key) == {"owner": f"x-{MARK}", "ü nï": "é ok"}
    after = c.head_object(Bucket=SEALED, Key=key)
    # a metadata-only self-copy: the client-facing ETag, size, type and metadata stay
    for field in ("ETag", "ContentLength", "ContentType", "Metadata"):
        assert after[field] == before[field], field
    assert after["TagCount"] == 2
    assert_backend_sees_no_tags(raw, backend, SEALED, key)
    body = c.get_object(Bucket=SEALED, Key=key)["Body"].read()
    assert body == (b"s" * 1000 if layout == "S" else b"k" * (5 * MiB) + b"tail")
    c.delete_object_tagging(Bucket=SEALED, Key=key)
    assert tags_of(c, SEALED, key) == {}
    assert "TagCount" not in c.head_object(Bucket=SEALED, Key=key)
    assert c.head_object(Bucket=SEALED, Key=key)["ETag"] == before["ETag"]


def test_multipart_tags_from_create(c: Any, raw: Any, backend: Backend) -> None:
    multipart_upload(c, SEALED, "mp", [b"a" * (5 * MiB), b"b"], Tagging=f"k={MARK}")
    assert tags_of(c, SEALED, "mp") == {"k": MARK}
    assert_backend_sees_no_tags(raw, backend, SEALED, "mp")


@pytest.mark.parametrize("layout", ["S", "K"])
def test_copy_tagging_directives(c: Any, raw: Any, backend: Backend, layout: str) -> None:
    src = "csrc-" + layout
    if layout == "S":
        c.put_object(Bucket=SEALED, Key=src, Body=b"copy", Tagging=f"t={MARK}")
    else:
        multipart_upload(c, SEALED, src, [b"c" * (5 * MiB), b"d"], Tagging=f"t={MARK}")
    c.copy_object(Bucket=SEALED, Key=src + "-copy", CopySource={"Bucket": SEALED, "Key": src})
    assert tags_of(c, SEALED, src + "-copy") == {"t": MARK}
    assert_backend_sees_no_tags(raw, backend, SEALED, src + "-copy")
    c.copy_object(Bucket=SEALED, Key=src + "-repl", CopySource={"Bucket": SEALED, "Key": src},
                  TaggingDirective="REPLACE", Tagging=f"new={MARK}2")
    assert tags_of(c, SEALED, src + "-repl") == {"new": f"{MARK}2"}
    assert_backend_sees_no_tags(raw, backend, SEALED, src + "-repl")
    # into a bucket that keeps tags plain: there they are the backend's (lifecycle rules see them)
    c.copy_object(Bucket=PLAIN, Key=src, CopySource={"Bucket": SEALED, "Key": src})
    assert tags_of(raw, PLAIN, src) == {"t": MARK} == tags_of(c, PLAIN, src)
    # and back: sealed again, the backend copy has none
    c.copy_object(Bucket=SEALED, Key=src + "-back", CopySource={"Bucket": PLAIN, "Key": src})
    assert tags_of(c, SEALED, src + "-back") == {"t": MARK}
    assert_backend_sees_no_tags(raw, backend, SEALED, src + "-back")


def test_plain_default_relays_tags(c: Any, raw: Any) -> None:
    c.put_object(Bucket=PLAIN, Key="p", Body=b"x", Tagging="a=b")
    assert tags_of(raw, PLAIN, "p") == {"a": "b"}
    c.put_object_tagging(Bucket=PLAIN, Key="p", Tagging=tagset({"c": "d"}))
    assert tags_of(raw, PLAIN, "p") == {"c": "d"} == tags_of(c, PLAIN, "p")


@pytest.mark.parametrize(
    ("tagging", "expected"),
    [
        ("&".join(f"k{i}=v" for i in range(11)), (400, "BadRequest")),
        ("k" * 129 + "=v", (400, "InvalidTag")),
        ("k=" + "v" * 257, (400, "InvalidTag")),
        ("k=a%2Cb", (400, "InvalidTag")),  # ',' is not an allowed character
        ("aws%3Aname=v", (400, "InvalidTag")),
        ("k=1&k=2", (400, "InvalidArgument")),
        ("=v", (400, "InvalidTag")),
    ],
)
def test_tag_rules_as_s3(c: Any, raw: Any, tagging: str, expected: tuple[int, str]) -> None:
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket=SEALED, Key="bad", Body=b"x", Tagging=tagging)
    assert code(e) == expected
    with pytest.raises(ClientError) as e:
        c.create_multipart_upload(Bucket=SEALED, Key="bad", Tagging=tagging)
    assert code(e) == expected
    assert raw.list_objects_v2(Bucket=SEALED, Prefix="bad").get("KeyCount", 0) == 0


def test_tag_rules_on_put_object_tagging(c: Any) -> None:
    c.put_object(Bucket=SEALED, Key="rules", Body=b"x")
    # the limits count UTF-16 code units, as S3 does: 64 letters outside the BMP are 128 units
    wide = "\U0001d518"  # MATHEMATICAL FRAKTUR CAPITAL U, a letter: two UTF-16 code units
    ok = {wide * 64: "é" * 20, "a b:c/d=e+f-g_h.i@j": ""}
    c.put_object_tagging(Bucket=SEALED, Key="rules", Tagging=tagset(ok))
    assert tags_of(c, SEALED, "rules") == ok
    for bad in ({f"k{i}": "v" for i in range(11)}, {"k" * 129: "v"}, {wide * 65: "v"}, {"k": "<v>"},
                {"k": "\u2603"}, {"aws:x": "v"}):
        with pytest.raises(ClientError) as e:
            c.put_object_tagging(Bucket=SEALED, Key="rules", Tagging=tagset(bad))
        assert code(e)[0] == 400 and code(e)[1] in ("BadRequest", "InvalidTag")
    with pytest.raises(ClientError) as e:
        c.put_object_tagging(Bucket=SEALED, Key="rules", Tagging=tagset({f"k{i}": "v" for i in range(60)}))
    assert code(e) == (400, "BadRequest")
    with pytest.raises(ClientError) as e:
        c.put_object_tagging(Bucket=SEALED, Key="rules", Tagging={"TagSet": [{"Key": "a", "Value": "1"}, {"Key": "a", "Value": "2"}]})
    assert code(e) == (400, "InvalidTag")
    with pytest.raises(ClientError) as e:
        c.put_object_tagging(Bucket=SEALED, Key="missing", Tagging=tagset({"a": "b"}))
    assert code(e) == (404, "NoSuchKey")
    with pytest.raises(ClientError) as e:
        c.get_object_tagging(Bucket=SEALED, Key="missing")
    assert code(e) == (404, "NoSuchKey")


def test_tags_that_do_not_fit_after_sealing(c: Any) -> None:
    """S3 allows 10 tags of 128 + 256 characters; sealed (2 KB of backend metadata for
    everything) they do not fit: MetadataTooLarge, never truncated."""
    big = {f"{i:0128d}": "v" * 256 for i in range(10)}
    with pytest.raises(ClientError) as e:
        c.put_object(Bucket=SEALED, Key="big", Body=b"x", Tagging="&".join(f"{k}={v}" for k, v in big.items()))
    assert code(e) == (400, "MetadataTooLarge")
    c.put_object(Bucket=SEALED, Key="big", Body=b"x")
    with pytest.raises(ClientError) as e:
        c.put_object_tagging(Bucket=SEALED, Key="big", Tagging=tagset(big))
    assert code(e) == (400, "MetadataTooLarge")
    assert tags_of(c, SEALED, "big") == {}


def test_versioned_bucket(c: Any, raw: Any) -> None:
    v1 = c.put_object(Bucket=VERSIONED, Key="v", Body=b"one", Tagging="gen=1")["VersionId"]
    r = c.put_object_tagging(Bucket=VERSIONED, Key="v", Tagging=tagset({"gen": "2"}))
    v2 = r["VersionId"]
    assert v2 != v1  # the self-copy is a new current version
    assert tags_of(c, VERSIONED, "v") == {"gen": "2"}
    assert tags_of(c, VERSIONED, "v", VersionId=v1) == {"gen": "1"}  # the old version keeps its tags
    assert tags_of(c, VERSIONED, "v", VersionId=v2) == {"gen": "2"}
    assert c.get_object(Bucket=VERSIONED, Key="v", VersionId=v2)["Body"].read() == b"one"
    with pytest.raises(ClientError) as e:  # a copy of v1 would become current: refused
        c.put_object_tagging(Bucket=VERSIONED, Key="v", VersionId=v1, Tagging=tagset({"gen": "x"}))
    assert code(e) == (501, "NotImplemented")
    c.put_object_tagging(Bucket=VERSIONED, Key="v", VersionId=v2, Tagging=tagset({"gen": "3"}))
    assert tags_of(c, VERSIONED, "v") == {"gen": "3"}
    assert raw.get_object_tagging(Bucket=VERSIONED, Key="v")["TagSet"] == []


def test_attacker_moving_a_sealed_block_fails(c: Any, raw: Any) -> None:
    """With backend credentials: copy object A's envelope (sealed tags) onto object B."""
    c.put_object(Bucket=SEALED, Key="victim", Body=b"v", Tagging="class=public")
    c.put_object(Bucket=SEALED, Key="donor", Body=b"d", Tagging="class=secret")
    donor = raw.head_object(Bucket=SEALED, Key="donor")["Metadata"]
    victim = raw.head_object(Bucket=SEALED, Key="victim")["Metadata"]
    for planted in ({**victim, "s3proxy-seal": donor["s3proxy-seal"]}, donor):
        raw.copy_object(Bucket=SEALED, Key="victim", CopySource={"Bucket": SEALED, "Key": "victim"},
                        MetadataDirective="REPLACE", Metadata=planted)
        for call in (lambda: c.get_object_tagging(Bucket=SEALED, Key="victim"),
                     lambda: c.head_object(Bucket=SEALED, Key="victim"),
                     lambda: c.put_object_tagging(Bucket=SEALED, Key="victim", Tagging=tagset({"a": "b"}))):
            with pytest.raises(ClientError) as e:
                call()
            assert code(e)[0] == 403
    # tags planted on the backend are not the object's
    c.put_object(Bucket=SEALED, Key="planted", Body=b"p")
    raw.put_object_tagging(Bucket=SEALED, Key="planted", Tagging=tagset({"evil": "1"}))
    assert tags_of(c, SEALED, "planted") == {}
    assert "TagCount" not in c.head_object(Bucket=SEALED, Key="planted")


def test_limited_and_anonymous_callers(tproxy: Proxy, c: Any) -> None:
    c.put_object(Bucket=SEALED, Key="public/x", Body=b"x", Tagging="a=b")
    ak, sk = limited(tproxy)
    lim = tproxy.client(access_key=ak, secret_key=sk)
    assert tags_of(lim, SEALED, "public/x") == {"a": "b"}  # read grant: GetObjectTagging
    for call in (lambda: lim.put_object_tagging(Bucket=SEALED, Key="public/x", Tagging=tagset({"a": "c"})),
                 lambda: lim.delete_object_tagging(Bucket=SEALED, Key="public/x"),
                 lambda: lim.get_object_tagging(Bucket=SEALED, Key="x")):
        with pytest.raises(ClientError) as e:
            call()
        assert code(e) == (403, "AccessDenied")
    anon = tproxy.client(config={"signature_version": UNSIGNED})
    for call in (lambda: anon.get_object_tagging(Bucket=SEALED, Key="public/x"),
                 lambda: anon.put_object_tagging(Bucket=SEALED, Key="public/x", Tagging=tagset({"a": "c"}))):
        with pytest.raises(ClientError) as e:
            call()
        assert code(e)[0] == 403
    assert tags_of(c, SEALED, "public/x") == {"a": "b"}


def test_aws_cli_s3api_tagging(tproxy: Proxy, c: Any, tmp_path: Path) -> None:
    exe = shutil.which("aws", path=str(VENV_BIN)) or str(VENV_BIN / "aws")
    if not Path(exe).exists():
        pytest.skip("AWS CLI not installed")
    from tests.conftest import CLIENT_AK, CLIENT_SK

    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "AWS_ACCESS_KEY_ID": CLIENT_AK,
           "AWS_SECRET_ACCESS_KEY": CLIENT_SK, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(tmp_path / "c"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "k")}

    def aws(*args: str) -> str:
        cp = subprocess.run([exe, "--endpoint-url", tproxy.url, *args], env=env, capture_output=True, text=True,
                            timeout=120)
        assert cp.returncode == 0, cp.stderr
        return cp.stdout

    c.put_object(Bucket=SEALED, Key="cli", Body=b"x")
    aws("s3api", "put-object-tagging", "--bucket", SEALED, "--key", "cli",
        "--tagging", f'{{"TagSet":[{{"Key":"cli","Value":"{MARK}"}}]}}')
    assert MARK in aws("s3api", "get-object-tagging", "--bucket", SEALED, "--key", "cli")
    aws("s3api", "delete-object-tagging", "--bucket", SEALED, "--key", "cli")
    assert tags_of(c, SEALED, "cli") == {}



def _form_tagging_supported() -> bool:
    from s3proxy.aws.errors import S3Error
    from s3proxy.http.postpolicy import object_headers

    try:
        return "x-amz-tagging" in object_headers({"tagging": "<Tagging><TagSet/></Tagging>"})
    except S3Error:
        return False


@pytest.mark.skipif(not _form_tagging_supported(), reason="POST form 'tagging' field: postpolicy patch in H2's report")
def test_post_form_tagging_field(tproxy: Proxy, c: Any, raw: Any, backend: Backend) -> None:
    from tests.integration.test_post_object import encode_form, post

    doc = f"<Tagging><TagSet><Tag><Key>form</Key><Value>{MARK}</Value></Tag></TagSet></Tagging>"
    for bucket in (SEALED, PLAIN):
        p = c.generate_presigned_post(bucket, "form", Fields={"tagging": doc}, Conditions=[{"tagging": doc}])
        r = post(p["url"], encode_form(p["fields"], b"posted"))
        assert r.status == 204, (r.status, r.body)
        assert tags_of(c, bucket, "form") == {"form": MARK}
    assert_backend_sees_no_tags(raw, backend, SEALED, "form")
    assert tags_of(raw, PLAIN, "form") == {"form": MARK}
    p = c.generate_presigned_post(SEALED, "form2", Fields={"tagging": "<Tagging><TagSet><Tag><Key>aws:x</Key>"
                                  "<Value>v</Value></Tag></TagSet></Tagging>"}, Conditions=[["starts-with", "$tagging", ""]])
    r = post(p["url"], encode_form(p["fields"], b"posted"))
    assert r.status == 400
