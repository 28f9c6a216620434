"""``AuditLog``: one JSON line per object operation that used a key and per key-service call.

Fields: ``time`` (UTC, ISO 8601), ``event`` (``key.object`` or ``key.backend``),
``request_id``, ``identity``, ``operation``, ``bucket``, ``key``,
``backend``, ``key_id``, ``call`` (backend events), ``cache`` (object events:
hit / miss / stale / off / none), ``outcome`` (``ok`` or the error class),
``error`` (its message), ``latency_ms`` and ``context`` (the encryption
context, which is never secret).  Every field is given explicitly by the
caller; there is no free-form payload, so key material cannot slip in.

Lines are buffered off the request path: on an event loop a line is queued and
the queue is written (one ``write`` and one flush) ``flush_interval`` seconds
after its first line, or at once when it holds ``max_buffered`` lines; outside
an event loop (tools, tests) every line is written at once.  ``close`` writes
what is queued, and so does interpreter exit (``weakref.finalize``), so a clean
shutdown loses no line; a crash loses at most ``flush_interval`` seconds of
lines.  There is no fsync, as before buffering.  A stream object given by the
caller (not a target name or path) is written per line unless
``flush_interval`` is given.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from .settings import AuditSettings

PIPE_BUF = 4096  # POSIX: writes up to this size to a pipe are atomic


@dataclass(frozen=True)
class AuditInfo:
    """Who asked for a key, for what: passed by the HTTP handlers."""

    request_id: str
    identity: str  # the client's access key id (or "anonymous")
    operation: str  # S3 operation, e.g. "PutObject"
    bucket: str
    key: str


class _Sink:
    """The queue of formatted lines and where they go; no reference to the ``AuditLog``, so
    ``weakref.finalize`` can flush it at interpreter exit."""

    __slots__ = ("stream", "owned", "lock", "chunks", "lines", "size", "count", "handle", "loop")

    def __init__(self, stream: TextIO | None, owned: TextIO | None) -> None:
        self.stream = stream
        self.owned = owned
        self.lock = threading.Lock()
        self.chunks: list[str] = []  # full chunks: whole lines, at most PIPE_BUF bytes each
        self.lines: list[str] = []  # the chunk being filled
        self.size = 0  # its bytes
        self.count = 0  # lines queued
        self.handle: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the handle's (a closed loop never calls it)

    def add(self, line: str) -> int:
        """Queue a line (with the lock held); returns the number of lines queued."""
        n = len(line) if line.isascii() else len(line.encode("utf-8", "surrogateescape"))
        if self.size + n > PIPE_BUF and self.lines:
            self.chunks.append("".join(self.lines))
            self.lines, self.size = [line], n
        else:
            self.lines.append(line)
            self.size += n
        self.count += 1
        return self.count

    def flush(self) -> None:
        """Write the queued lines, in chunks of whole lines of at most ``PIPE_BUF`` bytes, each
        with one ``write`` system call: workers sharing a pipe or an appended file never split
        each other's lines (as when each line was written by itself)."""
        with self.lock:
            self.handle = None
            chunks, self.chunks = self.chunks, []
            if self.lines:
                chunks.append("".join(self.lines))
            self.lines, self.size, self.count = [], 0, 0
            stream = self.stream
            if stream is None:
                return
            for chunk in chunks:
                stream.write(chunk)
                stream.flush()

    def close(self) -> None:
        self.flush()
        with self.lock:
            if self.owned is not None:
                self.owned.close()
                self.owned = None
            self.stream = None


class AuditLog:
    def __init__(
        self,
        target: str | Path | TextIO | None = "stdout",
        *,
        clock: Callable[[], float] = time.time,
        flush_interval: float | None = None,
        max_buffered: int = 256,
    ):
        self._clock = clock
        owned: TextIO | None = None
        stream: TextIO | None
        named = True
        if target is None or target == "off":
            stream = None
        elif target == "stdout":
            stream = sys.stdout
        elif target == "stderr":
            stream = sys.stderr
        elif isinstance(target, (str, Path)):
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            owned = stream = path.open("a", encoding="utf-8")
        else:
            stream, named = target, False
        self._sink = _Sink(stream, owned)
        self._interval = flush_interval if flush_interval is not None else (0.05 if named else 0.0)
        self._max = max_buffered
        weakref.finalize(self, self._sink.close if owned is not None else self._sink.flush)

    @classmethod
    def from_settings(cls, settings: AuditSettings) -> AuditLog:
        return cls(settings.target)

    @property
    def enabled(self) -> bool:
        return self._sink.stream is not None

    def _write(self, record: dict[str, Any]) -> None:
        sink = self._sink
        if sink.stream is None:
            return
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
        loop = None
        if self._interval > 0:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
        with sink.lock:
            queued = sink.add(line) < self._max and loop is not None
            if queued and (sink.handle is None or sink.loop is not loop):
                assert loop is not None
                sink.handle, sink.loop = loop.call_later(self._interval, sink.flush), loop
        if not queued:
            sink.flush()

    def flush(self) -> None:
        """Write the queued lines now."""
        self._sink.flush()

    def _base(self, event: str, info: AuditInfo | None) -> dict[str, Any]:
        return {
            "time": datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "event": event,
            "request_id": info.request_id if info else None,
            "identity": info.identity if info else None,
            "operation": info.operation if info else None,
            "bucket": info.bucket if info else None,
            "key": info.key if info else None,
        }

    def object_event(
        self,
        info: AuditInfo | None,
        *,
        backend: str,
        key_id: str | None,
        cache: str,
        outcome: str,
        latency_ms: float,
        error: str | None = None,
        context: Mapping[str, str] | None = None,
    ) -> None:
        """An object operation used (or failed to get) a data key."""
        record = self._base("key.object", info)
        record.update(
            backend=backend,
            key_id=key_id,
            cache=cache,
            outcome=outcome,
            latency_ms=round(latency_ms, 3),
        )
        if error is not None:
            record["error"] = error
        if context is not None:
            record["context"] = dict(context)
        self._write(record)

    def backend_event(
        self,
        info: AuditInfo | None,
        *,
        call: str,
        backend: str,
        key_id: str | None,
        outcome: str,
        latency_ms: float,
        error: str | None = None,
        context: Mapping[str, str] | None = None,
    ) -> None:
        """One call to a key service (generate, decrypt, rewrap, check)."""
        record = self._base("key.backend", info)
        record.update(
            call=call,
            backend=backend,
            key_id=key_id,
            outcome=outcome,
            latency_ms=round(latency_ms, 3),
        )
        if error is not None:
            record["error"] = error
        if context is not None:
            record["context"] = dict(context)
        self._write(record)

    def close(self) -> None:
        """Write the queued lines and stop; a file target is closed."""
        self._sink.close()
