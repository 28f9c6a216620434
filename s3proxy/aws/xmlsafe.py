"""Safe reading and canonical re-writing of the XML bodies clients send.

Why this module exists: s3proxy used to refuse DTDs with a byte search
(``b"<!DOCTYPE" in body``) and then forward the client's own bytes.  A body
encoded as UTF-16 passes that search, and the backend's parser expands the
entities (billion laughs, external entities).  Here every request body is
parsed once, by expat, with handlers that refuse any DTD, entity declaration,
external entity reference or processing instruction *as expat sees them* —
after decoding, so the encoding no longer matters — and what goes on to the
backend is XML s3proxy wrote itself (``serialise``), never the client's bytes.

Other rules: only expat's built-in encodings are accepted (a Python codec
reached through pyexpat's unknown-encoding hook can raise ValueError,
LookupError or UnicodeError out of ``Parse``); nesting and element count are
bounded; tags lose their namespace (clients may or may not send the S3 one);
and every failure, whatever the input bytes, is ``S3Error("MalformedXML")``
(or ``InvalidTag`` for tag-set rules).  The typed readers check the S3 schema
strictly: unknown or repeated elements and stray text are MalformedXML.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, NoReturn
from xml.etree.ElementTree import Element
from xml.parsers import expat
from xml.sax.saxutils import unescape

from s3proxy.aws.errors import S3Error
from s3proxy.aws.numbers import parse_uint

S3_NS: Final = "http://s3.amazonaws.com/doc/2006-03-01/"
MAX_DEPTH: Final = 32
MAX_ELEMENTS: Final = 100_000
MAX_DELETE_OBJECTS: Final = 1000
MAX_PART_NUMBER: Final = 10_000
MAX_TAGS: Final = 50
MAX_TAG_KEY: Final = 128
MAX_TAG_VALUE: Final = 256
CHECKSUM_ELEMENTS: Final = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumSHA1", "ChecksumSHA256", "ChecksumCRC64NVME")

_MALFORMED: Final = "The XML you provided was not well-formed or did not validate against our published schema."
_ENCODINGS: Final = frozenset({"utf-8", "utf-16", "utf-16le", "utf-16be", "iso-8859-1", "us-ascii"})  # expat's own
_WS: Final = " \t\r\n"  # XML whitespace; str.strip() would also eat U+00A0, U+2003, ...
_KNOWN_PREFIXES: Final = {
    "http://www.w3.org/XML/1998/namespace": "xml",
    "http://www.w3.org/2001/XMLSchema-instance": "xsi",
}
_NOT_XML_CHAR: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def malformed() -> S3Error:
    return S3Error("MalformedXML", _MALFORMED, 400)


def _invalid_tag(message: str) -> S3Error:
    return S3Error("InvalidTag", message, 400)


class _Refused(Exception):
    """Raised inside an expat handler; parse() turns it into MalformedXML."""


def _refuse(*_: object) -> NoReturn:
    raise _Refused


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1]


class _Builder:
    """Element tree from expat events: local tag names, ``{uri}name`` attributes, bounded."""

    def __init__(self) -> None:
        self.stack: list[Element] = []
        self.root: Element | None = None
        self.count = 0
        self.text: list[str] = []
        self.last: Element | None = None  # where pending text goes: its .tail if self.tail else its .text
        self.tail = False

    def _flush(self) -> None:
        if self.text and self.last is not None:
            s = "".join(self.text)
            if self.tail:
                self.last.tail = s
            else:
                self.last.text = s
        self.text = []

    def start(self, name: str, attrs: dict[str, str]) -> None:
        self.count += 1
        if self.count > MAX_ELEMENTS or len(self.stack) >= MAX_DEPTH:
            raise _Refused
        self._flush()
        el = Element(_local(name), {("{" + k if "}" in k else k): v for k, v in attrs.items()})
        if self.stack:
            self.stack[-1].append(el)
        else:
            self.root = el
        self.stack.append(el)
        self.last, self.tail = el, False

    def end(self, _name: str) -> None:
        self._flush()
        el = self.stack.pop()
        self.last, self.tail = (el if self.stack else None), True

    def data(self, s: str) -> None:
        self.text.append(s)


def _xml_decl(_version: str, encoding: str | None, _standalone: int) -> None:
    if encoding is not None and encoding.lower() not in _ENCODINGS:
        raise _Refused


def _parse(data: bytes) -> Element:
    b = _Builder()
    p = expat.ParserCreate(namespace_separator="}")
    p.buffer_text = True
    p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    p.XmlDeclHandler = _xml_decl
    p.StartDoctypeDeclHandler = _refuse
    p.EntityDeclHandler = _refuse
    p.UnparsedEntityDeclHandler = _refuse
    p.NotationDeclHandler = _refuse
    p.ElementDeclHandler = _refuse
    p.AttlistDeclHandler = _refuse
    p.ExternalEntityRefHandler = _refuse
    p.SkippedEntityHandler = _refuse
    p.ProcessingInstructionHandler = _refuse
    p.StartElementHandler = b.start
    p.EndElementHandler = b.end
    p.CharacterDataHandler = b.data
    p.Parse(data, True)
    if b.root is None or b.stack:
        raise _Refused
    return b.root


def parse(data: bytes, root: str | None = None) -> Element:
    """The document's root element (local tag names); MalformedXML for anything unsafe or broken."""
    try:
        el = _parse(bytes(data))
    except Exception:  # ExpatError, _Refused, and whatever pyexpat lets escape: all the client's fault
        raise malformed() from None
    if root is not None and el.tag != root:
        raise malformed()
    return el


