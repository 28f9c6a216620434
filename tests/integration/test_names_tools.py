"""The offline tools on a bucket with encrypted names (docs/NAMES.md "Tools").

``rewrap`` works: it lists stored keys, decrypts them, checks each envelope's binding against
the plaintext key, re-wraps data keys and the bucket's name key, and a proxy that only holds
the new key reads everything back.  ``export`` (through the proxy) and ``decrypt`` (around it)
work with plaintext keys.  ``migrate`` refuses with the reason.  A configuration that does not
say the bucket has encrypted names is refused up front.  Names planted on the storage that do
not decrypt are reported, never processed.  Also: sealed tags together with encrypted names,
and ListMultipartUploads in plaintext order.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Backend, Proxy, empty_and_delete_bucket, proxy_settings, start_proxy, stop_proxy
from tests.integration.helpers import MiB, multipart_upload, unique
from tests.integration.keyfixtures import local_keys, rewrap, with_keys
from tests.integration.test_recovery import decrypt

MARK = "zq7tool"
KMS_HEADER = "x-amz-server-side-encryption-aws-kms-key-id"


def names_settings(backend: Backend, *keys: str, **bucket: Any) -> Any:
    """Every bucket (the default) with encrypted names, and ``bucket`` extra settings."""
    return with_keys(proxy_settings(backend, default_bucket={"names": {"encrypt": True, "pad_to": 16}, **bucket}),
                     local_keys(*(keys or ("k1", "k2"))), require_https_for_sse_c=False)


@pytest.fixture(scope="module")
def nproxy(backend: Backend) -> Iterator[Proxy]:
    p = start_proxy(names_settings(backend))
    yield p
    stop_proxy(p)


@pytest.fixture()
def s3(nproxy: Proxy) -> Any:
    return nproxy.client()


@pytest.fixture()
def bucket(s3: Any) -> Iterator[str]:
    name = unique("ntool-")
    s3.create_bucket(Bucket=name)
    yield name
    empty_and_delete_bucket(s3, name)


OBJECTS = {f"docs/{MARK}-a.txt": b"alpha" * 1000, f"docs/sub/{MARK}-b.txt": b"beta", f"top-{MARK}": b"",
           "docs/ü ñ+%25.txt": b"awkward"}


def seed(s3: Any, bucket: str) -> dict[str, bytes]:
    for k, v in OBJECTS.items():
        s3.put_object(Bucket=bucket, Key=k, Body=v, Metadata={"owner": "alice"})
    return dict(OBJECTS)


def stored_keys(raw: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in raw.list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.mark.needs('upload_part_copy')
def test_rewrap_a_names_bucket(backend: Backend, nproxy: Proxy, s3: Any, raw: Any, bucket: str, tmp_path: Path) -> None:
    objs = seed(s3, bucket)
    parts = [os.urandom(5 * MiB), os.urandom(1000)]
    multipart_upload(s3, bucket, f"docs/{MARK}-mp.bin", parts)
    objs[f"docs/{MARK}-mp.bin"] = b"".join(parts)
    raw.put_object(Bucket=bucket, Key="planted-by-the-storage", Body=b"x")  # does not decrypt
    assert not [k for k in stored_keys(raw, bucket) if MARK in k]
    settings, state = nproxy.settings, tmp_path / "s.json"

    dry = rewrap(settings, bucket, "k2", dry_run=True, state_file=state)
    assert dry.code == 0, dry.out + dry.err
    assert f"would re-wrap: docs/{MARK}-a.txt (local:k1 -> k2)" in dry.out  # the report names plaintext keys
    assert "planted-by-the-storage" in dry.out and "skipped" in dry.out
    assert "would re-wrap: .s3proxy/names-key (local:k1 -> k2)" in dry.out

    part = rewrap(settings, bucket, "k2", prefix="docs/sub/", state_file=state)  # a prefix of whole segments
    assert part.code == 0, part.out + part.err
    assert "2 re-wrapped" in part.out  # the object under the prefix and the name key
    assert s3.head_object(Bucket=bucket, Key=f"docs/sub/{MARK}-b.txt")["ResponseMetadata"]["HTTPHeaders"][KMS_HEADER] == "k2"

    run = rewrap(settings, bucket, "k2", state_file=state)
    assert run.code == 0, run.out + run.err
    assert f"{len(objs) - 1} re-wrapped" in run.out, run.out
    assert not state.exists()
    assert not [k for k in stored_keys(raw, bucket) if MARK in k]

    k2_only = start_proxy(names_settings(backend, "k2"))  # k1 retired: data keys and the name key under k2
    try:
        c = k2_only.client()
        for k, v in objs.items():
            got = c.get_object(Bucket=bucket, Key=k)
            assert got["Body"].read() == v, k
        listed = [o["Key"] for o in c.list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert listed == sorted(objs), listed
    finally:
        stop_proxy(k2_only)
    again = rewrap(settings, bucket, "k2", state_file=state)
    assert again.code == 0 and "0 re-wrapped" in again.out, again.out

    bad = rewrap(settings, bucket, "k2", prefix="do", state_file=state)
    assert bad.code == 1 and "end it with '/'" in bad.out, bad.out


def test_a_moved_object_is_not_rebound(nproxy: Proxy, s3: Any, raw: Any, bucket: str, tmp_path: Path) -> None:
    """A storage-side copy of one stored object over another's name: rewrap refuses it (binding)."""
    s3.put_object(Bucket=bucket, Key="victim", Body=b"v")
    (sv,) = (k for k in stored_keys(raw, bucket) if not k.startswith(".s3proxy/"))
    s3.put_object(Bucket=bucket, Key="attacker", Body=b"a")
    (sa,) = (k for k in stored_keys(raw, bucket) if not k.startswith(".s3proxy/") and k != sv)
    raw.copy_object(Bucket=bucket, Key=sv, CopySource={"Bucket": bucket, "Key": sa}, MetadataDirective="COPY")
    run = rewrap(nproxy.settings, bucket, "k2", state_file=tmp_path / "s.json")
    assert run.code == 1
    assert "failed: victim: metadata is not bound to this bucket and key" in run.out, run.out


