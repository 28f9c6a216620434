"""POST object (browser-form uploads) through s3proxy: SigV4 and SigV2 policies, as S3 serves them.

The forms are built by boto3's ``generate_presigned_post`` (SigV4 and SigV2) or by hand, and
posted as raw ``multipart/form-data`` with ``http.client``; the object then reads back decrypted
through the proxy while the backend holds only ciphertext.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.integration.helpers import assert_no_plaintext, assert_s3_error, main_creds, object_url, rand, send

BOUNDARY = "----s3proxyFormBoundary7MA4YWxkTrZu0gW"


def encode_form(
    fields: list[tuple[str, str]] | dict[str, str], file: bytes | None, *, filename: str = "upload.bin",
    boundary: str = BOUNDARY, after: list[tuple[str, str]] | None = None, file_name_field: str = "file",
) -> bytes:
    """A multipart/form-data body: ``fields`` in order, then the file part, then ``after``."""
    items = list(fields.items()) if isinstance(fields, dict) else list(fields)
    out = bytearray()
    for name, value in items:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    if file is not None:
        out += (f'--{boundary}\r\nContent-Disposition: form-data; name="{file_name_field}"; filename="{filename}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n").encode()
        out += file + b"\r\n"
    for name, value in after or []:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def post(url: str, body: bytes, *, boundary: str = BOUNDARY, headers: dict[str, str] | None = None) -> Any:
    h = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    h.update(headers or {})
    return send("POST", url, h, body)


def presigned_post(proxy: Any, bucket: str, key: str, *, v2: bool = False, fields: dict[str, str] | None = None,
                   conditions: list[Any] | None = None, expires: int = 600,
                   creds: tuple[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """boto3's generate_presigned_post against the proxy: (url, fields)."""
    ak, sk = creds or main_creds(proxy)
    client = proxy.client(ak, sk, config={"signature_version": "s3" if v2 else "s3v4"})
    p = client.generate_presigned_post(bucket, key, Fields=fields, Conditions=conditions, ExpiresIn=expires)
    return p["url"], p["fields"]


