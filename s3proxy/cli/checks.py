"""Start-up checks of ``s3proxy serve`` (and of the commands that need the same things): identities,
key backends, the audit target, TLS files, the backend (probed, never fatal) and the listen
addresses; each failure is one ``s3proxy: ...`` line and exit status 2."""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
from pathlib import Path
from typing import Any

from s3proxy.cli.common import ADMIN_LISTEN_HINT, LISTEN_HINT, fail
from s3proxy.config import Settings

BACKEND_PROBE_TIMEOUT = 3.0

_BIND_ERRNOS = {errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL, errno.EPERM}


def require_identities(settings: Settings) -> None:
    if not settings.identities:
        fail(
            "no client identity configured: clients could not sign any request (set S3PROXY_ACCESS_KEY "
            "and S3PROXY_SECRET_KEY, or identities: in the config file)"
        )


def check_keys(settings: Settings) -> None:
    """Build (without connecting) the key manager so bad keys fail at start, clearly.

    The audit log is checked, not opened: checking creates no file.
    """
    from s3proxy.keys.audit import AuditLog
    from s3proxy.keys.base import KeyConfigError
    from s3proxy.keys.registry import build_key_manager

    try:
        build_key_manager(settings.keys, audit=AuditLog(None))
    except KeyConfigError as e:
        fail(f"invalid key configuration: {e}")
    _check_audit_target(settings.keys.audit.target)


def _check_audit_target(target: str) -> None:
    if target in ("stdout", "stderr", "off"):
        return
    path = Path(target)
    if path.exists():
        if not path.is_file() or not os.access(path, os.W_OK):
            fail(f"keys.audit.target {target}: not a writable file")
        return
    parent = path.parent
    while not parent.exists():  # the audit log creates missing directories
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        fail(f"keys.audit.target {target}: cannot be created ({parent} is not a writable directory)")


def _check_readable(setting: str, path: Path | None) -> None:
    if path is None:
        return
    if not path.exists():
        fail(f"{setting} {path}: no such file")
    if not path.is_file():
        fail(f"{setting} {path}: not a file")
    if not os.access(path, os.R_OK):
        fail(f"{setting} {path}: not readable by this user")


def check_tls(settings: Settings) -> None:
    tls = settings.tls
    if tls.cert is None and (tls.key is not None or tls.client_ca is not None):
        fail("tls.key / tls.client_ca are set but tls.cert is not (S3PROXY_TLS_CERT)")
    _check_readable("tls.cert (S3PROXY_TLS_CERT)", tls.cert)
    _check_readable("tls.key (S3PROXY_TLS_KEY)", tls.key)
    _check_readable("tls.client_ca (S3PROXY_TLS_CLIENT_CA)", tls.client_ca)
    if tls.cert is None:
        return
    from s3proxy.server import make_ssl_context

    try:
        make_ssl_context(settings)
    except (ssl.SSLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or str(e)
        fail(
            f"cannot load the TLS certificate {tls.cert}" + (f" / key {tls.key}" if tls.key else "")
            + (f" / client CA {tls.client_ca}" if tls.client_ca else "")
            + f": {reason} (expected PEM files: the certificate chain and its private key)"
        )


def check_backend(settings: Settings) -> None:
    b = settings.backend
    _check_readable("backend.ca_bundle (S3PROXY_BACKEND_CA_BUNDLE)", b.ca_bundle)
    if b.ca_bundle is not None:
        try:
            ssl.create_default_context(cafile=str(b.ca_bundle))
        except (ssl.SSLError, OSError) as e:
            fail(f"backend.ca_bundle {b.ca_bundle}: not a PEM CA bundle ({getattr(e, 'reason', None) or e})")


def backend_warnings(settings: Settings) -> list[str]:
    """Settings left at defaults that make every request fail (opaquely) at run time."""
    out: list[str] = []
    backend = settings.backend
    if "backend" not in settings.model_fields_set or "url" not in backend.model_fields_set:
        out.append(
            f"backend.url is not configured: using the built-in default {backend.url} "
            "(set S3PROXY_BACKEND_URL or backend.url)"
        )
    empty = not backend.access_key.get_secret_value() or not backend.secret_key.get_secret_value()
    if empty and not all(i.backend_access_key and i.backend_secret_key for i in settings.identities):
        out.append(
            "backend credentials are empty: requests to the backend will not be signed and will be refused "
            "(set S3PROXY_BACKEND_ACCESS_KEY and S3PROXY_BACKEND_SECRET_KEY, or backend.access_key/secret_key)"
        )
    return out


def probe_backend(settings: Settings, timeout: float = BACKEND_PROBE_TIMEOUT) -> tuple[bool, str]:
    """One unauthenticated ``GET /`` to the backend: (answers?, what happened).

    Any HTTP answer counts (S3 answers 403 to an unsigned request): it shows
    the URL points at a server.
    """
    import http.client
    import urllib.error
    import urllib.request

    b = settings.backend
    url = b.url + "/"
    handlers: list[Any] = [urllib.request.ProxyHandler({})]  # the backend client ignores *_proxy too
    if url.startswith("https://"):
        if not b.verify_tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        else:
            ctx = ssl.create_default_context(cafile=str(b.ca_bundle) if b.ca_bundle else None)
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(urllib.request.Request(url, method="GET"), timeout=timeout) as resp:
            return True, f"HTTP {resp.status}"
    except urllib.error.HTTPError as e:
        return True, f"HTTP {e.code}"
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, TimeoutError):
            return False, f"no answer within {timeout:g} s"
        return False, str(getattr(reason, "strerror", None) or reason)
    except TimeoutError:
        return False, f"no answer within {timeout:g} s"
    except (OSError, http.client.HTTPException, ValueError) as e:
        return False, str(e) or type(e).__name__


