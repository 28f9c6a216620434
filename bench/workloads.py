"""Workloads: each one runs over a list of systems, interleaved, and returns result rows.

A row is a plain dict (``workload``, ``origin``, ``system``, ``client`` and
the figures), so that ``results.json`` is the rows as they are.  Every
measurement has a time cap; a measurement that hits it is recorded with an
``error`` and the run goes on.  Repeated measurements are interleaved
(system A, B, C, then A, B, C again) and the best is kept, which is what a
noisy shared machine allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bench.loadgen import Pattern, S3Client, boto3_client, boto3_get, boto3_put
from bench.origins import System, cpu_seconds, minor_faults, peak_rss_mib, reset_peak_rss

MiB, GiB = 1 << 20, 1 << 30
Row = dict[str, Any]


@dataclass
class Budget:
    """A deadline for the whole run: workloads started after it are skipped."""

    deadline: float

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def cap(self, want: float) -> float:
        return max(1.0, min(want, self.left()))


def _base(workload: str, s: System, client: str = "aiohttp", **kw: Any) -> Row:
    return {"workload": workload, "origin": s.origin, "system": s.name, "kind": s.kind, "client": client, **kw}


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class _Probe:
    """CPU seconds and peak RSS of a system's s3proxy processes around a measurement."""

    def __init__(self, s: System) -> None:
        self.s = s
        self.pids = s.all_pids() if s.kind == "s3proxy" else []
        self.cpu0 = 0.0

    def __enter__(self) -> _Probe:
        if self.pids:
            reset_peak_rss(self.s.worker_pids())
            self.cpu0 = cpu_seconds(self.pids)
            self.flt0 = minor_faults(self.pids)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pids:
            self.cpu = cpu_seconds(self.pids) - self.cpu0
            self.flt = minor_faults(self.pids) - self.flt0
            self.rss = max(peak_rss_mib(p) for p in self.s.worker_pids())

    def figures(self, nbytes: int) -> Row:
        if not self.pids or not hasattr(self, "cpu"):
            return {}
        return {"proxy_cpu_s": round(self.cpu, 3), "cpu_s_per_gib": round(self.cpu / (nbytes / GiB), 3),
                "peak_rss_mib": round(self.rss, 1), "minor_faults_per_gib": round(self.flt / (nbytes / GiB))}


async def _timed(cap: float, coro: Awaitable[Any]) -> tuple[float, str | None]:
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(coro, cap)
    except TimeoutError:
        return time.perf_counter() - t0, f"timeout after {cap:.0f}s"
    except Exception as e:  # noqa: BLE001 - recorded in the row
        return time.perf_counter() - t0, f"{type(e).__name__}: {str(e)[:200]}"
    return time.perf_counter() - t0, None


def _keep_best(best: dict[tuple[str, ...], Row], key: tuple[str, ...], row: Row) -> None:
    old = best.get(key)
    if old is None or (old.get("error") and not row.get("error")) or (
        not row.get("error") and row.get("mb_s", 0) > old.get("mb_s", 0)
    ):
        if old is not None:
            row["runs_mb_s"] = [*old.get("runs_mb_s", [old.get("mb_s")]), row.get("mb_s")]
        best[key] = row
    else:
        old["runs_mb_s"] = [*old.get("runs_mb_s", [old.get("mb_s")]), row.get("mb_s")]


def _client(s: System, limit: int = 128) -> S3Client:
    return S3Client(s.url, s.access_key, s.secret_key, cafile=s.cafile, limit=limit)


# ----------------------------------------------------------------------------- big objects


def put_key(s: System, key: str) -> str:
    """Timed uploads to the null origin go to ``nostore/`` keys (bodies dropped there, see ``origins``)."""
    return f"nostore/{key}" if s.origin == "null" else key


