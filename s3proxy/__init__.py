"""s3proxy: a transparent encryption proxy for S3-compatible object storage.

A request reads top to bottom through the package::

    server (TLS, workers, signals)
      -> app middleware (request id, S3 XML errors, metrics)
      -> http.auth (SigV4 verify, aws-chunked decoding)
      -> http.router (classify the S3 operation)
      -> http.handlers (one coroutine per operation, glue only)
      -> crypto.streams (encrypt / decrypt adapters over crypto.format)
      -> backend.client (re-sign with the proxy's credentials, stream)

Pure, sans-IO modules: ``http.sigv4``, ``http.awschunked``, ``crypto.format``,
``crypto.sizes``.  Key material comes from ``keys`` (local keyring, AWS KMS,
PKCS#11) through a data-key cache.
"""

__version__ = "0.1.0"