def test_tools_refuse_a_configuration_without_names(backend: Backend, s3: Any, bucket: str, tmp_path: Path) -> None:
    seed(s3, bucket)
    plain = with_keys(proxy_settings(backend), local_keys("k1", "k2"), require_https_for_sse_c=False)
    run = rewrap(plain, bucket, "k2", state_file=tmp_path / "s.json")
    assert run.code == 1 and "0 re-wrapped" in run.out, run.out
    assert run.out.count("the key looks like an encrypted name: if the bucket has encrypted names, its "
                         f"configuration must say so (buckets.{bucket}.names)") == len(OBJECTS), run.out
    config = _config(tmp_path, backend, names=False)
    code, _, err = decrypt(config, bucket, "--key", f"top-{MARK}")
    assert code == 2 and f"buckets.{bucket}.names" in err, err


def test_rewrap_refuses_a_names_bucket_without_its_name_key(nproxy: Proxy, raw: Any, bucket: str,
                                                            tmp_path: Path) -> None:
    """Before anything was written there is no name key: nothing to re-wrap, said clearly."""
    run = rewrap(nproxy.settings, bucket, "k2", state_file=tmp_path / "s.json")
    assert run.code == 2 and ".s3proxy/names-key) is not on the storage" in run.err, run.err


def test_migrate_refuses_a_names_bucket(nproxy: Proxy, bucket: str, tmp_path: Path) -> None:
    from s3proxy.bulkjob import SetupError
    from s3proxy.migrate import Migrator

    job = Migrator(nproxy.settings, bucket, state_file=tmp_path / "s.json", progress=False, out=io.StringIO())
    with pytest.raises(SetupError, match="has encrypted names .* copy the objects in through the proxy"):
        asyncio.run(job.run())


def test_export_a_names_bucket(nproxy: Proxy, s3: Any, raw: Any, bucket: str, tmp_path: Path) -> None:
    from s3proxy.export import Exporter

    objs = seed(s3, bucket)
    raw.put_object(Bucket=bucket, Key="planted-by-the-storage", Body=b"x")
    out = tmp_path / "out"
    job = Exporter(nproxy.settings, bucket, dest=str(out), state_file=tmp_path / "s.json", progress=False,
                   out=io.StringIO())
    r = asyncio.run(job.run())
    assert r.ok and r.done == len(objs), r.failures
    for k, v in objs.items():
        assert (out / k).read_bytes() == v, k
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == sorted(objs)
    sub = tmp_path / "sub"
    job = Exporter(nproxy.settings, bucket, "docs/sub/", dest=str(sub), state_file=tmp_path / "s.json",
                   progress=False, out=io.StringIO())
    r = asyncio.run(job.run())
    assert r.ok and r.done == 1 and (sub / f"docs/sub/{MARK}-b.txt").read_bytes() == b"beta"


