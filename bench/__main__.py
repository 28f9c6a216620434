"""``python -m bench [--quick | --full] [--profile] [--compare REF]``: s3proxy's benchmark, side by side in one run.

Starts everything it measures on 127.0.0.1 (a null S3 origin, rclone's S3
server, s3proxy with 1 and N workers over HTTP and HTTPS, the rclone crypt
peer), runs the workloads of issue 6 interleaved across systems, prints
markdown tables, and writes ``bench/out/results.json`` and
``bench/out/results.png``.  It stops by itself: every measurement has a time
cap and the run a time budget; processes and temporary directories are
removed at exit, also on Ctrl-C.

``--compare REF`` runs only a few cells (``--cells``; small PUT/GET, large
GET/PUT) on REF's s3proxy and the work tree's, alternating, and prints the
paired ratios (``bench/compare.py``).
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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import compare, profiling
from bench import workloads as W
from bench.loadgen import Pattern, S3Client
from bench.origins import UNTUNED, Lab, System
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


async def run(args: argparse.Namespace, lab: Lab) -> dict[str, Any]:
    t_start = time.monotonic()
    full = args.full
    big = (args.size_mib or (1024 if full else 256)) * MiB
    repeats = args.repeats or (3 if full else 2)
    workers = args.workers or (os.cpu_count() or 2)
    budget = W.Budget(t_start + (args.budget or (3600 if full else 330)))
    cap_big = max(30.0, big / (20e6))  # at least 20 MB/s or it is an error
    meta: dict[str, Any] = {"mode": "full" if full else "quick", "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                            "big_size": big, "repeats": repeats, "workers_N": workers, "command": "python -m bench " + " ".join(sys.argv[1:]),
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
    if args.profile_only:
        p1, untuned = lab.start_proxy(null, 1, False), lab.start_proxy(null, 1, False, UNTUNED, "-untuned")
        for s in (p1, untuned):
            s.bucket = f"bench-prof-{s.name}"
            await _bucket(s)
        prof = await profiling.profile(p1, pattern, big, args.out, variants=[untuned])
        meta["wall_s"] = time.monotonic() - t_start
        return {"meta": meta, "ceiling": ceiling, "rows": [], "profile": prof}
    sys_null = [null, lab.start_proxy(null, 1, False), lab.start_proxy(null, workers, False),
                lab.start_proxy(null, 1, True), lab.start_proxy(null, workers, True)]
    untuned = None if args.no_untuned else lab.start_proxy(null, 1, False, UNTUNED, "-untuned")
    sys_rclone: list[System] = []
    peer = None
    if rclone:
        sys_rclone = [rclone, lab.start_proxy(rclone, 1, False)]
        if not args.no_peer:
            peer = lab.start_peer(rclone)
            sys_rclone.append(peer)
    sys_dev = [devstore, lab.start_proxy(devstore, 1, False)] if devstore else []
    everything = sys_null + sys_rclone + sys_dev
    large = sys_null[:2] + ([untuned] if untuned else []) + sys_null[2:] + sys_rclone + sys_dev
    for s in large:
        s.bucket = f"bench-{s.name}".lower()
        await _bucket(s)
    p1 = sys_null[1]
    rows: list[dict[str, Any]] = []

    def note(msg: str) -> None:
        print(f"bench: [{time.monotonic() - t_start:5.0f}s] {msg}", file=sys.stderr, flush=True)

    # ---------------------------------------------------------------- large objects
    note(f"large single PUT/GET, {len(large)} systems x {repeats} ...")
    rows += await W.big_put_get(large, pattern, big, repeats, cap_big, budget)
    note("parallel ranged GET ...")
    rows += await W.ranged(large, pattern, big, repeats, cap_big, budget)
    if not args.no_boto3:
        boto_systems = [s for s in large if s.workers <= 1 and not s.name.endswith("-untuned")]
        note(f"boto3 single PUT/GET, {len(boto_systems)} systems ...")
        rows += await W.boto3_big(boto_systems, pattern, big, 1 if not full else 2, cap_big * 2, budget)
    await W.delete_keys(large, ["big", "nostore/big", "big-boto3", "nostore/big-boto3"])

    def readable(s: System) -> bool:
        # rclone's multipart ETags lack "-N"; s3proxy then walks the part headers (since 5315ba7), which
        # this row measures.  --no-rclone-mp-read skips it.
        return not (args.no_rclone_mp_read and s.origin == "rclone" and s.kind == "s3proxy")

    note("multipart upload 8 MiB x 8 in flight ...")
    rows += await W.multipart(large, pattern, big, repeats, cap_big, budget, readable)
    await W.delete_keys(large, ["mp", "nostore/mp"])

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
                size, cap, no_budget = gib << 30, max(120.0, (gib << 30) / 20e6), W.Budget(time.monotonic() + 1e9)
                if gib == 1:
                    row = await W.big_put_get([s], pattern, size, 1, cap, no_budget, key="rss")
                else:  # over s3proxy's single-PUT limit (5 GiB of ciphertext): multipart, as clients do
                    row = await W.multipart([s], pattern, size, 1, cap, no_budget, lambda _: True, key="rss")
                for r in row:
                    r["workload"] = f"RSS {r['workload']}"
                rows += row
                await W.delete_keys([s], ["rss", "nostore/rss"])
        note("RSS by object size done")

    prof = None
    if args.profile:
        note("profiling s3proxy-1w @ null with py-spy ...")
        prof = await profiling.profile(p1, pattern, big, args.out, variants=[untuned] if untuned else [])
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
    ap.add_argument("--profile-only", action="store_true", help="only the crypto ceiling and the py-spy profile")
    ap.add_argument("--no-rclone-mp-read", action="store_true",
                    help="skip GETs of multipart objects through s3proxy on the rclone origin")
    ap.add_argument("--no-untuned", action="store_true",
                    help="skip s3proxy-1w-untuned (S3PROXY_MALLOC_TUNE=0: glibc malloc defaults, the state before 053c017)")
    ap.add_argument("--budget", type=float, help="seconds after which remaining measurements are skipped")
    ap.add_argument("--null-max-gib", type=int, default=12, help="bodies the null origin keeps in memory")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--compare", metavar="REF", help="paired cells: REF's s3proxy vs the work tree's (bench/compare.py)")
    ap.add_argument("--cells", help="with --compare: comma list among " + ", ".join(compare.CELLS))
    ap.add_argument("--rounds", type=int, default=5, help="with --compare: rounds (default 5)")
    ap.add_argument("--audit", action="store_true", help="with --compare: the key audit log on (to a file)")
    args = ap.parse_args(argv)
    if args.compare:
        md = compare.main(args.compare, cells=args.cells.split(",") if args.cells else None, rounds=args.rounds,
                          big_mib=args.size_mib or 256, audit=args.audit)
        print(md)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare.md").write_text(md)
        return 0
    args.profile = args.profile or args.profile_only
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
    md = ""
    if not args.profile_only:
        (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
        md = markdown(res)
        (out / "results.md").write_text(md)
        chart(res["rows"], out / "results.png",
              f"S3PROXY BENCH {res['meta']['mode'].upper()} {res['meta']['big_size'] >> 20} MIB, {res['meta']['date']}")
    else:
        (out / "profile.json").write_text(json.dumps(res, indent=1, default=str))
    if res.get("profile"):
        pmd = profiling.markdown(res["profile"])
        (out / "profile.md").write_text(pmd)
        md += "\n" + pmd
    print(md)
    print(f"bench: wrote {', '.join(str(p) for p in sorted(out.glob('*.*')))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
