"""S3 errors raised by the proxy itself, rendered as S3 XML."""

from __future__ import annotations

import re
from xml.sax.saxutils import escape as _escape

# Characters XML 1.0 cannot carry (C0 controls but tab/LF/CR, surrogates, U+FFFE/U+FFFF).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def escape(text: str) -> str:
    """XML-escaped text that is always well-formed XML 1.0: request text echoed in an error
    (a signature, a resource) may hold anything; unrepresentable characters become U+FFFD."""
    return _escape(_NOT_XML.sub("\ufffd", text))


class S3Error(Exception):
    """An error the client sees as ``<Error><Code>...`` with ``status``."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int = 400,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.headers = headers or {}
        self.extra = extra or {}


def error_xml(code: str, message: str, request_id: str, resource: str = "", extra: dict[str, str] | None = None) -> bytes:
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>',
        f"<Code>{escape(code)}</Code>",
        f"<Message>{escape(message)}</Message>",
    ]
    for k, v in (extra or {}).items():
        parts.append(f"<{k}>{escape(v)}</{k}>")
    if resource:
        parts.append(f"<Resource>{escape(resource)}</Resource>")
    parts.append(f"<RequestId>{escape(request_id)}</RequestId></Error>")
    return "".join(parts).encode()


def bad_request(message: str, code: str = "InvalidRequest") -> S3Error:
    return S3Error(code, message, 400)


def access_denied(message: str = "Access Denied") -> S3Error:
    return S3Error("AccessDenied", message, 403)


def not_implemented(message: str = "This operation is not supported by s3proxy") -> S3Error:
    return S3Error("NotImplemented", message, 501)
