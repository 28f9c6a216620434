"""``DataKeyCache``: fewer key-service calls, bounded memory, plaintext keys zeroed.

Encrypt side
    ``(backend, key id, canonical context) -> DataKey``.  One DEK serves many
    objects until any limit is hit: age (``encrypt_ttl``), objects
    (``encrypt_max_objects``) or bytes (``encrypt_max_bytes``, the caller
    passes each object's expected size; unknown sizes count as
    ``unknown_object_bytes``).  Safe only because every object and part
    derives its own key from a fresh salt (docs/FORMAT.md).

Decrypt side
    ``(wrapped blob, backend, key id, algorithm, canonical context) -> DEK``
    with a TTL and LRU capacity.  With ``offline_grace`` > 0 an entry past its
    TTL is still served, for up to ``offline_grace`` more seconds, while the
    backend raises KeyUnavailable; a permanent error (disabled key...) drops
    it at once: a disabled key fails closed.  After a KeyUnavailable the
    backend is left alone for ``negative_ttl`` seconds: stale entries are
    served at once instead of after another round of retries.

Both sides
    * a short negative cache for permanent errors (InvalidWrappedKey,
      KeyNotFound, KeyDisabled);
    * single-flight: concurrent misses for one key make one backend call;
    * plaintext keys live in ``bytearray``s that are zeroed when evicted
      (best effort: Python and the backends' clients may hold other copies);
      the cache never writes anything to disk;
    * callers always get their *own copy* of a DEK (an eviction never zeroes
      a key a request is still using) and may zero it when done.

Counters are plain attributes (``cache.stats["encrypt"].hits``, ``cache.hits``)
and, when a ``prometheus_client.CollectorRegistry`` is given, Prometheus
metrics registered in it.
(Entries, statistics, metrics and the single-flight record: :mod:`s3proxy.keys.cache_parts`.)
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Mapping
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, values

from .base import (
    DataKey,
    KeyServiceError,
    KeyUnavailable,
    WrappedKey,
    zeroize,
)
from .cache_parts import (
    PERMANENT_ERRORS,
    CacheMetrics,
    CacheStats,
    CacheStatus,
    Flight,
    Negative,
    OnCollect,
    ReadEntry,
    Side,
    WriteEntry,
    context_key,
)
from .settings import CacheSettings

T = TypeVar("T")


class DataKeyCache:
    def __init__(
        self,
        *,
        enabled: bool = True,
        encrypt_ttl: float = 300.0,
        encrypt_max_objects: int = 100_000,
        encrypt_max_bytes: int = 1 << 40,
        encrypt_capacity: int = 1_000,
        unknown_object_bytes: int = 5 << 30,
        decrypt_ttl: float = 300.0,
        decrypt_capacity: int = 10_000,
        negative_ttl: float = 5.0,
        offline_grace: float = 0.0,
        sweep_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
    ):
        self.enabled = enabled
        self.encrypt_ttl = encrypt_ttl
        self.encrypt_max_objects = encrypt_max_objects
        self.encrypt_max_bytes = encrypt_max_bytes
        self.encrypt_capacity = encrypt_capacity
        self.unknown_object_bytes = unknown_object_bytes
        self.decrypt_ttl = decrypt_ttl
        self.decrypt_capacity = decrypt_capacity
        self.negative_ttl = negative_ttl
        self.offline_grace = offline_grace
        self.sweep_interval = sweep_interval
        self._clock = clock
        self._write: OrderedDict[Hashable, WriteEntry] = OrderedDict()
        self._read: OrderedDict[Hashable, ReadEntry] = OrderedDict()
        self._negative: dict[Side, OrderedDict[Hashable, Negative]] = {
            "encrypt": OrderedDict(),
            "decrypt": OrderedDict(),
        }
        self._write_inflight: dict[Hashable, Flight[DataKey]] = {}
        self._read_inflight: dict[Hashable, Flight[bytearray]] = {}
        self._last_sweep = clock()
        # backend name -> until when stale entries are served without asking it
        self._down_until: dict[str, float] = {}
        self.stats: dict[Side, CacheStats] = {"encrypt": CacheStats(), "decrypt": CacheStats()}
        # In one process the metrics follow ``stats`` at each collection (issue 11: no lock per request)
        self._deferred = registry is not None and values.ValueClass is values.MutexValue
        self._flushed: dict[tuple[str, Side], int] = {}
        if registry is not None and self._deferred:
            registry.register(OnCollect(self._flush))
        self._metrics = CacheMetrics(registry) if registry is not None else None
        self._children: dict[tuple[str, str], Any] = {}  # labelled metric children, by (counter, side)

    @classmethod
    def from_settings(
        cls,
        settings: CacheSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        registry: CollectorRegistry | None = None,
    ) -> DataKeyCache:
        return cls(
            enabled=settings.enabled,
            encrypt_ttl=settings.encrypt_ttl_seconds,
            encrypt_max_objects=settings.encrypt_max_objects,
            encrypt_max_bytes=settings.encrypt_max_bytes,
            encrypt_capacity=settings.encrypt_capacity,
            unknown_object_bytes=settings.unknown_object_bytes,
            decrypt_ttl=settings.decrypt_ttl_seconds,
            decrypt_capacity=settings.decrypt_capacity,
            negative_ttl=settings.negative_ttl_seconds,
            offline_grace=settings.offline_grace_seconds,
            clock=clock,
            registry=registry,
        )

    # -- counters -------------------------------------------------------------

    @property
    def hits(self) -> int:
        return sum(s.hits for s in self.stats.values())

    @property
    def misses(self) -> int:
        return sum(s.misses for s in self.stats.values())

    @property
    def evictions(self) -> int:
        return sum(s.evictions for s in self.stats.values())

    @property
    def backend_calls(self) -> int:
        return sum(s.backend_calls for s in self.stats.values())

    def __len__(self) -> int:
        return len(self._write) + len(self._read)

    def _count(self, side: Side, what: str, n: int = 1) -> None:
        stats = self.stats[side]
        setattr(stats, what, getattr(stats, what) + n)
        m = self._metrics
        if m is None or self._deferred:
            return
        if what == "stale_hits":
            m.stale_hits.inc(n)
        elif what not in ("coalesced", "evictions"):  # evictions carry a reason label
            child = self._children.get((what, side))
            if child is None:  # labels() validates and locks on every call: look each child up once
                counter: Any = getattr(m, what)
                child = self._children[(what, side)] = counter.labels(side)
            child.inc(n)

    def _flush(self) -> None:  # the counts since the last collection, from ``stats``
        m = self._metrics
        for side, stats in self.stats.items():
            for what in ("hits", "misses", "backend_calls", "negative_hits", "stale_hits"):
                now = getattr(stats, what)
                if m is not None and now != self._flushed.get((what, side), 0):
                    counter = m.stale_hits if what == "stale_hits" else getattr(m, what).labels(side)
                    counter.inc(now - self._flushed.get((what, side), 0))
                    self._flushed[(what, side)] = now

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.entries.labels("encrypt").set(len(self._write))
            self._metrics.entries.labels("decrypt").set(len(self._read))

    # -- eviction -------------------------------------------------------------

    def _evict_write(self, key: Hashable, reason: str) -> None:
        entry = self._write.pop(key, None)
        if entry is not None:
            zeroize(entry.data_key.plaintext)
            self._count("encrypt", "evictions")
            if self._metrics is not None:
                self._metrics.evictions.labels("encrypt", reason).inc()
            self._gauge()

    def _evict_read(self, key: Hashable, reason: str) -> None:
        entry = self._read.pop(key, None)
        if entry is not None:
            zeroize(entry.dek)
            self._count("decrypt", "evictions")
            if self._metrics is not None:
                self._metrics.evictions.labels("decrypt", reason).inc()
            self._gauge()

    def _write_expired(self, entry: WriteEntry, now: float) -> bool:
        return now - entry.created >= self.encrypt_ttl

    def _read_dead(self, entry: ReadEntry, now: float) -> bool:
        return now - entry.created >= self.decrypt_ttl + self.offline_grace

    def sweep(self) -> None:
        """Evict (and zero) every expired entry; also runs by itself at most every ``sweep_interval``."""
        now = self._clock()
        self._last_sweep = now
        for key in [k for k, e in self._write.items() if self._write_expired(e, now)]:
            self._evict_write(key, "ttl")
        for key in [k for k, e in self._read.items() if self._read_dead(e, now)]:
            self._evict_read(key, "ttl")
        for negatives in self._negative.values():
            for key in [k for k, n in negatives.items() if n.expires <= now]:
                del negatives[key]

    def _maybe_sweep(self) -> None:
        if self._clock() - self._last_sweep >= self.sweep_interval:
            self.sweep()

    def clear(self) -> None:
        """Evict and zero everything (shutdown)."""
        for key in list(self._write):
            self._evict_write(key, "clear")
        for key in list(self._read):
            self._evict_read(key, "clear")
        for negatives in self._negative.values():
            negatives.clear()

    # -- negative cache -------------------------------------------------------

    def _check_negative(self, side: Side, key: Hashable) -> None:
        negative = self._negative[side].get(key)
        if negative is None:
            return
        if negative.expires <= self._clock():
            del self._negative[side][key]
            return
        self._count(side, "negative_hits")
        raise negative.error(negative.message)

    def _remember_error(self, side: Side, key: Hashable, exc: KeyServiceError) -> None:
        if self.negative_ttl <= 0:
            return
        negatives = self._negative[side]
        negatives[key] = Negative(type(exc), str(exc), self._clock() + self.negative_ttl)
        negatives.move_to_end(key)
        capacity = self.decrypt_capacity if side == "decrypt" else self.encrypt_capacity
        while len(negatives) > capacity:
            negatives.popitem(last=False)

    # -- single flight --------------------------------------------------------

    @staticmethod
    def _start(
        inflight: dict[Hashable, Flight[T]],
        key: Hashable,
        coro: Coroutine[Any, Any, T],
        zero: Callable[[T], None],
    ) -> Flight[T]:
        flight = Flight(asyncio.ensure_future(coro), zero)
        inflight[key] = flight

        def done(t: asyncio.Task[T]) -> None:
            if inflight.get(key) is flight:
                del inflight[key]
            flight.maybe_zero()

        flight.task.add_done_callback(done)
        return flight

    # -- encrypt side ---------------------------------------------------------

    def _take(self, entry: WriteEntry, key: Hashable, nbytes: int) -> DataKey | None:
        """Count one use of ``entry`` for ``nbytes`` if every limit allows it."""
        now = self._clock()
        if self._write_expired(entry, now):
            self._evict_write(key, "ttl")
            return None
        if entry.uses >= self.encrypt_max_objects:
            self._evict_write(key, "max_objects")
            return None
        if entry.bytes_used + nbytes > self.encrypt_max_bytes:
            self._evict_write(key, "max_bytes")
            return None
        entry.uses += 1
        entry.bytes_used += nbytes
        data_key = DataKey(plaintext=bytearray(entry.data_key.plaintext), wrapped=entry.data_key.wrapped)
        self._write.move_to_end(key)
        if entry.uses >= self.encrypt_max_objects:
            self._evict_write(key, "max_objects")
        elif entry.bytes_used >= self.encrypt_max_bytes:
            self._evict_write(key, "max_bytes")
        return data_key

    async def _load_write(
        self, key: Hashable, load: Callable[[], Awaitable[DataKey]], leader_bytes: int
    ) -> DataKey:
        """Load a DataKey and cache it with the leader's use already counted."""
        self._count("encrypt", "backend_calls")
        try:
            data_key = await load()
        except PERMANENT_ERRORS as exc:
            self._remember_error("encrypt", key, exc)
            raise
        if self.encrypt_ttl <= 0:
            return data_key
        self._evict_write(key, "replaced")
        self._write[key] = WriteEntry(
            data_key=DataKey(plaintext=bytearray(data_key.plaintext), wrapped=data_key.wrapped),
            created=self._clock(),
            uses=1,
            bytes_used=leader_bytes,
        )
        if self.encrypt_max_objects <= 1:
            self._evict_write(key, "max_objects")
        elif leader_bytes >= self.encrypt_max_bytes:
            self._evict_write(key, "max_bytes")
        while len(self._write) > self.encrypt_capacity:
            self._evict_write(next(iter(self._write)), "capacity")
        self._gauge()
        return data_key

    async def data_key_for_write(
        self,
        backend: str,
        key_id: str,
        context: Mapping[str, str],
        object_bytes: int | None,
        load: Callable[[], Awaitable[DataKey]],
    ) -> tuple[DataKey, CacheStatus]:
        """A DEK for one object of ``object_bytes`` bytes (None: unknown), from cache or ``load()``.

        The returned DataKey's ``plaintext`` is the caller's own copy.
        """
        if not self.enabled:
            self._count("encrypt", "backend_calls")
            return await load(), "off"
        self._maybe_sweep()
        nbytes = self.unknown_object_bytes if object_bytes is None else max(0, object_bytes)
        key = (backend, key_id, context_key(context))
        self._check_negative("encrypt", key)
        if nbytes > self.encrypt_max_bytes:
            # Larger than a whole entry's budget: its own key, never shared.
            self._count("encrypt", "misses")
            self._count("encrypt", "backend_calls")
            try:
                return await load(), "miss"
            except PERMANENT_ERRORS as exc:
                self._remember_error("encrypt", key, exc)
                raise
        while True:
            entry = self._write.get(key)
            if entry is not None:
                data_key = self._take(entry, key, nbytes)
                if data_key is not None:
                    self._count("encrypt", "hits")
                    return data_key, "hit"
            flight = self._write_inflight.get(key)
            leader = flight is None
            if flight is None:
                flight = self._start(
                    self._write_inflight, key, self._load_write(key, load, nbytes), lambda dk: zeroize(dk.plaintext)
                )
            flight.waiters += 1
            try:
                try:
                    loaded = await asyncio.shield(flight.task)
                except BaseException:
                    if leader:
                        self._count("encrypt", "misses")
                    raise
                if leader:
                    # The leader's use was counted when the entry was stored.
                    self._count("encrypt", "misses")
                    return DataKey(plaintext=bytearray(loaded.plaintext), wrapped=loaded.wrapped), "miss"
                entry = self._write.get(key)
                if entry is not None and entry.data_key.wrapped is loaded.wrapped:
                    data_key = self._take(entry, key, nbytes)
                    if data_key is not None:
                        self._count("encrypt", "hits")
                        self._count("encrypt", "coalesced")
                        return data_key, "hit"
            finally:
                flight.waiters -= 1
                flight.maybe_zero()
            # A waiter whose shared key ran out: go round and load another.

    # -- decrypt side ---------------------------------------------------------

    async def _load_read(
        self, key: Hashable, backend: str, load: Callable[[], Awaitable[bytearray]]
    ) -> bytearray:
        self._count("decrypt", "backend_calls")
        try:
            dek = await load()
        except PERMANENT_ERRORS as exc:
            self._evict_read(key, "error")  # fail closed, even inside the grace period
            self._remember_error("decrypt", key, exc)
            raise
        except KeyUnavailable:
            if self.offline_grace > 0 and self.negative_ttl > 0:
                self._down_until[backend] = self._clock() + self.negative_ttl
            raise
        self._down_until.pop(backend, None)
        if self.decrypt_ttl > 0:
            self._evict_read(key, "replaced")
            self._read[key] = ReadEntry(dek=bytearray(dek), created=self._clock())
            while len(self._read) > self.decrypt_capacity:
                self._evict_read(next(iter(self._read)), "capacity")
            self._gauge()
        return dek

    async def data_key_for_read(
        self,
        wrapped: WrappedKey,
        context: Mapping[str, str],
        load: Callable[[], Awaitable[bytearray]],
    ) -> tuple[bytearray, CacheStatus]:
        """The DEK of ``wrapped`` (the caller's own copy), from cache or ``load()``."""
        if not self.enabled:
            self._count("decrypt", "backend_calls")
            return await load(), "off"
        self._maybe_sweep()
        key = (wrapped.backend, wrapped.key_id, wrapped.algorithm, wrapped.blob, context_key(context))
        self._check_negative("decrypt", key)
        entry = self._read.get(key)
        if entry is not None:
            now = self._clock()
            if now - entry.created < self.decrypt_ttl:
                self._read.move_to_end(key)
                self._count("decrypt", "hits")
                return bytearray(entry.dek), "hit"
            if self._read_dead(entry, now):
                self._evict_read(key, "ttl")
            elif self._down_until.get(wrapped.backend, 0.0) > now:
                # Inside the offline grace and the backend failed moments ago:
                # serve the stale key now instead of waiting for its retries.
                self._read.move_to_end(key)
                self._count("decrypt", "hits")
                self._count("decrypt", "stale_hits")
                return bytearray(entry.dek), "stale"
            # else: past its TTL but inside the offline grace: refresh, and
            # fall back on it only if the backend is unavailable.
        flight = self._read_inflight.get(key)
        leader = flight is None
        if flight is None:
            flight = self._start(self._read_inflight, key, self._load_read(key, wrapped.backend, load), zeroize)
        flight.waiters += 1
        try:
            try:
                dek = await asyncio.shield(flight.task)
            except KeyUnavailable:
                entry = self._read.get(key)
                if entry is not None and not self._read_dead(entry, self._clock()):
                    self._read.move_to_end(key)
                    self._count("decrypt", "hits")
                    self._count("decrypt", "stale_hits")
                    return bytearray(entry.dek), "stale"
                if leader:
                    self._count("decrypt", "misses")
                raise
            except BaseException:
                if leader:
                    self._count("decrypt", "misses")
                raise
            if leader:
                self._count("decrypt", "misses")
                return bytearray(dek), "miss"
            self._count("decrypt", "hits")
            self._count("decrypt", "coalesced")
            return bytearray(dek), "hit"
        finally:
            flight.waiters -= 1
            flight.maybe_zero()
