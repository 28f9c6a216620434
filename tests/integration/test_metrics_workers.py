"""`s3proxy serve --workers N`: /metrics adds up every worker's metrics,
whichever worker answers the scrape, and keeps a dead worker's counts."""

from __future__ import annotations

import glob
import http.client
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Backend
from tests.integration.test_service import ServeProc, new_bucket, serve


def scrape(p: ServeProc) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples by exposition name (each scrape on a new connection: any worker may answer)."""
    status, body = p.admin("/metrics")
    assert status == 200, body
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(v for _, v in samples.get(name, []))


def requests_per_worker(metrics_dir: str) -> dict[int, float]:
    """s3proxy_requests_total of each worker, from its own file in the multiprocess directory."""
    out: dict[int, float] = {}
    for f in glob.glob(os.path.join(metrics_dir, "counter_*.db")):
        pid = int(Path(f).stem.split("_")[1])
        n = 0.0
        for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(f):  # type: ignore[no-untyped-call]
            if json.loads(key)[1] == "s3proxy_requests_total":
                n += value
        out[pid] = n
    return out


def anonymous_get(p: ServeProc) -> int:
    """One request on a connection of its own (SO_REUSEPORT spreads connections over the workers)."""
    conn = http.client.HTTPConnection("127.0.0.1", p.port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def wait_for(cond: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_metrics_add_up_across_workers(backend: Backend, tmp_path: Path) -> None:
    p = serve(backend, tmp_path, "--workers", "2")
    try:
        wait_for(lambda: len({r["pid"] for r in p.logs() if r.get("event") == "server.started"}) == 2, 30)
        workers = sorted({r["pid"] for r in p.logs() if r.get("event") == "server.started"})
        metrics_dir = next(r["metrics_dir"] for r in p.logs() if r.get("event") == "server.workers")

        sent = 0
        seen: list[float] = []

        def scrapes_agree() -> None:
            # Several scrapes, answered by either worker: never backwards, never
            # above what was sent, and (once the last request is counted) equal to it.
            for _ in range(6):
                n = total(scrape(p), "s3proxy_requests_total")
                assert not seen or n >= seen[-1], (seen, n)
                assert n <= sent, (n, sent)
                seen.append(n)
            wait_for(lambda: total(scrape(p), "s3proxy_requests_total") == sent, 5)
            seen.append(float(sent))

        c = p.client()
        bucket = new_bucket(c)
        sent += 1
        for rnd in range(3):
            for _ in range(8):
                anonymous_get(p)
                sent += 1
            fresh = p.client()  # a new connection, signed requests through the encryption path
            fresh.put_object(Bucket=bucket, Key=f"k{rnd}", Body=b"x" * (100 + rnd))
            assert fresh.get_object(Bucket=bucket, Key=f"k{rnd}")["Body"].read() == b"x" * (100 + rnd)
            sent += 2
            scrapes_agree()

        # Both workers served requests, and the scrape is their sum.
        per_worker = requests_per_worker(metrics_dir)
        assert set(per_worker) == set(workers), (per_worker, workers)
        assert all(n > 0 for n in per_worker.values()), per_worker
        assert sum(per_worker.values()) == sent

        m = scrape(p)
        assert total(m, "s3proxy_encrypted_bytes_total") == 100 + 101 + 102
        assert total(m, "s3proxy_decrypted_bytes_total") == 100 + 101 + 102
        # Gauges: one series for the whole process (livesum), no per-worker "pid" label.
        assert m["s3proxy_in_flight_requests"] == [({}, 0.0)]
        assert all("pid" not in labels for samples in m.values() for labels, _ in samples)
        assert total(m, "s3proxy_request_seconds_count") == sent
        assert total(m, "s3proxy_key_service_calls_total") >= 1

        # A worker dies: its counts stay in the sum, its gauges leave it.
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: any(r.get("event") == "worker.exited" for r in p.logs()))
        assert not glob.glob(os.path.join(metrics_dir, f"gauge_live*_{workers[0]}.db"))
        for _ in range(4):
            anonymous_get(p)
            sent += 1
        scrapes_agree()
        assert scrape(p)["s3proxy_in_flight_requests"] == [({}, 0.0)]
    finally:
        p.stop()
    # The parent removes the directory when it exits.
    assert not os.path.exists(metrics_dir)
