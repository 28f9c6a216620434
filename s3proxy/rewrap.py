"""``s3proxy rewrap``: re-wrap data keys under another key, rewriting metadata only.

Walks ``--bucket``/``--prefix`` on the *backend* (ListObjectsV2 pages) with
the backend credentials and the configured key backends.  For each object:

1. HEAD it and decode its envelope (objects without one, written around the
   proxy, are skipped and reported; SSE-C objects are skipped: only the
   client holds their key; objects already under ``--to`` are skipped);
2. unwrap the DEK and check the placement binding (an object whose metadata
   is not bound to its own bucket and key is *not* re-bound: that would
   launder a misplaced object), re-wrap the DEK under the target key
   (``KeyManager.rewrap``: KMS ReEncrypt within aws-kms) and compute the new
   binding (``rebind``): only ``s3proxy-key``/``-ctx``/``-mac`` change, and
   for an envelope v2 object the sealed block (``s3proxy-seal``: the client's
   metadata, checksum and ETag), re-sealed unchanged under the new binding;
3. rewrite the metadata with a server-side copy of the object onto itself,
   guarded by ``x-amz-copy-source-if-match: <etag>`` so that a concurrent
   overwrite is never clobbered:

   * S layout: one CopyObject, ``x-amz-metadata-directive: REPLACE``, with
     every header the object had (Content-Type, Content-Encoding,
     Content-Disposition, Cache-Control, Content-Language, Expires, website
     redirect, storage class, object lock, backend SSE, user metadata);
   * K layout: CreateMultipartUpload with the same headers (and the object's
     tags), one UploadPartCopy per part of the exact byte range the part had
     (part sizes from ``HEAD ?partNumber=N``; if the backend does not answer
     those, from the 70-byte K part headers), CompleteMultipartUpload with
     ``If-Match`` (abort on any failure).  Same parts, same bytes: the
     ``-N`` ETag, the part boundaries and the size stay exactly the same.

Bodies never pass through this process: the only requests are LIST, HEAD,
GET ``?tagging``, copies, multipart create/complete/abort and, as a fallback,
70-byte ranged GETs of K part headers.  Version ids are whatever the backend
makes (on a versioned bucket the rewrite is a new version; the old version
keeps the old wrapping).

Resumable: a JSON state file holds the last key of the listing up to which
every object is finished (``after``; checkpointed as that prefix advances)
and the keys that failed.  A rerun retries the failed keys, then lists from
``start-after=after``.  After a run with no failure the state file is
removed.  ``--dry-run`` reads, unwraps and checks everything, changes
nothing, and does not touch the state file.

Known limits: object ACLs are not carried over (a copy gets the default ACL;
buckets with ACLs disabled, the S3 default, are unaffected); an S object over
5 GiB of ciphertext cannot be server-side copied in one request (S3 limit)
and is reported as failed; a backend that re-encrypts with its own SSE-KMS
key gives copies a new (non-MD5) ETag, reported as a warning.

Exit status: 0 when every object is done, 1 when any object (or the
listing) failed (the failures are listed), 2 when the run could not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import random
import re
import secrets
import sys
import time
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, unquote_plus, urlencode
from xml.sax.saxutils import escape

import aiohttp

from s3proxy import progress
from s3proxy.backend.client import BackendClient
from s3proxy.crypto import sizes
from s3proxy.crypto.envelope import (
    ENVELOPE_KEYS,
    SEALED_VERSION,
    Envelope,
    decode_metadata,
    encode_metadata,
    open_seal,
    rebind,
    verify_binding,
)
from s3proxy.crypto.errors import FormatError
from s3proxy.crypto.format import parse_k_header
from s3proxy.http.router import is_reserved_key
from s3proxy.keys.audit import AuditInfo
from s3proxy.keys.base import KeyServiceError, WrappedKey, zeroize
from s3proxy.keys.registry import build_key_manager

__all__ = ["RewrapReport", "Rewrapper", "run_rewrap"]

META = "x-amz-meta-"
STATE_FORMAT = "s3proxy-rewrap-state"
STATE_VERSION = 1
DEFAULT_PAGE_SIZE = 1000
MAX_CONCURRENCY = 256
PART_CONCURRENCY = 8
MAX_COPY_OBJECT_BYTES = 5 * 1024**3  # S3's CopyObject limit
CHECKPOINT_INTERVAL = 1.0  # seconds between state-file writes (besides page ends)
REWRAP_MEMO = 10_000  # re-wrapped DEKs remembered (objects sharing a DEK re-wrap once)
REPORT_LINES = 1000  # keys listed per kind of skip in the report (failures are all listed)

# Headers of the object that a metadata-replacing copy must send again.
KEPT_HEADERS = (
    "Content-Type",
    "Content-Encoding",
    "Content-Disposition",
    "Content-Language",
    "Cache-Control",
    "Expires",
    "x-amz-website-redirect-location",
    "x-amz-storage-class",
    "x-amz-object-lock-mode",
    "x-amz-object-lock-retain-until-date",
    "x-amz-object-lock-legal-hold",
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-bucket-key-enabled",
)
RETRY_STATUSES = frozenset({500, 502, 503, 504})
TRANSIENT_CODES = frozenset({"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout"})
ATTEMPTS = 4
_ETAG_PARTS = re.compile(r"-(\d+)\"?$")


class RewrapError(Exception):
    """One object could not be re-wrapped; the message says why (never key material)."""


class SetupError(Exception):
    """The run cannot start (exit status 2)."""


class ListingError(Exception):
    """ListObjectsV2 failed: the walk stops (exit status 1, resumable)."""


def parts_from_etag(etag: str | None) -> int | None:
    m = _ETAG_PARTS.search((etag or "").strip())
    return int(m.group(1)) if m else None


def quoted(etag: str) -> str:
    """An ETag in the quoted form conditions expect (some backends send it bare)."""
    etag = etag.strip()
    return etag if etag.startswith(('"', 'W/"')) else f'"{etag}"'


copy_source = BackendClient.copy_source


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _xml(body: bytes) -> ET.Element | None:
    try:
        return ET.fromstring(body)
    except ET.ParseError:
        return None


def _child_text(el: ET.Element, name: str) -> str | None:
    for c in el:
        if _local(c.tag) == name:
            return c.text or ""
    return None


def _error(body: bytes) -> tuple[str, str] | None:
    """(Code, Message) of an S3 error document, or None."""
    root = _xml(body) if body.lstrip().startswith(b"<") else None
    if root is None or _local(root.tag) != "Error":
        return None
    return _child_text(root, "Code") or "", (_child_text(root, "Message") or "")[:200]


def _describe(status: int, body: bytes) -> str:
    err = _error(body)
    return f"{err[0]} (HTTP {status})" if err else f"HTTP {status}"


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass
class RewrapReport:
    """What a run did.  Lists hold object keys."""

    bucket: str
    prefix: str
    to_key: str
    dry_run: bool
    listed: int = 0
    rewrapped: int = 0
    already: int = 0  # already under the target key
    would_rewrap: list[tuple[str, str]] = field(default_factory=list)  # (key, current key id)
    unencrypted: list[str] = field(default_factory=list)
    sse_c: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    listing_error: str | None = None
    listing_complete: bool = False
    resumed_after: str | None = None
    retried: int = 0

    @property
    def skipped(self) -> int:
        return self.already + len(self.unencrypted) + len(self.sse_c) + len(self.gone)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def processed(self) -> int:
        return self.rewrapped + len(self.would_rewrap) + self.skipped + self.failed

    @property
    def ok(self) -> bool:
        return not self.failures and self.listing_error is None and self.listing_complete


@dataclass
class _State:
    after: str | None = None
    failed: list[str] = field(default_factory=list)


class _Tracker:
    """The contiguous prefix of the listing in which every object is finished."""

    def __init__(self, after: str | None):
        self.after = after
        self._keys: dict[int, str] = {}
        self._page_ends: set[int] = set()
        self._done: set[int] = set()
        self._next = 0
        self.reached_page_end = False

    def add(self, seq: int, key: str, page_end: bool) -> None:
        self._keys[seq] = key
        if page_end:
            self._page_ends.add(seq)

    def complete(self, seq: int) -> bool:
        """Mark ``seq`` finished; True if the finished prefix grew."""
        self._done.add(seq)
        grew = False
        while self._next in self._done:
            self._done.discard(self._next)
            self.after = self._keys.pop(self._next)
            if self._next in self._page_ends:
                self._page_ends.discard(self._next)
                self.reached_page_end = True
            self._next += 1
            grew = True
        return grew


async def _run_all(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run coroutines concurrently; on the first exception cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in a container
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


class Rewrapper:
    """One ``rewrap`` run over ``bucket``/``prefix`` to ``to_key``."""

    def __init__(
        self,
        settings: Any,
        bucket: str,
        prefix: str,
        to_key: str,
        *,
        dry_run: bool = False,
        concurrency: int = 8,
        state_file: str | os.PathLike[str] | None = None,
        progress: bool = True,
        page_size: int = DEFAULT_PAGE_SIZE,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ):
        self.settings = settings
        self.bucket = bucket
        self.prefix = prefix or ""
        self.to_key = to_key
        self.dry_run = dry_run
        self.concurrency = max(1, min(int(concurrency), MAX_CONCURRENCY))
        self.state_path = Path(state_file) if state_file else Path(f".s3proxy-rewrap-{bucket}.json")
        self.show_progress = progress
        self.page_size = max(1, min(int(page_size), 1000))
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.report = RewrapReport(bucket, self.prefix, to_key, dry_run)
        self.client: BackendClient | None = None
        self.keys: Any = None
        self.target_ids: set[str] = {to_key}
        self._run_id = "rewrap-" + secrets.token_hex(6)
        self._identity = f"rewrap:{_user()}"
        self._memo: OrderedDict[tuple[WrappedKey, bytes], asyncio.Future[WrappedKey]] = OrderedDict()
        self._pending_failed: set[str] = set()
        self._tracker = _Tracker(None)
        self._last_checkpoint = 0.0
        self._checkpointed_after: str | None = None
        self._last_progress = 0.0
        self._progress_t0 = time.monotonic()
        self._listing_done = False
        self._walk_finished = False
        self._tty = bool(getattr(self.err, "isatty", lambda: False)())

    # -- backend requests ----------------------------------------------------

    async def _call(
        self,
        method: str,
        key: str | None,
        *,
        query: list[tuple[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        read_limit: int = 1 << 20,
        retry: bool = True,
        error_in_200: bool = False,
    ) -> Reply:
        """One backend request (retried on 5xx / connection errors); the body is read up to ``read_limit``."""
        assert self.client is not None
        attempts = ATTEMPTS if retry else 1
        for attempt in range(attempts):
            last = attempt + 1 >= attempts
            try:
                resp = await self.client.request(
                    method, self.bucket, key, query=query or [], headers=dict(headers or {}), body=body
                )
                try:
                    data = b"" if method == "HEAD" else await self._read(resp, read_limit)
                finally:
                    resp.release()
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                if last:
                    raise RewrapError(f"backend unreachable: {type(exc).__name__}") from None
                await self._backoff(attempt)
                continue
            status = resp.status
            if status == 200 and error_in_200:
                # CopyObject / UploadPartCopy / Complete may fail after sending 200.
                err = _error(data)
                if err is not None:
                    if err[0] in TRANSIENT_CODES and not last:
                        await self._backoff(attempt)
                        continue
                    status = 500
            if status in RETRY_STATUSES and not last:
                await self._backoff(attempt)
                continue
            return Reply(status, resp.headers, data)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    async def _read(resp: aiohttp.ClientResponse, limit: int) -> bytes:
        """At most ``limit`` bytes (more means an unexpected body: stop reading, never stream it)."""
        buf = bytearray()
        while len(buf) <= limit:
            chunk = await resp.content.read(limit + 1 - len(buf))
            if not chunk:
                break
            buf += chunk
        if len(buf) > limit:
            raise RewrapError(f"unexpectedly large backend response (> {limit} bytes)")
        return bytes(buf)

    @staticmethod
    async def _backoff(attempt: int) -> None:
        await asyncio.sleep(random.random() * min(2.0, 0.1 * (2**attempt)))

    # -- listing ---------------------------------------------------------------

    async def _pages(self, start_after: str | None) -> AsyncIterator[list[str]]:
        token: str | None = None
        while True:
            q = [("list-type", "2"), ("encoding-type", "url"), ("max-keys", str(self.page_size))]
            if self.prefix:
                q.append(("prefix", self.prefix))
            if token:
                q.append(("continuation-token", token))
            elif start_after:
                q.append(("start-after", start_after))
            try:
                r = await self._call("GET", None, query=q, read_limit=64 << 20)
            except RewrapError as exc:
                raise ListingError(str(exc)) from None
            if r.status != 200:
                raise ListingError(f"ListObjectsV2 failed: {_describe(r.status, r.body)}")
            root = _xml(r.body)
            if root is None or _local(root.tag) != "ListBucketResult":
                raise ListingError("ListObjectsV2 answered something that is not a ListBucketResult")
            url_encoded = (_child_text(root, "EncodingType") or "").lower() == "url"
            keys: list[str] = []
            for el in root:
                if _local(el.tag) == "Contents":
                    raw = _child_text(el, "Key") or ""
                    key = unquote_plus(raw) if url_encoded else raw
                    if not is_reserved_key(key):  # the proxy's own records (.s3proxy/), no envelope
                        keys.append(key)
            truncated = (_child_text(root, "IsTruncated") or "false").lower() == "true"
            token = _child_text(root, "NextContinuationToken")
            if keys:
                yield keys
            if not truncated:
                return
            if not token:
                raise ListingError("ListObjectsV2 was truncated without a continuation token")

    # -- one object -------------------------------------------------------------

    def _audit(self, key: str) -> AuditInfo:
        return AuditInfo(
            request_id=self._run_id, identity=self._identity, operation="Rewrap", bucket=self.bucket, key=key
        )

    async def _rewrapped(self, env: Envelope, audit: AuditInfo) -> WrappedKey:
        """The DEK of ``env`` wrapped under the target key (same context); one call per distinct DEK."""
        memo_key = (env.wrapped, env.context.canonical_json())
        fut = self._memo.get(memo_key)
        if fut is None or (fut.done() and (fut.cancelled() or fut.exception() is not None)):
            ctx = dict(env.context)
            fut = asyncio.ensure_future(self.keys.rewrap(env.wrapped, ctx, self.to_key, ctx, audit=audit))
            self._memo[memo_key] = fut
            while len(self._memo) > REWRAP_MEMO:
                self._memo.popitem(last=False)
        else:
            self._memo.move_to_end(memo_key)
        wrapped: WrappedKey = await asyncio.shield(fut)
        return wrapped

    @staticmethod
    def _write_headers(src: Mapping[str, str], env: Envelope) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name in KEPT_HEADERS:
            value = src.get(name)
            if value is not None:
                headers[name.lower()] = value
        for name, value in src.items():
            lname = name.lower()
            # v2: the client's metadata is inside the sealed block; anything else is not the client's
            if lname.startswith(META) and lname[len(META):] not in ENVELOPE_KEYS and env.version < SEALED_VERSION:
                headers[lname] = value
        for name, value in encode_metadata(env).items():
            headers[META + name] = value
        return headers

    async def _process(self, key: str) -> None:
        """Re-wrap one object and record the outcome (never raises an Exception)."""
        try:
            outcome, detail = await self._one(key)
        except (RewrapError, FormatError) as exc:
            outcome, detail = "failed", str(exc) or type(exc).__name__
        except KeyServiceError as exc:
            outcome, detail = "failed", f"{exc.s3_code}: {exc}"
        except Exception as exc:  # noqa: BLE001 - one object's surprise must not stop the walk
            outcome, detail = "failed", f"{type(exc).__name__}: {exc}"
        r = self.report
        if outcome == "failed":
            r.failures[key] = detail
            self._pending_failed.add(key)
        else:
            self._pending_failed.discard(key)
            if outcome == "rewrapped":
                r.rewrapped += 1
            elif outcome == "would":
                r.would_rewrap.append((key, detail))
            elif outcome == "already":
                r.already += 1
            elif outcome == "unencrypted":
                r.unencrypted.append(key)
            elif outcome == "sse-c":
                r.sse_c.append(key)
            elif outcome == "gone":
                r.gone.append(key)
        self._progress()

    async def _one(self, key: str) -> tuple[str, str]:
        head = await self._call("HEAD", key)
        if head.status == 404:
            return "gone", ""
        if head.status != 200:
            raise RewrapError(f"HEAD failed: HTTP {head.status}")
        meta = {k[len(META):].lower(): v for k, v in head.headers.items() if k.lower().startswith(META)}
        try:
            env = decode_metadata(meta)
        except FormatError as exc:
            raise RewrapError(f"unreadable s3proxy metadata ({type(exc).__name__})") from None
        if env is None:
            return "unencrypted", ""
        if env.wrapped.backend == "sse-c":
            return "sse-c", ""
        if env.wrapped.backend == self.keys.write_backend.name and env.wrapped.key_id in self.target_ids:
            return "already", ""
        etag = quoted(head.headers.get("ETag", ""))
        total = int(head.headers.get("Content-Length", "-1"))
        n = parts_from_etag(etag)
        # Some backends (rclone) give multipart objects plain ETags; an S object never has "-N".
        if (env.layout == "S" and n is not None) or etag == '""' or total < 0:
            raise RewrapError(f"layout {env.layout} does not match the backend ETag {etag!r}; not re-wrapped")
        if env.layout == "S" and total > MAX_COPY_OBJECT_BYTES:
            raise RewrapError("S object larger than 5 GiB: S3 cannot server-side copy it in one request")
        table = await self._part_table(key, etag, total, n) if env.layout == "K" else None

        audit = self._audit(key)
        dek = await self.keys.data_key_for_read(env.wrapped, dict(env.context), audit)
        try:
            try:
                verify_binding(env, dek, self.bucket, key)
            except FormatError:
                raise RewrapError(
                    "metadata is not bound to this bucket and key (copied around the proxy?); not re-wrapped"
                ) from None
            try:
                open_seal(env, dek)  # v2: the sealed block is re-sealed under the new binding
            except FormatError:
                raise RewrapError("the sealed metadata block does not authenticate; not re-wrapped") from None
            if self.dry_run:
                return "would", f"{env.wrapped.backend}:{env.wrapped.key_id}"
            new_env = rebind(env, dek, self.bucket, key, wrapped=await self._rewrapped(env, audit))
        finally:
            zeroize(dek)
        headers = self._write_headers(head.headers, new_env)
        if table is None:
            new_etag = await self._copy_single(key, etag, headers)
        else:
            new_etag = await self._copy_multipart(key, etag, table, headers)
        if new_etag.strip('"') != etag.strip('"'):
            self.report.warnings.append(f"{key}: the backend gave the rewritten object a new ETag ({etag} -> {new_etag})")
        return "rewrapped", ""

    async def _copy_single(self, key: str, etag: str, headers: dict[str, str]) -> str:
        h = dict(headers)
        h["x-amz-copy-source"] = copy_source(self.bucket, key)
        h["x-amz-copy-source-if-match"] = etag
        h["x-amz-metadata-directive"] = "REPLACE"
        r = await self._call("PUT", key, headers=h, error_in_200=True)
        if r.status == 412:
            raise RewrapError("the object changed while being re-wrapped (ETag differs); rerun to retry it")
        if r.status == 404:
            raise RewrapError("the object was deleted while being re-wrapped")
        if r.status != 200:
            raise RewrapError(f"server-side copy failed: {_describe(r.status, r.body)}")
        root = _xml(r.body)
        new_etag = _child_text(root, "ETag") if root is not None else None
        return new_etag if new_etag is not None else etag

    async def _tagging_header(self, key: str) -> str | None:
        """The object's tags as an ``x-amz-tagging`` value (a multipart rewrite would drop them)."""
        r = await self._call("GET", key, query=[("tagging", "")])
        if r.status in (404, 501) or (r.status == 400 and (_error(r.body) or ("",))[0] == "NotImplemented"):
            return None
        if r.status != 200:
            raise RewrapError(f"cannot read the object's tags: {_describe(r.status, r.body)}")
        root = _xml(r.body)
        if root is None:
            raise RewrapError("cannot parse the object's tags")
        pairs: list[tuple[str, str]] = []
        for el in root.iter():
            if _local(el.tag) == "Tag":
                pairs.append((_child_text(el, "Key") or "", _child_text(el, "Value") or ""))
        return urlencode(pairs, quote_via=quote) if pairs else None

    async def _part_table(self, key: str, etag: str, total: int, n: int | None) -> list[tuple[int, int]]:
        """[(offset, length)] of each part as the backend stored it (no body bytes read)."""
        if n is None:  # no "-N" in the ETag: the part headers are all there is
            return await self._part_table_from_headers(key, etag, total, None)
        sem = asyncio.Semaphore(PART_CONCURRENCY)

        async def part_size(i: int) -> int | None:
            async with sem:
                try:
                    r = await self._call("HEAD", key, query=[("partNumber", str(i))], retry=False)
                except RewrapError:
                    return None
            if r.status not in (200, 206):
                return None
            count = r.headers.get("x-amz-mp-parts-count")
            if count is not None and count != str(n):
                return None
            try:
                return int(r.headers.get("Content-Length", "-1"))
            except ValueError:
                return None

        got = await asyncio.gather(*(part_size(i) for i in range(1, n + 1)))
        if all(c is not None and c >= sizes.K_PART_OVERHEAD for c in got) and sum(got) == total:  # type: ignore[arg-type]
            table, off = [], 0
            for c in got:
                assert c is not None
                table.append((off, c))
                off += c
            return table
        return await self._part_table_from_headers(key, etag, total, n)

    async def _part_table_from_headers(
        self, key: str, etag: str, total: int, n: int | None
    ) -> list[tuple[int, int]]:
        """Fallback: walk the 70-byte K part headers (their lengths must add up to the size)."""
        h = sizes.K_HEADER_SIZE
        table: list[tuple[int, int]] = []
        off = 0
        while off < total and len(table) < (n or sizes.MAX_PART_NUMBER):
            if off + h > total:
                raise RewrapError("the part headers do not add up to the object size")
            r = await self._call(
                "GET", key, headers={"Range": f"bytes={off}-{off + h - 1}", "If-Match": etag}, read_limit=h
            )
            if r.status == 412:
                raise RewrapError("the object changed while being re-wrapped (ETag differs); rerun to retry it")
            # 206, or a 200 carrying the asked-for Content-Range (rclone); a whole body is never read.
            ranged = r.status == 206 or (
                r.status == 200 and r.headers.get("Content-Range", "").startswith(f"bytes {off}-{off + h - 1}/")
            )
            if not ranged or len(r.body) != h:
                raise RewrapError(f"cannot read part header at offset {off}: HTTP {r.status}")
            try:
                c = parse_k_header(r.body).plaintext_length + sizes.K_PART_OVERHEAD
            except FormatError as exc:
                raise RewrapError(f"bad part header at offset {off} ({type(exc).__name__})") from None
            table.append((off, c))
            off += c
        if off != total or (n is not None and len(table) != n):
            raise RewrapError("the part headers do not add up to the object size")
        return table

    async def _copy_multipart(self, key: str, etag: str, table: list[tuple[int, int]], headers: dict[str, str]) -> str:
        create = dict(headers)
        tagging = await self._tagging_header(key)
        if tagging:
            create["x-amz-tagging"] = tagging
        r = await self._call("POST", key, query=[("uploads", "")], headers=create)
        if r.status != 200:
            raise RewrapError(f"CreateMultipartUpload failed: {_describe(r.status, r.body)}")
        root = _xml(r.body)
        upload_id = _child_text(root, "UploadId") if root is not None else None
        if not upload_id:
            raise RewrapError("CreateMultipartUpload answered no UploadId")
        source = copy_source(self.bucket, key)
        sem = asyncio.Semaphore(PART_CONCURRENCY)
        etags: list[str] = [""] * len(table)

        async def copy_part(i: int, off: int, c: int) -> None:
            async with sem:
                pr = await self._call(
                    "PUT", key,
                    query=[("partNumber", str(i)), ("uploadId", upload_id)],
                    headers={
                        "x-amz-copy-source": source,
                        "x-amz-copy-source-range": f"bytes={off}-{off + c - 1}",
                        "x-amz-copy-source-if-match": etag,
                    },
                    error_in_200=True,
                )
            if pr.status == 412:
                raise RewrapError("the object changed while being re-wrapped (ETag differs); rerun to retry it")
            proot = _xml(pr.body) if pr.status == 200 else None
            part_etag = _child_text(proot, "ETag") if proot is not None else None
            if part_etag is None:
                raise RewrapError(f"server-side copy of part {i} failed: {_describe(pr.status, pr.body)}")
            etags[i - 1] = part_etag

        try:
            await _run_all([copy_part(i, off, c) for i, (off, c) in enumerate(table, start=1)])
            xml = "<CompleteMultipartUpload>" + "".join(
                f"<Part><PartNumber>{i}</PartNumber><ETag>{escape(e)}</ETag></Part>"
                for i, e in enumerate(etags, start=1)
            ) + "</CompleteMultipartUpload>"
            cr = await self._call(
                "POST", key, query=[("uploadId", upload_id)], headers={"If-Match": etag},
                body=xml.encode(), error_in_200=True, retry=False,
            )
            if cr.status == 412:
                raise RewrapError("the object changed while being re-wrapped (ETag differs); rerun to retry it")
            croot = _xml(cr.body) if cr.status == 200 else None
            new_etag = _child_text(croot, "ETag") if croot is not None else None
            if new_etag is None:
                raise RewrapError(f"CompleteMultipartUpload failed: {_describe(cr.status, cr.body)}")
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._call("DELETE", key, query=[("uploadId", upload_id)]))
            raise
        return new_etag

    # -- state file ---------------------------------------------------------------

    def _load_state(self) -> _State:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return _State()
        except (OSError, ValueError) as exc:
            raise SetupError(f"cannot read the state file {self.state_path}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT or data.get("version") != STATE_VERSION:
            raise SetupError(f"{self.state_path} is not an s3proxy rewrap state file")
        mine = {"bucket": self.bucket, "prefix": self.prefix, "to": self.to_key}
        theirs = {k: data.get(k) for k in mine}
        if theirs != mine:
            raise SetupError(
                f"the state file {self.state_path} belongs to another run "
                f"(bucket {theirs['bucket']!r}, prefix {theirs['prefix']!r}, to {theirs['to']!r}): "
                "finish that run, delete the file, or pass --state-file"
            )
        failed = data.get("failed") or []
        after = data.get("after")
        if not isinstance(failed, list) or not all(isinstance(k, str) for k in failed) or not (
            after is None or isinstance(after, str)
        ):
            raise SetupError(f"the state file {self.state_path} is malformed")
        return _State(after=after, failed=list(failed))

    def _write_state(self) -> None:
        data = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "to": self.to_key,
            "after": self._tracker.after,
            "failed": sorted(self._pending_failed),
            # every listed object is finished (only "failed" is left to retry)
            "walk_complete": self._walk_finished,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.state_path)
        self._last_checkpoint = time.monotonic()
        self._checkpointed_after = self._tracker.after

    def _checkpoint(self, *, force: bool = False) -> None:
        if self.dry_run:
            return
        if not force:
            if self._tracker.after == self._checkpointed_after:
                return
            if not self._tracker.reached_page_end and time.monotonic() - self._last_checkpoint < CHECKPOINT_INTERVAL:
                return
        self._tracker.reached_page_end = False
        self._write_state()

    # -- progress and report ---------------------------------------------------------

    def _progress(self, final: bool = False) -> None:
        if not self.show_progress:
            return
        now = time.monotonic()
        if not final and now - self._last_progress < (0.2 if self._tty else 2.0):
            return
        self._last_progress = now
        r = self.report
        listed = f"{r.listed}" + ("" if self._listing_done else "+")
        total = r.listed if self._listing_done else None
        shown_bar = progress.bar(r.processed, r.listed) + " " if total else ""
        done = "would re-wrap" if self.dry_run else "rewrapped"
        n_done = len(r.would_rewrap) if self.dry_run else r.rewrapped
        line = (
            f"rewrap {shown_bar}{r.processed}/{listed} listed, {n_done} {done}, "
            f"{r.skipped} skipped, {r.failed} failed, "
            f"{progress.rate_eta(r.processed, total, now - self._progress_t0)}"
        )
        if self._tty:
            self.err.write("\r" + line + "\x1b[K" + ("\n" if final else ""))
        else:
            self.err.write(line + "\n")
        self.err.flush()

    def _print_report(self, elapsed: float) -> None:
        r = self.report
        w = self.out.write
        where = f"s3://{self.bucket}/{self.prefix}"
        verb = f"{len(r.would_rewrap)} would be re-wrapped" if self.dry_run else f"{r.rewrapped} re-wrapped"
        w(
            f"rewrap {where} -> {self.to_key}{' (dry run)' if self.dry_run else ''}: {r.processed} objects, "
            f"{verb}, {r.skipped} skipped ({r.already} already under {self.to_key}, "
            f"{len(r.unencrypted)} not written through s3proxy, {len(r.sse_c)} SSE-C, {len(r.gone)} deleted), "
            f"{r.failed} failed, {elapsed:.1f} s\n"
        )
        if r.resumed_after is not None or r.retried:
            w(f"resumed: {r.retried} failed objects retried, listing after {r.resumed_after!r}\n")

        def listing(what: str, keys: list[str]) -> None:
            for key in keys[:REPORT_LINES]:
                w(f"{what}: {key}\n")
            if len(keys) > REPORT_LINES:
                w(f"{what}: ... and {len(keys) - REPORT_LINES} more\n")

        listing("would re-wrap", [f"{key} ({current} -> {self.to_key})" for key, current in sorted(r.would_rewrap)])
        listing("skipped, not written through s3proxy (no envelope)", sorted(r.unencrypted))
        listing("skipped, SSE-C (only the client has the key)", sorted(r.sse_c))
        listing("skipped, deleted since listed", sorted(r.gone))
        for msg in r.warnings:
            w(f"warning: {msg}\n")
        for key, reason in sorted(r.failures.items()):
            w(f"failed: {key}: {reason}\n")
        if r.listing_error:
            w(f"failed: listing stopped: {r.listing_error}\n")
        if not r.ok and not self.dry_run:
            w(f"state saved in {self.state_path}; run the same command again to retry and resume\n")
        self.out.flush()

    # -- the run ------------------------------------------------------------------

    async def _preflight(self) -> None:
        """Fail fast if the target key cannot wrap; learn its canonical id (a KMS alias -> its ARN)."""
        probe = bytearray(os.urandom(32))
        try:
            wrapped = await self.keys.wrap_data_key(
                self.to_key, probe, {"bucket": self.bucket}, audit=self._audit("")
            )
        except KeyServiceError as exc:
            raise SetupError(f"the target key {self.to_key!r} cannot wrap data keys: {exc.s3_code}: {exc}") from None
        finally:
            zeroize(probe)
        self.target_ids.add(wrapped.key_id)

    async def _pool(self, keys: list[str]) -> None:
        todo = list(reversed(keys))

        async def worker() -> None:
            while todo:
                await self._process(todo.pop())

        await _run_all([worker() for _ in range(min(self.concurrency, max(1, len(keys))))])

    async def _walk(self, start_after: str | None) -> None:
        queue: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue(maxsize=self.concurrency * 2)

        async def producer() -> None:
            seq = 0
            try:
                async for page in self._pages(start_after):
                    for i, key in enumerate(page):
                        self.report.listed += 1
                        self._tracker.add(seq, key, page_end=i == len(page) - 1)
                        await queue.put((seq, key))
                        seq += 1
                self._listing_done = True
                self.report.listing_complete = True
            except ListingError as exc:
                self.report.listing_error = str(exc)
            # Not in a finally: once cancelled, nobody consumes the queue any more.
            for _ in range(self.concurrency):
                await queue.put(None)

        async def worker() -> None:
            while (item := await queue.get()) is not None:
                seq, key = item
                await self._process(key)
                if self._tracker.complete(seq):
                    self._checkpoint()

        await _run_all([producer(), *(worker() for _ in range(self.concurrency))])

    async def run(self) -> RewrapReport:
        started = time.monotonic()
        if self.settings.bucket(self.bucket).mode != "encrypt":
            raise SetupError(f"bucket {self.bucket!r} is configured as passthrough: nothing in it is encrypted")
        if not self.dry_run and not self.state_path.parent.is_dir():
            raise SetupError(f"the directory of the state file {self.state_path} does not exist")
        state = _State() if self.dry_run else self._load_state()
        self.client = BackendClient(self.settings.backend)
        self.keys = build_key_manager(self.settings.keys)
        await self.client.start()
        try:
            await self._preflight()
            self._tracker = _Tracker(state.after)
            self._checkpointed_after = state.after
            self._pending_failed = set(state.failed)
            self.report.resumed_after = state.after
            self.report.retried = len(state.failed)
            try:
                if state.failed:
                    await self._pool(state.failed)
                await self._walk(state.after)
                self._walk_finished = self.report.listing_complete
            finally:
                # Also on Ctrl-C / crash: what finished stays finished.
                if not self.dry_run:
                    if self._walk_finished and self.report.ok and not self._pending_failed:
                        with contextlib.suppress(FileNotFoundError):
                            self.state_path.unlink()
                    else:
                        self._checkpoint(force=True)
                self._progress(final=True)
        finally:
            for fut in self._memo.values():
                fut.cancel()
            await self.client.close()
            await self.keys.close()
        self._print_report(time.monotonic() - started)
        return self.report


async def run_rewrap(settings: Any, args: Any) -> int:
    """``s3proxy rewrap``: 0 when every object is done, 1 if any failed, 2 if the run could not start."""
    rewrapper = Rewrapper(
        settings,
        args.bucket,
        getattr(args, "prefix", "") or "",
        args.to_key,
        dry_run=bool(getattr(args, "dry_run", False)),
        concurrency=getattr(args, "concurrency", 8) or 8,
        state_file=getattr(args, "state_file", None),
        progress=not getattr(args, "no_progress", False),
        page_size=getattr(args, "page_size", DEFAULT_PAGE_SIZE) or DEFAULT_PAGE_SIZE,
    )
    try:
        report = await rewrapper.run()
    except SetupError as exc:
        print(f"s3proxy rewrap: {exc}", file=sys.stderr)
        return 2
    return 0 if report.ok else 1
