"""The commands ``serve``, ``check-config``, ``rewrap`` and ``doctor``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from typing import Any

from s3proxy.cli.checks import (
    backend_warnings,
    bind_failure,
    check_backend,
    check_keys,
    check_listeners,
    probe_backend,
    require_identities,
    startup_checks,
)
from s3proxy.cli.common import EXIT_STARTUP, fail, load_or_fail, warn
from s3proxy.config import Settings


def cmd_serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.listen:
        overrides["listen"] = args.listen
    settings = load_or_fail(args, overrides)
    require_identities(settings)
    startup_checks(settings)
    check_listeners(settings, reuse_port=(args.workers or settings.workers) > 1)
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

    return run_server(lambda: serve(settings, args.workers), settings)


def run_server(run: Callable[[], None], settings: Settings) -> int:
    """Run a server until it stops; a bind failure is one line and EXIT_STARTUP, Ctrl-C is 0."""
    try:
        run()
    except OSError as e:
        message = bind_failure(e, settings)
        if message is None:
            raise
        print(f"s3proxy: {message}", file=sys.stderr, flush=True)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        pass
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = load_or_fail(args)
    require_identities(settings)
    startup_checks(settings)
    warnings = backend_warnings(settings)
    for w in warnings:
        warn(w)
    print(
        f"configuration OK{' (with warnings above)' if warnings else ''}: listen {settings.listen}, "
        f"backend {settings.backend.url}, {len(settings.identities)} identities, key backend {settings.keys.backend}"
    )
    return 0


def cmd_rewrap(args: argparse.Namespace) -> int:
    from s3proxy.rewrap import run_rewrap

    settings = load_or_fail(args)
    check_keys(settings)
    check_backend(settings)
    return asyncio.run(run_rewrap(settings, args))


def cmd_doctor(args: argparse.Namespace) -> int:
    from s3proxy.doctor import run_doctor

    settings = load_or_fail(args)
    check_backend(settings)
    bucket = args.bucket or settings.backend.probe_bucket
    if not bucket:
        fail("doctor needs a bucket to probe in: --bucket B, or backend.probe_bucket / S3PROXY_BACKEND_PROBE_BUCKET")
    for w in backend_warnings(settings):
        warn(w)
    return run_doctor(settings, bucket, with_round_trip=not args.no_round_trip)
