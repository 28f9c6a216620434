"""Profiles of an s3proxy process under big PUTs and GETs: py-spy (Python and native frames) and,
where ``perf`` exists, perf (kernel, libc and library symbols, and who calls memmove;
``BENCH_KEEP_PERF=1`` keeps the perf.data files).

py-spy shows where the Python code is; on this workload most samples sit in
C (socket reads and writes, memmove, page faults), which only perf names.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.loadgen import Pattern, S3Client
from bench.origins import VENV_BIN, System, cpu_seconds, minor_faults

MiB = 1 << 20
OPS = ("PUT", "GET", "PUT multipart", "GET multipart object", "PUT 4 KiB c=16", "GET 4 KiB c=16")


async def _small(c: S3Client, s: System, op: str, pattern: Pattern, seconds: float) -> tuple[int, float]:
    data = pattern.bytes(0, 4096)
    t0, n = time.perf_counter(), 0

    async def worker(w: int) -> None:
        nonlocal n
        i = 0
        while time.perf_counter() - t0 < seconds:
            key = f"prof-small/{w}-{i % 50}"
            if op.startswith("PUT"):
                await c.put_bytes(s.bucket, key, data)
            else:
                await c.get_bytes(s.bucket, key)
            i += 1
            n += 1

    await asyncio.gather(*(worker(w) for w in range(16)))
    return n, time.perf_counter() - t0


async def _drive(c: S3Client, s: System, op: str, pattern: Pattern, size: int, seconds: float) -> tuple[int, float]:
    if "KiB" in op:
        return await _small(c, s, op, pattern, seconds)
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds and n < 50:
        if op == "PUT":
            await c.put(s.bucket, "nostore/prof", pattern, size)
        elif op == "GET":
            await c.get(s.bucket, "prof", pattern, size)
        elif op == "PUT multipart":
            await c.multipart_upload(s.bucket, "nostore/prof-mp", pattern, size, 8 * MiB, 8)
        else:
            await c.get(s.bucket, "prof-mp", pattern, size)
        n += 1
    return n, time.perf_counter() - t0


def _stop(p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGINT)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def pyspy_summary(raw: Path, top: int = 200) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    self_c: dict[str, int] = collections.Counter()
    incl: dict[str, int] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        k = int(n)
        total += k
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]  # per function, not per line
        self_c[frames[-1]] += k
        for f in set(frames):
            incl[f] += k

    def pct(d: dict[str, int]) -> list[tuple[str, float]]:
        return [(f, round(100 * c / max(1, total), 1)) for f, c in sorted(d.items(), key=lambda x: -x[1])[:top]]

    return {"samples": total, "self": pct(self_c), "inclusive": pct(incl)}


_SKIP = ("_Py", "Py", "gen_", "cfunction", "method_vectorcall", "list_", "unicode", "_copy", "object_vacall",
         "vectorcall", "builtin_", "slot_", "type_call", "__Pyx_PyObject_Call", "__Pyx_PyFunction", "bytearray",
         "bytes_", "async_gen_", "task_step", "TaskStep")


def perf_summary(data: Path, top: int = 20) -> dict[str, Any]:
    """Top symbols (by DSO) and the callers of memmove, from a ``perf record -g`` file."""
    out: dict[str, Any] = {}
    flat = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym", "--stdio",
                           "-g", "none"], capture_output=True, text=True, timeout=300).stdout
    rows = []
    for line in flat.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].endswith("%") and parts[2] in ("[.]", "[k]"):
            rows.append((float(parts[0].rstrip("%")), parts[1], " ".join(parts[3:])))
    out["top"] = rows[:top]
    by_dso: dict[str, float] = collections.Counter()
    for pct, dso, _ in rows:
        by_dso[dso] += pct
    out["by_dso"] = sorted(((round(v, 1), k) for k, v in by_dso.items()), reverse=True)[:8]
    folded = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--symbol-filter=memmove", "--stdio",
                             "-g", "folded,0.1,callee,function,percent", "--max-stack", "60"],
                            capture_output=True, text=True, timeout=300).stdout
    callers: dict[str, float] = collections.Counter()
    for line in folded.splitlines():
        pct, _, stack = line.strip().partition(" ")
        if ";" not in stack or not pct.endswith("%"):
            continue
        frames = [f.replace(" (inlined)", "") for f in stack.split(";")[1:]]
        chain = frames[:2] + [f for f in frames[2:] if not f.startswith(_SKIP)][:2]
        callers[" <- ".join(chain) or "?"] += float(pct.rstrip("%"))
    out["memmove_callers"] = [(round(v, 1), k) for k, v in callers.most_common(8)]
    return out


async def profile(s: System, pattern: Pattern, size: int, out: Path, seconds: float = 4.0,
                  variants: list[System] | None = None) -> dict[str, Any]:
    """py-spy (native) on ``s`` for the four big operations; perf on ``s`` and ``variants`` for PUT and GET."""
    spy = VENV_BIN / "py-spy"
    if not spy.exists() and (found := shutil.which("py-spy") or os.environ.get("BENCH_PYSPY")):
        spy = Path(found)  # py-spy on PATH, or BENCH_PYSPY=/path/to/py-spy (e.g. pip install --target DIR py-spy)
    res: dict[str, Any] = {"target": f"{s.name}@{s.origin}", "pyspy": {}, "perf": {}}
    systems = [s, *(variants or [])]
    for t in systems:
        async with S3Client(t.url, t.access_key, t.secret_key, cafile=t.cafile) as c:
            await c.put(t.bucket, "prof", pattern, size)
            await c.multipart_upload(t.bucket, "prof-mp", pattern, size, 8 * MiB, 8)
    async with S3Client(s.url, s.access_key, s.secret_key, cafile=s.cafile) as c:
        small = pattern.bytes(0, 4096)
        for w in range(16):  # the keys "GET 4 KiB" reads
            await asyncio.gather(*(c.put_bytes(s.bucket, f"prof-small/{w}-{i}", small) for i in range(50)))
        for op in OPS:
            if not spy.exists():
                res["pyspy"] = {"error": "py-spy not installed (pip install py-spy into the venv)"}
                break
            raw = out / f"pyspy-{op.replace(' ', '-').lower()}.txt"
            # native frames for the byte-moving operations; Python frames only (without pausing the
            # process, so the request rate stays representative) for the small-object ones
            mode = ["--nonblocking"] if "KiB" in op else ["--native"]
            p = subprocess.Popen([str(spy), "record", "--pid", str(s.pid), "--rate", "400", "--format", "raw",
                                  *mode, "--output", str(raw)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            await asyncio.sleep(1.0)  # attach
            cpu0 = cpu_seconds([s.pid])
            n, secs = await _drive(c, s, op, pattern, size, seconds)
            cpu = cpu_seconds([s.pid]) - cpu0
            _stop(p)
            if "KiB" in op:
                figures = {"ops_s": round(n / secs, 1), "cpu_ms_per_op": round(cpu * 1e3 / max(1, n), 3)}
            else:
                figures = {"mb_s": round(n * size / secs / 1e6, 1), "cpu_s_per_gib": round(cpu / (n * size / (1 << 30)), 2)}
            res["pyspy"][op] = {**figures,
                                "raw": raw.name, **(pyspy_summary(raw) if raw.exists() else {"error": "no profile written"})}
    if shutil.which("perf"):
        for t in systems:
            async with S3Client(t.url, t.access_key, t.secret_key, cafile=t.cafile) as c:
                for op in ("PUT", "GET"):
                    data = out / f"perf-{t.name}-{op.lower()}.data"
                    p = subprocess.Popen(["perf", "record", "-F", "499", "--call-graph", "dwarf,16384", "-p", str(t.pid),
                                          "-o", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
                    await asyncio.sleep(1.0)
                    cpu0, f0 = cpu_seconds([t.pid]), minor_faults([t.pid])
                    n, secs = await _drive(c, t, op, pattern, size, seconds / 2)
                    cpu, flt = cpu_seconds([t.pid]) - cpu0, minor_faults([t.pid]) - f0
                    _stop(p)
                    gib = n * size / (1 << 30)
                    entry: dict[str, Any] = {"mb_s": round(n * size / secs / 1e6, 1), "cpu_s_per_gib": round(cpu / gib, 2),
                                             "minor_faults_per_gib": round(flt / gib)}
                    if data.exists():
                        entry.update(await asyncio.to_thread(perf_summary, data))
                        data.unlink() if not os.environ.get("BENCH_KEEP_PERF") else None
                    res["perf"][f"{op} {t.name}"] = entry
    else:
        res["perf"] = {"error": "perf not installed"}
    for t in systems:
        async with S3Client(t.url, t.access_key, t.secret_key, cafile=t.cafile) as c:
            for k in ("prof", "prof-mp"):
                await c.delete(t.bucket, k)
    return res


def markdown(prof: dict[str, Any]) -> str:
    lines = [f"## Profile of {prof.get('target')} (null origin)\n"]
    for op, p in prof.get("pyspy", {}).items():
        if not isinstance(p, dict) or "self" not in p:
            lines.append(f"- py-spy {op}: {p}")
            continue
        rate = (f"{p['ops_s']} ops/s while sampled, {p['cpu_ms_per_op']} CPU ms/op" if "ops_s" in p
                else f"{p['mb_s']} MB/s while sampled, {p['cpu_s_per_gib']} CPU s/GiB")
        how = "py-spy --nonblocking" if "ops_s" in p else "py-spy --native"
        lines.append(f"### {how}, {op} ({rate}, {p['samples']} samples)\n")
        lines.append("| self % | frame |\n|---|---|")
        lines += [f"| {v} | `{f}` |" for f, v in p["self"][: 15 if "ops_s" in p else 12]]
        py = [(f, v) for f, v in p["inclusive"] if ".py)" in f and "asyncio/" not in f
              and not f.startswith(("main (", "cmd_serve (", "serve (", "<module>", "run ("))][: 25 if "ops_s" in p else 12]
        if py:
            lines.append("\n| inclusive % | Python frame |\n|---|---|")
            lines += [f"| {v} | `{f}` |" for f, v in py]
        lines.append("")
    perf = prof.get("perf", {})
    if "error" in perf:
        lines.append(f"- perf: {perf['error']}")
    for name, p in perf.items():
        if not isinstance(p, dict) or "top" not in p:
            continue
        lines.append(f"### perf, {name} ({p['mb_s']} MB/s while sampled, {p['cpu_s_per_gib']} CPU s/GiB, "
                     f"{p['minor_faults_per_gib']:,} minor faults/GiB)\n")
        lines.append("By DSO: " + ", ".join(f"{k} {v}%" for v, k in p["by_dso"]) + "\n")
        lines.append("| % | DSO | symbol |\n|---|---|---|")
        lines += [f"| {pct} | {dso} | `{sym}` |" for pct, dso, sym in p["top"][:14]]
        if p.get("memmove_callers"):
            lines.append("\n| % of all samples | memmove called from |\n|---|---|")
            lines += [f"| {v} | `{k}` |" for v, k in p["memmove_callers"]]
        lines.append("")
    return "\n".join(lines) + "\n"
