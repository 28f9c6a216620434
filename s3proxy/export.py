"""``s3proxy export``: the way out; every object under a prefix, as plaintext, somewhere else.

Reads through the proxy application started in this process
(:class:`s3proxy.bulkio.InternalProxy`): the listing and every GET are
exactly what a client sees, so each object is decrypted and authenticated by
the same code, and objects the proxy refuses (tampered, or plaintext without
an allowance) fail and are reported instead of being copied.  The target is

- a directory (``--to DIR``): each key becomes a file under it, written to a
  temporary file in the same directory, fsynced and renamed, so a file is
  either whole or absent; mode 0600 (the data is plaintext); the modification
  time is the object's Last-Modified.  Keys that are not safe file names
  (``..`` or empty segments, an absolute path, NUL) are skipped and reported,
  never written outside the directory; directory markers (``key/``) are skipped;
- another S3 endpoint (``--to s3://BUCKET[/PREFIX]``, ``--endpoint URL``,
  credentials from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` and region from
  ``AWS_REGION`` / ``AWS_DEFAULT_REGION``): PUT, or a multipart upload over
  ``--multipart-threshold``, with Content-Type and the other system headers,
  user metadata and tags.

Streams throughout; resumable (state file) with the same progress and report
as ``migrate`` (:class:`s3proxy.bulkjob.BulkJob`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from s3proxy import bulkjob
from s3proxy.backend.client import BackendClient
from s3proxy.bulkjob import BulkJob, JobError, SetupError, Source
from s3proxy.config import BackendSettings

__all__ = ["Exporter", "add_parser", "cmd_export", "safe_relative_path"]


def safe_relative_path(key: str) -> tuple[str, ...] | None:
    """The path segments of ``key`` as a file under a directory, or None if it is not a safe name."""
    if not key or "\x00" in key or key.endswith("/") or "\\" in key:
        return None
    parts = tuple(key.split("/"))
    if any(p in ("", ".", "..") for p in parts):
        return None
    return parts


class Exporter(BulkJob):
    """One ``export`` run of ``bucket``/``prefix`` to a directory or an S3 bucket."""

    kind = "export"
    verb = "exported"

    def __init__(self, settings: Any, bucket: str, prefix: str = "", *, dest: str, endpoint: str | None = None,
                 dest_credentials: tuple[str, str, str] | None = None, **kw: Any) -> None:
        super().__init__(settings, bucket, prefix, **kw)
        self.dest = dest
        self.dest_client: BackendClient | None = None
        self.dest_bucket = self.dest_prefix = ""
        self.root: Path | None = None
        self._real_root = ""
        if dest.startswith("s3://"):
            self.dest_bucket, _, self.dest_prefix = dest[5:].partition("/")
            if not self.dest_bucket:
                raise SetupError(f"--to {dest}: no bucket named")
            ak, sk, region = dest_credentials or ("", "", "us-east-1")
            url = endpoint or f"https://s3.{region}.amazonaws.com"
            try:
                self.dest_client = BackendClient(BackendSettings(
                    url=url, access_key=SecretStr(ak), secret_key=SecretStr(sk), region=region))
            except ValueError as exc:
                raise SetupError(f"--endpoint {url}: {exc}") from None
        else:
            self.root = Path(dest)

    def identity(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "prefix": self.prefix, "to": self.dest}

    @property
    def list_client(self) -> BackendClient:
        return self.proxy_client  # plaintext sizes, and only what the proxy shows

    async def prepare(self) -> None:
        if self.root is not None:
            if not self.dry_run:
                self.root.mkdir(parents=True, exist_ok=True)
            self._real_root = os.path.realpath(self.root)
            return
        assert self.dest_client is not None
        await self.dest_client.start()
        r = await self.call(self.dest_client, "HEAD", None, bucket=self.dest_bucket)
        if r.status != 200:
            raise SetupError(f"the target bucket s3://{self.dest_bucket} is not reachable: HTTP {r.status}")

    async def run(self) -> bulkjob.JobReport:
        try:
            return await super().run()
        finally:
            if self.dest_client is not None:
                await self.dest_client.close()

    async def one(self, key: str, size: int | None) -> tuple[str, str]:
        if self.root is not None:
            parts = safe_relative_path(key)
            if parts is None:
                return "skip", ("directory marker" if key.endswith("/") and size == 0
                                else "key is not a safe file name (not written)")
            if self.dry_run:
                return "would", f"{size} bytes"
            return await self._to_file(key, parts)
        if self.dry_run:
            return "would", f"{size} bytes"
        return await self._to_s3(key)

    async def _open(self, key: str) -> Source:
        src = await self.open_source(self.proxy_client, key, [], {}, None)
        if src is None:
            raise JobError("deleted since listed")
        if src.resp.content_length is None:
            src.close()
            raise JobError("the proxy answered no Content-Length")
        return src

    async def _to_file(self, key: str, parts: tuple[str, ...]) -> tuple[str, str]:
        assert self.root is not None
        path = self.root.joinpath(*parts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JobError(f"cannot create the directory for it: {exc.strerror}") from None
        real_parent = os.path.realpath(path.parent)
        if os.path.commonpath([real_parent, self._real_root]) != self._real_root:
            raise JobError("its directory leads outside the target (a symlink?); not written")
        src = await self._open(key)
        tmp = path.with_name(f".{path.name}.s3proxy-export-{secrets.token_hex(4)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "wb") as f:
                async for piece in src.take(src.resp.content_length or 0):
                    await asyncio.to_thread(f.write, piece)
                await asyncio.to_thread(os.fsync, f.fileno())
            mtime = src.resp.headers.get("Last-Modified")
            if mtime:
                ts = parsedate_to_datetime(mtime).timestamp()
                os.utime(tmp, (ts, ts))
            os.replace(tmp, path)
        except OSError as exc:
            raise JobError(f"cannot write {path}: {exc.strerror}") from None
        finally:
            src.close()
            if tmp.exists():
                tmp.unlink()
        self.report.bytes_done += src.read
        return "done", ""

    async def _to_s3(self, key: str) -> tuple[str, str]:
        assert self.dest_client is not None
        tagging = await self.tagging(self.proxy_client, key)
        src = await self._open(key)
        total = src.resp.content_length or 0
        headers = bulkjob.kept_headers(src.resp.headers)
        if tagging:
            headers["x-amz-tagging"] = tagging
        target = self.dest_prefix + key[len(self.prefix):] if self.dest_prefix else key
        try:
            if total > self.multipart_threshold:
                reply = await self.put_multipart(self.dest_client, target, headers, src,
                                                 bulkjob.split(total, self.part_size), {}, bucket=self.dest_bucket)
            else:
                reply = await self.put_single(self.dest_client, target, headers, src, total, {},
                                              bucket=self.dest_bucket)
        finally:
            src.close()
        assert reply is not None  # no condition: never None
        self.report.bytes_done += total
        return "done", ""


# -- command line ----------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """``s3proxy export`` on the ``s3proxy`` command's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "export", help="write the plaintext of a bucket to a directory or another S3 endpoint",
        description="Read every object under a prefix through the proxy and write its plaintext to a "
                    "directory or to another S3 bucket (docs/MIGRATION.md).",
    )
    bulkjob.common_arguments(p, "export")
    p.add_argument("--to", dest="dest", metavar="DIR|s3://BUCKET", required=True, help="DIR, or s3://BUCKET[/PREFIX] (required)")
    p.add_argument("--endpoint", metavar="URL", default=None,
                   help="S3 endpoint of an s3:// target (default AWS; credentials from AWS_ACCESS_KEY_ID / "
                        "AWS_SECRET_ACCESS_KEY, region from AWS_REGION)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """0: every object exported; 1: some failed (listed; a rerun resumes); 2: could not start."""
    settings = bulkjob.load(args)
    if settings is None:
        return 2
    env = os.environ
    creds = (env.get("AWS_ACCESS_KEY_ID", ""), env.get("AWS_SECRET_ACCESS_KEY", ""),
             env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1")
    try:
        job = Exporter(settings, args.bucket, args.prefix or "", dest=args.dest, endpoint=args.endpoint,
                       dest_credentials=creds, **bulkjob.job_options(args))
    except SetupError as exc:
        print(f"s3proxy export: {exc}", file=sys.stderr)
        return 2
    return bulkjob.run_job(job)


if __name__ == "__main__":  # pragma: no cover - `python -m s3proxy.export ...` before the cli wires it
    parser = argparse.ArgumentParser(prog="s3proxy")
    add_parser(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(["export", *sys.argv[1:]])
    raise SystemExit(ns.func(ns))
