"""Resource exhaustion and backend failure (findings A and C).

Attackers:

* an authenticated client with valid credentials that opens uploads which
  announce a body and never send it, to pin every backend connection ("one
  client starves everyone");
* an anonymous client that dribbles request headers (slowloris) or just holds
  connections open;
* a backend that dies in the middle of an upload.

Every limit is set to about a second in each test's own proxy, so the tests
stay short.  Whatever the attack, other clients must be served promptly or
told ``503 SlowDown`` (with Retry-After) -- never a 500, never a hang -- and a
request whose response has not started must end with an S3 XML error, not a
dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import select
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from tests.conftest import CLIENT_AK, CLIENT_SK, Backend, Proxy, proxy_settings, start_proxy, stop_proxy
from tests.integration.helpers import Reply, assert_s3_error, object_url, rand, send_signed, sign

BYSTANDER_AK = "AKIDS3PROXYBYSTAND01"
BYSTANDER_SK = "s3proxy-test-secret-key-bystander-000001"
ATTACKER = (CLIENT_AK, CLIENT_SK)  # valid credentials, full grants
BYSTANDER = (BYSTANDER_AK, BYSTANDER_SK)
IDENTITIES = [
    {"name": "attacker", "access_key": CLIENT_AK, "secret_key": CLIENT_SK},
    {"name": "bystander", "access_key": BYSTANDER_AK, "secret_key": BYSTANDER_SK},
]


# --------------------------------------------------------------------- proxies and raw requests


@pytest.fixture()
def make_proxy(backend: Backend) -> Iterator[Callable[..., Proxy]]:
    """Start a dedicated proxy with its own limits; stopped (quickly) at teardown."""
    started: list[Proxy] = []

    def make(limits: dict[str, Any] | None = None, backend_over: dict[str, Any] | None = None,
             target: Backend | None = None) -> Proxy:
        s = proxy_settings(target or backend, identities=IDENTITIES, limits=limits or {}, shutdown_timeout=1)
        if backend_over:
            s = s.model_copy(update={"backend": s.backend.model_copy(update=backend_over)})
        p = start_proxy(s)
        started.append(p)
        return p

    yield make
    for p in started:
        stop_proxy(p)


@contextlib.contextmanager
def temp_bucket(p: Proxy) -> Iterator[str]:
    c = p.client(*BYSTANDER)
    name = "lim-" + uuid.uuid4().hex[:12]
    c.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            for o in c.list_objects_v2(Bucket=name).get("Contents", []):
                c.delete_object(Bucket=name, Key=o["Key"])
            c.delete_bucket(Bucket=name)


def connect(p: Proxy, timeout: float = 10) -> socket.socket:
    parts = urlsplit(p.url)
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout)


def put_head(p: Proxy, bucket: str, key: str, creds: tuple[str, str], length: int) -> bytes:
    """Request line and headers of a validly signed PUT announcing ``length`` body bytes."""
    url = object_url(p.url, bucket, key)
    req = sign("PUT", url, *creds, payload_hash="UNSIGNED-PAYLOAD")
    path = url.split(p.url, 1)[1]
    head = f"PUT {path} HTTP/1.1\r\nHost: {p.url.split('//', 1)[1]}\r\nContent-Length: {length}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in req.headers.items()) + "\r\n"
    return head.encode()


def stalled_put(p: Proxy, bucket: str, key: str, creds: tuple[str, str] = ATTACKER,
                declared: int = 100_000, sent: bytes = b"0123456789") -> socket.socket:
    """The attack: announce ``declared`` bytes, send a few, then go quiet."""
    s = connect(p)
    s.sendall(put_head(p, bucket, key, creds, declared) + sent)
    return s


def read_reply(s: socket.socket, timeout: float, method: str = "PUT") -> Reply:
    """One response from a raw socket; ``Reply(None, aborted=True)`` if the server closed without one."""
    s.settimeout(timeout)
    resp = http.client.HTTPResponse(s, method=method)
    try:
        resp.begin()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        return Reply(resp.status, hdrs, resp.read())
    except (http.client.RemoteDisconnected, ConnectionError) as e:
        return Reply(None, aborted=True, exc=e, body=None)


def closed_by_server(s: socket.socket, within: float) -> bool:
    """The server closed the connection within ``within`` seconds (EOF or reset)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if s.recv(65536) == b"":
                return True
        except TimeoutError:
            return False
        except ConnectionError:
            return True
    return False


def request(p: Proxy, method: str, bucket: str, key: str, creds: tuple[str, str] = BYSTANDER,
            body: bytes = b"", timeout: float = 5) -> tuple[Reply, float]:
    t0 = time.monotonic()
    r = send_signed(sign(method, object_url(p.url, bucket, key), *creds, body=body), timeout=timeout)
    return r, time.monotonic() - t0


