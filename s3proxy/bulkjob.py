"""Bulk jobs over a bucket (``s3proxy migrate``, ``s3proxy export``): the walk they share.

:class:`BulkJob` lists a bucket page by page, runs ``one(key, size)`` on ``concurrency``
objects at a time, checkpoints a JSON state file (the listing key up to which every object is
finished, and the keys that failed: a rerun retries those, then lists from there; removed
after a run without failure), draws progress (objects, bytes, rate, ETA) and prints the
report (``--report FILE`` also writes it as JSON).  ``--dry-run`` changes nothing and leaves
the state file alone.  The requests themselves (and the in-process proxy every job reads or
writes through) are in :mod:`s3proxy.bulkio`.

Exit status of a job: 0 when every object is done, 1 when any failed, 2 when it could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from s3proxy import progress
from s3proxy.backend import ops
from s3proxy.backend.client import BackendClient
from s3proxy.backend.ops import Reply, quoted
from s3proxy.bulkio import (
    Changed,
    InternalProxy,
    JobError,
    Source,
    Transfers,
    describe,
    kept_headers,
    parse_size,
    reply_etag,
    split,
)
from s3proxy.config import ConfigError, Settings, load_settings
from s3proxy.rewrap.walk import ListingError, SetupError, State, StateFile, Tracker, run_all

__all__ = [
    "BulkJob", "Changed", "InternalProxy", "JobError", "JobReport", "Reply", "SetupError", "Source", "describe",
    "kept_headers", "quoted", "reply_etag", "split",
]

MAX_CONCURRENCY = 256
CHECKPOINT_INTERVAL = 1.0
REPORT_LINES = 1000


@dataclass
class JobReport:
    """What a run did; lists and maps hold object keys."""

    kind: str
    bucket: str
    prefix: str
    dry_run: bool
    listed: int = 0
    done: int = 0
    bytes_done: int = 0
    bytes_listed: int = 0
    bytes_seen: int = 0
    would: list[tuple[str, str]] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> keys
    failures: dict[str, str] = field(default_factory=dict)
    conflicts: dict[str, str] = field(default_factory=dict)  # changed by a client during the run
    warnings: list[str] = field(default_factory=list)
    listing_error: str | None = None
    listing_complete: bool = False
    resumed_after: str | None = None
    retried: int = 0
    elapsed: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped_count(self) -> int:
        return sum(len(v) for v in self.skipped.values())

    @property
    def processed(self) -> int:
        return self.done + len(self.would) + self.skipped_count + len(self.failures)

    @property
    def ok(self) -> bool:
        return not self.failures and self.listing_error is None and self.listing_complete

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["would"] = [{"key": k, "detail": v} for k, v in self.would]
        return d


class BulkJob(Transfers):
    """A walk over ``bucket``/``prefix``; subclasses say what happens to one object."""

    kind = "job"
    verb = "done"

    def __init__(
        self, settings: Any, bucket: str, prefix: str = "", *, dry_run: bool = False, concurrency: int = 8,
        state_file: str | os.PathLike[str] | None = None, report_file: str | os.PathLike[str] | None = None,
        progress: bool = True, page_size: int = 1000, part_size: int = 16 << 20,
        multipart_threshold: int = 64 << 20, out: TextIO | None = None, err: TextIO | None = None,
    ) -> None:
        self.settings = settings
        self.prefix, self.dry_run = prefix or "", dry_run
        self.concurrency = max(1, min(int(concurrency), MAX_CONCURRENCY))
        self.state_path = Path(state_file) if state_file else Path(f".s3proxy-{self.kind}-{bucket}.json")
        self.state: StateFile | None = None  # at run(): its identity may depend on the subclass's settings
        self.report_path = Path(report_file) if report_file else None
        self.show_progress = progress
        self.page_size = max(1, min(int(page_size), 1000))
        self.part_size = max(5 << 20, part_size)
        self.multipart_threshold = max(self.part_size, multipart_threshold)
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.report = JobReport(self.kind, bucket, self.prefix, dry_run)
        super().__init__(bucket, BackendClient(settings.backend))
        self.internal = InternalProxy(settings)
        self.proxy_client: BackendClient = self.source  # replaced at start
        self._tracker = Tracker(None)
        self._pending_failed: set[str] = set()
        self._last_progress = 0.0
        self._t0 = time.monotonic()
        self._walk_finished = False
        self._tty = bool(getattr(self.err, "isatty", lambda: False)())

    # -- what subclasses provide ------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """What a state file must match to be resumed by this run."""
        return {"bucket": self.bucket, "prefix": self.prefix}

    @property
    def list_client(self) -> BackendClient:
        return self.source

    async def prepare(self) -> None:
        """Checks before the walk (raise SetupError)."""

    async def one(self, key: str, size: int | None) -> tuple[str, str]:
        """(``done`` | ``would`` | ``skip``, detail); raise JobError to fail the object."""
        raise NotImplementedError

    # -- requests ---------------------------------------------------------------------

    async def pages(self, start_after: str | None) -> AsyncIterator[list[tuple[str, int | None]]]:
        store = ops.Store(self.list_client, self.bucket)
        try:
            async for page in ops.list_pages(store, self.prefix, start_after, self.page_size):
                # the proxy's own sidecars (s3proxy.http.sidecars) are not objects
                items = [(o.key, o.size) for o in page if not o.key.startswith(".s3proxy/")]
                if items:
                    yield items
        except ops.OpError as exc:
            raise ListingError(str(exc)) from None

    # -- one object, the walk ---------------------------------------------------------------

    async def _process(self, key: str, size: int | None) -> None:
        try:
            outcome, detail = await self.one(key, size)
        except ops.OpError as exc:  # JobError, and the shared backend operations' errors
            outcome, detail = "failed", str(exc) or type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - one object's surprise must not stop the walk
            outcome, detail = "failed", f"{type(exc).__name__}: {exc}"
        r = self.report
        r.bytes_seen += size or 0
        if outcome == "failed":
            r.failures[key] = detail
            self._pending_failed.add(key)
        else:
            r.failures.pop(key, None)
            self._pending_failed.discard(key)
            if outcome == "done":
                r.done += 1
            elif outcome == "would":
                r.would.append((key, detail))
            else:
                r.skipped.setdefault(detail, []).append(key)
        self._progress()

    async def _retry_failed(self, keys: list[str]) -> None:
        todo = list(reversed(keys))

        async def worker() -> None:
            while todo:
                await self._process(todo.pop(), None)

        await run_all([worker() for _ in range(min(self.concurrency, max(1, len(keys))))])

    async def _walk(self, start_after: str | None) -> None:
        queue: asyncio.Queue[tuple[int, str, int | None] | None] = asyncio.Queue(maxsize=self.concurrency * 2)

        async def producer() -> None:
            seq = 0
            try:
                async for page in self.pages(start_after):
                    for i, (key, size) in enumerate(page):
                        self.report.listed += 1
                        self.report.bytes_listed += size or 0
                        self._tracker.add(seq, key, page_end=i == len(page) - 1)
                        await queue.put((seq, key, size))
                        seq += 1
                self.report.listing_complete = True
            except ListingError as exc:
                self.report.listing_error = str(exc)
            for _ in range(self.concurrency):
                await queue.put(None)

        async def worker() -> None:
            while (item := await queue.get()) is not None:
                seq, key, size = item
                await self._process(key, size)
                if self._tracker.complete(seq):
                    self._checkpoint()

        await run_all([producer(), *(worker() for _ in range(self.concurrency))])

    # -- state file -------------------------------------------------------------------------

    def _checkpoint(self, *, force: bool = False) -> None:
        if self.dry_run or self.state is None:
            return
        self.state.checkpoint(self._tracker, self._pending_failed, self._walk_finished, force=force)

    # -- progress and report ------------------------------------------------------------------

    def _progress(self, final: bool = False) -> None:
        now = time.monotonic()
        if not self.show_progress or (not final and now - self._last_progress < (0.2 if self._tty else 2.0)):
            return
        self._last_progress = now
        r, elapsed = self.report, now - self._t0
        known = r.listing_complete
        line = (f"{self.kind} {progress.bar(r.processed, r.listed) + ' ' if known else ''}"
                f"{r.processed}/{r.listed}{'' if known else '+'} objects, "
                f"{progress.human_bytes(r.bytes_seen)}/{progress.human_bytes(r.bytes_listed)}{'' if known else '+'}, "
                f"{r.done} {self.verb}, {r.skipped_count} skipped, {len(r.failures)} failed, "
                f"{progress.rate_eta(r.processed, r.listed if known else None, elapsed)}, "
                f"{progress.human_bytes(r.bytes_done / elapsed if elapsed > 0 else 0)}/s")
        self.err.write(("\r" + line + "\x1b[K" + ("\n" if final else "")) if self._tty else line + "\n")
        self.err.flush()

    def _print_report(self) -> None:
        r, w = self.report, self.out.write
        rate = r.bytes_done / r.elapsed / 1e6 if r.elapsed > 0 else 0.0
        w(f"{self.kind} s3://{self.bucket}/{self.prefix}{' (dry run)' if self.dry_run else ''}: "
          f"{r.processed} objects, {len(r.would) if self.dry_run else r.done} "
          f"{'would be ' + self.verb if self.dry_run else self.verb} ({progress.human_bytes(r.bytes_done)}, "
          f"{rate:.1f} MB/s), {r.skipped_count} skipped, {len(r.failures)} failed, {r.elapsed:.1f} s\n")
        if r.resumed_after is not None or r.retried:
            w(f"resumed: {r.retried} failed objects retried, listing after {r.resumed_after!r}\n")
        lines: list[tuple[str, str]] = [(f"would {self.kind}", f"{k} ({d})") for k, d in sorted(r.would)]
        lines += [(f"skipped, {why}", k) for why, keys in sorted(r.skipped.items()) for k in sorted(keys)]
        for what, text in lines[:REPORT_LINES]:
            w(f"{what}: {text}\n")
        if len(lines) > REPORT_LINES:
            w(f"... and {len(lines) - REPORT_LINES} more (--report FILE has them all)\n")
        for key, why in sorted(r.conflicts.items()):
            w(f"conflict: {key}: {why}\n")
        for msg in r.warnings:
            w(f"warning: {msg}\n")
        for key, why in sorted(r.failures.items()):
            w(f"failed: {key}: {why}\n")
        if r.listing_error:
            w(f"failed: listing stopped: {r.listing_error}\n")
        if not r.ok and not self.dry_run:
            w(f"state saved in {self.state_path}; run the same command again to retry and resume\n")
        self.out.flush()

    # -- the run ---------------------------------------------------------------------------

    async def run(self) -> JobReport:
        if not self.dry_run and not self.state_path.parent.is_dir():
            raise SetupError(f"the directory of the state file {self.state_path} does not exist")
        self.state = StateFile(self.state_path, f"s3proxy-{self.kind}-state", self.identity())
        state = State() if self.dry_run else self.state.load()
        await self.source.start()
        try:
            self.proxy_client = await self.internal.start()
            await self.prepare()
            self._tracker = Tracker(state.after)
            self._pending_failed = set(state.failed)
            self.report.resumed_after, self.report.retried = state.after, len(state.failed)
            try:
                if state.failed:
                    await self._retry_failed(state.failed)
                await self._walk(state.after)
                self._walk_finished = self.report.listing_complete
            finally:  # also on Ctrl-C: what finished stays finished
                if not self.dry_run:
                    if self._walk_finished and self.report.ok and not self._pending_failed:
                        self.state.remove()
                    else:
                        self._checkpoint(force=True)
                self.report.elapsed = time.monotonic() - self._t0
                self.report.extra.update(self.notes)
                self._progress(final=True)
        finally:
            await self.internal.close()
            await self.source.close()
        self._print_report()
        if self.report_path is not None:
            self.report_path.write_text(json.dumps(self.report.to_json(), indent=1) + "\n", encoding="utf-8")
        return self.report


# -- command line ------------------------------------------------------------------------------


def common_arguments(p: argparse.ArgumentParser, kind: str) -> None:
    p.add_argument("--config", metavar="FILE", default=None, help=("YAML configuration file (see config/s3proxy.example.yaml); S3PROXY_* environment "
                       "variables override its settings (default: none, built-in defaults and the environment only)"))
    p.add_argument("--bucket", required=True, help="the bucket (required)")
    p.add_argument("--prefix", default="", help="only keys under this prefix")
    p.add_argument("--dry-run", action="store_true", help="list what would be done; change nothing (default: do it)")
    p.add_argument("--concurrency", type=int, default=8, metavar="N", help="objects in flight (default 8)")
    p.add_argument("--state", "--state-file", dest="state", metavar="FILE", default=None,
                   help=f"resume file (default: .s3proxy-{kind}-<bucket>.json in the current directory)")
    p.add_argument("--report", metavar="FILE", default=None, help="also write the final report to this file as JSON (default: the terminal only)")
    p.add_argument("--part-size", type=parse_size, default=16 << 20, metavar="SIZE", help="multipart part size (default 16MiB)")
    p.add_argument("--multipart-threshold", type=parse_size, default=64 << 20, metavar="SIZE",
                   help="objects larger than this are uploaded in parts (default 64MiB)")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr (default: show progress)")


def job_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"dry_run": args.dry_run, "concurrency": args.concurrency, "state_file": args.state,
            "report_file": args.report, "progress": not args.no_progress, "part_size": args.part_size,
            "multipart_threshold": args.multipart_threshold}


def load(args: argparse.Namespace) -> Settings | None:
    try:
        return load_settings(args.config)
    except ConfigError as exc:
        print(f"s3proxy: {exc}", file=sys.stderr)
        return None


def run_job(job: BulkJob) -> int:
    try:
        report = asyncio.run(job.run())
    except SetupError as exc:
        print(f"s3proxy {job.kind}: {exc}", file=sys.stderr)
        return 2
    return 0 if report.ok else 1
