"""``python -m bench.bytecodes [--top N] [--audit] [REF ...]``: Python bytecodes s3proxy executes per request.

A deterministic cost figure for a shared machine, where CPU seconds per
request move by 30-50% with the neighbours' load: s3proxy's app runs in this
process in front of the null origin (another process), 4 KiB PUTs and GETs
are sent to it by the bench's aiohttp client, and ``sys.settrace`` counts the
bytecodes executed (s3proxy, aiohttp, asyncio glue: all the Python a request
costs; C work such as AES, HMAC, socket I/O and the HTTP parser is not
counted).  The client's own bytecodes, measured against the origin directly,
are subtracted.  Log level ``warning`` and audit off, as in ``python -m bench``
(``--audit``: the audit log on, to a file, as a default deployment has it on
stdout).  Besides the 4 KiB PUT and GET, a ListObjectsV2 page of 1,000 keys
(``LIST``), a 64 MiB PUT and a 64 MiB GET (per MiB: the Python share of a large PUT or GET; their C
share, AES, copies and syscalls, needs py-spy --native or perf) are counted.

``--top N`` prints, for the work tree, the N functions that execute the most
bytecodes (their own, not their callees'), per operation: a deterministic
profile, the client's share included (it is the ``bench/loadgen.py`` and part
of the aiohttp client rows).

With ``REF`` arguments each ref's ``s3proxy`` package (``git archive``) is
measured too, in a child process, next to the work tree's.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

from bench.compare import extract
from bench.loadgen import Pattern, S3Client
from bench.origins import REPO, free_port, wait_port

N = 200


N_LIST = 5
BIG = 64 << 20
LIST_KEYS = 1000


class _Counter:
    def __init__(self) -> None:
        self.n = 0
        self.by_code: collections.Counter[Any] = collections.Counter()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            self.n += 1
            self.by_code[frame.f_code] += 1
        return self

    async def run(self, fn: Any, n: int) -> float:
        self.n = 0
        self.by_code.clear()
        sys.settrace(self)
        try:
            for i in range(n):
                await fn(i)
        finally:
            sys.settrace(None)
        return self.n / n

    def top(self, k: int, n: int) -> list[tuple[str, float]]:
        """The ``k`` functions with the most own bytecodes, per call of the measured operation."""
        root = str(REPO) + "/"
        out = []
        for code, c in self.by_code.most_common(k):
            where = code.co_filename.replace(root, "")
            if "site-packages/" in where:
                where = where.split("site-packages/", 1)[1]
            elif "/lib/python" in where:
                where = "stdlib/" + where.rsplit("/", 1)[-1]
            out.append((f"{where}:{code.co_firstlineno} {getattr(code, 'co_qualname', code.co_name)}", c / n))
        return out


async def measure(n: int = N, *, top: int = 0, audit: bool = False) -> tuple[dict[str, float], dict[str, list[tuple[str, float]]]]:
    from aiohttp import web

    from s3proxy.app import build_app
    from s3proxy.config import load_settings
    from s3proxy.observability import configure_logging

    origin_port, port = free_port(), free_port()
    origin = subprocess.Popen([sys.executable, "-m", "bench.origins", "null", "--listen", f"127.0.0.1:{origin_port}"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    cfg = Path(tempfile.mkdtemp(prefix="s3proxy-bytecodes-")) / "s3proxy.yaml"
    cfg.write_text(f'keys:\n  audit:\n    target: "{cfg.parent / "audit.jsonl" if audit else "off"}"\n')
    try:
        wait_port(origin_port, proc=origin)
        os.environ.update({"S3PROXY_BACKEND_URL": f"http://127.0.0.1:{origin_port}", "S3PROXY_BACKEND_ACCESS_KEY": "o",
                           "S3PROXY_BACKEND_SECRET_KEY": "o", "S3PROXY_ACCESS_KEY": "benchkey",
                           "S3PROXY_SECRET_KEY": "benchsecret", "S3PROXY_LOG_LEVEL": "warning",
                           "S3PROXY_MASTER_KEY": base64.b64encode(bytes(range(32))).decode()})
        configure_logging("warning")
        runner = web.AppRunner(build_app(load_settings(str(cfg))), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        data, count, out = Pattern().bytes(0, 4096), _Counter(), {}
        profiles: dict[str, list[tuple[str, float]]] = {}
        try:
            for url, ak, bucket in ((f"http://127.0.0.1:{port}", "benchkey", "p"), (f"http://127.0.0.1:{origin_port}", "o", "d")):
                async with S3Client(url, ak, "benchsecret" if ak == "benchkey" else "o", limit=4) as c:
                    await c.ensure_bucket(bucket)

                    async def put(i: int, c: S3Client = c, bucket: str = bucket) -> None:
                        await c.put_bytes(bucket, f"k{i % 20}", data)

                    async def get(i: int, c: S3Client = c, bucket: str = bucket) -> None:
                        if await c.get_bytes(bucket, f"k{i % 20}") != data:
                            raise RuntimeError("GET: wrong content")

                    async def lst(i: int, c: S3Client = c, bucket: str = bucket) -> None:
                        if await c.list_keys(bucket, "list/") != LIST_KEYS:
                            raise RuntimeError("LIST: wrong key count")

                    for i in range(20):  # warm: connections, key cache, the keys GET reads
                        await put(i)
                        await get(i)
                    small = data[:1024]
                    for i in range(0, LIST_KEYS, 50):
                        await asyncio.gather(*(c.put_bytes(bucket, f"list/{j:05d}", small) for j in range(i, i + 50)))
                    await lst(0)
                    pattern = Pattern()
                    await c.put(bucket, "big", pattern, BIG)

                    async def big(i: int, c: S3Client = c, bucket: str = bucket) -> None:
                        await c.get(bucket, "big", None, BIG)

                    async def bigput(i: int, c: S3Client = c, bucket: str = bucket, pattern: Pattern = pattern) -> None:
                        await c.put(bucket, "big", pattern, BIG)

                    await big(0)
                    for op, fn, times in (("PUT", put, n), ("GET", get, n), ("LIST", lst, N_LIST), ("PUT 64 MiB", bigput, 1),
                                          ("GET 64 MiB", big, 1)):
                        out[f"{op} {bucket}"] = await count.run(fn, times)
                        if top and bucket == "p":
                            profiles[op] = count.top(top, times)
        finally:
            await runner.cleanup()
        return {op: out[f"{op} p"] - out[f"{op} d"] for op in ("PUT", "GET", "LIST", "PUT 64 MiB", "GET 64 MiB")}, profiles
    finally:
        origin.terminate()
        origin.wait()


def _child(top: int, audit: bool) -> None:
    import uvloop

    uvloop.install()
    res, profiles = asyncio.run(measure(top=top, audit=audit))
    import s3proxy

    for op, rows in profiles.items():
        print(f"\n#### {op}: the {top} functions with the most own bytecodes, per request\n")
        print("| function | bytecodes |\n|---|---|")
        for name, c in rows:
            print(f"| `{name}` | {c:,.0f} |")
    print(f"{Path(s3proxy.__file__).parent}\t{res['PUT']:.0f}\t{res['GET']:.0f}\t{res['LIST']:.0f}\t{res['PUT 64 MiB'] / 64:.0f}\t{res['GET 64 MiB'] / 64:.0f}")


def main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.bytecodes")
    ap.add_argument("refs", nargs="*")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--top", type=int, default=0)
    ap.add_argument("--audit", action="store_true")
    args = ap.parse_args(argv)
    if args.child:
        _child(args.top, args.audit)
        return 0
    rows = []
    work = Path(tempfile.mkdtemp(prefix="s3proxy-bytecodes-"))
    flags = ["--audit"] if args.audit else []
    for ref in [*args.refs, None]:
        cwd = REPO if ref is None else extract(ref, work / ref.replace("/", "_"))
        top = ["--top", str(args.top)] if args.top and ref is None else []
        # ``-m`` puts the working directory first on sys.path: the ref's s3proxy, the repo's bench.
        done = subprocess.run([sys.executable, "-m", "bench.bytecodes", "--child", *flags, *top], cwd=cwd,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=900)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        lines = done.stdout.strip().splitlines()
        if top:
            print("\n".join(lines[:-1]) + "\n")
        _, put_n, get_n, list_n, bigput_n, big_n = lines[-1].split("\t")
        rows.append((ref or "work tree", int(put_n), int(get_n), int(list_n), int(bigput_n), int(big_n)))
    audit = " (audit log on)" if args.audit else ""
    print(f"| s3proxy{audit} | bytecodes per 4 KiB PUT | per 4 KiB GET | per LIST of {LIST_KEYS:,} keys "
          f"| per MiB of a 64 MiB PUT | per MiB of a 64 MiB GET |\n|---|---|---|---|---|---|")
    for name, put, get, lst, bigput, big in rows:
        print(f"| {name} | {put:,} | {get:,} | {lst:,} | {bigput:,} | {big:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
