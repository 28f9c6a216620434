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
"""

from __future__ import annotations

import bisect
import errno
import hashlib
import ipaddress
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from s3proxy.devstore.errors import (
    S3Error,
    malformed_xml,
    no_such_bucket,
    no_such_key,
    no_such_upload,
    no_such_version,
)

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_MIN_PART_SIZE",
    "ListResult",
    "ObjectInfo",
    "PartInfo",
    "Sink",
    "Store",
    "UploadInfo",
    "valid_bucket_name",
]

log = logging.getLogger("s3proxy.devstore")

CHUNK_SIZE = 1 << 20
DEFAULT_MIN_PART_SIZE = 5 << 20
MAX_PARTS = 10000

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
_DATA_RE = re.compile(r"([0-9a-f]{64})\.[0-9a-f]{16}\.data")
_PART_DATA_RE = re.compile(r"(\d{5})\.[0-9a-f]{16}\.data")


def valid_bucket_name(name: str) -> bool:
    """S3's bucket naming rules (3-63 chars, lower-case letters, digits, '.', '-')."""
    if _BUCKET_RE.fullmatch(name) is None or ".." in name or ".-" in name or "-." in name:
        return False
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return True
    return False


_VERSION_ID_RE = re.compile(r"[0-9]{20}[0-9a-f]{12}")


def _check_version_id(version_id: str) -> None:
    if version_id != "null" and _VERSION_ID_RE.fullmatch(version_id) is None:
        raise S3Error("InvalidArgument", "Invalid version id specified", 400,
                      extra={"ArgumentName": "versionId", "ArgumentValue": version_id})


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _token() -> str:
    return uuid.uuid4().hex[:16]


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:  # e.g. open elsewhere on Windows: collected at the next start
        log.warning("devstore: cannot remove %s: %s", path, e)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class ObjectInfo:
    """What the sidecar of an object records."""

    key: str
    size: int
    etag: str  # without quotes; "<md5hex>" or "<md5hex>-<N>"
    last_modified: float  # epoch seconds
    data: str  # data file name in objects/
    headers: dict[str, str] = field(default_factory=dict)  # content-type, cache-control, ...
    metadata: dict[str, str] = field(default_factory=dict)  # x-amz-meta-* (lower-case names) -> value
    parts: list[int] | None = None  # part sizes of a multipart object, in order
    version_id: str | None = None  # None: written while the bucket had no versioning ("null" version)
    delete_marker: bool = False  # a delete marker (no data) in a versioned bucket
    tags: dict[str, str] = field(default_factory=dict)  # object tagging

    @property
    def vid(self) -> str:
        """The version id as S3 names it ("null" for one written without versioning)."""
        return self.version_id or "null"

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1,
            "version_id": self.version_id,
            "delete_marker": self.delete_marker,
            "tags": self.tags,
            "key": self.key,
            "size": self.size,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "last_modified_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_modified)),
            "headers": self.headers,
            "metadata": self.metadata,
            "parts": self.parts,
            "data": self.data,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> ObjectInfo:
        parts = d.get("parts")
        return ObjectInfo(
            key=str(d["key"]),
            size=int(d["size"]),
            etag=str(d["etag"]),
            last_modified=float(d["last_modified"]),
            data=str(d["data"]),
            headers={str(k): str(v) for k, v in (d.get("headers") or {}).items()},
            metadata={str(k): str(v) for k, v in (d.get("metadata") or {}).items()},
            parts=[int(p) for p in parts] if parts is not None else None,
            version_id=str(d["version_id"]) if d.get("version_id") is not None else None,
            delete_marker=bool(d.get("delete_marker", False)),
            tags={str(k): str(v) for k, v in (d.get("tags") or {}).items()},
        )

    def part_range(self, number: int) -> tuple[int, int] | None:
        """(offset, length) of the ``number``-th part (1-based, by position), None if out of range.

        An object not uploaded in parts has a single part: the whole object.
        """
        sizes = self.parts if self.parts else [self.size]
        if not 1 <= number <= len(sizes):
            return None
        return sum(sizes[: number - 1]), sizes[number - 1]


@dataclass
class UploadInfo:
    upload_id: str
    key: str
    initiated: float
    headers: dict[str, str]
    metadata: dict[str, str]


@dataclass
class PartInfo:
    number: int
    size: int
    etag: str
    last_modified: float
    data: str


@dataclass
class ListResult:
    contents: list[ObjectInfo]
    common_prefixes: list[str]
    truncated: bool
    next_marker: str | None  # the last key or common prefix returned, when truncated


