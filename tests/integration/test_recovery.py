"""Recovery without the proxy (issue 12 items 3 and 4).

Objects are written through a running s3proxy (local keyring and AWS KMS on
moto); then, with only the backend credentials and the keys, they are read
back byte for byte by the standalone reader (tools/s3proxy_reader.py, from the
backend's raw bytes and metadata) and by ``s3proxy decrypt`` (one object, a
range, an old version, a whole prefix to a directory, resumably). As a
storage-side writer (backend credentials, no keys) we move, swap, reorder and
drop parts, and check that neither reader releases anything it cannot
authenticate; a dropped last part is today's known limit (FORMAT.md 5).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from tests.conftest import MASTER_KEY, ROOT, Backend, proxy_settings, start_proxy, stop_proxy
from tests.integration.helpers import MiB, multipart_upload
from tests.integration.keyfixtures import Kms, kms, with_keys  # noqa: F401 - kms is a fixture

OVH = 16454
MASTER = bytes(range(32))


def load_reader() -> ModuleType:
    spec = importlib.util.spec_from_file_location("s3proxy_reader", ROOT / "tools" / "s3proxy_reader.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["s3proxy_reader"] = module
    spec.loader.exec_module(module)
    return module


R = load_reader()


def stored(raw: Any, bucket: str, key: str, version_id: str | None = None) -> tuple[bytes, dict[str, str], str]:
    """(ciphertext, user metadata, ETag) straight from the backend."""
    kw = {"VersionId": version_id} if version_id else {}
    r = raw.get_object(Bucket=bucket, Key=key, **kw)
    return r["Body"].read(), r["Metadata"], r["ETag"]


def manifest_of(raw: Any, bucket: str, meta: dict[str, str]) -> bytes | None:
    """A K object's completeness manifest as stored next to it (None if there is none)."""
    env = R.parse_envelope(meta)
    if env is None or env.layout != "K":
        return None
    try:
        return bytes(raw.get_object(Bucket=bucket, Key=".s3proxy/manifests/" + env.object_id.hex())["Body"].read())
    except ClientError:
        return None


def standalone(raw: Any, bucket: str, key: str, unwrap: Any, *, manifest: bytes | None | bool = True) -> bytes:
    """The standalone reader over the stored bytes; ``manifest`` True: the one stored next to it."""
    body, meta, etag = stored(raw, bucket, key)
    # a backend without "-N" ETags (rclone): give no ETag, the reader then reads parts to the end
    plain_k = R.parse_envelope(meta).layout == "K" and R.etag_parts(etag) is None
    mf = manifest_of(raw, bucket, meta) if manifest is True else manifest or None
    return b"".join(R.read_object(io.BytesIO(body), meta, bucket=bucket, key=key, unwrap=unwrap,
                                  etag=None if plain_k else etag, size=len(body), manifest=mf))


def write_config(tmp_path: Path, backend: Backend, keys: dict[str, Any] | None = None) -> Path:
    cfg = {
        "backend": {"url": backend.url, "access_key": backend.access_key, "secret_key": backend.secret_key,
                    "region": backend.region},
        "keys": keys or {"backend": "local", "local": {"master_keys": {"k1": MASTER_KEY}}},
    }
    cfg["keys"] = {**cfg["keys"], "audit": {"target": "off"}}
    path = tmp_path / "s3proxy-recover.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def decrypt_args(config: Path, bucket: str, *argv: str) -> argparse.Namespace:
    from s3proxy.recover import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["decrypt", "--config", str(config), "--bucket", bucket, *argv])


