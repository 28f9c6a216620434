"""Markdown tables, target checks and the PNG chart, from the results of one run."""

from __future__ import annotations

import math
from itertools import product
from pathlib import Path
from typing import Any

from bench.png import Canvas

Row = dict[str, Any]

BIG_COLUMNS = [
    ("PUT single", "PUT"),
    ("GET single", "GET"),
    ("PUT multipart 8MiB x8", "PUT multipart"),
    ("GET multipart object", "GET multipart obj"),
    ("GET ranged 8MiB x10", "GET ranged"),
]


def _fmt(x: Any, nd: int = 0) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return str(x)


def _find(rows: list[Row], **kw: Any) -> Row | None:
    for r in rows:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def _ratio(a: Row | None, b: Row | None, field: str = "mb_s") -> float | None:
    if not a or not b or a.get("error") or b.get("error") or not b.get(field):
        return None
    return a[field] / b[field]


def _systems(rows: list[Row]) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for r in rows:
        k = (r["system"], r["origin"])
        if k not in seen:
            seen.append(k)
    return seen


def big_table(rows: list[Row], client: str) -> str:
    rows = [r for r in rows if r.get("client") == client and r["workload"] in dict(BIG_COLUMNS)]
    if not rows:
        return ""
    cols = [c for c, _ in BIG_COLUMNS if any(r["workload"] == c for r in rows)]
    head = ["system @ origin", *(f"{dict(BIG_COLUMNS)[c]} MB/s (x direct)" for c in cols)]
    if client == "aiohttp":
        head += ["CPU s/GiB PUT / GET", "peak RSS MiB/worker PUT / GET", "minor faults/GiB PUT / GET"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for system, origin in _systems(rows):
        cells = [f"{system} @ {origin}"]
        for c in cols:
            r = _find(rows, workload=c, system=system, origin=origin)
            d = _find(rows, workload=c, system="direct", origin=origin)
            if r is None:
                cells.append("-")
            elif r.get("error"):
                cells.append("error: " + str(r["error"])[:60].replace("|", "/"))
            else:
                q = _ratio(r, d) if system != "direct" else None
                cells.append(_fmt(r["mb_s"]) + (f" ({q:.2f})" if q is not None else ""))
        if client == "aiohttp":
            p = _find(rows, workload="PUT single", system=system, origin=origin) or {}
            g = _find(rows, workload="GET single", system=system, origin=origin) or {}
            cells.append(f"{_fmt(p.get('cpu_s_per_gib'), 2)} / {_fmt(g.get('cpu_s_per_gib'), 2)}")
            cells.append(f"{_fmt(p.get('peak_rss_mib'))} / {_fmt(g.get('peak_rss_mib'))}")
            cells.append(f"{_fmt(p.get('minor_faults_per_gib'))} / {_fmt(g.get('minor_faults_per_gib'))}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peer_table(rows: list[Row]) -> str:
    """s3proxy vs the peer, both on the rclone origin, same client."""
    out = ["| workload (client) | s3proxy-1w MB/s | rclone crypt MB/s | s3proxy / peer |", "|---|---|---|---|"]
    any_row = False
    for client in ("aiohttp", "boto3"):
        for w, name in BIG_COLUMNS:
            p = _find(rows, workload=w, client=client, system="s3proxy-1w", origin="rclone")
            q = _find(rows, workload=w, client=client, kind="peer")
            if not p or not q:
                continue
            any_row = True
            r = _ratio(p, q)
            out.append(f"| {name} ({client}) | {_fmt(p.get('mb_s')) if not p.get('error') else 'error'} | "
                       f"{_fmt(q.get('mb_s')) if not q.get('error') else 'error'} | {_fmt(r, 2) if r else '-'} |")
    return "\n".join(out) if any_row else ""


def small_table(rows: list[Row]) -> str:
    rows = [r for r in rows if r["workload"] in ("PUT small", "GET small")]
    if not rows:
        return ""
    concs = sorted({r["concurrency"] for r in rows if "concurrency" in r})
    head = ["system @ origin", "size", "op", *(f"c={c} ops/s, p50/p99 ms" for c in concs), "added p50/p99 ms at c=16",
            "s3proxy CPU ms/op (c=1 / 16 / 64)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for size in sorted({r["size"] for r in rows}):
        for op in ("PUT", "GET"):
            for system, origin in _systems(rows):
                cells = [f"{system} @ {origin}", f"{size // 1024} KiB", op]
                for c in concs:
                    r = _find(rows, workload=f"{op} small", system=system, origin=origin, size=size, concurrency=c)
                    if r is None:
                        cells.append("-")
                    elif r.get("error") and not r.get("ops"):
                        cells.append("error: " + str(r["error"])[:40])
                    else:
                        cells.append(f"{_fmt(r['ops_s'])}, {_fmt(r['p50_ms'], 2)}/{_fmt(r['p99_ms'], 1)}"
                                     + (" (err)" if r.get("error") else ""))
                r = _find(rows, workload=f"{op} small", system=system, origin=origin, size=size, concurrency=16)
                d = _find(rows, workload=f"{op} small", system="direct", origin=origin, size=size, concurrency=16)
                if system != "direct" and r and d and r.get("p50_ms") and d.get("p50_ms"):
                    cells.append(f"{r['p50_ms'] - d['p50_ms']:+.2f} / {r['p99_ms'] - d['p99_ms']:+.1f}")
                else:
                    cells.append("-")
                cpu = [_find(rows, workload=f"{op} small", system=system, origin=origin, size=size, concurrency=c)
                       for c in concs]
                cells.append(" / ".join(_fmt(x.get("proxy_cpu_ms_per_op"), 3) if x and x.get("proxy_cpu_ms_per_op")
                                        else "-" for x in cpu))
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def list_table(rows: list[Row]) -> str:
    rows = [r for r in rows if r["workload"] == "LIST 1000 keys"]
    if not rows:
        return ""
    lines = ["| system @ origin | lists/s | p50 ms | p99 ms | x direct | s3proxy CPU ms/list | first list ms |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        d = _find(rows, system="direct", origin=r["origin"])
        q = _ratio(r, d, "lists_s") if r["system"] != "direct" else None
        if r.get("error"):
            lines.append(f"| {r['system']} @ {r['origin']} | error: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['system']} @ {r['origin']} | {_fmt(r['lists_s'], 1)} | {_fmt(r['p50_ms'], 1)} | "
                     f"{_fmt(r['p99_ms'], 1)} | {_fmt(q, 2) if q else '-'} | {_fmt(r.get('proxy_cpu_ms_per_list'), 1)} | "
                     f"{_fmt(r.get('first_ms'), 1)} |")
    return "\n".join(lines)


def ceiling_table(c: Row, rows: list[Row]) -> str:
    lines = ["| primitive (single core, this process) | MB/s | CPU s/GiB |", "|---|---|---|"]
    names = [
        ("cobblestone256_encrypt_mb_s", "Cobblestone-256 encrypt, update_into reused buffer, 1 MiB calls"),
        ("cobblestone256_decrypt_mb_s", "Cobblestone-256 decrypt, update_into reused buffer, 1 MiB calls"),
        ("aes256gcm_16k_encrypt_mb_s", "AES-256-GCM encrypt_into, 16 KiB chunks"),
        ("aes256gcm_16k_decrypt_mb_s", "AES-256-GCM decrypt_into, 16 KiB chunks"),
        ("s3proxy_sencryptor_64k_mb_s", "s3proxy SEncryptor.update, 64 KiB pieces"),
        ("s3proxy_sencryptor_1m_mb_s", "s3proxy SEncryptor.update, 1 MiB pieces"),
        ("s3proxy_sdecryptor_64k_mb_s", "s3proxy SDecryptor.update, 64 KiB pieces"),
        ("s3proxy_sdecryptor_1m_mb_s", "s3proxy SDecryptor.update, 1 MiB pieces"),
    ]
    for k, label in names:
        v = c.get(k)
        if v:
            lines.append(f"| {label} | {_fmt(v)} | {1073.741824 / v:.3f} |")
    enc_ceiling = c.get("cobblestone256_encrypt_mb_s")
    dec_ceiling = c.get("cobblestone256_decrypt_mb_s")
    for (op, ceil_v), name in product((("PUT single", enc_ceiling), ("GET single", dec_ceiling)),
                                      ("s3proxy-1w", "s3proxy-1w-untuned")):
        r = _find(rows, workload=op, system=name, origin="null", client="aiohttp")
        if r and r.get("cpu_s_per_gib") and ceil_v:
            frac = (1073.741824 / ceil_v) / r["cpu_s_per_gib"]
            lines.append(f"| {name} end to end, {op} @ null (whole process CPU) | "
                         f"{1073.741824 / r['cpu_s_per_gib']:,.0f} per CPU-second | {r['cpu_s_per_gib']:.3f} "
                         f"(crypto ceiling is {frac:.0%} of it) |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ targets


def targets(rows: list[Row], ceiling: Row) -> list[tuple[str, str, str]]:
    """(target, measured, met?) for the targets of issue 6."""
    out: list[tuple[str, str, str]] = []

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("met" if ok else "NOT met")

    for origin in ("null", "rclone"):
        for client in ("aiohttp", "boto3"):
            ratios = []
            for w in ("PUT single", "GET single"):
                p = _find(rows, workload=w, system="s3proxy-1w", origin=origin, client=client)
                d = _find(rows, workload=w, system="direct", origin=origin, client=client)
                r = _ratio(p, d)
                if r is not None:
                    ratios.append(f"{w.split()[0]} {r:.2f}")
            if ratios:
                ok = all(float(x.split()[1]) >= 0.9 for x in ratios)
                out.append((f"large PUT/GET >= 90% of direct ({client}, {origin} origin, 1 worker)",
                            ", ".join(ratios), verdict(ok)))
    for w, need, label in (("PUT single", 2.0, "PUT >= 2x peer"), ("PUT multipart 8MiB x8", 3.0, "multipart >= 3x peer"),
                           ("GET single", 1.0, "GET >= peer"), ("GET ranged 8MiB x10", 1.0, "ranged GET >= peer")):
        p = _find(rows, workload=w, system="s3proxy-1w", origin="rclone", client="aiohttp")
        q = _find(rows, workload=w, kind="peer", client="aiohttp")
        r = _ratio(p, q)
        out.append((label + " (rclone origin, aiohttp)", f"{r:.2f}x" if r else "-", verdict(None if r is None else r >= need)))
    for name in ("s3proxy-1w", "s3proxy-1w-untuned"):
        for w in ("PUT single", "GET single", "PUT multipart 8MiB x8", "GET multipart object"):
            r = _find(rows, workload=w, system=name, origin="null", client="aiohttp")
            v = r.get("cpu_s_per_gib") if r else None
            if v is None:
                continue
            out.append((f"s3proxy CPU <= 2 s/GiB ({w}, {name}, null origin)", f"{v:.2f} s/GiB",
                        verdict(v <= 2.0)))
    for conc, origin, op, size in product((16, 1), ("null", "rclone"), ("PUT", "GET"), (4096, 65536)):
        r = _find(rows, workload=f"{op} small", system="s3proxy-1w", origin=origin, size=size, concurrency=conc)
        d = _find(rows, workload=f"{op} small", system="direct", origin=origin, size=size, concurrency=conc)
        if not r or not d or not r.get("p50_ms") or not d.get("p50_ms"):
            continue
        a50, a99 = r["p50_ms"] - d["p50_ms"], r["p99_ms"] - d["p99_ms"]
        tag = "" if conc == 16 else " (for reference: the target is at c=16)"
        out.append((f"added latency c={conc} {op} {size // 1024} KiB ({origin}): p50 <= 1 ms, p99 <= 5 ms{tag}",
                    f"{a50:+.2f} / {a99:+.1f} ms", verdict(a50 <= 1.0 and a99 <= 5.0)))
    rss = [(r.get("peak_rss_mib"), r) for r in rows if r.get("kind") == "s3proxy" and r.get("peak_rss_mib")
           and r.get("size", 0) >= (256 << 20)]
    if rss:
        worst, wr = max(rss, key=lambda x: x[0])
        out.append(("peak RSS per worker < 150 MiB (any object size)",
                    f"max {worst:.0f} MiB ({wr['workload']}, {wr['system']}@{wr['origin']}, {wr['size'] >> 20} MiB)",
                    verdict(worst < 150)))
    return out


# ------------------------------------------------------------------------------------ chart


COLORS = {"direct": (150, 150, 150), "s3proxy": (40, 100, 200), "s3proxy-tls": (30, 160, 150),
          "s3proxy-untuned": (120, 60, 180), "peer": (230, 130, 30)}


def _color_key(r: Row) -> str:
    if r["kind"] in ("peer", "direct"):
        return str(r["kind"])
    return "s3proxy-tls" if "tls" in r["system"] else ("s3proxy-untuned" if r["system"].endswith("-untuned") else "s3proxy")


def chart(rows: list[Row], path: Path, title: str) -> None:
    bars: list[tuple[str, str, float, str]] = []  # group, label, value, color key
    for w, name in BIG_COLUMNS:
        for r in rows:
            if r.get("client") == "aiohttp" and r["workload"] == w and not r.get("error"):
                ck = _color_key(r)
                bars.append((name, f"{r['system']}@{r['origin']}", r["mb_s"], ck))
    small: list[tuple[str, str, float, str]] = []
    for r in rows:
        if r["workload"] in ("PUT small", "GET small") and r.get("concurrency") == 16 and r.get("size") == 4096 \
                and r.get("ops_s"):
            ck = _color_key(r)
            small.append((r["workload"].split()[0] + " 4 KIB C=16", f"{r['system']}@{r['origin']}", r["ops_s"], ck))
    small.sort(key=lambda b: b[0])  # group PUT and GET bars together (stable: systems keep their order)
    label_w, bar_w, bh = 200, 640, 12
    groups = [g for g, *_ in bars] + [g for g, *_ in small]
    n_groups = len(dict.fromkeys(groups))
    height = 60 + (len(bars) + len(small)) * (bh + 3) + n_groups * 22 + 40
    cv = Canvas(label_w + bar_w + 110, height)
    cv.text(10, 10, title, scale=2)
    y = 40
    for series, unit in ((bars, "MB/S"), (small, "OPS/S")):
        if not series:
            continue
        vmax = max(v for _, _, v, _ in series) or 1.0
        group = None
        for g, label, v, ck in series:
            if g != group:
                y += 8
                cv.text(10, y, f"{g} ({unit})", (0, 0, 0))
                y += 14
                group = g
            cv.text(10, y + 2, label[:32], (60, 60, 60))
            w = max(1, int(bar_w * v / vmax))
            cv.rect(label_w, y, w, bh, COLORS[ck])
            cv.text(label_w + w + 4, y + 2, f"{v:,.0f}", (0, 0, 0))
            y += bh + 3
    lx = 10
    y += 10
    for k, col in COLORS.items():
        cv.rect(lx, y, 10, 10, col)
        lx = cv.text(lx + 14, y + 2, k) + 16
    cv.save(path)


# ------------------------------------------------------------------------------------ whole report


def markdown(res: dict[str, Any]) -> str:
    rows: list[Row] = res["rows"]
    meta = res["meta"]
    parts = [f"## Results ({meta['mode']} mode, {meta['date']}, object size {meta['big_size'] >> 20} MiB, "
             f"{meta['wall_s']:.0f} s)\n"]
    parts.append("### Large objects, aiohttp load generator (best of "
                 f"{meta['repeats']}; ratio to the same origin direct in parentheses)\n")
    parts.append(big_table(rows, "aiohttp"))
    b = big_table(rows, "boto3")
    if b:
        parts.append("\n### Large objects, boto3 (`put_object` / `get_object`)\n")
        parts.append(b)
    p = peer_table(rows)
    if p:
        parts.append("\n### s3proxy vs the peer (rclone crypt), both on the rclone origin\n")
        parts.append(p)
    s = small_table(rows)
    if s:
        parts.append("\n### Small objects (ops/s, latency p50/p99 in ms; added = s3proxy minus direct, same origin)\n")
        parts.append(s)
    li = list_table(rows)
    if li:
        parts.append("\n### LIST of 1,000 keys (ListObjectsV2, one page)\n")
        parts.append(li)
    k = [r for r in rows if r["workload"] == "key-service calls"]
    if k:
        parts.append("\n### Key-service calls (s3proxy-1w, local master key, warm cache)\n")
        parts.append("| system @ origin | PUTs | encrypt-side calls | decrypt-side calls | calls per 10,000 PUTs |")
        parts.append("|---|---|---|---|---|")
        for r in k:
            parts.append(f"| {r['system']} @ {r['origin']} | {r.get('puts')} | {r.get('encrypt_calls')} | "
                         f"{r.get('decrypt_calls')} | {r.get('calls_per_10k_puts')} |")
    rss = [r for r in rows if r["workload"].startswith("RSS")]
    if rss:
        parts.append("\n### Peak RSS per worker by object size\n")
        parts.append("| workload | system @ origin | object MiB | peak RSS MiB/worker | MB/s |")
        parts.append("|---|---|---|---|---|")
        for r in rss:
            parts.append(f"| {r['workload']} | {r['system']} @ {r['origin']} | {r['size'] >> 20} | "
                         f"{_fmt(r.get('peak_rss_mib'))} | {_fmt(r.get('mb_s'))}{' error: ' + r['error'] if r.get('error') else ''} |")
    parts.append("\n### Machine ceiling (measured in the same run)\n")
    parts.append(ceiling_table(res["ceiling"], rows))
    parts.append("\n### Targets of issue 6\n")
    parts.append("| target | measured | verdict |\n|---|---|---|")
    for t, m, v in targets(rows, res["ceiling"]):
        parts.append(f"| {t} | {m} | {v} |")
    errs = [r for r in rows if r.get("error")]
    if errs:
        parts.append("\n### Errors and skips\n")
        for r in errs:
            parts.append(f"- {r['workload']} {r['system']}@{r['origin']} ({r.get('client')}): {r['error']}")
    return "\n".join(parts) + "\n"