async def big_put_get(systems: list[System], pattern: Pattern, size: int, repeats: int, cap: float,
                      budget: Budget, key: str = "big") -> list[Row]:
    """Single PUT then GET of ``size`` bytes, aiohttp client.  On the null origin the timed PUT goes
    to a ``nostore/`` key and the object the GET reads is uploaded once beforehand, untimed.

    The timed GET follows an untimed HEAD through the same system: rclone serve s3 computes the
    MD5 of a file written by a single PUT on its first access (0.41 s for 256 MiB here), which
    would otherwise be timed as the GET of direct and s3proxy (whose PUTs reach the origin as one
    request) but not of the peer (rclone's s3 backend uploads files above 200 MiB as multipart)."""
    best: dict[tuple[str, ...], Row] = {}
    for rep in range(repeats):
        for s in systems:
            if budget.left() < 0 and rep:
                break
            async with _client(s) as c:
                for op in ("PUT", "GET"):
                    if op == "GET" and best.get((s.label, "PUT"), {}).get("error"):
                        continue
                    if op == "GET" and rep == 0 and put_key(s, key) != key:
                        _, err = await _timed(budget.cap(cap), c.put(s.bucket, key, pattern, size))
                        if err:
                            best[(s.label, "GET")] = _base("GET single", s, size=size, mb_s=0.0, error=f"setup: {err}")
                            continue
                    if op == "GET":
                        await _timed(budget.cap(cap), c.head_size(s.bucket, key))  # a failure shows in the GET
                    with _Probe(s) as probe:
                        work = (c.put(s.bucket, put_key(s, key), pattern, size) if op == "PUT"
                                else c.get(s.bucket, key, pattern, size))
                        secs, err = await _timed(budget.cap(cap), work)
                    row = _base(f"{op} single", s, size=size, seconds=round(secs, 3),
                                mb_s=round(size / secs / 1e6, 1), **probe.figures(size))
                    if err:
                        row["error"], row["mb_s"] = err, 0.0
                    _keep_best(best, (s.label, op), row)
    return list(best.values())


async def multipart(systems: list[System], pattern: Pattern, size: int, repeats: int, cap: float, budget: Budget,
                    read_back: Callable[[System], bool], key: str = "mp") -> list[Row]:
    """Multipart upload, 8 MiB parts, 8 in flight; then a plain GET of it where the origin allows
    (after an untimed HEAD, as in ``big_put_get``: rclone serve s3 hashes the assembled file on its
    first access, which s3proxy's Complete triggers inside its timed upload and direct's GET would
    otherwise pay)."""
    best: dict[tuple[str, ...], Row] = {}
    for rep in range(repeats):
        for s in systems:
            if budget.left() < 0 and rep:
                break
            async with _client(s) as c:
                with _Probe(s) as probe:
                    secs, err = await _timed(budget.cap(cap), c.multipart_upload(s.bucket, put_key(s, key), pattern,
                                                                                 size, 8 * MiB, 8))
                row = _base("PUT multipart 8MiB x8", s, size=size, seconds=round(secs, 3),
                            mb_s=round(size / secs / 1e6, 1), **probe.figures(size))
                if err:
                    row["error"], row["mb_s"] = err, 0.0
                _keep_best(best, (s.label, "mp"), row)
                if err or not read_back(s):
                    continue
                if rep == 0 and put_key(s, key) != key:
                    _, err = await _timed(budget.cap(cap), c.multipart_upload(s.bucket, key, pattern, size, 8 * MiB, 8))
                    if err:
                        best[(s.label, "mpget")] = _base("GET multipart object", s, size=size, mb_s=0.0,
                                                         error=f"setup: {err}")
                        continue
                await _timed(budget.cap(cap), c.head_size(s.bucket, key))  # untimed: see big_put_get
                with _Probe(s) as probe:
                    secs, err = await _timed(budget.cap(cap), c.get(s.bucket, key, pattern, size))
                row = _base("GET multipart object", s, size=size, seconds=round(secs, 3),
                            mb_s=round(size / secs / 1e6, 1), **probe.figures(size))
                if err:
                    row["error"], row["mb_s"] = err, 0.0
                _keep_best(best, (s.label, "mpget"), row)
    return list(best.values())


async def ranged(systems: list[System], pattern: Pattern, size: int, repeats: int, cap: float, budget: Budget,
                 key: str = "big") -> list[Row]:
    """HEAD + 8 MiB ranged GETs, 10 in flight (boto3 ``download_file`` defaults) of the single-PUT object."""
    best: dict[tuple[str, ...], Row] = {}
    for rep in range(repeats):
        for s in systems:
            if budget.left() < 0 and rep:
                break
            async with _client(s) as c:
                with _Probe(s) as probe:
                    secs, err = await _timed(budget.cap(cap), c.ranged_download(s.bucket, key, pattern, size, 8 * MiB, 10))
                row = _base("GET ranged 8MiB x10", s, size=size, seconds=round(secs, 3),
                            mb_s=round(size / secs / 1e6, 1), **probe.figures(size))
                if err:
                    row["error"], row["mb_s"] = err, 0.0
                _keep_best(best, (s.label, "ranged"), row)
    return list(best.values())