# --- writing -----------------------------------------------------------------------------------


_PREDEFINED = {"&quot;": '"', "&#34;": '"', "&apos;": "'", "&#39;": "'"}


def text(raw: str) -> str:
    """The text of an element's raw content: XML's five entities and the numeric quote forms.

    ``xml.sax.saxutils.unescape`` decodes only ``&amp; &lt; &gt;``; Go's XML writer (rclone serve
    s3, MinIO) puts an ETag's quotes in as ``&#34;``.
    """
    return unescape(raw, _PREDEFINED)


def _esc_text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")


def _esc_attr(s: str) -> str:
    return _esc_text(s).replace('"', "&quot;").replace("\t", "&#9;").replace("\n", "&#10;")


def serialise(el: Element) -> bytes:
    """Canonical UTF-8 XML for ``el``, every element in the S3 namespace.

    Namespaced attributes (``{uri}name``, e.g. ``xsi:type``) keep their
    namespace, declared on the root.  Raises S3Error InvalidArgument if a
    string holds a character XML 1.0 cannot carry (never for parse() output).
    """
    uris = dict.fromkeys(n[1:].rsplit("}", 1)[0] for e in el.iter() for n in e.attrib if n.startswith("{"))
    uris.pop("", None)
    prefixes = {u: _KNOWN_PREFIXES[u] for u in uris if u in _KNOWN_PREFIXES}
    prefixes |= {u: f"ns{i}" for i, u in enumerate(u for u in uris if u not in _KNOWN_PREFIXES)}
    decls = [f' xmlns="{_esc_attr(S3_NS)}"']
    decls += [f' xmlns:{p}="{_esc_attr(u)}"' for u, p in prefixes.items() if p != "xml"]
    out: list[str] = ['<?xml version="1.0" encoding="UTF-8"?>\n']

    def write(e: Element, extra: list[str]) -> None:
        tag = _local(e.tag)
        out.append("<" + tag)
        out.extend(extra)
        for name, value in e.attrib.items():
            if name.startswith("{"):
                uri, local = name[1:].rsplit("}", 1)
                name = f"{prefixes[uri]}:{local}" if uri else local
            elif name == "xmlns" or name.startswith("xmlns:"):
                continue
            out.append(f' {name}="{_esc_attr(value)}"')
        out.append(">")
        if e.text:
            out.append(_esc_text(e.text))
        for child in e:
            write(child, [])
            if child.tail:
                out.append(_esc_text(child.tail))
        out.append(f"</{tag}>")

    write(el, decls)
    doc = "".join(out)
    if _NOT_XML_CHAR.search(doc):
        raise S3Error("InvalidArgument", "The request contains characters that cannot be represented in XML.", 400)
    return doc.encode("utf-8")


def _sub(parent: Element, tag: str, text: str) -> Element:
    el = Element(tag)
    el.text = text
    parent.append(el)
    return el


# --- schema helpers -------------------------------------------------------------------------------


def _kids(el: Element, allowed: Iterable[str]) -> dict[str, list[Element]]:
    """Children of a container element by tag; stray text or an unknown child is MalformedXML."""
    names = set(allowed)
    out: dict[str, list[Element]] = {n: [] for n in names}
    if (el.text or "").strip(_WS):
        raise malformed()
    for child in el:
        if child.tag not in names or (child.tail or "").strip(_WS):
            raise malformed()
        out[child.tag].append(child)
    return out


def _leaf(el: Element) -> str:
    if len(el):
        raise malformed()
    return el.text or ""


def _one(kids: dict[str, list[Element]], tag: str) -> str:
    if len(kids[tag]) != 1:
        raise malformed()
    return _leaf(kids[tag][0])


def _opt(kids: dict[str, list[Element]], tag: str) -> str | None:
    if len(kids[tag]) > 1:
        raise malformed()
    return _leaf(kids[tag][0]) if kids[tag] else None


# --- CompleteMultipartUpload ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompletePart:
    number: int
    etag: str
    checksums: dict[str, str] = field(default_factory=dict)  # element name (e.g. "ChecksumCRC32") -> text


def complete_parts(data: bytes) -> list[CompletePart]:
    """The parts of a CompleteMultipartUpload body, in document order (at least one)."""
    root = _kids(parse(data, "CompleteMultipartUpload"), ["Part"])
    if not root["Part"]:
        raise malformed()
    parts: list[CompletePart] = []
    for part in root["Part"]:
        kids = _kids(part, ["PartNumber", "ETag", *CHECKSUM_ELEMENTS])
        number = parse_uint(_one(kids, "PartNumber"), max_digits=5)
        if number is None or not 1 <= number <= MAX_PART_NUMBER:
            raise malformed()
        sums = {name: v for name in CHECKSUM_ELEMENTS if (v := _opt(kids, name)) is not None}
        parts.append(CompletePart(number, _one(kids, "ETag"), sums))
    return parts


