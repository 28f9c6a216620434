"""s3proxy: a transparent encryption proxy for S3-compatible object storage.

A request reads top to bottom through the package::

    server (TLS, workers, signals)
      -> app middleware (request id, S3 XML errors, metrics)
      -> http.auth (SigV4 verify, aws-chunked decoding)
      -> http.router (classify the S3 operation)
      -> http.handlers (dispatch) -> http.objects (PUT) / reads (GET, HEAD) / copy /
         multipart / listing / attributes / postobject ...
         (http.ctx: the request context and relay helpers they share)
      -> crypto.streams (encrypt / decrypt adapters over crypto.format)
      -> backend.client (re-sign with the proxy's credentials, stream)

Layers, each importing only those below it (``tests/unit/test_import_graph.py``)::

    cli -> server, tools (rewrap, migrate, export, recover, doctor) -> app -> http
        -> state -> backend -> config -> keys, crypto -> aws (the S3 protocol, no I/O)

Pure, sans-IO: ``aws`` (SigV4/SigV2, aws-chunked, checksums, ranges, errors, XML),
``crypto.format``, ``crypto.sizes``, ``crypto.envelope``, ``crypto.manifest``,
``crypto.s3ec`` (the AWS S3 Encryption Client's format), ``crypto.names``.  Key material
comes from ``keys`` (local keyring, AWS KMS, PKCS#11) through a data-key cache.  The
embedded store (``devstore``) is a separate program: only ``cli`` imports it.
"""

__version__ = "0.1.0"
