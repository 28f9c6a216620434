"""Sans-IO decoder for ``Content-Encoding: aws-chunked`` request bodies.

Feed it the wire body in pieces of any size; it returns the payload pieces
(zero-copy ``memoryview`` slices of the input) as soon as they are parsed,
and checks the framing, the per-chunk signatures and the trailers.

Wire forms (``x-amz-content-sha256``):

``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``  (``signing`` given, ``trailer=False``)::

    <hex-size>;chunk-signature=<sig>\\r\\n <data> \\r\\n   ... repeated ...
    0;chunk-signature=<sig>\\r\\n \\r\\n

``STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER``  (``signing`` given, ``trailer=True``)::

    ... signed chunks ...
    0;chunk-signature=<sig>\\r\\n
    x-amz-checksum-crc32:<b64>\\r\\n
    x-amz-trailer-signature:<sig>\\r\\n
    \\r\\n

``STREAMING-UNSIGNED-PAYLOAD-TRAILER``  (``signing=None``, ``trailer=True``)::

    <hex-size>\\r\\n <data> \\r\\n   ... repeated ...
    0\\r\\n
    x-amz-checksum-crc32:<b64>\\r\\n
    \\r\\n

Each chunk signature chains from the previous one (the seed signature of the
request for the first chunk); the trailer signature chains from the final,
empty chunk's.  A chunk's signature is checked when its last data byte has
been parsed: the bytes of a chunk are released before its signature is known,
so on any error the caller must abort the upload, never commit it.

Tolerated variants: upper- or lower-case hex, and in trailer mode the body
may end after the last trailer line's ``\\r\\n`` without the closing empty
line (the end is then only known at :meth:`ChunkedDecoder.finish`).
Everything else is strict: bare ``\\n``, chunk extensions other than
``chunk-signature`` in signed mode, any extension in unsigned mode, data after
the end, oversize chunk headers or trailer sections.

Errors (:class:`AwsChunkedError`): ``IncompleteBody`` 400 for a truncated
body or a decoded size different from ``x-amz-decoded-content-length``;
``SignatureDoesNotMatch`` 403 for a missing or wrong chunk or trailer
signature; ``InvalidRequest`` 400 for malformed framing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Final, Protocol

from s3proxy.aws.errors import S3Error
from s3proxy.aws.sigv4 import chunk_signature, trailer_signature

__all__ = ["AwsChunkedError", "ChunkSigning", "ChunkedDecoder"]

_SIZE: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")
_SIG_PREFIX: Final = b"chunk-signature="
_HEX64: Final = re.compile(rb"[0-9A-Fa-f]{64}")
_TOKEN: Final = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TRAILER_SIG: Final = "x-amz-trailer-signature"
_EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()

_HEADER: Final = 0  # reading a chunk header line
_DATA: Final = 1  # inside a chunk's data
_DATA_CRLF: Final = 2  # the CRLF after a chunk's data
_TRAILER: Final = 3  # reading trailer lines
_END: Final = 4  # complete; only end of input may follow


class _Sha256(Protocol):
    def update(self, data: memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...


class AwsChunkedError(S3Error):
    """A malformed, truncated or badly signed aws-chunked body, as an S3 error."""


def _framing(message: str) -> AwsChunkedError:
    return AwsChunkedError("InvalidRequest", message, 400)


def _incomplete(message: str) -> AwsChunkedError:
    return AwsChunkedError("IncompleteBody", message, 400)


def _bad_signature(message: str) -> AwsChunkedError:
    return AwsChunkedError("SignatureDoesNotMatch", message, 403)


@dataclass(frozen=True)
class ChunkSigning:
    """What chunk signatures chain from: the request's signing key, date, scope and seed signature."""

    signing_key: bytes = field(repr=False)
    amz_date: str
    scope: str
    seed_signature: str


