"""The serving certificate's expiry: `s3proxy_tls_cert_expiry_timestamp_seconds`
and a `tls.cert_expires_soon` warning within 14 days (at start, on SIGHUP
reload, once a day)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from prometheus_client import generate_latest

from s3proxy import server as server_mod
from s3proxy.observability import Metrics
from tests.conftest import Backend
from tests.integration.test_metrics_workers import scrape, wait_for
from tests.integration.test_service import serve

GAUGE = "s3proxy_tls_cert_expiry_timestamp_seconds"


def write_cert(directory: Path, days: float, name: str = "tls") -> tuple[Path, Path, dt.datetime]:
    """A self-signed certificate for 127.0.0.1 that expires ``days`` from now (whole seconds)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    not_after = now + dt.timedelta(days=days)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, not_after


def served_not_after(port: int) -> dt.datetime:
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=10)
    return x509.load_pem_x509_certificate(pem.encode()).not_valid_after_utc


def test_gauge_and_warning_at_start_and_after_reload(backend: Backend, tmp_path: Path) -> None:
    cert, key, not_after = write_cert(tmp_path, 3)
    p = serve(backend, tmp_path, "--workers", "2", S3PROXY_TLS_CERT=str(cert), S3PROXY_TLS_KEY=str(key))
    try:
        wait_for(lambda: len([r for r in p.logs() if r.get("event") == "server.started"]) == 2, 30)
        assert served_not_after(p.port) == not_after
        # One series for the process, whichever worker answers.
        for _ in range(3):
            assert scrape(p)[GAUGE] == [({}, not_after.timestamp())]
        warnings = [r for r in p.logs() if r.get("event") == "tls.cert_expires_soon"]
        assert len(warnings) == 2  # one per worker
        for w in warnings:
            assert w["level"] == "warning"
            assert w["cert"] == str(cert)
            assert w["expired"] is False
            assert 2.9 < w["days_left"] <= 3
            assert dt.datetime.fromisoformat(w["not_after"]) == not_after

        # Renewal: new files renamed into place, then SIGHUP (forwarded to every worker).
        new_cert, new_key, new_not_after = write_cert(tmp_path, 90, "new")
        os.replace(new_key, key)
        os.replace(new_cert, cert)
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len([r for r in p.logs() if r.get("event") == "tls.reloaded"]) == 2)
        reloaded = [r for r in p.logs() if r.get("event") == "tls.reloaded"]
        assert all(dt.datetime.fromisoformat(r["not_after"]) == new_not_after for r in reloaded)
        for _ in range(3):
            assert scrape(p)[GAUGE] == [({}, new_not_after.timestamp())]
        assert served_not_after(p.port) == new_not_after
        assert len([r for r in p.logs() if r.get("event") == "tls.cert_expires_soon"]) == 2  # none after the renewal

        # A reload of a certificate about to expire warns again.
        soon_cert, soon_key, soon_not_after = write_cert(tmp_path, 1, "soon")
        os.replace(soon_key, key)
        os.replace(soon_cert, cert)
        p.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: len([r for r in p.logs() if r.get("event") == "tls.cert_expires_soon"]) == 4)
        wait_for(lambda: scrape(p)[GAUGE] == [({}, soon_not_after.timestamp())])
    finally:
        assert p.stop() == 0


def test_plain_http_has_no_expiry_gauge(backend: Backend, tmp_path: Path) -> None:
    p = serve(backend, tmp_path)
    try:
        m = scrape(p)
        assert "s3proxy_requests_total" in m or "s3proxy_in_flight_requests" in m
        assert GAUGE not in m
        assert not [r for r in p.logs() if r.get("event", "").startswith("tls.")]
    finally:
        p.stop()


class _Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.events.append(("warning", event, kw))

    def error(self, event: str, **kw: Any) -> None:
        self.events.append(("error", event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self.events.append(("info", event, kw))


def _gauge(metrics: Metrics) -> float | None:
    v = metrics.registry.get_sample_value(GAUGE)
    return v


def test_daily_reminder_and_expired_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _Log()
    monkeypatch.setattr(server_mod, "log", log)
    cert, _key, not_after = write_cert(tmp_path, 3)
    metrics = Metrics()
    assert _gauge(metrics) is None  # no series before a certificate is loaded
    assert GAUGE.encode() not in generate_latest(metrics.registry)
    expiry = server_mod.CertExpiry(cert, metrics)
    assert expiry.load() == not_after
    assert _gauge(metrics) == not_after.timestamp()
    assert [e[1] for e in log.events] == ["tls.cert_expires_soon"]

    async def watch_a_while() -> None:
        task = asyncio.create_task(expiry.watch(interval=0.02))
        await asyncio.sleep(0.15)
        task.cancel()

    asyncio.run(watch_a_while())
    reminders = [e for e in log.events if e[1] == "tls.cert_expires_soon"]
    assert len(reminders) >= 4
    assert all(level == "warning" and not kw["expired"] for level, _, kw in reminders)

    # Past notAfter: still a warning, marked expired.
    expired = server_mod.CertExpiry(cert, Metrics(), clock=lambda: not_after.timestamp() + 86400)
    expired.load()
    level, event, kw = log.events[-1]
    assert (level, event, kw["expired"]) == ("warning", "tls.cert_expires_soon", True)
    assert kw["days_left"] == -1

    # Far from expiry: the gauge, no warning.
    log.events.clear()
    far, _, far_not_after = write_cert(tmp_path, 60, "far")
    m2 = Metrics()
    assert server_mod.CertExpiry(far, m2).load() == far_not_after
    assert _gauge(m2) == far_not_after.timestamp()
    assert log.events == []

    # A file with the key before the certificate (tls.key unset) is read as well.
    both = tmp_path / "both.pem"
    both.write_bytes((tmp_path / "far-key.pem").read_bytes() + far.read_bytes())
    assert server_mod.CertExpiry(both, Metrics()).load() == far_not_after

    # An unreadable file: an error, and the gauge keeps its last value.
    broken = server_mod.CertExpiry(tmp_path / "missing.pem", m2)
    assert broken.load() is None
    assert log.events[-1][:2] == ("error", "tls.cert_unreadable")
    assert _gauge(m2) == far_not_after.timestamp()
    assert time.time() < far_not_after.timestamp()
