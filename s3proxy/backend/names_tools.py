"""Encrypted object names in the offline tools (``rewrap``, ``decrypt``; docs/NAMES.md).

The tools talk to the backend directly.  On a bucket with ``names.encrypt`` they register
load-only name mappers on their ``BackendClient`` (``attach``: the name key is read from
``.s3proxy/names-key`` and unwrapped, never created), so every request they make about one
object takes the plaintext key and sends the stored one, exactly as the proxy does, and the
envelope's binding is checked against the plaintext key.  A listing is the one place where
stored keys come back: ``list_pages`` lists under the stored form of a prefix of whole
segments, from the stored form of a plaintext ``start_after`` (the encryption is
deterministic, so a resume point saved as a plaintext key lists from the same place), and
yields plaintext keys, in the backend's (stored) order.  Stored keys that do not decrypt
(written or renamed around the proxy) are passed to ``on_undecryptable`` and left out.

Imports: ``backend.ops``, ``backend.names_keys``, ``crypto.names``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from s3proxy.aws.errors import S3Error
from s3proxy.backend import ops
from s3proxy.backend.client import BackendClient
from s3proxy.backend.names_keys import (
    NAMES_KEY,
    RESERVED,
    BucketNames,
    NameMappers,
    context_for,
    decode_sidecar,
    encode_sidecar,
    register,
)
from s3proxy.config import Settings
from s3proxy.crypto import names
from s3proxy.keys.manager import KeyManager

__all__ = ["NAMES_KEY", "BucketNames", "NamesSetupError", "attach", "list_pages", "load", "looks_encrypted", "open_names", "plain_keys", "rewrap_name_key", "stored_prefix"]


class NamesSetupError(Exception):
    """The bucket's names cannot be served (missing or damaged name key, a prefix inside a name)."""


def attach(client: BackendClient, settings: Settings, keys: KeyManager, bucket: str) -> BucketNames | None:
    """Register load-only name mappers on ``client``; the bucket's ``BucketNames`` (None: plain names)."""
    mappers: NameMappers | None = register(client, settings, keys, create=False)
    return mappers.for_bucket(bucket) if mappers is not None else None


async def _cipher(bucket_names: BucketNames) -> names.NameCipher:
    try:
        return await bucket_names.cipher()
    except S3Error as exc:
        raise NamesSetupError(f"bucket {bucket_names.bucket!r} has encrypted names: {exc.message}") from None


async def load(bucket_names: BucketNames | None) -> None:
    """Load (never create) the bucket's name key up front; ``NamesSetupError`` if it cannot be."""
    if bucket_names is not None:
        await _cipher(bucket_names)


def looks_encrypted(key: str) -> bool:
    """Whether a stored key has the shape of an encrypted name (for a hint in an error message)."""
    segments = [s for s in key.split("/") if s]
    return bool(segments) and all(s.startswith(names.MARK) and len(s) >= 23 for s in segments)


async def open_names(client: BackendClient, settings: Settings, keys: KeyManager, bucket: str, *,
                     check: bool = True) -> BucketNames | None:
    """``attach``, then load the name key (``NamesSetupError`` if it cannot be).  ``check``: a
    bucket the configuration says nothing about but which holds a name key is refused (one
    listing request): its names could not be read (``pad_to`` is part of the configuration,
    not of the key)."""
    bucket_names = attach(client, settings, keys, bucket)
    if bucket_names is not None:
        await load(bucket_names)
        return bucket_names
    if not check:
        return None
    # a one-key listing (always 200, unlike a HEAD: the rewrap tests count the statuses); a backend
    # that is unreachable or refuses to list: no check, the tool's own requests report the problem
    query = [("list-type", "2"), ("prefix", NAMES_KEY), ("max-keys", "1")]
    try:
        got = await ops.call(ops.Store(client, bucket), "GET", None, query=query, retry=False)
    except ops.OpError:
        return None
    if got.status == 200 and f"<Key>{NAMES_KEY}</Key>".encode() in got.body:
        raise NamesSetupError(f"bucket {bucket!r} has encrypted names ({NAMES_KEY} is there) but the configuration "
                              f"does not say so: add buckets.{bucket}.names (encrypt: true, the same pad_to) to it")
    return None


