"""The name key's stored form and derivation (s3proxy.backend.names_keys), the parent binding
of empty segments and the listing tokens (s3proxy.crypto.names)."""

from __future__ import annotations

import base64

import pytest

from s3proxy.aws.errors import S3Error
from s3proxy.backend import names_keys
from s3proxy.backend.client import BackendClient, split_copy_source
from s3proxy.crypto import names
from s3proxy.keys.base import WrappedKey

C = names.NameCipher(bytes(range(64)), "bucket")


def test_sidecar_round_trip_and_damage() -> None:
    w = WrappedKey("local", "k1", "AES256-GCM", b"\x00\x01blob")
    assert names_keys.decode_sidecar(names_keys.encode_sidecar(w)) == w
    for bad in (b"", b"{", b"[]", b'{"v":2}', b'{"v":1,"kdf":"hkdf-sha256","backend":1,"key_id":"a","alg":"b","blob":""}',
                b'{"v":1,"kdf":"hkdf-sha256","backend":"a","key_id":"a","alg":"b","blob":"!!"}'):
        with pytest.raises(S3Error) as e:
            names_keys.decode_sidecar(bad)
        assert e.value.status == 500 and "names-key" in str(e.value)


def test_derived_key_depends_on_bucket() -> None:
    dek = bytes(32)
    a, b = names_keys.derive_name_key(dek, "a"), names_keys.derive_name_key(dek, "b")
    assert len(a) == 64 and a != b


def test_empty_first_segment_is_its_own_parent() -> None:
    top, under = C.encrypt_key("lead"), C.encrypt_key("/lead")
    assert under.split("/")[1] != top  # the same name at another depth looks different
    with pytest.raises(names.UndecryptableName):
        C.decrypt_key("/" + top)  # moved one level down: refused
    assert C.decrypt_key(under) == "/lead"


def test_tokens() -> None:
    t = C.seal_token("a/b/c")
    assert C.open_token(t) == "a/b/c" and "a/b" not in t
    for bad in ("", "~", t[:-2], "x" + t[1:], names.NameCipher(bytes(range(64)), "other").seal_token("a")):
        with pytest.raises(names.UndecryptableName):
            C.open_token(bad)


def test_copy_source_split() -> None:
    src = BackendClient.copy_source("b", "a b/~c?d", "v1")
    assert split_copy_source(src) == ("b", "a b/~c?d", "?versionId=v1")
    assert split_copy_source(BackendClient.copy_source("b", "k")) == ("b", "k", "")


def test_decrypt_with_memo_matches_and_still_authenticates() -> None:
    memo: dict[str, str] = {}
    keys = ["a/b/c", "a/b/d", "a/x", "top", "a/b/", "/lead", "a//b"]
    for k in keys:
        assert C.decrypt_key(C.encrypt_key(k), memo) == k
    moved = C.encrypt_key("a/x").rpartition("/")[0] + "/" + C.encrypt_key("a/b/c").rpartition("/")[2]
    with pytest.raises(names.UndecryptableName):
        C.decrypt_key(moved, memo)  # c's segment under another (memoised) parent


def test_settings() -> None:
    from s3proxy.config import ConfigError, load_settings

    keys = {"keys": {"backend": "local", "local": {"master_keys": {"k1": base64.b64encode(bytes(32)).decode()}}}}
    s = load_settings(None, environ={}, overrides={**keys, "buckets": {"b": {"names": {"encrypt": True, "pad_to": 16}}}})
    assert s.bucket("b").names.encrypt and s.bucket("b").names.pad_to == 16 and s.bucket("b").names.max_level == 10_000
    assert not s.bucket("other").names.encrypt
    for bad in ({"mode": "passthrough", "names": {"encrypt": True}}, {"names": {"pad_to": 300}},
                {"names": {"max_level": 0}}, {"names": {"encrypt": True, "other": 1}}):
        with pytest.raises(ConfigError):
            load_settings(None, environ={}, overrides={**keys, "buckets": {"b": bad}})


def test_multipart_uploads_in_plaintext_order() -> None:
    from s3proxy.http.names_ops import plaintext_order

    def doc(keys: list[str], truncated: bool) -> bytes:
        ups = "".join(f"<Upload><Key>{k}</Key><UploadId>{i}</UploadId></Upload>" for i, k in enumerate(keys))
        return (f"<ListMultipartUploadsResult><IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{ups}"
                "<CommonPrefixes><Prefix>z/</Prefix></CommonPrefixes><CommonPrefixes><Prefix>a/</Prefix>"
                "</CommonPrefixes></ListMultipartUploadsResult>").encode()

    import re

    out = plaintext_order(doc(["b", "a&amp;", "a", "b"], False), url=False)
    assert re.findall(rb"<Key>([^<]*)</Key><UploadId>(\d)", out) == [
        (b"a", b"2"), (b"a&amp;", b"1"), (b"b", b"0"), (b"b", b"3")]  # one key's uploads keep their order
    assert re.findall(rb"<Prefix>([^<]*)</Prefix>", out) == [b"a/", b"z/"]
    assert plaintext_order(doc(["b", "a"], True), url=False) == doc(["b", "a"], True)  # markers follow stored order
    assert plaintext_order(doc(["%C3%BC", "%7A"], False), url=True).index(b"%7A") < plaintext_order(
        doc(["%C3%BC", "%7A"], False), url=True).index(b"%C3%BC")  # "z" < "ü" once decoded


def test_looks_encrypted() -> None:
    from s3proxy.backend.names_tools import looks_encrypted

    assert looks_encrypted(C.encrypt_key("a/b/c")) and looks_encrypted(C.encrypt_key("a/"))
    assert not looks_encrypted("~tilde*(x)") and not looks_encrypted("a/" + C.encrypt_key("b")) and not looks_encrypted("")
