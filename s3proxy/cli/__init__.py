"""Command line: ``s3proxy serve | dev | rewrap | check-config | doctor``.

Start-up failures (configuration, keys, TLS files, an address already in
use, ...) end with one ``s3proxy: ...`` line on stderr and exit code 2, never
a traceback.  Warnings (defaults that are probably not meant, a backend that
does not answer yet) are ``s3proxy: warning: ...`` lines; they do not stop
the proxy.

Modules: :mod:`~s3proxy.cli.parser` (the argument parser and :func:`main`),
:mod:`~s3proxy.cli.commands`, :mod:`~s3proxy.cli.dev`, :mod:`~s3proxy.cli.checks` (start-up
checks) and :mod:`~s3proxy.cli.common`.  The top of the import graph: it may import anything of
s3proxy (the devstore only here, for ``s3proxy dev``), and nothing imports it but ``__main__``.
"""

from s3proxy.cli.common import EXIT_STARTUP, package_version
from s3proxy.cli.parser import build_parser, main

__all__ = ["EXIT_STARTUP", "build_parser", "main", "package_version"]
