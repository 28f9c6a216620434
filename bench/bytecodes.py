"""``python -m bench.bytecodes [REF ...]``: Python bytecodes s3proxy executes per small request.

A deterministic cost figure for a shared machine, where CPU seconds per
request move by 30-50% with the neighbours' load: s3proxy's app runs in this
process in front of the null origin (another process), 4 KiB PUTs and GETs
are sent to it by the bench's aiohttp client, and ``sys.settrace`` counts the
bytecodes executed (s3proxy, aiohttp, asyncio glue: all the Python a request
costs; C work such as AES, HMAC, socket I/O and the HTTP parser is not
counted).  The client's own bytecodes, measured against the origin directly,
are subtracted.  Log level ``warning`` and audit off, as in ``python -m bench``.

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


class _Counter:
    def __init__(self) -> None:
        self.n = 0
        self.by_file: collections.Counter[str] = collections.Counter()

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        if event == "opcode":
            self.n += 1
            self.by_file[frame.f_code.co_filename] += 1
        return self

    async def run(self, fn: Any, n: int) -> float:
        self.n = 0
        sys.settrace(self)
        try:
            for i in range(n):
                await fn(i)
        finally:
            sys.settrace(None)
        return self.n / n


async def measure(n: int = N) -> dict[str, float]:
    from aiohttp import web

    from s3proxy.app import build_app
    from s3proxy.config import load_settings
    from s3proxy.observability import configure_logging

    origin_port, port = free_port(), free_port()
    origin = subprocess.Popen([sys.executable, "-m", "bench.origins", "null", "--listen", f"127.0.0.1:{origin_port}"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    cfg = Path(tempfile.mkdtemp(prefix="s3proxy-bytecodes-")) / "s3proxy.yaml"
    cfg.write_text('keys:\n  audit:\n    target: "off"\n')
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
        try:
            for url, ak, bucket in ((f"http://127.0.0.1:{port}", "benchkey", "p"), (f"http://127.0.0.1:{origin_port}", "o", "d")):
                async with S3Client(url, ak, "benchsecret" if ak == "benchkey" else "o", limit=4) as c:
                    await c.ensure_bucket(bucket)

                    async def put(i: int, c: S3Client = c, bucket: str = bucket) -> None:
                        await c.put_bytes(bucket, f"k{i % 20}", data)

                    async def get(i: int, c: S3Client = c, bucket: str = bucket) -> None:
                        if await c.get_bytes(bucket, f"k{i % 20}") != data:
                            raise RuntimeError("GET: wrong content")

                    for i in range(20):  # warm: connections, key cache, the keys GET reads
                        await put(i)
                        await get(i)
                    for op, fn in (("PUT", put), ("GET", get)):
                        out[f"{op} {bucket}"] = await count.run(fn, n)
        finally:
            await runner.cleanup()
        return {op: out[f"{op} p"] - out[f"{op} d"] for op in ("PUT", "GET")}
    finally:
        origin.terminate()
        origin.wait()


def _child() -> None:
    import uvloop

    uvloop.install()
    res = asyncio.run(measure())
    import s3proxy

    print(f"{Path(s3proxy.__file__).parent}\t{res['PUT']:.0f}\t{res['GET']:.0f}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        _child()
        return 0
    rows = []
    work = Path(tempfile.mkdtemp(prefix="s3proxy-bytecodes-"))
    for ref in [*argv, None]:
        cwd = REPO if ref is None else extract(ref, work / ref.replace("/", "_"))
        # ``-m`` puts the working directory first on sys.path: the ref's s3proxy, the repo's bench.
        done = subprocess.run([sys.executable, "-m", "bench.bytecodes", "--child"], cwd=cwd, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        _, put_n, get_n = done.stdout.strip().splitlines()[-1].split("\t")
        rows.append((ref or "work tree", int(put_n), int(get_n)))
    print("| s3proxy | bytecodes per 4 KiB PUT | per 4 KiB GET |\n|---|---|---|")
    for name, put, get in rows:
        print(f"| {name} | {put:,} | {get:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
