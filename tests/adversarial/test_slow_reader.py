"""A client that stops reading a response (issue 9, left open after finding 5).

Attacker: an authenticated client who starts large GETs and never reads them, to keep request
slots and backend connections busy forever.  Promise: after ``limits.send_idle_timeout`` without
taking a byte the connection is closed and the request's slot is freed; a slow but steady
reader is never cut.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import CLIENT_AK, CLIENT_SK, Backend, Proxy, proxy_settings, start_proxy, stop_proxy
from tests.integration.helpers import object_url, sign

SIZE = 24 * 1024 * 1024


@pytest.fixture(scope="module")
def slow_proxy(backend: Backend) -> Iterator[Proxy]:
    p = start_proxy(proxy_settings(backend, limits={"send_idle_timeout": 1.0}, shutdown_timeout=1))
    yield p
    stop_proxy(p)


@pytest.fixture(scope="module")
def big_object(slow_proxy: Proxy) -> Iterator[tuple[str, str]]:
    c = slow_proxy.client()
    b = "slow-" + uuid.uuid4().hex[:12]
    c.create_bucket(Bucket=b)
    c.put_object(Bucket=b, Key="big", Body=b"\x07" * SIZE)
    yield b, "big"
    c.delete_object(Bucket=b, Key="big")
    c.delete_bucket(Bucket=b)


def open_get(p: Proxy, bucket: str, key: str) -> socket.socket:
    req = sign("GET", object_url(p.url, bucket, key), CLIENT_AK, CLIENT_SK)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # fill up quickly
    s.connect(("127.0.0.1", p.port))
    lines = [f"GET /{bucket}/{key} HTTP/1.1", f"Host: 127.0.0.1:{p.port}"]
    lines += [f"{k}: {v}" for k, v in req.headers.items() if k.lower() != "host"]
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return s


def drain(s: socket.socket, deadline: float) -> tuple[int, bool]:
    """Read until EOF/reset or the deadline: (bytes read, connection ended)."""
    s.settimeout(0.5)
    got = 0
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(1 << 20)
        except TimeoutError:
            continue
        except ConnectionError:
            return got, True
        if not chunk:
            return got, True
        got += len(chunk)
    return got, False


def in_flight(p: Proxy) -> int:
    return int(p.state.limiter.in_flight)


def test_client_that_stops_reading_is_cut_off(slow_proxy: Proxy, big_object: tuple[str, str]) -> None:
    bucket, key = big_object
    s = open_get(slow_proxy, bucket, key)
    try:
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        time.sleep(4)  # read nothing: well past the 1 s idle timeout (ticks of 0.25 s)
        got, ended = drain(s, time.monotonic() + 20)
        assert ended, "the connection was not closed"
        assert got < SIZE, "the whole body was delivered to a client that was not reading"
    finally:
        s.close()
    deadline = time.monotonic() + 5
    while in_flight(slow_proxy) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert in_flight(slow_proxy) == 0, "the request slot was not freed"
    # and the proxy serves the next client normally
    assert slow_proxy.client().head_object(Bucket=bucket, Key=key)["ContentLength"] == SIZE


def test_slow_but_steady_reader_is_not_cut(slow_proxy: Proxy, big_object: tuple[str, str]) -> None:
    bucket, key = big_object
    s = open_get(slow_proxy, bucket, key)
    try:
        s.settimeout(5)
        got = 0
        end = time.monotonic() + 4  # 4 s at ~320 KiB/s: far from the whole body, never idle 1 s
        while time.monotonic() < end:
            chunk = s.recv(32 * 1024)
            assert chunk, "a steady reader was cut off"
            got += len(chunk)
            time.sleep(0.1)
        assert 0 < got < SIZE
    finally:
        s.close()


def test_stalled_reader_metric_is_not_an_integrity_failure(slow_proxy: Proxy, big_object: tuple[str, str]) -> Any:
    before = slow_proxy.state.metrics.integrity_failures._value.get()
    bucket, key = big_object
    s = open_get(slow_proxy, bucket, key)
    try:
        s.recv(4096)
        time.sleep(3)
    finally:
        s.close()
    time.sleep(0.5)
    assert slow_proxy.state.metrics.integrity_failures._value.get() == before


def test_large_gets_use_one_connection_when_the_pool_is_busy(slow_proxy: Proxy, big_object: tuple[str, str]) -> None:
    """One identity's large GETs must not take every backend connection (get_parallelism each):
    with the pool busy, segments are fetched one at a time, and the read is still exact."""
    backend = slow_proxy.state.backend
    assert backend.spare_connections() == slow_proxy.settings.backend.max_connections
    bucket, key = big_object
    original = backend.spare_connections
    backend.spare_connections = lambda: 0  # type: ignore[method-assign]
    try:
        body = slow_proxy.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    finally:
        backend.spare_connections = original  # type: ignore[method-assign]
    assert body == b"\x07" * SIZE
