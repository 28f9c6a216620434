"""Attacks on the sealed metadata block of envelope v2 (docs/FORMAT.md 8, THREAT_MODEL A1-A3).

A storage-side writer (the backend's credentials) edits, swaps in from another object,
truncates or deletes ``s3proxy-seal``, or downgrades the object to a v1 envelope with
plaintext metadata of their choosing: every read answers 4xx (403) and never serves
metadata the client did not write.  Metadata the writer adds in plaintext next to an intact
v2 envelope is never served.  An end-to-end check greps the embedded devstore's files (the
strict backend) for marker strings put in metadata names and values.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.adversarial.test_storage_writer import envelope_of, read_all_ways
from tests.integration.helpers import MiB, multipart_upload

SECRET = {"diagnosis": "MARKER-Z91-secret-value", "ssn": "123-45-6789"}
OTHER = {"diagnosis": "MARKER-Q22-other--value", "ssn": "999-99-9999"}  # same lengths as SECRET


def put(victim: Any, bucket: str, key: str, meta: dict[str, str], layout: str) -> None:
    if layout == "S":
        victim.put_object(Bucket=bucket, Key=key, Body=b"secret body " * 2000, Metadata=meta)
    else:
        multipart_upload(victim, bucket, key, [b"p" * (5 * MiB), b"q" * 100], Metadata=meta)


def replace_metadata(storage: Any, bucket: str, key: str, meta: dict[str, str]) -> None:
    """The storage-side writer rewrites only the metadata (a self-copy, the body stays)."""
    storage.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key},
                        MetadataDirective="REPLACE", Metadata=meta)


def assert_refused(results: list[tuple[str, Any]], forged: tuple[str, ...] = ()) -> None:
    for what, r in results:
        assert r.status is not None and 400 <= r.status < 500, (what, r.status, r.body)
        assert r.status == 403, (what, r.status, r.body)
        if r.body:
            assert b"<Code>InvalidObjectState</Code>" in r.body or b"<Code>AccessDenied</Code>" in r.body, r.body
        served = repr(r.headers).lower() + repr(r.body).lower()
        for value in (*SECRET.values(), *OTHER.values(), *forged):
            assert value.lower() not in served, (what, value)


def _flip(text: str, at: int) -> str:
    c = "A" if text[at] != "A" else "B"
    return text[:at] + c + text[at + 1:]


TAMPERS = ["edit-salt", "edit-ciphertext", "edit-tag", "truncate", "extend", "delete", "swap",
           "downgrade-plain", "downgrade-keep-seal", "version-3"]


@pytest.mark.parametrize("layout", ["S", "K"])
@pytest.mark.parametrize("tamper", TAMPERS)
def test_tampered_seal_is_refused(
    attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str, tamper: str, layout: str
) -> None:
    put(victim, enc_bucket, "k", SECRET, layout)
    put(victim, enc_bucket, "other", OTHER, layout)
    env = envelope_of(storage, enc_bucket, "k")
    seal = env["s3proxy-seal"]
    forged: tuple[str, ...] = ()
    if tamper == "edit-salt":
        env["s3proxy-seal"] = _flip(seal, 3)
    elif tamper == "edit-ciphertext":
        env["s3proxy-seal"] = _flip(seal, 40)
    elif tamper == "edit-tag":
        env["s3proxy-seal"] = _flip(seal, len(seal) - 5)
    elif tamper == "truncate":
        env["s3proxy-seal"] = seal[:-8]
    elif tamper == "extend":
        env["s3proxy-seal"] = seal + "AAAA"
    elif tamper == "delete":
        del env["s3proxy-seal"]
    elif tamper == "swap":  # a genuine sealed block of another object, same length
        other_seal = envelope_of(storage, enc_bucket, "other")["s3proxy-seal"]
        assert len(other_seal) == len(seal)
        env["s3proxy-seal"] = other_seal
    elif tamper == "downgrade-plain":  # v1 envelope, attacker's metadata in plaintext
        del env["s3proxy-seal"]
        env["s3proxy-v"] = "1"
        env["diagnosis"] = forged_value = "FORGED-by-storage"
        forged = (forged_value,)
    elif tamper == "downgrade-keep-seal":
        env["s3proxy-v"] = "1"
    else:
        env["s3proxy-v"] = "3"
    replace_metadata(storage, enc_bucket, "k", env)
    assert_refused(read_all_ways(attack_proxy, enc_bucket, "k"), forged)
    # copies through the proxy refuse it as well (nothing is re-sealed from a bad block)
    with pytest.raises(ClientError) as ei:
        victim.copy_object(Bucket=enc_bucket, Key="copy", CopySource={"Bucket": enc_bucket, "Key": "k"})
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 403)


def test_whole_sealed_envelope_of_another_object_is_refused(
    attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str
) -> None:
    """All of another object's envelope (seal, binding, key) on this key: the binding names the other key."""
    put(victim, enc_bucket, "k", SECRET, "S")
    put(victim, enc_bucket, "other", OTHER, "S")
    replace_metadata(storage, enc_bucket, "k", envelope_of(storage, enc_bucket, "other"))
    assert_refused(read_all_ways(attack_proxy, enc_bucket, "k"))


