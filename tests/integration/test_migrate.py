"""``s3proxy migrate`` and ``s3proxy export`` against real backends (moto and the strict devstore).

The migration runs in the test thread (``asyncio.run``) with the same settings as the proxy
fixture it is checked through; attackers and racing clients are the backend's own credentials
(a storage-side writer, or a legacy app still writing plaintext around the proxy) and proxy
clients writing while the migration runs.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from s3proxy.bulkjob import BulkJob
from s3proxy.export import Exporter, safe_relative_path
from s3proxy.migrate import Migrator
from tests.conftest import Backend, Proxy, proxy_settings, start_proxy, stop_proxy, strict_server
from tests.integration.helpers import MiB, assert_no_plaintext, multipart_upload, rand, temp_bucket, unique

TAGGING = "team=blue&class=a%20b"


@pytest.fixture(scope="module", params=["default", "strict"])
def env(request: pytest.FixtureRequest) -> Iterator[tuple[Backend, Proxy]]:
    """(backend, proxy in front of it): the run's backend (moto by default) and the strict devstore."""
    if request.param == "default":
        b = request.getfixturevalue("backend")
        p = start_proxy(proxy_settings(b))
        yield b, p
        stop_proxy(p)
    else:
        with strict_server(min_part_size=5 * MiB) as b:
            p = start_proxy(proxy_settings(b))
            yield b, p
            stop_proxy(p)


@pytest.fixture()
def raw(env: tuple[Backend, Proxy]) -> Any:
    return env[0].client()


@pytest.fixture()
def s3(env: tuple[Backend, Proxy]) -> Any:
    return env[1].client()


@pytest.fixture()
def bucket(raw: Any) -> Iterator[str]:
    with temp_bucket(raw, unique("mig-")) as name:
        yield name


def job(cls: type[BulkJob], env: tuple[Backend, Proxy], bucket: str, tmp_path: Path, **kw: Any) -> Any:
    kw.setdefault("state_file", tmp_path / "state.json")
    kw.setdefault("progress", False)
    kw.setdefault("out", io.StringIO())
    return cls(env[1].settings, bucket, **kw)


def run(j: BulkJob) -> Any:
    return asyncio.run(j.run())


def has_tagging(env: tuple[Backend, Proxy]) -> bool:
    return "tagging" in env[0].capabilities


def seed(raw: Any, bucket: str, env: tuple[Backend, Proxy]) -> dict[str, bytes]:
    """Mixed plaintext objects written around the proxy: 0 B, 1 B, 3 MiB, a 4-part 20 MiB multipart."""
    objs = {"p/empty": b"", "p/one": b"x", "p/three": rand(3 * MiB), "p/deep/dir/meta.txt": b"hello " * 100}
    extra: dict[str, Any] = {"Tagging": TAGGING} if has_tagging(env) else {}
    for k, v in objs.items():
        raw.put_object(Bucket=bucket, Key=k, Body=v, ContentType="text/x-test", Metadata={"owner": "alice", "n": k},
                       CacheControl="max-age=60", **extra)
    parts = [rand(5 * MiB) for _ in range(4)]
    multipart_upload(raw, bucket, "p/multi", parts, ContentType="application/x-big", Metadata={"owner": "bob"}, **extra)
    objs["p/multi"] = b"".join(parts)
    return objs


def meta(raw: Any, bucket: str, key: str) -> dict[str, str]:
    """The backend's user metadata of an object, names in lower case (rclone capitalises them)."""
    return {k.lower(): v for k, v in raw.head_object(Bucket=bucket, Key=key)["Metadata"].items()}


def etags(raw: Any, bucket: str) -> dict[str, str]:
    return {o["Key"]: o["ETag"] for o in raw.list_objects_v2(Bucket=bucket).get("Contents", [])}


