"""XML and header formatting shared by the devstore's request handlers."""

from __future__ import annotations

import hashlib
import time
from email.utils import formatdate

from aiohttp import web

S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
OWNER_ID = hashlib.sha256(b"s3proxy-devstore").hexdigest()
OWNER_NAME = "devstore"


def x(value: str) -> str:
    """XML-escape text content (``\\r`` too, which parsers would otherwise turn into ``\\n``)."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def el(tag: str, value: str | int | None) -> str:
    if value is None:
        return ""
    return f"<{tag}>{x(str(value))}</{tag}>"


def document(tag: str, inner: str) -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{tag} xmlns="{S3_XMLNS}">{inner}</{tag}>'.encode()


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"


def http_date(t: float) -> str:
    return formatdate(int(t), usegmt=True)


def owner() -> str:
    return f"<Owner><ID>{OWNER_ID}</ID><DisplayName>{OWNER_NAME}</DisplayName></Owner>"


def xml_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/xml", headers=headers)
