"""Attacks on POST object (browser-form uploads).

Attackers: an anonymous page visitor who edits the form (tampered or expired policy, violated
conditions, smuggled fields and files, broken framing, oversized parts), a limited identity
(mallory, ``mallory/`` only) signing its own policies, and a forger without any key.  Each gets
S3's error, nothing reaches the backend (checked with the storage credentials), and the proxy
keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3proxy.aws.checksums import Checker
from s3proxy.aws.errors import S3Error
from s3proxy.http.postobject import SPOOL_CHUNK, Spool
from s3proxy.http.postpolicy import check_policy, parse_policy
from tests.adversarial.conftest import MALLORY_AK, MALLORY_SK
from tests.conftest import CLIENT_AK, CLIENT_SK
from tests.integration.helpers import assert_s3_error, object_url, send, signed
from tests.integration.test_post_object import (
    BOUNDARY,
    encode_form,
    post,
    presigned_post,
    unique_key,
    v2_fields,
    v4_fields,
)

VICTIM = (CLIENT_AK, CLIENT_SK)
MALLORY = (MALLORY_AK, MALLORY_SK)


def nothing_stored(storage: Any, bucket: str) -> None:
    assert storage.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def still_serving(victim: Any, bucket: str) -> None:
    victim.put_object(Bucket=bucket, Key="alive", Body=b"ok")
    assert victim.get_object(Bucket=bucket, Key="alive")["Body"].read() == b"ok"
    victim.delete_object(Bucket=bucket, Key="alive")


def form_for(proxy: Any, bucket: str, key: str, **kw: Any) -> tuple[str, dict[str, str]]:
    return presigned_post(proxy, bucket, key, creds=kw.pop("creds", VICTIM), **kw)


def refused(reply: Any, status: int, code: str, storage: Any, victim: Any, bucket: str) -> dict[str, str]:
    err = assert_s3_error(reply, status, code)
    nothing_stored(storage, bucket)
    still_serving(victim, bucket)
    return err


# --------------------------------------------------------------------- signature and policy


def test_tampered_policy(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    url, f = form_for(attack_proxy, enc_bucket, "a", conditions=[["content-length-range", 0, 10]])
    doc = json.loads(base64.b64decode(f["policy"]))
    doc["conditions"] = [c for c in doc["conditions"] if not (isinstance(c, list) and c[0] == "content-length-range")]
    f["policy"] = base64.b64encode(json.dumps(doc).encode()).decode()
    refused(post(url, encode_form(f, b"x" * 100)), 403, "SignatureDoesNotMatch", storage, victim, enc_bucket)


def test_tampered_signature_v2(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    url, f = form_for(attack_proxy, enc_bucket, "a", v2=True)
    f["signature"] = base64.b64encode(b"\0" * 20).decode()
    refused(post(url, encode_form(f, b"x")), 403, "SignatureDoesNotMatch", storage, victim, enc_bucket)


def test_credential_swapped_to_victim(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    """Mallory signs with its key but names the victim's access key in the credential."""
    url, f = form_for(attack_proxy, enc_bucket, "outside", creds=MALLORY)
    f["x-amz-credential"] = f["x-amz-credential"].replace(MALLORY_AK, CLIENT_AK)
    refused(post(url, encode_form(f, b"x")), 403, "SignatureDoesNotMatch", storage, victim, enc_bucket)