class Sink:
    """A body being received into a temporary file, hashed on the way.

    ``write`` and ``finish`` do blocking I/O: call them from a thread.
    """

    def __init__(self, directory: Path, *, md5: bool = True, sha256: bool = False, fsync: bool = False) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{uuid.uuid4().hex}.tmp"
        self._file: IO[bytes] | None = open(self.path, "xb")  # noqa: SIM115 - closed in finish/discard
        self._fsync = fsync
        self.size = 0
        self.md5 = hashlib.md5(usedforsecurity=False) if md5 else None
        self.sha256 = hashlib.sha256() if sha256 else None
        self.observers: list[Callable[[bytes | memoryview], None]] = []
        self.committed = False

    def write(self, data: bytes | memoryview) -> None:
        assert self._file is not None
        self._file.write(data)
        if self.md5 is not None:
            self.md5.update(data)
        if self.sha256 is not None:
            self.sha256.update(data)
        for observer in self.observers:
            observer(data)
        self.size += len(data)

    def md5_hex(self) -> str:
        if self.md5 is None:
            raise ValueError("this sink does not compute an MD5")
        return self.md5.hexdigest()

    def finish(self) -> None:
        if self._file is not None:
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None

    def discard(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None
        if not self.committed:
            _unlink(self.path)


def copy_range(src: IO[bytes], offset: int, length: int, sink: Sink) -> None:
    """Copy ``length`` bytes of ``src`` from ``offset`` into ``sink`` (blocking)."""
    src.seek(offset)
    remaining = length
    while remaining > 0:
        chunk = src.read(min(CHUNK_SIZE, remaining))
        if not chunk:
            raise S3Error("InternalError", "The source object is shorter than its recorded size.", 500)
        sink.write(chunk)
        remaining -= len(chunk)


class _BucketIndex:
    def __init__(self) -> None:
        self.objects: dict[str, ObjectInfo] = {}  # current versions (never a delete marker)
        self.versions: dict[str, list[ObjectInfo]] = {}  # noncurrent versions and delete markers, newest first
        self.versioning = ""  # "", "Enabled" or "Suspended"
        self._keys: list[str] | None = None

    def keys(self) -> list[str]:
        # Python orders str by code point, which is the order of their UTF-8 bytes.
        if self._keys is None:
            self._keys = sorted(self.objects)
        return self._keys

    def put(self, info: ObjectInfo) -> None:
        if info.key not in self.objects and self._keys is not None:
            bisect.insort(self._keys, info.key)
        self.objects[info.key] = info

    def remove(self, key: str) -> None:
        if self.objects.pop(key, None) is not None and self._keys is not None:
            i = bisect.bisect_left(self._keys, key)
            if i < len(self._keys) and self._keys[i] == key:
                del self._keys[i]


Precondition = Callable[[ObjectInfo | None], None]


class Store:
    """A data directory of buckets and objects; thread-safe, one per directory."""

    def __init__(self, root: Path, *, fsync: bool = False) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._indexes: dict[str, _BucketIndex] = {}
        self._configs: dict[tuple[str, str], bytes | None] = {}  # bucket configurations, as read
        for bdir in self._bucket_dirs():
            shutil.rmtree(bdir / "tmp", ignore_errors=True)
        for entry in os.scandir(self.root):
            if entry.name.startswith(".deleted-") and entry.is_dir():
                shutil.rmtree(entry.path, ignore_errors=True)  # an interrupted DeleteBucket

    # -- paths ------------------------------------------------------------

    def _bucket_dirs(self) -> list[Path]:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        return [Path(e.path) for e in entries if e.is_dir() and valid_bucket_name(e.name)]

    def _bdir(self, bucket: str) -> Path:
        if not valid_bucket_name(bucket):
            raise no_such_bucket(bucket)
        return self.root / bucket

    def tmp_dir(self, bucket: str) -> Path:
        return self._bdir(bucket) / "tmp"

    def new_sink(self, bucket: str, *, md5: bool = True, sha256: bool = False) -> Sink:
        self.require_bucket(bucket)
        return Sink(self.tmp_dir(bucket), md5=md5, sha256=sha256, fsync=self.fsync)

    def _write_json(self, bucket: str, path: Path, data: dict[str, Any] | list[Any]) -> None:
        tmp = self.tmp_dir(bucket)
        tmp.mkdir(parents=True, exist_ok=True)
        tmp_path = tmp / f"{uuid.uuid4().hex}.json"
        try:
            with open(tmp_path, "xb") as f:
                f.write(json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8"))
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp_path, path)
            if self.fsync:
                _fsync_dir(path.parent)
        except BaseException:
            _unlink(tmp_path)
            raise

    # -- buckets ----------------------------------------------------------

    def list_buckets(self) -> list[tuple[str, float]]:
        out = []
        for bdir in self._bucket_dirs():
            out.append((bdir.name, self._created(bdir)))
        out.sort()
        return out

    def _created(self, bdir: Path) -> float:
        try:
            with open(bdir / "bucket.json", "rb") as f:
                return float(json.load(f)["created"])
        except (OSError, ValueError, KeyError, TypeError):
            try:
                return bdir.stat().st_mtime
            except OSError:
                return time.time()

    def bucket_exists(self, bucket: str) -> bool:
        return valid_bucket_name(bucket) and (self.root / bucket).is_dir()

    def require_bucket(self, bucket: str) -> Path:
        bdir = self._bdir(bucket)
        if not bdir.is_dir():
            self._indexes.pop(bucket, None)
            raise no_such_bucket(bucket)
        return bdir

    def create_bucket(self, bucket: str) -> None:
        if not valid_bucket_name(bucket):
            raise S3Error("InvalidBucketName", "The specified bucket is not valid.", 400, extra={"BucketName": bucket})
        with self._lock:
            bdir = self.root / bucket
            try:
                bdir.mkdir()
            except FileExistsError:
                raise S3Error(
                    "BucketAlreadyOwnedByYou",
                    "Your previous request to create the named bucket succeeded and you already own it.",
                    409,
                    extra={"BucketName": bucket},
                ) from None
            for sub in ("objects", "uploads", "tmp"):
                (bdir / sub).mkdir()
            self._write_json(bucket, bdir / "bucket.json", {"created": time.time()})
            self._indexes[bucket] = _BucketIndex()

    def delete_bucket(self, bucket: str) -> None:
        """Delete an empty bucket (in-progress multipart uploads are discarded with it)."""
        with self._lock:
            index = self._index(bucket)
            if index.objects or index.versions:
                raise S3Error(
                    "BucketNotEmpty",
                    "The bucket you tried to delete is not empty",
                    409,
                    extra={"BucketName": bucket},
                )
            bdir = self._bdir(bucket)
            # Rename first so that the bucket disappears atomically.
            trash = self.root / f".deleted-{uuid.uuid4().hex}"
            os.replace(bdir, trash)
            self._indexes.pop(bucket, None)
            self._configs = {k: v for k, v in self._configs.items() if k[0] != bucket}
        shutil.rmtree(trash, ignore_errors=True)

    def _index(self, bucket: str) -> _BucketIndex:
        bdir = self.require_bucket(bucket)
        index = self._indexes.get(bucket)
        if index is None:
            index = self._load_index(bucket, bdir)
            self._indexes[bucket] = index
        return index

    def _load_index(self, bucket: str, bdir: Path) -> _BucketIndex:
        index = _BucketIndex()
        objects = bdir / "objects"
        objects.mkdir(exist_ok=True)
        (bdir / "uploads").mkdir(exist_ok=True)
        index.versioning = self._bucket_json(bdir).get("versioning") or ""
        referenced: set[str] = set()
        data_files: list[str] = []
        for entry in os.scandir(objects):
            name = entry.name
            if name.endswith(".data"):
                data_files.append(name)
                continue
            if name.endswith(".versions.json"):
                self._load_versions(entry.path, index, referenced)
                continue
            if not name.endswith(".json"):
                continue
            try:
                with open(entry.path, "rb") as f:
                    info = ObjectInfo.from_json(json.load(f))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.warning("devstore: ignoring unreadable sidecar %s: %s", entry.path, e)
                continue
            if name != f"{key_hash(info.key)}.json" or not (objects / info.data).is_file():
                log.warning("devstore: ignoring inconsistent sidecar %s", entry.path)
                continue
            referenced.add(info.data)
            index.objects[info.key] = info
        for name in data_files:
            if name not in referenced:
                _unlink(objects / name)  # left over by an interrupted commit
        self._collect_upload_debris(bdir / "uploads")
        return index

    @staticmethod
    def _load_versions(path: str, index: _BucketIndex, referenced: set[str]) -> None:
        try:
            with open(path, "rb") as f:
                versions = [ObjectInfo.from_json(d) for d in json.load(f)]
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("devstore: ignoring unreadable version list %s: %s", path, e)
            return
        if versions:
            index.versions[versions[0].key] = versions
            referenced.update(v.data for v in versions if not v.delete_marker)

    def _bucket_json(self, bdir: Path) -> dict[str, Any]:
        try:
            with open(bdir / "bucket.json", "rb") as f:
                d = json.load(f)
            return d if isinstance(d, dict) else {}
        except (OSError, ValueError):
            return {}

    # -- bucket configurations and object tags --------------------------------

    def put_config(self, bucket: str, name: str, body: bytes) -> None:
        """Keep a bucket configuration document (``name``: a fixed subresource name, never user input)."""
        with self._lock:
            bdir = self.require_bucket(bucket)
            (bdir / "config").mkdir(exist_ok=True)
            tmp = self.tmp_dir(bucket) / f"{uuid.uuid4().hex}.cfg"
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(body)
            os.replace(tmp, bdir / "config" / name)
            self._configs[(bucket, name)] = body

    def get_config(self, bucket: str, name: str) -> bytes | None:
        with self._lock:
            if (bucket, name) in self._configs:
                self.require_bucket(bucket)
                return self._configs[(bucket, name)]
            try:
                body: bytes | None = (self.require_bucket(bucket) / "config" / name).read_bytes()
            except FileNotFoundError:
                body = None
            self._configs[(bucket, name)] = body
            return body

    def delete_config(self, bucket: str, name: str) -> None:
        with self._lock:
            _unlink(self.require_bucket(bucket) / "config" / name)
            self._configs[(bucket, name)] = None

    def set_tags(self, bucket: str, key: str, version_id: str | None, tags: dict[str, str]) -> ObjectInfo:
        """Replace the tag set of the current version (or of ``version_id``)."""
        with self._lock:
            index = self._index(bucket)
            current = index.objects.get(key)
            if version_id is None or (current is not None and current.vid == version_id):
                if current is None:
                    raise no_such_key(key)
                current.tags = dict(tags)
                self._write_json(bucket, self.root / bucket / "objects" / f"{key_hash(key)}.json", current.to_json())
                return current
            info = self.find_version(bucket, key, version_id)
            if info.delete_marker:
                raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.", 405)
            info.tags = dict(tags)
            self._save_versions(bucket, index, key)
            return info

    # -- versioning ---------------------------------------------------------

    def get_versioning(self, bucket: str) -> str:
        """The bucket's versioning status: "" (never enabled), "Enabled" or "Suspended"."""
        with self._lock:
            return self._index(bucket).versioning

    def set_versioning(self, bucket: str, status: str) -> None:
        with self._lock:
            index = self._index(bucket)
            bdir = self._bdir(bucket)
            d = self._bucket_json(bdir)
            d.setdefault("created", self._created(bdir))
            d["versioning"] = status
            self._write_json(bucket, bdir / "bucket.json", d)
            index.versioning = status

    def _save_versions(self, bucket: str, index: _BucketIndex, key: str) -> None:
        path = self.root / bucket / "objects" / f"{key_hash(key)}.versions.json"
        versions = index.versions.get(key)
        if versions:
            self._write_json(bucket, path, [v.to_json() for v in versions])
        else:
            index.versions.pop(key, None)
            _unlink(path)

    def _archive(self, bucket: str, index: _BucketIndex, key: str, old: ObjectInfo | None) -> bool:
        """Before a new current version (or delete marker) of ``key``: keep the current version
        ``old`` as a noncurrent one; when Suspended the new version is "null" and replaces any
        older "null" version.  True when ``old``'s data file is still referenced."""
        status = index.versioning
        if not status:
            return False
        if status == "Suspended":
            versions = index.versions.get(key, [])
            for v in versions:
                if v.version_id is None and not v.delete_marker:
                    _unlink(self.root / bucket / "objects" / v.data)
            if any(v.version_id is None for v in versions):
                index.versions[key] = [v for v in versions if v.version_id is not None]
                self._save_versions(bucket, index, key)
            if old is None or old.version_id is None:
                return False
        if old is None:
            return False
        index.versions.setdefault(key, []).insert(0, old)
        self._save_versions(bucket, index, key)
        return True

    def _new_version_id(self, status: str) -> str | None:
        if status == "Enabled":
            return f"{time.time_ns():020d}{secrets.token_hex(6)}"
        return None  # Suspended and never enabled: the "null" version

    def find_version(self, bucket: str, key: str, version_id: str) -> ObjectInfo:
        """A version of ``key`` by id ("null" included); raises NoSuchVersion (or InvalidArgument)."""
        _check_version_id(version_id)
        with self._lock:
            index = self._index(bucket)
            current = index.objects.get(key)
            for v in ([current] if current is not None else []) + index.versions.get(key, []):
                if v.vid == version_id:
                    return v
        raise no_such_version(key, version_id)

    def latest_is_delete_marker(self, bucket: str, key: str) -> ObjectInfo | None:
        """The delete marker that hides ``key``, if its latest version is one."""
        with self._lock:
            index = self._index(bucket)
            versions = index.versions.get(key)
            if key in index.objects or not versions or not versions[0].delete_marker:
                return None
            return versions[0]

    def _collect_upload_debris(self, uploads: Path) -> None:
        """Remove part data files no part sidecar names (interrupted part commits)."""
        for entry in os.scandir(uploads):
            if not entry.is_dir() or _UPLOAD_ID_RE.fullmatch(entry.name) is None:
                continue
            udir = Path(entry.path)
            if not (udir / "upload.json").is_file():  # CreateMultipartUpload interrupted
                shutil.rmtree(udir, ignore_errors=True)
                continue
            referenced = {part.data for part in self._read_parts(udir).values()}
            for child in os.scandir(udir):
                if _PART_DATA_RE.fullmatch(child.name) and child.name not in referenced:
                    _unlink(Path(child.path))

    # -- objects ----------------------------------------------------------

    def _missing(self, index: _BucketIndex, key: str) -> S3Error:
        """NoSuchKey; with the delete marker's headers when one hides the key."""
        e = no_such_key(key)
        versions = index.versions.get(key)
        if versions and versions[0].delete_marker:
            e.headers.update({"x-amz-delete-marker": "true", "x-amz-version-id": versions[0].vid})
        return e

    def head(self, bucket: str, key: str, version_id: str | None = None) -> ObjectInfo:
        with self._lock:
            if version_id is not None:
                return self._live_version(bucket, key, version_id)
            index = self._index(bucket)
            info = index.objects.get(key)
            if info is None:
                raise self._missing(index, key)
            return info

    def _live_version(self, bucket: str, key: str, version_id: str) -> ObjectInfo:
        info = self.find_version(bucket, key, version_id)
        if info.delete_marker:
            # S3 answers GET/HEAD of a delete marker by its id with 405 (and says what it is).
            raise S3Error(
                "MethodNotAllowed", "The specified method is not allowed against this resource.", 405,
                extra={"Method": "GET", "ResourceType": "DeleteMarker"},
                headers={"x-amz-delete-marker": "true", "x-amz-version-id": info.vid, "Allow": "DELETE"},
            )
        return info

    def open(self, bucket: str, key: str, version_id: str | None = None) -> tuple[ObjectInfo, IO[bytes]]:
        """The object's (or version's) metadata and its data file, open (the caller closes it)."""
        with self._lock:
            info = self.head(bucket, key, version_id)
            try:
                f = open(self.root / bucket / "objects" / info.data, "rb")  # noqa: SIM115
            except FileNotFoundError:
                raise no_such_key(key) from None
            return info, f

    def commit_object(
        self,
        bucket: str,
        key: str,
        sink: Sink,
        *,
        etag: str | None = None,
        headers: dict[str, str],
        metadata: dict[str, str],
        parts: list[int] | None = None,
        precondition: Precondition | None = None,
        tags: dict[str, str] | None = None,
    ) -> ObjectInfo:
        """Make the finished ``sink`` the object ``key`` (replacing any previous one)."""
        sink.finish()
        with self._lock:
            index = self._index(bucket)
            old = index.objects.get(key)
            if precondition is not None:
                precondition(old)
            status = index.versioning
            h = key_hash(key)
            objects = self.root / bucket / "objects"
            data_name = f"{h}.{_token()}.data"
            data_path = objects / data_name
            try:
                os.replace(sink.path, data_path)
            except FileNotFoundError:
                raise no_such_bucket(bucket) from None
            sink.committed = True
            info = ObjectInfo(
                key=key,
                size=sink.size,
                etag=etag if etag is not None else sink.md5_hex(),
                last_modified=time.time(),
                data=data_name,
                headers=dict(headers),
                metadata=dict(metadata),
                parts=parts,
                version_id=self._new_version_id(status),
                tags=dict(tags or {}),
            )
            kept = self._archive(bucket, index, key, old)
            try:
                self._write_json(bucket, objects / f"{h}.json", info.to_json())
            except BaseException:
                _unlink(data_path)
                raise
            index.put(info)
            if old is not None and not kept:
                _unlink(objects / old.data)
            return info

    def delete_object(self, bucket: str, key: str, version_id: str | None = None) -> ObjectInfo | None:
        """DeleteObject: the delete marker it made, the version it removed, or None.

        Without ``version_id`` in a versioned bucket the current version becomes noncurrent under
        a new delete marker (Suspended: a "null" marker replacing any "null" version).  With one,
        that version is removed for good and the newest remaining one, if it is no delete marker,
        becomes current.
        """
        with self._lock:
            index = self._index(bucket)
            objects = self.root / bucket / "objects"
            h = key_hash(key)
            current = index.objects.get(key)
            status = index.versioning
            if version_id is None and status:
                marker = ObjectInfo(key, 0, "", time.time(), "", version_id=self._new_version_id(status),
                                    delete_marker=True)
                kept = self._archive(bucket, index, key, current)
                index.versions.setdefault(key, []).insert(0, marker)
                self._save_versions(bucket, index, key)
                if current is not None:
                    _unlink(objects / f"{h}.json")
                    if not kept:
                        _unlink(objects / current.data)
                    index.remove(key)
                return marker
            if version_id is not None:
                _check_version_id(version_id)
                if current is None or current.vid != version_id:
                    versions = index.versions.get(key, [])
                    gone = next((v for v in versions if v.vid == version_id), None)
                    if gone is None:
                        return None  # S3: 204 for a version that does not exist
                    versions.remove(gone)
                    self._save_versions(bucket, index, key)
                    if not gone.delete_marker:
                        _unlink(objects / gone.data)
                    self._promote(bucket, index, key)
                    return gone
            if current is None:
                return None
            _unlink(objects / f"{h}.json")
            _unlink(objects / current.data)
            index.remove(key)
            self._promote(bucket, index, key)
            return current

    def _promote(self, bucket: str, index: _BucketIndex, key: str) -> None:
        """After removing the latest version: the newest remaining one becomes current (unless
        it is a delete marker, which then stays latest)."""
        versions = index.versions.get(key)
        if key in index.objects or not versions or versions[0].delete_marker:
            return
        newest = versions.pop(0)
        self._write_json(bucket, self.root / bucket / "objects" / f"{key_hash(key)}.json", newest.to_json())
        self._save_versions(bucket, index, key)
        index.put(newest)

    def list_versions(
        self, bucket: str, *, prefix: str, delimiter: str, key_marker: str, version_marker: str, max_keys: int
    ) -> tuple[list[tuple[ObjectInfo, bool]], list[str], bool, tuple[str, str] | None]:
        """ListObjectVersions: ((version, is_latest) newest first per key, common prefixes,
        truncated, (next key marker, next version marker) when truncated)."""
        with self._lock:
            index = self._index(bucket)
            keys = sorted(set(index.objects) | set(index.versions))
            start = bisect.bisect_left(keys, prefix)
            out: list[tuple[ObjectInfo, bool]] = []
            prefixes: list[str] = []
            count = 0
            for key in keys[start:]:
                if not key.startswith(prefix):
                    break
                if key_marker and key < key_marker:
                    continue
                if delimiter:
                    pos = key.find(delimiter, len(prefix))
                    if pos >= 0:
                        common = key[: pos + len(delimiter)]
                        if (prefixes and prefixes[-1] == common) or (key_marker and common <= key_marker):
                            continue
                        if count >= max_keys:
                            return out, prefixes, True, self._next_markers(out, prefixes)
                        prefixes.append(common)
                        count += 1
                        continue
                current = index.objects.get(key)
                chain = ([current] if current is not None else []) + index.versions.get(key, [])
                if key == key_marker:
                    ids = [v.vid for v in chain]
                    if not version_marker or version_marker not in ids:
                        continue
                    chain = chain[ids.index(version_marker) + 1:]
                    skip_latest = True
                else:
                    skip_latest = False
                for i, v in enumerate(chain):
                    if count >= max_keys:
                        return out, prefixes, True, self._next_markers(out, prefixes)
                    out.append((v, i == 0 and not skip_latest))
                    count += 1
            return out, prefixes, False, None

    @staticmethod
    def _next_markers(
        out: list[tuple[ObjectInfo, bool]], prefixes: list[str]
    ) -> tuple[str, str]:
        last_v = out[-1][0] if out else None
        last_p = prefixes[-1] if prefixes else None
        if last_v is not None and (last_p is None or last_v.key > last_p):
            return last_v.key, last_v.vid
        assert last_p is not None
        return last_p, ""

    def list_objects(
        self, bucket: str, *, prefix: str, delimiter: str, marker: str, max_keys: int
    ) -> ListResult:
        """Keys after ``marker`` starting with ``prefix``, rolled up at ``delimiter``, in UTF-8 order."""
        with self._lock:
            index = self._index(bucket)
            keys = index.keys()
            objects = index.objects
            if marker:
                start = bisect.bisect_right(keys, marker)
                if prefix > marker:
                    start = bisect.bisect_left(keys, prefix)
            else:
                start = bisect.bisect_left(keys, prefix)
            contents: list[ObjectInfo] = []
            prefixes: list[str] = []
            count = 0
            last: str | None = None
            truncated = False
            i = start
            n = len(keys)
            while i < n:
                key = keys[i]
                if not key.startswith(prefix):
                    break
                common = None
                if delimiter:
                    pos = key.find(delimiter, len(prefix))
                    if pos >= 0:
                        common = key[: pos + len(delimiter)]
                if common is not None and (common == last or common == marker):
                    # Everything under this common prefix rolls up into it: skip past it.
                    i = bisect.bisect_left(keys, common + "\U0010ffff", i + 1)
                    while i < n and keys[i].startswith(common):
                        i += 1
                    continue
                if count >= max_keys:
                    truncated = True
                    break
                if common is not None:
                    prefixes.append(common)
                    last = common
                else:
                    contents.append(objects[key])
                    last = key
                count += 1
                i += 1
            return ListResult(contents, prefixes, truncated, last if truncated else None)

    # -- multipart uploads ------------------------------------------------

    def _upload_dir(self, bucket: str, upload_id: str) -> Path:
        if _UPLOAD_ID_RE.fullmatch(upload_id) is None:
            raise no_such_upload(upload_id)
        return self._bdir(bucket) / "uploads" / upload_id

    def _read_upload(self, bucket: str, upload_id: str, key: str | None) -> tuple[Path, UploadInfo]:
        self.require_bucket(bucket)
        udir = self._upload_dir(bucket, upload_id)
        try:
            with open(udir / "upload.json", "rb") as f:
                d = json.load(f)
            info = UploadInfo(
                upload_id=upload_id,
                key=str(d["key"]),
                initiated=float(d["initiated"]),
                headers=dict(d.get("headers") or {}),
                metadata=dict(d.get("metadata") or {}),
            )
        except (OSError, ValueError, KeyError, TypeError):
            raise no_such_upload(upload_id) from None
        if key is not None and info.key != key:
            raise no_such_upload(upload_id)
        return udir, info

    def create_upload(self, bucket: str, key: str, headers: dict[str, str], metadata: dict[str, str]) -> str:
        with self._lock:
            self._index(bucket)
            upload_id = uuid.uuid4().hex
            udir = self._upload_dir(bucket, upload_id)
            udir.mkdir(parents=True)
            self._write_json(
                bucket,
                udir / "upload.json",
                {"key": key, "initiated": time.time(), "headers": headers, "metadata": metadata},
            )
            return upload_id

    def get_upload(self, bucket: str, upload_id: str, key: str) -> UploadInfo:
        with self._lock:
            return self._read_upload(bucket, upload_id, key)[1]

    def _read_parts(self, udir: Path) -> dict[int, PartInfo]:
        parts: dict[int, PartInfo] = {}
        for entry in os.scandir(udir):
            name = entry.name
            if not (name.endswith(".json") and name[:-5].isdigit() and len(name) == 10):
                continue
            try:
                with open(entry.path, "rb") as f:
                    d = json.load(f)
                part = PartInfo(
                    number=int(d["number"]),
                    size=int(d["size"]),
                    etag=str(d["etag"]),
                    last_modified=float(d["last_modified"]),
                    data=str(d["data"]),
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue
            parts[part.number] = part
        return parts

    def commit_part(self, bucket: str, upload_id: str, key: str, number: int, sink: Sink) -> PartInfo:
        sink.finish()
        with self._lock:
            udir, _ = self._read_upload(bucket, upload_id, key)
            sidecar = udir / f"{number:05d}.json"
            old: str | None = None
            try:
                with open(sidecar, "rb") as f:
                    old = str(json.load(f)["data"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
            data_name = f"{number:05d}.{_token()}.data"
            try:
                os.replace(sink.path, udir / data_name)
            except FileNotFoundError:
                raise no_such_upload(upload_id) from None
            sink.committed = True
            part = PartInfo(number, sink.size, sink.md5_hex(), time.time(), data_name)
            try:
                self._write_json(bucket, sidecar, part.__dict__)
            except BaseException:
                _unlink(udir / data_name)
                raise
            if old is not None and old != data_name and _PART_DATA_RE.fullmatch(old):
                _unlink(udir / old)
            return part

    def list_parts(self, bucket: str, upload_id: str, key: str) -> tuple[UploadInfo, list[PartInfo]]:
        with self._lock:
            udir, info = self._read_upload(bucket, upload_id, key)
            parts = self._read_parts(udir)
            return info, [parts[n] for n in sorted(parts)]

    def abort_upload(self, bucket: str, upload_id: str, key: str) -> None:
        with self._lock:
            udir, _ = self._read_upload(bucket, upload_id, key)
            trash = self.tmp_dir(bucket) / f"aborted-{upload_id}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.replace(udir, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def list_uploads(self, bucket: str) -> list[UploadInfo]:
        with self._lock:
            self._index(bucket)
            out = []
            for entry in os.scandir(self._bdir(bucket) / "uploads"):
                if _UPLOAD_ID_RE.fullmatch(entry.name) is None:
                    continue
                try:
                    out.append(self._read_upload(bucket, entry.name, None)[1])
                except S3Error:
                    continue
            out.sort(key=lambda u: (u.key, u.initiated, u.upload_id))
            return out

    def complete_upload(
        self,
        bucket: str,
        upload_id: str,
        key: str,
        requested: Sequence[tuple[int, str]],
        *,
        min_part_size: int,
        precondition: Precondition | None = None,
    ) -> ObjectInfo:
        """Assemble the listed parts (ascending numbers, a subset allowed) into the object.

        The object remembers the part sizes, so ``partNumber=i`` later
        addresses the i-th listed part, counted by position.
        """
        if not requested:
            raise malformed_xml()
        with self._lock:
            udir, upload = self._read_upload(bucket, upload_id, key)
            if precondition is not None:
                precondition(self._index(bucket).objects.get(key))
            available = self._read_parts(udir)
        previous = 0
        for number, _ in requested:
            if number <= previous:
                raise S3Error(
                    "InvalidPartOrder",
                    "The list of parts was not in ascending order. Parts must be ordered by part number.",
                    400,
                    extra={"UploadId": upload_id},
                )
            previous = number
        chosen: list[PartInfo] = []
        for number, etag in requested:
            part = available.get(number)
            if part is None or etag.strip().strip('"').lower() != part.etag:
                raise S3Error(
                    "InvalidPart",
                    "One or more of the specified parts could not be found. The part may not have been "
                    "uploaded, or the specified entity tag may not match the part's entity tag.",
                    400,
                    extra={"UploadId": upload_id, "PartNumber": str(number), "ETag": etag},
                )
            chosen.append(part)
        for part in chosen[:-1]:
            if part.size < min_part_size:
                raise S3Error(
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum allowed object size.",
                    400,
                    extra={
                        "UploadId": upload_id,
                        "PartNumber": str(part.number),
                        "ProposedSize": str(part.size),
                        "MinSizeAllowed": str(min_part_size),
                    },
                )
        sink = self.new_sink(bucket, md5=False)  # the ETag derives from the part MD5s
        try:
            for part in chosen:
                try:
                    src = open(udir / part.data, "rb")  # noqa: SIM115
                except FileNotFoundError:
                    raise no_such_upload(upload_id) from None
                with src:
                    copy_range(src, 0, part.size, sink)
            digest = hashlib.md5(b"".join(bytes.fromhex(p.etag) for p in chosen), usedforsecurity=False)
            etag = f"{digest.hexdigest()}-{len(chosen)}"

            def check(old: ObjectInfo | None) -> None:
                # The upload must still exist (not aborted or completed meanwhile).
                if not (udir / "upload.json").is_file():
                    raise no_such_upload(upload_id)
                if precondition is not None:
                    precondition(old)

            headers = dict(upload.headers)
            tagging = headers.pop("x-amz-tagging", None)
            tags = dict(urllib.parse.parse_qsl(tagging, keep_blank_values=True)) if tagging else {}
            info = self.commit_object(
                bucket,
                key,
                sink,
                etag=etag,
                headers=headers,
                metadata=upload.metadata,
                parts=[p.size for p in chosen],
                precondition=check,
                tags=tags,
            )
            trash = self.tmp_dir(bucket) / f"completed-{upload_id}"
            with self._lock:
                try:
                    os.replace(udir, trash)
                except OSError as e:
                    if e.errno not in (errno.ENOENT,):
                        raise
        finally:
            sink.discard()
        shutil.rmtree(trash, ignore_errors=True)
        return info
