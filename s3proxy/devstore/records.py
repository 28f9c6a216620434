"""The devstore's records (object, upload and part sidecars), bucket index and body sink.

Plain data and small file helpers shared by the layers of :class:`s3proxy.devstore.store.Store`;
the on-disk layout is described there.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from s3proxy.devstore.errors import S3Error

log = logging.getLogger("s3proxy.devstore")

CHUNK_SIZE = 1 << 20
DEFAULT_MIN_PART_SIZE = 5 << 20
MAX_PARTS = 10000

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
UPLOAD_ID_RE = re.compile(r"[0-9a-f]{32}")
PART_DATA_RE = re.compile(r"(\d{5})\.[0-9a-f]{16}\.data")


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


def check_version_id(version_id: str) -> None:
    if version_id != "null" and _VERSION_ID_RE.fullmatch(version_id) is None:
        raise S3Error("InvalidArgument", "Invalid version id specified", 400,
                      extra={"ArgumentName": "versionId", "ArgumentValue": version_id})


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_token() -> str:
    return uuid.uuid4().hex[:16]


def unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as e:  # e.g. open elsewhere on Windows: collected at the next start
        log.warning("devstore: cannot remove %s: %s", path, e)


def fsync_dir(path: Path) -> None:
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
            unlink_quietly(self.path)


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


class BucketIndex:
    """One bucket's keys and versions, in memory (see :meth:`BucketStore._index`)."""

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


def read_parts(udir: Path) -> dict[int, PartInfo]:
    """The part sidecars of the upload directory ``udir`` (unreadable ones skipped)."""
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
