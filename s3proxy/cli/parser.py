"""The ``s3proxy`` argument parser (every subcommand and option, with its default in the help) and
:func:`main`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from s3proxy.cli.commands import cmd_check_config, cmd_doctor, cmd_rewrap, cmd_serve
from s3proxy.cli.common import CONFIG_HELP, package_version
from s3proxy.cli.dev import cmd_dev


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
