"""Structured logging (structlog, JSON) and Prometheus metrics.

Metrics live in a per-app ``CollectorRegistry`` (no module-level state), so
several apps can run in one process (tests) without clashing.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("s3proxy_requests", "Requests by S3 operation and status", ["op", "status"], registry=r)
        self.latency = Histogram(
            "s3proxy_request_seconds", "Request latency by operation", ["op"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.bytes_in = Counter("s3proxy_client_bytes_in", "Plaintext bytes received from clients", registry=r)
        self.bytes_out = Counter("s3proxy_client_bytes_out", "Plaintext bytes sent to clients", registry=r)
        self.encrypted = Counter("s3proxy_encrypted_bytes", "Plaintext bytes encrypted", registry=r)
        self.decrypted = Counter("s3proxy_decrypted_bytes", "Plaintext bytes decrypted", registry=r)
        self.backend_errors = Counter("s3proxy_backend_errors", "Backend failures by kind", ["kind"], registry=r)
        self.key_errors = Counter("s3proxy_key_service_errors", "Key-service failures by code", ["code"], registry=r)
        self.integrity_failures = Counter(
            "s3proxy_integrity_failures", "Ciphertext that failed authentication", registry=r
        )
        self.in_flight = Gauge("s3proxy_in_flight_requests", "Requests being served", registry=r)
