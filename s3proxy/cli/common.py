"""What every ``s3proxy`` command shares: the exit status of a start-up failure, the one-line
error and warning output, loading the settings, the version."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from s3proxy.config import ConfigError, Settings, load_settings

EXIT_STARTUP = 2  # configuration or environment problem: nothing was started

CONFIG_HELP = (
    "YAML configuration file (see config/s3proxy.example.yaml); S3PROXY_* environment "
    "variables override its settings (default: none, built-in defaults and the environment only)"
)

LISTEN_HINT = "pick another with --listen HOST:PORT or S3PROXY_LISTEN=HOST:PORT"

ADMIN_LISTEN_HINT = "pick another with S3PROXY_ADMIN_LISTEN=HOST:PORT or admin_listen: in the config file"


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("s3proxy")
    except PackageNotFoundError:  # running from a source tree that was never installed
        from s3proxy import __version__

        return __version__


def fail(message: str) -> NoReturn:
    print(f"s3proxy: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_STARTUP)


def warn(message: str) -> None:
    print(f"s3proxy: warning: {message}", file=sys.stderr, flush=True)


def load_or_fail(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Settings:
    try:
        return load_settings(args.config, overrides=overrides)
    except ConfigError as e:
        fail(str(e))
