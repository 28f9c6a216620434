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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote_plus

import aiohttp

from s3proxy import progress
from s3proxy.backend.client import BackendClient
from s3proxy.crypto import sizes
from s3proxy.crypto.envelope import Envelope, decode_metadata, open_seal, verify_binding
from s3proxy.crypto.errors import FormatError, PartOrderError
from s3proxy.crypto.format import KPartDecryptor, SDecryptor, SRangeDecryptor, parse_k_header
from s3proxy.crypto.manifest import (
    MANIFEST_PREFIX,
    MAX_MANIFEST,
    Manifest,
    ManifestMismatch,
    decode_manifest,
    manifest_key,
)
from s3proxy.crypto.streams import KObjectDecryptor
from s3proxy.keys.audit import AuditInfo, AuditLog
from s3proxy.keys.base import KeyServiceError, zeroize

__all__ = ["add_parser", "cmd_decrypt"]

META = "x-amz-meta-"
READ_PIECE = 1 << 20
PARTIAL_SUFFIX = ".s3proxy-partial"
HEADER_CONCURRENCY = 8
_ETAG_PARTS = re.compile(r"-(\d+)\"?$")
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


def parts_from_etag(etag: str) -> int | None:
    m = _ETAG_PARTS.search(etag.strip())
    return int(m.group(1)) if m else None


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

    @property
    def size(self) -> int | None:
        """Plaintext size; None for a K object whose ETag has no ``-N`` (known after its headers)."""
        if self.env.layout == "S":
            return sizes.s_plaintext_size(self.total)
        return None if self.parts is None else sizes.k_object_plaintext_size(self.total, self.parts)


class Reader:
    """Reads and decrypts objects of one bucket straight from the backend."""

    def __init__(self, client: BackendClient, keys: Any, bucket: str, version_id: str | None = None) -> None:
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
            dec: SDecryptor | KObjectDecryptor = SDecryptor(obj.dek, obj.env.object_id, obj.total)
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
            async for piece in resp.content.iter_chunked(READ_PIECE):
                out = dec.update(piece)
                for chunk in out if isinstance(out, list) else (out,):
                    if chunk:
                        write(chunk)
                        written += len(chunk)
        finally:
            resp.release()
        tail = dec.finalize()
        if tail:
            write(tail)
            written += len(tail)
        return written

    async def part_table(self, obj: Opened) -> list[tuple[int, int, bytes]]:
        """[(offset, stored length, 70-byte header)] of each part: a uniform-size guess checked
        against the part headers, else a walk of the headers with small ranged GETs."""
        H, OVH = sizes.K_HEADER_SIZE, sizes.K_PART_OVERHEAD
        first = await self._fetch(obj.key, obj.etag, 0, H)
        c1 = parse_k_header(first).plaintext_length + OVH
        n = obj.parts
        table: list[tuple[int, int, bytes]] = []
        if n is not None and n >= 1 and OVH <= obj.total - (n - 1) * c1 <= c1:
            sem = asyncio.Semaphore(HEADER_CONCURRENCY)

            async def header(off: int) -> bytes:
                async with sem:
                    return await self._fetch(obj.key, obj.etag, off, off + H)

            offsets = [i * c1 for i in range(n)]
            headers = [first, *await asyncio.gather(*(header(o) for o in offsets[1:]))]
            guess = [(o, (offsets[i + 1] if i + 1 < n else obj.total) - o, h) for i, (o, h) in enumerate(zip(offsets, headers, strict=True))]
            with contextlib.suppress(FormatError):
                if all(parse_k_header(h).plaintext_length + OVH == c for _, c, h in guess):
                    table = guess
        if not table:
            off = 0
            while off < obj.total and len(table) < (n or sizes.MAX_PART_NUMBER):
                h = first if off == 0 else await self._fetch(obj.key, obj.etag, off, off + H)
                c = parse_k_header(h).plaintext_length + OVH
                table.append((off, c, h))
                off += c
            if off != obj.total or (n is not None and len(table) != n):
                raise RecoverError("the part headers do not add up to the object size")
        numbers = [parse_k_header(h).part_number for _, _, h in table]
        if any(b <= a for a, b in zip(numbers, numbers[1:], strict=False)):
            raise PartOrderError("part numbers do not strictly increase")
        if obj.manifest is not None:
            obj.manifest.check_parts([(pn, c - OVH) for pn, (_, c, _) in zip(numbers, table, strict=True)])
        return table

    async def plaintext_size(self, obj: Opened) -> tuple[int, list[tuple[int, int, bytes]] | None]:
        size = obj.size
        if size is not None:
            return size, None
        table = await self.part_table(obj)
        return obj.total - len(table) * sizes.K_PART_OVERHEAD, table

    async def span(self, obj: Opened, start: int, end: int, write: Write) -> int:
        """Decrypt plaintext ``[start, end)``, fetching only the chunks it needs."""
        if obj.env.layout == "S":
            p = sizes.s_plaintext_size(obj.total)
            span = sizes.s_span(p, start, end)
            header = await self._fetch(obj.key, obj.etag, 0, sizes.S_HEADER_SIZE)
            sdec = SRangeDecryptor(obj.dek, obj.env.object_id, header, p, span)
            return await self._feed(obj, span.ct_start, span.ct_end, sdec, write)
        written, p_off = 0, 0
        for off, c_part, header in await self.part_table(obj):
            p_part = c_part - sizes.K_PART_OVERHEAD
            a, b = max(start, p_off), min(end, p_off + p_part)
            if a < b:
                kspan = sizes.k_span(p_part, a - p_off, b - p_off)
                kdec = KPartDecryptor(obj.dek, obj.env.object_id, header, c_part, kspan)
                written += await self._feed(obj, off + kspan.ct_start, off + kspan.ct_end, kdec, write)
            p_off += p_part
        return written

    async def _feed(self, obj: Opened, a: int, b: int, dec: SRangeDecryptor | KPartDecryptor, write: Write) -> int:
        written = 0
        async for piece in self._ciphertext(obj.key, obj.etag, a, b):
            out = dec.update(piece)
            if out:
                write(out)
                written += len(out)
        tail = dec.finalize()
        if tail:
            write(tail)
            written += len(tail)
        return written


