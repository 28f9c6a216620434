"""The ``x-amz-copy-source`` header: ``[/]bucket/key[?versionId=...]``, percent-encoded."""

from __future__ import annotations

from urllib.parse import unquote

from s3proxy.aws.errors import S3Error


def parse_copy_source(value: str) -> tuple[str, str, str | None]:
    src, _, qs = value.partition("?")
    src = unquote(src)
    if src.startswith("/"):
        src = src[1:]
    bucket, sep, key = src.partition("/")
    if not sep or not bucket or not key:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: sourcebucket/sourcekey", 400)
    version = None
    for part in qs.split("&"):
        k, _, v = part.partition("=")
        if k == "versionId":
            version = unquote(v)
    return bucket, key, version
