"""The probe's questions: what the storage backend can do, asked with real requests.

``probe(client, bucket)`` writes a few scratch objects under ``.s3proxy-probe/<random>/`` in
one bucket the operator named (``backend.probe_bucket`` or ``s3proxy doctor --bucket``), asks
the backend a fixed list of questions (``_CHECKS``, one function per group of capabilities)
and deletes everything it created, also on failure or timeout (versions and unfinished uploads
included).  About 50 small requests, a few KiB of random bytes, bounded by ``timeout`` seconds
overall and ``request_timeout`` per request.  A question whose requests time out or fail is
``unknown``; the probe never raises.  The answer is the same ``Capabilities`` record a named
profile gives (``s3proxy.backend.profiles``); the requests and the cleanup are
``s3proxy.backend.probes_session``'s (``PROBE_PREFIX``, ``new_prefix`` and ``remove_prefix`` are
re-exported here, the probe's public face).

Imports ``backend.client``, ``backend.profiles`` and ``backend.probes_session`` only: not
``backend.capabilities`` (the running proxy's watch, which imports this), nothing above the
backend layer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import time
from collections.abc import Awaitable, Callable
from xml.sax.saxutils import unescape

from s3proxy.backend.client import BackendClient
from s3proxy.backend.probes_session import (
    PROBE_PREFIX,
    Answer,
    ProbeSession,
    Unanswered,
    new_prefix,
    remove_prefix,
)
from s3proxy.backend.profiles import CAPABILITIES, COPY_IF_MATCH, Capabilities, Finding, finding

__all__ = ["PROBE_PREFIX", "new_prefix", "probe", "remove_prefix"]

_ETAG_EL = re.compile(rb"<ETag>([^<]*)</ETag>")
_STATUS_EL = re.compile(rb"<Status>\s*(Enabled|Suspended)\s*</Status>")
_PARTS = re.compile(r"-[0-9]+\"?$")


def _sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _refused(a: Answer) -> str:
    code = re.search(rb"<Code>([^<]*)</Code>", a.body)
    return f"answered {a.status}" + (f" {code.group(1).decode(errors='replace')}" if code else "")


# Each check returns its findings; an Unanswered inside it makes them all "unknown".
Check = Callable[[ProbeSession], Awaitable[dict[str, Finding]]]


async def _check_put_get(p: ProbeSession) -> dict[str, Finding]:
    a = await p.put("base", p.base)
    if a.status != 200:
        return {"put_get": finding("no", f"PutObject {_refused(a)}")}
    p.base_etag = a.headers.get("ETag", "")
    g = await p.send("GET", p.key("base"))
    lag = ""
    for pause in (0.5, 1.0, 2.0):  # rclone's VFS may still be writing (longer on a loaded host): ask again
        if not (g.status == 200 and g.body != p.base):
            break
        lag = f" (after a first GET gave {len(g.body)} other bytes)"
        await asyncio.sleep(pause)
        g = await p.send("GET", p.key("base"))
    ok = g.status == 200 and g.body == p.base
    why = "read back intact" + lag if ok else (
        f"GetObject gave {len(g.body)} other bytes" if g.status == 200 else f"GetObject {_refused(g)}")
    out = {"put_get": finding("yes" if ok else "no", why)}
    r = await p.send("GET", p.key("base"), headers={"Range": "bytes=100-199"})
    ranged = r.body == p.base[100:200] and (r.status == 206 or r.headers.get("Content-Range") == "bytes 100-199/1024")
    if ranged:
        out["range_get"] = finding("yes", "206 with the requested bytes" if r.status == 206 else
                                   "the requested bytes with Content-Range (status 200, not 206)")
    else:
        out["range_get"] = finding("no", "the whole body instead of the range" if r.status == 200 else _refused(r))
    return out


async def _check_conditional_put(p: ProbeSession) -> dict[str, Finding]:
    out: dict[str, Finding] = {}
    a = await p.put("base", p.base, {"If-None-Match": "*"})
    out["put_if_none_match"] = (
        finding("yes", "412 on an existing key") if a.status == 412 else
        finding("no", "overwrote an existing key") if a.status == 200 else finding("no", _refused(a))
    )
    if a.status == 200:
        p.base_etag = a.headers.get("ETag", p.base_etag)
    wrong = await p.put("base", p.base, {"If-Match": '"00000000000000000000000000000000"'})
    if wrong.status == 200:
        out["put_if_match"] = finding("no", "ignored a mismatching If-Match")
    elif wrong.status != 412:
        out["put_if_match"] = finding("no", _refused(wrong))
    else:
        right = await p.put("base", p.base, {"If-Match": p.base_etag})
        out["put_if_match"] = (finding("yes", "412 on a mismatch, 200 on a match") if right.status == 200
                               else finding("no", f"refused a matching If-Match ({_refused(right)})"))
    return out


async def _check_copy_if_match(p: ProbeSession) -> dict[str, Finding]:
    """A copy with a wrong source ETag, a right one (it creates the destination), a wrong destination ETag."""
    src, wrong = BackendClient.copy_source(p.bucket, p.key("base")), '"00000000000000000000000000000000"'
    for header, etag, want in (("x-amz-copy-source-if-match", wrong, 412), ("x-amz-copy-source-if-match", p.base_etag, 200),
                               ("If-Match", wrong, 412)):
        a = await p.send("PUT", p.key("cpm"), headers={"x-amz-copy-source": src, header: etag})
        if a.status != want:
            return {COPY_IF_MATCH: finding("no", f"CopyObject with {'a wrong' if want == 412 else 'the right'} {header} "
                                           + ("copied" if a.status == 200 else _refused(a)))}
    return {COPY_IF_MATCH: finding("yes", "412 on a mismatching source or destination ETag, 200 on a match")}


async def _check_multipart(p: ProbeSession) -> dict[str, Finding]:
    upload_id = await p.create_upload("mp")
    if upload_id is None:
        return {"multipart_upload": finding("no", "CreateMultipartUpload refused")}
    etag = await p.upload_part("mp", upload_id, 1, os.urandom(1024))
    if etag is None:
        return {"multipart_upload": finding("no", "UploadPart refused")}
    done = await p.complete("mp", upload_id, [etag])
    if done.status != 200 or b"<Error>" in done.body:
        return {"multipart_upload": finding("no", f"CompleteMultipartUpload {_refused(done)}")}
    out = {"multipart_upload": finding("yes", "one-part upload completed")}
    listed = await p.send("GET", None, query=(("list-type", "2"), ("prefix", p.key("mp"))))
    m = _ETAG_EL.search(listed.body) if listed.status == 200 else None
    if m is None:
        out["multipart_etags"] = finding("unknown", f"ListObjectsV2 {_refused(listed)}")
    else:
        listed_etag = unescape(m.group(1).decode(), {"&quot;": '"', "&#34;": '"'}).strip()
        out["multipart_etags"] = (finding("yes", f"listed as {listed_etag}") if _PARTS.search(listed_etag)
                                  else finding("no", f"listed as {listed_etag} (no -N)"))
    return out


async def _check_min_part_size(p: ProbeSession) -> dict[str, Finding]:
    upload_id = await p.create_upload("small")
    if upload_id is None:
        return {"min_part_size": finding("unknown", "CreateMultipartUpload refused")}
    etags = [await p.upload_part("small", upload_id, n, os.urandom(1024)) for n in (1, 2)]
    if None in etags:
        return {"min_part_size": finding("yes", "a 1 KiB non-last part was refused at UploadPart")}
    done = await p.complete("small", upload_id, [e for e in etags if e is not None])
    if done.status == 200 and b"<Error>" not in done.body:
        return {"min_part_size": finding("no", "two 1 KiB parts completed")}
    return {"min_part_size": finding("yes", f"two 1 KiB parts: {_refused(done)}")}


async def _check_conditional_complete(p: ProbeSession) -> dict[str, Finding]:
    upload_id = await p.create_upload("mp")
    if upload_id is None:
        return {"complete_if_none_match": finding("unknown", "CreateMultipartUpload refused")}
    etag = await p.upload_part("mp", upload_id, 1, os.urandom(64))
    if etag is None:
        return {"complete_if_none_match": finding("unknown", "UploadPart refused")}
    a = await p.complete("mp", upload_id, [etag], {"If-None-Match": "*"})
    if a.status == 412 or b"PreconditionFailed" in a.body:
        return {"complete_if_none_match": finding("yes", "412 on an existing key")}
    if a.status == 200:
        return {"complete_if_none_match": finding("no", "completed over an existing key")}
    return {"complete_if_none_match": finding("no", _refused(a))}


async def _check_upload_part_copy(p: ProbeSession) -> dict[str, Finding]:
    upload_id = await p.create_upload("upc")
    if upload_id is None:
        return {"upload_part_copy": finding("unknown", "CreateMultipartUpload refused")}
    source = BackendClient.copy_source(p.bucket, p.key("base"))
    a = await p.send("PUT", p.key("upc"), query=(("partNumber", "1"), ("uploadId", upload_id)),
                     headers={"x-amz-copy-source": source, "x-amz-copy-source-range": "bytes=0-1023"})
    m = _ETAG_EL.search(a.body) if a.status == 200 else None
    if m is None:
        return {"upload_part_copy": finding("no", _refused(a) if a.status != 200 else "200 without a CopyPartResult")}
    done = await p.complete("upc", upload_id, [unescape(m.group(1).decode())])
    if done.status != 200 or b"<Error>" in done.body:
        return {"upload_part_copy": finding("no", f"Complete after UploadPartCopy {_refused(done)}")}
    g = await p.send("GET", p.key("upc"))
    if g.status == 200 and g.body == p.base:
        return {"upload_part_copy": finding("yes", "copied part holds the source bytes")}
    return {"upload_part_copy": finding("no", f"copied part holds {len(g.body)} bytes, not the source's 1024")}


async def _check_bucket_features(p: ProbeSession) -> dict[str, Finding]:
    out: dict[str, Finding] = {}
    v = await p.send("GET", None, query=(("versioning", ""),))
    if v.status == 200 and b"Versioning" in v.body:  # AWS: VersioningConfiguration; moto: GetBucketVersioningResponse
        m = _STATUS_EL.search(v.body)
        p.versioning = m.group(1).decode() if m else ""
        out["versioning"] = finding("yes", f"bucket versioning: {p.versioning or 'never enabled'}")
    else:
        out["versioning"] = finding("no", "200 without a VersioningConfiguration" if v.status == 200 else _refused(v))
    at = await p.send("GET", p.key("base"), query=(("attributes", ""),),
                      headers={"x-amz-object-attributes": "ETag,ObjectSize"})
    ok = at.status == 200 and b"<ObjectSize>1024</ObjectSize>" in at.body
    out["object_attributes"] = (finding("yes", "ObjectSize returned") if ok else
                                finding("no", "200 without ObjectSize" if at.status == 200 else _refused(at)))
    # Last use of the base object: a backend that ignores ?tagging stores the document as the body.
    t = await p.send("PUT", p.key("base"), query=(("tagging", ""),),
                     body=b"<Tagging><TagSet><Tag><Key>probe</Key><Value>1</Value></Tag></TagSet></Tagging>")
    if t.status != 200:
        out["tagging"] = finding("no", f"PutObjectTagging {_refused(t)}")
        return out
    g = await p.send("GET", p.key("base"), query=(("tagging", ""),))
    h = await p.send("HEAD", p.key("base"))
    if h.headers.get("Content-Length") != "1024":
        out["tagging"] = finding("no", "?tagging ignored: the tag document replaced the object")
    else:
        ok = g.status == 200 and b"<Tagging" in g.body and b"<Key>probe</Key>" in g.body
        out["tagging"] = finding("yes", "tags stored") if ok else finding("no", "tags not returned")
    return out


async def _check_checksums(p: ProbeSession) -> dict[str, Finding]:
    body = os.urandom(256)
    a = await p.put("ck", body, {"x-amz-checksum-sha256": _sha256_b64(body)})
    if a.status != 200:
        return {"checksums": finding("no", f"PUT with x-amz-checksum-sha256 {_refused(a)}")}
    h = await p.send("HEAD", p.key("ck"), headers={"x-amz-checksum-mode": "ENABLED"})
    mode = h.headers.get("x-amz-checksum-sha256") == _sha256_b64(body)
    out = {"checksum_mode": finding("yes", "checksum returned by HEAD") if mode else finding("no", "no checksum on HEAD")}
    bad = await p.put("ck", body, {"x-amz-checksum-sha256": _sha256_b64(b"not the body")})
    out["checksums"] = (finding("no", "accepted a wrong x-amz-checksum-sha256") if bad.status == 200
                        else finding("yes", f"wrong checksum {_refused(bad)}"))
    return out


async def _check_metadata(p: ProbeSession) -> dict[str, Finding]:
    """User metadata: 2 KiB (S3's limit, key "p" included) first; below that, a bisection."""

    async def stored(total: int) -> bool:
        value = "a" * (total - 1)
        a = await p.put("meta", b"", {"x-amz-meta-p": value})
        if a.status != 200:
            return False
        h = await p.send("HEAD", p.key("meta"))
        return h.status == 200 and h.headers.get("x-amz-meta-p") == value

    if await stored(2048):
        return {"user_metadata": finding("yes", "2,048 bytes stored intact", 2048)}
    lo, hi = 0, 2048  # lo: stored (0 trivially), hi: refused or altered
    for _ in range(5):
        mid = (lo + hi) // 2
        if await stored(mid):
            lo = mid
        else:
            hi = mid
    return {"user_metadata": finding("no", f"{lo:,} bytes stored, {hi:,} refused or altered", lo)}


# (names, check) in order; the base object is written by the first and used by the others.
_CHECKS: tuple[tuple[tuple[str, ...], Check], ...] = (
    (("put_get", "range_get"), _check_put_get),
    (("multipart_upload", "multipart_etags"), _check_multipart),
    (("upload_part_copy",), _check_upload_part_copy),
    (("min_part_size",), _check_min_part_size),
    (("put_if_none_match", "put_if_match"), _check_conditional_put),
    (("complete_if_none_match",), _check_conditional_complete),
    ((COPY_IF_MATCH,), _check_copy_if_match),
    (("versioning", "tagging", "object_attributes"), _check_bucket_features),
    (("checksums", "checksum_mode"), _check_checksums),
    (("user_metadata",), _check_metadata),
)


async def probe(client: BackendClient, bucket: str, *, timeout: float = 30.0, request_timeout: float = 5.0,
                cleanup_timeout: float = 15.0) -> Capabilities:
    """Ask the backend, in ``bucket``, what it can do; never raises, always cleans up."""
    p = ProbeSession(client, bucket, timeout, request_timeout)
    start = time.monotonic()
    findings: dict[str, Finding] = {}
    try:
        for names, check in _CHECKS:
            first = findings.get("put_get")
            if first is not None and first.value != "yes":
                reason = f"not asked: the plain PUT/GET failed ({first.reason})"
                findings.update({n: finding("unknown", reason) for n in names if n not in findings})
                continue
            try:
                findings.update(await check(p))
            except Unanswered as e:
                findings.update({n: finding("unknown", str(e)) for n in names if n not in findings})
    finally:
        # Bounded, and also after a cancellation (the server stopping): whoever cancels the
        # probe waits up to ``cleanup_timeout`` for it to remove its objects.
        await p.cleanup(cleanup_timeout)
    findings["metadata_persistent"] = finding("unknown", "cannot be probed: see the backend's documentation")
    ordered = {n: findings.get(n, finding("unknown", "not answered")) for n in CAPABILITIES}
    return Capabilities(ordered, "probe", bucket, p.requests, round(time.monotonic() - start, 3),
                        bucket_versioning=p.versioning)