def _describe(exc: BaseException) -> str:
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


# -- --prefix: a directory tree -----------------------------------------------------------------


def safe_path(root: Path, key: str) -> Path | None:
    """``root/key`` if the key names a file inside ``root``; None for keys that would escape it."""
    segments = key.split("/")
    if key.startswith("/") or "\x00" in key or any(s in ("", ".", "..") for s in segments):
        return None
    if any(s.endswith(PARTIAL_SUFFIX) and s.startswith(".") for s in segments):
        return None
    return root.joinpath(*segments)


@dataclass
class Listed:
    key: str
    size: int
    last_modified: str


@dataclass
class TreeReport:
    listed: int = 0
    written: int = 0
    already: int = 0
    markers: int = 0
    bytes: int = 0
    failures: dict[str, str] = field(default_factory=dict)
    listing_done: bool = False
    listing_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.listing_done and not self.failures


def _mtime(text: str) -> float | None:
    with contextlib.suppress(TypeError, ValueError):
        if "," in text:
            return parsedate_to_datetime(text).timestamp()
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    return None


class Tree:
    """``--prefix P --to DIR``: every object under the prefix, resumable, with progress."""

    def __init__(self, reader: Reader, prefix: str, root: Path, concurrency: int, show: bool, err: Any) -> None:
        self.reader, self.prefix, self.root = reader, prefix, root
        self.concurrency = max(1, min(concurrency, 64))
        self.show, self.err = show, err
        self.report = TreeReport()
        self._t0 = time.monotonic()
        self._last = 0.0
        self._listed_bytes = 0

    async def _pages(self) -> AsyncIterator[list[Listed]]:
        token: str | None = None
        while True:
            q = [("list-type", "2"), ("encoding-type", "url"), ("prefix", self.prefix)]
            q += [("continuation-token", token)] if token else []
            resp = await self.reader.client.request("GET", self.reader.bucket, None, query=q)
            try:
                body = await resp.read()
            finally:
                resp.release()
            if resp.status != 200:
                raise RecoverError(f"HTTP {resp.status}")
            try:
                root = ET.fromstring(body)
            except ET.ParseError:
                raise RecoverError("the backend's listing is not XML") from None
            ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            encoded = (root.findtext(f"{ns}EncodingType") or "").lower() == "url"
            yield [
                Listed(
                    unquote_plus(k) if encoded else k, int(c.findtext(f"{ns}Size") or 0), c.findtext(f"{ns}LastModified") or ""
                )
                for c in root.iter(f"{ns}Contents")
                for k in (c.findtext(f"{ns}Key") or "",)
                if not (unquote_plus(k) if encoded else k).startswith(RESERVED_KEYS)  # the proxy's own records
            ]
            token = root.findtext(f"{ns}NextContinuationToken")
            if root.findtext(f"{ns}IsTruncated") != "true" or not token:
                return

    async def _one(self, item: Listed) -> None:
        if item.key.endswith("/") and item.size == 0:
            self.report.markers += 1
            return
        dest = safe_path(self.root, item.key)
        if dest is None:
            raise RecoverError("the key would leave the target directory; not written")
        obj = await self.reader.open(item.key)
        try:
            size, _ = await self.reader.plaintext_size(obj)
            mtime = _mtime(obj.last_modified)
            if dest.is_file() and dest.stat().st_size == size and (mtime is None or abs(dest.stat().st_mtime - mtime) < 1):
                self.report.already += 1
                return
            dest.parent.mkdir(parents=True, exist_ok=True)
            partial = dest.with_name("." + dest.name + PARTIAL_SUFFIX)
            try:
                with partial.open("wb") as f:
                    written = await self.reader.whole(obj, f.write)
                if written != size:
                    raise RecoverError(f"{written} plaintext bytes, expected {size}")
                if mtime is not None:
                    os.utime(partial, (mtime, mtime))
                os.replace(partial, dest)
            except BaseException:
                with contextlib.suppress(OSError):
                    partial.unlink()
                raise
        finally:
            zeroize(obj.dek)
        self.report.written += 1
        self.report.bytes += size

    async def _worker(self, queue: asyncio.Queue[Listed | None]) -> None:
        while (item := await queue.get()) is not None:
            try:
                await self._one(item)
            except Exception as exc:  # noqa: BLE001 - one object's failure must not stop the others
                self.report.failures[item.key] = _describe(exc)
            self._progress()

    async def run(self) -> TreeReport:
        queue: asyncio.Queue[Listed | None] = asyncio.Queue(maxsize=4 * self.concurrency)
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(self.concurrency)]
        try:
            async for page in self._pages():
                for item in page:
                    self.report.listed += 1
                    self._listed_bytes += item.size
                    await queue.put(item)
            self.report.listing_done = True
        except (RecoverError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.report.listing_error = _describe(exc)
        finally:
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
            self._progress(final=True)
        return self.report

    def _progress(self, final: bool = False) -> None:
        now = time.monotonic()
        if not self.show or (not final and now - self._last < 1.0):
            return
        self._last = now
        r = self.report
        done = r.written + r.already + r.markers + len(r.failures)
        total = r.listed if r.listing_done else None
        elapsed = now - self._t0
        line = (
            f"decrypt: {done}/{r.listed}{'' if r.listing_done else '+'} objects "
            f"{progress.bar(done, r.listed)} {progress.human_bytes(r.bytes)}, "
            f"{progress.human_bytes(r.bytes / elapsed if elapsed > 0 else 0)}/s, "
            f"{progress.rate_eta(done, total, elapsed)}"
        )
        tty = bool(getattr(self.err, "isatty", lambda: False)())
        print(("\r" + line) if tty and not final else line, file=self.err, end="" if tty and not final else "\n", flush=True)


def _print_tree_report(r: TreeReport, err: Any) -> None:
    print(
        f"decrypt: {r.written} written ({progress.human_bytes(r.bytes)}), {r.already} already complete, "
        f"{r.markers} folder markers skipped, {len(r.failures)} failed",
        file=err,
    )
    for key, why in sorted(r.failures.items()):
        print(f"  failed: {key}: {why}", file=err)
    if r.listing_error is not None:
        print(f"  the listing failed after {r.listed} objects ({r.listing_error}): rerun to resume", file=err)


# -- entry points ------------------------------------------------------------------------------------------


async def run_decrypt(settings: Any, args: argparse.Namespace, out: BinaryIO, err: Any) -> int:
    from s3proxy.keys.registry import build_key_manager

    target = settings.keys.audit.target
    keys = build_key_manager(settings.keys, audit=AuditLog("stderr" if target == "stdout" else target))
    client = BackendClient(settings.backend)
    await client.start()
    try:
        reader = Reader(client, keys, args.bucket, args.version_id)
        if args.key is not None:
            sent = 0

            def write(data: bytes | bytearray | memoryview) -> None:
                nonlocal sent
                out.write(data)
                sent += len(data)

            try:
                await decrypt_one(reader, args.key, args.range, write)
                out.flush()
            except Exception as exc:  # noqa: BLE001 - any failure: a message and exit status 1, no traceback
                what = f" (output incomplete: {sent} bytes written)" if sent else ""
                print(f"s3proxy decrypt: {args.key}: {_describe(exc)}{what}", file=err)
                return 1
            return 0
        tree = Tree(reader, args.prefix, Path(args.to), args.concurrency, not args.no_progress, err)
        report = await tree.run()
        _print_tree_report(report, err)
        return 0 if report.ok else 1
    finally:
        await client.close()
        await keys.close()


def _check_args(args: argparse.Namespace) -> None:
    if args.prefix is not None:
        if not args.to:
            raise SetupError("--prefix needs --to DIR")
        if args.range or args.version_id:
            raise SetupError("--range and --version-id go with --key, not --prefix")
        if not Path(args.to).is_dir():
            Path(args.to).mkdir(parents=True)
    elif args.to:
        raise SetupError("--to goes with --prefix (with --key the plaintext goes to stdout)")
    if args.range:
        parse_range(args.range, 1 << 62)  # the syntax, before anything is read


def cmd_decrypt(args: argparse.Namespace, *, out: BinaryIO | None = None, err: Any = None) -> int:
    """``s3proxy decrypt``; 0 done, 1 an object failed, 2 could not start."""
    from s3proxy.config import ConfigError, load_settings
    from s3proxy.keys.base import KeyConfigError

    err = err or sys.stderr
    out = out or sys.stdout.buffer
    try:
        _check_args(args)
        if args.key is not None and out is sys.stdout.buffer and sys.stdout.isatty():
            raise SetupError("refusing to write plaintext to a terminal: redirect stdout (> FILE)")
        overrides = {"backend": {"url": args.backend_url}} if args.backend_url else None
        settings = load_settings(args.config, overrides=overrides)
        return asyncio.run(run_decrypt(settings, args, out, err))
    except (SetupError, ConfigError, KeyConfigError, OSError) as exc:
        print(f"s3proxy decrypt: {exc}", file=err)
        return 2


def add_parser(sub: Any) -> None:
    """The ``decrypt`` subcommand (``sub`` is the ``add_subparsers()`` of the ``s3proxy`` parser)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "decrypt",
        help="decrypt objects straight from the storage, without a running proxy",
        description="Read ciphertext straight from the storage with the backend credentials and decrypt it "
        "with the configured key backend: one object to stdout (--key), or a prefix to a directory (--prefix "
        "--to, resumable).  Exit 0 if everything was written, 1 if an object failed, 2 if it could not start.",
    )
    p.add_argument("--config", metavar="FILE", help=("YAML configuration file (see config/s3proxy.example.yaml); S3PROXY_* environment "
                       "variables override its settings (default: none, built-in defaults and the environment only)"))
    p.add_argument("--backend-url", metavar="URL", help="storage endpoint (default: backend.url / S3PROXY_BACKEND_URL)")
    p.add_argument("--bucket", required=True, help="bucket on the storage (required)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--key", help="one object: its plaintext goes to stdout (--key or --prefix is required)")
    what.add_argument("--prefix", help="every object under this prefix (\"\" for all) to --to DIR (--key or --prefix is required)")
    p.add_argument("--to", metavar="DIR", help="with --prefix: directory the objects are written to, as DIR/<key> (required with --prefix)")
    p.add_argument("--range", metavar="A-B", help="with --key: plaintext bytes A..B inclusive (A-, -N also) (default: the whole object)")
    p.add_argument("--version-id", metavar="V", help="with --key: this version of the object (default: the current version)")
    p.add_argument("--concurrency", type=int, default=4, metavar="N", help="objects in parallel with --prefix (default: 4)")
    p.add_argument("--no-progress", action="store_true", help="do not print progress (default: print it)")
    p.set_defaults(func=cmd_decrypt)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s3proxy")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv if argv is not None else ["decrypt", *sys.argv[1:]])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
