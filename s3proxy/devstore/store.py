"""On-disk storage of the development S3 store (synchronous; call it from threads).

Layout under ``root``::

    <bucket>/bucket.json                    {"created": <epoch seconds>}
    <bucket>/objects/<h>.json               sidecar of the object whose key has SHA-256 <h>
    <bucket>/objects/<h>.<token>.data       the object's bytes (file named in the sidecar)
    <bucket>/uploads/<upload-id>/upload.json            a multipart upload in progress
    <bucket>/uploads/<upload-id>/<nnnnn>.json           one uploaded part (sidecar) ...
    <bucket>/uploads/<upload-id>/<nnnnn>.<token>.data   ... and its bytes
    <bucket>/tmp/                           bodies being received

Object keys never become path components: a key's file names derive from
the SHA-256 of its UTF-8 bytes, so any key (``..``, leading ``/``, ``//``,
unicode, names differing only in case on a case-insensitive file system) is
safe.  Bucket names are checked against S3's rules before they touch the disk.

Writes are atomic: a body is streamed into ``tmp/``; only once it is
complete and verified is it renamed to a fresh ``<h>.<token>.data`` name and
the sidecar replaced with ``os.replace`` (the commit point), after which the
previous data file is removed.  A crash at any point leaves either the old or
the new object; stray files (unreferenced data files, ``tmp/`` leftovers) are
removed when the store starts or first loads a bucket.

Each bucket's keys and metadata are indexed in memory when the bucket is
first used (by reading its sidecars), so listings are cheap.  One process
owns a data directory: several servers on one directory are not supported.

The store is built in layers, one concern each: :mod:`~s3proxy.devstore.records` (sidecar
records, the body sink), :mod:`~s3proxy.devstore.disk` (buckets, indexes, configurations),
:mod:`~s3proxy.devstore.versions` (objects and versions), :mod:`~s3proxy.devstore.listing`
(listings) and :mod:`~s3proxy.devstore.uploads` (multipart uploads).
"""

from __future__ import annotations

from s3proxy.devstore.records import (
    CHUNK_SIZE,
    DEFAULT_MIN_PART_SIZE,
    MAX_PARTS,
    ListResult,
    ObjectInfo,
    PartInfo,
    Precondition,
    Sink,
    UploadInfo,
    copy_range,
    key_hash,
    valid_bucket_name,
)
from s3proxy.devstore.uploads import UploadStore

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_MIN_PART_SIZE",
    "MAX_PARTS",
    "ListResult",
    "ObjectInfo",
    "PartInfo",
    "Precondition",
    "Sink",
    "Store",
    "UploadInfo",
    "copy_range",
    "key_hash",
    "valid_bucket_name",
]


class Store(UploadStore):
    """A data directory of buckets and objects; thread-safe, one per directory."""
