"""Encrypted object names at the backend client (issue 15 item 3, docs/NAMES.md).

``NameMappers`` is registered on the ``BackendClient`` at start-up (``register``); from then
on every request the client sends to a bucket with ``names.encrypt`` carries the stored
(encrypted) key instead of the plaintext one, and so does ``x-amz-copy-source``.  Keys under
the reserved prefix ``.s3proxy/`` are the proxy's own (manifests, upload records, the name
key itself: ids, never user names) and are sent as they are.

The name key of a bucket is a 32-byte data key from the bucket's key backend, bound to the
context ``{"bucket": B, "purpose": "names"}``, stretched to the 64 bytes AES-SIV needs with
HKDF-SHA256 (info ``"s3proxy names key v1" 0x00 B``), and kept wrapped in the bucket as
``.s3proxy/names-key`` (JSON, below).  It is created by the first request that needs it,
race-free (``If-None-Match: *``, then read back: every process uses the stored one), and only
while the bucket holds no encrypted name: a key deleted on the storage is never silently
replaced while names encrypted under it exist.  A replaced or damaged key fails to unwrap
(the key backend authenticates the wrap and its context), so a storage-side attacker gets
requests refused, never names encrypted under a key of their choosing.  The unwrapped key is
kept per process.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from s3proxy.aws.errors import S3Error
from s3proxy.backend.client import BackendClient
from s3proxy.config import NameSettings, Settings
from s3proxy.crypto import names
from s3proxy.keys.audit import AuditInfo
from s3proxy.keys.base import KeyServiceError, KeyUnavailable, WrappedKey, zeroize
from s3proxy.keys.manager import KeyManager
from s3proxy.observability import get_logger

log = get_logger("s3proxy.names")

RESERVED = ".s3proxy/"
NAMES_KEY = RESERVED + "names-key"
KDF_INFO = b"s3proxy names key v1\x00"
MAX_SIDECAR = 16 << 10
SETTLE_SECONDS = 0.5  # once per bucket, when its name key is created


def context_for(bucket: str) -> dict[str, str]:
    return {"bucket": bucket, "purpose": "names"}


def derive_name_key(dek: bytes | bytearray, bucket: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=names.KEY_SIZE, salt=None,
                info=KDF_INFO + bucket.encode()).derive(bytes(dek))


def encode_sidecar(wrapped: WrappedKey) -> bytes:
    obj = {"v": 1, "backend": wrapped.backend, "key_id": wrapped.key_id, "alg": wrapped.algorithm,
           "blob": base64.b64encode(wrapped.blob).decode(), "kdf": "hkdf-sha256"}
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def decode_sidecar(data: bytes) -> WrappedKey:
    try:
        obj = json.loads(data)
        if not isinstance(obj, dict) or obj.get("v") != 1 or obj.get("kdf") != "hkdf-sha256":
            raise ValueError("unknown version")
        fields = [obj["backend"], obj["key_id"], obj["alg"], obj["blob"]]
        if not all(isinstance(f, str) for f in fields):
            raise ValueError("bad field")
        return WrappedKey(fields[0], fields[1], fields[2], base64.b64decode(fields[3], validate=True))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise _damaged() from None


def _damaged() -> S3Error:
    return S3Error("InternalError", f"The bucket's name key ({NAMES_KEY}) is damaged or was replaced on the "
                   "storage; restore it from a backup.", 500)


def key_too_long(exc: names.KeyTooLong) -> S3Error:
    return S3Error("KeyTooLongError", f"Your key is too long: {exc} in a bucket with encrypted names.", 400)


class BucketNames:
    """The name cipher of one bucket, loaded (or created) once."""

    def __init__(self, client: BackendClient, keys: KeyManager, bucket: str, settings: NameSettings, *,
                 create: bool = True) -> None:
        self.client, self.keys, self.bucket, self.settings = client, keys, bucket, settings
        self.create = create  # False in the offline tools: they never make a name key
        self._cipher: names.NameCipher | None = None
        self._lock = asyncio.Lock()

    async def cipher(self) -> names.NameCipher:
        if self._cipher is None:
            async with self._lock:
                if self._cipher is None:
                    self._cipher = await self._load()
        return self._cipher

    async def stored_key(self, key: str) -> str:
        if key.startswith(RESERVED):
            return key
        cipher = await self.cipher()
        try:
            return cipher.encrypt_key(key)
        except names.KeyTooLong as e:
            raise key_too_long(e) from None

    # -- the key sidecar ---------------------------------------------------------------

    def _audit(self) -> AuditInfo:
        return AuditInfo(request_id="-", identity="s3proxy", operation="NamesKey", bucket=self.bucket, key=NAMES_KEY)

    async def _send(self, method: str, key: str | None, **kw: Any) -> tuple[int, bytes]:
        try:
            resp = await self.client.request(method, self.bucket, key, credentials=self.client.credentials, **kw)
            try:
                data = await resp.content.read(MAX_SIDECAR + 1) if method == "GET" else b""
            finally:
                resp.release()
        except aiohttp.ClientError as e:
            raise S3Error("ServiceUnavailable", "the storage backend is unreachable", 503) from e
        return resp.status, data

    async def _load(self) -> names.NameCipher:
        for _ in range(3):
            status, data = await self._send("GET", NAMES_KEY)
            if status == 200:
                if len(data) > MAX_SIDECAR:
                    raise _damaged()
                return await self._unwrap(decode_sidecar(data))
            if status != 404:
                raise S3Error("ServiceUnavailable", f"the storage backend answered {status} for the name key", 503)
            if not self.create:
                raise S3Error("InternalError", f"The bucket's name key ({NAMES_KEY}) is not on the storage: nothing "
                              "was written through the proxy with encrypted names yet, or it was deleted (restore it "
                              "from a backup).", 500)
            await self._create()  # then read back what is stored (ours, or a concurrent creator's)
        raise S3Error("ServiceUnavailable", "the bucket's name key could not be created; retry", 503)

    async def _unwrap(self, wrapped: WrappedKey) -> names.NameCipher:
        try:
            dek = await self.keys.data_key_for_read(wrapped, context_for(self.bucket), self._audit())
        except KeyUnavailable as e:
            raise S3Error("ServiceUnavailable", "the key service is unavailable", 503) from e
        except KeyServiceError:
            log.error("names_key_refused", bucket=self.bucket)
            raise _damaged() from None
        try:
            return names.NameCipher(derive_name_key(dek, self.bucket), self.bucket, self.settings.pad_to)
        finally:
            zeroize(dek)

    async def _create(self) -> None:
        status, data = await self._send("GET", None, query=[("list-type", "2"), ("delimiter", "/"), ("max-keys", "1000")])
        if status != 200:
            raise S3Error("ServiceUnavailable", f"the storage backend answered {status} to a listing", 503)
        if b"<Key>~" in data or b"<Prefix>~" in data:
            log.error("names_key_missing", bucket=self.bucket)
            raise S3Error("InternalError", f"The bucket's name key ({NAMES_KEY}) is missing on the storage while "
                          "encrypted names exist; restore it from a backup.", 500)
        try:
            dk = await self.keys.data_key_for_write(bucket=self.bucket, key=NAMES_KEY, requested_key_id=None,
                                                    extra_context={"purpose": "names"}, object_bytes=None,
                                                    audit=self._audit())
        except KeyServiceError as e:
            raise S3Error("ServiceUnavailable", "the key service could not create the name key", 503) from e
        zeroize(dk.plaintext)
        status, _ = await self._send("PUT", NAMES_KEY, body=encode_sidecar(dk.wrapped),
                                     headers={"if-none-match": "*", "content-type": "application/json"})
        if status not in (200, 412, 409):
            raise S3Error("ServiceUnavailable", f"the storage backend answered {status} storing the name key", 503)
        log.info("names_key_created", bucket=self.bucket, stored=status == 200)
        if status == 200:
            # A backend that ignores If-None-Match lets a concurrent creator (another worker)
            # overwrite ours: read back after a pause, so both settle on the last one stored.
            await asyncio.sleep(SETTLE_SECONDS)


class NameMappers:
    """Every bucket's ``BucketNames`` (buckets listed in the settings and the default bucket's)."""

    def __init__(self, client: BackendClient, settings: Settings, keys: KeyManager, *, create: bool = True) -> None:
        self.client, self.settings, self.keys, self.create = client, settings, keys, create
        self._buckets: dict[str, BucketNames] = {}

    def for_bucket(self, bucket: str | None) -> BucketNames | None:
        if not bucket:
            return None
        found = self._buckets.get(bucket)
        if found is None:
            conf = self.settings.bucket(bucket).names
            if not conf.encrypt:
                return None
            found = self._buckets[bucket] = BucketNames(self.client, self.keys, bucket, conf, create=self.create)
        return found

    def active(self, bucket: str | None) -> bool:
        return self.for_bucket(bucket) is not None

    async def stored_key(self, bucket: str | None, key: str) -> str:
        b = self.for_bucket(bucket)
        return key if b is None else await b.stored_key(key)


def register(client: BackendClient, settings: Settings, keys: KeyManager, *, create: bool = True) -> NameMappers | None:
    """Install the name mappers on ``client`` when any bucket (or the default) encrypts names
    (``create=False``, the offline tools: a missing name key is an error, never made)."""
    client.names_registered = True
    if not (settings.default_bucket.names.encrypt or any(b.names.encrypt for b in settings.buckets.values())):
        return None
    mappers = NameMappers(client, settings, keys, create=create)
    client.names = mappers
    return mappers


def mappers_of(client: BackendClient) -> NameMappers | None:
    m = client.names
    return m if isinstance(m, NameMappers) else None


async def plain_error(client: BackendClient, bucket: str, key: str, data: bytes) -> bytes:
    """A backend error document with the stored form of ``key`` in ``<Key>`` put back in plaintext
    (for ``http.ctx.relay``: clients see the key they sent, as from S3)."""
    mappers = mappers_of(client)
    b = mappers.for_bucket(bucket) if mappers is not None else None
    if b is None or b"<Key>" not in data:
        return data
    try:
        stored = (await b.stored_key(key)).encode()
    except S3Error:
        return data
    plain = key.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").encode()
    return data.replace(b"<Key>" + stored + b"</Key>", b"<Key>" + plain + b"</Key>")
