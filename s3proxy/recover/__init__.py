"""``s3proxy decrypt``: read objects straight from the storage and decrypt them, no proxy running.

For recovery (the proxy is gone, broken or not trusted to be up) and for
leaving: it talks to the backend with the backend credentials
(``S3PROXY_BACKEND_*`` or ``backend:`` in the config, ``--backend-url``
overriding the URL) and unwraps data keys with the configured key backends,
exactly like the proxy's read path, reusing its readers (``s3proxy.crypto``):

* ``--key K``: the object's plaintext on stdout; ``--range A-B`` (``A-``,
  ``-N``) fetches and authenticates only the chunks of that range, through
  the same span arithmetic as a ranged GET; ``--version-id`` reads an old
  version.
* ``--prefix P --to DIR``: every object under the prefix to ``DIR/<key>``,
  resumable: a file is written to ``.<name>.s3proxy-partial`` and renamed
  only once every byte authenticated, with the object's size and
  LastModified as mtime, so a rerun skips files already complete.  Keys that
  would escape ``DIR`` (``..``, absolute, empty segments) are refused.
  Progress (objects, bytes, rate, ETA) on stderr.

Every read checks the placement binding, the sealed block (envelope v2),
every chunk, part order and (when the ETag has ``-N``) the part count, and
writes only authenticated plaintext: a failure mid-object stops that object
(on stdout the output is then incomplete and the exit status says so).
Bodies are streamed in bounded pieces, never held whole.  Objects without an
s3proxy envelope and SSE-C objects (their key is the client's) are failures,
never copied as they are.

Exit status: 0 when every object was written (or was already complete), 1
when any failed, 2 when the run could not start.

Modules: :mod:`~s3proxy.recover.reader` (one object), :mod:`~s3proxy.recover.tree` (a prefix to
a directory), :mod:`~s3proxy.recover.command` (the command line); ``python -m s3proxy.recover``
runs it.  A tool beside ``server``: it may import ``backend``, ``keys``, ``crypto``, ``config``
and ``progress``; nothing of the proxy imports it but ``cli``.
"""

from s3proxy.recover.command import add_parser, cmd_decrypt, main
from s3proxy.recover.tree import safe_path

__all__ = ["add_parser", "cmd_decrypt", "main", "safe_path"]
