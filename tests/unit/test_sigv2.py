"""SigV2 verification against what botocore signs (boto3's default presigned URLs)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.auth import HmacV1Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from s3proxy.aws.sigv2 import is_v2, verify_v2
from s3proxy.aws.sigv4 import SigV4Error

AK, SK = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def lookup(ak: str) -> str | None:
    return SK if ak == AK else None


def presigned(method: str, key: str, **params: object) -> str:
    s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:8080", aws_access_key_id=AK, aws_secret_access_key=SK,
                      region_name="us-east-1")
    op = {"GET": "get_object", "PUT": "put_object"}[method]
    return str(s3.generate_presigned_url(op, Params={"Bucket": "bkt", "Key": key, **params}, ExpiresIn=600))


@pytest.mark.parametrize("key", ["plain", "a b+c%d", "ünï/cödé", "dir//x", "~tilde"])
@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_boto3_default_presigned_urls_verify(method: str, key: str) -> None:
    url = presigned(method, key)
    u = urlsplit(url)
    assert is_v2(u.query, None)
    r = verify_v2(method, u.path, u.query, [("Host", u.netloc)], lookup, datetime.now(UTC))
    assert r.access_key == AK and r.presigned


def test_presigned_with_response_overrides_and_content_type() -> None:
    url = presigned("GET", "k", ResponseContentType="text/plain", ResponseContentDisposition="attachment")
    u = urlsplit(url)
    verify_v2("GET", u.path, u.query, [], lookup, datetime.now(UTC))
    url = presigned("PUT", "k", ContentType="image/png")
    u = urlsplit(url)
    verify_v2("PUT", u.path, u.query, [("Content-Type", "image/png")], lookup, datetime.now(UTC))


@pytest.mark.parametrize("mutate,code", [
    (lambda p, q: (p + "x", q), "SignatureDoesNotMatch"),
    (lambda p, q: (p, q.replace("AWSAccessKeyId=AKIDEXAMPLE", "AWSAccessKeyId=NOPE")), "InvalidAccessKeyId"),
    (lambda p, q: (p, q.replace("Signature=", "Signature=A")), "SignatureDoesNotMatch"),
])
def test_tampered_presigned_fails(mutate: object, code: str) -> None:
    u = urlsplit(presigned("GET", "k"))
    path, query = mutate(u.path, u.query)  # type: ignore[operator]
    with pytest.raises(SigV4Error) as ei:
        verify_v2("GET", path, query, [], lookup, datetime.now(UTC))
    assert ei.value.code == code


def test_expired_presigned_url() -> None:
    u = urlsplit(presigned("GET", "k"))
    with pytest.raises(SigV4Error) as ei:
        verify_v2("GET", u.path, u.query, [], lookup, datetime.now(UTC) + timedelta(hours=1))
    assert ei.value.code == "AccessDenied"


def test_header_form_matches_botocore() -> None:
    req = AWSRequest(method="PUT", url="http://127.0.0.1:8080/bkt/some%20key?acl",
                     headers={"Content-Type": "text/plain", "x-amz-meta-a": "1", "Content-MD5": "abc=="})
    HmacV1Auth(Credentials(AK, SK)).add_auth(req)
    headers = list(req.headers.items())
    auth = dict(headers)["Authorization"]
    assert is_v2("acl", auth)
    assert verify_v2("PUT", "/bkt/some%20key", "acl", headers, lookup, datetime.now(UTC)).access_key == AK
    with pytest.raises(SigV4Error) as ei:
        verify_v2("PUT", "/bkt/other", "acl", headers, lookup, datetime.now(UTC))
    assert ei.value.code == "SignatureDoesNotMatch"
    with pytest.raises(SigV4Error) as ei:
        verify_v2("PUT", "/bkt/some%20key", "acl", headers, lookup, datetime.now(UTC) + timedelta(minutes=20))
    assert ei.value.code == "RequestTimeTooSkewed"
