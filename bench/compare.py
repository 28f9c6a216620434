"""``python -m bench --compare REF``: the same cells on two versions of s3proxy, side by side in one run.

A change's effect measured against its parent, not against an older run on a
different day: ``REF``'s ``s3proxy`` package is extracted with ``git archive``
(read-only; the work tree is not touched) and run with ``PYTHONPATH`` pointing
at it, next to the work tree's, both in front of one null origin.  The cells
(4 KiB / 64 KiB PUT and GET at c=16, a large GET, a large PUT, ListObjectsV2 of a
1,000-key page) run in rounds,
the two systems alternating first, and every figure is reported as the median
over rounds plus the median of the per-round ratios, which is what to read on
a shared machine: two systems measured seconds apart see the same load.

CPU is the s3proxy process's user+system time from ``/proc`` (ms per request
for small objects and per listed page, s per GiB for large ones).  ``audit=True``
turns the key audit log on (to a file), as a default deployment has it (on stdout).
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.loadgen import Pattern, S3Client
from bench.origins import PROXY_AK, PROXY_SK, REPO, VENV_BIN, Lab, System, cpu_seconds, free_port, wait_port

MiB = 1 << 20
CELLS = ("put4k", "get4k", "put64k", "get64k", "getbig", "putbig", "list1k")
LIST_KEYS = 1000


@dataclass
class Variant:
    name: str
    pythonpath: str  # "" for the work tree
    system: System | None = None
    figures: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # cell -> [(rate, cpu)]


def extract(ref: str, into: Path) -> Path:
    """``git archive REF s3proxy`` into ``into``; returns the directory to put on PYTHONPATH."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "s3proxy"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def start_proxy(lab: Lab, origin: System, v: Variant, audit: bool = False) -> System:
    port, admin = free_port(), free_port()
    env = {"S3PROXY_LISTEN": f"127.0.0.1:{port}", "S3PROXY_ADMIN_LISTEN": f"127.0.0.1:{admin}",
           "S3PROXY_BACKEND_URL": origin.url, "S3PROXY_BACKEND_ACCESS_KEY": origin.access_key,
           "S3PROXY_BACKEND_SECRET_KEY": origin.secret_key, "S3PROXY_ACCESS_KEY": PROXY_AK,
           "S3PROXY_SECRET_KEY": PROXY_SK, "S3PROXY_MASTER_KEY": lab.master_key, "S3PROXY_LOG_LEVEL": "warning"}
    if v.pythonpath:
        env["PYTHONPATH"] = v.pythonpath
    config = lab.config
    if audit:
        config = lab.workdir / f"s3proxy-audit-{v.name.replace('/', '_')}.yaml"
        config.write_text(f'keys:\n  audit:\n    target: "{lab.workdir / ("audit-" + v.name.replace("/", "_") + ".jsonl")}"\n')
    p = lab.procs.start(f"s3proxy-{v.name}", [str(VENV_BIN / "s3proxy"), "serve", "--config", str(config),
                                             "--workers", "1"], env=env)
    wait_port(port, proc=p)
    s = System(f"s3proxy-{v.name}", origin.origin, f"http://127.0.0.1:{port}", PROXY_AK, PROXY_SK, kind="s3proxy",
               workers=1, pid=p.pid)
    s.bucket = f"cmp-{v.name}".lower()
    return s


async def _small(c: S3Client, s: System, op: str, data: bytes, seconds: float, conc: int, n_keys: int) -> int:
    stop, n = time.perf_counter() + seconds, 0

    async def worker(w: int) -> None:
        nonlocal n
        i = w
        while time.perf_counter() < stop:
            key = f"small/{len(data)}/{i % n_keys}"
            if op == "PUT":
                await c.put_bytes(s.bucket, key, data)
            elif await c.get_bytes(s.bucket, key) != data:
                raise RuntimeError(f"GET {key}: wrong content")
            i += conc
            n += 1

    await asyncio.gather(*(worker(w) for w in range(conc)))
    return n


async def measure(c: S3Client, s: System, cell: str, pattern: Pattern, big: int, seconds: float,
                  conc: int) -> tuple[float, float]:
    """(ops/s or MB/s, CPU ms/op or CPU s/GiB) of one cell on one system."""
    op, what = cell[:3].upper(), cell[3:]
    assert s.pid is not None
    pid = s.pid
    cpu0, t0 = cpu_seconds([pid]), time.perf_counter()
    if cell == "list1k":
        n, stop = 0, t0 + seconds
        while time.perf_counter() < stop:
            if await c.list_keys(s.bucket, "list/") != LIST_KEYS:
                raise RuntimeError("LIST: wrong key count")
            n += 1
        wall, cpu = time.perf_counter() - t0, cpu_seconds([pid]) - cpu0
        return n / wall, cpu * 1e3 / max(1, n)
    if what == "big":
        if op == "GET":
            await c.get(s.bucket, "big", pattern, big)
        else:
            await c.put(s.bucket, "nostore/big", pattern, big)
        wall, cpu = time.perf_counter() - t0, cpu_seconds([pid]) - cpu0
        return big / wall / 1e6, cpu / (big / (1 << 30))
    size = 4096 if what == "4k" else 65536
    n = await _small(c, s, op, pattern.bytes(size, size), seconds, conc, 200)
    wall, cpu = time.perf_counter() - t0, cpu_seconds([pid]) - cpu0
    return n / wall, cpu * 1e3 / max(1, n)


