"""Where a running proxy's backend capabilities come from and where they go.

``CapabilityWatch`` keeps a running proxy's knowledge current: a named ``backend.profile`` pins
the capability set documented for that backend (``s3proxy.backend.profiles``, sources in
docs/BACKENDS.md) without any request; ``auto`` probes (``s3proxy.backend.probes``) in the
background and again every ``probe_interval``.  Each result goes to an ``apply`` function
(``s3proxy.server.apply_capabilities``: the listing's "-N ETags" knowledge,
``AppState.backend_capabilities``, the ``s3proxy_backend_capability`` gauge), with one
``backend.capabilities`` log line per result (``log_fields``).

The values themselves (``Capabilities``, ``CAPABILITIES``, ``copies_pinned``) are in
``s3proxy.backend.profiles``; import them from there.  This module imports ``backend.probes``
and ``backend.profiles`` only: nothing above the backend layer (the state and the apply
function are handed in), and nothing in the backend imports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from s3proxy.backend.probes import probe
from s3proxy.backend.profiles import CAPABILITIES, Capabilities, from_profile

__all__ = ["CapabilityWatch", "log_fields"]


def log_fields(caps: Capabilities) -> dict[str, Any]:
    """One structured log line's fields: source, bucket, requests, seconds, capability=value."""
    fields: dict[str, Any] = {"source": caps.source, "bucket": caps.bucket, "requests": caps.requests,
                              "seconds": caps.seconds}
    fields.update({n: caps.value(n) for n in CAPABILITIES})
    meta = caps.findings.get("user_metadata")
    if meta is not None and meta.amount is not None:
        fields["user_metadata_bytes"] = meta.amount
    return fields


class CapabilityWatch:
    """Keeps ``AppState.backend_capabilities`` current for a running proxy.

    A named profile is applied at once.  ``auto`` with a ``probe_bucket`` probes in the
    background (start-up never waits for it), then every ``probe_interval`` seconds; while the
    backend does not answer, it tries again after 30 s, 60 s, ... (at most ``probe_interval``),
    keeping what an earlier probe found.  ``status`` is what ``/readyz`` shows.
    """

    RETRY = 30.0

    def __init__(self, state: Any, log: Any, apply: Callable[[Any, Capabilities], None]) -> None:
        self.state = state
        self.log = log
        self.apply = apply
        cfg = state.settings.backend
        # None: nothing to find out (auto without a probe bucket), and /readyz says nothing.
        self.status: str | None = "pending" if cfg.profile != "auto" or cfg.probe_bucket else None

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a bug here must not pass silently, nor stop the proxy
            self.status = "failed"
            self.log.exception("backend.capabilities_failed")

    async def _run(self) -> None:
        cfg = self.state.settings.backend
        if cfg.profile != "auto":
            caps = from_profile(cfg.profile)
            self.apply(self.state, caps)
            self.status = caps.source
            self.log.info("backend.capabilities", **log_fields(caps))
            return
        if not cfg.probe_bucket:
            return
        retry = self.RETRY
        while True:
            caps = await probe(self.state.backend, cfg.probe_bucket, timeout=cfg.probe_timeout)
            if caps.reachable():
                self.apply(self.state, caps)
                self.status = "probed"
                self.log.info("backend.capabilities", **log_fields(caps))
                wait, retry = cfg.probe_interval, self.RETRY
            else:
                if getattr(self.state, "backend_capabilities", None) is None:
                    self.state.metrics.set_backend_capabilities({n: "unknown" for n in CAPABILITIES})
                    self.status = "backend unreachable"
                self.log.warning("backend.probe_failed", bucket=cfg.probe_bucket,
                                 reason=caps.findings["put_get"].reason, retry_s=min(retry, cfg.probe_interval))
                wait, retry = min(retry, cfg.probe_interval), retry * 2
            await asyncio.sleep(wait)
