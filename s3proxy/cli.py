"""Command line: ``s3proxy serve | dev | rewrap | check-config | doctor``.

Start-up failures (configuration, keys, TLS files, an address already in
use, ...) end with one ``s3proxy: ...`` line on stderr and exit code 2, never
a traceback.  Warnings (defaults that are probably not meant, a backend that
does not answer yet) are ``s3proxy: warning: ...`` lines; they do not stop
the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import json
import logging
import os
import secrets
import shutil
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from s3proxy.config import ConfigError, Settings, load_settings

EXIT_STARTUP = 2  # configuration or environment problem: nothing was started

CONFIG_HELP = (
    "YAML configuration file (see config/s3proxy.example.yaml); S3PROXY_* environment "
    "variables override its settings (default: none, built-in defaults and the environment only)"
)
LISTEN_HINT = "pick another with --listen HOST:PORT or S3PROXY_LISTEN=HOST:PORT"
ADMIN_LISTEN_HINT = "pick another with S3PROXY_ADMIN_LISTEN=HOST:PORT or admin_listen: in the config file"
BACKEND_PROBE_TIMEOUT = 3.0
_BIND_ERRNOS = {errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL, errno.EPERM}


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("s3proxy")
    except PackageNotFoundError:  # running from a source tree that was never installed
        from s3proxy import __version__

        return __version__


def _fail(message: str) -> NoReturn:
    print(f"s3proxy: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_STARTUP)


def _warn(message: str) -> None:
    print(f"s3proxy: warning: {message}", file=sys.stderr, flush=True)


def _load(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Settings:
    try:
        return load_settings(args.config, overrides=overrides)
    except ConfigError as e:
        _fail(str(e))


# -- start-up checks ---------------------------------------------------------------


def _require_identities(settings: Settings) -> None:
    if not settings.identities:
        _fail(
            "no client identity configured: clients could not sign any request (set S3PROXY_ACCESS_KEY "
            "and S3PROXY_SECRET_KEY, or identities: in the config file)"
        )


def _check_keys(settings: Settings) -> None:
    """Build (without connecting) the key manager so bad keys fail at start, clearly.

    The audit log is checked, not opened: checking creates no file.
    """
    from s3proxy.keys.audit import AuditLog
    from s3proxy.keys.base import KeyConfigError
    from s3proxy.keys.registry import build_key_manager

    try:
        build_key_manager(settings.keys, audit=AuditLog(None))
    except KeyConfigError as e:
        _fail(f"invalid key configuration: {e}")
    _check_audit_target(settings.keys.audit.target)


def _check_audit_target(target: str) -> None:
    if target in ("stdout", "stderr", "off"):
        return
    path = Path(target)
    if path.exists():
        if not path.is_file() or not os.access(path, os.W_OK):
            _fail(f"keys.audit.target {target}: not a writable file")
        return
    parent = path.parent
    while not parent.exists():  # the audit log creates missing directories
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        _fail(f"keys.audit.target {target}: cannot be created ({parent} is not a writable directory)")


def _check_readable(setting: str, path: Path | None) -> None:
    if path is None:
        return
    if not path.exists():
        _fail(f"{setting} {path}: no such file")
    if not path.is_file():
        _fail(f"{setting} {path}: not a file")
    if not os.access(path, os.R_OK):
        _fail(f"{setting} {path}: not readable by this user")


def _check_tls(settings: Settings) -> None:
    tls = settings.tls
    if tls.cert is None and (tls.key is not None or tls.client_ca is not None):
        _fail("tls.key / tls.client_ca are set but tls.cert is not (S3PROXY_TLS_CERT)")
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
        _fail(
            f"cannot load the TLS certificate {tls.cert}" + (f" / key {tls.key}" if tls.key else "")
            + (f" / client CA {tls.client_ca}" if tls.client_ca else "")
            + f": {reason} (expected PEM files: the certificate chain and its private key)"
        )


def _check_backend(settings: Settings) -> None:
    b = settings.backend
    _check_readable("backend.ca_bundle (S3PROXY_BACKEND_CA_BUNDLE)", b.ca_bundle)
    if b.ca_bundle is not None:
        try:
            ssl.create_default_context(cafile=str(b.ca_bundle))
        except (ssl.SSLError, OSError) as e:
            _fail(f"backend.ca_bundle {b.ca_bundle}: not a PEM CA bundle ({getattr(e, 'reason', None) or e})")


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
        _fail(f"cannot listen on {hostport} ({what}): unknown host {host!r} ({e.strerror}); {hint}")
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
                _fail(_bind_message(what, hostport, e, hint))


def _check_listeners(settings: Settings, *, reuse_port: bool = False) -> None:
    _check_bind("listen", settings.listen_addr, LISTEN_HINT, reuse_port=reuse_port)
    admin = settings.admin_addr
    if admin is not None:
        if admin == settings.listen_addr:
            _fail(f"admin_listen {settings.admin_listen} is the same address as listen; {ADMIN_LISTEN_HINT}")
        _check_bind("admin_listen", admin, ADMIN_LISTEN_HINT, reuse_port=reuse_port)


def _bind_failure(e: OSError, settings: Settings) -> str | None:
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


def _startup_checks(settings: Settings) -> None:
    """Everything that would otherwise fail inside the server with a traceback."""
    _check_keys(settings)
    _check_tls(settings)
    _check_backend(settings)


# -- commands ------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.listen:
        overrides["listen"] = args.listen
    settings = _load(args, overrides)
    _require_identities(settings)
    _startup_checks(settings)
    _check_listeners(settings, reuse_port=(args.workers or settings.workers) > 1)
    # Logged (JSON by default), not printed: these go where the server's logs go.
    from s3proxy.observability import configure_logging, get_logger

    configure_logging(settings.log.level, settings.log.format)
    log = get_logger("s3proxy.cli")
    for w in backend_warnings(settings):
        log.warning("config.warning", message=w)
    ok, what = probe_backend(settings)
    if ok:
        log.info("backend.reachable", url=settings.backend.url, answer=f"{what} to GET /")
    else:
        log.warning(
            "backend.unreachable", url=settings.backend.url, error=what,
            message="the backend does not answer; starting anyway, requests fail until it answers "
                    "(check S3PROXY_BACKEND_URL / backend.url)",
        )
    from s3proxy.server import serve

    return _run_server(lambda: serve(settings, args.workers), settings)


def _run_server(run: Callable[[], None], settings: Settings) -> int:
    """Run a server until it stops; a bind failure is one line and EXIT_STARTUP, Ctrl-C is 0."""
    try:
        run()
    except OSError as e:
        message = _bind_failure(e, settings)
        if message is None:
            raise
        print(f"s3proxy: {message}", file=sys.stderr, flush=True)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        pass
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args)
    _require_identities(settings)
    _startup_checks(settings)
    warnings = backend_warnings(settings)
    for w in warnings:
        _warn(w)
    print(
        f"configuration OK{' (with warnings above)' if warnings else ''}: listen {settings.listen}, "
        f"backend {settings.backend.url}, {len(settings.identities)} identities, key backend {settings.keys.backend}"
    )
    return 0


def _dev_state(data_dir: Path) -> dict[str, str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "dev-credentials.json"
    if path.exists():
        state: dict[str, str] = json.loads(path.read_text())
        return state
    state = {
        "access_key": "S3P" + secrets.token_hex(8).upper(),
        "secret_key": secrets.token_urlsafe(30),
        "backend_access_key": "STORE" + secrets.token_hex(8).upper(),
        "backend_secret_key": secrets.token_urlsafe(30),
        "master_key": base64.b64encode(os.urandom(32)).decode(),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=2)
    return state


def aws_cli_command() -> tuple[str | None, str | None]:
    """How to run the AWS CLI in the printed examples: (command, note).

    The AWS CLI that ``make dev`` installs lives next to this Python, which
    is not on PATH unless the venv is activated: print its full path then.
    """
    venv_aws = Path(sys.executable).parent / "aws"
    on_path = shutil.which("aws")
    if venv_aws.is_file() and os.access(venv_aws, os.X_OK):
        if on_path and Path(on_path).resolve() == venv_aws.resolve():
            return "aws", None
        activate = venv_aws.parent / "activate"
        note = (
            f"(the AWS CLI installed with s3proxy; `. {activate}` or `make shell` puts `aws` on PATH)"
            if activate.exists() else None
        )
        return str(venv_aws), note
    if on_path:
        return "aws", None
    return None, (
        "(`aws` is the AWS CLI, which is not installed here: `pip install awscli`; "
        "any S3 client works with the endpoint and keys above)"
    )


def _endpoint_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def dev_banner(
    *, endpoint: str, state: dict[str, str], bucket: str, data_dir: Path, ca_file: Path | None
) -> str:
    aws, note = aws_cli_command()
    ca = f" --ca-bundle {ca_file}" if ca_file else ""
    upload = "README.md" if Path("README.md").is_file() else "-"
    pipe = "" if upload == "README.md" else "echo hello | "
    target = f"s3://{bucket}/" if upload == "README.md" else f"s3://{bucket}/hello.txt"
    lines = [
        "",
        "s3proxy dev is running (Ctrl-C to stop)",
        f"  endpoint     {endpoint}",
        f"  access key   {state['access_key']}",
        f"  secret key   {state['secret_key']}",
        f"  bucket       {bucket}",
        f"  data         {data_dir} (encrypted objects in store/, keys in dev-credentials.json)",
        "",
        "Try it (from another terminal in this directory):",
        f"  export AWS_ACCESS_KEY_ID={state['access_key']} AWS_SECRET_ACCESS_KEY={state['secret_key']} "
        "AWS_DEFAULT_REGION=us-east-1",
    ]
    cmd = aws or "aws"
    lines.append(f"  {pipe}{cmd} --endpoint-url {endpoint}{ca} s3 cp {upload} {target}")
    lines.append(f"  {cmd} --endpoint-url {endpoint}{ca} s3 ls s3://{bucket}/")
    if note:
        lines.append(f"  {note}")
    lines.append("")
    return "\n".join(lines)


def cmd_dev(args: argparse.Namespace) -> int:
    """Proxy + an embedded on-disk S3 store + a local master key: one command."""
    data_dir = Path(args.data_dir).resolve()
    try:
        state = _dev_state(data_dir)
    except (OSError, ValueError) as e:
        _fail(f"cannot use the dev data directory {data_dir}: {getattr(e, 'strerror', None) or e}")

    tls: dict[str, Any] = {}
    cert_dir = data_dir / "tls"
    if args.tls:
        tls = {"tls": {"cert": str(cert_dir / "tls-cert.pem"), "key": str(cert_dir / "tls-key.pem")}}

    def overrides(store_port: int) -> dict[str, Any]:
        return {
            **({"listen": args.listen} if args.listen else {}),
            "backend": {
                "url": f"http://127.0.0.1:{store_port}",
                "access_key": state["backend_access_key"],
                "secret_key": state["backend_secret_key"],
            },
            "identities": [{"name": "dev", "access_key": state["access_key"], "secret_key": state["secret_key"]}],
            "keys": {
                "backend": "local",
                "local": {"master_keys": {"dev": state["master_key"]}, "default_key_id": "dev"},
                "audit": {"target": "off"},
            },
            "log": {"format": "console", "level": args.log_level, "access_log": args.access_log},
            **tls,
        }

    # Validate everything before anything starts (the store's port is not known yet).
    settings = _load(args, overrides(0))
    _check_keys(settings)
    _check_listeners(settings)
    if args.tls and not (cert_dir / "tls-cert.pem").exists():
        from s3proxy.tlsutil import self_signed

        self_signed(cert_dir)
    _check_tls(settings)

    from s3proxy.devstore import start_devstore
    from s3proxy.observability import configure_logging
    from s3proxy.server import run_until_stopped, tune_malloc

    tune_malloc()
    configure_logging(args.log_level, "console")

    async def main() -> None:
        store_root = data_dir / "store"
        store_root.mkdir(exist_ok=True)
        if args.bucket:
            (store_root / args.bucket).mkdir(exist_ok=True)
        runner, store_port = await start_devstore(
            store_root, {state["backend_access_key"]: state["backend_secret_key"]}, "127.0.0.1", 0
        )
        backend = settings.backend.model_copy(update={"url": f"http://127.0.0.1:{store_port}"})
        running = settings.model_copy(update={"backend": backend})

        def banner(port: int) -> None:
            scheme = "https" if args.tls else "http"
            endpoint = f"{scheme}://{_endpoint_host(running.listen_addr[0])}:{port}"
            print(
                dev_banner(
                    endpoint=endpoint, state=state, bucket=args.bucket, data_dir=data_dir,
                    ca_file=cert_dir / "tls-cert.pem" if args.tls else None,
                ),
                flush=True,
            )

        try:
            await run_until_stopped(running, started=banner)
        finally:
            await runner.cleanup()

    return _run_server(lambda: asyncio.run(main()), settings)


def cmd_rewrap(args: argparse.Namespace) -> int:
    from s3proxy.rewrap import run_rewrap

    settings = _load(args)
    _check_keys(settings)
    _check_backend(settings)
    return asyncio.run(run_rewrap(settings, args))


def cmd_doctor(args: argparse.Namespace) -> int:
    from s3proxy.doctor import run_doctor

    settings = _load(args)
    _check_backend(settings)
    bucket = args.bucket or settings.backend.probe_bucket
    if not bucket:
        _fail("doctor needs a bucket to probe in: --bucket B, or backend.probe_bucket / S3PROXY_BACKEND_PROBE_BUCKET")
    for w in backend_warnings(settings):
        _warn(w)
    return run_doctor(settings, bucket, with_round_trip=not args.no_round_trip)


def _add_doctor(sub: Any) -> None:
    d = _subparser(sub, "doctor", "check what the backend can do (run before going live)",
                   "Probe the configured backend in one bucket (scratch objects under .s3proxy-probe/<random>/, "
                   "all deleted) and print each capability, what s3proxy does about it, and a verdict.  "
                   "Exit 0: OK; 1: WARN (s3proxy works, some things degrade); 2: FAIL (s3proxy cannot work "
                   "correctly with this backend) or a configuration problem.")
    d.add_argument("--bucket", help="existing bucket to probe in (default: backend.probe_bucket)")
    d.add_argument("--no-round-trip", action="store_true",
                   help="skip the PUT/GET/multipart/listing/copy round trip through an in-process s3proxy "
                        "(default: run it)")
    d.set_defaults(func=cmd_doctor)


def _add_decrypt(sub: Any) -> None:
    from s3proxy.recover import add_parser

    add_parser(sub)


def _add_migrate(sub: Any) -> None:
    from s3proxy.migrate import add_parser

    add_parser(sub)


def _add_export(sub: Any) -> None:
    from s3proxy.export import add_parser

    add_parser(sub)


# Subcommands added after the built-in ones: functions taking the subparsers object.
EXTRA_COMMANDS: tuple[Callable[[Any], None], ...] = (_add_doctor, _add_decrypt, _add_migrate, _add_export)


# -- parser --------------------------------------------------------------------------


class _HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already names its default.

    Options whose default is None or a flag's False describe their default in words.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text
            or not action.option_strings
            or action.default in (None, False, argparse.SUPPRESS)
        ):
            return text
        return text + " (default: %(default)s)"


def _subparser(sub: Any, name: str, help: str, description: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help, description=description, formatter_class=_HelpFormatter
    )
    p.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="s3proxy", description="Transparent encryption proxy for S3-compatible storage",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = _subparser(sub, "serve", "run the proxy",
                   "Run the proxy.  Refuses to start (exit 2) on configuration problems; warns when the "
                   "backend does not answer.")
    s.add_argument("--listen", metavar="HOST:PORT",
                   help="address clients connect to; overrides S3PROXY_LISTEN and listen: in the config "
                        "(default: S3PROXY_LISTEN, else listen: in the config, else 127.0.0.1:8080)")
    s.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes sharing the port (default: S3PROXY_WORKERS, else workers: in "
                        "the config, else 1)")
    s.set_defaults(func=cmd_serve)

    d = _subparser(sub, "dev", "run the proxy on an embedded on-disk S3 store with a local key",
                   "Run the proxy in front of an embedded on-disk S3 store, with a local master key and "
                   "generated credentials (kept in DATA_DIR/dev-credentials.json).  --config may add "
                   "settings; the backend, identities and keys are the dev ones.")
    d.add_argument("--listen", metavar="HOST:PORT",
                   help="address the proxy listens on; HOST:0 picks a free port "
                        "(default: S3PROXY_LISTEN, else listen: in the config, else 127.0.0.1:8080)")
    d.add_argument("--data-dir", metavar="DIR", default=os.environ.get("S3PROXY_DEV_DIR", ".s3proxy-dev"),
                   help="where the store's (encrypted) objects, the credentials and the dev key are kept; "
                        "env S3PROXY_DEV_DIR (default: %(default)s)")
    d.add_argument("--bucket", default="demo", help="bucket created at start (default: %(default)s)")
    d.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log level (default: %(default)s)")
    d.add_argument("--access-log", action="store_true", help="log every request (default: off)")
    d.add_argument("--tls", action="store_true",
                   help="serve HTTPS with a self-signed certificate generated in DATA_DIR/tls (default: HTTP)")
    d.set_defaults(func=cmd_dev)

    c = _subparser(sub, "check-config", "validate the configuration and exit",
                   "Validate the configuration (file and environment), the keys and the TLS files, "
                   "without starting anything.  Exit 0 if the configuration is usable, 2 if not.")
    c.set_defaults(func=cmd_check_config)

    r = _subparser(sub, "rewrap", "re-wrap data keys under another key (metadata only)",
                   "Re-wrap the data keys of existing objects under another key, rewriting metadata only "
                   "(server-side copies: object bodies do not pass through this process).  Resumable.")
    r.add_argument("--bucket", required=True, help="bucket to walk (required)")
    r.add_argument("--prefix", default="", help="only objects whose key starts with this (default: all objects)")
    r.add_argument("--to", required=True, dest="to_key", metavar="KEY_ID",
                   help="target key id (a local key id, KMS key/alias, or PKCS#11 label) (required)")
    r.add_argument("--dry-run", action="store_true", help="report what would be re-wrapped, change nothing "
                                                          "(default: off)")
    r.add_argument("--concurrency", type=int, default=8, metavar="N", help="objects processed in parallel "
                                                                           "(default: %(default)s)")
    r.add_argument("--state-file", metavar="FILE",
                   help="resume file (default: .s3proxy-rewrap-<bucket>.json in the current directory)")
    r.add_argument("--no-progress", action="store_true", help="do not print progress (default: print it)")
    r.set_defaults(func=cmd_rewrap)
    for add in EXTRA_COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
