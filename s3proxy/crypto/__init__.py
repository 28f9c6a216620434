"""Encryption of object bodies and their metadata (normative spec: docs/FORMAT.md).

Primitives, all pure and sans-IO:

- ``sizes``: exact size arithmetic and range mapping. ``s_ciphertext_size`` /
  ``s_plaintext_size`` for single-PUT (S) bodies, ``k_part_*`` and
  ``k_object_plaintext_size`` for multipart (K) objects, ``s_span`` /
  ``k_span`` / ``k_object_spans`` turn a plaintext range into the chunks and
  ciphertext bytes to fetch.
- ``format``: the body streams (the public face of ``chunked``, ``s_body`` and
  ``k_body``). ``SEncryptor`` / ``SDecryptor`` (one Cobblestone-256 message per
  S body), ``SRangeDecryptor`` (random access), ``KPartEncryptor`` /
  ``KPartDecryptor`` (one K part: 70-byte header plus 1024 AES-256-GCM chunks),
  ``KObjectDecryptor`` (the one reader of whole K objects), and one exception
  class per named error (``errors``), all under ``FormatError``.
- ``streams``: ``decrypt_stream``, the async adapter that drives a decryptor
  through an async iterator of ciphertext pieces.
- ``envelope``: the metadata. ``Envelope`` (version, layout, object id,
  wrapped DEK, encryption context, placement-binding MAC), its encoding as
  ``x-amz-meta-s3proxy-*`` metadata.
- ``upload_token``: the envelope as the compact token carried in multipart UploadIds
  (tagged under a DEK-derived key, bound to bucket, key and backend upload id).
- ``seal``: the sealed block of an envelope v2. ``SealContents`` (user metadata, sealed
  headers, tags, checksum, client-facing ETag, manifest promise; strict canonical JSON) and
  ``seal_block`` / ``open_block`` (AES-GCM under a key derived from the DEK, the placement
  binding as associated data).

Place in the request flow: handlers get a DEK from ``keys``, build or decode
the ``Envelope``, compute lengths with ``sizes`` and hand bodies to the async
adapter in ``crypto.streams``, which drives the ``format`` objects.

Imports: the standard library, ``cryptography`` and ``s3proxy.keys.base``'s plain types
(``WrappedKey``); never the HTTP layer, the backend client or a key service.
"""
