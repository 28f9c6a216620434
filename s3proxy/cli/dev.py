"""``s3proxy dev``: the embedded store (:mod:`s3proxy.devstore`) and a proxy in front of it, with
generated credentials kept in the data directory and a banner saying how to use them."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

from s3proxy.cli.checks import check_keys, check_listeners, check_tls
from s3proxy.cli.commands import run_server
from s3proxy.cli.common import fail, load_or_fail


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
        fail(f"cannot use the dev data directory {data_dir}: {getattr(e, 'strerror', None) or e}")

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
    settings = load_or_fail(args, overrides(0))
    check_keys(settings)
    check_listeners(settings)
    if args.tls and not (cert_dir / "tls-cert.pem").exists():
        from s3proxy.tlsutil import self_signed

        self_signed(cert_dir)
    check_tls(settings)

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

    return run_server(lambda: asyncio.run(main()), settings)
