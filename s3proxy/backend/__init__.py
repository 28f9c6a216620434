"""The storage backend: the signing HTTP client and the multi-request S3 operations.

``client`` (``BackendClient``: one pooled aiohttp session, SigV4-signed requests, the
encrypted-names hook; ``BoundBackend``: the client with the credentials one caller's requests
are signed with, passed explicitly), ``ops`` (retried small requests, listings, tags, part
tables, upload primitives) and ``copies`` (multipart server-side copies and metadata-only
self-copies, pinned to the source's ETag), shared by the proxy and the tools (``rewrap``,
``migrate``, ``export``); ``probes_session``/``probes`` (what the backend can do, asked with
scratch objects), ``profiles`` (named capability profiles and the ``Capabilities`` record),
``capabilities`` (the running proxy's re-probing watch); ``names_keys``/``names_tools``
(encrypted object names: the per-bucket name key and the mapping).

Operations return data (keys, sizes, ETags, tables), never XML, and raise ``ops.OpError``
subclasses that callers map to S3 errors.  Imports ``config``, ``keys``, ``crypto``, ``aws`` and
``observability``; never ``http``, ``state``, ``app``, ``server``, ``cli`` or ``devstore``.
"""
