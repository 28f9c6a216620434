"""Encrypted object names (issue 15 item 3, docs/NAMES.md): a bucket with ``names.encrypt``.

The backend only ever sees encrypted keys (its raw listing and, on the strict store, its files
hold no plaintext name segment); boto3 put/get/head/delete/copy/multipart/list work with
plaintext keys; listings come back in plaintext order with the proxy's own paging; the
refusals are clean S3 errors; a storage-side attacker who moves a stored object or swaps or
removes the name key gets errors, never another object's bytes or a key of their choosing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import (
    ROOT,
    STRICT_AK,
    STRICT_SK,
    Backend,
    Proxy,
    _stop,
    backend_kind,
    empty_and_delete_bucket,
    free_port,
    proxy_settings,
    start_proxy,
    stop_proxy,
    wait_port,
)
from tests.integration.helpers import MiB, multipart_upload

MARK = "zq7secret"  # in every plaintext name segment below; never on the storage
PLAIN_BUCKET = "nplain-" + uuid.uuid4().hex[:8]
TINY_BUCKET = "ntiny-" + uuid.uuid4().hex[:8]
PAD_BUCKET = "npad-" + uuid.uuid4().hex[:8]


@contextmanager
def _store() -> Iterator[tuple[Backend, Path | None]]:
    """The strict store with a root the tests can read."""
    root = Path(tempfile.mkdtemp(prefix="s3proxy-names-"))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3proxy.devstore", "--root", str(root / "data"), "--listen", f"127.0.0.1:{port}",
         "--access-key", STRICT_AK, "--min-part-size", str(5 * MiB)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "DEVSTORE_SECRET_KEY": STRICT_SK},
        cwd=str(ROOT),
    )
    try:
        wait_port(port)
        yield Backend(f"http://127.0.0.1:{port}", STRICT_AK, STRICT_SK, "us-east-1", "strict"), root
    finally:
        _stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def names_settings(store: Backend) -> Any:
    return proxy_settings(store, require_https_for_sse_c=False, default_bucket={"names": {"encrypt": True, "max_level": 200}}, buckets={
        PLAIN_BUCKET: {},
        TINY_BUCKET: {"names": {"encrypt": True, "max_level": 5}},
        PAD_BUCKET: {"names": {"encrypt": True, "pad_to": 32}},
    })


@pytest.fixture(scope="module")
def store(request: pytest.FixtureRequest) -> Iterator[tuple[Backend, Path | None]]:
    """Its own strict store (whose files a test reads); another backend kind: the session's."""
    if backend_kind() != "strict":
        yield request.getfixturevalue("backend"), None
        return
    with _store() as s:
        yield s


@pytest.fixture(scope="module")
def nproxy(store: tuple[Backend, Path | None]) -> Iterator[Proxy]:
    p = start_proxy(names_settings(store[0]))
    for b in (PLAIN_BUCKET, TINY_BUCKET, PAD_BUCKET):
        try:
            p.client().create_bucket(Bucket=b)
        except ClientError as e:  # a second module's proxy (test_names_clients) on the same store
            if e.response["Error"]["Code"] not in ("BucketAlreadyExists", "BucketAlreadyOwnedByYou"):
                raise
    yield p
    for b in (PLAIN_BUCKET, TINY_BUCKET, PAD_BUCKET):
        empty_and_delete_bucket(p.client(), b)
    stop_proxy(p)


@pytest.fixture()
def s3(nproxy: Proxy) -> Any:
    return nproxy.client()


@pytest.fixture()
def raw(store: tuple[Backend, Path | None]) -> Any:
    return store[0].client()


@pytest.fixture()
def bucket(s3: Any) -> Iterator[str]:
    name = "n-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    yield name
    empty_and_delete_bucket(s3, name)


def raw_keys(raw: Any, bucket: str) -> list[str]:
    out: list[str] = []
    for page in raw.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


KEYS = [f"{MARK}-patients/jane-doe-{MARK}/diagnosis-{MARK}.pdf", f"{MARK}-patients/jane-doe-{MARK}/notes.txt",
        f"{MARK}-patients/john/x-{MARK}", f"top-{MARK}.txt", "a", "b/c", "b/d/e", "ü-ñ/ß €"]


