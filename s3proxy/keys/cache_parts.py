"""The data-key cache's parts: its entries, single-flight record, statistics and Prometheus
metrics (:mod:`s3proxy.keys.cache` has the cache and the story).  Entries hold plaintext keys:
nothing here logs or renders them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge

from .base import DataKey, InvalidWrappedKey, KeyDisabled, KeyNotFound, KeyServiceError, check_context

T = TypeVar("T")
Side = Literal["encrypt", "decrypt"]


def context_key(context: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The encryption context as a cache key: its sorted pairs, which identify it exactly as its
    canonical JSON does, without encoding JSON on every request."""
    pairs = tuple(sorted(context.items()))
    if not all(type(k) is str and type(v) is str for k, v in pairs):
        check_context(context)  # raises the TypeError the canonical form raises
    return pairs


# "hit": served from cache (including requests that joined another request's
# backend call), "miss": this request made the backend call, "stale": served
# past its TTL during a backend outage (offline grace), "off": no cache.
CacheStatus = Literal["hit", "miss", "stale", "off"]

PERMANENT_ERRORS: tuple[type[KeyServiceError], ...] = (InvalidWrappedKey, KeyNotFound, KeyDisabled)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    backend_calls: int = 0
    coalesced: int = 0  # hits that waited for another request's backend call
    negative_hits: int = 0
    stale_hits: int = 0


class Flight(Generic[T]):
    """One backend call shared by every request that missed the same key.

    Requesters copy the result as soon as they resume; the last one out
    (or the task itself, if nobody waits any more) zeroes the original.
    """

    def __init__(self, task: asyncio.Task[T], zero: Callable[[T], None]):
        self.task = task
        self.waiters = 0
        self._zero = zero
        self._zeroed = False

    def maybe_zero(self) -> None:
        if self._zeroed or self.waiters or not self.task.done() or self.task.cancelled():
            return
        if self.task.exception() is None:  # also marks the exception retrieved
            self._zero(self.task.result())
        self._zeroed = True


@dataclass
class WriteEntry:
    data_key: DataKey
    created: float
    uses: int = 0
    bytes_used: int = 0


@dataclass
class ReadEntry:
    dek: bytearray
    created: float


@dataclass
class Negative:
    error: type[KeyServiceError]
    message: str
    expires: float


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.hits = Counter(
            "s3proxy_key_cache_hits", "Data-key cache hits", ["side"], registry=registry
        )
        self.misses = Counter(
            "s3proxy_key_cache_misses", "Data-key cache misses", ["side"], registry=registry
        )
        self.evictions = Counter(
            "s3proxy_key_cache_evictions", "Data-key cache evictions", ["side", "reason"], registry=registry
        )
        self.backend_calls = Counter(
            "s3proxy_key_cache_backend_calls",
            "Key-backend calls made by the data-key cache",
            ["side"],
            registry=registry,
        )
        self.negative_hits = Counter(
            "s3proxy_key_cache_negative_hits",
            "Requests failed from the negative cache",
            ["side"],
            registry=registry,
        )
        self.stale_hits = Counter(
            "s3proxy_key_cache_stale_hits",
            "Decrypt-side entries served past their TTL during a backend outage",
            registry=registry,
        )
        # Each worker has its own cache: with --workers, the sum over the live ones.
        self.entries = Gauge(
            "s3proxy_key_cache_entries", "Cached data keys", ["side"], registry=registry, multiprocess_mode="livesum"
        )


class OnCollect:
    """A collector of no metrics that calls ``hook`` whenever its registry is collected (a scrape):
    registered before the metrics it updates, so the scrape reads them updated."""

    def __init__(self, hook: Callable[[], None]) -> None:
        self._hook = hook

    def collect(self) -> Iterator[Any]:
        self._hook()
        return iter(())
