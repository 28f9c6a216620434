"""DataKeyCache: every limit, with a fake clock and counting loaders."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from s3proxy.keys.base import (
    DataKey,
    InvalidWrappedKey,
    KeyAccessDenied,
    KeyDisabled,
    KeyNotFound,
    KeyServiceError,
    KeyUnavailable,
    WrappedKey,
)
from s3proxy.keys.cache import DataKeyCache

from .conftest import FakeClock

CTX = {"bucket": "b"}


class Loader:
    """A counting backend stand-in: new DataKeys / fixed DEKs, or scripted failures."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail: KeyServiceError | None = None
        self.gate: asyncio.Event | None = None
        self.made: list[bytearray] = []

    async def write(self) -> DataKey:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        dek = bytearray(os.urandom(32))
        self.made.append(dek)
        return DataKey(dek, WrappedKey("fake", "k", "X", os.urandom(8)))

    async def read(self) -> bytearray:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        dek = bytearray(b"\x42" * 32)
        self.made.append(dek)
        return dek


def make(clock: FakeClock, **kw: Any) -> DataKeyCache:
    return DataKeyCache(clock=clock, sweep_interval=1e9, **kw)


def wrapped(n: int = 0) -> WrappedKey:
    return WrappedKey("fake", "k", "X", bytes([n]) * 8)


async def write(cache: DataKeyCache, loader: Loader, nbytes: int | None = 10, ctx: dict[str, str] = CTX,
                key_id: str = "k") -> tuple[DataKey, str]:
    return await cache.data_key_for_write("fake", key_id, ctx, nbytes, loader.write)


# -- encrypt side ---------------------------------------------------------------


async def test_write_reuse_until_ttl(clock: FakeClock) -> None:
    cache, loader = make(clock, encrypt_ttl=60), Loader()
    a, sa = await write(cache, loader)
    clock.advance(59)
    b, sb = await write(cache, loader)
    assert (sa, sb) == ("miss", "hit") and loader.calls == 1
    assert a.plaintext == b.plaintext and a.plaintext is not b.plaintext  # copies
    stored = cache._write[next(iter(cache._write))].data_key.plaintext
    clock.advance(1)
    c, sc = await write(cache, loader)
    assert sc == "miss" and loader.calls == 2 and c.plaintext != a.plaintext
    assert stored == bytes(32)  # the expired entry was zeroed...
    assert a.plaintext == b.plaintext != bytes(32)  # ...but not the callers' copies


async def test_write_max_objects(clock: FakeClock) -> None:
    cache, loader = make(clock, encrypt_max_objects=3), Loader()
    keys = [await write(cache, loader) for _ in range(7)]
    assert [s for _, s in keys] == ["miss", "hit", "hit", "miss", "hit", "hit", "miss"]
    assert loader.calls == 3 and len({bytes(k.plaintext) for k, _ in keys}) == 3
    assert cache.stats["encrypt"].evictions == 2  # retired as soon as used up


async def test_write_max_bytes(clock: FakeClock) -> None:
    cache, loader = make(clock, encrypt_max_bytes=100, unknown_object_bytes=60), Loader()
    statuses = [(await write(cache, loader, n))[1] for n in (40, 40, 20, 1)]
    # 40+40+20 = 100 fits exactly (then retired); the next object needs a new key
    assert statuses == ["miss", "hit", "hit", "miss"]
    assert loader.calls == 2
    # an object that does not fit the remaining budget gets a new key
    assert (await write(cache, loader, 99))[1] == "hit"  # 1 + 99
    assert (await write(cache, loader, 50))[1] == "miss"
    assert (await write(cache, loader, 51))[1] == "miss"  # 50 + 51 > 100
    # unknown sizes count as unknown_object_bytes (60)
    assert (await write(cache, loader, None))[1] == "miss"  # 51 + 60 > 100
    assert (await write(cache, loader, None))[1] == "miss"  # 60 + 60 > 100


async def test_write_object_larger_than_budget_gets_its_own_key(clock: FakeClock) -> None:
    cache, loader = make(clock, encrypt_max_bytes=100), Loader()
    await write(cache, loader, 10)
    big, status = await write(cache, loader, 1000)
    assert status == "miss" and loader.calls == 2
    again, status = await write(cache, loader, 10)
    assert status == "hit" and again.plaintext != big.plaintext  # the big key was never shared


async def test_write_keyed_by_backend_key_and_context(clock: FakeClock) -> None:
    cache, loader = make(clock), Loader()
    await write(cache, loader)
    await write(cache, loader, ctx={"bucket": "other"})
    await write(cache, loader, key_id="k2")
    await cache.data_key_for_write("other-backend", "k", CTX, 10, loader.write)
    assert loader.calls == 4
    # context order does not matter
    assert (await write(cache, loader, ctx={"tenant": "x", "bucket": "b"}))[1] == "miss"
    assert (await write(cache, loader, ctx={"bucket": "b", "tenant": "x"}))[1] == "hit"


