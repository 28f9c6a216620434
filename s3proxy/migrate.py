"""``s3proxy migrate``: encrypt the plaintext objects of a bucket in place (docs/MIGRATION.md).

Runs with the proxy's configuration and the backend's credentials.  It lists
``--bucket``/``--prefix`` on the backend and, for each object without an
s3proxy envelope, reads the plaintext from the backend and writes it back at
the same key through the proxy's own write path: the proxy application runs
in this process on an ephemeral ``127.0.0.1`` port with a one-off identity
(:class:`s3proxy.bulkio.InternalProxy`), and the object is PUT through it
or, when it was a multipart object (with the source's part sizes) or is over
``--multipart-threshold``, uploaded part by part.  Bodies stream from the
backend GET into the proxy's request; nothing is held whole.  Kept: user
metadata, Content-Type and the other system headers, tags, storage class; on
a versioned bucket the result is a new version (the plaintext one stays until
the operator removes old versions).  ACLs are not carried over.

Safe under concurrent writers: the source is read with ``If-Match`` its ETag
and every final write (PUT, CompleteMultipartUpload) carries ``If-Match`` the
same ETag, which the proxy forwards to the backend, so an object a client
changed in the meantime is never overwritten with stale data: the conflict
is reported and the object is migrated again from its new content (if the
client wrote it through the proxy it is encrypted already and skipped).  A
backend that ignores ``If-Match`` on writes (found by a probe at start: a
conditional PUT of a fresh key, which must not succeed) gets a check instead:
a HEAD right before the final write; the race window is that write's own
duration (docs/MIGRATION.md).

Resumable and idempotent (:class:`s3proxy.bulkjob.BulkJob`: state file,
progress, report); encrypted objects are skipped, so a second run changes
nothing.  ``--verify`` reads each migrated object back through the proxy and
compares the SHA-256 of its plaintext with the one taken reading the source.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from s3proxy import bulkjob
from s3proxy.backend import ops
from s3proxy.backend.ops import parts_from_etag
from s3proxy.bulkjob import BulkJob, Changed, JobError, Reply, SetupError, describe, quoted

__all__ = ["Migrator", "add_parser", "cmd_migrate"]

META = "x-amz-meta-"
ENVELOPE_MARK = META + "s3proxy-v"
# Metadata of objects written by the AWS S3 Encryption Client (v1, v2, v3, instruction files).
S3EC_MARKS = tuple(META + n for n in ("x-amz-key", "x-amz-key-v2", "x-amz-cek-alg", "x-amz-c", "x-amz-3",
                                      "x-amz-crypto-instr-file"))
PROBE_ETAG = '"00000000000000000000000000000000"'
CONFLICT_ATTEMPTS = 3  # a key that keeps changing under the migration is reported, not chased
Hook = Callable[[str, str], Awaitable[None]]


class Migrator(BulkJob):
    """One ``migrate`` run over ``bucket``/``prefix``."""

    kind = "migrate"
    verb = "migrated"

    def __init__(self, settings: Any, bucket: str, prefix: str = "", *, to_key: str | None = None,
                 verify: bool = False, conditional: str = "auto", source_format: str = "plaintext",
                 **kw: Any) -> None:
        super().__init__(settings, bucket, prefix, **kw)
        self.to_key = to_key
        # "plaintext": objects without an envelope are read straight from the backend.
        # "s3ec": they are read through the proxy, which decrypts AWS S3 Encryption Client objects
        # (the bucket's s3ec.read, docs/S3EC.md) and serves plaintext where the bucket allows it.
        self.source_format = source_format
        self.verify = verify
        self.conditional = conditional  # "auto" (probed), "if-match", "check"
        self.use_if_match = conditional != "check"
        self.complete_if_match = conditional != "check"  # some stores honour it on PUT only (moto)
        # Test seam: awaited with (key, stage) at "opened" (the source GET answered, the write
        # not started) and "complete" (parts uploaded, before CompleteMultipartUpload).
        self.hook: Hook | None = None
        # Does a GET say x-amz-tagging-count when an object has tags (AWS, MinIO, moto, devstore)?
        # Then objects whose GET does not say it have none and cost no GET ?tagging.
        self.tag_count_reported = False

    def identity(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "prefix": self.prefix, "to": self.to_key, "from": self.source_format}

    # -- start ---------------------------------------------------------------------

    async def prepare(self) -> None:
        if self.settings.bucket(self.bucket).mode != "encrypt":
            raise SetupError(f"bucket {self.bucket!r} is configured as passthrough: the proxy would not encrypt it")
        if self.settings.bucket(self.bucket).names.encrypt:
            # In place is impossible: the proxy would store each object under its encrypted name, next
            # to the plaintext one (docs/NAMES.md: copy the objects in through the proxy instead).
            raise SetupError(f"bucket {self.bucket!r} has encrypted names (names.encrypt): migrate encrypts "
                             "objects in place, under their plaintext names, and cannot rename them; copy the "
                             "objects in through the proxy instead (aws s3 sync / rclone copy from the "
                             "storage to the proxy), then delete the plaintext ones")
        if self.conditional == "auto" and not self.dry_run:
            put, complete = await self._probes()
            self.use_if_match, self.complete_if_match = put, put and complete
        for op, honoured in (("PUT", self.use_if_match), ("CompleteMultipartUpload", self.complete_if_match)):
            self.report.extra[f"if_match_{op}"] = honoured
            if not honoured:
                self.report.warnings.append(
                    f"the backend does not honour If-Match on {op}: each such write is guarded by a HEAD "
                    "just before it instead (race window: that write's duration; docs/MIGRATION.md)")
        self.report.extra["conditional_writes"] = "if-match" if self.use_if_match else "check"

    async def _probes(self) -> tuple[bool, bool]:
        """Does the backend refuse a PUT, and a CompleteMultipartUpload, whose ``If-Match`` names
        another ETag than the object's?  Probed on a scratch object of the prefix, deleted after
        (on a versioned bucket its versions stay: two one-byte versions and a delete marker)."""
        key = f"{self.prefix}.s3proxy-migrate-probe-{secrets.token_hex(8)}"
        try:
            first = await self.call(self.source, "PUT", key, headers={"x-amz-tagging": "s3proxy-probe=1"}, body=b"p")
            if first.status != 200:
                raise SetupError(f"cannot write the probe object {key!r}: {describe(first.status, first.body)}")
            got = await self.call(self.source, "GET", key)
            self.tag_count_reported = got.status == 200 and got.headers.get("x-amz-tagging-count") == "1"
            put = await self.call(self.source, "PUT", key, headers={"If-Match": PROBE_ETAG}, body=b"q")
            return put.status == 412, await self._probe_complete(key)
        finally:
            await self.call(self.source, "DELETE", key)

    async def _probe_complete(self, key: str) -> bool:
        try:
            upload_id = await ops.create_upload(self.store(self.source), key, {})
        except ops.OpError as exc:
            raise SetupError(f"probing conditional writes on the backend failed: {exc}") from None
        q = [("uploadId", upload_id)]
        part = await self.call(self.source, "PUT", key, query=[("partNumber", "1"), *q], body=b"p")
        c = await self.call(self.source, "POST", key, query=q, headers={"If-Match": PROBE_ETAG},
                            body=ops.complete_body([part.headers.get("ETag", "")]), error_in_200=True, retry=False)
        if c.status != 200:
            await self.call(self.source, "DELETE", key, query=q)
        return c.status == 412

    async def run(self) -> bulkjob.JobReport:
        report = await super().run()
        allowance = self.settings.bucket(self.bucket)
        if report.ok and not self.dry_run and self.prefix in allowance.unencrypted_read_prefixes:
            self.out.write(
                f"s3://{self.bucket}/{self.prefix} holds no plaintext any more: once --verify agrees, remove "
                f"{self.prefix!r} from buckets.{self.bucket}.unencrypted_read_prefixes so that plaintext "
                "planted there is refused again\n")
        return report

    # -- one object ------------------------------------------------------------------

    async def one(self, key: str, size: int | None) -> tuple[str, str]:
        for attempt in range(CONFLICT_ATTEMPTS):
            outcome = await self._attempt(key)
            if outcome[0] != "conflict":
                if attempt:
                    self.report.conflicts[key] = f"changed by a client during the migration ({attempt}x); " + (
                        "migrated from its new content" if outcome[0] == "done" else f"then {outcome[1]}")
                return outcome
        self.report.conflicts[key] = f"changed by a client during each of {CONFLICT_ATTEMPTS} attempts"
        raise JobError(f"changed by a client during each of {CONFLICT_ATTEMPTS} attempts (never overwritten); "
                       "rerun to retry it")

    async def _attempt(self, key: str) -> tuple[str, str]:
        head = await self.call(self.source, "HEAD", key)
        if head.status == 404:
            return "skip", "deleted since listed"
        if head.status != 200:
            raise JobError(f"HEAD failed: HTTP {head.status}")
        names = {k.lower() for k in head.headers}
        if ENVELOPE_MARK in names:
            return "skip", "already encrypted"
        if META + "x-amz-crypto-instr-file" in names:
            return "skip", "an S3 Encryption Client instruction file (delete it once its object is migrated)"
        via_proxy = self.source_format == "s3ec"
        if any(m in names for m in S3EC_MARKS) and not via_proxy:
            return "skip", "S3 Encryption Client object (migrate it with --from s3ec)"
        if via_proxy:
            # The proxy's HEAD: the plaintext length and the metadata without the S3EC's own.
            head = await self.call(self.proxy_client, "HEAD", key)
            if head.status == 404:
                return "skip", "deleted since listed"
            if head.status != 200:
                raise JobError(f"HEAD through the proxy failed: HTTP {head.status} "
                               "(is the bucket's s3ec.read on, and plaintext allowed where there is some?)")
        if "x-amz-server-side-encryption-customer-algorithm" in names:
            return "skip", "SSE-C on the backend (only its client has the key)"
        etag = quoted(head.headers.get("ETag", ""))
        total = int(head.headers.get("Content-Length", "-1"))
        if etag == '""' or total < 0:
            raise JobError("the backend's HEAD gave no ETag or length")
        if self.dry_run:
            return "would", f"{total} bytes"
        headers = bulkjob.kept_headers(head.headers)
        if self.to_key:
            headers["x-amz-server-side-encryption"] = "aws:kms"
            headers["x-amz-server-side-encryption-aws-kms-key-id"] = self.to_key
        n = None if via_proxy else parts_from_etag(etag)  # S3EC part sizes are of ciphertext, not plaintext
        sizes = await self.part_sizes(key, total, n) if n is not None else None
        if sizes is None and total > self.multipart_threshold:
            sizes = bulkjob.split(total, self.part_size)
        try:
            src = await self.open_source(self.proxy_client if via_proxy else self.source, key, [],
                                         {"If-Match": etag}, total)
        except Changed:
            return "conflict", ""
        if src is None:
            return "conflict", ""
        try:
            count = src.resp.headers.get("x-amz-tagging-count")
            if (count is None and not self.tag_count_reported) or (count is not None and count != "0"):
                tagging = await self.tagging(self.source, key)
                if tagging:
                    headers["x-amz-tagging"] = tagging
            if self.hook is not None:
                await self.hook(key, "opened")
            if not self.use_if_match and not await self._unchanged(key, etag):
                return "conflict", ""
            cond = {"If-Match": etag} if self.use_if_match else {}
            if sizes is None:
                reply = await self.put_single(self.proxy_client, key, headers, src, total, cond)
            else:
                reply = await self.put_multipart(self.proxy_client, key, headers, src, sizes, cond,
                                                 before_complete=self._before_complete(key, etag))
        finally:
            src.close()
        if reply is None:
            return "conflict", ""
        self.report.bytes_done += total
        if self.verify:
            await self._verify(key, reply, src.sha256.hexdigest(), total)
        return "done", ""

    def _before_complete(self, key: str, etag: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            if self.hook is not None:
                await self.hook(key, "complete")
            return self.complete_if_match or await self._unchanged(key, etag)

        return check

    async def _unchanged(self, key: str, etag: str) -> bool:
        """Check-then-write for backends without conditional writes: still the object we read?"""
        r = await self.call(self.source, "HEAD", key)
        names = {k.lower() for k in r.headers}
        return r.status == 200 and quoted(r.headers.get("ETag", "")) == etag and ENVELOPE_MARK not in names

    async def _verify(self, key: str, reply: Reply, digest: str, total: int) -> None:
        version = reply.headers.get("x-amz-version-id")
        query = [("versionId", version)] if version and version != "null" else []
        new_etag = bulkjob.reply_etag(reply)
        cond = {"If-Match": quoted(new_etag)} if new_etag and not query else {}
        got = await self.read_digest(self.proxy_client, key, query, cond)
        if got is None:
            self.report.warnings.append(f"{key}: overwritten by a client right after its migration; not verified")
            return
        if got != (digest, total):
            raise JobError("verify: the object read back through the proxy differs from the source")
        self.report.extra["verified"] = int(self.report.extra.get("verified", 0)) + 1


# -- command line ------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """``s3proxy migrate`` on the ``s3proxy`` command's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "migrate", help="encrypt the plaintext objects of a bucket in place",
        description="Encrypt the plaintext objects of a bucket in place, through the proxy's own write "
                    "path (docs/MIGRATION.md).",
    )
    bulkjob.common_arguments(p, "migrate")
    p.add_argument("--to", dest="to_key", metavar="KEY_ID", default=None,
                   help="key id to wrap the new data keys under (default: the configured write key)")
    p.add_argument("--verify", action="store_true",
                   help="read every migrated object back through the proxy and compare plaintext SHA-256 (default: no)")
    p.add_argument("--from", dest="source_format", choices=("plaintext", "s3ec"), default="plaintext",
                   help="what the objects are: plaintext (read from the backend) or AWS S3 Encryption Client "
                        "objects, read and decrypted through the proxy (needs the bucket's s3ec.read; "
                        "default: plaintext)")
    p.add_argument("--conditional", choices=("auto", "if-match", "check"), default="auto",
                   help="how writes are guarded against concurrent changes: If-Match (probed by 'auto') or "
                        "a HEAD just before the final write")
    p.set_defaults(func=cmd_migrate)


def cmd_migrate(args: argparse.Namespace) -> int:
    """0: every object done; 1: some failed (listed; a rerun resumes); 2: the run could not start."""
    settings = bulkjob.load(args)
    if settings is None:
        return 2
    job = Migrator(settings, args.bucket, args.prefix or "", to_key=args.to_key, verify=args.verify,
                   conditional=args.conditional, source_format=args.source_format, **bulkjob.job_options(args))
    return bulkjob.run_job(job)


if __name__ == "__main__":  # pragma: no cover - `python -m s3proxy.migrate ...` before cli.py wires it
    parser = argparse.ArgumentParser(prog="s3proxy")
    add_parser(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args(["migrate", *sys.argv[1:]])
    raise SystemExit(ns.func(ns))
