"""Stream adapters over the pure format: whole-object K-layout reading.

``KObjectDecryptor`` walks a multipart (K layout) object from its first byte:
part header -> that part's chunks -> next header, checking that part numbers
strictly increase and that exactly ``n_parts`` parts are present (when the
backend's ETag or the object's completeness manifest told us how many; ``None``
for backends without ``-N`` ETags), and, given the manifest's list, that each
part is the one it names.  Pure and
synchronous like ``crypto.format``; the async glue lives in the handlers.
"""

from __future__ import annotations

from collections.abc import Sequence

from s3proxy.crypto.errors import ManifestMismatch, PartOrderError, TrailingData, Truncated
from s3proxy.crypto.format import KPartDecryptor, parse_k_header
from s3proxy.crypto.sizes import K_HEADER_SIZE, K_PART_OVERHEAD


class KObjectDecryptor:
    def __init__(
        self, dek: bytes | bytearray, object_id: bytes, n_parts: int | None,
        expected: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        """``expected``: each part's (part number, plaintext length) from the object's manifest;
        a part that differs is ``ManifestMismatch``."""
        if expected is not None and len(expected) != n_parts:
            raise ManifestMismatch("part count differs from the object's manifest")
        self._expected = expected
        self._dek = dek
        self._oid = object_id
        self._n = n_parts
        self._parts_done = 0
        self._last_part_number = 0
        self._hdr = bytearray()
        self._part: KPartDecryptor | None = None
        self._remaining = 0  # ciphertext bytes of the current part after its header

    def update(self, data: bytes | bytearray | memoryview) -> list[bytes | bytearray]:
        out: list[bytes | bytearray] = []
        mv = memoryview(data)
        while mv:
            if self._part is None:
                need = K_HEADER_SIZE - len(self._hdr)
                self._hdr += mv[:need]
                mv = mv[need:]
                if len(self._hdr) < K_HEADER_SIZE:
                    break
                if self._n is not None and self._parts_done >= self._n:
                    raise TrailingData("more parts than the object's part count")
                header = bytes(self._hdr)
                self._hdr.clear()
                info = parse_k_header(header)
                if info.part_number <= self._last_part_number:
                    raise PartOrderError("part numbers must strictly increase")
                self._last_part_number = info.part_number
                if self._expected is not None and self._expected[self._parts_done] != (info.part_number, info.plaintext_length):
                    raise ManifestMismatch(f"part {self._parts_done + 1} differs from the object's manifest")
                c_part = info.plaintext_length + K_PART_OVERHEAD
                self._part = KPartDecryptor(self._dek, self._oid, header, c_part)
                self._remaining = c_part - K_HEADER_SIZE
                if self._remaining == 0:
                    self._finish_part(out)
                continue
            take = mv[: self._remaining]
            mv = mv[len(take):]
            self._remaining -= len(take)
            piece = self._part.update(take)
            if piece:
                out.append(piece)
            if self._remaining == 0:
                self._finish_part(out)
        return out

    def _finish_part(self, out: list[bytes | bytearray]) -> None:
        assert self._part is not None
        tail = self._part.finalize()
        if tail:
            out.append(tail)
        self._part = None
        self._parts_done += 1

    def finalize(self) -> bytes:
        if self._part is not None or self._hdr or (self._n is not None and self._parts_done != self._n):
            raise Truncated("multipart object ended early")
        return b""