async def test_write_capacity_is_lru(clock: FakeClock) -> None:
    cache, loader = make(clock, encrypt_capacity=2), Loader()
    for bucket in ("a", "b", "a", "c"):  # "a" used again before "c" pushes "b" out
        await write(cache, loader, ctx={"bucket": bucket})
    assert (await write(cache, loader, ctx={"bucket": "a"}))[1] == "hit"
    assert (await write(cache, loader, ctx={"bucket": "b"}))[1] == "miss"


async def test_write_single_flight(clock: FakeClock) -> None:
    cache, loader = make(clock, encrypt_max_objects=5), Loader()
    loader.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(write(cache, loader)) for _ in range(12)]
    await asyncio.sleep(0)
    loader.gate.set()
    results = await asyncio.gather(*tasks)
    assert loader.calls == 3  # 12 objects, 5 per key
    assert [s for _, s in results].count("miss") == 3
    per_key: dict[bytes, int] = {}
    for dk, _ in results:
        per_key[bytes(dk.plaintext)] = per_key.get(bytes(dk.plaintext), 0) + 1
    assert sorted(per_key.values()) == [2, 5, 5]
    assert all(d == bytes(32) for d in loader.made)  # the loaders' own buffers were zeroed


async def test_write_single_flight_shares_errors(clock: FakeClock) -> None:
    cache, loader = make(clock), Loader()
    loader.gate, loader.fail = asyncio.Event(), KeyDisabled("disabled")
    tasks = [asyncio.ensure_future(write(cache, loader)) for _ in range(10)]
    await asyncio.sleep(0)
    loader.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert loader.calls == 1 and all(isinstance(r, KeyDisabled) for r in results)


async def test_write_negative_cache(clock: FakeClock) -> None:
    cache, loader = make(clock, negative_ttl=5), Loader()
    loader.fail = KeyDisabled("key is disabled")
    for _ in range(3):
        with pytest.raises(KeyDisabled, match="disabled"):
            await write(cache, loader)
    assert loader.calls == 1 and cache.stats["encrypt"].negative_hits == 2
    loader.fail = None
    clock.advance(5)
    assert (await write(cache, loader))[1] == "miss"


async def test_cancelled_leader_does_not_lose_the_key(clock: FakeClock) -> None:
    cache, loader = make(clock), Loader()
    loader.gate = asyncio.Event()
    leader = asyncio.ensure_future(write(cache, loader))
    await asyncio.sleep(0)
    follower = asyncio.ensure_future(write(cache, loader))
    await asyncio.sleep(0)
    leader.cancel()
    loader.gate.set()
    dk, status = await follower
    assert status == "hit" and loader.calls == 1 and dk.plaintext != bytes(32)


# -- decrypt side ---------------------------------------------------------------


async def read(cache: DataKeyCache, loader: Loader, w: WrappedKey | None = None,
               ctx: dict[str, str] = CTX) -> tuple[bytearray, str]:
    return await cache.data_key_for_read(w or wrapped(), ctx, loader.read)


async def test_read_ttl(clock: FakeClock) -> None:
    cache, loader = make(clock, decrypt_ttl=30), Loader()
    a, sa = await read(cache, loader)
    clock.advance(29.9)
    b, sb = await read(cache, loader)
    clock.advance(0.1)
    c, sc = await read(cache, loader)
    assert (sa, sb, sc) == ("miss", "hit", "miss") and loader.calls == 2
    assert a == b == c and a is not b


async def test_read_keyed_by_blob_and_context(clock: FakeClock) -> None:
    cache, loader = make(clock), Loader()
    await read(cache, loader, wrapped(1))
    await read(cache, loader, wrapped(2))
    await read(cache, loader, wrapped(1), {"bucket": "other"})
    await read(cache, loader, WrappedKey("fake", "k2", "X", bytes([1]) * 8))
    await read(cache, loader, WrappedKey("other", "k", "X", bytes([1]) * 8))
    assert loader.calls == 5
    assert (await read(cache, loader, wrapped(1)))[1] == "hit"


async def test_read_lru_capacity(clock: FakeClock) -> None:
    cache, loader = make(clock, decrypt_capacity=2), Loader()
    await read(cache, loader, wrapped(1))
    await read(cache, loader, wrapped(2))
    await read(cache, loader, wrapped(1))  # 1 is now most recently used
    entry2 = cache._read[next(iter(cache._read))].dek
    await read(cache, loader, wrapped(3))  # evicts 2
    assert entry2 == bytes(32)  # zeroed on eviction
    assert (await read(cache, loader, wrapped(1)))[1] == "hit"
    assert (await read(cache, loader, wrapped(2)))[1] == "miss"
    assert cache.stats["decrypt"].evictions == 2