def test_unknown_access_key(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    f = v4_fields(("AKIDNOBODYATALL00001", "whatever-secret"), enc_bucket, [{"key": "k"}])
    r = post(object_url(attack_proxy.url, enc_bucket), encode_form({"key": "k", **f}, b"x"))
    refused(r, 403, "InvalidAccessKeyId", storage, victim, enc_bucket)


def test_anonymous_form(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    r = post(object_url(attack_proxy.url, enc_bucket), encode_form({"key": "k"}, b"x"))
    refused(r, 403, "AccessDenied", storage, victim, enc_bucket)


def test_expired_policy(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    f = v4_fields(VICTIM, enc_bucket, [{"key": "k"}], expires_in=-5)
    r = post(object_url(attack_proxy.url, enc_bucket), encode_form({"key": "k", **f}, b"x"))
    err = refused(r, 403, "AccessDenied", storage, victim, enc_bucket)
    assert err["Message"] == "Invalid according to Policy: Policy expired."


@pytest.mark.parametrize("policy", [
    "not base64!", base64.b64encode(b"{not json").decode(),
    base64.b64encode(b'{"conditions": []}').decode(),
    base64.b64encode(b'{"expiration": "tomorrow", "conditions": []}').decode(),
    base64.b64encode(b'{"expiration": "2099-01-01T00:00:00Z", "expiration": "2000-01-01T00:00:00Z", "conditions": []}').decode(),
    base64.b64encode(b'{"expiration": "2099-01-01T00:00:00Z", "conditions": [["ends-with", "$key", "x"]]}').decode(),
    base64.b64encode(b'{"expiration": "2099-01-01T00:00:00Z", "conditions": [["starts-with", "$bucket", ""]]}').decode(),
    base64.b64encode(b'{"expiration": "2099-01-01T00:00:00Z", "conditions": ' + b"[" * 5000 + b"]" * 5000 + b"}").decode(),
], ids=["base64", "json", "no-expiration", "bad-expiration", "duplicate-key", "unknown-op", "starts-with-bucket", "deep"])
def test_malformed_policy(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str, policy: str) -> None:
    """A signed but malformed policy: InvalidPolicyDocument (a signature over junk proves nothing more)."""
    sig = base64.b64encode(hmac.new(CLIENT_SK.encode(), policy.encode(), hashlib.sha1).digest()).decode()
    fields = {"key": "k", "AWSAccessKeyId": CLIENT_AK, "policy": policy, "signature": sig}
    r = post(object_url(attack_proxy.url, enc_bucket), encode_form(fields, b"x"))
    code = "MaxPostPreDataLengthExceeded" if len(policy) > 20000 else "InvalidPolicyDocument"
    refused(r, 400, code, storage, victim, enc_bucket)


# --------------------------------------------------------------------- every kind of condition


CASES = [
    # (conditions the victim signs, fields the attacker posts, expected code)
    ([{"Content-Type": "image/png"}], {"Content-Type": "text/html"}, "AccessDenied"),  # exact, object form
    ([["eq", "$Content-Type", "image/png"]], {"Content-Type": "image/pngx"}, "AccessDenied"),  # eq, list form
    ([["starts-with", "$Content-Type", "image/"]], {"Content-Type": "image/png, text/html"}, "AccessDenied"),
    ([["starts-with", "$x-amz-meta-tag", "ok-"]], {"x-amz-meta-tag": "evil"}, "AccessDenied"),
    ([{"x-amz-meta-tag": "ok"}], {"x-amz-meta-tag": "ok", "x-amz-meta-extra": "smuggled"}, "AccessDenied"),
    ([{"acl": "private"}], {"acl": "public-read"}, "AccessDenied"),
    ([{"success_action_status": "201"}], {"success_action_status": "200"}, "AccessDenied"),
    ([["starts-with", "$success_action_redirect", "https://app.example.com/"]],
     {"success_action_redirect": "https://evil.example/"}, "AccessDenied"),
    ([{"x-amz-storage-class": "STANDARD"}], {"x-amz-storage-class": "GLACIER"}, "AccessDenied"),
    ([{"Cache-Control": "no-cache"}], {}, "AccessDenied"),  # a condition on a field left out
    ([], {"Content-Disposition": "attachment"}, "AccessDenied"),  # a field no condition covers
    ([["content-length-range", 0, 10]], {}, "EntityTooLarge"),
    ([["content-length-range", 1000, 2000]], {}, "EntityTooSmall"),
]


@pytest.mark.parametrize(("conditions", "extra", "code"), CASES, ids=[
    "exact", "eq", "starts-with-list", "starts-with-meta", "extra-meta", "acl", "status", "redirect", "x-amz",
    "missing-field", "uncovered-field", "too-large", "too-small"])
def test_condition_violated(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str,
                            conditions: list[Any], extra: dict[str, str], code: str) -> None:
    key = unique_key()
    f = v4_fields(VICTIM, enc_bucket, [{"key": key}, *conditions])
    r = post(object_url(attack_proxy.url, enc_bucket), encode_form({"key": key, **extra, **f}, b"y" * 100))
    err = refused(r, 403 if code == "AccessDenied" else 400, code, storage, victim, enc_bucket)
    if code == "AccessDenied":
        assert err["Message"].startswith("Invalid according to Policy: "), err


def test_key_outside_starts_with(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    url, f = form_for(attack_proxy, enc_bucket, "uploads/${filename}")
    f["key"] = "admin/config.json"
    err = refused(post(url, encode_form(f, b"x")), 403, "AccessDenied", storage, victim, enc_bucket)
    assert "starts-with" in err["Message"] and "$key" in err["Message"]


@pytest.mark.needs("awkward_keys")
def test_filename_cannot_escape_prefix(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    """${filename} is substituted literally: ``../`` makes a strange key under the prefix, no escape."""
    url, f = form_for(attack_proxy, enc_bucket, "uploads/${filename}")
    assert post(url, encode_form(f, b"x", filename="../admin")).status == 204
    keys = [o["Key"] for o in storage.list_objects_v2(Bucket=enc_bucket)["Contents"]]
    assert keys == ["uploads/../admin"]
    victim.delete_object(Bucket=enc_bucket, Key="uploads/../admin")


def test_policy_for_another_bucket(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    url, f = form_for(attack_proxy, "some-other-bucket", "k")
    r = post(object_url(attack_proxy.url, enc_bucket), encode_form(f, b"x"))
    err = refused(r, 403, "AccessDenied", storage, victim, enc_bucket)
    assert "$bucket" in err["Message"]


def test_oversized_file_is_cut_off(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    """8 MiB against a 1 MiB range: refused while streaming, the rest never read."""
    url, f = form_for(attack_proxy, enc_bucket, "big", conditions=[["content-length-range", 0, 1 << 20]])
    r = post(url, encode_form(f, b"z" * (8 << 20)))
    refused(r, 400, "EntityTooLarge", storage, victim, enc_bucket)


# --------------------------------------------------------------------- grants


def test_limited_identity_outside_its_prefix(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    url, f = form_for(attack_proxy, enc_bucket, "victim/data", creds=MALLORY)
    refused(post(url, encode_form(f, b"x")), 403, "AccessDenied", storage, victim, enc_bucket)


def test_limited_identity_cannot_grant_acl(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    """A public-read ACL needs ``admin``, as on a PUT."""
    url, f = form_for(attack_proxy, enc_bucket, "mallory/x", creds=MALLORY, fields={"acl": "public-read"},
                      conditions=[{"acl": "public-read"}])
    refused(post(url, encode_form(f, b"x")), 403, "AccessDenied", storage, victim, enc_bucket)


def test_limited_identity_within_its_prefix(attack_proxy: Any, victim: Any, enc_bucket: str) -> None:
    url, f = form_for(attack_proxy, enc_bucket, "mallory/ok", creds=MALLORY)
    assert post(url, encode_form(f, b"mine")).status == 204
    assert victim.get_object(Bucket=enc_bucket, Key="mallory/ok")["Body"].read() == b"mine"


def test_reserved_metadata(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    url, f = form_for(attack_proxy, enc_bucket, "k", fields={"x-amz-meta-s3proxy-v": "1"},
                      conditions=[{"x-amz-meta-s3proxy-v": "1"}])
    refused(post(url, encode_form(f, b"x")), 400, "InvalidArgument", storage, victim, enc_bucket)


# --------------------------------------------------------------------- the form itself


def test_second_file_before_file(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    url, f = form_for(attack_proxy, enc_bucket, "k")
    body = encode_form(f, b"decoy", file_name_field="other")[: -len(f"--{BOUNDARY}--\r\n")]
    body += encode_form({}, b"real")
    refused(post(url, body), 400, "IncorrectNumberOfFilesInPostRequest", storage, victim, enc_bucket)


def test_second_file_after_file_is_ignored(attack_proxy: Any, victim: Any, enc_bucket: str) -> None:
    url, f = form_for(attack_proxy, enc_bucket, "k")
    body = encode_form(f, b"first")[: -len(f"--{BOUNDARY}--\r\n")] + encode_form({}, b"second" * 1000)
    assert post(url, body).status == 204
    assert victim.get_object(Bucket=enc_bucket, Key="k")["Body"].read() == b"first"
    victim.delete_object(Bucket=enc_bucket, Key="k")


def test_no_file(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    url, f = form_for(attack_proxy, enc_bucket, "k")
    refused(post(url, encode_form(f, None)), 400, "IncorrectNumberOfFilesInPostRequest", storage, victim, enc_bucket)


def test_missing_key(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    url, f = form_for(attack_proxy, enc_bucket, "k")
    del f["key"]
    refused(post(url, encode_form(f, b"x")), 400, "InvalidArgument", storage, victim, enc_bucket)


def test_duplicate_field(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    """Two ``key`` fields: which one the policy saw would be a guess; refused."""
    url, f = form_for(attack_proxy, enc_bucket, "k")
    fields = [*f.items(), ("Key", "other")]
    refused(post(url, encode_form(fields, b"x")), 400, "InvalidArgument", storage, victim, enc_bucket)


def test_huge_field(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    url, f = form_for(attack_proxy, enc_bucket, "k")
    fields = {**f, "x-ignore-padding": "p" * (4 << 20)}
    refused(post(url, encode_form(fields, b"x")), 400, "MaxPostPreDataLengthExceeded", storage, victim, enc_bucket)


def test_many_fields(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    url, f = form_for(attack_proxy, enc_bucket, "k")
    fields = [*f.items(), *((f"x-ignore-{i}", "") for i in range(5000))]
    refused(post(url, encode_form(fields, b"x")), 400, "MaxPostPreDataLengthExceeded", storage, victim, enc_bucket)


def test_sigv4_and_sigv2_together(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    f4 = v4_fields(VICTIM, enc_bucket, [{"key": "k"}])
    f2 = v2_fields(VICTIM, [{"bucket": enc_bucket}, {"key": "k"}])
    r = post(object_url(attack_proxy.url, enc_bucket), encode_form({"key": "k", **f4, **f2}, b"x"))
    refused(r, 400, "InvalidArgument", storage, victim, enc_bucket)


def test_authorization_header_with_form(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    """A form POST signed with an Authorization header is not a browser form: the normal path
    (``PostObject`` needs ``admin``, and is not served on encrypted buckets)."""
    url, f = form_for(attack_proxy, enc_bucket, "k")
    ctype = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    r = post(url, encode_form(f, b"x"), headers={"Authorization": "AWS4-HMAC-SHA256 Credential=x"})
    assert r.status in (400, 403) and r.error()["Code"] != "MalformedPOSTRequest"
    r = signed(attack_proxy, "POST", enc_bucket, headers=ctype, body=encode_form(f, b"x"), creds=MALLORY)
    refused(r, 403, "AccessDenied", storage, victim, enc_bucket)
    r = signed(attack_proxy, "POST", enc_bucket, headers=ctype, body=encode_form(f, b"x"), creds=VICTIM)
    refused(r, 501, "NotImplemented", storage, victim, enc_bucket)
    r = post(url + "?X-Amz-Signature=00", encode_form(f, b"x"))
    assert r.status in (400, 403)
    nothing_stored(storage, enc_bucket)


def _framing_cases(f: dict[str, str]) -> dict[str, tuple[bytes, str]]:
    good = encode_form(f, b"payload")
    return {
        "no-boundary-param": (good, "multipart/form-data"),
        "wrong-boundary": (good, "multipart/form-data; boundary=somethingelse"),
        "truncated": (good[: len(good) - 40], f"multipart/form-data; boundary={BOUNDARY}"),
        "no-closing-boundary": (good[: good.rindex(b"\r\n--")], f"multipart/form-data; boundary={BOUNDARY}"),
        "nameless-part": (f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n".encode() + good,
                          f"multipart/form-data; boundary={BOUNDARY}"),
        "header-line-too-long": (f"--{BOUNDARY}\r\nX-Junk: {'j' * 20000}\r\n\r\nx\r\n".encode() + good,
                                 f"multipart/form-data; boundary={BOUNDARY}"),
        "nested-multipart": (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"\r\nContent-Type: multipart/mixed; '
            f"boundary=inner\r\n\r\n--inner\r\n\r\nx\r\n--inner--\r\n--{BOUNDARY}--\r\n".encode(),
            f"multipart/form-data; boundary={BOUNDARY}"),
        "empty-body": (b"", f"multipart/form-data; boundary={BOUNDARY}"),
    }


@pytest.mark.parametrize("case", ["no-boundary-param", "wrong-boundary", "truncated", "no-closing-boundary",
                                  "nameless-part", "header-line-too-long", "nested-multipart", "empty-body"])
def test_malformed_framing(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str, case: str) -> None:
    url, f = form_for(attack_proxy, enc_bucket, "k")
    body, ctype = _framing_cases(f)[case]
    r = send("POST", url, {"Content-Type": ctype}, body)
    err = assert_s3_error(r, 400, ("MalformedPOSTRequest", "IncorrectNumberOfFilesInPostRequest"))
    assert err
    nothing_stored(storage, enc_bucket)
    still_serving(victim, enc_bucket)


def test_strict_backend_round_trip(strict_proxy: Any, devstore_backend: Any) -> None:
    """The whole path against the AWS-strict embedded store: a POSTed object is ciphertext there."""
    s3 = strict_proxy.client(CLIENT_AK, CLIENT_SK)
    bucket = "post-" + unique_key("")
    s3.create_bucket(Bucket=bucket)
    url, f = presigned_post(strict_proxy, bucket, "k", creds=VICTIM)
    assert post(url, encode_form(f, b"strict " * 1000)).status == 204
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"strict " * 1000
    stored = devstore_backend.client().get_object(Bucket=bucket, Key="k")["Body"].read()
    assert b"strict strict" not in stored
    s3.delete_object(Bucket=bucket, Key="k")
    s3.delete_bucket(Bucket=bucket)


# --------------------------------------------------------------------- the pure parts, fuzzed

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(conditions=_json, expiration=st.one_of(st.text(max_size=30), st.just("2099-01-01T00:00:00.000Z")),
       fields=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=4))
def test_policy_parser_fails_only_with_s3_errors(conditions: Any, expiration: str, fields: dict[str, str]) -> None:
    doc = base64.b64encode(json.dumps({"expiration": expiration, "conditions": conditions}).encode()).decode()
    try:
        policy = parse_policy(doc)
        check_policy(policy, {k.lower(): v for k, v in fields.items()}, datetime.now(UTC))
    except S3Error as e:
        assert e.status in (400, 403)


def test_spool_holds_no_plaintext_and_detects_tampering() -> None:
    """The spooled file part is sealed under a one-time key: no plaintext on disk, and a byte
    changed in the temporary file fails the upload instead of reaching the backend."""
    async def run() -> None:
        data = b"plaintext-on-disk? " * (SPOOL_CHUNK // 8)
        spool = Spool(len(data), Checker())
        for i in range(0, len(data), SPOOL_CHUNK):
            await spool._seal(data[i:i + SPOOL_CHUNK])
        spool._size = spool.length = len(data)  # what fill() leaves
        spool._file.seek(0)
        on_disk = spool._file.read()
        assert b"plaintext-on-disk?" not in on_disk
        assert b"".join([bytes(c) async for c in spool.chunks()]) == data
        spool._file.seek(SPOOL_CHUNK + 100)
        spool._file.write(b"\xff")
        with pytest.raises(S3Error) as e:
            _ = [c async for c in spool.chunks()]
        assert e.value.status == 500
        spool.close()

    asyncio.run(run())
