"""``ctx.response_headers`` in one pass (issue 11) keeps exactly what the per-header checks kept."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

from multidict import CIMultiDict

from s3proxy.http.ctx import HOP_BY_HOP, RESERVED_META, response_headers

NAMES = ["ETag", "Content-Type", "content-length", "Server", "x-amz-request-id", "Connection", "Transfer-Encoding",
         "x-amz-meta-s3proxy-env", "X-Amz-Meta-S3proxy-Key", "x-amz-meta-user", "X-Amz-Meta-Other", "Last-Modified",
         "x-amz-checksum-crc32", "x-amz-server-side-encryption", "Content-Range", "x-amz-mp-parts-count", "Keep-Alive",
         "x-amz-version-id", "Accept-Ranges", "x-amz-id-2", "Content-MD5"]


def old(backend_headers: Mapping[str, str], request_id: str, *, hide_reserved: bool = True,
        drop: Iterable[str] = (), drop_prefixes: tuple[str, ...] = ()) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    dropped = set(drop) | {h.lower() for h in backend_headers if h.lower().startswith(drop_prefixes)}
    for name, value in backend_headers.items():
        n = name.lower()
        if n in HOP_BY_HOP or n in dropped or n in ("x-amz-request-id", "server", "content-length"):
            continue
        if hide_reserved and n.startswith(RESERVED_META):
            continue
        out.add(name, value)
    out["x-amz-request-id"] = request_id
    return out


def test_same_headers_as_the_per_header_checks() -> None:
    rng = random.Random(3)
    for _ in range(500):
        h: CIMultiDict[str] = CIMultiDict()
        for _ in range(rng.randint(0, 15)):
            h.add(rng.choice(NAMES), str(rng.randint(0, 9)))
        kw = {"hide_reserved": rng.random() < 0.7,
              "drop": rng.sample(["content-range", "x-amz-mp-parts-count", "content-md5", "etag"], rng.randint(0, 3)),
              "drop_prefixes": tuple(rng.sample(["x-amz-checksum-", "x-amz-server-side-encryption", "x-amz-meta-"],
                                                rng.randint(0, 3)))}
        got, want = response_headers(h, "RID", **kw), old(h, "RID", **kw)
        assert list(got.items()) == list(want.items()), (h, kw)
