"""``python -m bench [--quick | --full] [--profile]``: s3proxy's benchmark, side by side in one run.

Starts everything it measures on 127.0.0.1 (a null S3 origin, rclone's S3
server, s3proxy with 1 and N workers over HTTP and HTTPS, the rclone crypt
peer), runs the workloads of issue 6 interleaved across systems, prints
markdown tables, and writes ``bench/out/results.json`` and
``bench/out/results.png``.  It stops by itself: every measurement has a time
cap and the run a time budget; processes and temporary directories are
removed at exit, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import workloads as W
from bench.loadgen import Pattern, S3Client
from bench.origins import VENV_BIN, Lab, System
from bench.report import chart, markdown

OUT = Path(__file__).resolve().parent / "out"
MiB = 1 << 20


def machine() -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    load = os.getloadavg()
    return {"nproc": os.cpu_count(), "cpu": cpu, "memory": mem, "python": platform.python_version(),
            "kernel": platform.release(), "loadavg_at_start": [round(x, 2) for x in load]}


async def _bucket(s: System) -> None:
    async with S3Client(s.url, s.access_key, s.secret_key, cafile=s.cafile) as c:
        await c.ensure_bucket(s.bucket)


def _profile_summary(raw: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample counts per frame from py-spy's raw (collapsed) output."""
    self_c: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        k = int(n)
        total += k
        frames = stack.split(";")
        self_c[frames[-1]] = self_c.get(frames[-1], 0) + k
        for f in set(frames):
            incl[f] = incl.get(f, 0) + k

    def pct(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(f, round(100 * c / max(1, total), 1)) for f, c in sorted(d.items(), key=lambda x: -x[1])[:top]]

    return {"samples": total, "self": pct(self_c), "inclusive": pct(incl)}