def check_migrated(raw: Any, s3: Any, bucket: str, objs: dict[str, bytes], env: tuple[Backend, Proxy]) -> None:
    for k, v in objs.items():
        got = s3.get_object(Bucket=bucket, Key=k)
        assert got["Body"].read() == v, k
        assert got["ContentLength"] == len(v)
        head = raw.head_object(Bucket=bucket, Key=k)
        assert "s3proxy-v" in meta(raw, bucket, k), f"{k} is still plaintext on the backend"
        stored = raw.get_object(Bucket=bucket, Key=k)["Body"].read()
        if v:
            assert_no_plaintext(v, stored)
        if k == "p/multi":
            assert got["ContentType"] == "application/x-big" and got["Metadata"] == {"owner": "bob"}
            if "multipart_etags" in env[0].capabilities:
                assert head["ETag"].endswith('-4"'), "a multipart object stays multipart, with its part count"
        else:
            assert got["ContentType"] == "text/x-test" and got["CacheControl"] == "max-age=60"
            assert got["Metadata"] == {"owner": "alice", "n": k}
        if has_tagging(env):
            tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=k)["TagSet"]}
            assert tags == {"team": "blue", "class": "a b"}, k


def test_migrate_mixed_bucket_then_second_run_changes_nothing(env: Any, raw: Any, s3: Any, bucket: str,
                                                              tmp_path: Path) -> None:
    objs = seed(raw, bucket, env)
    raw.put_object(Bucket=bucket, Key="elsewhere", Body=b"outside the prefix")
    report_file = tmp_path / "report.json"
    r = run(job(Migrator, env, bucket, tmp_path, prefix="p/", verify=True, report_file=report_file))
    assert r.ok and r.done == len(objs) and not r.failures, r.failures
    assert r.extra["verified"] == len(objs)
    assert (r.extra["conditional_writes"] == "if-match") is r.extra["if_match_PUT"]
    if env[0].kind in ("moto", "strict"):  # both refuse a PUT whose If-Match names another ETag
        assert r.extra["if_match_PUT"]
    assert r.bytes_done == sum(len(v) for v in objs.values())
    check_migrated(raw, s3, bucket, objs, env)
    assert "s3proxy-v" not in meta(raw, bucket, "elsewhere")
    assert not (tmp_path / "state.json").exists(), "a complete run leaves no state file"
    doc = json.loads(report_file.read_text())
    assert doc["ok"] and doc["done"] == len(objs)

    before = etags(raw, bucket)
    r2 = run(job(Migrator, env, bucket, tmp_path, prefix="p/"))
    assert r2.ok and r2.done == 0 and list(r2.skipped) == ["already encrypted"]
    assert sorted(r2.skipped["already encrypted"]) == sorted(objs)
    assert etags(raw, bucket) == before, "a second run wrote something"


def test_dry_run_changes_nothing(env: Any, raw: Any, bucket: str, tmp_path: Path) -> None:
    objs = seed(raw, bucket, env)
    before = etags(raw, bucket)
    r = run(job(Migrator, env, bucket, tmp_path, dry_run=True))
    assert r.ok and r.done == 0 and sorted(k for k, _ in r.would) == sorted(objs)
    assert etags(raw, bucket) == before
    assert not (tmp_path / "state.json").exists()
    assert not raw.list_multipart_uploads(Bucket=bucket).get("Uploads")


# ------------------------------------------------------------------ concurrent writers


def racing_write(client: Any, bucket: str, key: str, body: bytes) -> Any:
    async def hook(k: str, stage: str) -> None:
        if k == key and not hook.done:  # type: ignore[attr-defined]
            hook.done = True  # type: ignore[attr-defined]
            await asyncio.to_thread(client.put_object, Bucket=bucket, Key=key, Body=body)

    hook.done = False  # type: ignore[attr-defined]
    return hook


