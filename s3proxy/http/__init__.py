"""The request layer: one module per S3 operation family, behind ``handlers.dispatch``.

``auth`` (SigV4/SigV2 verification, aws-chunked bodies), ``router`` (which operation),
``authz`` (identities' grants), ``handlers`` (dispatch, passthrough), ``ctx`` (the request
context ``Ctx``, whose ``backend`` signs with the caller's own backend credentials when it has
them, and the relay helpers every operation shares); the operations: ``objects`` (PUT),
``reads`` with ``reads_body``/``reads_range`` (GET, HEAD), ``copy``, ``multipart``,
``listing``, ``attributes``, ``tagging``/``tagging_ops``, ``postobject``/``postpolicy``,
``cors``, ``s3ec_read``, the encrypted-names modules ``names_*``; ``sse`` (which key an
object is under), ``manifests`` and ``sidecars`` (the proxy's own records on the backend),
``memo`` (what the proxy learned about the backend's ETags and sizes).

Handlers never know the byte layout: sizes, part tables and ranges come from
``s3proxy.crypto`` (``objectinfo``, the readers), multi-request backend operations from
``s3proxy.backend`` (``ops``, ``copies``).

Imports ``state``, ``backend``, ``config``, ``keys``, ``crypto``, ``aws`` and ``observability``;
never ``app``, ``server``, ``cli``, the tools or ``devstore`` (tests/unit/test_import_graph.py).
"""