async def test_read_negative_cache(clock: FakeClock) -> None:
    for error in (InvalidWrappedKey("bad blob"), KeyNotFound("gone"), KeyDisabled("off")):
        cache, loader = make(clock, negative_ttl=2), Loader()
        loader.fail = error
        for _ in range(3):
            with pytest.raises(type(error)):
                await read(cache, loader)
        assert loader.calls == 1
        clock.advance(2)
        with pytest.raises(type(error)):
            await read(cache, loader)
        assert loader.calls == 2


async def test_read_transient_errors_are_not_negatively_cached(clock: FakeClock) -> None:
    for error in (KeyUnavailable("down"), KeyAccessDenied("iam")):
        cache, loader = make(clock, negative_ttl=60), Loader()
        loader.fail = error
        for _ in range(3):
            with pytest.raises(type(error)):
                await read(cache, loader)
        assert loader.calls == 3


async def test_negative_cache_disabled(clock: FakeClock) -> None:
    cache, loader = make(clock, negative_ttl=0), Loader()
    loader.fail = InvalidWrappedKey("bad")
    for _ in range(2):
        with pytest.raises(InvalidWrappedKey):
            await read(cache, loader)
    assert loader.calls == 2


async def test_offline_grace(clock: FakeClock) -> None:
    cache, loader = make(clock, decrypt_ttl=10, offline_grace=100, negative_ttl=0), Loader()
    dek, _ = await read(cache, loader)
    loader.fail = KeyUnavailable("KMS down")
    clock.advance(50)  # past the TTL, inside the grace
    stale, status = await read(cache, loader)
    assert status == "stale" and stale == dek and loader.calls == 2  # it did try the backend
    assert cache.stats["decrypt"].stale_hits == 1
    clock.advance(59.9)  # 109.9 s old
    assert (await read(cache, loader))[1] == "stale"
    clock.advance(0.1)  # 110 s: beyond TTL + grace
    with pytest.raises(KeyUnavailable):
        await read(cache, loader)
    # the backend comes back: a fresh entry
    loader.fail = None
    assert (await read(cache, loader))[1] == "miss"
    assert (await read(cache, loader))[1] == "hit"


async def test_offline_grace_does_not_wait_for_a_backend_that_just_failed(clock: FakeClock) -> None:
    cache, loader = make(clock, decrypt_ttl=10, offline_grace=100, negative_ttl=5), Loader()
    await read(cache, loader, wrapped(1))
    await read(cache, loader, wrapped(2))
    clock.advance(20)
    loader.fail = KeyUnavailable("down")
    assert (await read(cache, loader, wrapped(1)))[1] == "stale" and loader.calls == 3
    # for the next 5 s, stale entries are served without another backend round
    assert (await read(cache, loader, wrapped(1)))[1] == "stale"
    assert (await read(cache, loader, wrapped(2)))[1] == "stale"
    assert loader.calls == 3
    with pytest.raises(KeyUnavailable):  # a key that is not cached still asks the backend
        await read(cache, loader, wrapped(3))
    assert loader.calls == 4
    clock.advance(5)
    loader.fail = None
    assert (await read(cache, loader, wrapped(1)))[1] == "miss" and loader.calls == 5
    assert (await read(cache, loader, wrapped(2)))[1] == "miss"  # the backend is known to be up again


async def test_offline_grace_refreshes_when_backend_is_up(clock: FakeClock) -> None:
    cache, loader = make(clock, decrypt_ttl=10, offline_grace=100), Loader()
    await read(cache, loader)
    clock.advance(20)
    assert (await read(cache, loader))[1] == "miss" and loader.calls == 2
    clock.advance(5)
    assert (await read(cache, loader))[1] == "hit"


async def test_offline_grace_fails_closed_on_permanent_errors(clock: FakeClock) -> None:
    cache, loader = make(clock, decrypt_ttl=10, offline_grace=100, negative_ttl=0), Loader()
    await read(cache, loader)
    stored = next(iter(cache._read.values())).dek
    clock.advance(20)
    loader.fail = KeyDisabled("disabled")
    with pytest.raises(KeyDisabled):
        await read(cache, loader)
    assert stored == bytes(32) and len(cache._read) == 0
    loader.fail = KeyUnavailable("down")  # the disabled key's entry is gone for good
    with pytest.raises(KeyUnavailable):
        await read(cache, loader)


async def test_no_grace_means_expired_entries_are_dropped(clock: FakeClock) -> None:
    cache, loader = make(clock, decrypt_ttl=10), Loader()
    await read(cache, loader)
    clock.advance(10)
    loader.fail = KeyUnavailable("down")
    with pytest.raises(KeyUnavailable):
        await read(cache, loader)