def policy_b64(conditions: list[Any], *, expires_in: float = 600) -> str:
    exp = (datetime.now(UTC) + timedelta(seconds=expires_in)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return base64.b64encode(json.dumps({"expiration": exp, "conditions": conditions}).encode()).decode()


def v4_fields(creds: tuple[str, str], bucket: str, conditions: list[Any], *, expires_in: float = 600,
              region: str = "us-east-1") -> dict[str, str]:
    """Hand-built SigV4 POST fields (algorithm, credential, date, policy, signature) for ``conditions``."""
    ak, sk = creds
    now = datetime.now(UTC)
    date, amz_date = now.strftime("%Y%m%d"), now.strftime("%Y%m%dT%H%M%SZ")
    cred = f"{ak}/{date}/{region}/s3/aws4_request"
    auth = {"x-amz-algorithm": "AWS4-HMAC-SHA256", "x-amz-credential": cred, "x-amz-date": amz_date}
    pol = policy_b64([{"bucket": bucket}, *conditions, *({k: v} for k, v in auth.items())], expires_in=expires_in)

    def h(key: bytes, msg: str) -> bytes:
        return hmac.new(key, msg.encode(), hashlib.sha256).digest()

    key = h(h(h(h(("AWS4" + sk).encode(), date), region), "s3"), "aws4_request")
    sig = hmac.new(key, pol.encode(), hashlib.sha256).hexdigest()
    return {**auth, "policy": pol, "x-amz-signature": sig}


def v2_fields(creds: tuple[str, str], conditions: list[Any], *, expires_in: float = 600) -> dict[str, str]:
    ak, sk = creds
    pol = policy_b64(conditions, expires_in=expires_in)
    sig = base64.b64encode(hmac.new(sk.encode(), pol.encode(), hashlib.sha1).digest()).decode()
    return {"AWSAccessKeyId": ak, "policy": pol, "signature": sig}


def unique_key(prefix: str = "post/") -> str:
    return prefix + uuid.uuid4().hex[:12]


# --------------------------------------------------------------------- SigV4 (boto3)


@pytest.mark.smoke
def test_presigned_post_sigv4_round_trip(proxy: Any, s3: Any, raw: Any, bucket: str) -> None:
    key = unique_key()
    data = rand(300_000)
    url, fields = presigned_post(proxy, bucket, key)
    r = post(url, encode_form(fields, data))
    assert r.status == 204, (r.status, r.body)
    assert r.header("etag")
    assert r.header("location", ) and r.header("location").endswith(key.replace("/", "%2F"))
    got = s3.get_object(Bucket=bucket, Key=key)
    assert got["Body"].read() == data
    assert got["ContentLength"] == len(data)
    stored = raw.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert_no_plaintext(data, stored)


def test_presigned_post_metadata_content_type_and_201(proxy: Any, s3: Any, bucket: str) -> None:
    key = unique_key()
    fields = {"Content-Type": "text/plain", "x-amz-meta-colour": "blue", "success_action_status": "201"}
    conditions = [{"Content-Type": "text/plain"}, ["starts-with", "$x-amz-meta-colour", ""],
                  {"success_action_status": "201"}, ["content-length-range", 1, 1000]]
    url, f = presigned_post(proxy, bucket, key, fields=fields, conditions=conditions)
    r = post(url, encode_form(f, b"hello form"))
    assert r.status == 201, r.body
    doc = ET.fromstring(r.body or b"")
    assert doc.tag == "PostResponse"
    assert doc.findtext("Bucket") == bucket and doc.findtext("Key") == key
    assert doc.findtext("ETag") == r.header("etag")
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["ContentType"] == "text/plain"
    assert head["Metadata"] == {"colour": "blue"}
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"hello form"


def test_success_action_200_and_redirect(proxy: Any, s3: Any, bucket: str) -> None:
    key = unique_key()
    url, f = presigned_post(proxy, bucket, key, fields={"success_action_status": "200"},
                            conditions=[{"success_action_status": "200"}])
    r = post(url, encode_form(f, b"two hundred"))
    assert r.status == 200 and r.body == b""
    key2 = unique_key()
    target = "https://app.example.com/done?x=1"
    url, f = presigned_post(proxy, bucket, key2, fields={"success_action_redirect": target},
                            conditions=[["starts-with", "$success_action_redirect", "https://app.example.com/"]])
    r = post(url, encode_form(f, b"redirected"))
    assert r.status == 303, r.body
    loc = urlsplit(r.header("location") or "")
    assert loc.netloc == "app.example.com" and loc.path == "/done"
    q = parse_qs(loc.query)
    assert q["x"] == ["1"] and q["bucket"] == [bucket] and q["key"] == [key2]
    assert q["etag"] == [r.header("etag")]
    assert s3.get_object(Bucket=bucket, Key=key2)["Body"].read() == b"redirected"


def test_filename_substitution(proxy: Any, s3: Any, bucket: str) -> None:
    url, f = presigned_post(proxy, bucket, "uploads/${filename}")
    r = post(url, encode_form(f, b"named by the browser", filename="photo.jpg"))
    assert r.status == 204, r.body
    assert s3.get_object(Bucket=bucket, Key="uploads/photo.jpg")["Body"].read() == b"named by the browser"


def test_fields_after_file_are_ignored(proxy: Any, s3: Any, bucket: str) -> None:
    key = unique_key()
    url, f = presigned_post(proxy, bucket, key)
    r = post(url, encode_form(f, b"first", after=[("x-amz-meta-late", "ignored"), ("key", "elsewhere")]))
    assert r.status == 204, r.body
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["Metadata"] == {}
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"first"


def test_empty_file_within_range(proxy: Any, s3: Any, bucket: str) -> None:
    key = unique_key()
    url, f = presigned_post(proxy, bucket, key, conditions=[["content-length-range", 0, 10]])
    assert post(url, encode_form(f, b"")).status == 204
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b""


def test_checksum_field_verified(proxy: Any, s3: Any, bucket: str) -> None:
    data = b"checked content"
    good = base64.b64encode(hashlib.sha256(data).digest()).decode()
    key = unique_key()
    url, f = presigned_post(proxy, bucket, key, fields={"x-amz-checksum-sha256": good},
                            conditions=[{"x-amz-checksum-sha256": good}])
    r = post(url, encode_form(f, data))
    assert r.status == 204, r.body
    assert r.header("x-amz-checksum-sha256") == good
    key2 = unique_key()
    url, f = presigned_post(proxy, bucket, key2, fields={"x-amz-checksum-sha256": good},
                            conditions=[{"x-amz-checksum-sha256": good}])
    assert_s3_error(post(url, encode_form(f, b"other content")), 400, "BadDigest")
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=key2)


def test_hand_built_sigv4(proxy: Any, s3: Any, bucket: str) -> None:
    key = unique_key()
    f = v4_fields(main_creds(proxy), bucket, [{"key": key}])
    r = post(object_url(proxy.url, bucket), encode_form({"key": key, **f}, b"by hand"))
    assert r.status == 204, r.body
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"by hand"


# --------------------------------------------------------------------- SigV2


