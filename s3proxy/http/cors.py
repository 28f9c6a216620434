"""CORS preflight (``OPTIONS``) requests, answered by s3proxy from the bucket's CORS configuration.

Browsers send preflights without credentials, so they cannot be signed and
must be answered before authentication.  S3 answers them from the bucket's
CORS configuration; s3proxy does the same: it reads the configuration from
the backend (``GET /bucket?cors``, signed with s3proxy's own credentials —
the client's request is never forwarded), keeps it for ``CACHE_TTL`` seconds
per bucket (at most ``CACHE_MAX`` buckets), and evaluates the rules as S3
does:

* the first ``CORSRule`` whose ``AllowedOrigin`` (``*`` wildcards, case
  sensitive), ``AllowedMethod`` (exact) and ``AllowedHeader`` (``*``
  wildcards, case-insensitive, every header named in
  ``Access-Control-Request-Headers`` must match one) all match wins;
* 200 with ``Access-Control-Allow-Origin`` (``*`` when the rule's origin is
  ``*``, otherwise the request's origin and ``Access-Control-Allow-Credentials:
  true``), ``-Allow-Methods`` (the rule's methods), ``-Allow-Headers`` (the
  requested headers), ``-Expose-Headers``, ``-Max-Age`` and ``Vary``;
* 403 ``AccessForbidden`` when no rule matches or the bucket has no CORS
  configuration (or does not exist: the same answer, so a preflight does not
  tell buckets apart); 400 ``BadRequest`` without ``Origin`` or
  ``Access-Control-Request-Method``.

A preflight never reads or reveals an object: the key in the path is ignored.
The backend is untrusted: its XML is read with ``xmlsafe.parse`` and bounded
in size.  ``actual_headers`` gives the headers S3 adds to a normal
(non-preflight) request carrying ``Origin``, from the same cache.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final
from xml.etree.ElementTree import Element

import aiohttp
from aiohttp import web

from s3proxy.aws import xmlsafe
from s3proxy.aws.errors import S3Error
from s3proxy.observability import get_logger

if TYPE_CHECKING:
    from s3proxy.backend.client import BackendClient
    from s3proxy.state import AppState

log = get_logger("s3proxy.cors")

CACHE_TTL: Final = 30.0
CACHE_MAX: Final = 1024
MAX_CONFIG_BYTES: Final = 1 << 20  # S3 allows 64 KB (100 rules); anything far larger is refused
VARY: Final = "Origin, Access-Control-Request-Headers, Access-Control-Request-Method"
FORBIDDEN_MESSAGE: Final = (
    "CORSResponse: This CORS request is not allowed. This is usually because the evalution of Origin, "
    "request method / Access-Control-Request-Method or Access-Control-Request-Headers are not whitelisted "
    "by the resource's CORS spec."
)
INSUFFICIENT_MESSAGE: Final = "Insufficient information. Origin request header needed."
# Legacy bucket names allow upper case and underscores; anything else never reaches the backend.
_BUCKET_RE: Final = re.compile(r"[A-Za-z0-9._-]{1,255}")
_WS: Final = " \t\r\n"


@dataclass(frozen=True, slots=True)
class Rule:
    origins: tuple[str, ...]
    methods: tuple[str, ...]
    headers: tuple[str, ...]  # lower case
    expose: tuple[str, ...]
    max_age: int | None


def forbidden() -> S3Error:
    return S3Error("AccessForbidden", FORBIDDEN_MESSAGE, 403)


def insufficient() -> S3Error:
    return S3Error("BadRequest", INSUFFICIENT_MESSAGE, 400)


# --------------------------------------------------------------------- matching


def wildcard_match(pattern: str, value: str) -> bool:
    """``value`` matches ``pattern``, where each ``*`` stands for any (possibly empty) run of characters."""
    pieces = pattern.split("*")
    if len(pieces) == 1:
        return pattern == value
    first, last = pieces[0], pieces[-1]
    if len(value) < len(first) + len(last) or not value.startswith(first) or not value.endswith(last):
        return False
    pos, end = len(first), len(value) - len(last)
    for piece in pieces[1:-1]:
        i = value.find(piece, pos, end)
        if i < 0:
            return False
        pos = i + len(piece)
    return True


def requested_headers(value: str | None) -> list[str]:
    """The header names of ``Access-Control-Request-Headers``, lower case, in order."""
    if not value:
        return []
    return [h.strip(_WS).lower() for h in value.split(",") if h.strip(_WS)]


def match(rules: list[Rule], origin: str, method: str, headers: list[str]) -> Rule | None:
    """The first rule that allows this origin, method and every requested header (S3's order)."""
    for rule in rules:
        if method not in rule.methods:
            continue
        if not any(wildcard_match(o, origin) for o in rule.origins):
            continue
        if all(any(wildcard_match(p, h) for p in rule.headers) for h in headers):
            return rule
    return None


def preflight_headers(rule: Rule, origin: str, headers: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    if "*" in rule.origins and not any(wildcard_match(o, origin) for o in rule.origins if o != "*"):
        out["Access-Control-Allow-Origin"] = "*"
    else:
        out["Access-Control-Allow-Origin"] = origin
        out["Access-Control-Allow-Credentials"] = "true"
    out["Access-Control-Allow-Methods"] = ", ".join(rule.methods)
    if headers:
        out["Access-Control-Allow-Headers"] = ", ".join(headers)
    if rule.expose:
        out["Access-Control-Expose-Headers"] = ", ".join(rule.expose)
    if rule.max_age is not None:
        out["Access-Control-Max-Age"] = str(rule.max_age)
    out["Vary"] = VARY
    return out


# --------------------------------------------------------------------- the configuration


def _text(el: Element) -> str:
    if len(el):
        raise xmlsafe.malformed()
    return (el.text or "").strip(_WS)


def parse_config(data: bytes) -> list[Rule]:
    """The rules of a ``CORSConfiguration`` document (from the untrusted backend).

    Unknown elements (``ID``, future additions) are ignored; a rule without an
    origin or a method can never match and is dropped.  MalformedXML for
    anything ``xmlsafe.parse`` refuses or a non-numeric ``MaxAgeSeconds``.
    """
    root = xmlsafe.parse(data, "CORSConfiguration")
    rules: list[Rule] = []
    for el in root:
        if el.tag != "CORSRule":
            continue
        origins: list[str] = []
        methods: list[str] = []
        headers: list[str] = []
        expose: list[str] = []
        max_age: int | None = None
        for child in el:
            if child.tag == "AllowedOrigin":
                origins.append(_text(child))
            elif child.tag == "AllowedMethod":
                methods.append(_text(child))
            elif child.tag == "AllowedHeader":
                headers.append(_text(child).lower())
            elif child.tag == "ExposeHeader":
                expose.append(_text(child))
            elif child.tag == "MaxAgeSeconds":
                v = _text(child)
                if not v.isascii() or not v.isdigit() or len(v) > 10:
                    raise xmlsafe.malformed()
                max_age = int(v)
        if origins and methods:
            rules.append(Rule(tuple(origins), tuple(methods), tuple(headers), tuple(expose), max_age))
    return rules


class _Cache:
    """Per-bucket rules with an expiry, bounded (oldest evicted); concurrent misses share one fetch."""

    def __init__(self) -> None:
        self.entries: OrderedDict[str, tuple[float, list[Rule]]] = OrderedDict()
        self.inflight: dict[str, asyncio.Future[list[Rule]]] = {}

    def get(self, bucket: str) -> list[Rule] | None:
        hit = self.entries.get(bucket)
        if hit is None:
            return None
        if hit[0] <= time.monotonic():
            del self.entries[bucket]
            return None
        return hit[1]

    def put(self, bucket: str, rules: list[Rule]) -> None:
        self.entries.pop(bucket, None)
        self.entries[bucket] = (time.monotonic() + CACHE_TTL, rules)
        while len(self.entries) > CACHE_MAX:
            self.entries.popitem(last=False)


_CACHES: weakref.WeakKeyDictionary[BackendClient, _Cache] = weakref.WeakKeyDictionary()


def _cache(state: AppState) -> _Cache:
    c = _CACHES.get(state.backend)
    if c is None:
        c = _CACHES[state.backend] = _Cache()
    return c


def invalidate(state: AppState, bucket: str) -> None:
    """Forget a bucket's cached rules (call after PutBucketCors / DeleteBucketCors through s3proxy)."""
    _cache(state).entries.pop(bucket, None)


async def _fetch(state: AppState, bucket: str) -> list[Rule]:
    backend = state.backend
    try:
        resp = await backend.request("GET", bucket, None, query=[("cors", "")], credentials=backend.credentials)
    except S3Error:
        raise
    except aiohttp.ClientError as e:
        state.metrics.backend_errors.labels("connect").inc()
        raise S3Error("ServiceUnavailable", "the storage backend is unreachable", 503) from e
    try:
        if resp.status in (403, 404):
            # NoSuchCORSConfiguration, NoSuchBucket, or s3proxy may not read it: no rule allows anything.
            return []
        if resp.status != 200:
            log.warning("cors.backend_status", bucket=bucket, status=resp.status)
            raise S3Error("ServiceUnavailable", "the storage backend failed to return the CORS configuration", 503)
        cl = resp.headers.get("Content-Length")
        if cl is not None and (not cl.isdigit() or int(cl) > MAX_CONFIG_BYTES):
            raise _bad_config(bucket, "too large")
        data = bytearray()
        while len(data) <= MAX_CONFIG_BYTES:
            chunk = await resp.content.read(MAX_CONFIG_BYTES + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > MAX_CONFIG_BYTES:
            raise _bad_config(bucket, "too large")
        try:
            return parse_config(bytes(data))
        except S3Error:
            raise _bad_config(bucket, "malformed") from None
    except aiohttp.ClientError as e:
        state.metrics.backend_errors.labels("connection").inc()
        raise S3Error("ServiceUnavailable", "the storage backend failed to return the CORS configuration", 503) from e
    finally:
        resp.release()


def _bad_config(bucket: str, why: str) -> S3Error:
    log.warning("cors.bad_config", bucket=bucket, reason=why)
    return S3Error("ServiceUnavailable", "the storage backend returned an unreadable CORS configuration", 503)


async def rules_for(state: AppState, bucket: str) -> list[Rule]:
    """The bucket's CORS rules (cached); an empty list when it has none."""
    if not _BUCKET_RE.fullmatch(bucket) or not bucket.strip("."):
        return []
    cache = _cache(state)
    rules = cache.get(bucket)
    if rules is not None:
        return rules
    pending = cache.inflight.get(bucket)
    if pending is not None:
        return await asyncio.shield(pending)
    fut: asyncio.Future[list[Rule]] = asyncio.get_running_loop().create_future()
    cache.inflight[bucket] = fut
    try:
        rules = await _fetch(state, bucket)
    except BaseException as e:
        # Waiters get the same error (a cancelled fetch is the backend's failure to them).
        err = e if isinstance(e, Exception) else S3Error("ServiceUnavailable", "the CORS configuration fetch was cancelled", 503)
        fut.set_exception(err)
        fut.exception()  # retrieved: no "exception was never retrieved" warning without waiters
        raise
    else:
        cache.put(bucket, rules)
        fut.set_result(rules)
        return rules
    finally:
        if cache.inflight.get(bucket) is fut:
            del cache.inflight[bucket]


# --------------------------------------------------------------------- entry points


async def preflight(request: web.Request, state: AppState, bucket: str) -> web.Response:
    """Answer ``OPTIONS /bucket[/key]`` from the bucket's CORS configuration (no authentication)."""
    origin = request.headers.get("Origin")
    method = request.headers.get("Access-Control-Request-Method")
    if not origin or not method:
        raise insufficient()
    headers = requested_headers(request.headers.get("Access-Control-Request-Headers"))
    rule = match(await rules_for(state, bucket), origin, method, headers)
    if rule is None:
        raise forbidden()
    return web.Response(status=200, headers=preflight_headers(rule, origin, headers))


async def actual_headers(state: AppState, bucket: str, request_headers: Mapping[str, str], method: str) -> dict[str, str]:
    """S3's CORS headers for a normal request carrying ``Origin`` (empty when none apply).

    For handlers whose backend request does not carry the client's ``Origin``
    (so the backend adds no CORS headers): S3 evaluates the rules with the
    request's own method and no requested headers.
    """
    origin = request_headers.get("Origin")
    if not origin:
        return {}
    try:
        rules = await rules_for(state, bucket)
    except S3Error:
        return {}
    rule = match(rules, origin, method, [])
    if rule is None:
        return {}
    out = preflight_headers(rule, origin, [])
    if rule.headers:
        out["Access-Control-Allow-Headers"] = ", ".join(rule.headers)
    out["Vary"] = VARY
    return out