@pytest.mark.parametrize("conditional", ["auto", "check"])
@pytest.mark.parametrize("writer", ["legacy", "proxy"])
def test_object_changed_between_read_and_write_is_not_overwritten(
    env: Any, raw: Any, s3: Any, bucket: str, tmp_path: Path, conditional: str, writer: str
) -> None:
    """A client writes the object after the migration read it and before it writes: the stale
    write is refused (If-Match, or the HEAD check), reported, and the object migrated again
    from the client's content (or skipped: the client wrote it through the proxy, encrypted)."""
    raw.put_object(Bucket=bucket, Key="k", Body=b"old content")
    raw.put_object(Bucket=bucket, Key="other", Body=b"untouched")
    new = b"the client's newer content"
    m = job(Migrator, env, bucket, tmp_path, conditional=conditional)
    m.hook = racing_write(raw if writer == "legacy" else s3, bucket, "k", new)
    r = run(m)
    assert r.ok, r.failures
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == new, "stale data written over the client's"
    assert "k" in r.conflicts
    assert "s3proxy-v" in meta(raw, bucket, "k")
    if writer == "legacy":
        assert r.done == 2 and "migrated from its new content" in r.conflicts["k"]
    else:
        assert r.done == 1 and r.skipped == {"already encrypted": ["k"]}


@pytest.mark.parametrize("conditional", ["auto", "check"])
def test_multipart_changed_before_complete_is_not_overwritten(
    env: Any, raw: Any, s3: Any, bucket: str, tmp_path: Path, conditional: str
) -> None:
    if "multipart_etags" not in env[0].capabilities:
        pytest.skip(f"backend {env[0].kind!r} gives multipart objects no -N ETag: they are re-written whole")
    parts = [rand(5 * MiB), rand(MiB)]
    multipart_upload(raw, bucket, "big", parts)
    new = rand(1000)

    async def hook(k: str, stage: str) -> None:
        if stage == "complete" and not hook.done:  # type: ignore[attr-defined]
            hook.done = True  # type: ignore[attr-defined]
            await asyncio.to_thread(raw.put_object, Bucket=bucket, Key="big", Body=new)

    hook.done = False  # type: ignore[attr-defined]
    m = job(Migrator, env, bucket, tmp_path, conditional=conditional)
    m.hook = hook
    r = run(m)
    assert r.ok and "big" in r.conflicts, (r.failures, r.conflicts)
    if conditional == "auto" and env[0].kind == "strict":  # the proxy forwards If-Match on Complete
        assert r.extra["if_match_CompleteMultipartUpload"] is True
    if conditional == "auto" and env[0].kind == "moto":  # moto 5 ignores it there: the HEAD check guards
        assert r.extra["if_match_CompleteMultipartUpload"] is False
    assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == new
    assert not raw.list_multipart_uploads(Bucket=bucket).get("Uploads"), "the refused upload was not aborted"


def test_object_that_keeps_changing_fails_and_is_retried_by_the_next_run(
    env: Any, raw: Any, s3: Any, bucket: str, tmp_path: Path
) -> None:
    raw.put_object(Bucket=bucket, Key="hot", Body=b"v0")
    n = 0

    async def hook(k: str, stage: str) -> None:
        nonlocal n
        n += 1
        await asyncio.to_thread(raw.put_object, Bucket=bucket, Key="hot", Body=b"v%d" % n)

    m = job(Migrator, env, bucket, tmp_path)
    m.hook = hook
    r = run(m)
    assert not r.ok and "hot" in r.failures and "never overwritten" in r.failures["hot"]
    assert raw.get_object(Bucket=bucket, Key="hot")["Body"].read() == b"v%d" % n, "the last client write was lost"
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["failed"] == ["hot"]
    r2 = run(job(Migrator, env, bucket, tmp_path))
    assert r2.ok and r2.done == 1 and r2.retried == 1
    assert s3.get_object(Bucket=bucket, Key="hot")["Body"].read() == b"v%d" % n


