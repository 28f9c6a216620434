"""``s3proxy decrypt``'s command line: arguments, the run (one object to stdout or a prefix to a
directory) and the exit status (0 done, 1 an object failed, 2 could not start)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any, BinaryIO

from s3proxy.backend import names_tools
from s3proxy.backend.client import BackendClient
from s3proxy.config import Settings
from s3proxy.keys.audit import AuditLog
from s3proxy.recover.reader import Reader, SetupError, decrypt_one, describe, parse_range
from s3proxy.recover.tree import Tree, print_tree_report


async def run_decrypt(settings: Settings, args: argparse.Namespace, out: BinaryIO, err: Any) -> int:
    from s3proxy.keys.registry import build_key_manager

    target = settings.keys.audit.target
    keys = build_key_manager(settings.keys, audit=AuditLog("stderr" if target == "stdout" else target))
    client = BackendClient(settings.backend)
    await client.start()
    try:
        try:  # encrypted object names: the client maps plaintext keys, the tree decrypts listed ones
            names = await names_tools.open_names(client, settings, keys, args.bucket)
        except names_tools.NamesSetupError as exc:
            print(f"s3proxy decrypt: {exc}", file=err)
            return 2
        reader = Reader(client, keys, args.bucket, args.version_id)
        if args.key is not None:
            sent = 0

            def write(data: bytes | bytearray | memoryview) -> None:
                nonlocal sent
                out.write(data)
                sent += len(data)

            try:
                await decrypt_one(reader, args.key, args.range, write)
                out.flush()
            except Exception as exc:  # noqa: BLE001 - any failure: a message and exit status 1, no traceback
                what = f" (output incomplete: {sent} bytes written)" if sent else ""
                print(f"s3proxy decrypt: {args.key}: {describe(exc)}{what}", file=err)
                return 1
            return 0
        tree = Tree(reader, args.prefix, Path(args.to), args.concurrency, not args.no_progress, err, names=names)
        report = await tree.run()
        print_tree_report(report, err)
        return 0 if report.ok else 1
    finally:
        await client.close()
        await keys.close()


def _check_args(args: argparse.Namespace) -> None:
    if args.prefix is not None:
        if not args.to:
            raise SetupError("--prefix needs --to DIR")
        if args.range or args.version_id:
            raise SetupError("--range and --version-id go with --key, not --prefix")
        if not Path(args.to).is_dir():
            Path(args.to).mkdir(parents=True)
    elif args.to:
        raise SetupError("--to goes with --prefix (with --key the plaintext goes to stdout)")
    if args.range:
        parse_range(args.range, 1 << 62)  # the syntax, before anything is read


def cmd_decrypt(args: argparse.Namespace, *, out: BinaryIO | None = None, err: Any = None) -> int:
    """``s3proxy decrypt``; 0 done, 1 an object failed, 2 could not start."""
    from s3proxy.config import ConfigError, load_settings
    from s3proxy.keys.base import KeyConfigError

    err = err or sys.stderr
    out = out or sys.stdout.buffer
    try:
        _check_args(args)
        if args.key is not None and out is sys.stdout.buffer and sys.stdout.isatty():
            raise SetupError("refusing to write plaintext to a terminal: redirect stdout (> FILE)")
        overrides = {"backend": {"url": args.backend_url}} if args.backend_url else None
        settings = load_settings(args.config, overrides=overrides)
        return asyncio.run(run_decrypt(settings, args, out, err))
    except (SetupError, ConfigError, KeyConfigError, OSError) as exc:
        print(f"s3proxy decrypt: {exc}", file=err)
        return 2


def add_parser(sub: Any) -> None:
    """The ``decrypt`` subcommand (``sub`` is the ``add_subparsers()`` of the ``s3proxy`` parser)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "decrypt",
        help="decrypt objects straight from the storage, without a running proxy",
        description="Read ciphertext straight from the storage with the backend credentials and decrypt it "
        "with the configured key backend: one object to stdout (--key), or a prefix to a directory (--prefix "
        "--to, resumable).  Exit 0 if everything was written, 1 if an object failed, 2 if it could not start.",
    )
    p.add_argument("--config", metavar="FILE", help=("YAML configuration file (see config/s3proxy.example.yaml); S3PROXY_* environment "
                       "variables override its settings (default: none, built-in defaults and the environment only)"))
    p.add_argument("--backend-url", metavar="URL", help="storage endpoint (default: backend.url / S3PROXY_BACKEND_URL)")
    p.add_argument("--bucket", required=True, help="bucket on the storage (required)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--key", help="one object: its plaintext goes to stdout (--key or --prefix is required)")
    what.add_argument("--prefix", help="every object under this prefix (\"\" for all) to --to DIR (--key or --prefix is required)")
    p.add_argument("--to", metavar="DIR", help="with --prefix: directory the objects are written to, as DIR/<key> (required with --prefix)")
    p.add_argument("--range", metavar="A-B", help="with --key: plaintext bytes A..B inclusive (A-, -N also) (default: the whole object)")
    p.add_argument("--version-id", metavar="V", help="with --key: this version of the object (default: the current version)")
    p.add_argument("--concurrency", type=int, default=4, metavar="N", help="objects in parallel with --prefix (default: 4)")
    p.add_argument("--no-progress", action="store_true", help="do not print progress (default: print it)")
    p.set_defaults(func=cmd_decrypt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s3proxy")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv if argv is not None else ["decrypt", *sys.argv[1:]])
    return int(args.func(args))
