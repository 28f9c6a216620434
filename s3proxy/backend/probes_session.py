"""The probe's scratch session: bounded requests under one random prefix, and their cleanup.

``ProbeSession`` sends the probe's requests (each bounded by ``request_timeout`` and all of them
by the probe's overall deadline), remembers the multipart uploads it started, and ``cleanup``
deletes everything under its own ``.s3proxy-probe/<32 hex>/`` prefix: unfinished uploads,
every version, plain objects, best effort and bounded.  ``remove_prefix`` does the same for
another ``new_prefix()`` prefix (``s3proxy doctor``'s round trip).  A request that times out,
fails at the connection level or gets a 5xx other than 501 raises ``Unanswered``.

The prefix is not reserved: clients may use ``.s3proxy-probe/`` like any other prefix.  The
session only ever deletes keys under its own unguessable 128-bit sub-prefix, which it lists
before deleting, so it cannot touch a client's objects; its scratch bodies are random bytes.

Imports only ``s3proxy.backend.client`` of the proxy: not the questions (``probes``), not the
capability values (``profiles``), nothing above the backend layer.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from xml.sax.saxutils import escape, unescape

import aiohttp

from s3proxy.backend.client import BackendClient

__all__ = ["BODY_LIMIT", "PROBE_PREFIX", "Answer", "ProbeSession", "Unanswered", "new_prefix", "remove_prefix"]

PROBE_PREFIX = ".s3proxy-probe/"
BODY_LIMIT = 1 << 16


class Unanswered(Exception):
    """A probe request timed out or failed at the connection level."""


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: bytes


_UPLOAD_ID = re.compile(rb"<UploadId>([^<]+)</UploadId>")
_KEY_EL = re.compile(rb"<Key>([^<]*)</Key>")
_VERSION_EL = re.compile(rb"<VersionId>([^<]*)</VersionId>")


def new_prefix() -> str:
    """A fresh, unguessable scratch prefix: ``.s3proxy-probe/<32 hex>/``."""
    return PROBE_PREFIX + secrets.token_hex(16) + "/"


class ProbeSession:
    """One probe's requests, deadline and scratch objects; also the state its questions share
    (``base``: the 1 KiB object the first question writes, its ETag, the bucket's versioning)."""

    def __init__(self, client: BackendClient, bucket: str, timeout: float, request_timeout: float) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = new_prefix()
        self.deadline = time.monotonic() + timeout
        self.request_timeout = request_timeout
        self.requests = 0
        self.uploads: dict[str, str] = {}  # upload id -> key (to abort)
        self.versioning = ""
        self.base = os.urandom(1024)
        self.base_etag = ""

    def key(self, name: str) -> str:
        return self.prefix + name

    async def send(self, method: str, key: str | None, *, query: tuple[tuple[str, str], ...] = (),
                   headers: Mapping[str, str] | None = None, body: bytes | None = None,
                   deadline: float | None = None) -> Answer:
        left = min(self.request_timeout, (deadline or self.deadline) - time.monotonic())
        if left <= 0:
            raise Unanswered("the probe's time budget is spent")
        self.requests += 1
        try:
            async with asyncio.timeout(left):
                resp = await self.client.request(method, self.bucket, key, query=query, headers=headers, body=body)
                try:
                    data = await resp.content.read(BODY_LIMIT) if method != "HEAD" else b""
                finally:
                    resp.release()
        except TimeoutError:
            raise Unanswered(f"no answer within {left:.3g} s") from None
        except (aiohttp.ClientError, OSError, ValueError) as e:
            raise Unanswered(f"request failed: {type(e).__name__}") from None
        if resp.status >= 500 and resp.status != 501:  # 501 NotImplemented is an answer; the rest are failures
            raise Unanswered(f"the backend answered {resp.status}")
        return Answer(resp.status, resp.headers, data)

    # -- helpers -------------------------------------------------------------------
    async def put(self, name: str, body: bytes, headers: Mapping[str, str] | None = None) -> Answer:
        return await self.send("PUT", self.key(name), headers=headers, body=body)

    async def create_upload(self, name: str) -> str | None:
        a = await self.send("POST", self.key(name), query=(("uploads", ""),))
        m = _UPLOAD_ID.search(a.body) if a.status == 200 else None
        if m is None:
            return None
        upload_id = unescape(m.group(1).decode())
        self.uploads[upload_id] = self.key(name)
        return upload_id

    async def upload_part(self, name: str, upload_id: str, n: int, body: bytes) -> str | None:
        a = await self.send("PUT", self.key(name), query=(("partNumber", str(n)), ("uploadId", upload_id)), body=body)
        return a.headers.get("ETag") if a.status == 200 else None

    async def complete(self, name: str, upload_id: str, etags: list[str],
                       headers: Mapping[str, str] | None = None) -> Answer:
        parts = "".join(f"<Part><PartNumber>{i}</PartNumber><ETag>{escape(e)}</ETag></Part>"
                        for i, e in enumerate(etags, 1))
        xml = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        a = await self.send("POST", self.key(name), query=(("uploadId", upload_id),), headers=headers, body=xml)
        if a.status == 200 and b"<Error>" not in a.body:
            self.uploads.pop(upload_id, None)
        return a

    async def cleanup(self, budget: float) -> None:
        """Delete everything under this probe's prefix: uploads, versions, objects (best effort)."""
        deadline = time.monotonic() + budget
        for upload_id, key in list(self.uploads.items()):
            await self._quiet("DELETE", key, (("uploadId", upload_id),), deadline)
        listed = await self._quiet("GET", None, (("prefix", self.prefix), ("uploads", "")), deadline)
        if listed is not None and listed.status == 200:
            for block in re.findall(rb"<Upload>(.*?)</Upload>", listed.body, re.S):
                k, u = _KEY_EL.search(block), _UPLOAD_ID.search(block)
                if k and u and unescape(k.group(1).decode()).startswith(self.prefix):
                    await self._quiet("DELETE", unescape(k.group(1).decode()),
                                      (("uploadId", unescape(u.group(1).decode())),), deadline)
        # Versions first (a versioned bucket keeps every overwrite; its status may be unknown
        # if the probe's question failed), plain listing where ListObjectVersions is refused.
        query: tuple[tuple[str, str], ...] = (("versions", ""), ("prefix", self.prefix))
        for _ in range(3):  # a second pass catches what a slow first DELETE left
            listed = await self._quiet("GET", None, query, deadline)
            if listed is not None and listed.status != 200 and "versions" in dict(query):
                query = (("list-type", "2"), ("prefix", self.prefix))
                listed = await self._quiet("GET", None, query, deadline)
            if listed is None or listed.status != 200:
                return
            blocks = re.findall(rb"<(?:Contents|Version|DeleteMarker)>(.*?)</(?:Contents|Version|DeleteMarker)>",
                                listed.body, re.S)
            if not blocks:
                return
            for block in blocks:
                km = _KEY_EL.search(block)
                if km is None:
                    continue
                key = unescape(km.group(1).decode())
                if not key.startswith(self.prefix):
                    continue  # never anything outside this probe's own prefix
                vm = _VERSION_EL.search(block)
                vq = (("versionId", unescape(vm.group(1).decode())),) if vm else ()
                await self._quiet("DELETE", key, vq, deadline)

    async def _quiet(self, method: str, key: str | None, query: tuple[tuple[str, str], ...],
                     deadline: float) -> Answer | None:
        try:
            return await self.send(method, key, query=query, deadline=deadline)
        except Unanswered:
            return None


async def remove_prefix(client: BackendClient, bucket: str, prefix: str, *, timeout: float = 15.0) -> None:
    """Delete everything under ``prefix`` (a ``PROBE_PREFIX`` sub-prefix) in ``bucket``: best effort, bounded."""
    if not prefix.startswith(PROBE_PREFIX) or len(prefix) <= len(PROBE_PREFIX) + 32:
        raise ValueError("only a probe's own random prefix can be removed")
    p = ProbeSession(client, bucket, timeout, 5.0)
    p.prefix = prefix
    await p.cleanup(timeout)
