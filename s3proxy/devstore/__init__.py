"""devstore: a small S3-compatible storage server keeping its data on disk.

It is the suite's AWS-strict test backend (``S3PROXY_TEST_BACKEND=strict``, the default) and the
store behind ``make dev`` / ``s3proxy dev``, and runnable by hand::

    python -m s3proxy.devstore --root DIR --listen 127.0.0.1:9000 --access-key AK --secret-key SK

See :mod:`s3proxy.devstore.server` for what is supported and the module map, and
:mod:`s3proxy.devstore.store` for the on-disk layout.

A separate program, not part of the proxy: it may import only the protocol layer (``s3proxy.aws``),
``config``, ``observability`` and ``tlsutil``; the proxy never imports it — only ``cli`` does (for
``s3proxy dev``), as tests/unit/test_import_graph.py checks.
"""

from s3proxy.devstore.server import DEVSTORE_KEY, DevStoreServer, build_devstore_app, start_devstore
from s3proxy.devstore.store import DEFAULT_MIN_PART_SIZE, Store

__all__ = [
    "DEFAULT_MIN_PART_SIZE",
    "DEVSTORE_KEY",
    "DevStoreServer",
    "Store",
    "build_devstore_app",
    "start_devstore",
]
