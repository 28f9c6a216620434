"""The running proxy's shared state (``AppState``), its request keys and the limiter.

Imported by the app, the server and every request handler; imports the backend client, the
settings and the key manager, never s3proxy.http."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram

from s3proxy.aws.errors import S3Error
from s3proxy.backend.client import BackendClient
from s3proxy.config import LimitSettings, Settings
from s3proxy.keys.manager import KeyManager
from s3proxy.observability import LATENCY_BUCKETS, Metrics, multiprocess_dir

ANONYMOUS = ""  # the per-identity budget key of unauthenticated requests


SLOW_DOWN_MESSAGE = "Please reduce your request rate."


def slow_down() -> S3Error:
    return S3Error("SlowDown", SLOW_DOWN_MESSAGE, 503)


class Limiter:
    """Counts open client connections and requests in flight (one worker process)."""

    def __init__(self, limits: LimitSettings, registry: CollectorRegistry | None) -> None:
        self.limits = limits
        self.connections = 0
        self.in_flight = 0
        self.by_identity: dict[str, int] = {}
        self.throttled = Counter(
            "s3proxy_throttled", "Requests and connections refused with 503 SlowDown, by limit",
            ["limit"], registry=registry,
        )

    # -- client connections (see s3proxy.server)
    def open_connection(self) -> bool:
        if self.connections >= self.limits.max_connections:
            self.throttled.labels("connections").inc()
            return False
        self.connections += 1
        return True

    def close_connection(self) -> None:
        self.connections -= 1

    # -- requests
    def admit(self, identity: str | None) -> Callable[[], None]:
        """Count one request (``identity``: an access key, ANONYMOUS, or None for
        a request that failed authentication); raises SlowDown when over a limit."""
        if self.in_flight >= self.limits.max_requests:
            self.throttled.labels("requests").inc()
            raise slow_down()
        if identity is not None:
            n = self.by_identity.get(identity, 0)
            if n >= self.limits.max_requests_per_identity:
                self.throttled.labels("identity").inc()
                raise slow_down()
            self.by_identity[identity] = n + 1
        self.in_flight += 1
        done = False

        def release() -> None:
            nonlocal done
            if done:
                return
            done = True
            self.in_flight -= 1
            if identity is not None:
                left = self.by_identity[identity] - 1
                if left:
                    self.by_identity[identity] = left
                else:
                    del self.by_identity[identity]

        return release


class RequestMetrics:
    """The per-request metrics: ``s3proxy_requests``, ``s3proxy_request_seconds`` and
    ``s3proxy_in_flight_requests``.

    In one process (issue 11) a request adds to plain counters here, and they are added to the
    Prometheus metrics when the registry is collected (``Metrics.on_collect``: every scrape and
    ``get_sample_value`` sees them): a labelled child's ``inc``/``observe`` take a lock per value.
    With multiprocess metrics (``--workers N``) a scrape may be answered by another worker, so
    every request goes to the metrics at once, through the labelled children, looked up once."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._count: dict[tuple[str, int], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        self.deferred = multiprocess_dir() is None
        self.active = 0  # requests in flight (deferred mode)
        self._counts: dict[tuple[str, int], int] = {}  # (op, status) -> requests not yet added
        self._hist: dict[str, list[float]] = {}  # op -> requests per latency bucket not yet added, then their sum
        if self.deferred:
            metrics.on_collect(self.flush)

    def begin(self) -> None:
        """A request starts (``s3proxy_in_flight_requests``)."""
        if self.deferred:
            self.active += 1
        else:
            self._metrics.in_flight.inc()

    def end(self, op: str, status: int, seconds: float) -> None:
        """A request that ``begin`` counted is over."""
        if self.deferred:
            self.active -= 1
        else:
            self._metrics.in_flight.dec()
        self.observe(op, status, seconds)

    def observe(self, op: str, status: int, seconds: float) -> None:
        if self.deferred:
            counts = self._counts
            counts[(op, status)] = counts.get((op, status), 0) + 1
            hist = self._hist.get(op)
            if hist is None:
                hist = self._hist[op] = [0.0] * (len(_BOUNDS) + 1)
            hist[bisect_left(_BOUNDS, seconds)] += 1  # the first bucket with seconds <= its bound
            hist[-1] += seconds
            return
        self._child_count(op, status).inc()
        self._child_latency(op).observe(seconds)

    def flush(self) -> None:
        """Add what the requests since the last flush counted to the metrics."""
        counts, self._counts = self._counts, {}
        hists, self._hist = self._hist, {}
        for (op, status), n in list(counts.items()):
            self._child_count(op, status).inc(n)
        for op, hist in list(hists.items()):
            child = self._child_latency(op)
            child._sum.inc(hist[-1])  # what Histogram.observe adds to, n observations at once
            for i, k in enumerate(hist[:-1]):
                if k:
                    child._buckets[i].inc(k)
        if self.deferred:
            self._metrics.in_flight.set(self.active)

    def _child_count(self, op: str, status: int) -> Counter:
        count = self._count.get((op, status))
        if count is None:
            count = self._count[(op, status)] = self._metrics.requests.labels(op, str(status))
        return count

    def _child_latency(self, op: str) -> Histogram:
        latency = self._latency.get(op)
        if latency is None:
            latency = self._latency[op] = self._metrics.latency.labels(op)
        return latency


_BOUNDS = (*LATENCY_BUCKETS, float("inf"))  # Histogram's upper bounds (it adds +Inf)


@dataclass
class AppState:
    settings: Settings
    backend: BackendClient
    keys: KeyManager
    metrics: Metrics
    limiter: Limiter
    part_tables: dict[tuple[str, str, str], tuple[int, ...]] = field(default_factory=dict)
    draining: bool = False
    request_metrics: RequestMetrics = field(init=False)

    def __post_init__(self) -> None:
        self.request_metrics = RequestMetrics(self.metrics)


STATE: web.AppKey[AppState] = web.AppKey("s3proxy_state", AppState)


REQUEST_ID: web.RequestKey[str] = web.RequestKey("s3proxy_request_id", str)


OP: web.RequestKey[str] = web.RequestKey("s3proxy_op", str)


# The verified caller (s3proxy.http.auth.Caller), when admission authenticated the request.
CALLER: web.RequestKey[Any] = web.RequestKey("s3proxy_caller", object)


RESPONSE_STARTED: web.RequestKey[bool] = web.RequestKey("s3proxy_response_started", bool)


BODY_TIMED_OUT: web.RequestKey[bool] = web.RequestKey("s3proxy_body_timed_out", bool)