class ChunkedDecoder:
    """Incremental aws-chunked decoder; see the module docstring for the forms."""

    done: bool
    trailers: dict[str, str]
    decoded_bytes: int

    def __init__(
        self,
        *,
        signing: ChunkSigning | None,
        trailer: bool,
        decoded_length: int | None,
        max_chunk_header: int = 4096,
        max_trailer_bytes: int = 16384,
    ) -> None:
        self._signing = signing
        self._trailer = trailer
        self._decoded_length = decoded_length
        self._max_header = max_chunk_header
        self._max_trailer = max_trailer_bytes
        self.done = False
        self.trailers = {}
        self.decoded_bytes = 0
        self._state = _HEADER
        self._buf = bytearray()  # partial header / trailer line
        self._remaining = 0  # data bytes left in the current chunk
        self._crlf = 0  # bytes of the post-data CRLF seen
        self._final = False  # the current chunk is the zero-length one
        self._prev_sig = signing.seed_signature if signing is not None else ""
        self._chunk_sig = b""
        self._hasher: _Sha256 | None = None
        self._trailer_seen = 0  # bytes of trailer section consumed
        self._trailer_canon = bytearray()  # trailer lines as signed
        self._trailer_signed = False
        self._error: AwsChunkedError | None = None

    # -- public ---------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        """Parse more of the wire body; return the payload pieces it completes.

        The pieces are views into ``data``: use them before reusing the buffer.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._feed(data)
        except AwsChunkedError as e:
            self._error = e
            raise

    def finish(self) -> None:
        """Declare the end of the wire body; raise if it is not complete."""
        if self._error is not None:
            raise self._error
        if self._state == _END:
            return
        if self._state == _TRAILER and not self._buf:
            # Trailer section cut after a complete line: tolerated, except
            # that a signed trailer section needs its signature.
            if self._signing is None or self._trailer_signed:
                self._state = _END
                self.done = True
                return
        self._error = _incomplete("The request body terminated unexpectedly (aws-chunked body incomplete).")
        raise self._error

    # -- parsing --------------------------------------------------------------

    def _feed(self, data: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        searchable = data if isinstance(data, (bytes, bytearray)) else None
        n = len(mv)
        pos = 0
        out: list[bytes | memoryview] = []
        while pos < n:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, n - pos)
                piece = mv[pos : pos + take]
                if self._hasher is not None:
                    self._hasher.update(piece)
                out.append(piece)
                pos += take
                self._remaining -= take
                self.decoded_bytes += take
                if self._remaining == 0:
                    if self._hasher is not None:
                        self._verify_chunk(self._hasher.hexdigest())
                        self._hasher = None
                    self._state = _DATA_CRLF
            elif state == _HEADER:
                line, pos = self._take_line(searchable, mv, pos, self._max_header - len(self._buf), "chunk header")
                if line is not None:
                    self._chunk_header(line)
            elif state == _DATA_CRLF:
                if mv[pos] != b"\r\n"[self._crlf]:
                    raise _framing("aws-chunked chunk data is not followed by CRLF.")
                pos += 1
                self._crlf += 1
                if self._crlf == 2:
                    self._crlf = 0
                    if self._final:
                        self._state = _END
                        self.done = True
                    else:
                        self._state = _HEADER
            elif state == _TRAILER:
                room = self._max_trailer - self._trailer_seen - len(self._buf)
                line, pos = self._take_line(searchable, mv, pos, room, "trailer section")
                if line is not None:
                    self._trailer_seen += len(line) + 2
                    self._trailer_line(line)
            else:
                raise _framing("Unexpected data after the end of the aws-chunked body.")
        return out

    def _take_line(
        self, searchable: bytes | bytearray | None, mv: memoryview, pos: int, room: int, what: str
    ) -> tuple[bytes | None, int]:
        """Consume up to and including the next LF; ``room`` bytes at most may still be taken."""
        end = min(len(mv), pos + room)
        if searchable is not None:
            lf = searchable.find(b"\n", pos, end)
        else:
            found = bytes(mv[pos:end]).find(b"\n")
            lf = -1 if found < 0 else pos + found
        if lf < 0:
            if end - pos >= room:
                raise _framing(f"The aws-chunked {what} is too long.")
            self._buf += mv[pos:end]
            return None, end
        self._buf += mv[pos : lf + 1]
        line = bytes(self._buf)
        self._buf.clear()
        if len(line) < 2 or line[-2] != 0x0D:
            raise _framing(f"The aws-chunked {what} is not terminated by CRLF.")
        return line[:-2], lf + 1

    def _chunk_header(self, line: bytes) -> None:
        if self._signing is not None:
            size_part, sep, ext = line.partition(b";")
            if not sep or not ext.startswith(_SIG_PREFIX) or _HEX64.fullmatch(ext, len(_SIG_PREFIX)) is None:
                raise _bad_signature("The aws-chunked chunk signature is missing or malformed.")
            self._chunk_sig = ext[len(_SIG_PREFIX) :].lower()
        else:
            size_part = line
        if _SIZE.fullmatch(size_part) is None:
            raise _framing("The aws-chunked chunk size is not a hexadecimal number.")
        size = int(size_part, 16)
        if size == 0:
            self._final = True
            if self._signing is not None:
                self._verify_chunk(_EMPTY_SHA256)
            if self._decoded_length is not None and self.decoded_bytes != self._decoded_length:
                raise _incomplete(
                    f"The aws-chunked body carries {self.decoded_bytes} bytes; "
                    f"x-amz-decoded-content-length is {self._decoded_length}."
                )
            self._state = _TRAILER if self._trailer else _DATA_CRLF
            return
        if self._decoded_length is not None and self.decoded_bytes + size > self._decoded_length:
            raise _incomplete(
                f"The aws-chunked body carries more than x-amz-decoded-content-length ({self._decoded_length}) bytes."
            )
        self._remaining = size
        if self._signing is not None:
            self._hasher = hashlib.sha256()
        self._state = _DATA

    def _verify_chunk(self, sha256_hex: str) -> None:
        s = self._signing
        assert s is not None
        expected = chunk_signature(s.signing_key, s.amz_date, s.scope, self._prev_sig, sha256_hex)
        if not hmac.compare_digest(expected.encode("ascii"), self._chunk_sig):
            raise _bad_signature("The aws-chunked chunk signature does not match.")
        self._prev_sig = expected

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            if self._signing is not None and not self._trailer_signed:
                raise _bad_signature("The aws-chunked trailer signature is missing.")
            self._state = _END
            self.done = True
            return
        if self._trailer_signed:
            raise _framing("Unexpected trailer after x-amz-trailer-signature.")
        raw_name, sep, raw_value = line.partition(b":")
        raw_name = raw_name.strip(b" \t")
        if not sep or _TOKEN.fullmatch(raw_name) is None:
            raise _framing("Malformed aws-chunked trailer.")
        name = raw_name.decode("ascii").lower()
        try:
            value = raw_value.strip(b" \t").decode("ascii")
        except UnicodeDecodeError:
            raise _framing("Malformed aws-chunked trailer value.") from None
        if name == _TRAILER_SIG:
            s = self._signing
            if s is None:
                raise _framing("x-amz-trailer-signature in an unsigned aws-chunked body.")
            expected = trailer_signature(s.signing_key, s.amz_date, s.scope, self._prev_sig, bytes(self._trailer_canon))
            if not hmac.compare_digest(expected.encode("ascii"), value.lower().encode("ascii")):
                raise _bad_signature("The aws-chunked trailer signature does not match.")
            self._trailer_signed = True
            return
        if name in self.trailers:
            raise _framing(f"Trailer {name} given twice.")
        self.trailers[name] = value
        self._trailer_canon += line
        self._trailer_canon += b"\n"
