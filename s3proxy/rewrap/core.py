"""``Rewrapper``: one ``rewrap`` run (see the package docstring): per object, HEAD, unwrap,
check, re-wrap and rewrite the metadata with the shared backend operations (``backend.ops``,
``backend.copies``).

Imports: ``backend``, ``crypto``, ``keys``, ``config``, ``http.router`` (the reserved prefix)
and the package's ``walk`` and ``report``.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import secrets
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from s3proxy.backend import copies, names_tools, ops
from s3proxy.backend.client import BackendClient
from s3proxy.config import Settings
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
from s3proxy.http.router import is_reserved_key
from s3proxy.keys.audit import AuditInfo
from s3proxy.keys.base import KeyServiceError, WrappedKey, zeroize
from s3proxy.keys.manager import KeyManager
from s3proxy.keys.registry import build_key_manager
from s3proxy.rewrap.report import Progress, RewrapReport, print_report
from s3proxy.rewrap.walk import ListingError, SetupError, State, StateFile, Tracker, run_all

__all__ = ["RewrapError", "Rewrapper"]

META = "x-amz-meta-"
STATE_FORMAT = "s3proxy-rewrap-state"
STATE_VERSION = 1
DEFAULT_PAGE_SIZE = 1000
MAX_CONCURRENCY = 256
MAX_COPY_OBJECT_BYTES = 5 * 1024**3  # S3's CopyObject limit
REWRAP_MEMO = 10_000  # re-wrapped DEKs remembered (objects sharing a DEK re-wrap once)
# A copy within the same store keeps the backend's own encryption too.
KEPT_HEADERS = ops.KEPT_HEADERS + ops.BACKEND_SSE_HEADERS


class RewrapError(ops.OpError):
    """One object could not be re-wrapped; the message says why (never key material)."""


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in a container
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def write_headers(src: Mapping[str, str], env: Envelope) -> dict[str, str]:
    """Every header the rewritten object must carry: the kept ones, the client's metadata (v1;
    in v2 it is inside the sealed block) and the new envelope."""
    headers = {name.lower(): value for name in KEPT_HEADERS if (value := src.get(name)) is not None}
    for name, value in src.items():
        lname = name.lower()
        if lname.startswith(META) and lname[len(META):] not in ENVELOPE_KEYS and env.version < SEALED_VERSION:
            headers[lname] = value
    for name, value in encode_metadata(env).items():
        headers[META + name] = value
    return headers


class Rewrapper:
    """One ``rewrap`` run over ``bucket``/``prefix`` to ``to_key``."""

    def __init__(
        self, settings: Settings, bucket: str, prefix: str, to_key: str, *, dry_run: bool = False,
        concurrency: int = 8, state_file: str | os.PathLike[str] | None = None, progress: bool = True,
        page_size: int = DEFAULT_PAGE_SIZE, out: TextIO | None = None, err: TextIO | None = None,
    ):
        self.settings = settings
        self.bucket = bucket
        self.prefix = prefix or ""
        self.to_key = to_key
        self.dry_run = dry_run
        self.concurrency = max(1, min(int(concurrency), MAX_CONCURRENCY))
        self.state_path = Path(state_file) if state_file else Path(f".s3proxy-rewrap-{bucket}.json")
        self.state = StateFile(self.state_path, STATE_FORMAT, {"bucket": bucket, "prefix": self.prefix, "to": to_key},
                               version=STATE_VERSION, option="--state-file")
        self.page_size = max(1, min(int(page_size), 1000))
        self.out = out or sys.stdout
        self.report = RewrapReport(bucket, self.prefix, to_key, dry_run)
        self.progress = Progress(self.report, err or sys.stderr, enabled=progress)
        self.store: ops.Store | None = None
        self.names: names_tools.BucketNames | None = None  # encrypted object names: keys here are plaintext
        self._keys: KeyManager | None = None
        self.target_ids: set[str] = {to_key}
        self._run_id = "rewrap-" + secrets.token_hex(6)
        self._identity = f"rewrap:{_user()}"
        self._memo: OrderedDict[tuple[WrappedKey, bytes], asyncio.Future[WrappedKey]] = OrderedDict()
        self._pending_failed: set[str] = set()
        self._tracker = Tracker(None)
        self._walk_finished = False

    @property
    def keys(self) -> KeyManager:
        assert self._keys is not None, "Rewrapper.run() not started"
        return self._keys

    def _store(self) -> ops.Store:
        assert self.store is not None, "Rewrapper.run() not started"
        return self.store

    # -- one object -------------------------------------------------------------------------

    def _audit(self, key: str) -> AuditInfo:
        return AuditInfo(request_id=self._run_id, identity=self._identity, operation="Rewrap",
                         bucket=self.bucket, key=key)

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

    async def _process(self, key: str) -> None:
        """Re-wrap one object and record the outcome (never raises an Exception)."""
        try:
            outcome, detail = await self._one(key)
        except (ops.OpError, FormatError) as exc:
            outcome, detail = "failed", str(exc) or type(exc).__name__
            if isinstance(exc, ops.ObjectChanged):
                detail += "; rerun to retry it"
        except KeyServiceError as exc:
            outcome, detail = "failed", f"{exc.s3_code}: {exc}"
        except Exception as exc:  # noqa: BLE001 - one object's surprise must not stop the walk
            outcome, detail = "failed", f"{type(exc).__name__}: {exc}"
        if outcome == "failed":
            self._pending_failed.add(key)
        else:
            self._pending_failed.discard(key)
        self.report.record(key, outcome, detail)
        self.progress.show()

    async def _head(self, key: str) -> tuple[str, ops.Reply | None, Envelope | None]:
        """("", HEAD, envelope) of an object to re-wrap, else (outcome, None, None)."""
        head = await ops.call(self._store(), "HEAD", key)
        if head.status == 404:
            return "gone", None, None
        if head.status != 200:
            raise RewrapError(f"HEAD failed: HTTP {head.status}")
        meta = {k[len(META):].lower(): v for k, v in head.headers.items() if k.lower().startswith(META)}
        try:
            env = decode_metadata(meta)
        except FormatError as exc:
            raise RewrapError(f"unreadable s3proxy metadata ({type(exc).__name__})") from None
        if env is None:
            return "unencrypted", None, None
        if env.wrapped.backend == "sse-c":
            return "sse-c", None, None
        if env.wrapped.backend == self.keys.write_backend.name and env.wrapped.key_id in self.target_ids:
            return "already", None, None
        return "", head, env

    async def _one(self, key: str) -> tuple[str, str]:
        outcome, head, env = await self._head(key)
        if head is None or env is None:
            return outcome, ""
        etag = ops.quoted(head.headers.get("ETag", ""))
        total = int(head.headers.get("Content-Length", "-1"))
        n = ops.parts_from_etag(etag)
        # Some backends (rclone) give multipart objects plain ETags; an S object never has "-N".
        if (env.layout == "S" and n is not None) or etag == '""' or total < 0:
            raise RewrapError(f"layout {env.layout} does not match the backend ETag {etag!r}; not re-wrapped")
        if env.layout == "S" and total > MAX_COPY_OBJECT_BYTES:
            raise RewrapError("S object larger than 5 GiB: S3 cannot server-side copy it in one request")
        table = await ops.k_part_table(self._store(), key, etag, total, n) if env.layout == "K" else None
        new_env = await self._new_envelope(key, env)
        if new_env is None:
            return "would", f"{env.wrapped.backend}:{env.wrapped.key_id}"
        headers = write_headers(head.headers, new_env)
        if table is None:
            new_etag = (await copies.self_copy(self._store(), key, etag, headers)).etag
        else:
            tags, note = await ops.tagging(self._store(), key)
            if note:
                self.report.warnings.append(f"{key}: {note}")
            new_etag = (await copies.multipart_copy(self._store(), key, etag, table,
                                                    {**headers, "x-amz-tagging": tags} if tags else headers)).etag
        if new_etag.strip('"') != etag.strip('"'):
            self.report.warnings.append(f"{key}: the backend gave the rewritten object a new ETag ({etag} -> {new_etag})")
        return "rewrapped", ""

    async def _new_envelope(self, key: str, env: Envelope) -> Envelope | None:
        """The envelope under the target key (None in a dry run), after checking the old one."""
        audit = self._audit(key)
        dek = await self.keys.data_key_for_read(env.wrapped, dict(env.context), audit)
        try:
            try:
                verify_binding(env, dek, self.bucket, key)
            except FormatError:
                hint = ""
                if self.names is None and names_tools.looks_encrypted(key):
                    hint = (f"; the key looks like an encrypted name: if the bucket has encrypted names, its "
                            f"configuration must say so (buckets.{self.bucket}.names)")
                raise RewrapError(
                    f"metadata is not bound to this bucket and key (copied around the proxy?); not re-wrapped{hint}"
                ) from None
            try:
                open_seal(env, dek)  # v2: the sealed block is re-sealed under the new binding
            except FormatError:
                raise RewrapError("the sealed metadata block does not authenticate; not re-wrapped") from None
            if self.dry_run:
                return None
            return rebind(env, dek, self.bucket, key, wrapped=await self._rewrapped(env, audit))
        finally:
            zeroize(dek)

    # -- the walk ------------------------------------------------------------------------------

    async def _preflight(self) -> None:
        """Fail fast if the target key cannot wrap; learn its canonical id (a KMS alias -> its ARN)."""
        probe = bytearray(os.urandom(32))
        try:
            wrapped = await self.keys.wrap_data_key(self.to_key, probe, {"bucket": self.bucket}, audit=self._audit(""))
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

        await run_all([worker() for _ in range(min(self.concurrency, max(1, len(keys))))])

    async def _produce(self, queue: asyncio.Queue[tuple[int, str] | None], start_after: str | None) -> None:
        seq = 0
        try:
            try:
                async for page in names_tools.list_pages(self._store(), self.names, self.prefix, start_after,
                                                         self.page_size, self._undecryptable):
                    keys = [o.key for o in page if not is_reserved_key(o.key)]  # the proxy's own records
                    for i, key in enumerate(keys):
                        self.report.listed += 1
                        self._tracker.add(seq, key, page_end=i == len(keys) - 1)
                        await queue.put((seq, key))
                        seq += 1
            except (ops.OpError, names_tools.NamesSetupError) as exc:
                raise ListingError(str(exc)) from None
            self.progress.listing_done = True
            self.report.listing_complete = True
        except ListingError as exc:
            self.report.listing_error = str(exc)
        # Not in a finally: once cancelled, nobody consumes the queue any more.
        for _ in range(self.concurrency):
            await queue.put(None)

    async def _name_key(self) -> None:
        """A names bucket: its name key is re-wrapped too (every run; it is one small object)."""
        try:
            outcome, current = await names_tools.rewrap_name_key(
                self._store(), self.keys, self.to_key, self.target_ids, self._audit(names_tools.NAMES_KEY),
                dry_run=self.dry_run)
            detail = current if outcome == "would" else ""
        except (ops.OpError, KeyServiceError) as exc:
            outcome, detail = "failed", f"the bucket's name key: {exc}"
        self.report.record(names_tools.NAMES_KEY, outcome, detail)

    def _undecryptable(self, stored: str) -> None:
        self.report.warnings.append(f"stored key {stored!r} is not a name encrypted under the bucket's name key "
                                    "(written or renamed around the proxy?): skipped")

    async def _walk(self, start_after: str | None) -> None:
        queue: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue(maxsize=self.concurrency * 2)

        async def worker() -> None:
            while (item := await queue.get()) is not None:
                seq, key = item
                await self._process(key)
                if self._tracker.complete(seq) and not self.dry_run:
                    self.state.checkpoint(self._tracker, self._pending_failed, self._walk_finished)

        await run_all([self._produce(queue, start_after), *(worker() for _ in range(self.concurrency))])

    async def _resume_and_walk(self, state: State) -> None:
        self._tracker = Tracker(state.after)
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
                    self.state.remove()
                else:
                    self.state.checkpoint(self._tracker, self._pending_failed, self._walk_finished, force=True)
            self.progress.show(final=True)

    async def run(self) -> RewrapReport:
        started = time.monotonic()
        if self.settings.bucket(self.bucket).mode != "encrypt":
            raise SetupError(f"bucket {self.bucket!r} is configured as passthrough: nothing in it is encrypted")
        if not self.dry_run and not self.state_path.parent.is_dir():
            raise SetupError(f"the directory of the state file {self.state_path} does not exist")
        state = State() if self.dry_run else self.state.load()
        client = BackendClient(self.settings.backend)
        self.store = ops.Store(client, self.bucket)
        self._keys = build_key_manager(self.settings.keys)
        await client.start()
        try:
            # a names bucket: the client maps plaintext keys to stored ones, as the proxy does
            try:
                # no extra request for a bucket without names: a misconfigured one gets a hint per object
                self.names = await names_tools.open_names(client, self.settings, self.keys, self.bucket, check=False)
            except names_tools.NamesSetupError as exc:
                raise SetupError(str(exc)) from None
            await self._preflight()
            if self.names is not None:
                await self._name_key()
            await self._resume_and_walk(state)
        finally:
            for fut in self._memo.values():
                fut.cancel()
            await client.close()
            await self.keys.close()
        print_report(self.report, self.out, time.monotonic() - started, self.state_path)
        return self.report