def _bind_message(what: str, hostport: str, e: OSError, hint: str) -> str:
    if e.errno == errno.EADDRINUSE:
        why = "address already in use (another s3proxy or another program listens there)"
    elif e.errno in (errno.EACCES, errno.EPERM):
        why = "permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    elif e.errno == errno.EADDRNOTAVAIL:
        why = "address not available on this machine"
    else:
        why = e.strerror or str(e)
    return f"cannot listen on {hostport} ({what}): {why}; {hint}"


def _check_bind(what: str, addr: tuple[str, int], hint: str, *, reuse_port: bool = False) -> None:
    """Fail now, with one line, if ``addr`` cannot be bound (the server would raise later).

    ``reuse_port``: bind as ``--workers N`` (N > 1) does, with SO_REUSEPORT.
    """
    host, port = addr
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        fail(f"cannot listen on {hostport} ({what}): unknown host {host!r} ({e.strerror}); {hint}")
    seen = set()
    for family, type_, proto, _, sockaddr in infos:
        if (family, sockaddr) in seen:
            continue
        seen.add((family, sockaddr))
        with socket.socket(family, type_, proto) as s:
            # As asyncio's create_server does: TIME_WAIT sockets do not block a restart.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port and hasattr(socket, "SO_REUSEPORT"):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind(sockaddr)
            except OSError as e:
                fail(_bind_message(what, hostport, e, hint))


def check_listeners(settings: Settings, *, reuse_port: bool = False) -> None:
    _check_bind("listen", settings.listen_addr, LISTEN_HINT, reuse_port=reuse_port)
    admin = settings.admin_addr
    if admin is not None:
        if admin == settings.listen_addr:
            fail(f"admin_listen {settings.admin_listen} is the same address as listen; {ADMIN_LISTEN_HINT}")
        _check_bind("admin_listen", admin, ADMIN_LISTEN_HINT, reuse_port=reuse_port)


def bind_failure(e: OSError, settings: Settings) -> str | None:
    """The one-line message for a bind error raised by the server, or None if ``e`` is not one."""
    if e.errno not in _BIND_ERRNOS:
        return None
    # The server's half-built application may still hold an unclosed HTTP client
    # session; its "Unclosed client session" complaint adds nothing here.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    text = str(e)
    admin = settings.admin_addr
    if admin is not None and f"'{admin[0]}', {admin[1]})" in text:
        return _bind_message("admin_listen", settings.admin_listen or "", e, ADMIN_LISTEN_HINT)
    return _bind_message("listen", settings.listen, e, LISTEN_HINT)


def startup_checks(settings: Settings) -> None:
    """Everything that would otherwise fail inside the server with a traceback."""
    check_keys(settings)
    check_tls(settings)
    check_backend(settings)