def assert_slow_down(r: Reply) -> None:
    assert_s3_error(r, 503, "SlowDown")
    assert r.header("retry-after") is not None, r.headers


def settle(p: Proxy, timeout: float = 5) -> None:
    """Every request has left the proxy and its counters are back at zero."""
    lim = p.state.limiter
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (lim.in_flight or lim.by_identity):
        time.sleep(0.05)
    assert (lim.in_flight, lim.by_identity) == (0, {})


# --------------------------------------------------------------------- A1: request-body idle timeout


def test_stalled_body_ends_with_request_timeout_and_stores_nothing(make_proxy: Callable[..., Proxy]) -> None:
    p = make_proxy(limits={"body_idle_timeout": 1})
    with temp_bucket(p) as bucket:
        s = stalled_put(p, bucket, "stalled")
        t0 = time.monotonic()
        r = read_reply(s, timeout=6)
        elapsed = time.monotonic() - t0
        err = assert_s3_error(r, 400, "RequestTimeout")
        assert "not read from or written to within the timeout period" in err["Message"]
        assert 0.8 <= elapsed < 4, elapsed
        assert closed_by_server(s, 2), "the connection must not be reused after a cut body"
        s.close()
        r, _ = request(p, "GET", bucket, "stalled")
        assert r.status == 404, (r.status, r.body)
        assert p.client(*BYSTANDER).list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
        settle(p)


def test_slow_but_steady_upload_is_not_cut(make_proxy: Callable[..., Proxy]) -> None:
    """Only a stall counts: a body that keeps trickling for longer than every timeout is fine."""
    p = make_proxy(limits={"body_idle_timeout": 1, "header_timeout": 1, "keepalive_timeout": 1})
    with temp_bucket(p) as bucket:
        data = rand(12 * 1024)
        s = connect(p)
        s.sendall(put_head(p, bucket, "slow", ATTACKER, len(data)))
        for i in range(0, len(data), 1024):  # ~3 s in all, never more than 0.25 s apart
            time.sleep(0.25)
            s.sendall(data[i:i + 1024])
        r = read_reply(s, timeout=5)
        assert r.status == 200, r.body
        s.close()
        assert p.client(*BYSTANDER).get_object(Bucket=bucket, Key="slow")["Body"].read() == data


# --------------------------------------------------------------------- A2/A3: in-flight and pool limits