def test_migration_while_clients_keep_writing(env: Any, raw: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    """Legacy writers (plaintext, around the proxy) and proxy clients write while the migration
    runs: afterwards every key holds the last value written to it, nothing stale."""
    keys = [f"c/{i:03d}" for i in range(40)]
    for k in keys:
        raw.put_object(Bucket=bucket, Key=k, Body=b"initial " + k.encode())
    last: dict[str, bytes] = {}
    stop = threading.Event()

    def writer(client: Any, tag: bytes, mine: list[str]) -> None:
        n = 0
        while not stop.is_set():
            for k in mine:
                body = tag + b" %d " % n + k.encode()
                client.put_object(Bucket=bucket, Key=k, Body=body)
                last[k] = body
            n += 1

    threads = [threading.Thread(target=writer, args=(raw, b"legacy", keys[0::3])),
               threading.Thread(target=writer, args=(env[1].client(), b"proxy", keys[1::3]))]
    for t in threads:
        t.start()
    try:
        r = run(job(Migrator, env, bucket, tmp_path, concurrency=4))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not r.failures or all("each of" in why for why in r.failures.values()), r.failures
    for k in keys:
        want = last.get(k, b"initial " + k.encode())
        encrypted = "s3proxy-v" in meta(raw, bucket, k)
        got = (s3 if encrypted else raw).get_object(Bucket=bucket, Key=k)["Body"].read()
        assert got == want, k
    # the legacy writer's last values are plaintext again; a second run adopts them
    r2 = run(job(Migrator, env, bucket, tmp_path))
    assert r2.ok
    for k in keys:
        assert "s3proxy-v" in meta(raw, bucket, k), k
        assert s3.get_object(Bucket=bucket, Key=k)["Body"].read() == last.get(k, b"initial " + k.encode())


# ------------------------------------------------------------------ resume


def test_resume_after_interruption(env: Any, raw: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    keys = [f"r/{i:03d}" for i in range(30)]
    for k in keys:
        raw.put_object(Bucket=bucket, Key=k, Body=k.encode() * 100)
    m = job(Migrator, env, bucket, tmp_path, concurrency=2, page_size=5)

    async def interrupted() -> None:
        main = asyncio.ensure_future(m.run())

        async def hook(k: str, stage: str) -> None:
            if m.report.done >= 12:
                main.cancel()

        m.hook = hook
        with pytest.raises(asyncio.CancelledError):
            await main

    asyncio.run(interrupted())
    first = m.report.done
    state = json.loads((tmp_path / "state.json").read_text())
    assert 12 <= first < len(keys) and state["after"] is not None and state["after"] <= keys[first]
    r = run(job(Migrator, env, bucket, tmp_path, page_size=5))
    assert r.ok and r.resumed_after == state["after"]
    # it lists only after the checkpoint; what finished (or was in flight) beyond it is skipped
    assert r.listed == len(keys) - keys.index(state["after"]) - 1
    assert r.done + len(r.skipped.get("already encrypted", [])) == r.listed
    assert r.done <= len(keys) - first, "the resumed run redid objects"
    assert not (tmp_path / "state.json").exists()
    for k in keys:
        assert s3.get_object(Bucket=bucket, Key=k)["Body"].read() == k.encode() * 100


# ------------------------------------------------------------------ versioned buckets, attackers


def test_versioned_bucket_gets_a_new_version(env: Any, raw: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    if "versioning" not in env[0].capabilities:
        pytest.skip(f"backend {env[0].kind!r} lacks versioning")
    raw.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    raw.put_object(Bucket=bucket, Key="v", Body=b"plain v1")
    old = raw.head_object(Bucket=bucket, Key="v")["VersionId"]
    r = run(job(Migrator, env, bucket, tmp_path, verify=True))
    assert r.ok and r.done == 1 and r.extra["verified"] == 1
    versions = raw.list_object_versions(Bucket=bucket, Prefix="v")["Versions"]
    assert len(versions) == 2 and {v["VersionId"] for v in versions} >= {old}
    latest = raw.head_object(Bucket=bucket, Key="v")
    assert latest["VersionId"] != old and "s3proxy-v" in {m.lower() for m in latest["Metadata"]}
    assert s3.get_object(Bucket=bucket, Key="v")["Body"].read() == b"plain v1"


def test_planted_fake_envelope_is_not_laundered(env: Any, raw: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    """A storage-side writer plants plaintext dressed as an s3proxy object: migrate leaves it
    alone (it is not plaintext to adopt), and the proxy still refuses to serve it."""
    raw.put_object(Bucket=bucket, Key="fake", Body=b"attacker's bytes", Metadata={"s3proxy-v": "1"})
    raw.put_object(Bucket=bucket, Key="s3ec", Body=b"x" * 32, Metadata={"x-amz-key-v2": "AAAA", "x-amz-cek-alg": "AES/GCM/NoPadding"})
    r = run(job(Migrator, env, bucket, tmp_path))
    assert r.done == 0 and r.skipped["already encrypted"] == ["fake"]
    assert r.skipped["S3 Encryption Client object (migrate it with --from s3ec)"] == ["s3ec"]
    with pytest.raises(Exception) as exc:
        s3.get_object(Bucket=bucket, Key="fake")["Body"].read()
    assert "attacker" not in str(exc.value)


def test_internal_identity_never_leaks(env: Any, raw: Any, bucket: str, tmp_path: Path,
                                       capfd: pytest.CaptureFixture[str]) -> None:
    """The one-off identity of the in-process proxy is in no output, report or state file, and
    its port serves nobody once the run is over."""
    raw.put_object(Bucket=bucket, Key="a", Body=b"a")
    raw.put_object(Bucket=bucket, Key="b", Body=b"b")
    out = io.StringIO()
    m = job(Migrator, env, bucket, tmp_path, out=out, err=out, progress=True, report_file=tmp_path / "r.json")
    secret, ak = m.internal._sk, m.internal._ak
    r = run(m)
    assert r.ok
    texts = [out.getvalue(), (tmp_path / "r.json").read_text(), *capfd.readouterr()]
    assert not any(secret in t or ak in t for t in texts)
    assert m.internal.settings.identities[0].access_key == ak and len(m.internal.settings.identities) == 1
    port = int(m.proxy_client.settings.url.rsplit(":", 1)[1])
    import socket

    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


def test_state_file_of_another_run_is_refused(env: Any, raw: Any, bucket: str, tmp_path: Path) -> None:
    raw.put_object(Bucket=bucket, Key="a", Body=b"a")
    (tmp_path / "state.json").write_text(json.dumps(
        {"format": "s3proxy-migrate-state", "bucket": "other", "prefix": "", "to": None, "after": "zzz", "failed": []}))
    from s3proxy.bulkjob import SetupError

    with pytest.raises(SetupError, match="belongs to another run"):
        run(job(Migrator, env, bucket, tmp_path))
    assert "s3proxy-v" not in meta(raw, bucket, "a")


def test_passthrough_bucket_is_refused(env: Any, raw: Any, bucket: str, tmp_path: Path) -> None:
    from s3proxy.bulkjob import SetupError

    settings = proxy_settings(env[0], buckets={bucket: {"mode": "passthrough"}})
    with pytest.raises(SetupError, match="passthrough"):
        asyncio.run(Migrator(settings, bucket, state_file=tmp_path / "s.json", progress=False, out=io.StringIO()).run())


# ------------------------------------------------------------------ export


@pytest.mark.needs("aws_responses")
def test_export_to_directory_round_trips(env: Any, raw: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    objs = seed(raw, bucket, env)
    assert run(job(Migrator, env, bucket, tmp_path)).ok
    s3.put_object(Bucket=bucket, Key="p/dir/", Body=b"")  # a directory marker
    out = tmp_path / "out"
    r = run(job(Exporter, env, bucket, tmp_path, prefix="p/", dest=str(out), part_size=5 * MiB))
    assert r.ok and r.done == len(objs), r.failures
    assert r.skipped == {"directory marker": ["p/dir/"]}
    for k, v in objs.items():
        f = out / k
        assert f.read_bytes() == v, k
        assert f.stat().st_mode & 0o777 == 0o600
    assert not [p for p in out.rglob(".*s3proxy-export-*")], "temporary files left behind"
    assert not (tmp_path / "state.json").exists()


@pytest.mark.needs("aws_responses")
def test_export_to_another_bucket_round_trips(env: Any, raw: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    objs = seed(raw, bucket, env)
    assert run(job(Migrator, env, bucket, tmp_path)).ok
    b = env[0]
    with temp_bucket(raw, unique("exp-")) as other:
        r = run(job(Exporter, env, bucket, tmp_path, prefix="p/", dest=f"s3://{other}/copy/", endpoint=b.url,
                    dest_credentials=(b.access_key, b.secret_key, b.region), part_size=5 * MiB,
                    multipart_threshold=8 * MiB))
        assert r.ok and r.done == len(objs), r.failures
        for k, v in objs.items():
            got = raw.get_object(Bucket=other, Key="copy/" + k[2:])
            assert got["Body"].read() == v, k
            assert "s3proxy-v" not in got["Metadata"]
            assert got["Metadata"] == ({"owner": "bob"} if k == "p/multi" else {"owner": "alice", "n": k})
            if has_tagging(env):
                tags = {t["Key"]: t["Value"] for t in raw.get_object_tagging(Bucket=other, Key="copy/" + k[2:])["TagSet"]}
                assert tags == {"team": "blue", "class": "a b"}
        if "multipart_etags" in env[0].capabilities:
            assert raw.head_object(Bucket=other, Key="copy/multi")["ETag"].endswith('-4"')


@pytest.mark.needs("aws_responses")
def test_export_refuses_what_the_proxy_refuses_and_unsafe_names(
    env: Any, raw: Any, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """Plaintext planted around the proxy, a tampered object and keys that would escape the
    directory: reported, never written (and never outside the target)."""
    s3.put_object(Bucket=bucket, Key="good", Body=b"fine")
    s3.put_object(Bucket=bucket, Key="tampered", Body=b"y" * 5000)
    stored = raw.get_object(Bucket=bucket, Key="tampered")
    body = bytearray(stored["Body"].read())
    body[-100] ^= 1
    raw.put_object(Bucket=bucket, Key="tampered", Body=bytes(body), Metadata=stored["Metadata"])
    raw.put_object(Bucket=bucket, Key="planted", Body=b"plaintext around the proxy")
    for evil in ("a/../../escape", "/abs", "a//b"):
        raw.put_object(Bucket=bucket, Key=evil, Body=b"evil")
    out = tmp_path / "out"
    r = run(job(Exporter, env, bucket, tmp_path, dest=str(out)))
    assert not r.ok and set(r.failures) == {"tampered", "planted"}, r.failures
    assert r.done == 1 and (out / "good").read_bytes() == b"fine"
    unsafe = r.skipped.get("key is not a safe file name (not written)", [])
    assert sorted(unsafe) == sorted(["a/../../escape", "/abs", "a//b"]), unsafe
    assert not (tmp_path / "escape").exists() and not (out / "tampered").exists() and not (out / "planted").exists()
    assert sorted(p.name for p in out.rglob("*")) == ["good"]


def test_awkward_key_names(env: Any, raw: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    keys = ["sp ace/ü+&?=%20.txt", "a+b", "tab\there", "#hash", "~tilde*(x)"]
    for k in keys:
        raw.put_object(Bucket=bucket, Key=k, Body=k.encode())
    r = run(job(Migrator, env, bucket, tmp_path, verify=True))
    assert r.ok and r.done == len(keys), r.failures
    out = tmp_path / "out"
    assert run(job(Exporter, env, bucket, tmp_path, dest=str(out))).ok
    for k in keys:
        assert s3.get_object(Bucket=bucket, Key=k)["Body"].read() == k.encode()
        assert (out / k).read_bytes() == k.encode()


def test_safe_relative_path() -> None:
    assert safe_relative_path("a/b.txt") == ("a", "b.txt")
    for bad in ("", "/x", "x/", "a/../b", "..", "./a", "a//b", "a\x00b", "a\\..\\b"):
        assert safe_relative_path(bad) is None, bad


def test_export_resumes(env: Any, raw: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    for i in range(12):
        s3.put_object(Bucket=bucket, Key=f"e/{i:02d}", Body=b"%d" % i)
    out = tmp_path / "out"
    e = job(Exporter, env, bucket, tmp_path, dest=str(out), concurrency=1, page_size=3)

    async def interrupted() -> None:
        main = asyncio.ensure_future(e.run())
        while e.report.done < 5:
            await asyncio.sleep(0.005)
        main.cancel()
        with pytest.raises(asyncio.CancelledError):
            await main

    asyncio.run(interrupted())
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["after"] is not None
    r = run(job(Exporter, env, bucket, tmp_path, dest=str(out), page_size=3))
    assert r.ok and r.resumed_after == state["after"] and r.done < 12
    assert sorted(p.name for p in (out / "e").iterdir()) == [f"{i:02d}" for i in range(12)]


# ------------------------------------------------------------------ the allowance while migrating


@pytest.mark.needs("aws_responses")
def test_plaintext_served_only_under_the_allowed_prefix_while_migrating(
    env: Any, raw: Any, bucket: str, tmp_path: Path
) -> None:
    """The documented procedure: allow plaintext reads on the prefix, migrate, verify, remove
    the allowance.  Outside the prefix (a plant by a storage-side writer) plaintext stays refused."""
    import inspect

    from s3proxy.config import BucketSettings
    from s3proxy.http import objects

    b = BucketSettings(unencrypted_read_prefixes=("legacy/",))
    assert b.allows_unencrypted("legacy/x") and not b.allows_unencrypted("legacyx") and not b.allows_unencrypted(None)
    if "allows_unencrypted" not in inspect.getsource(objects):
        pytest.xfail("s3proxy/http/objects.py does not call BucketSettings.allows_unencrypted yet (see docs/MIGRATION.md)")
    p = start_proxy(proxy_settings(env[0], buckets={bucket: {"unencrypted_read_prefixes": ["legacy/"]}}))
    try:
        c = p.client()
        raw.put_object(Bucket=bucket, Key="legacy/a", Body=b"legacy data", ContentType="text/plain")
        raw.put_object(Bucket=bucket, Key="other/b", Body=b"planted")
        assert c.get_object(Bucket=bucket, Key="legacy/a")["Body"].read() == b"legacy data"
        assert c.get_object(Bucket=bucket, Key="legacy/a", Range="bytes=0-5")["Body"].read() == b"legacy"
        assert c.head_object(Bucket=bucket, Key="legacy/a")["ContentLength"] == 11
        for call in (lambda: c.get_object(Bucket=bucket, Key="other/b"), lambda: c.head_object(Bucket=bucket, Key="other/b")):
            with pytest.raises(Exception) as exc:
                call()
            assert "403" in str(exc.value) or "InvalidObjectState" in str(exc.value)
        r = run(job(Migrator, env, bucket, tmp_path, prefix="legacy/", verify=True))
        assert r.ok and r.done == 1
        assert c.get_object(Bucket=bucket, Key="legacy/a")["Body"].read() == b"legacy data"
        assert "s3proxy-v" in meta(raw, bucket, "legacy/a")
    finally:
        stop_proxy(p)


# ------------------------------------------------------------------ the commands


def command_runner(env: Any, bucket: str, tmp_path: Path) -> Any:
    """Runs ``python -m s3proxy.<module> --config <the proxy's settings as YAML> --bucket B ...``."""
    import subprocess
    import sys

    import yaml

    from tests.conftest import MASTER_KEY

    b = env[0]
    cfg = tmp_path / "s3proxy.yaml"
    cfg.write_text(yaml.safe_dump({
        "backend": {"url": b.url, "access_key": b.access_key, "secret_key": b.secret_key, "region": b.region},
        "keys": {"backend": "local", "local": {"master_keys": {"k1": MASTER_KEY}}, "audit": {"target": "off"}},
        "log": {"level": "warning"},
    }))
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("S3PROXY_")}

    def cli(module: str, *args: str, wait: bool = True) -> Any:
        argv = [sys.executable, "-m", module, "--config", str(cfg), "--bucket", bucket, *args]
        if not wait:
            return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(tmp_path),
                                    env=env_vars)
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=str(tmp_path), env=env_vars)

    return cli


def test_commands_end_to_end(env: Any, raw: Any, bucket: str, tmp_path: Path) -> None:
    """``migrate`` and ``export`` as processes, configured as the proxy is (a YAML file)."""
    raw.put_object(Bucket=bucket, Key="x/1", Body=b"one", Metadata={"m": "v"})
    raw.put_object(Bucket=bucket, Key="x/2", Body=rand(70 * 1024))
    cli = command_runner(env, bucket, tmp_path)

    dry = cli("s3proxy.migrate", "--dry-run", "--no-progress")
    assert dry.returncode == 0, dry.stderr
    assert "2 would be migrated" in dry.stdout and "would migrate: x/1 (3 bytes)" in dry.stdout
    done = cli("s3proxy.migrate", "--verify", "--report", "r.json")
    assert done.returncode == 0, done.stderr
    assert ", 2 migrated" in done.stdout and "objects/s" in done.stderr
    assert json.loads((tmp_path / "r.json").read_text())["extra"]["verified"] == 2
    again = cli("s3proxy.migrate", "--no-progress")
    assert again.returncode == 0 and ", 0 migrated" in again.stdout and "skipped, already encrypted: x/2" in again.stdout
    out = cli("s3proxy.export", "--to", str(tmp_path / "out"), "--no-progress")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / "x" / "1").read_bytes() == b"one"
    assert (tmp_path / "out" / "x" / "2").stat().st_size == 70 * 1024
    bad = cli("s3proxy.migrate", "--state", str(tmp_path / "no" / "such" / "dir" / "s.json"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_resume_after_kill(env: Any, raw: Any, s3: Any, bucket: str, tmp_path: Path) -> None:
    """SIGKILL in the middle of a run: the next run resumes from the last checkpoint, objects
    finished after it are skipped as already encrypted, and every object ends up migrated once."""
    import signal
    import time

    keys = [f"k/{i:04d}" for i in range(150)]
    for k in keys:
        raw.put_object(Bucket=bucket, Key=k, Body=k.encode() * 1000)
    cli = command_runner(env, bucket, tmp_path)
    proc = cli("s3proxy.migrate", "--concurrency", "1", "--no-progress", wait=False)
    state = tmp_path / f".s3proxy-migrate-{bucket}.json"
    deadline = time.monotonic() + 60
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    if not state.exists():
        pytest.skip("the run finished before its first checkpoint (too fast to interrupt)")
    after = json.loads(state.read_text())["after"]
    assert after in keys and after != keys[-1]
    again = cli("s3proxy.migrate", "--no-progress", "--report", "r.json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"listing after {after!r}" in again.stdout
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["listed"] == len(keys) - keys.index(after) - 1
    assert not state.exists()
    for k in keys:
        assert "s3proxy-v" in meta(raw, bucket, k), k
    for k in keys[::15]:
        assert s3.get_object(Bucket=bucket, Key=k)["Body"].read() == k.encode() * 1000


# ------------------------------------------------------------------ throughput (opt-in)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("S3PROXY_MIGRATE_BENCH"), reason="set S3PROXY_MIGRATE_BENCH=1 to measure")
def test_throughput(env: Any, raw: Any, bucket: str, tmp_path: Path) -> None:
    """``S3PROXY_MIGRATE_BENCH=1 .venv/bin/python -m pytest tests/integration/test_migrate.py -k throughput -s``:
    200 x 64 KiB and 1 x 200 MiB (a multipart source), ``--concurrency 8``."""
    import time

    from boto3.s3.transfer import TransferConfig

    small = rand(64 * 1024)
    for i in range(200):
        raw.put_object(Bucket=bucket, Key=f"s/{i:04d}", Body=small)
    raw.upload_fileobj(io.BytesIO(rand(200 * MiB)), bucket, "l/big",
                       Config=TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=16 * MiB))
    for prefix, n in (("s/", 200), ("l/", 1)):
        t0 = time.monotonic()
        r = run(job(Migrator, env, bucket, tmp_path, prefix=prefix, concurrency=8))
        dt = time.monotonic() - t0
        assert r.ok and r.done == n
        print(f"\nmigrate {env[0].kind} {prefix} {n} objects, {r.bytes_done / MiB:.0f} MiB in {dt:.2f} s: "
              f"{r.bytes_done / dt / 1e6:.1f} MB/s, {n / dt:.1f} objects/s")
