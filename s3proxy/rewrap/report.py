"""What a ``rewrap`` run did (``RewrapReport``), its progress line and its final report.

Imports: ``s3proxy.progress`` only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from s3proxy import progress

__all__ = ["REPORT_LINES", "Progress", "RewrapReport", "print_report"]

REPORT_LINES = 1000  # keys listed per kind of skip in the report (failures are all listed)


@dataclass
class RewrapReport:
    """What a run did.  Lists hold object keys."""

    bucket: str
    prefix: str
    to_key: str
    dry_run: bool
    listed: int = 0
    rewrapped: int = 0
    already: int = 0  # already under the target key
    would_rewrap: list[tuple[str, str]] = field(default_factory=list)  # (key, current key id)
    unencrypted: list[str] = field(default_factory=list)
    sse_c: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    listing_error: str | None = None
    listing_complete: bool = False
    resumed_after: str | None = None
    retried: int = 0

    @property
    def skipped(self) -> int:
        return self.already + len(self.unencrypted) + len(self.sse_c) + len(self.gone)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def processed(self) -> int:
        return self.rewrapped + len(self.would_rewrap) + self.skipped + self.failed

    @property
    def ok(self) -> bool:
        return not self.failures and self.listing_error is None and self.listing_complete

    def record(self, key: str, outcome: str, detail: str) -> None:
        """One object's outcome (``failed`` with the reason, or what was done)."""
        if outcome == "failed":
            self.failures[key] = detail
        elif outcome == "rewrapped":
            self.rewrapped += 1
        elif outcome == "would":
            self.would_rewrap.append((key, detail))
        elif outcome == "already":
            self.already += 1
        elif outcome == "unencrypted":
            self.unencrypted.append(key)
        elif outcome == "sse-c":
            self.sse_c.append(key)
        elif outcome == "gone":
            self.gone.append(key)


class Progress:
    """The progress line on stderr: redrawn in place on a terminal, else a line every 2 s."""

    def __init__(self, report: RewrapReport, err: TextIO, *, enabled: bool) -> None:
        self.report = report
        self.err = err
        self.enabled = enabled
        self.listing_done = False
        self._tty = bool(getattr(err, "isatty", lambda: False)())
        self._last = 0.0
        self._t0 = time.monotonic()

    def show(self, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self._last < (0.2 if self._tty else 2.0):
            return
        self._last = now
        r = self.report
        listed = f"{r.listed}" + ("" if self.listing_done else "+")
        total = r.listed if self.listing_done else None
        shown_bar = progress.bar(r.processed, r.listed) + " " if total else ""
        done = "would re-wrap" if r.dry_run else "rewrapped"
        n_done = len(r.would_rewrap) if r.dry_run else r.rewrapped
        line = (
            f"rewrap {shown_bar}{r.processed}/{listed} listed, {n_done} {done}, "
            f"{r.skipped} skipped, {r.failed} failed, "
            f"{progress.rate_eta(r.processed, total, now - self._t0)}"
        )
        if self._tty:
            self.err.write("\r" + line + "\x1b[K" + ("\n" if final else ""))
        else:
            self.err.write(line + "\n")
        self.err.flush()


def _listing(w: Callable[[str], object], what: str, keys: list[str]) -> None:
    for key in keys[:REPORT_LINES]:
        w(f"{what}: {key}\n")
    if len(keys) > REPORT_LINES:
        w(f"{what}: ... and {len(keys) - REPORT_LINES} more\n")


def print_report(r: RewrapReport, out: TextIO, elapsed: float, state_path: object) -> None:
    w = out.write
    where = f"s3://{r.bucket}/{r.prefix}"
    verb = f"{len(r.would_rewrap)} would be re-wrapped" if r.dry_run else f"{r.rewrapped} re-wrapped"
    w(
        f"rewrap {where} -> {r.to_key}{' (dry run)' if r.dry_run else ''}: {r.processed} objects, "
        f"{verb}, {r.skipped} skipped ({r.already} already under {r.to_key}, "
        f"{len(r.unencrypted)} not written through s3proxy, {len(r.sse_c)} SSE-C, {len(r.gone)} deleted), "
        f"{r.failed} failed, {elapsed:.1f} s\n"
    )
    if r.resumed_after is not None or r.retried:
        w(f"resumed: {r.retried} failed objects retried, listing after {r.resumed_after!r}\n")
    _listing(w, "would re-wrap", [f"{key} ({current} -> {r.to_key})" for key, current in sorted(r.would_rewrap)])
    _listing(w, "skipped, not written through s3proxy (no envelope)", sorted(r.unencrypted))
    _listing(w, "skipped, SSE-C (only the client has the key)", sorted(r.sse_c))
    _listing(w, "skipped, deleted since listed", sorted(r.gone))
    for msg in r.warnings:
        w(f"warning: {msg}\n")
    for key, reason in sorted(r.failures.items()):
        w(f"failed: {key}: {reason}\n")
    if r.listing_error:
        w(f"failed: listing stopped: {r.listing_error}\n")
    if not r.ok and not r.dry_run:
        w(f"state saved in {state_path}; run the same command again to retry and resume\n")
    out.flush()
