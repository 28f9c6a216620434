"""The local keyring backend: conformance plus key loading."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from s3proxy.keys.base import KeyConfigError
from s3proxy.keys.local import BLOB_BYTES, LocalKeyBackend, decode_master_key, read_master_key_file
from s3proxy.keys.settings import LocalKeysSettings

from .conformance import CTX, BackendConformance
from .conftest import b64key

K1 = bytes(range(32))
K2 = bytes(range(100, 132))


class TestLocalConformance(BackendConformance):
    @pytest.fixture
    async def key_backend(self) -> AsyncIterator[LocalKeyBackend]:
        backend = LocalKeyBackend({"k1": K1, "k2": K2}, default_key_id="k1")
        yield backend
        await backend.close()

    @pytest.fixture
    def key_ids(self) -> tuple[str, str]:
        return ("k1", "k2")

    @pytest.fixture
    def unavailable_key_backend(self) -> LocalKeyBackend:
        pytest.skip("a local keyring has no service that could be down")


async def test_blob_layout_and_algorithm() -> None:
    backend = LocalKeyBackend({"default": K1})
    assert backend.default_key_id == "default"
    dk = await backend.generate_data_key("default", CTX)
    assert dk.wrapped.algorithm == "AES256-GCM" and len(dk.wrapped.blob) == BLOB_BYTES == 60


async def test_old_keys_stay_readable_after_rotation() -> None:
    old = LocalKeyBackend({"2023": K1})
    dk = await old.generate_data_key("2023", CTX)
    rotated = LocalKeyBackend({"2023": K1, "2024": K2}, default_key_id="2024")
    assert await rotated.decrypt_data_key(dk.wrapped, CTX) == dk.plaintext


def test_default_key_resolution() -> None:
    assert LocalKeyBackend({"only": K1}).default_key_id == "only"
    assert LocalKeyBackend({"a": K1, "default": K2}).default_key_id == "default"
    with pytest.raises(KeyConfigError, match="default_key_id"):
        LocalKeyBackend({"a": K1, "b": K2})
    with pytest.raises(KeyConfigError, match="not in the keyring"):
        LocalKeyBackend({"a": K1}, default_key_id="zzz")
    with pytest.raises(KeyConfigError):
        LocalKeyBackend({})
    with pytest.raises(KeyConfigError):
        LocalKeyBackend({"short": b"x" * 16})


def test_decode_master_key_errors_never_show_the_key() -> None:
    secret = b64key(b"S" * 31)
    with pytest.raises(KeyConfigError) as info:
        decode_master_key("k", secret)
    assert secret not in str(info.value) and "31 bytes" in str(info.value)
    with pytest.raises(KeyConfigError) as info:
        decode_master_key("k", "not base64 at all!!")
    assert "not base64 at all" not in str(info.value)
    assert decode_master_key("k", b64key(K1)) == K1
    # urlsafe alphabet accepted too
    raw = bytes([0xFB, 0xFF] * 16)
    assert decode_master_key("k", b64key(raw).replace("+", "-").replace("/", "_")) == raw


def test_key_file_formats(tmp_path: Path) -> None:
    lines = tmp_path / "keys.txt"
    lines.write_text(f"# comment\n\nold = {b64key(K1)}\nnew={b64key(K2)}\n")
    assert read_master_key_file(lines) == {"old": b64key(K1), "new": b64key(K2)}
    js = tmp_path / "keys.json"
    js.write_text(json.dumps({"a": b64key(K1)}))
    assert read_master_key_file(js) == {"a": b64key(K1)}
    bad = tmp_path / "bad.txt"
    bad.write_text("just-a-key-without-id\n")
    with pytest.raises(KeyConfigError, match="line 1"):
        read_master_key_file(bad)
    with pytest.raises(KeyConfigError, match="cannot read"):
        read_master_key_file(tmp_path / "missing")


async def test_from_settings_merges_file_and_inline(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"old={b64key(K1)}\n")
    settings = LocalKeysSettings(master_keys={"new": b64key(K2)}, master_key_file=path, default_key_id="new")
    backend = LocalKeyBackend.from_settings(settings)
    assert backend.key_ids == ["new", "old"] and backend.default_key_id == "new"
    dk = await backend.generate_data_key("old", CTX)
    assert await LocalKeyBackend({"old": K1}).decrypt_data_key(dk.wrapped, CTX) == dk.plaintext


async def test_wrap_rejects_wrong_dek_size() -> None:
    backend = LocalKeyBackend({"k": K1})
    with pytest.raises(ValueError):
        await backend.wrap_data_key("k", os.urandom(16), CTX)