def complete_xml(parts: Iterable[CompletePart], *, include_checksums: bool) -> bytes:
    root = Element("CompleteMultipartUpload")
    for p in parts:
        el = Element("Part")
        root.append(el)
        _sub(el, "PartNumber", str(p.number))
        _sub(el, "ETag", p.etag)
        if include_checksums:
            for name in CHECKSUM_ELEMENTS:
                if name in p.checksums:
                    _sub(el, name, p.checksums[name])
    return serialise(root)


# --- DeleteObjects --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    quiet: bool
    objects: list[tuple[str, str | None]]  # (key, version id or None); key is exact text, never empty


def delete_objects(data: bytes) -> DeleteRequest:
    root = _kids(parse(data, "Delete"), ["Quiet", "Object"])
    quiet = (_opt(root, "Quiet") or "false").strip(_WS).lower()
    if quiet not in ("true", "false") or not 1 <= len(root["Object"]) <= MAX_DELETE_OBJECTS:
        raise malformed()
    objects: list[tuple[str, str | None]] = []
    for obj in root["Object"]:
        kids = _kids(obj, ["Key", "VersionId"])
        key = _one(kids, "Key")
        if not key:
            raise malformed()
        objects.append((key, _opt(kids, "VersionId")))
    return DeleteRequest(quiet == "true", objects)


def delete_xml(req: DeleteRequest) -> bytes:
    root = Element("Delete")
    for key, version in req.objects:
        obj = Element("Object")
        root.append(obj)
        _sub(obj, "Key", key)
        if version is not None:
            _sub(obj, "VersionId", version)
    if req.quiet:
        _sub(root, "Quiet", "true")
    return serialise(root)


# --- Tagging --------------------------------------------------------------------------------------


def check_tags(tags: list[tuple[str, str]]) -> None:
    """S3's InvalidTag rules: count, key/value length, duplicate keys, XML-representable text."""
    if len(tags) > MAX_TAGS:
        raise _invalid_tag(f"Object tags cannot be greater than {MAX_TAGS}")
    seen: set[str] = set()
    for k, v in tags:
        if not 1 <= len(k) <= MAX_TAG_KEY or _NOT_XML_CHAR.search(k):
            raise _invalid_tag(f"The TagKey you have provided is invalid (1 to {MAX_TAG_KEY} characters)")
        if len(v) > MAX_TAG_VALUE or _NOT_XML_CHAR.search(v):
            raise _invalid_tag(f"The TagValue you have provided is invalid (at most {MAX_TAG_VALUE} characters)")
        if k in seen:
            raise _invalid_tag("Cannot provide multiple Tags with the same key")
        seen.add(k)


def tagging(data: bytes) -> list[tuple[str, str]]:
    """The (key, value) pairs of a Tagging body, in document order (possibly none)."""
    root = _kids(parse(data, "Tagging"), ["TagSet"])
    if len(root["TagSet"]) != 1:
        raise malformed()
    tags: list[tuple[str, str]] = []
    for tag in _kids(root["TagSet"][0], ["Tag"])["Tag"]:
        kids = _kids(tag, ["Key", "Value"])
        tags.append((_one(kids, "Key"), _one(kids, "Value")))
    check_tags(tags)
    return tags


def tagging_xml(tags: Iterable[tuple[str, str]]) -> bytes:
    """A Tagging document; InvalidTag if ``tags`` break S3's rules (e.g. from an x-amz-tagging header)."""
    tags = list(tags)
    check_tags(tags)
    root = Element("Tagging")
    tagset = Element("TagSet")
    root.append(tagset)
    for k, v in tags:
        tag = Element("Tag")
        tagset.append(tag)
        _sub(tag, "Key", k)
        _sub(tag, "Value", v)
    return serialise(root)


# --- anything else --------------------------------------------------------------------------------


def generic(data: bytes, root: str | None = None) -> bytes:
    """Any other XML body (ACL, bucket configuration): parsed safely, re-written by s3proxy."""
    return serialise(parse(data, root))


def parse_backend(data: bytes) -> Element:
    """A backend's XML answer (a listing, ListParts): unreadable is the backend's fault, a 503."""
    try:
        return parse(data)
    except S3Error:
        raise S3Error("ServiceUnavailable", "the storage backend sent an unreadable listing", 503) from None


def children(el: Element, name: str) -> list[Element]:
    """The children of ``el`` named ``name``, whatever their namespace."""
    return [c for c in el if c.tag.rsplit("}", 1)[-1] == name]


def child_text(el: Element, name: str) -> str | None:
    """The text of the first child named ``name`` ("" when empty), None when there is none."""
    for c in children(el, name):
        return c.text or ""
    return None
