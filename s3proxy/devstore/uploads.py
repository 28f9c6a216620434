"""The devstore's multipart uploads: create, parts, list, abort and complete (synchronous; call
it from threads).  Builds on :class:`s3proxy.devstore.versions.ObjectStore`, which commits the
completed object.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from pathlib import Path

from s3proxy.devstore.errors import S3Error, malformed_xml, no_such_upload
from s3proxy.devstore.records import (
    PART_DATA_RE,
    UPLOAD_ID_RE,
    ObjectInfo,
    PartInfo,
    Precondition,
    Sink,
    UploadInfo,
    copy_range,
    new_token,
    read_parts,
    unlink_quietly,
)
from s3proxy.devstore.versions import ObjectStore


class UploadStore(ObjectStore):
    """Multipart uploads into the buckets of an :class:`ObjectStore`."""

    def _upload_dir(self, bucket: str, upload_id: str) -> Path:
        if UPLOAD_ID_RE.fullmatch(upload_id) is None:
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
            data_name = f"{number:05d}.{new_token()}.data"
            try:
                os.replace(sink.path, udir / data_name)
            except FileNotFoundError:
                raise no_such_upload(upload_id) from None
            sink.committed = True
            part = PartInfo(number, sink.size, sink.md5_hex(), time.time(), data_name)
            try:
                self._write_json(bucket, sidecar, part.__dict__)
            except BaseException:
                unlink_quietly(udir / data_name)
                raise
            if old is not None and old != data_name and PART_DATA_RE.fullmatch(old):
                unlink_quietly(udir / old)
            return part

    def list_parts(self, bucket: str, upload_id: str, key: str) -> tuple[UploadInfo, list[PartInfo]]:
        with self._lock:
            udir, info = self._read_upload(bucket, upload_id, key)
            parts = read_parts(udir)
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
                if UPLOAD_ID_RE.fullmatch(entry.name) is None:
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
            available = read_parts(udir)
        chosen = _chosen_parts(upload_id, requested, available, min_part_size)
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


def _chosen_parts(
    upload_id: str, requested: Sequence[tuple[int, str]], available: dict[int, PartInfo], min_part_size: int
) -> list[PartInfo]:
    """The parts a CompleteMultipartUpload names, checked as S3 does (InvalidPartOrder,
    InvalidPart, EntityTooSmall)."""
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
    return chosen