async def boto3_big(systems: list[System], pattern: Pattern, size: int, repeats: int, cap: float,
                    budget: Budget, key: str = "big-boto3", get_key: str = "big") -> list[Row]:
    """boto3 ``put_object`` / ``get_object`` of ``size`` bytes (default boto3 settings except response
    checksum validation ``when_required``, so no system gets a client-side CRC the others don't).
    The GET reads ``get_key``, which ``big_put_get`` left there."""
    best: dict[tuple[str, ...], Row] = {}
    for rep in range(repeats):
        for s in systems:
            if budget.left() < 0 and rep:
                break
            cl = boto3_client(s.url, s.access_key, s.secret_key, s.cafile)
            for op in ("PUT", "GET"):
                if op == "GET" and best.get((s.label, "PUT"), {}).get("error"):
                    continue
                if op == "PUT":
                    fn = functools.partial(boto3_put, cl, s.bucket, put_key(s, key), pattern, size)
                else:
                    fn = functools.partial(boto3_get, cl, s.bucket, get_key, pattern, size)
                with _Probe(s) as probe:
                    secs, err = await _timed(budget.cap(cap), asyncio.to_thread(fn))
                row = _base(f"{op} single", s, client="boto3", size=size, seconds=round(secs, 3),
                            mb_s=round(size / secs / 1e6, 1), **probe.figures(size))
                if err:
                    row["error"], row["mb_s"] = err, 0.0
                    if err.startswith("timeout"):
                        await asyncio.sleep(0)  # the thread finishes on its own (its socket times out)
                _keep_best(best, (s.label, op), row)
            cl.close()
    return list(best.values())


async def delete_keys(systems: list[System], keys: list[str]) -> None:
    for s in systems:
        with contextlib.suppress(Exception):
            async with _client(s) as c:
                for k in keys:
                    await c.delete(s.bucket, k)


# ----------------------------------------------------------------------------- small objects


async def _ops(c: S3Client, op: str, s: System, size: int, conc: int, data: bytes, prefix: str, n_keys: int,
               cap: float, max_ops: int) -> tuple[list[float], int, float, str | None]:
    lat: list[float] = []
    counter = iter(range(max_ops))
    stop_at = time.perf_counter() + cap
    err: list[str] = []

    async def worker() -> None:
        for i in counter:
            if time.perf_counter() > stop_at or err:
                return
            key = f"{prefix}{i % n_keys:05d}"
            t0 = time.perf_counter()
            try:
                if op == "PUT":
                    await c.put_bytes(s.bucket, key, data)
                else:
                    got = await c.get_bytes(s.bucket, key)
                    if got != data:
                        raise ValueError(f"GET {key}: wrong content ({len(got)} bytes)")
            except Exception as e:  # noqa: BLE001 - recorded
                err.append(f"{type(e).__name__}: {str(e)[:200]}")
                return
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(conc))), cap + 30)
    except TimeoutError:
        err.append("timeout")
    return lat, len(lat), time.perf_counter() - t0, (err[0] if err else None)


