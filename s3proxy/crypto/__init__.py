"""Encryption of object bodies and their metadata (normative spec: docs/FORMAT.md).

Primitives, all pure and sans-IO:

- ``sizes``: exact size arithmetic and range mapping. ``s_ciphertext_size`` /
  ``s_plaintext_size`` for single-PUT (S) bodies, ``k_part_*`` and
  ``k_object_plaintext_size`` for multipart (K) objects, ``s_span`` /
  ``k_span`` / ``k_object_spans`` turn a plaintext range into the chunks and
  ciphertext bytes to fetch.
- ``format``: the body streams. ``SEncryptor`` / ``SDecryptor`` (one
  Cobblestone-256 message per S body), ``SRangeDecryptor`` (random access),
  ``KPartEncryptor`` / ``KPartDecryptor`` (one K part: 70-byte header plus
  1024 AES-256-GCM chunks), ``KObjectDecryptor`` (whole K object), and one
  exception class per named error, all under ``FormatError``.
- ``envelope``: the metadata. ``Envelope`` (version, layout, object id,
  wrapped DEK, encryption context, placement-binding MAC), its encoding as
  ``x-amz-meta-s3proxy-*`` metadata and as the upload token carried in
  multipart UploadIds.

Place in the request flow: handlers get a DEK from ``keys``, build or decode
the ``Envelope``, compute lengths with ``sizes`` and hand bodies to the async
adapters in ``crypto.streams``, which drive the ``format`` objects.

Imports: the standard library, ``cryptography`` and ``s3proxy.keys.base``'s plain types
(``WrappedKey``); never the HTTP layer, the backend client or a key service.
"""