@pytest.mark.smoke
def test_presigned_post_sigv2_boto3(proxy: Any, s3: Any, raw: Any, bucket: str) -> None:
    key = unique_key()
    data = rand(70_000)
    url, fields = presigned_post(proxy, bucket, key, v2=True)
    assert "AWSAccessKeyId" in fields and "signature" in fields
    r = post(url, encode_form(fields, data))
    assert r.status == 204, r.body
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert_no_plaintext(data, raw.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_hand_built_sigv2(proxy: Any, s3: Any, bucket: str) -> None:
    key = unique_key()
    f = v2_fields(main_creds(proxy), [{"bucket": bucket}, ["starts-with", "$key", "post/"],
                                      ["content-length-range", 1, 100]])
    r = post(object_url(proxy.url, bucket), encode_form({"key": key, **f}, b"sigv2 by hand"))
    assert r.status == 204, r.body
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"sigv2 by hand"


# --------------------------------------------------------------------- passthrough, CORS


def test_passthrough_bucket_gets_a_plain_put(proxy: Any, s3: Any, raw: Any) -> None:
    bucket = "plain-passthrough"
    try:
        s3.create_bucket(Bucket=bucket)
    except Exception:  # noqa: BLE001 - already there
        pass
    key = unique_key()
    url, f = presigned_post(proxy, bucket, key)
    r = post(url, encode_form(f, b"plain on purpose"))
    assert r.status == 204, r.body
    assert raw.get_object(Bucket=bucket, Key=key)["Body"].read() == b"plain on purpose"
    s3.delete_object(Bucket=bucket, Key=key)


@pytest.mark.needs("bucket_config")
def test_cors_headers_on_post(proxy: Any, s3: Any, bucket: str) -> None:
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [
        {"AllowedOrigins": ["https://app.example.com"], "AllowedMethods": ["POST"], "ExposeHeaders": ["ETag"]}]})
    key = unique_key()
    url, f = presigned_post(proxy, bucket, key)
    r = post(url, encode_form(f, b"from a page"), headers={"Origin": "https://app.example.com"})
    assert r.status == 204, r.body
    assert r.header("access-control-allow-origin") == "https://app.example.com"
    assert r.header("access-control-expose-headers") == "ETag"
    # errors carry them too, so that the page can read the error
    f["x-amz-signature"] = "0" * 64
    r = post(url, encode_form(f, b"x"), headers={"Origin": "https://app.example.com"})
    assert_s3_error(r, 403, "SignatureDoesNotMatch")
    assert r.header("access-control-allow-origin") == "https://app.example.com"
    r = post(url, encode_form(f, b"x"), headers={"Origin": "https://evil.example"})
    assert r.header("access-control-allow-origin") is None


def test_large_file_many_spool_chunks(proxy: Any, s3: Any, raw: Any, bucket: str) -> None:
    """Past aiohttp's client_max_size and across many spool chunks (odd length)."""
    key = unique_key()
    data = rand(5 * 1024 * 1024 + 12345)
    url, f = presigned_post(proxy, bucket, key, conditions=[["content-length-range", len(data), len(data)]])
    r = post(url, encode_form(f, data))
    assert r.status == 204, r.body
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert_no_plaintext(data, raw.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_object_form_fields_case_insensitive(proxy: Any, s3: Any, bucket: str) -> None:
    """Field names are matched without case (``Content-Type`` vs ``content-type``, ``Key``)."""
    key = unique_key()
    f = v4_fields(main_creds(proxy), bucket, [{"key": key}, ["starts-with", "$content-type", "text/"]])
    r = post(object_url(proxy.url, bucket), encode_form({"Key": key, "content-TYPE": "text/csv", **f}, b"a,b"))
    assert r.status == 204, r.body
    assert s3.head_object(Bucket=bucket, Key=key)["ContentType"] == "text/csv"


def test_sse_fields_reach_the_key_policy(proxy: Any, s3: Any, bucket: str) -> None:
    """SSE-KMS form fields choose the key as the headers of a PUT would; SSE-C fields are refused over
    plain HTTP (require_https_for_sse_c), as a PUT's would be."""
    key = unique_key()
    sse = {"x-amz-server-side-encryption": "aws:kms", "x-amz-server-side-encryption-aws-kms-key-id": "k1"}
    url, f = presigned_post(proxy, bucket, key, fields=sse, conditions=[{k: v} for k, v in sse.items()])
    r = post(url, encode_form(f, b"kms"))
    assert r.status == 204, r.body
    assert r.header("x-amz-server-side-encryption") == "aws:kms"
    assert s3.head_object(Bucket=bucket, Key=key)["SSEKMSKeyId"] == "k1"
    ck = base64.b64encode(b"k" * 32).decode()
    ssec = {"x-amz-server-side-encryption-customer-algorithm": "AES256",
            "x-amz-server-side-encryption-customer-key": ck,
            "x-amz-server-side-encryption-customer-key-MD5": base64.b64encode(hashlib.md5(b"k" * 32).digest()).decode()}
    key2 = unique_key()
    url, f = presigned_post(proxy, bucket, key2, fields=ssec, conditions=[{k: v} for k, v in ssec.items()])
    err = assert_s3_error(post(url, encode_form(f, b"ssec")), 400, "InvalidRequest")
    assert ck not in str(err)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=key2)


def test_missing_bucket(proxy: Any) -> None:
    url, f = presigned_post(proxy, "no-such-bucket-" + uuid.uuid4().hex[:8], "k")
    r = post(url, encode_form(f, b"x"))
    assert r.status == 404 and r.error()["Code"] == "NoSuchBucket"  # the backend's error, relayed as for a PUT
