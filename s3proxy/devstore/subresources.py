"""Documents of the devstore's bucket configurations, versioning, object tags and attributes.

Parsing and rendering only; :mod:`s3proxy.devstore.server` does the I/O.  Where S3's behaviour
is not obvious the AWS documentation page it follows is named.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from urllib.parse import parse_qsl, quote
from xml.etree import ElementTree as ET

from s3proxy.aws import xmlsafe
from s3proxy.aws.errors import S3Error as ProxyS3Error
from s3proxy.devstore.errors import S3Error, invalid_argument, malformed_xml
from s3proxy.devstore.records import ObjectInfo
from s3proxy.devstore.render import document, el, iso, owner

# Bucket configurations kept as sent (PUT, GET, DELETE ?<name>): the document's root element,
# or None for the bucket policy (JSON).
STORED_CONFIGS: dict[str, str | None] = {
    "policy": None,
    "cors": "CORSConfiguration",
    "lifecycle": "LifecycleConfiguration",
    "tagging": "Tagging",
    "encryption": "ServerSideEncryptionConfiguration",
    "website": "WebsiteConfiguration",
    "publicAccessBlock": "PublicAccessBlockConfiguration",
    "ownershipControls": "OwnershipControls",
}
MAX_TAGS = 10  # per object (AWS: "Categorizing your storage using tags")
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256
ATTRIBUTES = frozenset({"ETag", "Checksum", "ObjectParts", "StorageClass", "ObjectSize"})


def parse(body: bytes) -> ET.Element:
    try:
        return xmlsafe.parse(body)
    except ProxyS3Error:
        raise malformed_xml() from None


def check_config(name: str, body: bytes) -> None:
    """Refuse a configuration document S3 would not accept as well-formed."""
    root = STORED_CONFIGS[name]
    if root is None:
        try:
            policy = json.loads(body)
        except ValueError:
            raise S3Error("MalformedPolicy", "Policies must be valid JSON and the first byte must be '{'", 400) from None
        if not isinstance(policy, dict) or "Statement" not in policy:
            raise S3Error("MalformedPolicy", "Missing required field Statement", 400)
        return
    if parse(body).tag != root:
        raise malformed_xml()
    if name == "tagging":
        tags_from_xml(body)


def parse_versioning(body: bytes) -> str:
    """The Status of a PutBucketVersioning document ("Enabled" or "Suspended")."""
    root = parse(body)
    if root.tag != "VersioningConfiguration":
        raise malformed_xml()
    if (root.findtext("MfaDelete") or "Disabled").strip() != "Disabled":
        raise S3Error("NotImplemented", "MFA delete is not supported by this store.", 501)
    status = (root.findtext("Status") or "").strip()
    if status not in ("Enabled", "Suspended"):
        raise malformed_xml()
    return status


def versioning_document(status: str) -> bytes:
    # A bucket that never had versioning answers an empty configuration (GetBucketVersioning docs).
    return document("VersioningConfiguration", el("Status", status or None))


def check_tags(tags: Sequence[tuple[str, str]]) -> dict[str, str]:
    """A tag set as S3 accepts it (PutObjectTagging): at most 10, bounded lengths, unique keys."""
    out: dict[str, str] = {}
    if len(tags) > MAX_TAGS:
        raise S3Error("BadRequest", "Object tags cannot be greater than 10", 400)
    for key, value in tags:
        if not key or len(key) > MAX_TAG_KEY:
            raise S3Error("InvalidTag", "The TagKey you have provided is invalid", 400)
        if len(value) > MAX_TAG_VALUE:
            raise S3Error("InvalidTag", "The TagValue you have provided is invalid", 400)
        if key in out:
            raise S3Error("InvalidTag", "Cannot provide multiple Tags with the same key", 400)
        out[key] = value
    return out


def tags_from_header(value: str | None) -> dict[str, str]:
    """``x-amz-tagging``: URL query parameters (PutObject, CreateMultipartUpload, CopyObject)."""
    if value is None or not value.strip():
        return {}
    try:
        pairs = parse_qsl(value, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise invalid_argument("The header 'x-amz-tagging' shall be encoded as UTF-8 then URLEncoded URL query "
                               "parameters without tag name duplicates.", "x-amz-tagging", value) from None
    return check_tags(pairs)


def tags_from_xml(body: bytes) -> dict[str, str]:
    root = parse(body)
    if root.tag != "Tagging":
        raise malformed_xml()
    tag_set = root.find("TagSet")
    if tag_set is None:
        raise malformed_xml()
    pairs = []
    for tag in tag_set.findall("Tag"):
        key, value = tag.findtext("Key"), tag.findtext("Value")
        if key is None or value is None:
            raise malformed_xml()
        pairs.append((key, value))
    return check_tags(pairs)


def tagging_document(tags: dict[str, str]) -> bytes:
    inner = "".join(f"<Tag>{el('Key', k)}{el('Value', v)}</Tag>" for k, v in tags.items())
    return document("Tagging", f"<TagSet>{inner}</TagSet>")


def attributes_document(info: ObjectInfo, header: str | None) -> bytes:
    """GetObjectAttributes for ``x-amz-object-attributes``.  ETag unquoted and ObjectParts with the
    part count only (no per-part list: that comes with checksums, which this store does not keep),
    as the GetObjectAttributes API reference describes."""
    wanted = {a.strip() for a in (header or "").split(",") if a.strip()}
    if not wanted:
        raise S3Error("InvalidRequest", "The x-amz-object-attributes header specifying the attributes to be "
                      "retrieved is either missing or empty", 400)
    unknown = wanted - ATTRIBUTES
    if unknown:
        raise invalid_argument("Invalid attribute name specified.", "x-amz-object-attributes", sorted(unknown)[0])
    parts = []
    if "ETag" in wanted:
        parts.append(el("ETag", info.etag))
    if "ObjectParts" in wanted and info.parts:
        parts.append(f"<ObjectParts>{el('PartsCount', len(info.parts))}</ObjectParts>")
    if "StorageClass" in wanted:
        parts.append(el("StorageClass", "STANDARD"))
    if "ObjectSize" in wanted:
        parts.append(el("ObjectSize", info.size))
    return document("GetObjectAttributesResponse", "".join(parts))


def versions_document(
    bucket: str,
    query: dict[str, str],
    max_keys: int,
    entries: list[tuple[ObjectInfo, bool]],
    prefixes: list[str],
    truncated: bool,
    next_markers: tuple[str, str] | None,
) -> bytes:
    """ListVersionsResult: versions and delete markers of each key newest first, keys in order."""
    encoding = query.get("encoding-type")

    def enc(value: str) -> str:
        return quote(value, safe="/") if encoding is not None else value

    inner = [
        el("Name", bucket), el("Prefix", enc(query.get("prefix", ""))),
        el("KeyMarker", enc(query.get("key-marker", ""))), el("VersionIdMarker", query.get("version-id-marker", "")),
    ]
    if truncated and next_markers is not None:
        inner += [el("NextKeyMarker", enc(next_markers[0])), el("NextVersionIdMarker", next_markers[1] or None)]
    inner.append(el("MaxKeys", max_keys))
    if query.get("delimiter"):
        inner.append(el("Delimiter", enc(query["delimiter"])))
    if encoding is not None:
        inner.append(el("EncodingType", "url"))
    inner.append(el("IsTruncated", "true" if truncated else "false"))
    for v, latest in entries:
        common = (f"{el('Key', enc(v.key))}{el('VersionId', v.vid)}{el('IsLatest', 'true' if latest else 'false')}"
                  f"{el('LastModified', iso(v.last_modified))}")
        if v.delete_marker:
            inner.append(f"<DeleteMarker>{common}{owner()}</DeleteMarker>")
        else:
            inner.append(f"<Version>{common}{el('ETag', chr(34) + v.etag + chr(34))}{el('Size', v.size)}"
                         f"<StorageClass>STANDARD</StorageClass>{owner()}</Version>")
    inner.extend(f"<CommonPrefixes>{el('Prefix', enc(p))}</CommonPrefixes>" for p in prefixes)
    return document("ListVersionsResult", "".join(inner))


def _origin_matches(pattern: str, origin: str) -> bool:
    """``AllowedOrigin``: case-sensitive, ``*`` matches any run of characters."""
    return re.fullmatch(".*".join(re.escape(p) for p in pattern.split("*")), origin, re.S) is not None


def cors_headers(config: bytes, origin: str, method: str, headers: list[str]) -> dict[str, str] | None:
    """The CORS response headers of the first rule matching ``origin``, ``method`` and every header
    in ``headers`` (case-insensitive, ``*`` wildcards), or None (AWS "Troubleshooting CORS" /
    "How Amazon S3 evaluates the CORS configuration": the first matching rule wins)."""
    try:
        root = xmlsafe.parse(config)
    except ProxyS3Error:
        return None
    for rule in root.findall("CORSRule"):
        origins = [(o.text or "").strip() for o in rule.findall("AllowedOrigin")]
        methods = [(m.text or "").strip() for m in rule.findall("AllowedMethod")]
        allowed = [(h.text or "").strip().lower() for h in rule.findall("AllowedHeader")]
        matched = next((o for o in origins if _origin_matches(o, origin)), None)
        if matched is None or method not in methods:
            continue
        if not all(any(_origin_matches(a, h.lower()) for a in allowed) for h in headers):
            continue
        out = {"Access-Control-Allow-Origin": "*" if matched == "*" else origin,
               "Access-Control-Allow-Methods": ", ".join(methods), "Vary": "Origin"}
        if matched != "*":
            out["Access-Control-Allow-Credentials"] = "true"
        if headers:
            out["Access-Control-Allow-Headers"] = ", ".join(headers)
        expose = [(e.text or "").strip() for e in rule.findall("ExposeHeader")]
        if expose:
            out["Access-Control-Expose-Headers"] = ", ".join(expose)
        max_age = (rule.findtext("MaxAgeSeconds") or "").strip()
        if max_age:
            out["Access-Control-Max-Age"] = max_age
        return out
    return None