def test_object_round_trips_and_backend_sees_no_names(s3: Any, raw: Any, bucket: str) -> None:
    for i, k in enumerate(KEYS):
        s3.put_object(Bucket=bucket, Key=k, Body=b"body %d" % i, Metadata={"m": "v"})
    for i, k in enumerate(KEYS):
        assert s3.get_object(Bucket=bucket, Key=k)["Body"].read() == b"body %d" % i
        assert s3.head_object(Bucket=bucket, Key=k)["ContentLength"] == len(b"body %d" % i)
    stored = raw_keys(raw, bucket)
    names_ = [k for k in stored if not k.startswith(".s3proxy/")]
    assert len(names_) == len(KEYS) and ".s3proxy/names-key" in stored
    for k in names_:
        assert MARK not in k and "patients" not in k and "diagnosis" not in k
        assert all(seg.startswith("~") for seg in k.split("/"))
    s3.delete_object(Bucket=bucket, Key=KEYS[0])
    with pytest.raises(ClientError) as e:
        s3.head_object(Bucket=bucket, Key=KEYS[0])
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert len([k for k in raw_keys(raw, bucket) if not k.startswith(".s3proxy/")]) == len(KEYS) - 1


def test_listing_sorted_and_paged(s3: Any, bucket: str) -> None:
    keys = sorted({f"d{i % 3}/f{i:03d}-{MARK}" for i in range(24)} | {f"f{i}" for i in range(7)} | {"d1/sub/x"})
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=b"x" * 10)
    r = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["d0/", "d1/", "d2/"]
    assert [o["Key"] for o in r["Contents"]] == [f"f{i}" for i in range(7)]
    assert all(o["Size"] == 10 for o in r["Contents"])
    r = s3.list_objects_v2(Bucket=bucket, Prefix="d1/", Delimiter="/")
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["d1/sub/"]
    assert [o["Key"] for o in r["Contents"]] == [k for k in keys if k.startswith("d1/f")]
    # recursive, paged by MaxKeys through the proxy's continuation tokens
    got: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 4}):
        assert page["KeyCount"] <= 4
        got += [o["Key"] for o in page.get("Contents", [])]
    assert got == keys
    # delimiter levels paged: prefixes and keys counted together, in order
    got = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 2}):
        got += [p["Prefix"] for p in page.get("CommonPrefixes", [])] + [o["Key"] for o in page.get("Contents", [])]
    assert sorted(got) == ["d0/", "d1/", "d2/"] + [f"f{i}" for i in range(7)]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, StartAfter="d2/f020")["Contents"]] == \
        [k for k in keys if k > "d2/f020"]
    got = []
    for page in s3.get_paginator("list_objects").paginate(Bucket=bucket, PaginationConfig={"PageSize": 5}):
        got += [o["Key"] for o in page.get("Contents", [])]
    assert got == keys
    r = s3.list_objects(Bucket=bucket, Marker="f3")
    assert [o["Key"] for o in r["Contents"]] == [k for k in keys if k > "f3"]
    r = s3.list_objects_v2(Bucket=bucket, Prefix="d0/", EncodingType="url")
    assert r["Contents"][0]["Key"].startswith("d0/f")


def test_pages_after_the_first_read_nothing_from_the_backend(nproxy: Proxy, s3: Any, bucket: str) -> None:
    for i in range(9):
        s3.put_object(Bucket=bucket, Key=f"p/{i}", Body=b"1")
    pages = lambda: s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="p/", PaginationConfig={"PageSize": 2})  # noqa: E731
    assert [o["Key"] for page in pages() for o in page["Contents"]] == [f"p/{i}" for i in range(9)]  # sizes memoised
    costs, before = [], nproxy.state.backend.requests_sent
    for page in pages():
        costs.append(nproxy.state.backend.requests_sent - before)
        before = nproxy.state.backend.requests_sent
        assert page["KeyCount"] <= 2
    assert costs == [1, 0, 0, 0, 0]  # the level is read once, then paged from memory


