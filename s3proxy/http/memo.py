"""Per-process knowledge about the backend that listings and reads share.

Does the backend list multipart objects with "-N" ETags (then a plain ETag with a valid S
length is an S object and a listing needs no HEAD), and the plaintext sizes already resolved.
Kept on the app state; imports nothing of ``http`` but ``ctx``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from urllib.parse import urlsplit

from s3proxy.http.ctx import (
    Ctx,
)

PARTS_RE = re.compile(rb"-(\d+)(?:&quot;|&#34;|\")?\s*$")


PAGE_CACHE_BYTES = 8 << 20  # rewritten listing pages kept per process (a 1,000-key page: ~0.3 MiB)
PAGE_CACHE_MIN = 4096  # smaller pages cost less to rewrite than to hash: not cached


class EtagMemo:
    """Per-backend knowledge: does it list multipart objects with "-N" ETags; the sizes it resolved."""

    def __init__(self) -> None:
        self.minus_n: bool | None = None  # True: seen "-N" in a listing; False: seen K without it
        self.sizes: dict[tuple[str, str, str, int], int | None] = {}
        # rewritten listing pages (``listing._fast_page``): (bucket, url_keys, minus_n, SHA-256 of
        # the backend page) -> (the page the client gets, minus_n after it); LRU, at most
        # PAGE_CACHE_BYTES of pages
        self.pages: OrderedDict[tuple[str, bool, bool | None, bytes], tuple[bytes, bool | None]] = OrderedDict()
        self.pages_bytes = 0


def etag_memo(ctx: Ctx) -> EtagMemo:
    memo = getattr(ctx.state, "listing_memo", None)
    if not isinstance(memo, EtagMemo):
        memo = EtagMemo()
        cfg = ctx.state.settings.backend
        if cfg.multipart_etags != "auto":
            memo.minus_n = cfg.multipart_etags == "yes"
        elif (urlsplit(cfg.url).hostname or "").endswith(".amazonaws.com"):
            memo.minus_n = True
        setattr(ctx.state, "listing_memo", memo)  # noqa: B010 - AppState is a plain dataclass
    return memo


def multipart_etags_known(ctx: Ctx) -> bool:
    return etag_memo(ctx).minus_n is not None


def learn_multipart_etag(ctx: Ctx, etag: str | None) -> None:
    """A K-layout object read by HEAD/GET tells whether this backend's multipart ETags end in
    "-N" (used by ``auto``; a pinned ``multipart_etags`` setting is never overridden)."""
    if ctx.state.settings.backend.multipart_etags != "auto" or not etag:
        return
    memo = etag_memo(ctx)
    if memo.minus_n is None:
        memo.minus_n = PARTS_RE.search(etag.strip().encode()) is not None
