"""Origins and the processes under test: null origin, rclone, moto, devstore, s3proxy, the peer.

The **null origin** (``python -m bench.origins null --listen HOST:PORT``) is
a minimal S3 server that does as little as possible per byte, so that what a
system in front of it costs is the system's own cost:

- no signature check, no checksum, no MD5 (ETags are made up, with the
  ``-N`` suffix for multipart objects as S3 does, which s3proxy needs);
- bodies are kept in memory exactly as they arrived (a list of the received
  buffers, no copy) so that s3proxy can read back and decrypt what it wrote;
  bodies of keys under ``nostore/`` (and any body past ``--max-bytes``,
  default 8 GiB) are counted and dropped, and a GET of such an object serves
  zeros of the right size (not decryptable: the benchmark never reads one
  through s3proxy).  Timed uploads go to ``nostore/`` keys: keeping a body
  costs the origin a page fault per fresh 4 KiB of memory, which would cap
  "direct" PUTs at ~60% of what the loopback carries on this machine;
- metadata (``x-amz-meta-*``, Content-Type...) is kept and returned;
- PUT, GET (all range forms, If-Match), HEAD, DELETE, ListObjects(V2),
  CreateBucket/HeadBucket, Create/UploadPart/Complete/Abort multipart.

Everything else here starts and stops processes: each one in its own process
group, ended by its pid at ``stop()`` (and at exit).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import datetime as dt
import hashlib
import ipaddress
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PEER_SCRIPT = Path(os.environ.get("BENCH_PEER_SCRIPT", REPO.parent / "shared/bench/rclone-crypt-peer.sh"))

# --------------------------------------------------------------------------- null origin

_META_KEEP = ("content-type", "content-encoding", "content-disposition", "content-language", "cache-control", "expires")


@dataclass
class _Obj:
    size: int
    etag: str
    meta: dict[str, str]
    chunks: list[bytes] | None  # None: body dropped (over the memory budget)
    offsets: list[int] = field(default_factory=list)  # start offset of each chunk
    mtime: float = field(default_factory=time.time)

    def index(self) -> None:
        self.offsets, off = [], 0
        for c in self.chunks or ():
            self.offsets.append(off)
            off += len(c)

    def slices(self, start: int, end: int):  # type: ignore[no-untyped-def]
        """Memoryviews covering [start, end)."""
        if self.chunks is None:
            zero = bytes(1 << 20)
            while start < end:
                n = min(len(zero), end - start)
                yield memoryview(zero)[:n]
                start += n
            return
        i = max(0, bisect.bisect_right(self.offsets, start) - 1)
        while start < end and i < len(self.chunks):
            c, off = self.chunks[i], self.offsets[i]
            a, b = start - off, min(len(c), end - off)
            if b > a:
                yield memoryview(c)[a:b]
                start = off + b
            i += 1


class NullStore:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.held = 0
        self.buckets: set[str] = set()
        self.objects: dict[tuple[str, str], _Obj] = {}
        self.uploads: dict[str, tuple[str, str, dict[str, str], dict[int, _Obj]]] = {}
        self._sorted: dict[str, list[str]] = {}
        self._n = itertools.count(1)

    def etag(self, *parts: object) -> str:
        return hashlib.md5(repr((*parts, next(self._n))).encode()).hexdigest()

    def put(self, bucket: str, key: str, obj: _Obj) -> None:
        old = self.objects.pop((bucket, key), None)
        if old is not None:
            self._release(old)
        self.objects[(bucket, key)] = obj
        self._sorted.pop(bucket, None)

    def delete(self, bucket: str, key: str) -> None:
        old = self.objects.pop((bucket, key), None)
        if old is not None:
            self._release(old)
            self._sorted.pop(bucket, None)

    def _release(self, obj: _Obj) -> None:
        if obj.chunks is not None:
            self.held -= obj.size

    def keys(self, bucket: str) -> list[str]:
        ks = self._sorted.get(bucket)
        if ks is None:
            ks = sorted(k for b, k in self.objects if b == bucket)
            self._sorted[bucket] = ks
        return ks


def _xml(body: str) -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body).encode()


def _http_date(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_PARTNUM = re.compile(r"<PartNumber>\s*(\d+)\s*</PartNumber>")


def build_null_app(max_bytes: int = 8 << 30):  # type: ignore[no-untyped-def]
    from aiohttp import web

    store = NullStore(max_bytes)
    NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'

    def err(status: int, code: str) -> web.Response:
        return web.Response(status=status, body=_xml(f"<Error><Code>{code}</Code><Message>{code}</Message></Error>"),
                            content_type="application/xml")

    async def receive(request: web.Request, key: str) -> tuple[int, list[bytes] | None]:
        declared = request.content_length or 0
        keep = store.held + declared <= store.max_bytes and not key.startswith("nostore/")
        chunks: list[bytes] | None = [] if keep else None
        n = 0
        while True:
            data = await request.content.readany()
            if not data:
                break
            n += len(data)
            if chunks is not None:
                chunks.append(data)
        if chunks is not None:
            store.held += n
        return n, chunks

    def meta_of(request: web.Request) -> dict[str, str]:
        return {k.lower(): v for k, v in request.headers.items()
                if k.lower().startswith("x-amz-meta-") or k.lower() in _META_KEEP}

    def obj_headers(o: _Obj) -> dict[str, str]:
        h = {"ETag": f'"{o.etag}"', "Last-Modified": _http_date(o.mtime), "Accept-Ranges": "bytes"}
        h.update(o.meta)
        h.setdefault("content-type", "binary/octet-stream")
        return h

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.match_info["tail"]
        bucket, _, key = path.partition("/")
        from urllib.parse import unquote
        key = unquote(key)
        q = request.query
        m = request.method
        if not bucket:
            if m == "GET":
                names = "".join(f"<Bucket><Name>{b}</Name><CreationDate>{_iso(0)}</CreationDate></Bucket>" for b in sorted(store.buckets))
                return web.Response(body=_xml(f"<ListAllMyBucketsResult {NS}><Buckets>{names}</Buckets></ListAllMyBucketsResult>"),
                                    content_type="application/xml")
            return err(405, "MethodNotAllowed")
        if not key:
            if m == "PUT":
                store.buckets.add(bucket)
                return web.Response(status=200)
            if bucket not in store.buckets:
                return err(404, "NoSuchBucket")
            if m == "HEAD":
                return web.Response(status=200)
            if m == "DELETE":
                store.buckets.discard(bucket)
                return web.Response(status=204)
            if m == "GET" and "uploads" in q:
                return web.Response(body=_xml(f"<ListMultipartUploadsResult {NS}><Bucket>{bucket}</Bucket></ListMultipartUploadsResult>"),
                                    content_type="application/xml")
            if m == "GET":
                return list_objects(bucket, q)
            return err(501, "NotImplemented")
        if bucket not in store.buckets:
            if m == "PUT" or m == "POST":
                await receive(request, key) if m == "PUT" else None
            return err(404, "NoSuchBucket")
        if m == "PUT" and "uploadId" in q:
            up = store.uploads.get(q["uploadId"])
            n, chunks = await receive(request, key)
            if up is None:
                return err(404, "NoSuchUpload")
            pn = int(q.get("partNumber", "0"))
            old = up[3].get(pn)
            if old is not None and old.chunks is not None:
                store.held -= old.size
            part = _Obj(n, store.etag(bucket, key, pn), {}, chunks)
            up[3][pn] = part
            return web.Response(status=200, headers={"ETag": f'"{part.etag}"'})
        if m == "PUT":
            if "x-amz-copy-source" in request.headers:
                return err(501, "NotImplemented")
            n, chunks = await receive(request, key)
            o = _Obj(n, store.etag(bucket, key, n), meta_of(request), chunks)
            o.index()
            store.put(bucket, key, o)
            return web.Response(status=200, headers={"ETag": f'"{o.etag}"'})
        if m == "POST" and "uploads" in q:
            uid = base64.urlsafe_b64encode(os.urandom(12)).decode()
            store.uploads[uid] = (bucket, key, meta_of(request), {})
            return web.Response(body=_xml(f"<InitiateMultipartUploadResult {NS}><Bucket>{bucket}</Bucket><Key>{escape(key)}</Key>"
                                          f"<UploadId>{uid}</UploadId></InitiateMultipartUploadResult>"), content_type="application/xml")
        if m == "POST" and "uploadId" in q:
            body = (await request.read()).decode()
            up = store.uploads.pop(q["uploadId"], None)
            if up is None:
                return err(404, "NoSuchUpload")
            wanted = [int(x) for x in _PARTNUM.findall(body)]
            if not wanted or any(pn not in up[3] for pn in wanted):
                return err(400, "InvalidPart")
            parts = [up[3].pop(pn) for pn in wanted]
            for rest in up[3].values():
                if rest.chunks is not None:
                    store.held -= rest.size
            kept = all(p.chunks is not None for p in parts)
            size = sum(p.size for p in parts)
            if not kept:
                store.held -= sum(p.size for p in parts if p.chunks is not None)
            chunks = [c for p in parts for c in (p.chunks or ())] if kept else None
            o = _Obj(size, f"{store.etag(bucket, key, 'mp')}-{len(parts)}", up[2], chunks)
            o.index()
            store.put(bucket, key, o)
            return web.Response(body=_xml(f"<CompleteMultipartUploadResult {NS}><Bucket>{bucket}</Bucket><Key>{escape(key)}</Key>"
                                          f"<ETag>&quot;{o.etag}&quot;</ETag></CompleteMultipartUploadResult>"),
                                content_type="application/xml")
        if m == "DELETE" and "uploadId" in q:
            up = store.uploads.pop(q["uploadId"], None)
            for p in (up[3].values() if up else ()):
                if p.chunks is not None:
                    store.held -= p.size
            return web.Response(status=204)
        if m == "DELETE":
            store.delete(bucket, key)
            return web.Response(status=204)
        if m == "GET" and "uploadId" in q:  # ListParts (s3proxy reads it to build a multipart manifest)
            up = store.uploads.get(q["uploadId"])
            if up is None:
                return err(404, "NoSuchUpload")
            listed = "".join(f"<Part><PartNumber>{pn}</PartNumber><ETag>&quot;{p.etag}&quot;</ETag><Size>{p.size}</Size></Part>"
                             for pn, p in sorted(up[3].items()))
            return web.Response(body=_xml(f"<ListPartsResult {NS}><Bucket>{bucket}</Bucket><Key>{escape(key)}</Key>"
                                          f"<UploadId>{escape(q['uploadId'])}</UploadId><IsTruncated>false</IsTruncated>"
                                          f"{listed}</ListPartsResult>"), content_type="application/xml")
        if m in ("GET", "HEAD"):
            o = store.objects.get((bucket, key))
            if o is None:
                return err(404, "NoSuchKey")
            im = request.headers.get("If-Match")
            if im and im.strip() != "*" and o.etag not in im:
                return err(412, "PreconditionFailed")
            headers = obj_headers(o)
            start, end, status = 0, o.size, 200
            rng = request.headers.get("Range")
            if rng:
                mm = _RANGE.match(rng.strip())
                if mm and (mm.group(1) or mm.group(2)):
                    a, b = mm.group(1), mm.group(2)
                    if a == "":
                        start, end = max(0, o.size - int(b)), o.size
                    else:
                        start, end = int(a), (min(o.size, int(b) + 1) if b else o.size)
                    if start >= o.size:
                        return web.Response(status=416, headers={"Content-Range": f"bytes */{o.size}"})
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{end - 1}/{o.size}"
            resp = web.StreamResponse(status=status, headers=headers)
            resp.content_length = end - start
            await resp.prepare(request)
            if m == "GET":
                for piece in o.slices(start, end):
                    await resp.write(piece)
            await resp.write_eof()
            return resp
        return err(501, "NotImplemented")

    def list_objects(bucket: str, q) -> web.Response:  # type: ignore[no-untyped-def]
        prefix = q.get("prefix", "")
        v2 = q.get("list-type") == "2"
        after = q.get("continuation-token") or q.get("start-after") or q.get("marker") or ""
        max_keys = int(q.get("max-keys", "1000"))
        keys = store.keys(bucket)
        i = bisect.bisect_right(keys, after) if after else bisect.bisect_left(keys, prefix)
        out, last = [], ""
        while i < len(keys) and len(out) < max_keys:
            k = keys[i]
            if not k.startswith(prefix):
                break
            o = store.objects[(bucket, k)]
            out.append(f"<Contents><Key>{escape(k)}</Key><LastModified>{_iso(o.mtime)}</LastModified>"
                       f"<ETag>&quot;{o.etag}&quot;</ETag><Size>{o.size}</Size><StorageClass>STANDARD</StorageClass></Contents>")
            last = k
            i += 1
        truncated = i < len(keys) and keys[i].startswith(prefix)
        if v2:
            more = f"<NextContinuationToken>{escape(last)}</NextContinuationToken>" if truncated else ""
            body = (f"<ListBucketResult {NS}><Name>{bucket}</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{len(out)}</KeyCount>"
                    f"<MaxKeys>{max_keys}</MaxKeys><IsTruncated>{str(truncated).lower()}</IsTruncated>{more}{''.join(out)}</ListBucketResult>")
        else:
            more = f"<NextMarker>{escape(last)}</NextMarker>" if truncated else ""
            body = (f"<ListBucketResult {NS}><Name>{bucket}</Name><Prefix>{escape(prefix)}</Prefix><MaxKeys>{max_keys}</MaxKeys>"
                    f"<IsTruncated>{str(truncated).lower()}</IsTruncated>{more}{''.join(out)}</ListBucketResult>")
        return web.Response(body=_xml(body), content_type="application/xml")

    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _serve_null(listen: str, max_bytes: int) -> None:
    from aiohttp import web

    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    host, _, port = listen.rpartition(":")

    async def serve() -> None:
        runner = web.AppRunner(build_null_app(max_bytes), access_log=None, handle_signals=False,
                               read_bufsize=4 << 20)
        await runner.setup()
        await web.TCPSite(runner, host, int(port), backlog=1024).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(serve())


# --------------------------------------------------------------------------- process management


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class Procs:
    """Processes started by the benchmark; each in its own session, ended by pid."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.extra_pids: list[int] = []  # started by the peer script (recorded in its pid files)

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)  # the group of a process we started (its workers)
        deadline = time.monotonic() + 10
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        for pid in self.extra_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        self.procs.clear()
        self.extra_pids.clear()


