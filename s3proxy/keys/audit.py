"""``AuditLog``: one JSON line per object operation that used a key and per key-service call.

Fields: ``time`` (UTC, ISO 8601), ``event`` (``key.object`` or ``key.backend``),
``request_id``, ``identity``, ``operation``, ``bucket``, ``key``,
``backend``, ``key_id``, ``call`` (backend events), ``cache`` (object events:
hit / miss / stale / off / none), ``outcome`` (``ok`` or the error class),
``error`` (its message), ``latency_ms`` and ``context`` (the encryption
context, which is never secret).  Every field is given explicitly by the
caller; there is no free-form payload, so key material cannot slip in.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from .settings import AuditSettings


@dataclass(frozen=True)
class AuditInfo:
    """Who asked for a key, for what: passed by the HTTP handlers."""

    request_id: str
    identity: str  # the client's access key id (or "anonymous")
    operation: str  # S3 operation, e.g. "PutObject"
    bucket: str
    key: str


class AuditLog:
    def __init__(self, target: str | Path | TextIO | None = "stdout", *, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._lock = threading.Lock()
        self._owned: TextIO | None = None
        self._stream: TextIO | None
        if target is None or target == "off":
            self._stream = None
        elif target == "stdout":
            self._stream = sys.stdout
        elif target == "stderr":
            self._stream = sys.stderr
        elif isinstance(target, (str, Path)):
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._owned = self._stream = path.open("a", encoding="utf-8", buffering=1)
        else:
            self._stream = target

    @classmethod
    def from_settings(cls, settings: AuditSettings) -> AuditLog:
        return cls(settings.target)

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def _write(self, record: dict[str, Any]) -> None:
        stream = self._stream
        if stream is None:
            return
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
        with self._lock:
            stream.write(line + "\n")
            stream.flush()

    def _base(self, event: str, info: AuditInfo | None) -> dict[str, Any]:
        now = datetime.fromtimestamp(self._clock(), UTC)
        return {
            "time": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
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
        with self._lock:
            if self._owned is not None:
                self._owned.close()
                self._owned = None
            self._stream = None
