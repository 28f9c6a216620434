"""Bad input from anonymous and authenticated clients: always a 4xx S3 error, never a 500,
never a hang, and the proxy keeps serving (issue 9, finding 7 and "no 500 from bad input")."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import CLIENT_AK, CLIENT_SK
from tests.integration.helpers import object_url, send, send_raw, send_signed, sign

SUP2 = "%C2%B2"  # '²': str.isdigit() says yes, int() says no
ARABIC3 = "%D9%A3"  # '٣': int() accepts it, S3 does not


@pytest.fixture(scope="module")
def bucket_name(attack_proxy: Any) -> Any:
    c = attack_proxy.client(CLIENT_AK, CLIENT_SK)
    name = "adv-" + uuid.uuid4().hex[:12]
    c.create_bucket(Bucket=name)
    c.put_object(Bucket=name, Key="k", Body=b"hello world")
    yield name
    for o in c.list_objects_v2(Bucket=name).get("Contents", []):
        c.delete_object(Bucket=name, Key=o["Key"])
    c.delete_bucket(Bucket=name)


ANONYMOUS = [
    ("GET", "k", f"Expires={SUP2}&AWSAccessKeyId=AKIDS3PROXYTEST00001&Signature=abc", {}),
    ("GET", "k", f"Expires={ARABIC3}&AWSAccessKeyId=AKIDS3PROXYTEST00001&Signature=abc", {}),
    ("GET", "k", "Expires=+1&AWSAccessKeyId=AKIDS3PROXYTEST00001&Signature=abc", {}),
    ("GET", "k", "Expires=99999999999999999999999999999&AWSAccessKeyId=AKIDS3PROXYTEST00001&Signature=abc", {}),
    ("GET", "k", f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDS3PROXYTEST00001%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20260101T000000Z&X-Amz-Expires={SUP2}&X-Amz-SignedHeaders=host&X-Amz-Signature=00", {}),
    ("GET", "k", "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=x&X-Amz-Date=2026&X-Amz-Expires=1&X-Amz-SignedHeaders=host&X-Amz-Signature=00", {}),
    ("GET", "k", f"partNumber={SUP2}", {}),
    ("GET", "k", "", {"Authorization": "AWS4-HMAC-SHA256 garbage"}),
    ("GET", "k", "", {"Authorization": "AWS4-HMAC-SHA256 Credential=A/B/C/D/E, SignedHeaders=host, Signature=zz"}),
    ("GET", "k", "", {"Authorization": "AWS " + "x" * 50}),
    ("GET", "k", "", {"Authorization": "Bearer abc"}),
    ("GET", "k", "", {"Authorization": "AWS4-HMAC-SHA256 Credential=\u00b2"}),
    ("PUT", "k", "", {"Content-Length": "5"}),
    ("GET", None, "max-keys=%C2%B2", {}),
    ("GET", None, "", {"x-amz-date": "\u00b2\u00b2"}),
    ("DELETE", "k", "uploadId=%7E", {}),
]


@pytest.mark.parametrize(("method", "key", "query", "headers"), ANONYMOUS)
def test_anonymous_bad_input_is_4xx(attack_proxy: Any, bucket_name: str, method: str, key: str | None,
                                    query: str, headers: dict[str, str]) -> None:
    url = object_url(attack_proxy.url, bucket_name, key) + (("?" + query) if query else "")
    body = b"hello" if method == "PUT" else None
    r = send(method, url, {k: v.encode("utf-8").decode("latin-1") for k, v in headers.items()}, body)
    assert r.status is not None and 400 <= r.status < 500, (r.status, r.body)
    if method != "HEAD":
        assert r.error()["Code"]
    assert send("GET", attack_proxy.url + "/").status == 403  # still serving


SIGNED = [
    ("GET", "k", [("partNumber", "\u00b2")], {}),
    ("GET", "k", [("partNumber", "\u0663")], {}),
    ("GET", "k", [("partNumber", "+1")], {}),
    ("GET", "k", [("partNumber", " 1")], {}),
    ("GET", "k", [("partNumber", "1_0")], {}),
    ("GET", "k", [("partNumber", "9" * 40)], {}),
    ("HEAD", "k", [("partNumber", "\u00b2")], {}),
    ("PUT", "k", [("partNumber", "\u00b2"), ("uploadId", "x~y")], {}),
    ("PUT", "k", [("partNumber", "1"), ("uploadId", "\u00b2")], {}),
    ("GET", "k", [], {"Range": "bytes=\u00b2-3"}),
    ("GET", "k", [], {"Range": "bytes=\u0663-"}),
    ("GET", "k", [], {"Range": "bytes=-\u00b2"}),
    ("GET", "k", [], {"Range": "bytes=1-2,3-4"}),
    ("GET", "k", [], {"Range": "bytes=" + "9" * 400 + "-"}),
    ("GET", None, [("max-keys", "\u00b2")], {}),
    ("GET", None, [("list-type", "2"), ("max-keys", "\u0663")], {}),
    ("PUT", "k2", [], {"x-amz-copy-source": "/nobucket\u00b2/k"}),
    ("PUT", "k2", [], {"x-amz-copy-source": ""}),
    ("PUT", "k2", [], {"x-amz-copy-source": "%"}),
    ("GET", "k", [], {"If-Modified-Since": "\u00b2"}),
]


@pytest.mark.parametrize(("method", "key", "query", "headers"), SIGNED)
def test_signed_bad_input_is_4xx(attack_proxy: Any, bucket_name: str, method: str, key: str | None,
                                 query: list[tuple[str, str]], headers: dict[str, str]) -> None:
    hdrs = {k: v.encode("utf-8").decode("latin-1") for k, v in headers.items()}
    req = sign(method, object_url(attack_proxy.url, bucket_name, key, query), CLIENT_AK, CLIENT_SK, headers=hdrs)
    r = send_signed(req)
    assert r.status is not None, r.exc
    assert r.status < 500, (r.status, r.body)
    assert send("GET", attack_proxy.url + "/").status == 403


@pytest.mark.parametrize(
    "content_length", ["\u00b2", "+5", " 5", "5_0", "-1", "1e3", "99999999999999999999999999"]
)
def test_bad_content_length_is_4xx(attack_proxy: Any, bucket_name: str, content_length: str) -> None:
    target = f"/{bucket_name}/k"
    head = (f"PUT {target} HTTP/1.1\r\nHost: 127.0.0.1:{attack_proxy.port}\r\n"
            f"Content-Length: {content_length}\r\nConnection: close\r\n\r\nhello").encode()
    r = send_raw(attack_proxy, head, timeout=10)
    assert r.status is not None and 400 <= r.status < 500, (r.status, r.body)