async def test_read_single_flight(clock: FakeClock) -> None:
    cache, loader = make(clock), Loader()
    loader.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(read(cache, loader)) for _ in range(20)]
    await asyncio.sleep(0)
    loader.gate.set()
    results = await asyncio.gather(*tasks)
    assert loader.calls == 1
    assert [s for _, s in results].count("miss") == 1
    assert len({id(d) for d, _ in results}) == 20 and all(d == b"\x42" * 32 for d, _ in results)
    assert cache.stats["decrypt"].coalesced == 19
    assert loader.made[0] == bytes(32)  # the backend's buffer was zeroed after everyone copied it


async def test_read_single_flight_during_grace(clock: FakeClock) -> None:
    cache, loader = make(clock, decrypt_ttl=10, offline_grace=100, negative_ttl=0), Loader()
    await read(cache, loader)
    clock.advance(20)
    loader.gate, loader.fail = asyncio.Event(), KeyUnavailable("down")
    tasks = [asyncio.ensure_future(read(cache, loader)) for _ in range(10)]
    await asyncio.sleep(0)
    loader.gate.set()
    results = await asyncio.gather(*tasks)
    assert loader.calls == 2 and {s for _, s in results} == {"stale"}


# -- both -----------------------------------------------------------------------


async def test_sweep_and_clear_zero_everything(clock: FakeClock) -> None:
    cache, loader = make(clock, encrypt_ttl=10, decrypt_ttl=20), Loader()
    await write(cache, loader)
    await read(cache, loader)
    w_buf = next(iter(cache._write.values())).data_key.plaintext
    r_buf = next(iter(cache._read.values())).dek
    clock.advance(15)
    cache.sweep()
    assert w_buf == bytes(32) and r_buf != bytes(32) and len(cache) == 1
    cache.clear()
    assert r_buf == bytes(32) and len(cache) == 0


async def test_automatic_sweep(clock: FakeClock) -> None:
    cache = DataKeyCache(clock=clock, encrypt_ttl=10, sweep_interval=5)
    loader = Loader()
    await write(cache, loader, ctx={"bucket": "idle"})
    clock.advance(11)
    await write(cache, loader, ctx={"bucket": "busy"})  # triggers a sweep
    assert len(cache._write) == 1


async def test_disabled_cache_always_calls_the_backend(clock: FakeClock) -> None:
    cache, loader = make(clock, enabled=False), Loader()
    for _ in range(3):
        assert (await write(cache, loader))[1] == "off"
        assert (await read(cache, loader))[1] == "off"
    assert loader.calls == 6 and len(cache) == 0


async def test_counters_and_prometheus(clock: FakeClock) -> None:
    registry = CollectorRegistry()
    cache, loader = make(clock, registry=registry, decrypt_capacity=1), Loader()
    await read(cache, loader, wrapped(1))
    await read(cache, loader, wrapped(1))
    await read(cache, loader, wrapped(2))  # evicts 1
    await write(cache, loader)
    await write(cache, loader)
    assert (cache.hits, cache.misses, cache.evictions, cache.backend_calls) == (2, 3, 1, 3)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("s3proxy_key_cache_hits_total", side="decrypt") == 1
    assert sample("s3proxy_key_cache_hits_total", side="encrypt") == 1
    assert sample("s3proxy_key_cache_misses_total", side="decrypt") == 2
    assert sample("s3proxy_key_cache_backend_calls_total", side="encrypt") == 1
    assert sample("s3proxy_key_cache_evictions_total", side="decrypt", reason="capacity") == 1
    assert sample("s3proxy_key_cache_entries", side="decrypt") == 1
    # two caches never share metric objects (no module-level state)
    make(clock, registry=CollectorRegistry())


@pytest.mark.parametrize("max_objects", [1, 2, 3])
async def test_single_flight_never_exceeds_max_objects(clock: FakeClock, max_objects: int) -> None:
    cache, loader = make(clock, encrypt_max_objects=max_objects), Loader()
    loader.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(write(cache, loader)) for _ in range(10)]
    await asyncio.sleep(0)
    loader.gate.set()
    results = await asyncio.gather(*tasks)
    uses: dict[bytes, int] = {}
    for dk, _ in results:
        uses[bytes(dk.plaintext)] = uses.get(bytes(dk.plaintext), 0) + 1
    assert max(uses.values()) <= max_objects and sum(uses.values()) == 10


async def test_zero_ttl_never_shares(clock: FakeClock) -> None:
    cache, loader = make(clock, encrypt_ttl=0), Loader()
    keys = [await write(cache, loader) for _ in range(3)]
    assert loader.calls == 3 and len({bytes(k.plaintext) for k, _ in keys}) == 3 and len(cache) == 0