def decrypt(config: Path, bucket: str, *argv: str) -> tuple[int, bytes, str]:
    from s3proxy.recover import cmd_decrypt

    out, err = io.BytesIO(), io.StringIO()
    code = cmd_decrypt(decrypt_args(config, bucket, *argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture()
def config(tmp_path: Path, backend: Backend) -> Path:
    return write_config(tmp_path, backend)


LOCAL = R.LocalKeyring({"k1": MASTER})
S_SIZES = [0, 1, 16383, 16384, 16385, 3 * 16384 + 7, MiB + 3]
MP_PARTS = {  # plaintext part sizes: uneven, not multiples of 1024, last one tiny
    "one-part": [1234],
    "uneven": [5 * MiB + 4097, 5 * MiB, 1],
    "boundary": [5 * MiB, 5 * MiB + 1023],
}


@pytest.fixture(scope="module")
def written(proxy: Any, backend: Backend) -> Iterator[dict[str, bytes]]:
    """One bucket of objects written through the proxy with the local keyring: key -> plaintext."""
    s3 = proxy.client()
    bucket = "rec-" + os.urandom(6).hex()
    s3.create_bucket(Bucket=bucket)
    objs: dict[str, bytes] = {}
    for n in S_SIZES:
        objs[f"s/{n}.bin"] = os.urandom(n)
        s3.put_object(Bucket=bucket, Key=f"s/{n}.bin", Body=objs[f"s/{n}.bin"])
    for name, sizes in MP_PARTS.items():
        parts = [os.urandom(n) for n in sizes]
        multipart_upload(s3, bucket, f"k/{name}", parts, Metadata={"part-sizes": ",".join(map(str, sizes))})
        objs[f"k/{name}"] = b"".join(parts)
    objs["m/with-metadata.txt"] = b"hello"
    s3.put_object(Bucket=bucket, Key="m/with-metadata.txt", Body=b"hello", Metadata={"owner": "alice"})
    yield {"": bucket.encode(), **objs}
    from tests.conftest import empty_and_delete_bucket

    empty_and_delete_bucket(s3, bucket)


def test_standalone_reader_reads_every_object_the_proxy_wrote(written: dict[str, bytes], raw: Any) -> None:
    bucket = written[""].decode()
    for key, pt in written.items():
        if key:
            assert standalone(raw, bucket, key, LOCAL) == pt, key
    body, meta, etag = stored(raw, bucket, "k/uneven")
    assert len(body) == len(written["k/uneven"]) + 3 * OVH


def test_standalone_reader_returns_the_sealed_user_metadata(written: dict[str, bytes], raw: Any) -> None:
    bucket = written[""].decode()
    body, meta, _ = stored(raw, bucket, "m/with-metadata.txt")
    opened = R.open_envelope(meta, bucket, "m/with-metadata.txt", LOCAL)
    if opened.env.version == 2:  # envelope v2: the client's metadata is sealed, the backend does not see it
        assert opened.sealed["m"] == {"owner": "alice"} and "owner" not in meta
    else:
        assert meta["owner"] == "alice"


def test_standalone_reader_refuses_a_misplaced_object(written: dict[str, bytes], raw: Any) -> None:
    bucket = written[""].decode()
    body, meta, etag = stored(raw, bucket, "s/16385.bin")
    with pytest.raises(R.BindingMismatch):
        b"".join(R.read_object(io.BytesIO(body), meta, bucket=bucket, key="s/1.bin", unwrap=LOCAL, etag=etag))
    other, _, _ = stored(raw, bucket, "s/16384.bin")  # another object's body under this metadata
    with pytest.raises(R.CommitmentMismatch):
        b"".join(R.read_object(io.BytesIO(other), meta, bucket=bucket, key="s/16385.bin", unwrap=LOCAL))


def test_decrypt_command_reads_every_object(written: dict[str, bytes], config: Path) -> None:
    bucket = written[""].decode()
    for key, pt in written.items():
        if key:
            code, out, err = decrypt(config, bucket, "--key", key)
            assert (code, err) == (0, ""), key
            assert out == pt, key


RANGES = ["0-0", "0-16383", "16383-16384", "16384-", "-1", "-16385", "5-40000", "100-99999999"]


@pytest.mark.parametrize("key", ["s/1048579.bin", "k/uneven", "k/boundary", "k/one-part", "s/49159.bin"])
def test_decrypt_ranges(written: dict[str, bytes], config: Path, key: str) -> None:
    bucket, pt = written[""].decode(), written[key]
    n = len(pt)
    boundary = [f"{5 * MiB + 4097 - 1}-{5 * MiB + 4097}", f"{5 * MiB - 3}-{10 * MiB + 4097}", f"{n - 2}-"]
    for rng in RANGES + (boundary if n > 5 * MiB else []):
        a, _, b = rng.partition("-")
        expect = pt[-int(b):] if not a else pt[int(a): (int(b) + 1 if b else n)]
        code, out, err = decrypt(config, bucket, "--key", key, "--range", rng)
        if not a or int(a) < n:
            assert code == 0, (rng, err)
            assert out == expect, rng
        else:
            assert code == 1 and "not satisfiable" in err and out == b""


def test_decrypt_refuses_bad_usage(written: dict[str, bytes], config: Path, tmp_path: Path) -> None:
    bucket = written[""].decode()
    assert decrypt(config, bucket, "--key", "s/1.bin", "--range", "9-3")[0] == 2
    assert decrypt(config, bucket, "--key", "s/1.bin", "--to", str(tmp_path))[0] == 2
    assert decrypt(config, bucket, "--prefix", "s/")[0] == 2
    code, out, err = decrypt(config, bucket, "--key", "absent")
    assert code == 1 and "no such object" in err and out == b""
    code, out, err = decrypt(config, bucket, "--key", "s/0.bin", "--range", "0-0")
    assert code == 1 and out == b""  # nothing to read in an empty object
    code, _, err = decrypt(config, "no-such-bucket-" + os.urandom(4).hex(), "--prefix", "", "--to", str(tmp_path / "n"))
    assert code == 1 and "the listing failed after 0 objects" in err


def test_decrypt_backend_url_overrides_the_config(written: dict[str, bytes], backend: Backend, tmp_path: Path) -> None:
    bucket = written[""].decode()
    dead = Backend("http://127.0.0.1:9", backend.access_key, backend.secret_key, backend.region, backend.kind)
    config = write_config(tmp_path, dead)
    code, out, err = decrypt(config, bucket, "--key", "s/1.bin")
    assert code == 1 and "backend unreachable" in err and out == b""
    code, out, err = decrypt(config, bucket, "--backend-url", backend.url, "--key", "s/1.bin")
    assert (code, err) == (0, "") and out == written["s/1.bin"]


def test_decrypt_as_python_module(written: dict[str, bytes], config: Path) -> None:
    bucket = written[""].decode()
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3PROXY_")}
    cp = subprocess.run(
        [sys.executable, "-m", "s3proxy.recover", "--config", str(config), "--bucket", bucket, "--key", "k/uneven"],
        capture_output=True, timeout=300, env=env, cwd=str(ROOT),
    )
    assert cp.returncode == 0, cp.stderr.decode()
    assert cp.stdout == written["k/uneven"]


def test_decrypt_memory_stays_bounded_on_a_large_multipart_object(written: dict[str, bytes], config: Path) -> None:
    """Whole and ranged reads of a 10 MiB multipart object peak far below its size (python heap)."""
    from s3proxy.recover import cmd_decrypt

    bucket = written[""].decode()

    class Sink(io.RawIOBase):
        n = 0

        def write(self, b: Any) -> int:
            self.n += len(b)
            return len(b)

    for extra in ([], ["--range", f"{MiB}-"]):
        sink = Sink()
        tracemalloc.start()
        try:
            code = cmd_decrypt(decrypt_args(config, bucket, "--key", "k/uneven", *extra), out=sink,  # type: ignore[arg-type]
                               err=io.StringIO())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert code == 0 and sink.n == len(written["k/uneven"]) - (MiB if extra else 0)
        assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB for a {len(written['k/uneven']) / MiB:.0f} MiB object"


# -- --prefix to a directory ---------------------------------------------------------------------


def tree_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_decrypt_prefix_to_directory_resumable(written: dict[str, bytes], config: Path, tmp_path: Path) -> None:
    bucket = written[""].decode()
    out_dir = tmp_path / "out"
    code, _, err = decrypt(config, bucket, "--prefix", "", "--to", str(out_dir), "--no-progress")
    assert code == 0, err
    expect = {k: v for k, v in written.items() if k}
    assert tree_files(out_dir) == expect
    assert f"{len(expect)} written" in err
    # a rerun skips every complete file; a missing or cut file is written again
    (out_dir / "s" / "1.bin").unlink()
    (out_dir / "k" / "one-part").write_bytes(b"cut")
    (out_dir / "s" / ".0.bin.s3proxy-partial").write_bytes(b"left by a crash")
    code, _, err = decrypt(config, bucket, "--prefix", "", "--to", str(out_dir))
    assert code == 0, err
    assert f"2 written (1.2 KiB), {len(expect) - 2} already complete" in err
    assert tree_files(out_dir) == {**expect, "s/.0.bin.s3proxy-partial": b"left by a crash"}
    assert "decrypt: " in err and "objects" in err  # the progress line


def test_decrypt_prefix_refuses_what_does_not_authenticate(proxy: Any, raw: Any, config: Path, tmp_path: Path,
                                                            bucket: str) -> None:
    s3 = proxy.client()
    good = {f"p/{i}": os.urandom(20_000 + i) for i in range(3)}
    good["p/sp ace+ü%20.bin"] = b"a key that needs encoding in a listing"
    for k, v in good.items():
        s3.put_object(Bucket=bucket, Key=k, Body=v)
    # storage-side writer: a tampered body, an object moved to another key, a plaintext object
    body, meta, _ = stored(raw, bucket, "p/0")
    bad = bytearray(body)
    bad[56 + 16400 + 3] ^= 1
    raw.put_object(Bucket=bucket, Key="p/moved", Body=body, Metadata=meta)
    raw.put_object(Bucket=bucket, Key="p/0", Body=bytes(bad), Metadata=meta)  # tampered in place
    raw.put_object(Bucket=bucket, Key="p/plain.txt", Body=b"never encrypted")
    raw.put_object(Bucket=bucket, Key="p/dir/", Body=b"")
    out_dir = tmp_path / "o"
    code, _, err = decrypt(config, bucket, "--prefix", "p/", "--to", str(out_dir), "--no-progress")
    assert code == 1
    assert "failed: p/0: ChunkAuthenticationFailed" in err
    assert "failed: p/moved: BindingMismatch" in err
    assert "failed: p/plain.txt: not an s3proxy object" in err
    assert tree_files(out_dir) == {k: v for k, v in good.items() if k != "p/0"}  # no partial file either
    # one object's body under another's metadata, through --key: nothing written
    raw.put_object(Bucket=bucket, Key="p/1", Body=stored(raw, bucket, "p/2")[0], Metadata=stored(raw, bucket, "p/1")[1])
    code, out, err = decrypt(config, bucket, "--key", "p/1")
    assert code == 1 and out == b"" and "CommitmentMismatch" in err


def test_safe_path_refuses_keys_that_leave_the_directory(tmp_path: Path) -> None:
    from s3proxy.recover import safe_path

    assert safe_path(tmp_path, "a/b/c.txt") == tmp_path / "a" / "b" / "c.txt"
    for key in ("../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "a/", "", "a\x00b", "a/.b.s3proxy-partial"):
        assert safe_path(tmp_path, key) is None, key


@pytest.mark.needs("versioning")
def test_decrypt_old_version(proxy: Any, raw: Any, config: Path, bucket: str) -> None:
    s3 = proxy.client()
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    old, new = os.urandom(30_000), os.urandom(100)
    s3.put_object(Bucket=bucket, Key="v", Body=old)
    s3.put_object(Bucket=bucket, Key="v", Body=new)
    versions = raw.list_object_versions(Bucket=bucket, Prefix="v")["Versions"]
    old_id = next(v["VersionId"] for v in versions if not v["IsLatest"])
    assert decrypt(config, bucket, "--key", "v", "--version-id", old_id)[1] == old
    assert decrypt(config, bucket, "--key", "v", "--version-id", old_id, "--range", "29990-")[1] == old[29990:]
    assert decrypt(config, bucket, "--key", "v")[1] == new


# -- AWS KMS (moto) --------------------------------------------------------------------------------


def test_kms_objects_read_back_by_both_readers(backend: Backend, kms: Kms, tmp_path: Path) -> None:  # noqa: F811
    keys: dict[str, Any] = {"backend": "aws-kms", "aws_kms": kms.settings(kms.arns[0])}
    p = start_proxy(with_keys(proxy_settings(backend), keys))
    try:
        s3 = p.client()
        bucket = "kms-" + os.urandom(6).hex()
        s3.create_bucket(Bucket=bucket)
        objs = {"s-empty": b"", "s-one": b"x", "s-big": os.urandom(70_000)}
        for k, v in objs.items():
            s3.put_object(Bucket=bucket, Key=k, Body=v)
        parts = [os.urandom(5 * MiB + 11), os.urandom(333)]
        multipart_upload(s3, bucket, "mp", parts)
        objs["mp"] = b"".join(parts)
    finally:
        stop_proxy(p)
    raw = backend.client()
    unwrap = R.kms_unwrapper(kms.client())
    config = write_config(tmp_path, backend, keys)
    for k, v in objs.items():
        assert R.parse_envelope(stored(raw, bucket, k)[1]).backend == "aws-kms"
        assert standalone(raw, bucket, k, unwrap) == v, k
        code, out, err = decrypt(config, bucket, "--key", k)
        assert (code, err) == (0, "") and out == v, k
    code, out, _ = decrypt(config, bucket, "--key", "mp", "--range", f"{5 * MiB}-{5 * MiB + 20}")
    assert code == 0 and out == objs["mp"][5 * MiB : 5 * MiB + 21]
    # the local keyring cannot unwrap a KMS-wrapped key: refused, never guessed
    with pytest.raises(R.KeyUnwrapFailed):
        standalone(raw, bucket, "s-one", LOCAL)


# -- storage-side writer re-completing a multipart object (issue 12 item 4) --------------------------------


def recomplete(raw: Any, bucket: str, key: str, raw_parts: list[bytes]) -> None:
    """As a storage-side writer: rewrite ``key`` as a multipart object of exactly these stored parts, same metadata."""
    meta = raw.head_object(Bucket=bucket, Key=key)["Metadata"]
    uid = raw.create_multipart_upload(Bucket=bucket, Key=key, Metadata=meta)["UploadId"]
    done = []
    for i, body in enumerate(raw_parts, 1):
        done.append({"PartNumber": i, "ETag": raw.upload_part(Bucket=bucket, Key=key, UploadId=uid, PartNumber=i,
                                                              Body=body)["ETag"]})
    raw.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": done})


def stored_parts(raw: Any, bucket: str, key: str, plain_sizes: list[int]) -> list[bytes]:
    body = stored(raw, bucket, key)[0]
    out, off = [], 0
    for n in plain_sizes:
        out.append(body[off : off + n + OVH])
        off += n + OVH
    assert off == len(body)
    return out


def mp_object(proxy: Any, bucket: str, key: str, sizes: list[int]) -> bytes:
    parts = [os.urandom(n) for n in sizes]
    multipart_upload(proxy.client(), bucket, key, parts)
    return b"".join(parts)


def test_part_spliced_from_another_object_is_refused(proxy: Any, raw: Any, config: Path, bucket: str) -> None:
    """Two objects written back to back share the cached data key; the object id in every part's key
    schedule still tells their parts apart."""
    sizes = [5 * MiB, 4321]
    a = mp_object(proxy, bucket, "a", sizes)
    mp_object(proxy, bucket, "b", sizes)
    a1, _ = stored_parts(raw, bucket, "a", sizes)
    _, b2 = stored_parts(raw, bucket, "b", sizes)
    recomplete(raw, bucket, "a", [a1, b2])
    with pytest.raises(R.CommitmentMismatch):
        standalone(raw, bucket, "a", LOCAL)
    code, out, err = decrypt(config, bucket, "--key", "a")
    assert code == 1 and "CommitmentMismatch" in err and out == a[: len(out)] and len(out) <= 5 * MiB
    code, out, err = decrypt(config, bucket, "--key", "a", "--range", f"{5 * MiB}-")
    assert code == 1 and "CommitmentMismatch" in err and out == b""


def test_reordered_parts_are_refused_by_every_reader(proxy: Any, raw: Any, config: Path, bucket: str) -> None:
    sizes = [5 * MiB, 5 * MiB + 1]
    pt = mp_object(proxy, bucket, "mp", sizes)
    p1, p2 = stored_parts(raw, bucket, "mp", sizes)
    recomplete(raw, bucket, "mp", [p2, p1])  # part 2's bytes first: header numbers 2, 1
    # the completeness manifest names part 1 first: refused at the first header, nothing released
    with pytest.raises(R.ManifestMismatch):
        standalone(raw, bucket, "mp", LOCAL)
    code, out, err = decrypt(config, bucket, "--key", "mp")
    assert code == 1 and "ManifestMismatch" in err and out == b""
    assert len(out) < len(pt)
    code, out, err = decrypt(config, bucket, "--key", "mp", "--range", "0-9")
    assert code == 1 and "PartOrderError" in err and out == b""
    with pytest.raises((ClientError, BotoCoreError)):
        proxy.client().get_object(Bucket=bucket, Key="mp")["Body"].read()


def test_dropped_last_part_fails_to_read_through_the_proxy(proxy: Any, raw: Any, bucket: str) -> None:
    sizes = [5 * MiB, 5 * MiB + 7, 1000]
    pt = mp_object(proxy, bucket, "mp", sizes)
    recomplete(raw, bucket, "mp", stored_parts(raw, bucket, "mp", sizes)[:-1])
    try:
        got = proxy.client().get_object(Bucket=bucket, Key="mp")["Body"].read()
    except (ClientError, BotoCoreError):
        return  # fails closed
    pytest.fail(f"the object with its last part dropped read as authentic ({len(got)} of {len(pt)} bytes)")
