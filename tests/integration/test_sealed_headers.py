"""Sealed system headers (issue 15 item 1, docs/FORMAT.md 8 ``"h"``): ``seal_headers`` per bucket.

A bucket that seals Content-Type, Content-Disposition and Content-Language keeps the client's
values inside the sealed block: the backend stores ``application/octet-stream`` and neither of
the others; HEAD and GET (whole, ranged) answer the client's values; ``response-content-*``
overrides still win; CopyObject (COPY, REPLACE, into a bucket that does not seal them) and
multipart keep them; a bucket without the setting is unchanged.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Backend, Proxy, empty_and_delete_bucket, proxy_settings, start_proxy, stop_proxy
from tests.integration.helpers import MiB, multipart_upload

pytestmark = pytest.mark.needs("aws_responses")

MARK = "hq7hdrmark"
SEALS = "hsealed-" + uuid.uuid4().hex[:10]
PLAIN = "hplain-" + uuid.uuid4().hex[:10]
CT = f"text/x-{MARK}; charset=utf-8"
CD = f'attachment; filename="{MARK}.pdf"'
CL = f"x-{MARK}"
HEADERS = {"ContentType": CT, "ContentDisposition": CD, "ContentLanguage": CL}


@pytest.fixture(scope="module")
def hproxy(backend: Backend) -> Iterator[Proxy]:
    buckets = {SEALS: {"seal_headers": ["Content-Type", "content-disposition", "content-language"], "tags": "sealed"}}
    p = start_proxy(proxy_settings(backend, buckets=buckets))
    s3 = p.client()
    for b in (SEALS, PLAIN):
        s3.create_bucket(Bucket=b)
    yield p
    for b in (SEALS, PLAIN):
        empty_and_delete_bucket(s3, b)
    stop_proxy(p)


@pytest.fixture()
def c(hproxy: Proxy) -> Any:
    return hproxy.client()


def assert_headers(r: dict[str, Any], expected: dict[str, str] = HEADERS) -> None:
    for name, value in expected.items():
        assert r.get(name) == value, (name, r.get(name))


def assert_backend_sees_none(raw: Any, backend: Backend, bucket: str, key: str) -> None:
    head = raw.head_object(Bucket=bucket, Key=key)
    hdrs = head["ResponseMetadata"]["HTTPHeaders"]
    assert MARK not in repr(hdrs).lower(), hdrs
    assert hdrs.get("content-type") == "application/octet-stream"
    assert "content-disposition" not in hdrs and "content-language" not in hdrs
    got = raw.get_object(Bucket=bucket, Key=key)
    assert MARK not in repr(got["ResponseMetadata"]["HTTPHeaders"]).lower()
    got["Body"].read()
    if backend.kind == "strict":
        dirs = list(Path(tempfile.gettempdir()).glob(f"s3proxy-strict-*/data/{bucket}"))
        files = [p for d in dirs for p in d.rglob("*") if p.is_file()]
        assert files
        for f in files:
            assert MARK.encode() not in f.read_bytes().lower(), f


def test_put_head_get(c: Any, raw: Any, backend: Backend) -> None:
    body = bytes(range(256)) * 100
    c.put_object(Bucket=SEALS, Key="doc", Body=body, **HEADERS)
    assert_headers(c.head_object(Bucket=SEALS, Key="doc"))
    whole = c.get_object(Bucket=SEALS, Key="doc")
    assert_headers(whole)
    assert whole["Body"].read() == body
    part = c.get_object(Bucket=SEALS, Key="doc", Range="bytes=10-19")
    assert_headers(part)
    assert part["Body"].read() == body[10:20]
    assert_backend_sees_none(raw, backend, SEALS, "doc")


def test_response_overrides_still_win(c: Any) -> None:
    c.put_object(Bucket=SEALS, Key="ovr", Body=b"x", **HEADERS)
    got = c.get_object(Bucket=SEALS, Key="ovr", ResponseContentType="image/png", ResponseContentDisposition="inline",
                       ResponseContentLanguage="de")
    assert (got["ContentType"], got["ContentDisposition"], got["ContentLanguage"]) == ("image/png", "inline", "de")
    head = c.head_object(Bucket=SEALS, Key="ovr", ResponseContentType="image/png")
    assert head["ContentType"] == "image/png" and head["ContentDisposition"] == CD


def test_unset_headers_are_the_backends(c: Any) -> None:
    c.put_object(Bucket=SEALS, Key="bare", Body=b"x")
    head = c.head_object(Bucket=SEALS, Key="bare")
    assert head["ContentType"] == "application/octet-stream"
    assert "ContentDisposition" not in head and "ContentLanguage" not in head


def test_multipart(c: Any, raw: Any, backend: Backend) -> None:
    multipart_upload(c, SEALS, "mp", [b"a" * (5 * MiB), b"b"], **HEADERS)
    assert_headers(c.head_object(Bucket=SEALS, Key="mp"))
    assert_headers(c.get_object(Bucket=SEALS, Key="mp", Range="bytes=0-0"))
    assert_backend_sees_none(raw, backend, SEALS, "mp")


@pytest.mark.parametrize("layout", ["S", "K"])
def test_copies(c: Any, raw: Any, backend: Backend, layout: str) -> None:
    src = "src-" + layout
    if layout == "S":
        c.put_object(Bucket=SEALS, Key=src, Body=b"copy me", **HEADERS)
    else:
        multipart_upload(c, SEALS, src, [b"c" * (5 * MiB), b"d"], **HEADERS)
    c.copy_object(Bucket=SEALS, Key=src + "-copy", CopySource={"Bucket": SEALS, "Key": src})
    assert_headers(c.head_object(Bucket=SEALS, Key=src + "-copy"))
    assert_backend_sees_none(raw, backend, SEALS, src + "-copy")
    new = {"ContentType": f"application/x-{MARK}2", "ContentDisposition": "inline", "ContentLanguage": "fr"}
    c.copy_object(Bucket=SEALS, Key=src + "-repl", CopySource={"Bucket": SEALS, "Key": src},
                  MetadataDirective="REPLACE", **new)
    assert_headers(c.head_object(Bucket=SEALS, Key=src + "-repl"), new)
    assert_backend_sees_none(raw, backend, SEALS, src + "-repl")
    # into a bucket that does not seal headers: once sealed, never written back in plaintext
    c.copy_object(Bucket=PLAIN, Key=src, CopySource={"Bucket": SEALS, "Key": src})
    assert_headers(c.head_object(Bucket=PLAIN, Key=src))
    assert MARK not in repr(raw.head_object(Bucket=PLAIN, Key=src)["ResponseMetadata"]["HTTPHeaders"]).lower()
    # retagging (a metadata-only self-copy) keeps them too
    c.put_object_tagging(Bucket=SEALS, Key=src, Tagging={"TagSet": [{"Key": "a", "Value": "b"}]})
    assert_headers(c.head_object(Bucket=SEALS, Key=src))
    assert_backend_sees_none(raw, backend, SEALS, src)


def test_plain_bucket_unchanged(c: Any, raw: Any) -> None:
    c.put_object(Bucket=PLAIN, Key="p", Body=b"x", **HEADERS)
    hdrs = raw.head_object(Bucket=PLAIN, Key="p")["ResponseMetadata"]["HTTPHeaders"]
    assert hdrs["content-type"] == CT and hdrs["content-disposition"] == CD and hdrs["content-language"] == CL
    assert_headers(c.head_object(Bucket=PLAIN, Key="p"))


@pytest.mark.needs("multipart_etags")
def test_rewrap_keeps_sealed_headers_and_tags(backend: Backend, raw: Any, tmp_path: Path) -> None:
    """``s3proxy rewrap`` re-seals every member of the sealed block under the new binding."""
    from tests.integration.keyfixtures import local_keys, rewrap, with_keys

    bucket = "hrewrap-" + uuid.uuid4().hex[:10]
    settings = with_keys(proxy_settings(backend, buckets={bucket: {"seal_headers": ["content-type"], "tags": "sealed"}}),
                         local_keys("k1", "k2", default="k1"))
    p = start_proxy(settings)
    try:
        c = p.client()
        c.create_bucket(Bucket=bucket)
        c.put_object(Bucket=bucket, Key="s", Body=b"single", ContentType=CT, Tagging=f"t={MARK}")
        multipart_upload(c, bucket, "k", [b"a" * (5 * MiB), b"b"], ContentType=CT, Tagging=f"t={MARK}")
        run = rewrap(settings, bucket, "k2", state_file=tmp_path / "state.json")
        assert run.code == 0, run.out + run.err
        assert "2 re-wrapped" in run.out
        for key in ("s", "k"):
            head = c.head_object(Bucket=bucket, Key=key)
            assert head["ContentType"] == CT and head["TagCount"] == 1
            assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-server-side-encryption-aws-kms-key-id"] == "k2"
            got = c.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
            assert got == [{"Key": "t", "Value": MARK}]
            assert_backend_sees_none_but_type(raw, bucket, key)
    finally:
        empty_and_delete_bucket(p.client(), bucket)
        stop_proxy(p)


def assert_backend_sees_none_but_type(raw: Any, bucket: str, key: str) -> None:
    head = raw.head_object(Bucket=bucket, Key=key)
    assert MARK not in repr(head["ResponseMetadata"]["HTTPHeaders"]).lower()
    assert head["ContentType"] == "application/octet-stream"
    assert raw.get_object_tagging(Bucket=bucket, Key=key)["TagSet"] == []
