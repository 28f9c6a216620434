"""Cost of encrypted names: backend requests per operation and listing latency per level.

Run from the repository root: .venv/bin/python bench/names.py (docs/NAMES.md, "Cost")
"""
from __future__ import annotations

import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, ".")
from tests.conftest import proxy_settings, start_proxy, stop_proxy, strict_server  # noqa: E402

NAMES, PLAIN = "bn-" + uuid.uuid4().hex[:8], "bp-" + uuid.uuid4().hex[:8]


def sent(p):
    return p.state.backend.requests_sent


def per_op(p, s3, bucket):
    out = {}
    for name, fn in [
        ("PUT", lambda: s3.put_object(Bucket=bucket, Key="dir/sub/obj", Body=b"x" * 1000)),
        ("HEAD", lambda: s3.head_object(Bucket=bucket, Key="dir/sub/obj")),
        ("GET", lambda: s3.get_object(Bucket=bucket, Key="dir/sub/obj")["Body"].read()),
        ("COPY", lambda: s3.copy_object(Bucket=bucket, Key="dir/sub/copy", CopySource={"Bucket": bucket, "Key": "dir/sub/obj"})),
        ("DELETE", lambda: s3.delete_object(Bucket=bucket, Key="dir/sub/copy")),
        ("LIST level (1 entry)", lambda: s3.list_objects_v2(Bucket=bucket, Prefix="dir/sub/", Delimiter="/")),
    ]:
        before = sent(p)
        fn()
        out[name] = sent(p) - before
    return out


def fill(s3, bucket, n):
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda i: s3.put_object(Bucket=bucket, Key=f"lvl{n}/f{i:06d}", Body=b"y" * 100), range(n)))


def list_level(p, s3, bucket, n, reps=5):
    times, reqs = [], 0
    for _ in range(reps):
        before = sent(p)
        t = time.perf_counter()
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"lvl{n}/", Delimiter="/"):
            keys += [o["Key"] for o in page.get("Contents", [])]
        times.append(time.perf_counter() - t)
        reqs = sent(p) - before
        assert len(keys) == n, len(keys)
    return statistics.median(times) * 1000, reqs


def main():
    with strict_server() as b:
        p = start_proxy(proxy_settings(b, buckets={NAMES: {"names": {"encrypt": True, "max_level": 20000}}, PLAIN: {}}))
        s3 = p.client()
        for bk in (NAMES, PLAIN):
            s3.create_bucket(Bucket=bk)
        before = sent(p)
        s3.list_objects_v2(Bucket=NAMES)
        print(f"first request to a names bucket (creates the name key): {sent(p) - before} backend requests "
              "(of which the listing itself: 1)")
        ops = {bk: per_op(p, s3, bk) for bk in (PLAIN, NAMES)}
        print("| operation | plain | names |\n|---|---|---|")
        for op in ops[PLAIN]:
            print(f"| {op} | {ops[PLAIN][op]} | {ops[NAMES][op]} |")
        print("\n| level size | plain ms | plain backend requests | names ms | names backend requests |\n|---|---|---|---|---|")
        for n in (100, 1000, 5000):
            for bk in (PLAIN, NAMES):
                fill(s3, bk, n)
            pm, pr = list_level(p, s3, PLAIN, n)
            nm, nr = list_level(p, s3, NAMES, n)
            print(f"| {n} | {pm:.0f} | {pr} | {nm:.0f} | {nr} |")
        stop_proxy(p)


main()