async def small_objects(systems: list[System], pattern: Pattern, sizes: list[int], concs: list[int], cap: float,
                        max_ops: int, budget: Budget, n_keys: int = 1000) -> list[Row]:
    """PUT then GET of small objects at each concurrency; keys cycle over ``n_keys`` per size."""
    rows: list[Row] = []
    clients = {s.label: _client(s, limit=max(concs) + 8) for s in systems}
    for c in clients.values():
        await c.__aenter__()
    try:
        for size in sizes:  # warm up: connections, key cache, the keys GET will read
            data = pattern.bytes(size, size)
            for s in systems:
                c = clients[s.label]
                await _ops(c, "PUT", s, size, max(concs), data, f"small/{size}/", n_keys, 30, n_keys)
        for conc in concs:
            for size in sizes:
                data = pattern.bytes(size, size)
                for s in systems:
                    for op in ("PUT", "GET"):
                        if budget.left() < 0:
                            rows.append(_base(f"{op} small", s, size=size, concurrency=conc, error="skipped (time budget)"))
                            continue
                        with _Probe(s) as probe:
                            lat, n, secs, err = await _ops(clients[s.label], op, s, size, conc, data, f"small/{size}/",
                                                           n_keys, cap, max_ops)
                        row = _base(f"{op} small", s, size=size, concurrency=conc, ops=n, seconds=round(secs, 3),
                                    ops_s=round(n / secs, 1) if secs else 0.0,
                                    p50_ms=round(_pct(lat, 0.50) * 1e3, 3), p99_ms=round(_pct(lat, 0.99) * 1e3, 3))
                        fig = probe.figures(max(1, n * size))
                        if fig:
                            row["proxy_cpu_ms_per_op"] = round(fig["proxy_cpu_s"] * 1e3 / max(1, n), 3)
                            row["peak_rss_mib"] = fig["peak_rss_mib"]
                        if err:
                            row["error"] = err
                        rows.append(row)
    finally:
        for c in clients.values():
            await c.__aexit__(None, None, None)
    return rows


async def key_service_calls(s: System, pattern: Pattern, n_puts: int, conc: int, cap: float) -> Row:
    """Key-service (key backend) calls made by s3proxy's data-key cache for ``n_puts`` small PUTs."""

    def calls() -> tuple[float, float]:
        m = s.metrics()
        enc = m.get('s3proxy_key_cache_backend_calls_total{side="encrypt"}', 0.0)
        dec = m.get('s3proxy_key_cache_backend_calls_total{side="decrypt"}', 0.0)
        return enc, dec

    e0, d0 = calls()
    async with _client(s, limit=conc + 8) as c:
        lat, n, secs, err = await _ops(c, "PUT", s, 4096, conc, pattern.bytes(7, 4096), "keys/", 1000, cap, n_puts)
    e1, d1 = calls()
    row = _base("key-service calls", s, puts=n, seconds=round(secs, 3), encrypt_calls=e1 - e0, decrypt_calls=d1 - d0,
                calls_per_10k_puts=round((e1 - e0 + d1 - d0) * 10000 / max(1, n), 2))
    if err:
        row["error"] = err
    return row


async def listing(systems: list[System], pattern: Pattern, n_keys: int, cap: float, budget: Budget) -> list[Row]:
    """Fill ``list/`` with ``n_keys`` 1 KiB objects, then ListObjectsV2 it whole, repeatedly."""
    rows: list[Row] = []
    data = pattern.bytes(3, 1024)
    for s in systems:
        async with _client(s, limit=40) as c:
            lat, n, secs, err = await _ops(c, "PUT", s, 1024, 32, data, "list/", n_keys, 120, n_keys)
            if err or n < n_keys:
                rows.append(_base("LIST 1000 keys", s, error=f"fill: {err or n}"))
                continue
    for s in systems:
        if budget.left() < 0:
            rows.append(_base("LIST 1000 keys", s, error="skipped (time budget)"))
            continue
        async with _client(s, limit=4) as c:
            times: list[float] = []
            err = None
            # The first page is not steady state: s3proxy HEADs the entries whose layout a plain
            # ETag hides (rclone, the null origin) once, then caches their sizes.  Reported apart.
            t0 = time.perf_counter()
            try:
                await asyncio.wait_for(c.list_keys(s.bucket, "list/"), 120)
            except Exception as e:  # noqa: BLE001
                err = f"first list: {type(e).__name__}: {str(e)[:200]}"
            first_ms = round((time.perf_counter() - t0) * 1e3, 1)
            stop = time.perf_counter() + cap
            with _Probe(s) as probe:
                while not err and time.perf_counter() < stop and len(times) < 1000:
                    t0 = time.perf_counter()
                    try:
                        got = await asyncio.wait_for(c.list_keys(s.bucket, "list/"), 60)
                    except Exception as e:  # noqa: BLE001
                        err = f"{type(e).__name__}: {str(e)[:200]}"
                        break
                    times.append(time.perf_counter() - t0)
                    if got != n_keys:
                        err = f"listed {got} keys, expected {n_keys}"
                        break
            row = _base("LIST 1000 keys", s, lists=len(times), lists_s=round(len(times) / sum(times), 2) if times else 0.0,
                        p50_ms=round(_pct(times, 0.5) * 1e3, 2), p99_ms=round(_pct(times, 0.99) * 1e3, 2),
                        first_ms=first_ms)
            if probe.pids and times:
                row["proxy_cpu_ms_per_list"] = round(probe.cpu * 1e3 / len(times), 2)
            if err:
                row["error"] = err
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- machine ceiling


