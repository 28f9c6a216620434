"""Bucket modes, foreign objects, virtual-hosted addressing, and copies that
never pull bodies through the proxy."""

from __future__ import annotations

import base64
import os
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.conftest import CLIENT_AK, CLIENT_SK, Backend, Proxy, proxy_settings, start_proxy, stop_proxy


@pytest.fixture(scope="module")
def lenient(backend: Backend) -> Iterator[Proxy]:
    """Encrypt by default, but serve objects written around the proxy as plaintext; one passthrough bucket."""
    p = start_proxy(proxy_settings(
        backend,
        base_domain="s3.test.internal",
        default_bucket={"mode": "encrypt", "allow_unencrypted_reads": True},
        buckets={"lenient-pass": {"mode": "passthrough"}},
    ))
    yield p
    stop_proxy(p)


def test_foreign_object_refused_in_encrypted_bucket(s3: Any, raw: Any, bucket: str) -> None:
    raw.put_object(Bucket=bucket, Key="foreign", Body=b"written around the proxy")
    with pytest.raises(ClientError) as ei:
        s3.get_object(Bucket=bucket, Key="foreign")
    assert ei.value.response["Error"]["Code"] == "InvalidObjectState"
    assert "not written through s3proxy" in ei.value.response["Error"]["Message"]
    with pytest.raises(ClientError):
        s3.get_object(Bucket=bucket, Key="foreign", Range="bytes=0-3")


@pytest.mark.needs("aws_responses")
def test_foreign_object_served_when_configured(lenient: Proxy, raw: Any) -> None:
    c = lenient.client()
    b = "len-" + uuid.uuid4().hex[:10]
    c.create_bucket(Bucket=b)
    raw.put_object(Bucket=b, Key="foreign", Body=b"written around the proxy")
    assert c.get_object(Bucket=b, Key="foreign")["Body"].read() == b"written around the proxy"
    assert c.get_object(Bucket=b, Key="foreign", Range="bytes=0-6")["Body"].read() == b"written"
    assert c.head_object(Bucket=b, Key="foreign")["ContentLength"] == 24
    # Encrypted objects in the same bucket still decrypt.
    c.put_object(Bucket=b, Key="mine", Body=b"secret")
    assert c.get_object(Bucket=b, Key="mine")["Body"].read() == b"secret"
    assert b"secret" not in raw.get_object(Bucket=b, Key="mine")["Body"].read()


@pytest.mark.smoke
def test_passthrough_bucket_stores_plaintext(lenient: Proxy, raw: Any) -> None:
    c = lenient.client()
    try:
        c.create_bucket(Bucket="lenient-pass")
    except ClientError:
        pass
    c.put_object(Bucket="lenient-pass", Key="p", Body=b"plain as day")
    assert raw.get_object(Bucket="lenient-pass", Key="p")["Body"].read() == b"plain as day"
    assert c.get_object(Bucket="lenient-pass", Key="p")["Body"].read() == b"plain as day"


def test_virtual_hosted_style(lenient: Proxy) -> None:
    """bucket.s3.test.internal addressing; the Host header carries the bucket."""
    path = lenient.client()
    b = "vh-" + uuid.uuid4().hex[:10]
    path.create_bucket(Bucket=b)
    vh = boto3.client(
        "s3", endpoint_url=f"http://s3.test.internal:{lenient.port}", aws_access_key_id=CLIENT_AK,
        aws_secret_access_key=CLIENT_SK, region_name="us-east-1",
        config=Config(s3={"addressing_style": "virtual"}, retries={"max_attempts": 1}),
    )

    # Resolve every *.s3.test.internal to the proxy by rewriting the URL's host to 127.0.0.1
    # while keeping the Host header (what DNS would do).
    def to_loopback(request: Any, **_: Any) -> None:
        from urllib.parse import urlsplit, urlunsplit

        u = urlsplit(request.url)
        request.headers["Host"] = u.netloc
        request.url = urlunsplit((u.scheme, f"127.0.0.1:{lenient.port}", u.path, u.query, u.fragment))

    vh.meta.events.register("before-send.s3", to_loopback)
    vh.put_object(Bucket=b, Key="dir/k e+y", Body=b"virtual")
    assert vh.get_object(Bucket=b, Key="dir/k e+y")["Body"].read() == b"virtual"
    assert path.get_object(Bucket=b, Key="dir/k e+y")["Body"].read() == b"virtual"
    assert [o["Key"] for o in vh.list_objects_v2(Bucket=b)["Contents"]] == ["dir/k e+y"]