def test_planted_plaintext_metadata_is_never_served(attack_proxy: Any, victim: Any, storage: Any, enc_bucket: str) -> None:
    put(victim, enc_bucket, "k", SECRET, "S")
    env = envelope_of(storage, enc_bucket, "k")
    replace_metadata(storage, enc_bucket, "k", {**env, "diagnosis": "FORGED-plain", "planted": "FORGED-too"})
    head = victim.head_object(Bucket=enc_bucket, Key="k")
    assert head["Metadata"] == SECRET
    assert victim.get_object(Bucket=enc_bucket, Key="k", Range="bytes=0-3")["Metadata"] == SECRET
    # a copy through the proxy carries the sealed metadata, not the planted one
    victim.copy_object(Bucket=enc_bucket, Key="copy", CopySource={"Bucket": enc_bucket, "Key": "k"})
    assert victim.head_object(Bucket=enc_bucket, Key="copy")["Metadata"] == SECRET
    assert "planted" not in storage.head_object(Bucket=enc_bucket, Key="copy")["Metadata"]


def test_client_cannot_write_the_seal(victim: Any, enc_bucket: str) -> None:
    for name in ("s3proxy-seal", "S3Proxy-Seal"):
        with pytest.raises(ClientError) as ei:
            victim.put_object(Bucket=enc_bucket, Key="k", Body=b"x", Metadata={name: "AAAA"})
        assert ei.value.response["Error"]["Code"] == "InvalidArgument"


# -- end to end on the strict backend: grep the stored bytes ---------------------------------------

NAME_MARK = "zq8name"
VALUE_MARK = "ZQ8VALUE"


@pytest.fixture()
def strict_bucket(strict_proxy: Any) -> Iterator[str]:
    c = strict_proxy.client()
    name = "seal-" + uuid.uuid4().hex[:10]
    c.create_bucket(Bucket=name)
    yield name
    for o in c.list_objects_v2(Bucket=name).get("Contents", []):
        c.delete_object(Bucket=name, Key=o["Key"])
    c.delete_bucket(Bucket=name)


def test_no_metadata_marker_reaches_the_backend(
    strict_proxy: Any, devstore_backend: Any, strict_bucket: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    c = strict_proxy.client()
    meta = {f"{NAME_MARK}-{i}": f"{VALUE_MARK}-{i}-{NAME_MARK}" for i in range(3)}
    c.put_object(Bucket=strict_bucket, Key="single", Body=b"s" * 1000, Metadata=meta)
    multipart_upload(c, strict_bucket, "multi", [b"m" * (5 * MiB), b"n"], Metadata=meta)
    c.copy_object(Bucket=strict_bucket, Key="copied", CopySource={"Bucket": strict_bucket, "Key": "single"})
    c.copy_object(Bucket=strict_bucket, Key="replaced", CopySource={"Bucket": strict_bucket, "Key": "multi"},
                  MetadataDirective="REPLACE", Metadata={f"{NAME_MARK}-r": f"{VALUE_MARK}-r"})
    for key in ("single", "multi", "copied"):
        assert c.head_object(Bucket=strict_bucket, Key=key)["Metadata"] == meta
    assert c.head_object(Bucket=strict_bucket, Key="replaced")["Metadata"] == {f"{NAME_MARK}-r": f"{VALUE_MARK}-r"}
    # the backend's raw HEAD answers
    storage = devstore_backend.client()
    for key in ("single", "multi", "copied", "replaced"):
        r = storage.head_object(Bucket=strict_bucket, Key=key)
        seen = (repr(r["ResponseMetadata"]["HTTPHeaders"]) + repr(r["Metadata"])).lower()
        assert NAME_MARK not in seen and VALUE_MARK.lower() not in seen, seen
    # every byte the devstore keeps on disk
    roots = list(Path(tmp_path_factory.getbasetemp()).glob("adversarial-devstore*"))
    assert roots
    files = [p for root in roots for p in root.rglob("*") if p.is_file()]
    assert files
    seals = 0
    for p in files:
        data = p.read_bytes().lower()
        assert NAME_MARK.encode() not in data and VALUE_MARK.lower().encode() not in data, p
        seals += b"s3proxy-seal" in data
    assert seals >= 4  # the scan did see the objects' stored metadata