async def run(variants: list[Variant], cells: list[str], rounds: int, seconds: float, big: int, conc: int,
              lab: Lab, audit: bool = False) -> None:
    null = lab.start_null(max(4 << 30, 2 * big))
    pattern = Pattern()
    clients: dict[str, S3Client] = {}
    for v in variants:
        v.system = start_proxy(lab, null, v, audit)
        c = clients[v.name] = S3Client(v.system.url, PROXY_AK, PROXY_SK, limit=conc + 8)
        await c.__aenter__()
        await c.ensure_bucket(v.system.bucket)
        for size in (4096, 65536):
            data = pattern.bytes(size, size)
            await asyncio.gather(*(c.put_bytes(v.system.bucket, f"small/{size}/{i}", data) for i in range(200)))
        if "getbig" in cells:
            await c.put(v.system.bucket, "big", pattern, big)
        if "list1k" in cells:
            small = pattern.bytes(3, 1024)
            for i in range(0, LIST_KEYS, 50):
                await asyncio.gather(*(c.put_bytes(v.system.bucket, f"list/{j:05d}", small) for j in range(i, i + 50)))
    try:
        for r in range(rounds):
            for cell in cells:
                for v in (variants if r % 2 == 0 else variants[::-1]):
                    assert v.system is not None
                    v.figures.setdefault(cell, []).append(
                        await measure(clients[v.name], v.system, cell, pattern, big, seconds, conc))
            print(f"bench: round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    finally:
        for c in clients.values():
            await c.__aexit__(None, None, None)


def markdown(variants: list[Variant], cells: list[str], meta: dict[str, Any]) -> str:
    a, b = variants
    lines = [f"### {b.name} vs {a.name} ({meta['rounds']} rounds, c={meta['conc']}, large = {meta['big_mib']} MiB, "
             f"null origin, s3proxy-1w{', audit log on' if meta.get('audit') else ''})\n",
             f"| cell | {a.name} rate | {b.name} rate | {a.name} CPU | {b.name} CPU | rate x (paired median) "
             f"| CPU x (paired median) |", "|---|---|---|---|---|---|---|"]
    for cell in cells:
        xs, ys = a.figures.get(cell, []), b.figures.get(cell, [])
        if not xs or not ys:
            continue
        unit = ("MB/s", "s/GiB") if cell.endswith("big") else ("lists/s", "ms/list") if cell == "list1k" else ("ops/s", "ms/op")
        rate = statistics.median(y[0] / x[0] for x, y in zip(xs, ys, strict=True))
        cpu = statistics.median(y[1] / x[1] for x, y in zip(xs, ys, strict=True))
        lines.append(f"| {cell} | {statistics.median(x[0] for x in xs):,.0f} {unit[0]} | "
                     f"{statistics.median(y[0] for y in ys):,.0f} {unit[0]} | "
                     f"{statistics.median(x[1] for x in xs):.3f} {unit[1]} | {statistics.median(y[1] for y in ys):.3f} "
                     f"{unit[1]} | {rate:.3f} | {cpu:.3f} |")
    return "\n".join(lines) + "\n"


def main(ref: str, *, cells: list[str] | None = None, rounds: int = 5, seconds: float = 2.0, big_mib: int = 256,
         conc: int = 16, audit: bool = False) -> str:
    chosen = cells or list(CELLS)
    unknown = set(chosen) - set(CELLS)
    if unknown:
        raise SystemExit(f"bench: unknown cells {sorted(unknown)}; choose among {', '.join(CELLS)}")
    work = Path(tempfile.mkdtemp(prefix="s3proxy-compare-"))
    lab = Lab(work, None)
    try:
        variants = [Variant(ref, str(extract(ref, work / "ref"))), Variant("worktree", "")]
        asyncio.run(run(variants, chosen, rounds, seconds, big_mib * MiB, conc, lab, audit))
    finally:
        lab.close()
    return markdown(variants, chosen, {"rounds": rounds, "conc": conc, "big_mib": big_mib, "audit": audit})
