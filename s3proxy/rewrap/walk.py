"""The resumable walk both ``rewrap`` and the bulk jobs (``s3proxy.bulkjob``) make over a bucket.

- ``Tracker``: the contiguous prefix of the listing in which every object is finished (what a
  rerun may list after);
- ``StateFile``: the JSON resume file (the finished prefix and the keys that failed), written
  atomically, and checked on load to belong to the same run;
- ``run_all``: run coroutines, cancelling the rest on the first failure.

Imports: ``backend.ops`` only.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from s3proxy.backend.ops import run_all

__all__ = ["CHECKPOINT_INTERVAL", "ListingError", "SetupError", "State", "StateFile", "Tracker", "run_all"]

CHECKPOINT_INTERVAL = 1.0  # seconds between state-file writes (besides page ends)


class SetupError(Exception):
    """The run cannot start (exit status 2)."""


class ListingError(Exception):
    """ListObjectsV2 failed: the walk stops (exit status 1, resumable)."""


@dataclass
class State:
    after: str | None = None
    failed: list[str] = field(default_factory=list)


class Tracker:
    """The contiguous prefix of the listing in which every object is finished."""

    def __init__(self, after: str | None):
        self.after = after
        self._keys: dict[int, str] = {}
        self._page_ends: set[int] = set()
        self._done: set[int] = set()
        self._next = 0
        self.reached_page_end = False

    def add(self, seq: int, key: str, page_end: bool) -> None:
        self._keys[seq] = key
        if page_end:
            self._page_ends.add(seq)

    def complete(self, seq: int) -> bool:
        """Mark ``seq`` finished; True if the finished prefix grew."""
        self._done.add(seq)
        grew = False
        while self._next in self._done:
            self._done.discard(self._next)
            self.after = self._keys.pop(self._next)
            if self._next in self._page_ends:
                self._page_ends.discard(self._next)
                self.reached_page_end = True
            self._next += 1
            grew = True
        return grew


class StateFile:
    """The resume file of one run: ``format`` (and ``version``, when given) name its kind,
    ``identity`` (bucket, prefix, ...) the run it belongs to; ``option`` is the command-line
    option that names another file (for the error message)."""

    def __init__(self, path: Path, fmt: str, identity: dict[str, Any], *, version: int | None = None,
                 option: str = "--state") -> None:
        self.path = path
        self.format = fmt
        self.identity = identity
        self.version = version
        self.option = option
        self.last_write = 0.0
        self.written_after: str | None = None

    def load(self) -> State:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return State()
        except (OSError, ValueError) as exc:
            raise SetupError(f"cannot read the state file {self.path}: {exc}") from None
        kind = self.format.removeprefix("s3proxy-").removesuffix("-state")
        if not isinstance(data, dict) or data.get("format") != self.format or (
            self.version is not None and data.get("version") != self.version
        ):
            raise SetupError(f"{self.path} is not an s3proxy {kind} state file")
        theirs = {k: data.get(k) for k in self.identity}
        if theirs != self.identity:
            described = ", ".join(f"{k} {v!r}" for k, v in theirs.items())
            raise SetupError(f"the state file {self.path} belongs to another run ({described}): "
                             f"finish that run, delete the file, or pass {self.option}")
        after, failed = data.get("after"), data.get("failed") or []
        if not isinstance(failed, list) or not all(isinstance(k, str) for k in failed) or not (
            after is None or isinstance(after, str)
        ):
            raise SetupError(f"the state file {self.path} is malformed")
        self.written_after = after
        return State(after=after, failed=list(failed))

    def write(self, after: str | None, failed: set[str], walk_complete: bool) -> None:
        head: dict[str, Any] = {"format": self.format}
        if self.version is not None:
            head["version"] = self.version
        data = {
            **head, **self.identity, "after": after, "failed": sorted(failed),
            # every listed object is finished (only "failed" is left to retry)
            "walk_complete": walk_complete,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)
        self.last_write = time.monotonic()
        self.written_after = after

    def checkpoint(self, tracker: Tracker, failed: set[str], walk_complete: bool, *, force: bool = False) -> None:
        """Write the state if the finished prefix moved (at most once a second, always at a page end)."""
        if not force:
            if tracker.after == self.written_after:
                return
            if not tracker.reached_page_end and time.monotonic() - self.last_write < CHECKPOINT_INTERVAL:
                return
        tracker.reached_page_end = False
        self.write(tracker.after, failed, walk_complete)

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