@pytest.mark.needs("upload_part_copy")
@pytest.mark.smoke
def test_copy_is_server_side(proxy: Proxy, s3: Any, bucket: str) -> None:
    """CopyObject (single and multipart sources) moves no body bytes through the proxy."""
    m = proxy.state.metrics
    data = os.urandom(3 * 1024 * 1024)
    s3.put_object(Bucket=bucket, Key="src", Body=data)
    part = 5 * 1024 * 1024
    mp_data = os.urandom(2 * part + 100)
    up = s3.create_multipart_upload(Bucket=bucket, Key="mpsrc")["UploadId"]
    etags = [
        {"PartNumber": i + 1, "ETag": s3.upload_part(Bucket=bucket, Key="mpsrc", UploadId=up, PartNumber=i + 1,
                                                      Body=mp_data[o:o + part])["ETag"]}
        for i, o in enumerate(range(0, len(mp_data), part))
    ]
    s3.complete_multipart_upload(Bucket=bucket, Key="mpsrc", UploadId=up, MultipartUpload={"Parts": etags})
    other = "cp-" + uuid.uuid4().hex[:10]
    s3.create_bucket(Bucket=other)
    def counted() -> tuple[float | None, float | None]:  # through a scrape: in-process counts add up there
        return (m.registry.get_sample_value("s3proxy_encrypted_bytes_total"),
                m.registry.get_sample_value("s3proxy_decrypted_bytes_total"))

    enc0, dec0 = counted()
    assert enc0 is not None and enc0 > 0 and dec0 is not None  # the PUTs above encrypted
    s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    s3.copy_object(Bucket=other, Key="dst2", CopySource={"Bucket": bucket, "Key": "src"})
    s3.copy_object(Bucket=other, Key="mpdst", CopySource={"Bucket": bucket, "Key": "mpsrc"})
    assert counted() == (enc0, dec0)
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == data
    assert s3.get_object(Bucket=other, Key="dst2")["Body"].read() == data
    got = s3.get_object(Bucket=other, Key="mpdst")
    assert got["Body"].read() == mp_data
    assert got["ETag"].endswith('-3"')
    assert s3.head_object(Bucket=other, Key="mpdst")["ContentLength"] == len(mp_data)
    for k in ("dst2", "mpdst"):
        s3.delete_object(Bucket=other, Key=k)
    s3.delete_bucket(Bucket=other)


def test_get_object_attributes_plaintext_sizes(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a", Body=b"x" * 12345)
    try:
        attrs = s3.get_object_attributes(Bucket=bucket, Key="a", ObjectAttributes=["ObjectSize", "ETag", "Checksum"])
    except ClientError as e:  # pragma: no cover - backend without the API
        pytest.skip(f"backend lacks GetObjectAttributes: {e}")
    assert attrs["ObjectSize"] == 12345
    assert attrs.get("Checksum", {}).get("ChecksumCRC32") in (None, base64.b64encode(zlib.crc32(b"x" * 12345).to_bytes(4, "big")).decode())


def test_boto3_default_presigned_urls_sigv2(proxy: Proxy, s3: Any, bucket: str) -> None:
    """boto3's generate_presigned_url signs with SigV2 unless told otherwise: both work."""
    import urllib.request

    s3.put_object(Bucket=bucket, Key="pre sign+d", Body=b"presigned body")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "pre sign+d"}, ExpiresIn=300)
    assert "AWSAccessKeyId=" in url
    try:
        got = urllib.request.urlopen(url, timeout=10).read()
    except urllib.error.HTTPError as e:
        raise AssertionError(e.read()) from None
    assert got == b"presigned body"
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "up"}, ExpiresIn=300)
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(put_url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    conn.request("PUT", f"{u.path}?{u.query}", body=b"uploaded via v2 url")  # no Content-Type: none was signed
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    conn.close()
    assert s3.get_object(Bucket=bucket, Key="up")["Body"].read() == b"uploaded via v2 url"
    bad = url.replace("Signature=", "Signature=x")
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(bad, timeout=10)
    assert ei.value.code == 403


@pytest.mark.needs("tagging")
def test_multipart_copy_keeps_tags(s3: Any, bucket: str) -> None:
    part = 5 * 1024 * 1024
    up = s3.create_multipart_upload(Bucket=bucket, Key="tagged", Tagging="team=blue&tier=gold")["UploadId"]
    etags = [{"PartNumber": i + 1, "ETag": s3.upload_part(Bucket=bucket, Key="tagged", UploadId=up, PartNumber=i + 1,
                                                          Body=b"t" * (part if i == 0 else 10))["ETag"]} for i in range(2)]
    s3.complete_multipart_upload(Bucket=bucket, Key="tagged", UploadId=up, MultipartUpload={"Parts": etags})
    s3.copy_object(Bucket=bucket, Key="tagged-copy", CopySource={"Bucket": bucket, "Key": "tagged"})
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key="tagged-copy")["TagSet"]}
    assert tags == {"team": "blue", "tier": "gold"}
    s3.copy_object(Bucket=bucket, Key="tagged-re", CopySource={"Bucket": bucket, "Key": "tagged"},
                   TaggingDirective="REPLACE", Tagging="x=1")
    assert s3.get_object_tagging(Bucket=bucket, Key="tagged-re")["TagSet"] == [{"Key": "x", "Value": "1"}]