def test_stalled_uploads_cannot_starve_other_clients(make_proxy: Callable[..., Proxy]) -> None:
    """The reported attack, scaled down: more stalled PUTs than backend connections."""
    p = make_proxy(
        limits={"max_requests_per_identity": 2, "body_idle_timeout": 2},
        backend_over={"max_connections": 4, "pool_timeout": 0.5},
    )
    with temp_bucket(p) as bucket:
        socks = [stalled_put(p, bucket, f"pin-{i}") for i in range(6)]
        # Over its budget the attacker is told to slow down at once; two uploads stay pinned.
        time.sleep(0.7)
        answered, _, _ = select.select(socks, [], [], 0)
        pinned = [s for s in socks if s not in answered]
        assert len(pinned) == 2, len(answered)
        for s in answered:
            assert_slow_down(read_reply(s, timeout=2))
        # Meanwhile another client is served promptly.
        r, took = request(p, "PUT", bucket, "bystander", body=b"hello")
        assert r.status == 200 and took < 2, (r.status, r.body, took)
        r, took = request(p, "GET", bucket, "bystander")
        assert (r.status, r.body) == (200, b"hello") and took < 2, (r.status, took)
        # The pinned uploads are cut by the body idle timeout; nothing stored.
        for s in pinned:
            assert_s3_error(read_reply(s, timeout=5), 400, "RequestTimeout")
            s.close()
        for s in socks:
            s.close()
        keys = [o["Key"] for o in p.client(*BYSTANDER).list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert keys == ["bystander"]
        settle(p)


def test_global_in_flight_limit_is_slow_down(make_proxy: Callable[..., Proxy]) -> None:
    p = make_proxy(limits={"max_requests": 3, "max_requests_per_identity": 10, "body_idle_timeout": 2})
    with temp_bucket(p) as bucket:
        request(p, "PUT", bucket, "obj", body=b"data")
        socks = [stalled_put(p, bucket, f"pin-{i}") for i in range(3)]
        time.sleep(0.3)
        r, took = request(p, "GET", bucket, "obj")
        assert_slow_down(r)
        assert took < 2, took
        for s in socks:
            assert_s3_error(read_reply(s, timeout=5), 400, "RequestTimeout")
            s.close()
        settle(p)
        r, _ = request(p, "GET", bucket, "obj")
        assert (r.status, r.body) == (200, b"data")


def test_backend_pool_exhaustion_is_slow_down_not_500(make_proxy: Callable[..., Proxy]) -> None:
    p = make_proxy(
        limits={"max_requests_per_identity": 10, "body_idle_timeout": 3},
        backend_over={"max_connections": 2, "pool_timeout": 0.5},
    )
    with temp_bucket(p) as bucket:
        request(p, "PUT", bucket, "obj", body=b"data")
        socks = [stalled_put(p, bucket, f"pin-{i}") for i in range(2)]  # hold both backend connections
        time.sleep(0.3)
        r, took = request(p, "GET", bucket, "obj", timeout=8)
        assert_slow_down(r)
        assert took < 2.5, took
        for s in socks:
            assert_s3_error(read_reply(s, timeout=6), 400, "RequestTimeout")
            s.close()
        r, _ = request(p, "GET", bucket, "obj")
        assert (r.status, r.body) == (200, b"data")
        settle(p)


def test_forged_requests_do_not_use_up_anothers_budget(make_proxy: Callable[..., Proxy]) -> None:
    """Requests carrying the bystander's access key but a wrong signature are not counted as the bystander."""
    p = make_proxy(limits={"max_requests_per_identity": 2, "body_idle_timeout": 2})
    with temp_bucket(p) as bucket:
        forged = [stalled_put(p, bucket, f"f-{i}", creds=(BYSTANDER_AK, "not-the-secret")) for i in range(5)]
        for s in forged:
            assert_s3_error(read_reply(s, timeout=3), 403, "SignatureDoesNotMatch")
        r, _ = request(p, "PUT", bucket, "mine", body=b"ok")
        assert r.status == 200, r.body
        for s in forged:
            s.close()
        settle(p)


# --------------------------------------------------------------------- A4/A5: connections


def _dribble(socks: list[socket.socket], stop: threading.Event) -> None:
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    i = 0
    while not stop.is_set() and i < len(head):
        for s in socks:
            with contextlib.suppress(OSError):
                s.send(head[i:i + 1])
        i += 1
        stop.wait(0.2)


def test_slowloris_connections_are_cut_and_others_served(make_proxy: Callable[..., Proxy]) -> None:
    p = make_proxy(limits={"max_connections": 6, "header_timeout": 1, "keepalive_timeout": 30})
    with temp_bucket(p) as bucket:
        request(p, "PUT", bucket, "obj", body=b"data")
        time.sleep(0.2)  # let the setup connections go
        attackers = [connect(p) for _ in range(6)]
        stop = threading.Event()
        t = threading.Thread(target=_dribble, args=(attackers, stop), daemon=True)
        t.start()
        try:
            t0 = time.monotonic()
            served = None
            while time.monotonic() - t0 < 5:
                r, _ = request(p, "GET", bucket, "obj", timeout=3)
                if r.status == 200:
                    served = time.monotonic() - t0
                    break
                # While every connection slot is taken: a clean refusal, never a 500 or a hang.
                assert r.status is None or r.status == 503, (r.status, r.body)
                if r.status == 503:
                    assert_slow_down(r)
                time.sleep(0.1)
            assert served is not None and served < 3.5, served
            for s in attackers:
                assert closed_by_server(s, 2), "a dribbling connection was left open"
        finally:
            stop.set()
            t.join(5)
            for s in attackers:
                s.close()


def test_connection_limit_refuses_extra_connections(make_proxy: Callable[..., Proxy]) -> None:
    p = make_proxy(limits={"max_connections": 3})
    lim = p.state.limiter
    with temp_bucket(p) as bucket:
        request(p, "PUT", bucket, "obj", body=b"data")
        time.sleep(0.2)
        before = lim.connections  # the bucket fixture's boto3 client keeps one open
        idle = [connect(p) for _ in range(3 - before)]
        time.sleep(0.2)
        assert lim.connections == 3
        extra = connect(p)
        r = read_reply(extra, timeout=3, method="GET")
        assert_slow_down(r)
        assert r.header("connection") == "close"
        extra.close()
        for s in idle:
            s.close()
        deadline = time.monotonic() + 3
        while lim.connections > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lim.connections == before
        r, _ = request(p, "GET", bucket, "obj")
        assert (r.status, r.body) == (200, b"data")


def test_idle_connections_are_closed(make_proxy: Callable[..., Proxy]) -> None:
    p = make_proxy(limits={"keepalive_timeout": 1})
    with temp_bucket(p) as bucket:
        request(p, "PUT", bucket, "obj", body=b"data")
        silent = connect(p)  # never sends a byte
        kept = connect(p)
        req = sign("GET", object_url(p.url, bucket, "obj"), *BYSTANDER)
        path = object_url(p.url, bucket, "obj").split(p.url, 1)[1]
        head = f"GET {path} HTTP/1.1\r\nHost: {p.url.split('//', 1)[1]}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in req.headers.items()) + "\r\n"
        kept.sendall(head.encode())
        resp = http.client.HTTPResponse(kept, method="GET")
        resp.begin()
        assert (resp.status, resp.read()) == (200, b"data")
        t0 = time.monotonic()
        assert closed_by_server(kept, 3)
        assert closed_by_server(silent, 3)
        assert time.monotonic() - t0 < 3
        kept.close()
        silent.close()


# --------------------------------------------------------------------- C: the backend dies mid-upload


class FakeBackend:
    """A raw TCP "S3" on 127.0.0.1 that misbehaves on purpose (its own thread and loop)."""

    def __init__(self, behaviour: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(asyncio.start_server(behaviour, "127.0.0.1", 0))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fake-backend")
        self.thread.start()
        port = self.server.sockets[0].getsockname()[1]
        self.backend = Backend(f"http://127.0.0.1:{port}", "fake", "fake-secret", "us-east-1", "fake")

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def _kill(writer: asyncio.StreamWriter, how: str) -> None:
    if how == "reset":
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    else:
        writer.close()


def _dies_when_body_pauses(how: str) -> Callable[..., Any]:
    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        got = 0
        while True:  # take what the proxy forwards until it goes quiet, then die
            try:
                chunk = await asyncio.wait_for(reader.read(1 << 20), 0.3)
            except TimeoutError:
                break
            if not chunk:
                break
            got += len(chunk)
        _kill(writer, how)

    return behaviour


@pytest.fixture()
def fake_backend() -> Iterator[Callable[..., FakeBackend]]:
    made: list[FakeBackend] = []

    def make(behaviour: Callable[..., Any]) -> FakeBackend:
        fb = FakeBackend(behaviour)
        made.append(fb)
        return fb

    yield make
    for fb in made:
        fb.close()


@pytest.mark.parametrize("how", ["close", "reset"])
def test_backend_dying_mid_upload_is_503(make_proxy: Callable[..., Proxy], fake_backend: Callable[..., FakeBackend],
                                         how: str) -> None:
    """The client is slow, the backend dies while the proxy waits for the next client bytes."""
    fb = fake_backend(_dies_when_body_pauses(how))
    p = make_proxy(target=fb.backend)  # encrypt mode, the default
    data = rand(1_000_000)
    s = connect(p)
    s.sendall(put_head(p, "bkt", "obj", ATTACKER, len(data)) + data[:600_000])
    time.sleep(1.0)
    with contextlib.suppress(OSError):
        s.sendall(data[600_000:])
    r = read_reply(s, timeout=10)
    s.close()
    assert r.status is not None, f"connection dropped without a response: {r.exc!r}"
    assert_s3_error(r, 503, "ServiceUnavailable")
    settle(p)


def test_backend_dying_mid_upload_fast_client_is_503(make_proxy: Callable[..., Proxy],
                                                     fake_backend: Callable[..., FakeBackend]) -> None:
    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(10_000)
        _kill(writer, "close")

    p = make_proxy(target=fake_backend(behaviour).backend)
    r, _ = request(p, "PUT", "bkt", "obj", creds=ATTACKER, body=rand(2_000_000), timeout=10)
    assert_s3_error(r, 503, "ServiceUnavailable")


def test_backend_dying_while_answering_upload_is_503(make_proxy: Callable[..., Proxy],
                                                     fake_backend: Callable[..., FakeBackend]) -> None:
    """The backend takes the whole body, starts its answer and dies: still 503, not 500."""
    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(_content_length(head))
        writer.write(b'HTTP/1.1 200 OK\r\nETag: "abc"\r\nContent-Length: 100\r\n\r\nabc')
        await writer.drain()
        _kill(writer, "reset")

    p = make_proxy(target=fake_backend(behaviour).backend)
    r, _ = request(p, "PUT", "bkt", "obj", creds=ATTACKER, body=rand(50_000), timeout=10)
    assert_s3_error(r, 503, "ServiceUnavailable")


def test_backend_connection_reset_is_503_not_a_dropped_connection(make_proxy: Callable[..., Proxy]) -> None:
    """A pooled backend connection that turns out dead ("Cannot write to closing transport")."""
    p = make_proxy()
    with temp_bucket(p) as bucket:
        real = p.state.backend.request

        async def flaky(method: str, b: Any, key: Any = None, **kw: Any) -> Any:
            if method == "POST" and ("uploads", "") in list(kw.get("query", ())):
                raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
            return await real(method, b, key, **kw)

        p.state.backend.request = flaky
        try:
            r = send_signed(sign("POST", object_url(p.url, bucket, "mp", "uploads="), *BYSTANDER))
        finally:
            p.state.backend.request = real
        assert r.status is not None, f"connection dropped without a response: {r.exc!r}"
        assert_s3_error(r, 503, "ServiceUnavailable")
        assert r.header("retry-after")