def test_refusals(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="photos/a", Body=b"1")
    with pytest.raises(ClientError) as e:
        s3.list_objects_v2(Bucket=bucket, Prefix="pho")
    assert code(e) == "InvalidArgument" and "inside a name" in str(e.value)
    with pytest.raises(ClientError) as e:
        s3.put_object(Bucket=bucket, Key="x" * 800, Body=b"1")
    assert code(e) == "KeyTooLongError"
    with pytest.raises(ClientError) as e:
        s3.list_objects_v2(Bucket=bucket, Delimiter="|")
    assert code(e) == "InvalidArgument"
    with pytest.raises(ClientError) as e:
        s3.list_objects_v2(Bucket=bucket, ContinuationToken="~forged")
    assert code(e) == "InvalidArgument"
    for i in range(6):
        s3.put_object(Bucket=TINY_BUCKET, Key=f"k{i}", Body=b"1")
    with pytest.raises(ClientError) as e:
        s3.list_objects_v2(Bucket=TINY_BUCKET)
    assert code(e) == "InvalidArgument" and "names.max_level" in str(e.value)
    assert s3.list_objects_v2(Bucket=TINY_BUCKET, Prefix="none/").get("Contents", []) == []


def test_copy_between_name_and_plain_buckets(s3: Any, raw: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key=f"src/{MARK}", Body=b"copy me")
    s3.copy_object(Bucket=bucket, Key=f"dst/{MARK}-2", CopySource={"Bucket": bucket, "Key": f"src/{MARK}"})
    assert s3.get_object(Bucket=bucket, Key=f"dst/{MARK}-2")["Body"].read() == b"copy me"
    s3.copy_object(Bucket=PLAIN_BUCKET, Key="from-names", CopySource={"Bucket": bucket, "Key": f"src/{MARK}"})
    assert s3.get_object(Bucket=PLAIN_BUCKET, Key="from-names")["Body"].read() == b"copy me"
    s3.copy_object(Bucket=bucket, Key=f"from-plain-{MARK}", CopySource={"Bucket": PLAIN_BUCKET, "Key": "from-names"})
    assert s3.get_object(Bucket=bucket, Key=f"from-plain-{MARK}")["Body"].read() == b"copy me"
    assert "from-names" in raw_keys(raw, PLAIN_BUCKET)  # a bucket without the setting keeps plain names
    assert not any(MARK in k for k in raw_keys(raw, bucket))


def test_multipart_and_upload_listings(s3: Any, raw: Any, bucket: str) -> None:
    key = f"big/{MARK}.bin"
    parts = [b"a" * (5 * MiB), b"b" * 1000]
    done = multipart_upload(s3, bucket, key, parts)
    assert done["Key"] == key and MARK in (done.get("Location") or MARK)  # rclone answers an empty Location
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"".join(parts)
    uid = s3.create_multipart_upload(Bucket=bucket, Key=f"pending/{MARK}")["UploadId"]
    s3.upload_part(Bucket=bucket, Key=f"pending/{MARK}", UploadId=uid, PartNumber=1, Body=b"p" * 100)
    lp = s3.list_parts(Bucket=bucket, Key=f"pending/{MARK}", UploadId=uid)
    assert lp["Key"] == f"pending/{MARK}" and lp["Parts"][0]["Size"] == 100
    ups = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [u["Key"] for u in ups] == [f"pending/{MARK}"] and ups[0]["UploadId"] == uid
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix="pending/")["Uploads"]] == [f"pending/{MARK}"]
    assert MARK not in repr(raw.list_multipart_uploads(Bucket=bucket))
    s3.abort_multipart_upload(Bucket=bucket, Key=f"pending/{MARK}", UploadId=uid)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [key]
    assert s3.list_objects_v2(Bucket=bucket)["Contents"][0]["Size"] == sum(map(len, parts))


def test_sse_c_upload_aborted_without_its_key(s3: Any, bucket: str) -> None:
    ssec = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "k" * 32}
    key = f"ssec/{MARK}"
    uid = s3.create_multipart_upload(Bucket=bucket, Key=key, **ssec)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=1, Body=b"p" * 100, **ssec)
    assert s3.list_parts(Bucket=bucket, Key=key, UploadId=uid)["Key"] == key  # proven by the backend's listing
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=uid)  # no key: proven by the backend's listing
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_delete_objects(s3: Any, raw: Any, bucket: str) -> None:
    keys = [f"del/{MARK}-{i}" for i in range(4)]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=b"1")
    r = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[:3]]})
    assert sorted(d["Key"] for d in r["Deleted"]) == keys[:3]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == keys[3:]


def test_padding_hides_lengths(s3: Any, raw: Any) -> None:
    s3.put_object(Bucket=PAD_BUCKET, Key="a", Body=b"1")
    s3.put_object(Bucket=PAD_BUCKET, Key="abcdefghijklmnopqrstuvwxyz", Body=b"2")
    stored = [k for k in raw_keys(raw, PAD_BUCKET) if not k.startswith(".s3proxy/")]
    assert len({len(k) for k in stored}) == 1
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=PAD_BUCKET)["Contents"]) == ["a", "abcdefghijklmnopqrstuvwxyz"]


