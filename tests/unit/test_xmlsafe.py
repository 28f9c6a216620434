"""s3proxy.aws.xmlsafe: no DTD in any encoding, strict S3 schemas, canonical output, never a 500."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3proxy.aws import xmlsafe
from s3proxy.aws.errors import S3Error
from s3proxy.aws.xmlsafe import (
    CompletePart,
    DeleteRequest,
    complete_parts,
    complete_xml,
    delete_objects,
    delete_xml,
    generic,
    parse,
    serialise,
    tagging,
    tagging_xml,
)
from tests.fuzz.helpers import no_hang

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
EXAMPLES = int(os.environ.get("S3PROXY_FUZZ_EXAMPLES", "300"))
FUZZ = settings(deadline=None, max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])


def refused(fn: Callable[[bytes], object], data: bytes, code: str = "MalformedXML") -> None:
    with pytest.raises(S3Error) as ei:
        fn(data)
    assert (ei.value.code, ei.value.status) == (code, 400)


def shape(el: ET.Element, *, blank: bool = False) -> tuple[Any, ...]:
    """Everything parse() keeps, comparable; ``blank`` treats missing text/tail as ''."""
    text, tail = (el.text or "", el.tail or "") if blank else (el.text, el.tail)
    return (el.tag, dict(el.attrib), text, tail, [shape(c, blank=blank) for c in el])


# --- encodings: the same document in every form expat reads ------------------------------------

ENCODINGS: dict[str, Callable[[str], bytes]] = {
    "utf-8": lambda s: s.encode("utf-8"),
    "utf-8-bom": lambda s: b"\xef\xbb\xbf" + s.encode("utf-8"),
    "utf-16le-bom": lambda s: b"\xff\xfe" + s.encode("utf-16-le"),
    "utf-16be-bom": lambda s: b"\xfe\xff" + s.encode("utf-16-be"),
    "utf-16le": lambda s: s.encode("utf-16-le"),
    "utf-16be": lambda s: s.encode("utf-16-be"),
    "utf-16le-decl": lambda s: ('<?xml version="1.0" encoding="UTF-16"?>' + s).encode("utf-16-le"),
    "utf-16be-decl": lambda s: ('<?xml version="1.0" encoding="UTF-16BE"?>' + s).encode("utf-16-be"),
}

DTD_ATTACKS = {
    "doctype": "<!DOCTYPE Delete>",
    "internal-entity": '<!DOCTYPE Delete [<!ENTITY e "k">]>',
    "billion-laughs": '<!DOCTYPE Delete [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY e "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>',
    "external-entity": '<!DOCTYPE Delete [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
    "external-dtd": '<!DOCTYPE Delete SYSTEM "http://169.254.169.254/latest/meta-data/">',
    "parameter-entity": '<!DOCTYPE Delete [<!ENTITY % p SYSTEM "http://evil/x.dtd"> %p;]>',
    "unparsed-entity": '<!DOCTYPE Delete [<!NOTATION n SYSTEM "x"><!ENTITY e SYSTEM "y" NDATA n>]>',
    "attlist": '<!DOCTYPE Delete [<!ATTLIST Delete a CDATA "x">]>',
}
BODY = "<Delete><Object><Key>k</Key></Object></Delete>"
BODY_WITH_REF = "<Delete><Object><Key>&e;</Key></Object></Delete>"


@pytest.mark.parametrize("enc", ENCODINGS)
def test_plain_document_parses_in_every_encoding(enc: str) -> None:
    # The control for the tests below: each encoding works, so a refusal there is the DTD's.
    assert delete_objects(ENCODINGS[enc](BODY)).objects == [("k", None)]


@pytest.mark.parametrize("enc", ENCODINGS)
@pytest.mark.parametrize("attack", DTD_ATTACKS)
def test_dtd_refused_in_every_encoding(enc: str, attack: str) -> None:
    for body in (BODY, BODY_WITH_REF):
        data = ENCODINGS[enc](DTD_ATTACKS[attack] + body)
        for fn in (parse, delete_objects, generic):
            refused(fn, data)


def test_utf16_defeats_a_byte_search_but_not_parse() -> None:
    # The finding: the old filter looked for these bytes; stdlib ElementTree expands the entity.
    data = ENCODINGS["utf-16le-bom"](DTD_ATTACKS["internal-entity"] + BODY_WITH_REF)
    assert b"<!DOCTYPE" not in data and b"<!ENTITY" not in data
    assert ET.fromstring(data).findtext("Object/Key") == "k"
    refused(delete_objects, data)


def test_declared_encoding_must_match_the_bom() -> None:
    refused(parse, ENCODINGS["utf-16le-bom"]('<?xml version="1.0" encoding="UTF-8"?><a/>'))
    assert parse(ENCODINGS["utf-16le-bom"]('<?xml version="1.0" encoding="UTF-16"?><a/>')).tag == "a"


@pytest.mark.parametrize("codec", ["utf-32", "utf-32-le", "utf-32-be"])
def test_utf32_is_not_read_at_all(codec: str) -> None:
    # expat has no UTF-32: even a clean document is refused, so no DTD gets through that way.
    refused(parse, BODY.encode(codec))
    refused(parse, (DTD_ATTACKS["internal-entity"] + BODY_WITH_REF).encode(codec))


@pytest.mark.parametrize("enc", ["utf-8", "utf-16le-bom", "utf-16be"])
def test_doctype_inside_comment_or_cdata_is_just_text(enc: str) -> None:
    attack = DTD_ATTACKS["internal-entity"]
    assert parse(ENCODINGS[enc](f"<!-- {attack} --><a><!-- {attack} -->x</a>")).text == "x"
    el = parse(ENCODINGS[enc](f"<a><![CDATA[{attack}&e;]]></a>"))
    assert el.text == attack + "&e;"
    out = serialise(el)
    assert b"<!" not in out and parse(out).text == el.text


def test_entity_reference_without_dtd_refused() -> None:
    refused(parse, b"<a>&e;</a>")
    refused(parse, b"<a>&#0;</a>")
    assert parse(b"<a>&amp;&lt;&gt;&quot;&apos;&#65;&#x1F600;</a>").text == "&<>\"'A\U0001f600"


@pytest.mark.parametrize(
    "doc",
    [
        b'<?xml-stylesheet href="x"?><a/>',
        b"<a><?php echo 1; ?></a>",
        b"<a/><?pi?>",
        b'<?xml version="1.0"?><?xml version="1.0"?><a/>',
        b'<a/><?xml version="1.0"?>',
        "<?pi x?><a/>".encode("utf-16"),
    ],
)
def test_processing_instructions_refused(doc: bytes) -> None:
    refused(parse, doc)


def test_xml_declaration_allowed() -> None:
    assert parse(b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n<a/>').tag == "a"
    assert parse('<?xml version="1.0" encoding="ISO-8859-1"?><a>\xe9</a>'.encode("latin-1")).text == "\xe9"
    assert parse(b'<?xml version="1.0" encoding="us-ascii"?><a>x</a>').text == "x"


@pytest.mark.parametrize("encoding", ["utf-7", "UTF7", "cp037", "rot13", "idna", "base64", "x-nonsense", "cp1252"])
def test_only_expat_builtin_encodings(encoding: str) -> None:
    # Python codecs reached through pyexpat's unknown-encoding hook raise ValueError / LookupError
    # / UnicodeError out of Parse(); utf-7 is the classic filter bypass.
    refused(parse, f'<?xml version="1.0" encoding="{encoding}"?><a/>'.encode())
    refused(parse, b'<?xml version="1.0" encoding="utf-7"?>+ADw-!DOCTYPE a+AD4-<a/>')


def test_depth_bound() -> None:
    ok = "<a>" * xmlsafe.MAX_DEPTH + "</a>" * xmlsafe.MAX_DEPTH
    assert parse(ok.encode()).tag == "a"
    deep = xmlsafe.MAX_DEPTH + 1
    refused(parse, ("<a>" * deep + "</a>" * deep).encode())
    refused(parse, b"<a>" * 1_000_000)


def test_element_count_bound() -> None:
    n = xmlsafe.MAX_ELEMENTS
    assert len(parse(b"<a>" + b"<b/>" * (n - 1) + b"</a>")) == n - 1
    refused(parse, b"<a>" + b"<b/>" * n + b"</a>")


@pytest.mark.parametrize(
    "doc",
    [
        b"",
        b" ",
        b"\x00",
        b"\xff\xfe",
        b"\xfe\xff\x00",
        b"not xml",
        b"{}",
        b"<a>",
        b"<a></b>",
        b"<a/><b/>",
        b"<a/>junk",
        b"junk<a/>",
        b"<a x='1' x='2'/>",
        b"<p:a/>",
        b"<a xmlns:p=''><p:b/></a>",
        b"<a>\xff</a>",
        b"<a>\xed\xa0\x80</a>",
        b"<a>\x01</a>",
        b'<?xml version="1.0" encoding="UTF-8"?>',
        b"<!-- only a comment -->",
        b"\x00<\x00a\x00/\x00>\x00\x00",
    ],
)
def test_junk_is_malformed(doc: bytes) -> None:
    refused(parse, doc)


def test_not_bytes_is_malformed() -> None:
    refused(parse, "<a/>")  # type: ignore[arg-type]
    refused(parse, None)  # type: ignore[arg-type]


def test_namespaces_are_ignored_on_tags() -> None:
    for doc in (
        f'<Delete xmlns="{S3_NS}"><Object><Key>k</Key></Object></Delete>',
        f'<s3:Delete xmlns:s3="{S3_NS}"><s3:Object><s3:Key>k</s3:Key></s3:Object></s3:Delete>',
        '<Delete xmlns="urn:other"><Object><Key>k</Key></Object></Delete>',
    ):
        el = parse(doc.encode(), "Delete")
        assert [e.tag for e in el.iter()] == ["Delete", "Object", "Key"]


def test_root_name_is_checked_case_sensitively() -> None:
    assert parse(b"<Delete/>", "Delete").tag == "Delete"
    refused(lambda d: parse(d, "Delete"), b"<delete/>")
    refused(lambda d: parse(d, "Delete"), b"<Tagging/>")


# --- CompleteMultipartUpload ----------------------------------------------------------------------


def cmu(*parts: str) -> bytes:
    return f'<CompleteMultipartUpload xmlns="{S3_NS}">{"".join(parts)}</CompleteMultipartUpload>'.encode()


def part(number: str = "1", etag: str = '"e1"', extra: str = "") -> str:
    return f"<Part><PartNumber>{number}</PartNumber><ETag>{etag}</ETag>{extra}</Part>"


def test_complete_parts_valid() -> None:
    doc = cmu(
        "\n  ",
        part("1", "&quot;a&quot;", "<ChecksumCRC32>AAAAAA==</ChecksumCRC32><ChecksumSHA256>x=</ChecksumSHA256>"),
        "\n  ",
        "<Part>\n <ETag>e2</ETag>\n <PartNumber>10000</PartNumber>\n</Part>\n",
    )
    assert complete_parts(doc) == [
        CompletePart(1, '"a"', {"ChecksumCRC32": "AAAAAA==", "ChecksumSHA256": "x="}),
        CompletePart(10000, "e2", {}),
    ]
    assert complete_parts(ENCODINGS["utf-16le-bom"](doc.decode()))[1].number == 10000


@pytest.mark.parametrize(
    "number", ["0", "10001", "99999", "", " 1", "1 ", "+1", "-1", "1.0", "0x1", "1_0", "²", "٣", "１", "1e3"]
)
def test_complete_parts_bad_part_number(number: str) -> None:
    refused(complete_parts, cmu(part(number)))


@pytest.mark.parametrize(
    "doc",
    [
        cmu(),
        cmu("   "),
        cmu("<Part><PartNumber>1</PartNumber></Part>"),
        cmu("<Part><ETag>e</ETag></Part>"),
        cmu("<Part><PartNumber>1</PartNumber><PartNumber>2</PartNumber><ETag>e</ETag></Part>"),
        cmu("<Part><PartNumber>1</PartNumber><ETag>e</ETag><ETag>f</ETag></Part>"),
        cmu(part(extra="<Size>5</Size>")),
        cmu(part(extra="<ChecksumMD5>x</ChecksumMD5>")),
        cmu(part(extra="<ChecksumCRC32>a</ChecksumCRC32><ChecksumCRC32>b</ChecksumCRC32>")),
        cmu(part(extra="<checksumcrc32>a</checksumcrc32>")),
        cmu("<part><PartNumber>1</PartNumber><ETag>e</ETag></part>"),
        cmu("<Part><partnumber>1</partnumber><ETag>e</ETag></Part>"),
        cmu(part(), "<Unknown/>"),
        cmu(part(), "junk"),
        cmu("<Part>junk<PartNumber>1</PartNumber><ETag>e</ETag></Part>"),
        cmu("<Part><PartNumber>1<b/></PartNumber><ETag>e</ETag></Part>"),
        cmu("<Part><PartNumber>1</PartNumber><ETag>e<b/></ETag></Part>"),
        f"<CompleteMultipartUploadX>{part()}</CompleteMultipartUploadX>".encode(),
        f"<Delete>{part()}</Delete>".encode(),
        cmu("\u00a0", part()),  # U+00A0 is not XML whitespace
    ],
)
def test_complete_parts_invalid(doc: bytes) -> None:
    refused(complete_parts, doc)


@pytest.mark.parametrize("include", [True, False])
def test_complete_xml_round_trip(include: bool) -> None:
    parts = [CompletePart(1, '"a&b"', {"ChecksumCRC64NVME": "q", "ChecksumCRC32C": "z"}), CompletePart(2, "e", {})]
    out = complete_xml(parts, include_checksums=include)
    assert out.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    assert f'<CompleteMultipartUpload xmlns="{S3_NS}">'.encode() in out
    back = complete_parts(out)
    assert back == (parts if include else [CompletePart(p.number, p.etag, {}) for p in parts])
    if include:  # canonical order of checksum elements
        assert out.index(b"ChecksumCRC32C") < out.index(b"ChecksumCRC64NVME")


# --- DeleteObjects --------------------------------------------------------------------------------


def dele(*items: str) -> bytes:
    return f'<Delete xmlns="{S3_NS}">{"".join(items)}</Delete>'.encode()


def obj(key: str, version: str | None = None) -> str:
    v = "" if version is None else f"<VersionId>{version}</VersionId>"
    return f"<Object><Key>{key}</Key>{v}</Object>"


def test_delete_objects_valid() -> None:
    req = delete_objects(dele("<Quiet>true</Quiet>", obj("a&amp;b"), "\n", obj("v", "123"), obj("e", "")))
    assert req == DeleteRequest(True, [("a&b", None), ("v", "123"), ("e", "")])
    assert delete_objects(dele(obj("k"))).quiet is False
    assert delete_objects(dele(obj("k"), "<Quiet>false</Quiet>")).quiet is False
    assert delete_objects(dele(obj("k"), "<Quiet> TRUE\n</Quiet>")).quiet is True


def test_delete_keys_are_exact_text() -> None:
    keys = ["  lead and trail  ", "tab\there", "nl\nhere", "cr\rhere", "a<b>&c\"d'e", "]]>", "\U0001f600/é/\u00a0"]
    doc = dele(
        *(obj(k.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")) for k in keys)
    )
    req = delete_objects(doc)
    assert [k for k, _ in req.objects] == keys
    assert delete_objects(delete_xml(req)) == req
    assert delete_objects(dele(obj("<![CDATA[ x&y ]]>"))).objects == [(" x&y ", None)]


def test_delete_object_count_bounds() -> None:
    assert len(delete_objects(dele(*[obj(f"k{i}") for i in range(1000)])).objects) == 1000
    refused(delete_objects, dele(*[obj(f"k{i}") for i in range(1001)]))
    refused(delete_objects, dele())
    refused(delete_objects, dele("<Quiet>true</Quiet>"))


@pytest.mark.parametrize(
    "doc",
    [
        dele("<Object></Object>"),
        dele("<Object><VersionId>1</VersionId></Object>"),
        dele(obj("")),
        dele("<Object><Key>a</Key><Key>b</Key></Object>"),
        dele("<Object><Key>a</Key><VersionId>1</VersionId><VersionId>2</VersionId></Object>"),
        dele("<Object><Key>a</Key><ETag>x</ETag></Object>"),
        dele("<Object><key>a</key></Object>"),
        dele("<Object><Key>a<b/></Key></Object>"),
        dele(obj("a"), "<Quiet>yes</Quiet>"),
        dele(obj("a"), "<Quiet>true</Quiet><Quiet>true</Quiet>"),
        dele(obj("a"), "<Other/>"),
        dele(obj("a"), "text"),
        f"<Tagging>{obj('a')}</Tagging>".encode(),
    ],
)
def test_delete_objects_invalid(doc: bytes) -> None:
    refused(delete_objects, doc)


def test_delete_xml_shape() -> None:
    out = delete_xml(DeleteRequest(True, [("a", None), ("b", "v1")]))
    assert out == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b"<Object><Key>a</Key></Object><Object><Key>b</Key><VersionId>v1</VersionId></Object>"
        b"<Quiet>true</Quiet></Delete>"
    )
    assert b"Quiet" not in delete_xml(DeleteRequest(False, [("a", None)]))


# --- Tagging --------------------------------------------------------------------------------------


def tags_doc(*pairs: tuple[str, str]) -> bytes:
    inner = "".join(f"<Tag><Key>{k}</Key><Value>{v}</Value></Tag>" for k, v in pairs)
    return f'<Tagging xmlns="{S3_NS}"><TagSet>{inner}</TagSet></Tagging>'.encode()


def test_tagging_valid() -> None:
    assert tagging(tags_doc(("a", "1"), ("b &amp; c", ""), (" sp ", " v "))) == [
        ("a", "1"),
        ("b & c", ""),
        (" sp ", " v "),
    ]
    assert tagging(tags_doc()) == []
    assert tagging(b"<Tagging><TagSet/></Tagging>") == []
    assert tagging(b"<Tagging><TagSet><Tag><Value>v</Value><Key>k</Key></Tag></TagSet></Tagging>") == [("k", "v")]


def test_tagging_limits() -> None:
    assert len(tagging(tags_doc(*[(f"k{i}", "v") for i in range(50)]))) == 50
    refused(tagging, tags_doc(*[(f"k{i}", "v") for i in range(51)]), "InvalidTag")
    assert tagging(tags_doc(("é" * 128, "ü" * 256))) == [("é" * 128, "ü" * 256)]  # characters, not bytes
    refused(tagging, tags_doc(("k" * 129, "v")), "InvalidTag")
    refused(tagging, tags_doc(("k", "v" * 257)), "InvalidTag")
    refused(tagging, tags_doc(("k", "1"), ("k", "2")), "InvalidTag")
    refused(tagging, tags_doc(("", "v")), "InvalidTag")


@pytest.mark.parametrize(
    "doc",
    [
        b"<Tagging/>",
        b"<Tagging><TagSet/><TagSet/></Tagging>",
        b"<Tagging><TagSet><Tag><Key>k</Key></Tag></TagSet></Tagging>",
        b"<Tagging><TagSet><Tag><Value>v</Value></Tag></TagSet></Tagging>",
        b"<Tagging><TagSet><Tag><Key>k</Key><Value>v</Value><Value>w</Value></Tag></TagSet></Tagging>",
        b"<Tagging><TagSet><Tag><Key>k</Key><Value>v</Value><Extra/></Tag></TagSet></Tagging>",
        b"<Tagging><TagSet><tag><Key>k</Key><Value>v</Value></tag></TagSet></Tagging>",
        b"<Tagging><TagSet><Key>k</Key></TagSet></Tagging>",
        b"<Tagging><Tag><Key>k</Key><Value>v</Value></Tag></Tagging>",
        b"<tagging><TagSet/></tagging>",
    ],
)
def test_tagging_invalid(doc: bytes) -> None:
    refused(tagging, doc)


def test_tagging_xml() -> None:
    tags = [("a&b", "<v>"), ("cr\r", " "), ("\U0001f600", "")]
    assert tagging(tagging_xml(tags)) == tags
    for bad in ([("k", "\x00")], [("\ud800", "v")], [("k", "1"), ("k", "2")], [(f"k{i}", "") for i in range(51)]):
        refused(lambda _, bad=bad: tagging_xml(bad), b"", "InvalidTag")  # type: ignore[misc]


# --- generic and serialise ------------------------------------------------------------------------

ACL = f"""<?xml version="1.0" encoding="UTF-8"?>
<AccessControlPolicy xmlns="{S3_NS}">
  <Owner><ID>owner-id</ID><DisplayName>me</DisplayName></Owner>
  <AccessControlList>
    <Grant>
      <Grantee xmlns:xsi="{XSI}" xsi:type="CanonicalUser"><ID>owner-id</ID></Grantee>
      <Permission>FULL_CONTROL</Permission>
    </Grant>
    <Grant>
      <Grantee xmlns:x="{XSI}" x:type="Group"><URI>http://acs.amazonaws.com/groups/global/AllUsers</URI></Grantee>
      <Permission>READ</Permission>
    </Grant>
  </AccessControlList>
