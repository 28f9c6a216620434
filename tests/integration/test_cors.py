"""CORS: unsigned OPTIONS preflights answered from the bucket's CORS configuration, as S3 does.

Also: normal requests carrying ``Origin`` get the backend's CORS response headers.
"""

from __future__ import annotations

import contextlib

import pytest

from tests.integration.helpers import assert_s3_error, object_url, send

RULES = [
    {
        "AllowedOrigins": ["https://app.example.com"],
        "AllowedMethods": ["GET", "PUT"],
        "AllowedHeaders": ["Content-Type", "x-amz-meta-*"],
        "ExposeHeaders": ["ETag", "x-amz-request-id"],
        "MaxAgeSeconds": 600,
    },
    {"AllowedOrigins": ["https://*.wild.example"], "AllowedMethods": ["DELETE"], "AllowedHeaders": ["*"]},
    {"AllowedOrigins": ["*"], "AllowedMethods": ["HEAD"]},
]


def preflight(proxy, bucket, key=None, *, origin="https://app.example.com", method="GET", headers=None):
    h = {}
    if origin is not None:
        h["Origin"] = origin
    if method is not None:
        h["Access-Control-Request-Method"] = method
    if headers is not None:
        h["Access-Control-Request-Headers"] = headers
    return send("OPTIONS", object_url(proxy.url, bucket, key), h)


@pytest.fixture()
def cors_bucket(s3, bucket):
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": RULES})
    return bucket


@pytest.mark.needs("bucket_config")
@pytest.mark.smoke
def test_allowed_preflight(proxy, cors_bucket):
    sent = proxy.state.backend.requests_sent
    r = preflight(proxy, cors_bucket, method="PUT", headers="content-type, X-Amz-Meta-Colour")
    assert r.status == 200, r.body
    assert r.header("access-control-allow-origin") == "https://app.example.com"
    assert r.header("access-control-allow-credentials") == "true"
    assert r.header("access-control-allow-methods") == "GET, PUT"
    assert r.header("access-control-allow-headers") == "content-type, x-amz-meta-colour"
    assert r.header("access-control-expose-headers") == "ETag, x-amz-request-id"
    assert r.header("access-control-max-age") == "600"
    assert "Origin" in r.header("vary")
    assert r.header("x-amz-request-id")
    assert r.body == b""
    # Only the proxy's own GET ?cors reached the backend; a second preflight is served from the cache.
    assert proxy.state.backend.requests_sent == sent + 1
    assert preflight(proxy, cors_bucket).status == 200
    assert proxy.state.backend.requests_sent == sent + 1


@pytest.mark.needs("bucket_config")
def test_key_path_and_wildcards(proxy, cors_bucket):
    r = preflight(proxy, cors_bucket, "some/key.txt", origin="https://a.b.wild.example", method="DELETE",
                  headers="X-Anything, authorization")
    assert r.status == 200, r.body
    assert r.header("access-control-allow-origin") == "https://a.b.wild.example"
    assert r.header("access-control-allow-methods") == "DELETE"
    assert r.header("access-control-allow-headers") == "x-anything, authorization"
    assert r.header("access-control-max-age") is None
    # AllowedOrigin "*": any origin, answered with "*" and without credentials.
    r = preflight(proxy, cors_bucket, "k", origin="https://elsewhere.test", method="HEAD")
    assert r.status == 200, r.body
    assert r.header("access-control-allow-origin") == "*"
    assert r.header("access-control-allow-credentials") is None
    # ... but a rule without AllowedHeader allows no requested header.
    assert_s3_error(preflight(proxy, cors_bucket, origin="https://elsewhere.test", method="HEAD", headers="x-y"),
                    403, "AccessForbidden")


@pytest.mark.parametrize("kw", [
    {"origin": "https://evil.example.com"},                      # origin
    {"origin": "https://APP.example.com"},                       # origins are case-sensitive
    {"origin": "https://wild.example", "method": "DELETE"},      # "*." needs a subdomain
    {"method": "DELETE"},                                        # method
    {"method": "get"},                                           # methods are exact
    {"method": "PUT", "headers": "content-type, x-custom"},      # one header not allowed
])
@pytest.mark.needs("bucket_config")
def test_refused_preflight(proxy, cors_bucket, kw):
    err = assert_s3_error(preflight(proxy, cors_bucket, "k", **kw), 403, "AccessForbidden")
    assert err["Message"].startswith("CORSResponse: This CORS request is not allowed.")


