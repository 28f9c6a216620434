"""SigV4: AWS's published vectors, real client signers (botocore, MinIO), every error."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials as BotoCredentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from minio.credentials import Credentials as MinioCredentials
from minio.helpers import BaseURL
from minio.signer import presign_v4, sign_v4_s3

from s3proxy.aws.sigv4 import (
    EMPTY_SHA256,
    AuthResult,
    RequestView,
    SigV4Error,
    canonical_query,
    canonical_uri,
    chunk_signature,
    derive_signing_key,
    encode_query,
    presign_url,
    sign_request,
    trailer_signature,
    uri_encode,
    verify_request,
)

AK = "AKIAIOSFODNN7EXAMPLE"
SK = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
HOST = "examplebucket.s3.amazonaws.com"
T0 = datetime(2013, 5, 24, tzinfo=UTC)
AMZ0 = "20130524T000000Z"
SCOPE0 = "20130524/us-east-1/s3/aws4_request"


def lookup(ak: str) -> str | None:
    return SK if ak == AK else None


def auth_header(signed: str, signature: str, *, ak: str = AK, scope: str = SCOPE0) -> tuple[str, str]:
    return ("Authorization", f"AWS4-HMAC-SHA256 Credential={ak}/{scope},SignedHeaders={signed},Signature={signature}")


def verify(
    method: str,
    path: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    now: datetime = T0,
    **kw: Any,
) -> AuthResult | None:
    return verify_request(RequestView(method, path, query, list(headers)), lookup, now, **kw)


def fails(code: str, status: int, fn: Callable[[], object]) -> SigV4Error:
    with pytest.raises(SigV4Error) as info:
        fn()
    err = info.value
    assert (err.code, err.status) == (code, status), (err.code, err.status, err.message)
    # Secrets never leak into what is reported.
    assert SK not in str(err) and SK not in err.message and all(SK not in v for _, v in err.details)
    return err


# --------------------------------------------------------------------------
# AWS's published examples ("Signature Calculations for the Authorization
# Header: Transferring Payload in a Single Chunk", "...Query Parameters",
# "...Multiple Chunks", "...Including Trailing Headers")

GET_OBJECT = (
    "GET",
    "/test.txt",
    "",
    [("Host", HOST), ("Range", "bytes=0-9"), ("x-amz-content-sha256", EMPTY_SHA256), ("x-amz-date", AMZ0)],
    "host;range;x-amz-content-sha256;x-amz-date",
    "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
)
PUT_HASH = "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
PUT_OBJECT = (
    "PUT",
    "/test$file.text",
    "",
    [
        ("Host", HOST),
        ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
        ("x-amz-date", AMZ0),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("x-amz-content-sha256", PUT_HASH),
    ],
    "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class",
    "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
)
GET_LIFECYCLE = (
    "GET",
    "/",
    "lifecycle",
    [("Host", HOST), ("x-amz-content-sha256", EMPTY_SHA256), ("x-amz-date", AMZ0)],
    "host;x-amz-content-sha256;x-amz-date",
    "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
)
LIST_OBJECTS = (
    "GET",
    "/",
    "max-keys=2&prefix=J",
    [("Host", HOST), ("x-amz-content-sha256", EMPTY_SHA256), ("x-amz-date", AMZ0)],
    "host;x-amz-content-sha256;x-amz-date",
    "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
)
CHUNKED_SEED = (
    "PUT",
    "/examplebucket/chunkObject.txt",
    "",
    [
        ("Host", "s3.amazonaws.com"),
        ("x-amz-date", AMZ0),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
        ("Content-Encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", "66560"),
        ("Content-Length", "66824"),
    ],
    "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;"
    "x-amz-storage-class",
    "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
)
TRAILER_SEED = (
    "PUT",
    "/examplebucket/chunkObject.txt",
    "",
    [
        ("Host", "s3.amazonaws.com"),
        ("x-amz-date", AMZ0),
        ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
        ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"),
        ("Content-Encoding", "aws-chunked"),
        ("x-amz-decoded-content-length", "66560"),
        ("x-amz-trailer", "x-amz-checksum-crc32c"),
    ],
    "content-encoding;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class;"
    "x-amz-trailer",
    "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
)
AWS_EXAMPLES = [GET_OBJECT, PUT_OBJECT, GET_LIFECYCLE, LIST_OBJECTS, CHUNKED_SEED, TRAILER_SEED]
AWS_IDS = ["get-object", "put-object", "get-lifecycle", "list-objects", "chunked-seed", "trailer-seed"]
PRESIGNED_SIGNATURE = "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"


@pytest.mark.parametrize("example", AWS_EXAMPLES, ids=AWS_IDS)
def test_aws_examples_verify(example: tuple[Any, ...]) -> None:
    method, path, query, headers, signed, signature = example
    result = verify(method, path, query, [*headers, auth_header(signed, signature)])
    assert result is not None
    assert result.signature == signature
    assert result.access_key == AK
    assert (result.amz_date, result.scope, result.region, result.presigned) == (AMZ0, SCOPE0, "us-east-1", False)
    assert result.payload_hash == dict((k.lower(), v) for k, v in headers)["x-amz-content-sha256"]
    assert result.signing_key == derive_signing_key(SK, "20130524", "us-east-1", "s3")


@pytest.mark.parametrize("example", AWS_EXAMPLES, ids=AWS_IDS)
def test_aws_examples_sign(example: tuple[Any, ...]) -> None:
    method, path, query, headers, signed, signature = example
    lower = {k.lower(): v for k, v in headers}
    to_sign = {k: v for k, v in lower.items() if k in signed.split(";")}
    pairs = [(n, v) for n, _, v in (p.partition("=") for p in query.split("&") if p)]
    added = sign_request(method, path, pairs, to_sign, lower["x-amz-content-sha256"], AK, SK, "us-east-1", T0)
    assert added["x-amz-date"] == AMZ0
    assert added["x-amz-content-sha256"] == lower["x-amz-content-sha256"]
    assert added["Authorization"] == (
        f"AWS4-HMAC-SHA256 Credential={AK}/{SCOPE0}, SignedHeaders={signed}, Signature={signature}"
    )


def test_aws_presigned_example() -> None:
    url = presign_url("GET", "/test.txt", [], HOST, AK, SK, "us-east-1", T0, 86400)
    assert url == (
        "/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2F"
        "us-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
        f"&X-Amz-Signature={PRESIGNED_SIGNATURE}"
    )
    path, _, query = url.partition("?")
    result = verify("GET", path, query, [("Host", HOST)], now=T0 + timedelta(hours=23))
    assert result is not None and result.presigned
    assert (result.payload_hash, result.signature, result.amz_date) == ("UNSIGNED-PAYLOAD", PRESIGNED_SIGNATURE, AMZ0)


def test_aws_chunk_and_trailer_signature_vectors() -> None:
    key = derive_signing_key(SK, "20130524", "us-east-1", "s3")
    sig1 = chunk_signature(key, AMZ0, SCOPE0, CHUNKED_SEED[5], hashlib.sha256(b"a" * 65536).hexdigest())
    assert sig1 == "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
    sig2 = chunk_signature(key, AMZ0, SCOPE0, sig1, hashlib.sha256(b"a" * 1024).hexdigest())
    assert sig2 == "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
    assert chunk_signature(key, AMZ0, SCOPE0, sig2, EMPTY_SHA256) == (
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
    )
    final = "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992"
    assert trailer_signature(key, AMZ0, SCOPE0, final, b"x-amz-checksum-crc32c:sOO8/Q==\n") == (
        "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435"
    )


# --------------------------------------------------------------------------
# Canonical forms


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("", "/"),
        ("/", "/"),
        ("/test$file.text", "/test%24file.text"),
        ("/a%7Eb/c~d/%7e", "/a~b/c~d/~"),
        ("/a b", "/a%20b"),
        ("/a%20b+c", "/a%20b%2Bc"),
        ("/a%2Bb", "/a%2Bb"),
        ("/a%2520b", "/a%2520b"),  # decoded once: no double decoding
        ("/b//k", "/b//k"),  # no normalisation
        ("/b/./../k", "/b/./../k"),
        ("/b/%2Fk", "/b//k"),
        ("/%C3%BC%E6%96%87", "/%C3%BC%E6%96%87"),
        ("/ü", "/%C3%BC"),
        ("/%c3%bc", "/%C3%BC"),
        ("/100%", "/100%25"),
        ("/!'()*", "/%21%27%28%29%2A"),
    ],
)
def test_canonical_uri(raw: str, canonical: str) -> None:
    assert canonical_uri(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("", ""),
        ("acl", "acl="),
        ("prefix=J&max-keys=2", "max-keys=2&prefix=J"),
        ("a=2&a=1&b=&a", "a=&a=1&a=2&b="),
        ("a-b=1&a=2", "a=2&a-b=1"),  # sorted by name, then value, not by "name=value"
        ("p=a+b", "p=a%20b"),  # '+' is a space in a query
        ("p=a%2Bb", "p=a%2Bb"),
        ("p=a/b~c%7e", "p=a%2Fb~c~"),
        ("p=%c3%bc", "p=%C3%BC"),
        ("x&&y=1&", "x=&y=1"),
        ("k=v=w", "k=v%3Dw"),
    ],
)
def test_canonical_query(raw: str, canonical: str) -> None:
    assert canonical_query(raw) == canonical


def test_canonical_query_excludes_signature_only_when_asked() -> None:
    raw = "X-Amz-Signature=abc&b=1&X-Amz-Date=x"
    assert canonical_query(raw) == "X-Amz-Date=x&X-Amz-Signature=abc&b=1"
    assert canonical_query(raw, exclude_signature=True) == "X-Amz-Date=x&b=1"


def test_uri_encode_and_encode_query() -> None:
    assert uri_encode("a b/c~d+e") == "a%20b%2Fc~d%2Be"
    assert uri_encode("a b/c", keep_slash=True) == "a%20b/c"
    assert encode_query([("z", "1"), ("a", "x y"), ("a", "")]) == "a=&a=x%20y&z=1"


# --------------------------------------------------------------------------
# Real clients: botocore (through a real boto3 client and its signers) and MinIO

KEYS = [
    "plain.txt",
    "with space.txt",
    "plus+sign",
    "percent%20literal%",
    "tilde~file",
    "a//double//slash",
    "/leading-slash",
    "ünïcødé/文件 名.bin",
    "reserved!$&'()*,;=:@[]",
    "dots/./../x",
    "?question#hash",
]
QUERY_VALUES = ["a b+c/ü", "x=y&z", "100%", "~tilde", "", "semi;colon"]


class _Captured(Exception):
    def __init__(self, request: Any) -> None:
        self.request = request


def _to_str(v: str | bytes) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else v


def _view_of(request: Any) -> RequestView:
    parts = urlsplit(request.url)
    headers = [(k, _to_str(v)) for k, v in request.headers.items()]
    if not any(k.lower() == "host" for k, _ in headers):
        headers.append(("Host", parts.netloc))
    return RequestView(request.method, parts.path, parts.query, headers)


def _now_of(view: RequestView) -> datetime:
    amz = dict((k.lower(), v) for k, v in view.headers)["x-amz-date"]
    return datetime.strptime(amz, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


@pytest.fixture(scope="module", params=["path", "virtual"])
def boto_client(request: pytest.FixtureRequest) -> Iterator[Any]:
    client = boto3.client(
        "s3",
        endpoint_url="http://s3.local.test:9000",
        aws_access_key_id=AK,
        aws_secret_access_key=SK,
        region_name="eu-central-1",
        config=Config(s3={"addressing_style": request.param}, retries={"max_attempts": 1}, signature_version="s3v4"),
    )

    def capture(request: Any, **_: Any) -> None:
        raise _Captured(request)

    client.meta.events.register("before-send.s3.*", capture)
    yield client
    client.close()


def _boto_call(fn: Callable[..., object], **kwargs: Any) -> RequestView:
    with pytest.raises(_Captured) as info:
        fn(**kwargs)
    return _view_of(info.value.request)


@pytest.mark.parametrize("key", KEYS)
def test_boto3_put_get_head_delete(boto_client: Any, key: str) -> None:
    for fn, kwargs in [
        (boto_client.put_object, {"Body": b"hello", "Metadata": {"m": "v  with   spaces"}, "ContentType": "text/x"}),
        (boto_client.get_object, {"Range": "bytes=0-0"}),
        (boto_client.head_object, {}),
        (boto_client.delete_object, {}),
        (boto_client.put_object_tagging, {"Tagging": {"TagSet": [{"Key": "k", "Value": "v"}]}}),
        (boto_client.create_multipart_upload, {}),
        (boto_client.upload_part, {"UploadId": "u p+/=", "PartNumber": 3, "Body": b"x" * 100}),
    ]:
        view = _boto_call(fn, Bucket="bucket", Key=key, **kwargs)
        result = verify_request(view, lookup, _now_of(view))
        assert result is not None and result.region == "eu-central-1"


@pytest.mark.parametrize("value", QUERY_VALUES)
def test_boto3_list_with_encoded_query(boto_client: Any, value: str) -> None:
    view = _boto_call(
        boto_client.list_objects_v2, Bucket="bucket", Prefix=value, StartAfter=value, Delimiter="/", MaxKeys=7
    )
    assert verify_request(view, lookup, _now_of(view)) is not None
    view = _boto_call(boto_client.list_object_versions, Bucket="bucket", Prefix=value, KeyMarker=value)
    assert verify_request(view, lookup, _now_of(view)) is not None


def test_boto3_copy_and_bucket_operations(boto_client: Any) -> None:
    calls: list[tuple[Callable[..., object], dict[str, Any]]] = [
        (boto_client.copy_object, {"Bucket": "b", "Key": "dst key", "CopySource": {"Bucket": "s", "Key": "sr c+ü"}}),
        (boto_client.list_buckets, {}),
        (boto_client.get_bucket_location, {"Bucket": "b"}),
        (boto_client.delete_objects, {"Bucket": "b", "Delete": {"Objects": [{"Key": "a"}, {"Key": "b c"}]}}),
        (boto_client.put_bucket_versioning, {"Bucket": "b", "VersioningConfiguration": {"Status": "Enabled"}}),
    ]
    for fn, kwargs in calls:
        view = _boto_call(fn, **kwargs)
        assert verify_request(view, lookup, _now_of(view)) is not None


@pytest.mark.parametrize("key", KEYS)
def test_boto3_presigned_urls(boto_client: Any, key: str) -> None:
    for method, params in [
        ("get_object", {"Bucket": "bucket", "Key": key, "ResponseContentDisposition": "attachment; x=y+z"}),
        ("put_object", {"Bucket": "bucket", "Key": key}),
    ]:
        url = boto_client.generate_presigned_url(method, Params=params, ExpiresIn=3600)
        parts = urlsplit(url)
        http_method = "GET" if method == "get_object" else "PUT"
        now = datetime.now(UTC)
        result = verify_request(
            RequestView(http_method, parts.path, parts.query, [("Host", parts.netloc)]), lookup, now
        )
        assert result is not None and result.presigned and result.payload_hash == "UNSIGNED-PAYLOAD"
        # Valid until the expiry second, expired after.
        t = datetime.strptime(result.amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        view = RequestView(http_method, parts.path, parts.query, [("Host", parts.netloc)])
        assert verify_request(view, lookup, t + timedelta(seconds=3600)) is not None
        fails("AccessDenied", 403, lambda: verify_request(view, lookup, t + timedelta(seconds=3601)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.text(min_size=1, max_size=30),
    query=st.lists(st.tuples(st.text(min_size=1, max_size=8), st.text(max_size=8)), max_size=4),
    meta=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
)
def test_botocore_signer_property(key: str, query: list[tuple[str, str]], meta: str) -> None:
    key = key.replace("\x00", "")
    url = "https://host.test:8443/bucket/" + quote(key.encode("utf-8", "surrogatepass"), safe="/~")
    request = AWSRequest(method="PUT", url=url, params=query, headers={"x-amz-meta-m": meta}, data=b"body")
    S3SigV4Auth(BotoCredentials(AK, SK), "s3", "ap-south-1").add_auth(request)
    view = _view_of(request.prepare())
    assert verify_request(view, lookup, _now_of(view)) is not None


@settings(max_examples=40, deadline=None)
@given(key=st.text(min_size=1, max_size=30), expires=st.integers(min_value=1, max_value=604800))
def test_botocore_query_signer_property(key: str, expires: int) -> None:
    url = "http://localhost:9000/bucket/" + quote(key.encode("utf-8", "surrogatepass"), safe="/~")
    request = AWSRequest(method="GET", url=url, params={"versionId": key})
    S3SigV4QueryAuth(BotoCredentials(AK, SK), "s3", "us-west-2", expires=expires).add_auth(request)
    parts = urlsplit(request.prepare().url)
    view = RequestView("GET", parts.path, parts.query, [("host", parts.netloc)])
    # verify at the signing second: with expires=1, "now" could already be past the expiry
    signed_at = datetime.strptime(parse_qs(parts.query)["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    result = verify_request(view, lookup, signed_at)
    assert result is not None and result.presigned


def _minio_url(key: str | None, query: dict[str, str] | None = None, bucket: str | None = "bucket") -> Any:
    return BaseURL("http://127.0.0.1:9000", "us-east-1").build(
        method="GET", region="us-east-1", bucket_name=bucket, object_name=key, query_params=query
    )


@pytest.mark.parametrize("key", KEYS)
def test_minio_signer(key: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    for method, url, payload in [
        ("PUT", _minio_url(key), EMPTY_SHA256),
        ("GET", _minio_url(key, {"versionId": "v 1+2", "response-content-type": "a/b"}), "UNSIGNED-PAYLOAD"),
        ("GET", _minio_url(None, {"prefix": key, "list-type": "2", "delimiter": "/"}), EMPTY_SHA256),
    ]:
        headers: dict[str, Any] = {
            "Host": url.netloc,
            "x-amz-content-sha256": payload,
            "x-amz-date": now.strftime("%Y%m%dT%H%M%SZ"),
            "Content-Type": "application/octet-stream",
            "x-amz-meta-list": ["a", "  b   c "],
        }
        signed = sign_v4_s3(
            method=method,
            url=url,
            region="us-east-1",
            headers=headers,
            credentials=MinioCredentials(AK, SK),
            content_sha256=payload,
            date=now,
        )
        wire: list[tuple[str, str]] = []
        for name, value in signed.items():
            for v in value if isinstance(value, list) else [value]:
                wire.append((name, v))
        result = verify_request(RequestView(method, url.path, url.query, wire), lookup, now)
        assert result is not None and result.payload_hash == payload


@pytest.mark.parametrize("key", KEYS)
def test_minio_presigner(key: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    url = presign_v4(
        method="GET",
        url=_minio_url(key, {"response-cache-control": "no cache"}),
        region="us-east-1",
        credentials=MinioCredentials(AK, SK),
        date=now,
        expires=600,
    )
    view = RequestView("GET", url.path, url.query, [("Host", url.netloc)])
    result = verify_request(view, lookup, now + timedelta(seconds=600))
    assert result is not None and result.presigned
    fails("AccessDenied", 403, lambda: verify_request(view, lookup, now + timedelta(seconds=601)))


@settings(max_examples=60, deadline=None)
@given(
    key=st.text(min_size=1, max_size=40),
    # Auth parameter names (X-Amz-*, Signature, AWSAccessKeyId...) would make it a different request form.
    query=st.lists(
        st.tuples(
            st.text(min_size=1, max_size=10).filter(
                lambda k: k not in ("Signature", "AWSAccessKeyId", "Expires") and not k.lower().startswith("x-amz-")
            ),
            st.text(max_size=10),
        ),
        max_size=5,
    ),
    region=st.sampled_from(["us-east-1", "eu-west-3", "local", "garage"]),
)
def test_sign_request_round_trip(key: str, query: list[tuple[str, str]], region: str) -> None:
    path = "/bucket/" + uri_encode(key.encode("utf-8", "surrogatepass"), keep_slash=True)
    headers = {"Host": "backend:9000", "Content-Type": "x/y", "x-amz-meta-a": " spaced  value ", "User-Agent": "x"}
    now = datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)
    added = sign_request("POST", path, query, headers, EMPTY_SHA256, "backend-ak", "backend/sk+", region, now)
    wire = [*headers.items(), *added.items(), ("User-Agent", "rewritten"), ("Expect", "100-continue")]
    result = verify_request(
        RequestView("POST", path, encode_query(query), wire), lambda ak: "backend/sk+", now
    )
    assert result is not None and (result.region, result.access_key) == (region, "backend-ak")


def test_sign_request_rules() -> None:
    with pytest.raises(ValueError, match="host"):
        sign_request("GET", "/", [], {"x-amz-meta-a": "1"}, EMPTY_SHA256, AK, SK, "us-east-1", T0)
    with pytest.raises(ValueError, match="twice"):
        sign_request("GET", "/", [], {"Host": "a", "host": "b"}, EMPTY_SHA256, AK, SK, "us-east-1", T0)
    added = sign_request(
        "GET",
        "/",
        [],
        {"Host": "h", "x-amz-date": "stale", "Authorization": "old", "Transfer-Encoding": "chunked"},
        "UNSIGNED-PAYLOAD",
        AK,
        SK,
        "us-east-1",
        T0.replace(tzinfo=None),  # naive datetimes are UTC
    )
    assert "SignedHeaders=host;x-amz-content-sha256;x-amz-date," in added["Authorization"]
    assert added["x-amz-date"] == AMZ0
    with pytest.raises(ValueError):
        presign_url("GET", "/", [], "h", AK, SK, "us-east-1", T0, 604801)


# --------------------------------------------------------------------------
# Anonymous and errors


def _get_example(**replace: str) -> list[tuple[str, str]]:
    _, _, _, headers, signed, signature = GET_OBJECT
    out = [(k, replace.get(k.lower(), v)) for k, v in headers]
    return [*out, auth_header(signed, signature)]


def test_anonymous_request() -> None:
    assert verify("GET", "/b/k", "versionId=3&x-id=GetObject", [("Host", HOST)]) is None
    assert verify("GET", "/b/k", "X-Amz-Date=20130524T000000Z", [("Host", HOST)]) is None


def test_unknown_access_key() -> None:
    headers = [*GET_OBJECT[3], auth_header(GET_OBJECT[4], GET_OBJECT[5], ak="AKIDUNKNOWN")]
    err = fails("InvalidAccessKeyId", 403, lambda: verify("GET", "/test.txt", "", headers))
    assert ("AWSAccessKeyId", "AKIDUNKNOWN") in err.details


@pytest.mark.parametrize(
    ("what", "method", "path", "query", "headers"),
    [
        ("method", "HEAD", "/test.txt", "", _get_example()),
        ("path", "GET", "/test.txt2", "", _get_example()),
        ("path-case", "GET", "/Test.txt", "", _get_example()),
        ("query", "GET", "/test.txt", "versionId=1", _get_example()),
        ("signed header value", "GET", "/test.txt", "", _get_example(range="bytes=0-10")),
        ("host", "GET", "/test.txt", "", _get_example(host="other.s3.amazonaws.com")),
        ("payload hash", "GET", "/test.txt", "", _get_example(**{"x-amz-content-sha256": "UNSIGNED-PAYLOAD"})),
        ("date", "GET", "/test.txt", "", _get_example(**{"x-amz-date": "20130524T000001Z"})),
        ("repeated header", "GET", "/test.txt", "", [*_get_example(), ("Range", "bytes=1-2")]),
    ],
)
def test_tampering_breaks_the_signature(
    what: str, method: str, path: str, query: str, headers: list[tuple[str, str]]
) -> None:
    err = fails("SignatureDoesNotMatch", 403, lambda: verify(method, path, query, headers))
    names = [n for n, _ in err.details]
    assert names == ["AWSAccessKeyId", "StringToSign", "SignatureProvided", "CanonicalRequest"]


def test_tampered_or_malformed_signature() -> None:
    method, path, query, headers, signed, signature = GET_OBJECT
    for bad in ["0" * 64, signature.upper(), signature[:-1], signature + "0", "zz", "ü" * 64]:
        fails("SignatureDoesNotMatch", 403, lambda: verify(method, path, query, [*headers, auth_header(signed, bad)]))


def test_unsigned_headers_are_refused() -> None:
    method, path, query, headers, signed, signature = GET_OBJECT
    with_extra = [*headers, ("x-amz-acl", "public-read"), auth_header(signed, signature)]
    err = fails("AccessDenied", 403, lambda: verify(method, path, query, with_extra))
    assert err.details == (("HeadersNotSigned", "x-amz-acl"),)
    no_host = auth_header("range;x-amz-content-sha256;x-amz-date", signature)
    err = fails("AccessDenied", 403, lambda: verify(method, path, query, [*headers, no_host]))
    assert err.details == (("HeadersNotSigned", "host"),)
    # An unsigned x-amz-content-sha256 is allowed: the signature covers it anyway.
    h2 = [*headers, ("x-amzn-trace-id", "t"), ("User-Agent", "u"), auth_header(signed, signature)]
    assert verify(method, path, query, h2) is not None


def test_date_header_must_be_signed_when_used() -> None:
    headers = [("Host", HOST), ("Date", "Fri, 24 May 2013 00:00:00 GMT"), ("x-amz-content-sha256", EMPTY_SHA256)]
    added = sign_request("GET", "/k", [], {"host": HOST}, EMPTY_SHA256, AK, SK, "us-east-1", T0)
    err = fails(
        "AccessDenied", 403, lambda: verify("GET", "/k", "", [*headers, ("Authorization", added["Authorization"])])
    )
    assert err.details == (("HeadersNotSigned", "date"),)


def test_date_header_alone() -> None:
    date = "Fri, 24 May 2013 00:00:00 GMT"
    signing_headers = {"host": HOST, "date": date}
    added = sign_request("GET", "/k", [], signing_headers, EMPTY_SHA256, AK, SK, "us-east-1", T0)
    # sign_request always adds x-amz-date; rebuild the Authorization for a Date-only request.
    key = derive_signing_key(SK, "20130524", "us-east-1", "s3")
    cr = f"GET\n/k\n\ndate:{date}\nhost:{HOST}\nx-amz-content-sha256:{EMPTY_SHA256}\n\n"
    cr += f"date;host;x-amz-content-sha256\n{EMPTY_SHA256}"
    sts = f"AWS4-HMAC-SHA256\n{AMZ0}\n{SCOPE0}\n{hashlib.sha256(cr.encode()).hexdigest()}"
    sig = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    headers = [
        ("Host", HOST),
        ("Date", date),
        ("x-amz-content-sha256", EMPTY_SHA256),
        auth_header("date;host;x-amz-content-sha256", sig),
    ]
    result = verify("GET", "/k", "", headers)
    assert result is not None and result.amz_date == AMZ0
    assert added["x-amz-date"] == AMZ0


@pytest.mark.parametrize("seconds", [-900, 900])
def test_clock_skew_boundary_accepted(seconds: int) -> None:
    method, path, query, headers, signed, signature = GET_OBJECT
    assert verify(method, path, query, [*headers, auth_header(signed, signature)], T0 + timedelta(seconds=seconds))


@pytest.mark.parametrize("seconds", [-901, 901, 86400])
def test_clock_skew_refused(seconds: int) -> None:
    method, path, query, headers, signed, signature = GET_OBJECT
    now = T0 + timedelta(seconds=seconds)
    h = [*headers, auth_header(signed, signature)]
    err = fails("RequestTimeTooSkewed", 403, lambda: verify(method, path, query, h, now))
    assert ("MaxAllowedSkewMilliseconds", "900000") in err.details


def test_custom_skew_and_naive_now() -> None:
    method, path, query, headers, signed, signature = GET_OBJECT
    h = [*headers, auth_header(signed, signature)]
    naive = (T0 + timedelta(minutes=20)).replace(tzinfo=None)
    assert verify(method, path, query, h, naive, max_skew=timedelta(hours=1))
    late = T0 + timedelta(seconds=61)
    fails("RequestTimeTooSkewed", 403, lambda: verify(method, path, query, h, late, max_skew=timedelta(minutes=1)))


@pytest.mark.parametrize(
    "authorization",
    [
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request",
        "AWS4-HMAC-SHA256 SignedHeaders=host,Signature=abc",
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host",
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3,SignedHeaders=host,Signature=a",
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/2013052/us-east-1/s3/aws4_request,SignedHeaders=host,"
        "Signature=a",
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/ec2/aws4_request,SignedHeaders=host,"
        "Signature=a",
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws5_request,SignedHeaders=host,"
        "Signature=a",
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130523/us-east-1/s3/aws4_request,SignedHeaders=host,"
        "Signature=a",
        "AWS4-HMAC-SHA256 Credential=/20130524/us-east-1/s3/aws4_request,SignedHeaders=host,Signature=a",
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524//s3/aws4_request,SignedHeaders=host,Signature=a",
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=,"
        "Signature=a",
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;;a,"
        "Signature=a",
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host,"
        "Signature=a,Extra=b",
        "AWS4-HMAC-SHA256 Credential=a,Credential=b,SignedHeaders=host,Signature=a",
        "AWS4-HMAC-SHA256 Credential",
        "AWS4-HMAC-SHA256",
    ],
)
def test_malformed_authorization_header(authorization: str) -> None:
    headers = [*GET_OBJECT[3], ("Authorization", authorization)]
    err = fails("AuthorizationHeaderMalformed", 400, lambda: verify("GET", "/test.txt", "", headers))
    assert err.message.startswith("The authorization header is malformed;")


def test_two_authorization_headers() -> None:
    headers = [*_get_example(), auth_header(GET_OBJECT[4], GET_OBJECT[5])]
    fails("AuthorizationHeaderMalformed", 400, lambda: verify("GET", "/test.txt", "", headers))


@pytest.mark.parametrize(
    "spacing",
    [
        "AWS4-HMAC-SHA256 Credential={c}, SignedHeaders={h}, Signature={s}",
        "AWS4-HMAC-SHA256 Credential={c},SignedHeaders={h},Signature={s}",
        "  AWS4-HMAC-SHA256   Credential={c} ,  SignedHeaders={h} ,Signature={s}  ",
        "AWS4-HMAC-SHA256 Credential = {c}, SignedHeaders = {h}, Signature = {s}",
        "AWS4-HMAC-SHA256 Signature={s}, Credential={c}, SignedHeaders={h}",
    ],
)
def test_authorization_spacing_variants(spacing: str) -> None:
    _, _, _, headers, signed, signature = GET_OBJECT
    value = spacing.format(c=f"{AK}/{SCOPE0}", h=signed, s=signature)
    assert verify("GET", "/test.txt", "", [*headers, ("Authorization", value)]) is not None


def test_header_names_any_case_and_value_spaces() -> None:
    headers = [("HOST", HOST), ("RANGE", "  bytes=0-9 "), ("X-Amz-Content-SHA256", EMPTY_SHA256), ("X-AMZ-DATE", AMZ0)]
    assert verify("GET", "/test.txt", "", [*headers, auth_header(GET_OBJECT[4], GET_OBJECT[5])]) is not None


def test_multi_value_headers_are_joined() -> None:
    now = T0
    headers = {"host": HOST, "x-amz-meta-a": "one,two   three"}
    added = sign_request("PUT", "/k", [], headers, EMPTY_SHA256, AK, SK, "us-east-1", now)
    wire = [
        ("Host", HOST),
        ("x-amz-meta-a", "  one"),
        ("X-Amz-Meta-A", "two \t three  "),
        *added.items(),
    ]
    assert verify("PUT", "/k", "", wire) is not None
    # The order of repeated values matters.
    wire2 = [("Host", HOST), ("x-amz-meta-a", "two three"), ("x-amz-meta-a", "one"), *added.items()]
    fails("SignatureDoesNotMatch", 403, lambda: verify("PUT", "/k", "", wire2))


def test_missing_payload_hash() -> None:
    _, _, _, headers, signed, signature = GET_OBJECT
    stripped = [(k, v) for k, v in headers if k != "x-amz-content-sha256"]
    h = [*stripped, auth_header(signed, signature)]
    err = fails("InvalidRequest", 400, lambda: verify("GET", "/test.txt", "", h))
    assert err.message == "Missing required header for this request: x-amz-content-sha256"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "e3b0c4",
        "sha256",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
        "unsigned-payload",
        "g" * 64,
        EMPTY_SHA256 + "0",
    ],
)
def test_invalid_payload_hash(value: str) -> None:
    headers = [(k, value if k == "x-amz-content-sha256" else v) for k, v in GET_OBJECT[3]]
    fails("InvalidArgument", 400, lambda: verify("GET", "/test.txt", "", [*headers, auth_header(GET_OBJECT[4], "0")]))


def test_two_payload_hashes() -> None:
    headers = [*_get_example(), ("x-amz-content-sha256", EMPTY_SHA256)]
    fails("InvalidArgument", 400, lambda: verify("GET", "/test.txt", "", headers))


@pytest.mark.parametrize("date", [None, "20130524", "2013-05-24T00:00:00Z", "20131324T000000Z", "garbage"])
def test_missing_or_bad_date(date: str | None) -> None:
    headers = [(k, v) for k, v in _get_example() if k != "x-amz-date"]
    if date is not None:
        headers.append(("x-amz-date", date))
    err = fails("AccessDenied", 403, lambda: verify("GET", "/test.txt", "", headers))
    assert "Date" in err.message


def test_bad_http_date() -> None:
    headers = [(k, v) for k, v in _get_example() if k != "x-amz-date"] + [("Date", "not a date")]
    fails("AccessDenied", 403, lambda: verify("GET", "/test.txt", "", headers))


@pytest.mark.parametrize(
    "authorization",
    ["AWS AKIAIOSFODNN7EXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg=", "AWS4-ECDSA-P256-SHA256 Credential=a/b"],
)
def test_sigv2_and_sigv4a_unsupported(authorization: str) -> None:
    headers = [("Host", HOST), ("Date", "Fri, 24 May 2013 00:00:00 GMT"), ("Authorization", authorization)]
    err = fails("InvalidRequest", 400, lambda: verify("GET", "/test.txt", "", headers))
    assert "AWS4-HMAC-SHA256" in err.message


def test_sigv2_presigned_unsupported() -> None:
    query = "AWSAccessKeyId=AKIAIOSFODNN7EXAMPLE&Expires=1141889120&Signature=vjbyPxybdZaNmGa%2ByT272YEAiv4%3D"
    err = fails("InvalidRequest", 400, lambda: verify("GET", "/b/k", query, [("Host", HOST)]))
    assert "AWS4-HMAC-SHA256" in err.message


@pytest.mark.parametrize("authorization", ["Bearer abc", "", "Basic dXNlcjpwYXNz"])
def test_unsupported_authorization_type(authorization: str) -> None:
    fails("InvalidArgument", 400, lambda: verify("GET", "/k", "", [("Host", HOST), ("Authorization", authorization)]))


def test_header_and_query_auth_together() -> None:
    url = presign_url("GET", "/test.txt", [], HOST, AK, SK, "us-east-1", T0, 86400)
    _, _, query = url.partition("?")
    fails("InvalidArgument", 400, lambda: verify("GET", "/test.txt", query, _get_example()))
    fails("InvalidArgument", 400, lambda: verify("GET", "/test.txt", "Signature=x&AWSAccessKeyId=y", _get_example()))


# -- presigned URLs


def _presigned(expires: int = 86400, path: str = "/test.txt", query: Sequence[tuple[str, str]] = ()) -> tuple[str, str]:
    url = presign_url("GET", path, list(query), HOST, AK, SK, "us-east-1", T0, expires)
    p, _, q = url.partition("?")
    return p, q


def test_presigned_window() -> None:
    path, query = _presigned(3600)
    h = [("Host", HOST)]
    for offset in (-900, 0, 3600):
        assert verify("GET", path, query, h, T0 + timedelta(seconds=offset)) is not None
    err = fails("AccessDenied", 403, lambda: verify("GET", path, query, h, T0 + timedelta(seconds=3601)))
    assert err.message == "Request has expired"
    err = fails("AccessDenied", 403, lambda: verify("GET", path, query, h, T0 - timedelta(seconds=901)))
    assert err.message == "Request is not valid yet"


def test_presigned_zero_and_max_expiry() -> None:
    path, query = _presigned(0)
    assert verify("GET", path, query, [("Host", HOST)]) is not None
    fails("AccessDenied", 403, lambda: verify("GET", path, query, [("Host", HOST)], T0 + timedelta(seconds=1)))
    path, query = _presigned(604800)
    assert verify("GET", path, query, [("Host", HOST)], T0 + timedelta(days=7)) is not None


def test_presigned_tampering() -> None:
    path, query = _presigned(3600, query=[("versionId", "v 1")])
    h = [("Host", HOST)]
    assert verify("GET", path, query, h) is not None
    fails("SignatureDoesNotMatch", 403, lambda: verify("PUT", path, query, h))
    fails("SignatureDoesNotMatch", 403, lambda: verify("GET", path + "x", query, h))
    fails("SignatureDoesNotMatch", 403, lambda: verify("GET", path, query.replace("v%201", "v%202"), h))
    fails("SignatureDoesNotMatch", 403, lambda: verify("GET", path, query + "&extra=1", h))
    fails("SignatureDoesNotMatch", 403, lambda: verify("GET", path, query, [("Host", "evil.test")]))
    sig = query.rsplit("=", 1)[1]
    fails("SignatureDoesNotMatch", 403, lambda: verify("GET", path, query.replace(sig, "0" * 64), h))
    longer = query.replace("X-Amz-Expires=3600", "X-Amz-Expires=3601")
    fails("SignatureDoesNotMatch", 403, lambda: verify("GET", path, longer, h))
    # Headers the URL did not sign: x-amz-* refused, others ignored.
    assert verify("GET", path, query, [*h, ("Range", "bytes=0-1"), ("Content-Type", "x")]) is not None
    fails("AccessDenied", 403, lambda: verify("GET", path, query, [*h, ("x-amz-acl", "public-read")]))
    fails("InvalidAccessKeyId", 403, lambda: verify_request(RequestView("GET", path, query, h), lambda a: None, T0))


def test_presigned_with_content_sha256_parameter() -> None:
    body_hash = "a" * 64
    path, query = _presigned(3600, query=[("X-Amz-Content-Sha256", body_hash)])
    result = verify("GET", path, query, [("Host", HOST)])
    assert result is not None and result.payload_hash == body_hash
    path, query = _presigned(3600, query=[("X-Amz-Content-Sha256", "nope")])
    fails("InvalidArgument", 400, lambda: verify("GET", path, query, [("Host", HOST)]))


def _replace_param(query: str, name: str, value: str | None) -> str:
    parts = [p for p in query.split("&") if not p.startswith(name + "=")]
    if value is not None:
        parts.append(f"{name}={value}")
    return "&".join(parts)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("X-Amz-Algorithm", None, "requires"),
        ("X-Amz-Credential", None, "requires"),
        ("X-Amz-Date", None, "requires"),
        ("X-Amz-Expires", None, "requires"),
        ("X-Amz-SignedHeaders", None, "requires"),
        ("X-Amz-Signature", None, "requires"),
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA512", "only supports"),
        ("X-Amz-Expires", "604801", "less than a week"),
        ("X-Amz-Expires", "-1", "non-negative"),
        ("X-Amz-Expires", "1e3", "number"),
        ("X-Amz-Expires", "", "number"),
        ("X-Amz-Date", "2013-05-24T00:00:00Z", "ISO8601"),
        ("X-Amz-Date", "20130525T000000Z", "credential date"),
        ("X-Amz-Credential", "AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fsqs%2Faws4_request", "service"),
        ("X-Amz-Credential", "AKIAIOSFODNN7EXAMPLE", "Credential"),
        ("X-Amz-SignedHeaders", "", "SignedHeaders"),
    ],
)
def test_malformed_presigned_query(name: str, value: str | None, message: str) -> None:
    path, query = _presigned()
    bad = _replace_param(query, name, value)
    err = fails("AuthorizationQueryParametersError", 400, lambda: verify("GET", path, bad, [("Host", HOST)]))
    assert message in err.message


def test_presigned_duplicate_parameter() -> None:
    path, query = _presigned()
    fails(
        "AuthorizationQueryParametersError",
        400,
        lambda: verify("GET", path, query + "&X-Amz-Date=20130524T000000Z", [("Host", HOST)]),
    )


def test_presigned_must_sign_host() -> None:
    path, query = _presigned()
    bad = query.replace("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=range")
    err = fails("AccessDenied", 403, lambda: verify("GET", path, bad, [("Host", HOST)]))
    assert err.details == (("HeadersNotSigned", "host"),)


def test_error_is_an_exception_with_fields() -> None:
    err = SigV4Error("AccessDenied", "no", 403, [("A", "b")])
    assert (err.code, err.message, err.status, err.details) == ("AccessDenied", "no", 403, (("A", "b"),))
    assert str(err) == "AccessDenied: no"
    assert SigV4Error("X", "y").status == 403


def test_auth_result_repr_hides_signing_key() -> None:
    result = verify(*GET_OBJECT[:3], [*GET_OBJECT[3], auth_header(GET_OBJECT[4], GET_OBJECT[5])])
    assert result is not None
    assert "signing_key" not in repr(result)
    with pytest.raises(AttributeError):
        result.access_key = "x"  # type: ignore[misc]
