"""``python -m s3proxy.devstore``: serve a data directory as S3 (development use)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from s3proxy.devstore.server import start_devstore
from s3proxy.devstore.store import DEFAULT_MIN_PART_SIZE


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s3proxy.devstore", description=__doc__)
    parser.add_argument("--root", required=True, type=Path, help="data directory (created if missing)")
    parser.add_argument("--listen", default="127.0.0.1:9000", type=_parse_listen, help="HOST:PORT (default %(default)s)")
    parser.add_argument("--access-key", default=os.environ.get("DEVSTORE_ACCESS_KEY"), help="access key id")
    parser.add_argument(
        "--secret-key",
        default=os.environ.get("DEVSTORE_SECRET_KEY"),
        help="secret key (or the DEVSTORE_SECRET_KEY environment variable)",
    )
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--min-part-size", type=int, default=DEFAULT_MIN_PART_SIZE, help="bytes (default 5 MiB)")
    parser.add_argument("--fsync", action="store_true", help="fsync every write")
    args = parser.parse_args(argv)
    if not args.access_key or not args.secret_key:
        parser.error("--access-key and --secret-key are required")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def serve() -> None:
        host, port = args.listen
        runner, bound = await start_devstore(
            args.root,
            {args.access_key: args.secret_key},
            host,
            port,
            region=args.region,
            min_part_size=args.min_part_size,
            fsync=args.fsync,
        )
        print(f"devstore: serving {args.root} on http://{host}:{bound}", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
