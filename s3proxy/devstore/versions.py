"""The devstore's object layer: current objects, noncurrent versions and delete markers, object
tags, commits and deletes (synchronous; call it from threads).  Builds on
:class:`s3proxy.devstore.disk.BucketStore`; listings are :mod:`s3proxy.devstore.listing`'s.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import IO

from s3proxy.devstore import listing
from s3proxy.devstore.disk import BucketStore
from s3proxy.devstore.errors import S3Error, no_such_bucket, no_such_key, no_such_version
from s3proxy.devstore.records import (
    BucketIndex,
    ListResult,
    ObjectInfo,
    Precondition,
    Sink,
    check_version_id,
    key_hash,
    new_token,
    unlink_quietly,
)


class ObjectStore(BucketStore):
    """Objects and their versions in the buckets of a :class:`BucketStore`."""

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

    def _save_versions(self, bucket: str, index: BucketIndex, key: str) -> None:
        path = self.root / bucket / "objects" / f"{key_hash(key)}.versions.json"
        versions = index.versions.get(key)
        if versions:
            self._write_json(bucket, path, [v.to_json() for v in versions])
        else:
            index.versions.pop(key, None)
            unlink_quietly(path)

    def _archive(self, bucket: str, index: BucketIndex, key: str, old: ObjectInfo | None) -> bool:
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
                    unlink_quietly(self.root / bucket / "objects" / v.data)
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
        check_version_id(version_id)
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

    # -- objects ----------------------------------------------------------

    def _missing(self, index: BucketIndex, key: str) -> S3Error:
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
            data_name = f"{h}.{new_token()}.data"
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
                unlink_quietly(data_path)
                raise
            index.put(info)
            if old is not None and not kept:
                unlink_quietly(objects / old.data)
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
                    unlink_quietly(objects / f"{h}.json")
                    if not kept:
                        unlink_quietly(objects / current.data)
                    index.remove(key)
                return marker
            if version_id is not None:
                check_version_id(version_id)
                if current is None or current.vid != version_id:
                    versions = index.versions.get(key, [])
                    gone = next((v for v in versions if v.vid == version_id), None)
                    if gone is None:
                        return None  # S3: 204 for a version that does not exist
                    versions.remove(gone)
                    self._save_versions(bucket, index, key)
                    if not gone.delete_marker:
                        unlink_quietly(objects / gone.data)
                    self._promote(bucket, index, key)
                    return gone
            if current is None:
                return None
            unlink_quietly(objects / f"{h}.json")
            unlink_quietly(objects / current.data)
            index.remove(key)
            self._promote(bucket, index, key)
            return current

    def _promote(self, bucket: str, index: BucketIndex, key: str) -> None:
        """After removing the latest version: the newest remaining one becomes current (unless
        it is a delete marker, which then stays latest)."""
        versions = index.versions.get(key)
        if key in index.objects or not versions or versions[0].delete_marker:
            return
        newest = versions.pop(0)
        self._write_json(bucket, self.root / bucket / "objects" / f"{key_hash(key)}.json", newest.to_json())
        self._save_versions(bucket, index, key)
        index.put(newest)

    # -- listings -------------------------------------------------------------

    def list_versions(
        self, bucket: str, *, prefix: str, delimiter: str, key_marker: str, version_marker: str, max_keys: int
    ) -> tuple[list[tuple[ObjectInfo, bool]], list[str], bool, tuple[str, str] | None]:
        """ListObjectVersions (:func:`s3proxy.devstore.listing.list_versions`)."""
        with self._lock:
            return listing.list_versions(
                self._index(bucket), prefix=prefix, delimiter=delimiter, key_marker=key_marker,
                version_marker=version_marker, max_keys=max_keys,
            )

    def list_objects(self, bucket: str, *, prefix: str, delimiter: str, marker: str, max_keys: int) -> ListResult:
        """ListObjects(V2) (:func:`s3proxy.devstore.listing.list_objects`)."""
        with self._lock:
            return listing.list_objects(
                self._index(bucket), prefix=prefix, delimiter=delimiter, marker=marker, max_keys=max_keys
            )