async def profile(lab: Lab, s: System, pattern: Pattern, size: int, out: Path) -> dict[str, Any]:
    """py-spy on the s3proxy-1w process during one big PUT and one big GET (null origin)."""
    spy = VENV_BIN / "py-spy"
    if not spy.exists():
        return {"error": "py-spy not installed (pip install py-spy into the venv)"}
    res: dict[str, Any] = {}
    async with S3Client(s.url, s.access_key, s.secret_key, cafile=s.cafile) as c:
        for op in ("PUT", "GET", "PUT multipart", "GET multipart object"):
            raw = out / f"profile-{op.replace(' ', '-').lower()}.txt"
            p = subprocess.Popen([str(spy), "record", "--pid", str(s.pid), "--rate", "250", "--format", "raw",
                                  "--nonblocking", "--output", str(raw)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
            await asyncio.sleep(1.0)  # let py-spy attach
            t0 = time.perf_counter()
            if op == "PUT":
                await c.put(s.bucket, "prof", pattern, size)
            elif op == "GET":
                await c.get(s.bucket, "prof", pattern, size)
            elif op == "PUT multipart":
                await c.multipart_upload(s.bucket, "prof-mp", pattern, size, 8 * MiB, 8)
            else:
                await c.get(s.bucket, "prof-mp", pattern, size)
            secs = time.perf_counter() - t0
            p.send_signal(signal.SIGINT)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            res[op] = {"mb_s": round(size / secs / 1e6, 1), "raw": str(raw.relative_to(OUT.parent.parent)),
                       **(_profile_summary(raw) if raw.exists() else {"error": "no profile written"})}
        await c.delete(s.bucket, "prof")
        await c.delete(s.bucket, "prof-mp")
    return res


async def run(args: argparse.Namespace, lab: Lab) -> dict[str, Any]:
    t_start = time.monotonic()
    full = args.full
    big = (args.size_mib or (1024 if full else 256)) * MiB
    repeats = args.repeats or (3 if full else 2)
    workers = args.workers or (os.cpu_count() or 2)
    budget = W.Budget(t_start + (args.budget or (3600 if full else 330)))
    cap_big = max(30.0, big / (20e6))  # at least 20 MB/s or it is an error
    meta: dict[str, Any] = {"mode": "full" if full else "quick", "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                            "big_size": big, "repeats": repeats, "workers_N": workers, "command": " ".join(sys.argv),
                            "machine": machine()}
    print(f"bench: {meta['mode']} mode, {big >> 20} MiB objects, {workers} workers for -Nw; machine {meta['machine']}",
          file=sys.stderr)
    print("bench: measuring the crypto ceiling ...", file=sys.stderr)
    ceiling = W.crypto_ceiling(1.0 if not full else 2.0)
    pattern = Pattern()

    print("bench: starting origins, proxies and the peer ...", file=sys.stderr)
    null = lab.start_null(args.null_max_gib << 30)
    origins = [null]
    rclone = lab.start_rclone() if "rclone" in args.origins else None
    if rclone:
        origins.append(rclone)
    devstore = None
    if "devstore" in args.origins:
        try:
            devstore = lab.start_devstore()
            origins.append(devstore)
        except Exception as e:  # noqa: BLE001 - a third origin is optional
            print(f"bench: devstore origin not available: {e}", file=sys.stderr)
    sys_null = [null, lab.start_proxy(null, 1, False), lab.start_proxy(null, workers, False),
                lab.start_proxy(null, 1, True), lab.start_proxy(null, workers, True)]
    sys_rclone: list[System] = []
    peer = None
    if rclone:
        sys_rclone = [rclone, lab.start_proxy(rclone, 1, False)]
        if not args.no_peer:
            peer = lab.start_peer(rclone)
            sys_rclone.append(peer)
    sys_dev = [devstore, lab.start_proxy(devstore, 1, False)] if devstore else []
    everything = sys_null + sys_rclone + sys_dev
    for s in everything:
        s.bucket = f"bench-{s.name}".lower()
        await _bucket(s)
    p1 = sys_null[1]
    rows: list[dict[str, Any]] = []

    def note(msg: str) -> None:
        print(f"bench: [{time.monotonic() - t_start:5.0f}s] {msg}", file=sys.stderr, flush=True)

    # ---------------------------------------------------------------- large objects
    note(f"large single PUT/GET, {len(everything)} systems x {repeats} ...")
    rows += await W.big_put_get(everything, pattern, big, repeats, cap_big, budget)
    note("parallel ranged GET ...")
    rows += await W.ranged(everything, pattern, big, repeats, cap_big, budget)
    if not args.no_boto3:
        boto_systems = [s for s in everything if s.workers <= 1]
        note(f"boto3 single PUT/GET, {len(boto_systems)} systems ...")
        rows += await W.boto3_big(boto_systems, pattern, big, 1 if not full else 2, cap_big * 2, budget)
    await W.delete_keys(everything, ["big", "nostore/big", "big-boto3", "nostore/big-boto3"])

    def readable(s: System) -> bool:  # rclone's multipart ETags lack "-N": s3proxy cannot size K objects there
        return not (s.origin == "rclone" and s.kind == "s3proxy")

    note("multipart upload 8 MiB x 8 in flight ...")
    rows += await W.multipart(everything, pattern, big, repeats, cap_big, budget, readable)
    await W.delete_keys(everything, ["mp", "nostore/mp"])

    # ---------------------------------------------------------------- small objects, LIST, key service
    small_systems = everything if full else [s for s in everything if not (s.tls and s.workers > 1)]
    concs = [1, 16, 64]
    note(f"small objects 4/64 KiB, c={concs}, {len(small_systems)} systems ...")
    rows += await W.small_objects(small_systems, pattern, [4096, 65536], concs, 5.0 if full else 1.0,
                                  50_000 if full else 3_000, budget)
    note("LIST of 1,000 keys ...")
    rows += await W.listing(small_systems, pattern, 1000, 5.0 if full else 1.0, budget)
    note("key-service calls ...")
    rows.append(await W.key_service_calls(p1, pattern, 10_000 if full else 2_000, 64, 120 if full else 20))

    # ---------------------------------------------------------------- RSS by object size (full mode)
    if full and not args.no_rss5:
        for s in (p1, sys_null[2]):
            for gib in (1, 5):
                size = gib << 30
                row = (await W.big_put_get([s], pattern, size, 1, max(120.0, size / 20e6), W.Budget(time.monotonic() + 1e9),
                                           key="rss"))
                for r in row:
                    r["workload"] = f"RSS {r['workload']}"
                rows += row
                await W.delete_keys([s], ["rss", "nostore/rss"])
        note("RSS by object size done")

    prof = None
    if args.profile:
        note("profiling s3proxy-1w @ null with py-spy ...")
        prof = await profile(lab, p1, pattern, big, OUT)
    meta["wall_s"] = time.monotonic() - t_start
    meta["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["origins"] = {o.origin: o.url for o in origins}
    return {"meta": meta, "ceiling": ceiling, "rows": rows, "profile": prof}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="256 MiB objects, 1 s per small-object cell (default; ~5 min)")
    g.add_argument("--full", action="store_true", help="1 GiB objects, 5 GiB RSS check, 5 s cells, devstore origin")
    ap.add_argument("--size-mib", type=int, help="large object size (default 256 quick, 1024 full)")
    ap.add_argument("--repeats", type=int, help="repetitions of each large-object measurement (best kept)")
    ap.add_argument("--workers", type=int, help="N for the s3proxy N-worker systems (default: nproc)")
    ap.add_argument("--origins", default=None, help="comma list among null,rclone,devstore (null is always on)")
    ap.add_argument("--no-peer", action="store_true", help="skip the rclone crypt peer")
    ap.add_argument("--no-boto3", action="store_true")
    ap.add_argument("--no-rss5", action="store_true", help="full mode: skip the 1 and 5 GiB RSS runs")
    ap.add_argument("--profile", action="store_true", help="also profile s3proxy-1w with py-spy (big PUT/GET)")
    ap.add_argument("--budget", type=float, help="seconds after which remaining measurements are skipped")
    ap.add_argument("--null-max-gib", type=int, default=12, help="bodies the null origin keeps in memory")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    args.origins = set((args.origins or ("null,rclone,devstore" if args.full else "null,rclone")).split(","))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="s3proxy-bench-"))
    shm = Path(tempfile.mkdtemp(prefix="s3proxy-bench-", dir="/dev/shm")) if Path("/dev/shm").is_dir() else None
    lab = Lab(workdir, shm)

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
        res = asyncio.run(run(args, lab))
    except KeyboardInterrupt:
        print("bench: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        logs = out / "logs"
        with contextlib.suppress(OSError):
            shutil.rmtree(logs, ignore_errors=True)
            logs.mkdir()
            for f in workdir.glob("*.log"):
                shutil.copy(f, logs / f.name)
            for f in (workdir / "peer").glob("*.log"):
                shutil.copy(f, logs / ("peer-" + f.name))
        lab.close()
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    md = markdown(res)
    (out / "results.md").write_text(md)
    chart(res["rows"], out / "results.png",
          f"S3PROXY BENCH {res['meta']['mode'].upper()} {res['meta']['big_size'] >> 20} MIB, {res['meta']['date']}")
    if res.get("profile"):
        lines = ["\n## Profile (py-spy, s3proxy-1w @ null)\n"]
        for op, p in res["profile"].items():
            if "self" not in p:
                lines.append(f"- {op}: {p}")
                continue
            lines.append(f"### {op} ({p['mb_s']} MB/s under py-spy, {p['samples']} samples)\n")
            lines.append("| self % | frame |\n|---|---|")
            lines += [f"| {v} | `{f}` |" for f, v in p["self"][:15]]
            lines.append("\n| inclusive % | frame |\n|---|---|")
            lines += [f"| {v} | `{f}` |" for f, v in p["inclusive"][:25]]
        (out / "profile.md").write_text("\n".join(lines) + "\n")
        md += "\n".join(lines) + "\n"
    print(md)
    print(f"bench: wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
