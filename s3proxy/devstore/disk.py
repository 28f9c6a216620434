"""The devstore's bottom layer: the data directory, its buckets, their in-memory indexes, bucket
configurations and versioning status (synchronous; call it from threads).

:class:`BucketStore` is extended by :mod:`s3proxy.devstore.versions` (objects and versions) and
:mod:`s3proxy.devstore.uploads` (multipart uploads) into :class:`s3proxy.devstore.store.Store`.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from s3proxy.devstore.errors import S3Error, no_such_bucket
from s3proxy.devstore.records import (
    PART_DATA_RE,
    UPLOAD_ID_RE,
    BucketIndex,
    ObjectInfo,
    Sink,
    fsync_dir,
    key_hash,
    log,
    read_parts,
    unlink_quietly,
    valid_bucket_name,
)


class BucketStore:
    """A data directory of buckets (the base of Store); thread-safe, one per directory."""

    def __init__(self, root: Path, *, fsync: bool = False) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._indexes: dict[str, BucketIndex] = {}
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
                fsync_dir(path.parent)
        except BaseException:
            unlink_quietly(tmp_path)
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
            self._indexes[bucket] = BucketIndex()

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

    def _index(self, bucket: str) -> BucketIndex:
        bdir = self.require_bucket(bucket)
        index = self._indexes.get(bucket)
        if index is None:
            index = self._load_index(bucket, bdir)
            self._indexes[bucket] = index
        return index

    def _load_index(self, bucket: str, bdir: Path) -> BucketIndex:
        index = BucketIndex()
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
                unlink_quietly(objects / name)  # left over by an interrupted commit
        self._collect_upload_debris(bdir / "uploads")
        return index

    @staticmethod
    def _load_versions(path: str, index: BucketIndex, referenced: set[str]) -> None:
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
            unlink_quietly(self.require_bucket(bucket) / "config" / name)
            self._configs[(bucket, name)] = None

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

    def _collect_upload_debris(self, uploads: Path) -> None:
        """Remove part data files no part sidecar names (interrupted part commits)."""
        for entry in os.scandir(uploads):
            if not entry.is_dir() or UPLOAD_ID_RE.fullmatch(entry.name) is None:
                continue
            udir = Path(entry.path)
            if not (udir / "upload.json").is_file():  # CreateMultipartUpload interrupted
                shutil.rmtree(udir, ignore_errors=True)
                continue
            referenced = {part.data for part in read_parts(udir).values()}
            for child in os.scandir(udir):
                if PART_DATA_RE.fullmatch(child.name) and child.name not in referenced:
                    unlink_quietly(Path(child.path))

