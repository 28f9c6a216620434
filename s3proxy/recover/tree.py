"""``s3proxy decrypt --prefix P --to DIR``: every object under a prefix to ``DIR/<key>``, resumable
(``.<name>.s3proxy-partial`` renamed once complete; complete files skipped), keys that would
escape ``DIR`` refused, progress on stderr."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import aiohttp

from s3proxy import progress
from s3proxy.backend import names_tools
from s3proxy.keys.base import zeroize
from s3proxy.recover.reader import RESERVED_KEYS, Reader, RecoverError, describe

PARTIAL_SUFFIX = ".s3proxy-partial"


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

    def __init__(self, reader: Reader, prefix: str, root: Path, concurrency: int, show: bool, err: Any, *,
                 names: names_tools.BucketNames | None = None) -> None:
        self.reader, self.prefix, self.root = reader, prefix, root
        self.names = names  # encrypted object names: listed keys are decrypted (names_tools)
        self._memo: dict[str, str] = {}
        self.concurrency = max(1, min(concurrency, 64))
        self.show, self.err = show, err
        self.report = TreeReport()
        self._t0 = time.monotonic()
        self._last = 0.0
        self._listed_bytes = 0

    async def _pages(self) -> AsyncIterator[list[Listed]]:
        token: str | None = None
        try:
            prefix = await names_tools.stored_prefix(self.names, self.prefix)
        except names_tools.NamesSetupError as exc:
            raise RecoverError(str(exc)) from None
        while True:
            q = [("list-type", "2"), ("encoding-type", "url"), ("prefix", prefix)]
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
            page = [
                Listed(
                    unquote_plus(k) if encoded else k, int(c.findtext(f"{ns}Size") or 0), c.findtext(f"{ns}LastModified") or ""
                )
                for c in root.iter(f"{ns}Contents")
                for k in (c.findtext(f"{ns}Key") or "",)
                if not (unquote_plus(k) if encoded else k).startswith(RESERVED_KEYS)  # the proxy's own records
            ]
            yield page if self.names is None else await self._plain(page)
            token = root.findtext(f"{ns}NextContinuationToken")
            if root.findtext(f"{ns}IsTruncated") != "true" or not token:
                return

    async def _plain(self, page: list[Listed]) -> list[Listed]:
        """A names bucket: the listed (stored) keys in plaintext; one that does not decrypt is a failure."""
        assert self.names is not None

        def undecryptable(stored: str) -> None:
            self.report.failures[stored] = ("the stored name does not decrypt under the bucket's name key "
                                            "(written or renamed around the proxy?)")

        try:
            plain = await names_tools.plain_keys(self.names, [i.key for i in page], self._memo, undecryptable)
        except names_tools.NamesSetupError as exc:
            raise RecoverError(str(exc)) from None
        return [Listed(key, page[i].size, page[i].last_modified) for i, key in plain]

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
                self.report.failures[item.key] = describe(exc)
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
            self.report.listing_error = describe(exc)
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


def print_tree_report(r: TreeReport, err: Any) -> None:
    print(
        f"decrypt: {r.written} written ({progress.human_bytes(r.bytes)}), {r.already} already complete, "
        f"{r.markers} folder markers skipped, {len(r.failures)} failed",
        file=err,
    )
    for key, why in sorted(r.failures.items()):
        print(f"  failed: {key}: {why}", file=err)
    if r.listing_error is not None:
        print(f"  the listing failed after {r.listed} objects ({r.listing_error}): rerun to resume", file=err)
