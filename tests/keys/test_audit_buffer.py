"""AuditLog buffering (issue 11): lines leave the request path, and none is lost on a clean close."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from s3proxy.keys import AuditInfo, AuditLog
from s3proxy.keys.audit import PIPE_BUF

INFO = AuditInfo("req-1", "AKID", "GetObject", "bucket", "key")


def event(log: AuditLog, i: int = 0) -> None:
    log.object_event(INFO, backend="local", key_id=f"k{i}", cache="hit", outcome="ok", latency_ms=0.5)


class Recorder(io.StringIO):
    """A stream that remembers every flushed write."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[str] = []
        self._mark = 0

    def flush(self) -> None:
        text = self.getvalue()
        if len(text) > self._mark:
            self.flushed.append(text[self._mark:])
            self._mark = len(text)
        super().flush()


async def test_lines_are_queued_then_written_together(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, flush_interval=0.05)
    for i in range(5):
        event(log, i)
    assert path.read_text() == ""  # nothing written on the request path
    await asyncio.sleep(0.2)
    lines = path.read_text().splitlines()
    assert [json.loads(x)["key_id"] for x in lines] == [f"k{i}" for i in range(5)]
    event(log, 5)  # a new timer after the first flush
    await asyncio.sleep(0.2)
    assert len(path.read_text().splitlines()) == 6
    log.close()


async def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, flush_interval=3600)
    for i in range(100):
        event(log, i)
    assert path.read_text() == ""
    log.close()
    assert len(path.read_text().splitlines()) == 100
    event(log, 100)  # after close: dropped, no error
    assert len(path.read_text().splitlines()) == 100


async def test_a_full_queue_is_written_at_once() -> None:
    rec = Recorder()
    log = AuditLog(rec, flush_interval=3600, max_buffered=10)
    for i in range(9):
        event(log, i)
    assert rec.getvalue() == ""
    event(log, 9)
    assert len(rec.getvalue().splitlines()) == 10


async def test_chunks_are_whole_lines_within_pipe_buf() -> None:
    rec = Recorder()
    log = AuditLog(rec, flush_interval=3600, max_buffered=10_000)
    for i in range(200):
        log.object_event(INFO, backend="local", key_id="k" * (i % 50), cache="hit", outcome="ok", latency_ms=1.0,
                         context={"bucket": "b", "note": "ü" * (i % 7)})
    log.flush()
    assert len(rec.flushed) > 1
    for chunk in rec.flushed:
        assert chunk.endswith("\n") and len(chunk.encode()) <= PIPE_BUF
        for line in chunk.splitlines():
            json.loads(line)
    assert len(rec.getvalue().splitlines()) == 200


def test_outside_an_event_loop_every_line_is_written_at_once(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    event(log)
    assert len(path.read_text().splitlines()) == 1
    log.close()


def test_a_given_stream_is_written_per_line_by_default() -> None:
    async def run() -> str:
        rec = Recorder()
        log = AuditLog(rec)
        event(log)
        return rec.getvalue()

    assert asyncio.run(run()).count("\n") == 1


def test_a_closed_loop_does_not_hold_lines_back(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, flush_interval=30)

    async def one(i: int, wait: float) -> None:
        event(log, i)
        await asyncio.sleep(wait)

    asyncio.run(one(0, 0))  # the loop ends before its flush timer
    log._interval = 0.01  # noqa: SLF001 - a short timer for the second loop
    asyncio.run(one(1, 0.2))  # a new loop schedules its own flush
    assert [json.loads(x)["key_id"] for x in path.read_text().splitlines()] == ["k0", "k1"]
    log.close()


def test_garbage_collected_log_writes_its_queue(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"

    async def run() -> None:
        log = AuditLog(path, flush_interval=3600)
        event(log)

    asyncio.run(run())
    gc.collect()
    assert len(path.read_text().splitlines()) == 1


def test_interpreter_exit_writes_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    code = (
        "import asyncio\n"
        "from s3proxy.keys import AuditInfo, AuditLog\n"
        f"log = AuditLog({str(path)!r}, flush_interval=3600)\n"
        "async def main():\n"
        "    for i in range(3):\n"
        "        log.object_event(AuditInfo('r', 'a', 'o', 'b', 'k'), backend='local', key_id='k', cache='hit',"
        " outcome='ok', latency_ms=0.0)\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert len(path.read_text().splitlines()) == 3


def test_timestamp_format() -> None:
    for t in (0.0, 1_700_000_000.0, 1_700_000_000.9999, 1_700_000_001.25, 1_800_000_000.001):
        rec = Recorder()
        log = AuditLog(rec, clock=lambda t=t: t)  # type: ignore[misc]
        event(log)
        want = datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert json.loads(rec.getvalue())["time"] == want, t
