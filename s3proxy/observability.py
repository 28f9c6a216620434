"""Structured logging (structlog, JSON) and Prometheus metrics.

Metrics live in a per-app ``CollectorRegistry`` (no module-level state), so
several apps can run in one process (tests) without clashing.

With ``--workers N`` the parent calls ``enable_multiprocess_metrics`` before
forking: prometheus-client's multiprocess mode, where every worker writes its
values to memory-mapped files in one directory and ``exposition`` (the admin
``/metrics``) adds them up, whichever worker answers the scrape.  Gauges say
how: ``livesum`` (in-flight requests, cached keys: the fleet's total over the
live workers) or ``livemin`` (certificate expiry).  In a single process none
of this is active and each app's registry is exposed as is.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, level.upper()), format="%(message)s")
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str = "s3proxy") -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_multiprocess_dir: str | None = None


def enable_multiprocess_metrics(directory: str) -> None:
    """Metrics of every process forked from now on go to ``directory`` and are added up.

    Call once, in the parent, before forking and before any metric exists.
    ``directory`` must be empty (a fresh one per run): files left by an earlier
    run would be counted again.
    """
    global _multiprocess_dir
    os.environ[MULTIPROC_ENV] = directory
    # prometheus-client chose its value class when it was imported; choose again.
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    _multiprocess_dir = directory


def disable_multiprocess_metrics() -> None:
    """Plain in-process metrics even if ``PROMETHEUS_MULTIPROC_DIR`` was set when prometheus-client was imported."""
    global _multiprocess_dir
    os.environ.pop(MULTIPROC_ENV, None)
    values.ValueClass = values.MutexValue
    _multiprocess_dir = None


def multiprocess_dir() -> str | None:
    """The directory of multiprocess metrics, if ``enable_multiprocess_metrics`` was called."""
    return _multiprocess_dir


def exposition(registry: CollectorRegistry) -> bytes:
    """The text of ``/metrics``: every worker's metrics added up, or ``registry``'s in one process."""
    if _multiprocess_dir is None:
        return generate_latest(registry)
    combined = CollectorRegistry()
    MultiProcessCollector(combined, path=_multiprocess_dir)  # type: ignore[no-untyped-call]
    return generate_latest(combined)


class _Hooks:
    """A collector without metrics that runs ``Metrics.on_collect`` callbacks when collected."""

    def __init__(self, hooks: list[Callable[[], None]]) -> None:
        self._hooks = hooks

    def collect(self) -> Iterator[Any]:
        for hook in self._hooks:
            hook()
        return iter(())


class _Sum:
    """A ``Counter`` whose increments add up in a plain number until the registry is collected
    (issue 11: ``Counter.inc`` takes a lock and checks the metric on each call).  One process only:
    with multiprocess metrics another worker may answer the scrape."""

    __slots__ = ("counter", "pending")

    def __init__(self, counter: Counter, metrics: Metrics) -> None:
        self.counter = counter
        self.pending = 0.0
        metrics.on_collect(self.flush)

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.pending += amount

    def flush(self) -> None:
        n, self.pending = self.pending, 0.0
        if n:
            self.counter.inc(n)


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        # Registered first, so collected first: what ``on_collect`` callbacks add is in the scrape.
        self._collect_hooks: list[Callable[[], None]] = []
        r.register(_Hooks(self._collect_hooks))
        self.requests = Counter("s3proxy_requests", "Requests by S3 operation and status", ["op", "status"], registry=r)
        self.latency = Histogram(
            "s3proxy_request_seconds", "Request latency by operation", ["op"], buckets=LATENCY_BUCKETS, registry=r
        )
        # per-request byte counts: in one process they add up in a ``_Sum`` until a scrape
        self.bytes_in = self._summed(Counter("s3proxy_client_bytes_in", "Plaintext bytes received from clients", registry=r))
        self.bytes_out = self._summed(Counter("s3proxy_client_bytes_out", "Plaintext bytes sent to clients", registry=r))
        self.encrypted = self._summed(Counter("s3proxy_encrypted_bytes", "Plaintext bytes encrypted", registry=r))
        self.decrypted = self._summed(Counter("s3proxy_decrypted_bytes", "Plaintext bytes decrypted", registry=r))
        self.backend_errors = Counter("s3proxy_backend_errors", "Backend failures by kind", ["kind"], registry=r)
        self.key_errors = Counter("s3proxy_key_service_errors", "Key-service failures by code", ["code"], registry=r)
        self.integrity_failures = Counter(
            "s3proxy_integrity_failures", "Ciphertext that failed authentication", registry=r
        )
        self.in_flight = Gauge(
            "s3proxy_in_flight_requests", "Requests being served", registry=r, multiprocess_mode="livesum"
        )
        self.tls_cert_expiry: Gauge | None = None  # created when TLS is on (see set_tls_cert_expiry)
        self.backend_capability = Gauge(
            "s3proxy_backend_capability",
            "What the storage backend can do (s3proxy.backend.capabilities): 1 for the current value "
            "(yes, no, unknown) of each capability, 0 for the others",
            ["capability", "value"], registry=r, multiprocess_mode="livemax",
        )

    def _summed(self, counter: Counter) -> Counter | _Sum:
        return counter if _multiprocess_dir is not None else _Sum(counter, self)

    def on_collect(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` whenever the registry is collected (a scrape), before any metric is read:
        values kept outside the metrics are added to them there (``state.RequestMetrics``)."""
        self._collect_hooks.append(hook)

    def set_backend_capabilities(self, values: Mapping[str, str]) -> None:
        """``s3proxy_backend_capability{capability,value}``: one series per value, the current one 1."""
        for name, current in values.items():
            for v in ("yes", "no", "unknown"):
                self.backend_capability.labels(name, v).set(1 if v == current else 0)

    def set_tls_cert_expiry(self, not_after: float) -> None:
        """``s3proxy_tls_cert_expiry_timestamp_seconds``: notAfter of the serving certificate.

        Exported only once set, so a proxy without TLS has no such series (an
        alert on ``... - time() < 14 * 86400`` then never fires for lack of TLS).
        """
        if self.tls_cert_expiry is None:
            self.tls_cert_expiry = Gauge(
                "s3proxy_tls_cert_expiry_timestamp_seconds",
                "Unix time at which the serving TLS certificate expires (its notAfter)",
                registry=self.registry,
                multiprocess_mode="livemin",
            )
        self.tls_cert_expiry.set(not_after)
