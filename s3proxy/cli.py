"""Command line: ``s3proxy serve | dev | rewrap | check-config``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from s3proxy.config import ConfigError, Settings, load_settings


def _load(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Settings:
    try:
        return load_settings(args.config, overrides=overrides)
    except ConfigError as e:
        print(f"s3proxy: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.listen:
        overrides["listen"] = args.listen
    settings = _load(args, overrides)
    if not settings.identities:
        print("s3proxy: no client identity configured (set S3PROXY_ACCESS_KEY and S3PROXY_SECRET_KEY, "
              "or identities: in the config file)", file=sys.stderr)
        return 2
    _check_keys(settings)
    from s3proxy.server import serve

    serve(settings, args.workers)
    return 0


def _check_keys(settings: Settings) -> None:
    """Build (without connecting) the key manager so bad keys fail at start, clearly."""
    from s3proxy.keys.base import KeyConfigError
    from s3proxy.keys.registry import build_key_manager

    try:
        build_key_manager(settings.keys)
    except KeyConfigError as e:
        print(f"s3proxy: invalid key configuration: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args)
    _check_keys(settings)
    print(f"configuration OK: listen {settings.listen}, backend {settings.backend.url}, "
          f"{len(settings.identities)} identities, key backend {settings.keys.backend}")
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


def cmd_dev(args: argparse.Namespace) -> int:
    """Proxy + an embedded on-disk S3 store + a local master key: one command."""
    data_dir = Path(args.data_dir).resolve()
    state = _dev_state(data_dir)
    from s3proxy.devstore import start_devstore
    from s3proxy.observability import configure_logging
    from s3proxy.server import run_until_stopped, tune_malloc

    tune_malloc()
    configure_logging(args.log_level, "console")

    tls: dict[str, Any] = {}
    if args.tls:
        from s3proxy.tlsutil import self_signed

        files = self_signed(data_dir / "tls") if not (data_dir / "tls" / "tls-cert.pem").exists() else None
        cert_dir = data_dir / "tls"
        tls = {"tls": {"cert": str(cert_dir / "tls-cert.pem"), "key": str(cert_dir / "tls-key.pem")}}
        del files

    async def main() -> None:
        store_root = data_dir / "store"
        store_root.mkdir(exist_ok=True)
        (store_root / args.bucket).mkdir(exist_ok=True) if args.bucket else None
        runner, store_port = await start_devstore(
            store_root, {state["backend_access_key"]: state["backend_secret_key"]}, "127.0.0.1", 0
        )
        settings = load_settings(
            args.config,
            overrides={
                "listen": args.listen,
                "backend": {
                    "url": f"http://127.0.0.1:{store_port}",
                    "access_key": state["backend_access_key"],
                    "secret_key": state["backend_secret_key"],
                },
                "identities": [{"name": "dev", "access_key": state["access_key"], "secret_key": state["secret_key"]}],
                "keys": {"backend": "local", "local": {"master_keys": {"dev": state["master_key"]}}, "audit": {"target": "off"}},
                "log": {"format": "console", "level": args.log_level, "access_log": args.access_log},
                **tls,
            },
        )

        def banner(port: int) -> None:
            host = settings.listen_addr[0]
            scheme = "https" if args.tls else "http"
            ep = f"{scheme}://{host}:{port}"
            ca = f" --ca-bundle {data_dir / 'tls' / 'tls-cert.pem'}" if args.tls else ""
            print(
                f"""
s3proxy dev is running (Ctrl-C to stop)
  endpoint     {ep}
  access key   {state['access_key']}
  secret key   {state['secret_key']}
  bucket       {args.bucket}
  data         {data_dir} (encrypted objects in store/, keys in dev-credentials.json)

Try it:
  export AWS_ACCESS_KEY_ID={state['access_key']} AWS_SECRET_ACCESS_KEY={state['secret_key']} AWS_DEFAULT_REGION=us-east-1
  aws --endpoint-url {ep}{ca} s3 cp README.md s3://{args.bucket}/
  aws --endpoint-url {ep}{ca} s3 ls s3://{args.bucket}/
""",
                flush=True,
            )

        try:
            await run_until_stopped(settings, started=banner)
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0


def cmd_rewrap(args: argparse.Namespace) -> int:
    from s3proxy.rewrap import run_rewrap

    settings = _load(args)
    return asyncio.run(run_rewrap(settings, args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="s3proxy", description="Transparent encryption proxy for S3-compatible storage")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the proxy")
    s.add_argument("--config", help="YAML configuration file")
    s.add_argument("--listen", help="host:port (overrides S3PROXY_LISTEN)")
    s.add_argument("--workers", type=int, default=None, help="worker processes sharing the port")
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("dev", help="run the proxy on an embedded on-disk S3 store with a local key")
    d.add_argument("--config", help="optional YAML configuration file for extra settings")
    d.add_argument("--listen", default=os.environ.get("S3PROXY_LISTEN", "127.0.0.1:8080"))
    d.add_argument("--data-dir", default=os.environ.get("S3PROXY_DEV_DIR", ".s3proxy-dev"))
    d.add_argument("--bucket", default="demo", help="bucket created at start")
    d.add_argument("--log-level", default="info")
    d.add_argument("--access-log", action="store_true")
    d.add_argument("--tls", action="store_true", help="serve HTTPS with a generated self-signed certificate")
    d.set_defaults(func=cmd_dev)

    c = sub.add_parser("check-config", help="validate configuration and exit")
    c.add_argument("--config")
    c.set_defaults(func=cmd_check_config)

    r = sub.add_parser("rewrap", help="re-wrap data keys under another key (metadata only)")
    r.add_argument("--config")
    r.add_argument("--bucket", required=True)
    r.add_argument("--prefix", default="")
    r.add_argument("--to", required=True, dest="to_key", help="target key id")
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--concurrency", type=int, default=8)
    r.add_argument("--state-file", help="resume file (default: .s3proxy-rewrap-<bucket>.json)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=cmd_rewrap)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
