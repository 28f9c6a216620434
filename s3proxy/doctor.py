"""``s3proxy doctor``: what the configured backend can do, and what s3proxy does about it.

Runs the capability probe (``s3proxy.backend.probes``) in one bucket the operator
names, prints one row per capability (result, what s3proxy does about it) and a verdict:

* ``OK`` (exit 0): everything s3proxy uses is there;
* ``WARN`` (exit 1): s3proxy works, some things degrade (listed);
* ``FAIL`` (exit 2): s3proxy cannot work correctly with this backend (no plain PUT/GET or
  ranged GET, no multipart upload, no room for the envelope in user metadata, metadata
  that does not survive a restart, a backend that does not answer).

Then (``--no-round-trip`` skips it) a single PUT, a ranged GET, a multipart upload, a listing
and a copy go through an in-process s3proxy built from the same configuration (its key
backend included), signed by a throw-away identity limited to a scratch prefix; the stored
object is checked to be ciphertext.  A failed step is a FAIL.

The scratch objects of both live under ``.s3proxy-probe/<random>/`` and are deleted before
the command ends.  A named ``backend.profile`` adds what only documentation can tell
(whether metadata survives a restart) and notes where the probe disagrees with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from xml.sax.saxutils import escape, unescape

import aiohttp
from pydantic import SecretStr

from s3proxy.backend.client import BackendClient
from s3proxy.backend.probes import new_prefix, probe, remove_prefix
from s3proxy.backend.profiles import CAPABILITIES, Capabilities, Finding, from_profile
from s3proxy.config import BackendSettings, Grant, Identity, Settings

Severity = Literal["fail", "warn", "info"]
EXIT = {"OK": 0, "WARN": 1, "FAIL": 2}
ENVELOPE_BYTES = 1536  # the largest v1 envelope (s3proxy.crypto.envelope.METADATA_BUDGET)
S3_METADATA = 2048


@dataclass(frozen=True)
class Impact:
    severity: Severity  # what a missing capability means
    when_yes: str
    when_no: str


IMPACT: Mapping[str, Impact] = {
    "put_get": Impact("fail", "stores ciphertext and reads it back", "cannot work: a plain PUT/GET fails"),
    "range_get": Impact("fail", "ranged and parallel GETs fetch only the chunks they need",
                        "cannot serve ranged reads or segmented GETs"),
    "multipart_upload": Impact("fail", "multipart uploads, each part encrypted on its own",
                               "cannot store objects uploaded in parts"),
    "multipart_etags": Impact("warn", "listing sizes computed from the listing alone",
                              "listing sizes stay exact with one HEAD per unseen plain-ETag entry (cached)"),
    "upload_part_copy": Impact("warn", "copies of multipart objects stay server-side",
                               "copies of multipart objects stream through s3proxy (decrypt + re-encrypt)"),
    "min_part_size": Impact("info", "parts keep the client's sizes (K parts are a little larger)",
                            "parts keep the client's sizes"),
    "put_if_none_match": Impact("warn", "create-only PUTs (If-None-Match: *) are enforced",
                                "If-None-Match on PUT is passed on but not enforced: no create-only writes"),
    "put_if_match": Impact("warn", "If-Match on PUT is enforced",
                           "If-Match on PUT is passed on but not enforced"),
    "complete_if_none_match": Impact("info", "conditional CompleteMultipartUpload is enforced",
                                     "conditional CompleteMultipartUpload is not enforced"),
    "copy_if_match": Impact("warn", "sealed re-tagging and trailing checksums are safe against concurrent writes",
                            "sealed Put/DeleteObjectTagging answer 501; trailing checksums are not sealed"),
    "versioning": Impact("info", "versioning as the bucket has it (rewrap rewrites current versions only)",
                         "no versioning: nothing to do"),
    "tagging": Impact("warn", "object tagging served", "object tagging fails for clients"),
    "object_attributes": Impact("warn", "GetObjectAttributes answered with plaintext sizes",
                                "GetObjectAttributes fails for clients"),
    "checksums": Impact("info", "s3proxy checks client checksums; the backend checks ciphertext uploads too",
                        "s3proxy checks client checksums itself; ciphertext is authenticated on read"),
    "checksum_mode": Impact("info", "backend checksums (of ciphertext) are never shown to clients",
                            "nothing: backend checksums describe ciphertext and are not shown"),
    "user_metadata": Impact("fail", "the envelope (up to 1,536 bytes) and 512 bytes of client metadata fit",
                            "less room for metadata than S3 has"),
    "metadata_persistent": Impact("fail", "envelopes (the wrapped data keys) are kept with the objects",
                                  "objects become unreadable when the backend forgets their metadata"),
}


@dataclass(frozen=True)
class Row:
    name: str
    result: str
    does: str
    level: Severity | None  # None: fine


def _metadata_row(f: Finding) -> Row:
    amount = f.amount
    if f.value == "yes" or (amount is not None and amount >= S3_METADATA):
        return Row("user_metadata", f"yes ({amount or S3_METADATA:,} bytes)", IMPACT["user_metadata"].when_yes, None)
    if amount is None:
        return Row("user_metadata", f"unknown: {f.reason}", "the envelope needs up to 1,536 bytes of metadata", "warn")
    if amount < ENVELOPE_BYTES:
        return Row("user_metadata", f"no ({amount:,} bytes)",
                   f"the envelope needs up to {ENVELOPE_BYTES:,} bytes: objects cannot be stored", "fail")
    return Row("user_metadata", f"no ({amount:,} bytes)",
               f"clients get about {amount - ENVELOPE_BYTES:,} bytes of their own metadata (512 on S3); "
               "larger metadata is refused", "warn")


def rows(caps: Capabilities, profile: Capabilities | None = None) -> list[Row]:
    """One row per capability; ``profile`` fills in what the probe cannot see."""
    out: list[Row] = []
    for name in CAPABILITIES:
        f = caps.findings.get(name, Finding("unknown", "not answered"))
        if f.value == "unknown" and profile is not None and profile.value(name) != "unknown":
            f = Finding(profile.value(name), f"{caps.source} could not tell; {profile.source}: "
                        f"{profile.findings[name].reason}", profile.findings[name].amount)
        if name == "user_metadata":
            out.append(_metadata_row(f))
            continue
        impact = IMPACT[name]
        note = ""
        if profile is not None and profile.value(name) not in ("unknown", f.value):
            note = f" [{profile.source} says {profile.value(name)}]"
        if f.value == "yes":
            out.append(Row(name, f"yes: {f.reason}{note}", impact.when_yes, None))
            continue
        level: Severity = impact.severity
        if f.value == "unknown" and level == "fail" and name != "put_get":
            level = "warn"  # not seen to fail; cannot vouch for it either
        does = impact.when_no if f.value == "no" else f"unknown, treated as missing: {impact.when_no}"
        if name == "put_get" and f.value == "unknown":
            does = "the backend did not answer"
        elif name == "metadata_persistent" and f.value == "unknown":
            does = ("the envelopes (wrapped data keys) live in user metadata: make sure this backend keeps it "
                    "across restarts (a named backend.profile records it)")
        out.append(Row(name, f"{f.value}: {f.reason}{note}", does, None if level == "info" else level))
    return out


def verdict(table: list[Row]) -> str:
    levels = {r.level for r in table}
    return "FAIL" if "fail" in levels else "WARN" if "warn" in levels else "OK"


def render(caps: Capabilities, table: list[Row], url: str, round_trip: str = "") -> str:
    w1 = max(len(r.name) for r in table)
    w2 = min(max(len(r.result) for r in table), 70)
    lines = [
        f"s3proxy doctor: backend {url}, bucket {caps.bucket}",
        f"probe: {caps.requests} requests in {caps.seconds:.2f} s; scratch objects under .s3proxy-probe/ deleted",
        "",
        f"{'capability':<{w1}}  {'result':<{w2}}  what s3proxy does",
        f"{'-' * w1}  {'-' * w2}  {'-' * 17}",
    ]
    for r in table:
        if r.name.startswith("round trip"):
            continue  # shown in the round-trip block, counted in the verdict
        mark = {"fail": "FAIL ", "warn": "WARN ", None: ""}[r.level]
        lines.append(f"{r.name:<{w1}}  {r.result:<{w2}}  {mark}{r.does}")
    if round_trip:
        lines.append(round_trip)
    v = verdict(table)
    lines.append("")
    if v == "OK":
        lines.append("verdict: OK (exit 0): s3proxy can use everything it needs on this backend")
    else:
        worst = [f"  - {r.name}: {r.does}" for r in table if r.level == ("fail" if v == "FAIL" else "warn")]
        head = ("verdict: FAIL (exit 2): s3proxy cannot work correctly with this backend:" if v == "FAIL" else
                "verdict: WARN (exit 1): s3proxy works; these degrade:")
        lines += [head, *worst]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- round trip


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    detail: str


class _StepFailed(Exception):
    pass


async def _call(c: BackendClient, method: str, bucket: str, key: str | None, *, want: int = 200,
                **kw: Any) -> tuple[Any, bytes]:
    """One request through the in-process proxy; the body is read whole (doctor's own small objects)."""
    resp = await c.request(method, bucket, key, **kw)
    try:
        body = await resp.read()
    finally:
        resp.release()
    if resp.status != want:
        code = re.search(rb"<Code>([^<]*)</Code>", body)
        raise _StepFailed(f"{method} answered {resp.status}" + (f" {code.group(1).decode()}" if code else ""))
    return resp.headers, body


async def delete_every_version(c: BackendClient, bucket: str, key: str) -> None:
    """Delete ``key`` (one of s3proxy's own keys under ``.s3proxy/``) and, on a versioned
    bucket, every version and delete marker of it: a plain DELETE there only adds a marker."""
    resp = await c.request("DELETE", bucket, key)
    versioned = (resp.headers.get("x-amz-delete-marker", "").strip().lower() == "true"
                 or resp.headers.get("x-amz-version-id", "null").strip() not in ("", "null"))
    resp.release()
    if not versioned:
        return
    for _ in range(3):  # a marker added by a concurrent delete is caught by the next pass
        _, xml = await _call(c, "GET", bucket, None, query=(("versions", ""), ("prefix", key)))
        found = []
        for block in re.findall(rb"<(?:Version|DeleteMarker)>(.*?)</(?:Version|DeleteMarker)>", xml, re.S):
            k, v = re.search(rb"<Key>([^<]*)</Key>", block), re.search(rb"<VersionId>([^<]*)</VersionId>", block)
            if k is not None and v is not None and unescape(k.group(1).decode()) == key:
                found.append(unescape(v.group(1).decode()))
        if not found:
            return
        for vid in found:
            r = await c.request("DELETE", bucket, key, query=(("versionId", vid),))
            r.release()


class _RoundTrip:
    """The round-trip steps, each a coroutine returning a detail or raising ``_StepFailed``."""

    def __init__(self, c: BackendClient, raw: BackendClient, bucket: str, prefix: str, encrypted: bool) -> None:
        self.c, self.raw, self.bucket, self.prefix, self.encrypted = c, raw, bucket, prefix, encrypted
        self.single = os.urandom(100 * 1024)
        self.parts = [os.urandom(5 * 1024 * 1024 + 3), os.urandom(1024)]
        self.whole = b"".join(self.parts)

    async def run(self) -> list[Step]:
        out: list[Step] = []
        steps: tuple[tuple[str, Callable[[], Awaitable[str]]], ...] = (
            ("put_get", self.put_get), ("ranged_get", self.ranged), ("multipart", self.multipart),
            ("listing", self.listing), ("copy", self.copy),
        )
        for name, run in steps:
            t0 = time.monotonic()
            try:
                detail = await run()
            except (_StepFailed, aiohttp.ClientError, TimeoutError, OSError) as e:
                out.append(Step(name, False, str(e) or type(e).__name__))
                continue
            out.append(Step(name, True, f"{detail} ({(time.monotonic() - t0) * 1000:.0f} ms)"))
        for key in ("single", "multi", "copy"):
            with contextlib.suppress(_StepFailed, aiohttp.ClientError, TimeoutError, OSError):
                manifest = await self._manifest_of(self.prefix + key)
                await _call(self.c, "DELETE", self.bucket, self.prefix + key, want=204)
                if manifest is not None:  # the multipart objects' completeness manifests (s3proxy.http.manifests)
                    await delete_every_version(self.raw, self.bucket, manifest)
        return out

    async def _manifest_of(self, key: str) -> str | None:
        from s3proxy.crypto.manifest import MANIFEST_PREFIX
        from s3proxy.http.objects import read_envelope

        headers, _ = await _call(self.raw, "HEAD", self.bucket, key)
        env = read_envelope(headers)
        return MANIFEST_PREFIX + env.object_id.hex() if env is not None and env.layout == "K" else None

    async def get(self, name: str, **kw: Any) -> bytes:
        return (await _call(self.c, "GET", self.bucket, self.prefix + name, **kw))[1]

    async def put_get(self) -> str:
        await _call(self.c, "PUT", self.bucket, self.prefix + "single", body=self.single)
        got = await self.get("single")
        if got != self.single:
            raise _StepFailed(f"GET gave {len(got)} other bytes")
        _, stored = await _call(self.raw, "GET", self.bucket, self.prefix + "single")
        if self.encrypted and (self.single[:64] in stored or len(stored) <= len(self.single)):
            raise _StepFailed("the backend holds the plaintext")
        kind = "ciphertext" if self.encrypted else "plaintext (a passthrough bucket)"
        return f"100 KiB; the backend holds {len(stored):,} bytes of {kind}"

    async def ranged(self) -> str:
        got = await self.get("single", want=206, headers={"Range": "bytes=1000-70999"})
        if got != self.single[1000:71000]:
            raise _StepFailed(f"the range gave {len(got)} other bytes")
        return "bytes=1000-70999"

    async def multipart(self) -> str:
        key = self.prefix + "multi"
        _, created = await _call(self.c, "POST", self.bucket, key, query=(("uploads", ""),))
        m = re.search(rb"<UploadId>([^<]+)</UploadId>", created)
        if m is None:
            raise _StepFailed("no UploadId")
        upload_id = unescape(m.group(1).decode())
        etags = []
        for n, body in enumerate(self.parts, 1):
            h, _ = await _call(self.c, "PUT", self.bucket, key, query=(("partNumber", str(n)), ("uploadId", upload_id)),
                               body=body)
            etags.append(h.get("ETag", ""))
        xml = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{escape(e)}</ETag></Part>" for n, e in enumerate(etags, 1))
        await _call(self.c, "POST", self.bucket, key, query=(("uploadId", upload_id),),
                    body=f"<CompleteMultipartUpload>{xml}</CompleteMultipartUpload>".encode())
        got = await self.get("multi")
        if got != self.whole:
            raise _StepFailed(f"GET gave {len(got)} other bytes")
        return "2 parts, 5 MiB + 1 KiB"

    async def listing(self) -> str:
        _, xml = await _call(self.c, "GET", self.bucket, None, query=(("list-type", "2"), ("prefix", self.prefix)))
        sizes = {unescape(k.decode()): int(v) for k, v in
                 re.findall(rb"<Key>([^<]*)</Key>.*?<Size>([0-9]+)</Size>", xml, re.S)}
        want = {self.prefix + "single": len(self.single), self.prefix + "multi": len(self.whole)}
        if {k: sizes.get(k) for k in want} != want:
            raise _StepFailed(f"listed sizes {sorted(sizes.values())}, expected {sorted(want.values())}")
        return "plaintext sizes of a single and a multipart object"

    async def copy(self) -> str:
        source = BackendClient.copy_source(self.bucket, self.prefix + "multi")
        await _call(self.c, "PUT", self.bucket, self.prefix + "copy", headers={"x-amz-copy-source": source})
        got = await self.get("copy")
        if got != self.whole:
            raise _StepFailed(f"the copy reads as {len(got)} other bytes")
        return "CopyObject of the multipart object"


async def round_trip(settings: Settings, bucket: str, *, timeout: float = 120.0) -> list[Step]:
    """A single PUT, a ranged GET, a multipart upload, a listing and a copy through an
    in-process s3proxy with this configuration (its keys), as a throw-away identity limited to
    a scratch prefix; everything is deleted afterwards."""
    from aiohttp import web

    from s3proxy.app import build_app
    from s3proxy.backend import names_tools
    from s3proxy.server import make_runner
    from s3proxy.state import STATE

    prefix = new_prefix()
    ak, sk = "DOCTOR" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    identity = Identity(name="s3proxy-doctor", access_key=ak, secret_key=SecretStr(sk),
                        allow=(Grant(bucket=bucket, prefix=prefix),))
    # Quiet: no access log; key audit events that would go to stdout go to stderr, not into the report.
    keys = settings.keys
    if keys.audit.target == "stdout":
        keys = keys.model_copy(update={"audit": keys.audit.model_copy(update={"target": "stderr"})})
    running = settings.model_copy(update={
        "identities": (identity,), "admin_listen": None, "keys": keys,
        "log": settings.log.model_copy(update={"access_log": False}),
    })
    app = build_app(running)
    runner = make_runner(app, running)
    await runner.setup()
    raw = BackendClient(settings.backend)
    # encrypted object names (docs/NAMES.md): the raw checks and the clean-up address stored keys
    names_tools.attach(raw, running, app[STATE].keys, bucket)
    await raw.start()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        c = BackendClient(BackendSettings(url=f"http://127.0.0.1:{port}", access_key=SecretStr(ak),
                                          secret_key=SecretStr(sk), region=settings.backend.region))
        await c.start()
        try:
            async with asyncio.timeout(timeout):
                return await _RoundTrip(c, raw, bucket, prefix, settings.bucket(bucket).mode == "encrypt").run()
        except TimeoutError:
            return [Step("round_trip", False, f"not done within {timeout:g} s")]
        finally:
            await c.close()
    finally:
        await runner.cleanup()
        await remove_prefix(raw, bucket, prefix)
        await raw.close()


def render_round_trip(steps: list[Step]) -> str:
    lines = ["", "round trip through an in-process s3proxy (this configuration, its keys):"]
    lines += [f"  {s.name:<11} {'ok  ' if s.ok else 'FAIL'}  {s.detail}" for s in steps]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the command


async def diagnose(settings: Settings, bucket: str, *, timeout: float | None = None,
                   with_round_trip: bool = True) -> tuple[Capabilities, str, int]:
    """Probe the configured backend in ``bucket`` (and round-trip through s3proxy): (capabilities, report, exit)."""
    client = BackendClient(settings.backend)
    await client.start()
    try:
        caps = await probe(client, bucket, timeout=timeout or settings.backend.probe_timeout)
    finally:
        await client.close()
    name = settings.backend.profile
    profile = from_profile(name) if name not in ("auto", "custom") else None
    table = rows(caps, profile)
    steps: list[Step] = []
    if with_round_trip and caps.value("put_get") == "yes":
        steps = await round_trip(settings, bucket)
        for s in steps:
            if not s.ok:
                table.append(Row(f"round trip: {s.name}", "FAIL", s.detail, "fail"))
    text = render(caps, table, settings.backend.url, render_round_trip(steps) if steps else "")
    return caps, text, EXIT[verdict(table)]


def run_doctor(settings: Settings, bucket: str, *, with_round_trip: bool = True) -> int:
    from s3proxy.observability import configure_logging

    configure_logging("warning", settings.log.format)  # to stderr; stdout is the report
    _, text, code = asyncio.run(diagnose(settings, bucket, with_round_trip=with_round_trip))
    print(text, flush=True)
    return code