</AccessControlPolicy>"""

LIFECYCLE = f"""<LifecycleConfiguration xmlns="{S3_NS}"><Rule><ID>r &amp; 1</ID>
<Filter><And><Prefix>logs/</Prefix><Tag><Key>k</Key><Value>v</Value></Tag></And></Filter>
<Status>Enabled</Status><Expiration><Days>30</Days></Expiration></Rule></LifecycleConfiguration>"""


def test_generic_acl_keeps_xsi_type() -> None:
    out = generic(ENCODINGS["utf-16le-bom"](ACL.replace("UTF-8", "UTF-16")), "AccessControlPolicy")
    assert out.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<AccessControlPolicy xmlns="' + S3_NS.encode())
    grantees = list(parse(out).iter("Grantee"))
    assert [g.attrib for g in grantees] == [{f"{{{XSI}}}type": "CanonicalUser"}, {f"{{{XSI}}}type": "Group"}]
    assert b'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"' in out and b'xsi:type="CanonicalUser"' in out
    # a namespace-aware reader (ElementTree) sees the same thing
    root = ET.fromstring(out)
    assert root.find(f".//{{{S3_NS}}}Grantee").get(f"{{{XSI}}}type") == "CanonicalUser"  # type: ignore[union-attr]
    refused(lambda d: generic(d, "BucketLoggingStatus"), ACL.encode())


@pytest.mark.parametrize(
    "doc", [ACL, LIFECYCLE, BODY, "<a b='1' c=\"&#10;&#9;&#13;&quot;'\">t<b/>tail&#13;<c>x</c> </a>"]
)
def test_round_trip(doc: str) -> None:
    el = parse(doc.encode())
    out = serialise(el)
    assert shape(parse(out)) == shape(el)
    assert serialise(parse(out)) == out  # canonical: a fixed point
    assert generic(doc.encode()) == out


def test_serialise_namespaces_and_escaping() -> None:
    el = ET.Element("{urn:x}Root", {"{urn:y}a": "1", "{http://www.w3.org/XML/1998/namespace}lang": "en", "p": 'q"<'})
    el.text = "a\r\nb]]>"
    out = serialise(el)
    assert out == (
        b'<?xml version="1.0" encoding="UTF-8"?>\n<Root xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'
        b' xmlns:ns0="urn:y" ns0:a="1" xml:lang="en" p="q&quot;&lt;">a&#13;\nb]]&gt;</Root>'
    )
    assert shape(parse(out)) == (
        "Root",
        {"{urn:y}a": "1", "{http://www.w3.org/XML/1998/namespace}lang": "en", "p": 'q"<'},
        "a\r\nb]]>",
        None,
        [],
    )


@pytest.mark.parametrize("text", ["\x00", "\x0b", "\ud800", "\ufffe"])
def test_serialise_refuses_unrepresentable_characters(text: str) -> None:
    el = ET.Element("a")
    el.text = text
    with pytest.raises(S3Error) as ei:
        serialise(el)
    assert ei.value.code == "InvalidArgument"


# --- properties -----------------------------------------------------------------------------------


READERS: list[Callable[[bytes], object]] = [parse, complete_parts, delete_objects, tagging, generic]


def only_s3_errors(data: bytes) -> None:
    for reader in READERS:
        with no_hang():
            try:
                out = reader(data)
            except S3Error as e:
                assert (e.code, e.status) in {("MalformedXML", 400), ("InvalidTag", 400)}, e
                continue
        if isinstance(out, bytes):  # generic(): our own XML, never a DTD, PI or comment
            assert out.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<')
            assert b"<!" not in out and out.count(b"<?") == 1


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    only_s3_errors(data)


VALID = [
    cmu(part("1", '"e"', "<ChecksumCRC32>AA==</ChecksumCRC32>"), part("2")).decode(),
    dele("<Quiet>true</Quiet>", obj("a&amp;b"), obj("c", "v")).decode(),
    tags_doc(("k", "v"), ("k2", "")).decode(),
    ACL,
    LIFECYCLE,
]
SNIPPETS = [
    "<!DOCTYPE a>",
    '<!ENTITY e "x">',
    "&e;",
    "&amp;",
    "<?pi?>",
    "<!--",
    "-->",
    "<![CDATA[",
    "]]>",
    "<",
    ">",
    "</",
    "\x00",
    "\ud800",
    "é",
    "\U0001f600",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 8)))
        text = text[:i] + draw(st.sampled_from(SNIPPETS) | st.text(max_size=4)) + text[j:]
    enc = draw(st.sampled_from(sorted(ENCODINGS)))
    data = ENCODINGS[enc](text.encode("utf-8", "surrogatepass").decode("utf-8", "replace"))
    for _ in range(draw(st.integers(0, 3))):  # and a few byte-level flips
        if data:
            k = draw(st.integers(0, len(data) - 1))
            data = data[:k] + bytes([draw(st.integers(0, 255))]) + data[k + 1 :]
    return data


@FUZZ
@given(mutated())
def test_fuzz_mutated_documents(data: bytes) -> None:
    only_s3_errors(data)


# Every character XML 1.0 can carry (tab, LF, CR, and U+0020 up, less surrogates, U+FFFE, U+FFFF).
xml_char = st.characters(min_codepoint=0x20, blacklist_categories=["Cs"], blacklist_characters="\ufffe\uffff")
xml_text = st.text(xml_char | st.sampled_from("\t\n\r"), max_size=12)
names = st.sampled_from(["A", "B", "Key", "Value", "x-y", "n.1", "_z", "É"])
attr_names = st.sampled_from(["a", "b", "{urn:q}c", f"{{{XSI}}}type", "{http://www.w3.org/XML/1998/namespace}lang"])


@st.composite
def trees(draw: st.DrawFn, depth: int = 0) -> ET.Element:
    el = ET.Element(draw(names), draw(st.dictionaries(attr_names, xml_text, max_size=3)))
    el.text = draw(xml_text) or None
    if depth < 4:
        for child in draw(st.lists(trees(depth + 1), max_size=3)):
            child.tail = draw(xml_text) or None
            el.append(child)
    return el


@FUZZ
@given(trees())
def test_property_serialise_round_trip(tree: ET.Element) -> None:
    out = serialise(tree)
    assert shape(parse(out), blank=True) == shape(tree, blank=True)
    assert serialise(parse(out)) == out


@FUZZ
@given(st.booleans(), st.lists(st.tuples(xml_text.filter(bool), st.none() | xml_text), min_size=1, max_size=20))
def test_property_delete_round_trip(quiet: bool, objects: list[tuple[str, str | None]]) -> None:
    req = DeleteRequest(quiet, objects)
    assert delete_objects(delete_xml(req)) == req


@FUZZ
@given(st.dictionaries(xml_text.filter(bool), xml_text, max_size=50))
def test_property_tagging_round_trip(tags: dict[str, str]) -> None:
    assert tagging(tagging_xml(list(tags.items()))) == list(tags.items())


@FUZZ
@given(
    st.lists(
        st.builds(
            CompletePart,
            st.integers(1, 10_000),
            xml_text,
            st.dictionaries(st.sampled_from(xmlsafe.CHECKSUM_ELEMENTS), xml_text),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_property_complete_round_trip(parts: list[CompletePart]) -> None:
    assert complete_parts(complete_xml(parts, include_checksums=True)) == parts


def test_text_decodes_the_quote_forms_go_writes() -> None:
    """rclone serve s3 and MinIO (Go's XML writer) send an ETag's quotes as &#34;."""
    assert xmlsafe.text("&#34;abc-2&#34;") == '"abc-2"'
    assert xmlsafe.text("&quot;x&quot; &amp; &lt;&gt; &apos;&#39;") == "\"x\" & <> ''"
