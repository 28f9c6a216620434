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

Layout: ``core`` (``Rewrapper``: one object, the walk, the run), ``walk`` (the resumable
walk and its state file, shared with ``s3proxy.bulkjob``), ``report``; the backend requests
are ``s3proxy.backend.ops``, shared with the bulk jobs.

Imports: ``backend``, ``crypto``, ``keys``, ``config``, ``http.router``, ``progress``.

Exit status: 0 when every object is done, 1 when any object (or the
listing) failed (the failures are listed), 2 when the run could not start.
"""

from __future__ import annotations

import argparse
import sys

from s3proxy.backend.ops import parts_from_etag, quoted
from s3proxy.config import Settings
from s3proxy.rewrap.core import DEFAULT_PAGE_SIZE, KEPT_HEADERS, RewrapError, Rewrapper
from s3proxy.rewrap.report import RewrapReport
from s3proxy.rewrap.walk import ListingError, SetupError

__all__ = [
    "KEPT_HEADERS", "ListingError", "RewrapError", "RewrapReport", "Rewrapper", "SetupError", "parts_from_etag",
    "quoted", "run_rewrap",
]


async def run_rewrap(settings: Settings, args: argparse.Namespace) -> int:
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