def test_store_files_hold_no_name(s3: Any, store: tuple[Backend, Path | None], bucket: str) -> None:
    for k in KEYS:
        s3.put_object(Bucket=bucket, Key=k, Body=b"1")
    multipart_upload(s3, bucket, f"mp/{MARK}", [b"x" * (5 * MiB), b"y"])
    s3.create_multipart_upload(Bucket=bucket, Key=f"open/{MARK}")
    root = store[1]
    if root is None:
        pytest.skip("reads the strict store's files")
    for path in root.rglob("*"):
        assert MARK not in str(path)
        if path.is_file() and path.stat().st_size < 4 * MiB:
            assert MARK.encode() not in path.read_bytes(), path


# ------------------------------------------------------------------ a storage-side attacker


def test_moved_object_is_refused_not_served(s3: Any, raw: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="secret", Body=b"the secret")
    s3.put_object(Bucket=bucket, Key="public", Body=b"public")
    stored = {raw.head_object(Bucket=bucket, Key=k)["ContentLength"]: k
              for k in raw_keys(raw, bucket) if not k.startswith(".s3proxy/")}
    secret_stored, public_stored = stored[max(stored)], stored[min(stored)]
    raw.copy_object(Bucket=bucket, Key=public_stored, CopySource={"Bucket": bucket, "Key": secret_stored})
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=bucket, Key="public")["Body"].read()
    assert code(e) == "AccessDenied" and "not bound to this bucket and key" in str(e.value)  # the envelope's binding
    assert s3.get_object(Bucket=bucket, Key="secret")["Body"].read() == b"the secret"
    # an object moved to a name that does not decrypt is neither listed nor reachable
    raw.copy_object(Bucket=bucket, Key="~AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", CopySource={"Bucket": bucket, "Key": secret_stored})
    raw.copy_object(Bucket=bucket, Key="plain-by-attacker", CopySource={"Bucket": bucket, "Key": secret_stored})
    assert sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]) == ["public", "secret"]


def _fresh(store: Backend) -> Proxy:
    return start_proxy(names_settings(store))


def test_swapped_or_removed_name_key_fails_closed(store: tuple[Backend, Path | None], s3: Any, raw: Any) -> None:
    a, b = "nk-a-" + uuid.uuid4().hex[:8], "nk-b-" + uuid.uuid4().hex[:8]
    for name in (a, b):
        s3.create_bucket(Bucket=name)
        s3.put_object(Bucket=name, Key=f"x/{MARK}", Body=b"1")
    try:
        # another bucket's name key (a valid wrap, for another context): refused
        other = raw.get_object(Bucket=b, Key=".s3proxy/names-key")["Body"].read()
        raw.put_object(Bucket=a, Key=".s3proxy/names-key", Body=other)
        p = _fresh(store[0])
        try:
            for call in (lambda: p.client().get_object(Bucket=a, Key=f"x/{MARK}"),
                         lambda: p.client().list_objects_v2(Bucket=a),
                         lambda: p.client().put_object(Bucket=a, Key="new", Body=b"1")):
                with pytest.raises(ClientError) as e:
                    call()
                assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
                assert "names-key" in e.value.response["Error"].get("Message", "") or e.value.response["Error"]["Code"]
            # garbage instead of a key
            raw.put_object(Bucket=b, Key=".s3proxy/names-key", Body=b"{not json")
            with pytest.raises(ClientError) as e:
                p.client().list_objects_v2(Bucket=b)
            assert code(e) == "InternalError"
            # removed while encrypted names exist: never replaced by a new key
            raw.delete_object(Bucket=b, Key=".s3proxy/names-key")
            with pytest.raises(ClientError) as e:
                p.client().put_object(Bucket=b, Key="y", Body=b"1")
            assert code(e) == "InternalError" and "missing" in str(e.value)
            assert ".s3proxy/names-key" not in raw_keys(raw, b)
        finally:
            stop_proxy(p)
    finally:
        for name in (a, b):
            for k in raw_keys(raw, name):
                raw.delete_object(Bucket=name, Key=k)
            raw.delete_bucket(Bucket=name)