def crypto_ceiling(seconds: float = 1.0) -> Row:
    """Single-core throughput of the primitives, measured in this process."""
    from cryptography.cobblestone import Cobblestone256Decryptor, Cobblestone256Encryptor
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from s3proxy.crypto.format import SDecryptor, SEncryptor

    key, data = os.urandom(32), os.urandom(MiB)
    mv = memoryview(data)

    def rate(fn: Callable[[], int]) -> float:
        fn()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += fn()
        return n / (time.perf_counter() - t0) / 1e6

    enc = Cobblestone256Encryptor(key, b"bench")
    out = bytearray(MiB + 64 * 16 + 56 + 16400)

    def cob_enc() -> int:
        enc.update_into(mv, out)
        return MiB

    # a 64 MiB message to decrypt again and again
    e2 = Cobblestone256Encryptor(key, b"bench")
    msg = bytearray()
    for _ in range(64):
        msg += e2.update(data)
    msg += e2.finalize()
    msgv = memoryview(bytes(msg))
    dbuf = bytearray(MiB + 16400)

    def cob_dec() -> int:
        d = Cobblestone256Decryptor(key, b"bench")
        for i in range(0, len(msgv), MiB):
            d.update_into(msgv[i : i + MiB], dbuf)
        d.finalize()
        return 64 * MiB

    aead, nonce, cbuf = AESGCM(key), b"\0" * 12, bytearray(16384 + 16)

    def gcm_enc() -> int:
        for i in range(0, MiB, 16384):
            aead.encrypt_into(nonce, mv[i : i + 16384], None, cbuf)
        return MiB

    ct = aead.encrypt(nonce, data[:16384], None)
    pbuf = bytearray(16384)

    def gcm_dec() -> int:
        for _ in range(64):
            aead.decrypt_into(nonce, ct, None, pbuf)
        return MiB

    oid = os.urandom(16)

    def s3p_enc(piece: int) -> Callable[[], int]:
        def run() -> int:
            e = SEncryptor(key, oid)
            for _ in range(16):
                for i in range(0, MiB, piece):
                    e.update(mv[i : i + piece])
            e.finalize()
            return 16 * MiB
        return run

    e3 = SEncryptor(key, oid)
    body = bytearray()
    for _ in range(16):
        body += e3.update(data)
    body += e3.finalize()
    bodyv = memoryview(bytes(body))

    def s3p_dec(piece: int) -> Callable[[], int]:
        def run() -> int:
            d = SDecryptor(key, oid)
            for i in range(0, len(bodyv), piece):
                d.update(bodyv[i : i + piece])
            d.finalize()
            return 16 * MiB
        return run

    has_into = hasattr(aead, "decrypt_into")
    row: Row = {
        "workload": "ceiling",
        "cobblestone256_encrypt_mb_s": round(rate(cob_enc), 1),
        "cobblestone256_decrypt_mb_s": round(rate(cob_dec), 1),
        "aes256gcm_16k_encrypt_mb_s": round(rate(gcm_enc), 1),
        "aes256gcm_16k_decrypt_mb_s": round(rate(gcm_dec), 1) if has_into else None,
        "s3proxy_sencryptor_64k_mb_s": round(rate(s3p_enc(64 << 10)), 1),
        "s3proxy_sencryptor_1m_mb_s": round(rate(s3p_enc(MiB)), 1),
        "s3proxy_sdecryptor_64k_mb_s": round(rate(s3p_dec(64 << 10)), 1),
        "s3proxy_sdecryptor_1m_mb_s": round(rate(s3p_dec(MiB)), 1),
    }
    for k in ("cobblestone256_encrypt_mb_s", "cobblestone256_decrypt_mb_s"):
        row[k.replace("_mb_s", "_cpu_s_per_gib")] = round(GiB / 1e6 / row[k], 3)
    return row