def _config(tmp_path: Path, backend: Backend, *, names: bool = True) -> Path:
    cfg: dict[str, Any] = {
        "backend": {"url": backend.url, "access_key": backend.access_key, "secret_key": backend.secret_key,
                    "region": backend.region},
        "keys": local_keys("k1", "k2") | {"audit": {"target": "off"}},
    }
    if names:
        cfg["default_bucket"] = {"names": {"encrypt": True, "pad_to": 16}}
    path = tmp_path / ("names.yaml" if names else "plain.yaml")
    path.write_text(json.dumps(cfg))
    return path


def test_decrypt_a_names_bucket(backend: Backend, s3: Any, raw: Any, bucket: str, tmp_path: Path) -> None:
    objs = seed(s3, bucket)
    raw.put_object(Bucket=bucket, Key="planted-by-the-storage", Body=b"x")
    config = _config(tmp_path, backend)
    code, out, err = decrypt(config, bucket, "--key", f"docs/{MARK}-a.txt")
    assert code == 0 and out == objs[f"docs/{MARK}-a.txt"], err
    to = tmp_path / "tree"
    code, _, err = decrypt(config, bucket, "--prefix", "docs/", "--to", str(to))
    assert code == 0, err
    for k in (k for k in objs if k.startswith("docs/")):
        assert (to / k).read_bytes() == objs[k], k
    whole = tmp_path / "whole"
    code, _, err = decrypt(config, bucket, "--prefix", "", "--to", str(whole))
    assert code == 1 and "planted-by-the-storage: the stored name does not decrypt" in err, err
    assert (whole / f"top-{MARK}").read_bytes() == b""
    code, _, err = decrypt(config, bucket, "--prefix", "do", "--to", str(tmp_path / "x"))
    assert code == 1 and "end it with '/'" in err, err


def test_sealed_tags_with_encrypted_names(backend: Backend, raw: Any, tmp_path: Path) -> None:
    p = start_proxy(names_settings(backend, tags="sealed"))
    s3, name = p.client(), unique("ntags-")
    try:
        s3.create_bucket(Bucket=name)
        key = f"dir/{MARK}-tagged"
        s3.put_object(Bucket=name, Key=key, Body=b"t", Tagging=f"secret={MARK}")
        assert s3.get_object_tagging(Bucket=name, Key=key)["TagSet"] == [{"Key": "secret", "Value": MARK}]
        s3.put_object_tagging(Bucket=name, Key=key, Tagging={"TagSet": [{"Key": "n", "Value": "2"}]})
        assert s3.get_object_tagging(Bucket=name, Key=key)["TagSet"] == [{"Key": "n", "Value": "2"}]
        assert s3.get_object(Bucket=name, Key=key)["Body"].read() == b"t"
        s3.delete_object_tagging(Bucket=name, Key=key)
        assert s3.get_object_tagging(Bucket=name, Key=key)["TagSet"] == []
        with pytest.raises(Exception) as e:
            s3.get_object_tagging(Bucket=name, Key="dir/" + "x" * 900)
        assert "KeyTooLong" in str(e.value), e.value
        assert not [k for k in stored_keys(raw, name) if MARK in k]
    finally:
        empty_and_delete_bucket(s3, name)
        stop_proxy(p)


def test_multipart_uploads_listed_in_plaintext_order(s3: Any, bucket: str) -> None:
    keys = [f"u/{c}{MARK}" for c in "dbeac"] + ["u/b" + MARK]
    ids = [s3.create_multipart_upload(Bucket=bucket, Key=k)["UploadId"] for k in keys]
    try:
        listed = [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix="u/")["Uploads"]]
        assert listed == sorted(keys), listed
    finally:
        for k, u in zip(keys, ids, strict=True):
            s3.abort_multipart_upload(Bucket=bucket, Key=k, UploadId=u)