# --------------------------------------------------------------------------- /proc figures


def children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def minor_faults(pids: list[int]) -> int:
    """Minor page faults (fresh memory touched) of the processes so far."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            total += int(stat[stat.rindex(")") + 2:].split()[7])  # minflt
    return total


# s3proxy tunes glibc malloc itself since 053c017 (``server.tune_malloc``); the "-untuned" system
# turns that off, to keep the before/after of that change in every run.
UNTUNED = {"S3PROXY_MALLOC_TUNE": "0"}
# The same tuning by environment (what the "-mt" system of the first runs used, before 053c017).
MALLOC_TUNED = {"MALLOC_MMAP_THRESHOLD_": str(64 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
                "MALLOC_TOP_PAD_": str(64 << 20)}


def reset_peak_rss(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- systems


@dataclass
class System:
    """Something the load generator talks S3 to."""

    name: str  # e.g. "s3proxy-1w"
    origin: str  # "null" | "rclone" | "moto" | "devstore"
    url: str
    access_key: str
    secret_key: str
    kind: str = "direct"  # "direct" | "s3proxy" | "peer"
    workers: int = 0
    tls: bool = False
    cafile: str | None = None
    pid: int | None = None  # s3proxy master (or only) process
    admin_url: str | None = None
    bucket: str = "bench"

    @property
    def label(self) -> str:
        return f"{self.name}@{self.origin}"

    def worker_pids(self) -> list[int]:
        if self.pid is None:
            return []
        kids = children(self.pid)
        return kids if kids else [self.pid]

    def all_pids(self) -> list[int]:
        return [self.pid, *children(self.pid)] if self.pid is not None else []

    def metrics(self) -> dict[str, float]:
        if not self.admin_url:
            return {}
        text = urllib.request.urlopen(self.admin_url + "/metrics", timeout=5).read().decode()  # noqa: S310 - 127.0.0.1
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out


def make_self_signed(workdir: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cp, kp = workdir / "tls-cert.pem", workdir / "tls-key.pem"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    kp.chmod(0o600)
    return cp, kp


ORIGIN_AK, ORIGIN_SK = "originkey", "originsecret"
PROXY_AK, PROXY_SK = "benchkey", "benchsecret"


class Lab:
    """Starts origins, proxies and the peer on 127.0.0.1; ``close()`` ends them and removes the work dir."""

    def __init__(self, workdir: Path, shm_dir: Path | None) -> None:
        self.workdir = workdir
        self.shm_dir = shm_dir or workdir
        self.procs = Procs(workdir)
        self.origins: dict[str, System] = {}
        self.master_key = base64.b64encode(os.urandom(32)).decode()
        self.cert: tuple[Path, Path] | None = None
        cfg = workdir / "s3proxy.yaml"
        cfg.write_text('keys:\n  audit:\n    target: "off"\n')
        self.config = cfg
        self.peer_dir = workdir / "peer"

    # origins -----------------------------------------------------------------
    def start_null(self, max_bytes: int) -> System:
        port = free_port()
        p = self.procs.start("null-origin", [sys.executable, "-m", "bench.origins", "null", "--listen",
                                             f"127.0.0.1:{port}", "--max-bytes", str(max_bytes)])
        wait_port(port, proc=p)
        s = System("direct", "null", f"http://127.0.0.1:{port}", ORIGIN_AK, ORIGIN_SK, pid=p.pid)
        self.origins["null"] = s
        return s

    def start_rclone(self) -> System:
        port = free_port()
        data = self.shm_dir / "rclone-data"
        (data / "crypt-root").mkdir(parents=True, exist_ok=True)
        p = self.procs.start("rclone-origin", [str(VENV_BIN / "rclone"), "serve", "s3", "--addr", f"127.0.0.1:{port}",
                                               "--auth-key", f"{ORIGIN_AK},{ORIGIN_SK}", str(data),
                                               "--log-level", "NOTICE"], env={"RCLONE_CONFIG": "/dev/null"})
        wait_port(port, proc=p)
        s = System("direct", "rclone", f"http://127.0.0.1:{port}", ORIGIN_AK, ORIGIN_SK, pid=p.pid)
        self.origins["rclone"] = s
        return s

    def start_moto(self) -> System:
        port = free_port()
        p = self.procs.start("moto-origin", [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)])
        wait_port(port, timeout=30, proc=p)
        s = System("direct", "moto", f"http://127.0.0.1:{port}", ORIGIN_AK, ORIGIN_SK, pid=p.pid)
        self.origins["moto"] = s
        return s

    def start_devstore(self) -> System:
        port = free_port()
        root = self.shm_dir / "devstore"
        root.mkdir(parents=True, exist_ok=True)
        p = self.procs.start("devstore-origin", [sys.executable, "-m", "s3proxy.devstore", "--root", str(root),
                                                 "--listen", f"127.0.0.1:{port}", "--access-key", ORIGIN_AK,
                                                 "--secret-key", ORIGIN_SK])
        wait_port(port, proc=p)
        s = System("direct", "devstore", f"http://127.0.0.1:{port}", ORIGIN_AK, ORIGIN_SK, pid=p.pid)
        self.origins["devstore"] = s
        return s

    # systems in front of an origin ------------------------------------------------
    def start_proxy(self, origin: System, workers: int, tls: bool, extra_env: dict[str, str] | None = None,
                    name_suffix: str = "") -> System:
        port, admin = free_port(), free_port()
        env = {
            "S3PROXY_LISTEN": f"127.0.0.1:{port}",
            "S3PROXY_ADMIN_LISTEN": f"127.0.0.1:{admin}",
            "S3PROXY_BACKEND_URL": origin.url,
            "S3PROXY_BACKEND_ACCESS_KEY": origin.access_key,
            "S3PROXY_BACKEND_SECRET_KEY": origin.secret_key,
            "S3PROXY_ACCESS_KEY": PROXY_AK,
            "S3PROXY_SECRET_KEY": PROXY_SK,
            "S3PROXY_MASTER_KEY": self.master_key,
            "S3PROXY_LOG_LEVEL": "warning",
            **(extra_env or {}),
        }
        cafile = None
        if tls:
            if self.cert is None:
                self.cert = make_self_signed(self.workdir)
            env["S3PROXY_TLS_CERT"], env["S3PROXY_TLS_KEY"] = str(self.cert[0]), str(self.cert[1])
            cafile = str(self.cert[0])
        name = f"s3proxy-{workers}w" + ("-tls" if tls else "") + name_suffix
        p = self.procs.start(f"{name}-{origin.origin}", [str(VENV_BIN / "s3proxy"), "serve", "--config", str(self.config),
                                                         "--workers", str(workers)], env=env)
        wait_port(port, proc=p)
        if workers > 1:  # every worker must be listening before we measure
            deadline = time.monotonic() + 20
            while len(children(p.pid)) < workers and time.monotonic() < deadline:
                time.sleep(0.05)
        scheme = "https" if tls else "http"
        return System(name, origin.origin, f"{scheme}://127.0.0.1:{port}", PROXY_AK, PROXY_SK, kind="s3proxy",
                      workers=workers, tls=tls, cafile=cafile, pid=p.pid,
                      admin_url=f"http://127.0.0.1:{admin}" if workers == 1 else None)

    def start_peer(self, origin: System) -> System:
        port = free_port()
        self.peer_dir.mkdir(exist_ok=True)
        env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", "PEER_PORT": str(port),
               "ORIGIN_URL": origin.url, "ORIGIN_AK": origin.access_key, "ORIGIN_SK": origin.secret_key}
        subprocess.run(["bash", str(PEER_SCRIPT), "start", str(self.peer_dir)], env=env, check=True,
                       stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=60)
        pid = int((self.peer_dir / "peer.pid").read_text())
        self.procs.extra_pids.append(pid)
        wait_port(port)
        return System("rclone-crypt", origin.origin, f"http://127.0.0.1:{port}", "peerkey", "peersecret",
                      kind="peer", pid=pid)

    def close(self) -> None:
        if (self.peer_dir / "peer.pid").exists():
            env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
            with contextlib.suppress(Exception):
                subprocess.run(["bash", str(PEER_SCRIPT), "stop", str(self.peer_dir)], env=env, timeout=30,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.stop_all()
        for d in {self.workdir, self.shm_dir}:
            shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.origins")
    sub = ap.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("null", help="run the null S3 origin")
    n.add_argument("--listen", default="127.0.0.1:9100")
    n.add_argument("--max-bytes", type=int, default=8 << 30)
    args = ap.parse_args(argv)
    if args.cmd == "null":
        _serve_null(args.listen, args.max_bytes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