async def stored_prefix(bucket_names: BucketNames | None, prefix: str) -> str:
    """The stored form of a listing prefix ("" or whole segments ending in "/")."""
    if bucket_names is None or not prefix:
        return prefix
    try:
        return (await _cipher(bucket_names)).encrypt_prefix(prefix)
    except names.NamesError as exc:
        raise NamesSetupError(f"--prefix {prefix!r}: {exc}") from None


async def plain_keys(bucket_names: BucketNames, stored: list[str], memo: dict[str, str],
                     on_undecryptable: Callable[[str], None]) -> list[tuple[int, str]]:
    """(index, plaintext key) of the ``stored`` keys that decrypt; reserved keys pass unchanged."""
    out: list[tuple[int, str]] = []
    cipher: names.NameCipher | None = None
    for i, key in enumerate(stored):
        if key.startswith(RESERVED):
            out.append((i, key))
            continue
        if cipher is None:
            cipher = await _cipher(bucket_names)
        try:
            out.append((i, cipher.decrypt_key(key, memo)))
        except names.NamesError:
            on_undecryptable(key)
    return out


async def list_pages(store: ops.Store, bucket_names: BucketNames | None, prefix: str, start_after: str | None,
                     page_size: int, on_undecryptable: Callable[[str], None]) -> AsyncIterator[list[ops.ListedObject]]:
    """``ops.list_pages`` in plaintext keys (see the module docstring); ``NamesSetupError`` when the
    name key cannot be loaded or the prefix ends inside a name."""
    if bucket_names is None:
        async for page in ops.list_pages(store, prefix, start_after, page_size):
            yield page
        return
    sp = await stored_prefix(bucket_names, prefix)
    after = None
    if start_after:
        try:
            after = (await _cipher(bucket_names)).encrypt_key(start_after)
        except names.NamesError as exc:
            raise NamesSetupError(f"the resume point {start_after!r}: {exc}") from None
    memo: dict[str, str] = {}
    async for page in ops.list_pages(store, sp, after, page_size):
        plain = await plain_keys(bucket_names, [o.key for o in page], memo, on_undecryptable)
        yield [ops.ListedObject(key, page[i].size) for i, key in plain]


async def rewrap_name_key(store: ops.Store, keys: KeyManager, to_key: str, target_ids: set[str], audit: Any, *,
                          dry_run: bool) -> tuple[str, str]:
    """Re-wrap the bucket's name key (``.s3proxy/names-key``) under ``to_key``, as ``rewrap`` does
    for data keys (a key retired after the rotation must not be needed to read names):
    (``already``, ``would`` (dry run) or ``rewrapped``, the key it was under); ``ops.OpError`` on failure.  The write is
    ``If-Match`` the ETag read, so a concurrent change is never overwritten."""
    got = await ops.call(store, "GET", NAMES_KEY, read_limit=16 << 10)
    if got.status != 200:
        raise ops.OpError(f"{NAMES_KEY}: GET failed: HTTP {got.status}")
    try:
        wrapped = decode_sidecar(got.body)
    except S3Error as exc:
        raise ops.OpError(exc.message) from None
    current = f"{wrapped.backend}:{wrapped.key_id}"
    if wrapped.backend == keys.write_backend.name and wrapped.key_id in target_ids:
        return "already", current
    ctx = context_for(store.bucket)
    new = await keys.rewrap(wrapped, ctx, to_key, ctx, audit=audit)  # unwraps: the old key is checked too
    if dry_run:
        return "would", current
    put = await ops.call(store, "PUT", NAMES_KEY, body=encode_sidecar(new),
                         headers={"if-match": ops.quoted(got.headers.get("ETag", "")),
                                  "content-type": "application/json"})
    if put.status != 200:
        raise ops.OpError(f"{NAMES_KEY}: PUT failed: HTTP {put.status}")
    return "rewrapped", current
