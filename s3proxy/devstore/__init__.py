"""A small embedded S3-compatible storage server keeping its data on disk.

Used by s3proxy's "embedded default" mode as a local backend, and runnable
by hand::

    python -m s3proxy.devstore --root DIR --listen 127.0.0.1:9000 --access-key AK --secret-key SK

See :mod:`s3proxy.devstore.server` for what is supported and
:mod:`s3proxy.devstore.store` for the on-disk layout.

A separate program: it imports only the protocol layer (``s3proxy.aws``), ``config`` and
``observability``; nothing of the proxy imports it but ``cli`` (for ``s3proxy dev``).
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