@pytest.mark.needs("bucket_config")
def test_no_cors_configuration(proxy, bucket):
    assert_s3_error(preflight(proxy, bucket), 403, "AccessForbidden")
    assert_s3_error(preflight(proxy, bucket + "-missing", "k"), 403, "AccessForbidden")


@pytest.mark.needs("bucket_config")
@pytest.mark.parametrize("kw", [{"origin": None}, {"method": None}, {"origin": None, "method": None}])
def test_insufficient_information(proxy, cors_bucket, kw):
    err = assert_s3_error(preflight(proxy, cors_bucket, "k", **kw), 400, "BadRequest")
    assert err["Message"] == "Insufficient information. Origin request header needed."


def test_service_options_still_needs_signature(proxy):
    r = send("OPTIONS", proxy.url + "/", {"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"})
    assert r.status == 403


def _cors_headers(resp):
    return {k.lower(): v for k, v in resp["ResponseMetadata"]["HTTPHeaders"].items()
            if k.lower().startswith("access-control-")}


def _with_origin(s3, origin):
    def add(request, **_):
        request.headers["Origin"] = origin

    s3.meta.events.register("before-sign.s3.*", add)


@pytest.mark.needs("bucket_config")
def test_actual_request_passthrough(proxy, s3):
    """A normal request with Origin on a passthrough bucket: the backend's CORS headers reach the client."""
    name = "plain-passthrough"
    with contextlib.suppress(Exception):
        s3.create_bucket(Bucket=name)
    s3.put_bucket_cors(Bucket=name, CORSConfiguration={"CORSRules": RULES})
    try:
        c = proxy.client()
        _with_origin(c, "https://app.example.com")
        put = c.put_object(Bucket=name, Key="cors-k", Body=b"hello")
        got = c.get_object(Bucket=name, Key="cors-k")
        assert got["Body"].read() == b"hello"
        for resp in (put, got):
            assert _cors_headers(resp).get("access-control-allow-origin") == "https://app.example.com", resp
    finally:
        s3.delete_object(Bucket=name, Key="cors-k")
        s3.delete_bucket_cors(Bucket=name)


@pytest.mark.needs("bucket_config")
@pytest.mark.smoke
def test_actual_request_encrypted(proxy, cors_bucket):
    """The same on an encrypted bucket: PUT and GET forward Origin (objects.read_headers)."""
    c = proxy.client()
    _with_origin(c, "https://app.example.com")
    put = c.put_object(Bucket=cors_bucket, Key="k", Body=b"secret")
    got = c.get_object(Bucket=cors_bucket, Key="k")
    assert got["Body"].read() == b"secret"
    assert _cors_headers(put).get("access-control-allow-origin") == "https://app.example.com"
    # moto adds "Access-Control-Allow-Origin: *" to every GetObject answer, with or without Origin;
    # S3 adds the rule's headers only when the request carries Origin.
    assert _cors_headers(got).get("access-control-allow-origin") in ("https://app.example.com", "*")
    head = c.head_object(Bucket=cors_bucket, Key="k")
    assert _cors_headers(head).get("access-control-allow-origin") in ("https://app.example.com", "*")


def test_rules_parsing_and_matching():
    from s3proxy.aws.errors import S3Error
    from s3proxy.http import cors

    doc = (b'<?xml version="1.0" encoding="UTF-8"?><CORSConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
           b"<CORSRule><ID>r1</ID><AllowedOrigin>http://*.a.test</AllowedOrigin><AllowedMethod>GET</AllowedMethod>"
           b"<AllowedHeader>X-*</AllowedHeader><MaxAgeSeconds>5</MaxAgeSeconds></CORSRule>"
           b"<CORSRule><AllowedMethod>PUT</AllowedMethod></CORSRule></CORSConfiguration>")
    rules = cors.parse_config(doc)
    assert rules == [cors.Rule(("http://*.a.test",), ("GET",), ("x-*",), (), 5)]  # a rule without origin never matches
    assert cors.match(rules, "http://b.a.test", "GET", ["x-one"]) is rules[0]
    assert cors.match(rules, "http://b.a.test", "GET", ["y"]) is None
    assert cors.wildcard_match("a*b*c", "aXbYc") and not cors.wildcard_match("ab*ba", "aba")
    hostile = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "boom">]><CORSConfiguration>&e;</CORSConfiguration>'
    for bad in (hostile, doc.replace(b"5<", b"five<"), b"<Other/>", "<CORSConfiguration/>".encode("utf-16")[:7]):
        with pytest.raises(S3Error):
            cors.parse_config(bad)
