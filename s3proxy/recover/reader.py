"""``s3proxy decrypt``'s object reader: one stored object, its envelope authenticated, its body
fetched in bounded pieces and decrypted through the proxy's readers (``s3proxy.crypto``); whole
objects, ranges, K-object part tables, completeness manifests."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from s3proxy.backend.client import BackendClient
from s3proxy.crypto import objectinfo, sizes, streams
from s3proxy.crypto.envelope import Envelope, decode_metadata, open_seal, verify_binding
from s3proxy.crypto.errors import FormatError
from s3proxy.crypto.format import KObjectDecryptor, SDecryptor
from s3proxy.crypto.k_table import PartTable, part_info
from s3proxy.crypto.manifest import (
    MANIFEST_PREFIX,
    MAX_MANIFEST,
    Manifest,
    ManifestMismatch,
    decode_manifest,
    manifest_key,
)
from s3proxy.crypto.objectinfo import parts_from_etag
from s3proxy.keys.audit import AuditInfo
from s3proxy.keys.base import KeyServiceError, zeroize
from s3proxy.keys.manager import KeyManager

META = "x-amz-meta-"

READ_PIECE = 1 << 20

HEADER_CONCURRENCY = 8

Write = Callable[[bytes | bytearray | memoryview], Any]


class RecoverError(Exception):
    """One object could not be decrypted; the message says why (never key material)."""


class SetupError(Exception):
    """The run cannot start (exit status 2)."""


def parse_range(text: str, size: int) -> tuple[int, int]:
    """``A-B`` (inclusive), ``A-`` or ``-N`` as plaintext ``[start, end)`` of an object of ``size`` bytes."""
    m = re.fullmatch(r"(\d*)-(\d*)", text.strip())
    if not m or m.group() == "-":
        raise SetupError(f"--range {text!r}: expected A-B, A- or -N")
    a, b = m.groups()
    if not a:
        start, end = max(0, size - int(b)), size
    else:
        start, end = int(a), size if not b else min(int(b) + 1, size)
        if b and int(b) < start:
            raise SetupError(f"--range {text!r}: the end is before the start")
    if start >= size:
        raise RecoverError(f"range {text} is not satisfiable: the object has {size} bytes")
    return start, end


RESERVED_KEYS = MANIFEST_PREFIX.split("/", 1)[0] + "/"  # ".s3proxy/": manifests and upload records


@dataclass
class Opened:
    """A stored object whose envelope authenticated: what reading its body needs."""

    key: str
    env: Envelope
    dek: bytearray = field(repr=False)
    etag: str = ""
    total: int = 0  # ciphertext bytes on the backend
    parts: int | None = None  # "-N" of the ETag
    last_modified: str = ""
    manifest: Manifest | None = None  # the completeness manifest the sealed block promised
    table: PartTable | None = None  # the part table, once read
    headers: dict[int, bytes] = field(default_factory=dict, repr=False)  # part headers read, by offset

    @property
    def size(self) -> int | None:
        """Plaintext size; None for a K object whose ETag has no ``-N`` (known after its headers)."""
        if self.env.layout == "S":
            return sizes.s_plaintext_size(self.total)
        return None if self.parts is None else sizes.k_object_plaintext_size(self.total, self.parts)


class Reader:
    """Reads and decrypts objects of one bucket straight from the backend."""

    def __init__(self, client: BackendClient, keys: KeyManager, bucket: str, version_id: str | None = None) -> None:
        self.client, self.keys, self.bucket = client, keys, bucket
        self.query = [("versionId", version_id)] if version_id else []

    async def _get(self, key: str, headers: dict[str, str]) -> aiohttp.ClientResponse:
        try:
            return await self.client.request("GET", self.bucket, key, query=self.query, headers=headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RecoverError(f"backend unreachable: {type(exc).__name__}") from None

    async def open(self, key: str) -> Opened:
        """HEAD the object, unwrap its DEK, check the binding and the sealed block."""
        try:
            resp = await self.client.request("HEAD", self.bucket, key, query=self.query)
            resp.release()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RecoverError(f"backend unreachable: {type(exc).__name__}") from None
        if resp.status != 200:
            raise RecoverError("no such object" if resp.status == 404 else f"HEAD failed: HTTP {resp.status}")
        meta = {k[len(META):].lower(): v for k, v in resp.headers.items() if k.lower().startswith(META)}
        env = decode_metadata(meta)
        if env is None:
            raise RecoverError("not an s3proxy object (no envelope): not copied")
        if env.wrapped.backend == "sse-c":
            raise RecoverError("an SSE-C object: its key is held by the client, decrypt cannot read it")
        etag = resp.headers.get("ETag", "")
        total = int(resp.headers.get("Content-Length", "-1"))
        parts = parts_from_etag(etag)
        if total < 0 or not etag or (env.layout == "S" and parts is not None):
            raise RecoverError(f"layout {env.layout} does not match the backend ETag {etag!r}")
        audit = AuditInfo("decrypt-" + os.urandom(6).hex(), "s3proxy-decrypt", "GetObject", self.bucket, key)
        dek = await self.keys.data_key_for_read(env.wrapped, dict(env.context), audit)
        try:
            verify_binding(env, dek, self.bucket, key)
            contents = open_seal(env, dek)
            manifest = None
            if env.layout == "K" and contents is not None and contents.manifest:
                manifest = await self._manifest(env, dek, total, parts)
        except BaseException:
            zeroize(dek)
            raise
        return Opened(key, env, dek, etag, total, parts, resp.headers.get("Last-Modified", ""), manifest)

    async def _manifest(self, env: Envelope, dek: bytearray, total: int, parts: int | None) -> Manifest:
        """The object's completeness manifest (FORMAT.md 8), authenticated and checked against the
        stored length and the ETag's part count; ``ManifestMismatch`` if missing or different."""
        try:
            resp = await self.client.request("GET", self.bucket, manifest_key(env.object_id))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RecoverError(f"backend unreachable: {type(exc).__name__}") from None
        try:
            if resp.status >= 500:
                raise RecoverError(f"GET of the object's manifest failed: HTTP {resp.status}")
            data = await resp.content.read(MAX_MANIFEST + 1) if resp.status == 200 else b""
        finally:
            resp.release()
        mf = decode_manifest(data, dek, env.object_id)
        if mf.total + len(mf.parts) * sizes.K_PART_OVERHEAD != total or (parts is not None and parts != len(mf.parts)):
            raise ManifestMismatch("the object's length or part count differs from its manifest")
        return mf

    async def _ciphertext(self, key: str, etag: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Stored bytes ``[start, end)`` pinned to ``etag``, in pieces of at most 1 MiB."""
        if end <= start:
            return
        resp = await self._get(key, {"Range": f"bytes={start}-{end - 1}", "If-Match": etag})
        try:
            ranged = resp.status == 206 or (
                resp.status == 200 and resp.headers.get("Content-Range", "").startswith(f"bytes {start}-{end - 1}/")
            )
            if resp.status == 412:
                raise RecoverError("the object changed while it was being read (ETag differs)")
            if not ranged:
                raise RecoverError(f"ranged GET of bytes {start}-{end - 1} failed: HTTP {resp.status}")
            async for piece in resp.content.iter_chunked(READ_PIECE):
                yield piece
        finally:
            resp.release()

    async def _fetch(self, key: str, etag: str, start: int, end: int) -> bytes:
        data = b"".join([p async for p in self._ciphertext(key, etag, start, end)])
        if len(data) != end - start:
            raise RecoverError(f"short read at bytes {start}-{end - 1}")
        return data

    async def whole(self, obj: Opened, write: Write) -> int:
        """Decrypt the whole object into ``write``; the number of plaintext bytes."""
        if obj.env.layout == "S":
            dec: streams.Decryptor = SDecryptor(obj.dek, obj.env.object_id, obj.total)
        elif obj.manifest is not None:
            dec = KObjectDecryptor(obj.dek, obj.env.object_id, len(obj.manifest.parts), obj.manifest.parts)
        else:
            dec = KObjectDecryptor(obj.dek, obj.env.object_id, obj.parts)
        resp = await self._get(obj.key, {"If-Match": obj.etag})
        written = 0
        try:
            if resp.status != 200:
                changed = resp.status == 412
                raise RecoverError("the object changed since its HEAD" if changed else f"GET failed: HTTP {resp.status}")
            async for out in streams.decrypt_stream(dec, resp.content.iter_chunked(READ_PIECE)):
                write(out)
                written += len(out)
        finally:
            resp.release()
        return written

    def _header_fetch(self, obj: Opened) -> streams.Fetch:
        """``fetch(start, end)`` for the part-table planner: at most ``HEADER_CONCURRENCY`` at once,
        each part header read kept in ``obj.headers`` (by offset) for the manifest check."""
        sem = asyncio.Semaphore(HEADER_CONCURRENCY)

        async def fetch(start: int, end: int) -> bytes:
            if start in obj.headers and end - start == len(obj.headers[start]):
                return obj.headers[start]
            async with sem:
                data = await self._fetch(obj.key, obj.etag, start, end)
            if end - start == sizes.K_HEADER_SIZE:
                obj.headers[start] = data
            return data

        return fetch

    async def part_table(self, obj: Opened) -> PartTable:
        """[(offset, stored length)] of each part (``crypto.streams.k_part_table``: the uniform-size
        guess checked against the part headers, else a walk of them), checked against the
        completeness manifest, part numbers included."""
        if obj.table is None:
            table = await streams.k_part_table(self._header_fetch(obj), obj.total, obj.parts)
            if obj.manifest is not None:
                numbers = [part_info(obj.headers[off])[1] if off in obj.headers else None for off, _ in table]
                spans = objectinfo.part_spans(table)
                obj.manifest.check_parts([(pn, p) for pn, (_, p) in zip(numbers, spans, strict=True)])
            obj.table = table
        return obj.table

    async def plaintext_size(self, obj: Opened) -> tuple[int, PartTable | None]:
        size = obj.size
        if size is not None:
            return size, None
        table = await self.part_table(obj)
        return objectinfo.size_from_table(obj.env.layout, table), table

    async def span(self, obj: Opened, start: int, end: int, write: Write) -> int:
        """Decrypt plaintext ``[start, end)``, fetching only the chunks it needs."""

        def stream(a: int, b: int) -> AsyncIterator[bytes]:
            return self._ciphertext(obj.key, obj.etag, a, b)

        if obj.env.layout == "S":
            header = await self._fetch(obj.key, obj.etag, 0, sizes.S_HEADER_SIZE)
            p = sizes.s_plaintext_size(obj.total)
            pieces = streams.decrypt_s_range(obj.dek, obj.env.object_id, header, p, start, end, stream)
        else:
            table = await self.part_table(obj)
            pieces = streams.decrypt_k_range(obj.dek, obj.env.object_id, table, start, end, self._header_fetch(obj), stream)
        written = 0
        async for out in pieces:
            write(out)
            written += len(out)
        return written


def describe(exc: BaseException) -> str:
    if isinstance(exc, KeyServiceError):
        return f"{exc.s3_code}: {exc}"
    if isinstance(exc, FormatError):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return str(exc) or type(exc).__name__


async def decrypt_one(reader: Reader, key: str, rng: str | None, write: Write) -> int:
    obj = await reader.open(key)
    try:
        if rng is None:
            return await reader.whole(obj, write)
        size, _ = await reader.plaintext_size(obj)
        start, end = parse_range(rng, size)
        return await reader.span(obj, start, end, write)
    finally:
        zeroize(obj.dek)
