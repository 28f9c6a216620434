"""The PKCS#11 backend against a fresh SoftHSM2 token (AES-GCM, AES-KWP, RSA-OAEP)."""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from s3proxy.keys.base import (
    CONTEXT_MAC_BYTES,
    InvalidWrappedKey,
    KeyAccessDenied,
    KeyConfigError,
    KeyServiceError,
    KeyUnavailable,
    WrappedKey,
    context_mac,
    wrap_aad,
)
from s3proxy.keys.settings import Pkcs11Settings

from .conformance import CTX, BackendConformance
from .conftest import SoftHsm

pytestmark = pytest.mark.pkcs11

pkcs11_backend = pytest.importorskip("s3proxy.keys.pkcs11", reason="python-pkcs11 not installed")
Pkcs11Backend = pkcs11_backend.Pkcs11Backend


def hsm_settings(hsm: SoftHsm, **over: Any) -> Pkcs11Settings:
    base: dict[str, Any] = {
        "module": hsm.module,
        "token_label": hsm.token_label,
        "pin": hsm.pin,
        "key_label": "kek-1",
        "sessions": 3,
    }
    base.update(over)
    return Pkcs11Settings(**base)


class _Pkcs11Conformance(BackendConformance):
    mechanism = "aes-gcm"
    extra: ClassVar[dict[str, Any]] = {}
    labels = ("kek-1", "kek-2")

    @pytest.fixture
    async def key_backend(self, softhsm: SoftHsm) -> AsyncIterator[Pkcs11Backend]:
        backend = Pkcs11Backend(
            hsm_settings(softhsm, mechanism=self.mechanism, key_label=self.labels[0], **self.extra)
        )
        yield backend
        await backend.close()

    @pytest.fixture
    def key_ids(self) -> tuple[str, str]:
        return self.labels

    @pytest.fixture
    async def unavailable_key_backend(self, softhsm: SoftHsm) -> AsyncIterator[Pkcs11Backend]:
        # the token is gone (unplugged HSM, wrong label after a re-init)
        backend = Pkcs11Backend(
            hsm_settings(softhsm, mechanism=self.mechanism, token_label="no-such-token", key_label=self.labels[0],
                         **self.extra)
        )
        yield backend
        await backend.close()


class TestPkcs11AesGcm(_Pkcs11Conformance):
    mechanism = "aes-gcm"


class TestPkcs11AesGcmTokenRandom(_Pkcs11Conformance):
    mechanism = "aes-gcm"
    extra: ClassVar[dict[str, Any]] = {"random_source": "token", "module_thread_safe": False}


class TestPkcs11AesKwp(_Pkcs11Conformance):
    mechanism = "aes-kwp"


class TestPkcs11RsaOaep(_Pkcs11Conformance):
    # SoftHSM2 2.6 implements CKM_RSA_PKCS_OAEP with SHA-1 only (the default
    # is SHA-256: see test_rsa_oaep_sha256_* below).
    mechanism = "rsa-oaep"
    extra: ClassVar[dict[str, Any]] = {"oaep_hash": "sha1"}
    labels = ("rsa-1", "rsa-2")


# -- mechanism details ----------------------------------------------------------


async def test_algorithm_names_and_blob_sizes(softhsm: SoftHsm) -> None:
    cases = [
        ({"mechanism": "aes-gcm"}, "kek-1", "AES256-GCM", 12 + 32 + 16),
        ({"mechanism": "aes-kwp"}, "kek-1", "AES-KWP/0x210A", 40 + CONTEXT_MAC_BYTES),
        ({"mechanism": "rsa-oaep", "oaep_hash": "sha1"}, "rsa-1", "RSA-OAEP-SHA1", 256 + CONTEXT_MAC_BYTES),
        ({"mechanism": "rsa-oaep"}, "rsa-1", "RSA-OAEP-SHA256", 256 + CONTEXT_MAC_BYTES),
    ]
    for over, label, algorithm, size in cases:
        backend = Pkcs11Backend(hsm_settings(softhsm, key_label=label, **over))
        try:
            dk = await backend.generate_data_key(label, CTX)
            assert (dk.wrapped.algorithm, len(dk.wrapped.blob)) == (algorithm, size)
        finally:
            await backend.close()


async def test_kwp_mechanism_id_is_configurable_and_recorded(softhsm: SoftHsm) -> None:
    backend = Pkcs11Backend(hsm_settings(softhsm, mechanism="aes-kwp", kwp_mechanism_id="0x210B"))
    try:
        assert backend.algorithm == "AES-KWP/0x210B"
        # SoftHSM2 does not know the v3.1 id: a clear error, not a silent fallback
        with pytest.raises(KeyServiceError, match="MechanismInvalid"):
            await backend.generate_data_key("kek-1", CTX)
    finally:
        await backend.close()
    with pytest.raises(KeyConfigError, match="0x2109"):
        Pkcs11Backend(hsm_settings(softhsm, mechanism="aes-kwp", kwp_mechanism_id=0x2109))


async def test_kwp_context_mac_is_checked(softhsm: SoftHsm) -> None:
    backend = Pkcs11Backend(hsm_settings(softhsm, mechanism="aes-kwp"))
    try:
        dk = await backend.generate_data_key("kek-1", CTX)
        blob = bytearray(dk.wrapped.blob)
        blob[-1] ^= 1  # only the MAC: the HSM still unwraps, the proxy refuses
        with pytest.raises(InvalidWrappedKey, match="authenticate"):
            await backend.decrypt_data_key(dataclasses.replace(dk.wrapped, blob=bytes(blob)), CTX)
        # a recorded mechanism id outside the KWP family is refused before the HSM sees it
        with pytest.raises(InvalidWrappedKey):
            await backend.decrypt_data_key(dataclasses.replace(dk.wrapped, algorithm="AES-KWP/0x2109"), CTX)
    finally:
        await backend.close()


async def test_decrypt_follows_the_recorded_algorithm(softhsm: SoftHsm) -> None:
    """Objects wrapped before a mechanism change stay readable."""
    gcm = Pkcs11Backend(hsm_settings(softhsm, mechanism="aes-gcm"))
    kwp = Pkcs11Backend(hsm_settings(softhsm, mechanism="aes-kwp"))
    try:
        a = await gcm.generate_data_key("kek-1", CTX)
        b = await kwp.generate_data_key("kek-1", CTX)
        assert await kwp.decrypt_data_key(a.wrapped, CTX) == a.plaintext
        assert await gcm.decrypt_data_key(b.wrapped, CTX) == b.plaintext
    finally:
        await gcm.close()
        await kwp.close()


async def test_rsa_oaep_sha256_wraps_with_sha256(softhsm: SoftHsm) -> None:
    """The default OAEP hash is SHA-256 with MGF1-SHA-256, set explicitly."""
    backend = Pkcs11Backend(hsm_settings(softhsm, mechanism="rsa-oaep", key_label=softhsm.soft_rsa_label))
    try:
        dk = await backend.generate_data_key(softhsm.soft_rsa_label, CTX)
        assert dk.wrapped.algorithm == "RSA-OAEP-SHA256"
        private = serialization.load_pem_private_key(softhsm.soft_rsa_private_pem, password=None)
        sealed = dk.wrapped.blob[:-CONTEXT_MAC_BYTES]
        oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
        assert private.decrypt(sealed, oaep) == dk.plaintext  # type: ignore[union-attr]
        # SoftHSM2 2.6 cannot decrypt OAEP-SHA256: a clear error, not "invalid ciphertext"
        with pytest.raises(KeyServiceError, match="SHA-1") as info:
            await backend.decrypt_data_key(dk.wrapped, CTX)
        assert not isinstance(info.value, InvalidWrappedKey)
    finally:
        await backend.close()


async def test_rsa_oaep_sha1_matches_software_oaep(softhsm: SoftHsm) -> None:
    backend = Pkcs11Backend(
        hsm_settings(softhsm, mechanism="rsa-oaep", oaep_hash="sha1", key_label=softhsm.soft_rsa_label)
    )
    try:
        private = serialization.load_pem_private_key(softhsm.soft_rsa_private_pem, password=None)
        dek = os.urandom(32)
        # a blob made entirely in software decrypts in the token
        public = private.public_key()
        sealed = public.encrypt(  # type: ignore[union-attr]
            dek, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)
        )
        aad = wrap_aad("pkcs11", softhsm.soft_rsa_label, "RSA-OAEP-SHA1", CTX)
        wrapped = WrappedKey("pkcs11", softhsm.soft_rsa_label, "RSA-OAEP-SHA1", sealed + context_mac(dek, sealed, aad))
        assert await backend.decrypt_data_key(wrapped, CTX) == dek
    finally:
        await backend.close()


async def test_encrypt_only_mode(softhsm: SoftHsm) -> None:
    # only the public key is in the token: uploads can be encrypted, nothing read back
    backend = Pkcs11Backend(hsm_settings(softhsm, mechanism="rsa-oaep", key_label=softhsm.pub_only_label))
    try:
        await backend.check()
        dk = await backend.generate_data_key(softhsm.pub_only_label, CTX)
        with pytest.raises(KeyAccessDenied, match="encrypt-only") as info:
            await backend.decrypt_data_key(dk.wrapped, CTX)
        assert info.value.status == 403
    finally:
        await backend.close()
    # and forced by configuration, even with a private key present (no token call is made)
    forced = Pkcs11Backend(
        hsm_settings(softhsm, mechanism="rsa-oaep", oaep_hash="sha1", key_label="rsa-1", encrypt_only=True)
    )
    try:
        dk = await forced.generate_data_key("rsa-1", CTX)
        opened = forced.sessions_opened
        with pytest.raises(KeyAccessDenied, match="encrypt-only"):
            await forced.decrypt_data_key(dk.wrapped, CTX)
        assert forced.sessions_opened == opened
    finally:
        await forced.close()


async def test_refuses_extractable_keys(softhsm: SoftHsm) -> None:
    strict = Pkcs11Backend(hsm_settings(softhsm, key_label="kek-extractable"))
    try:
        with pytest.raises(KeyServiceError, match="extractable"):
            await strict.generate_data_key("kek-extractable", CTX)
    finally:
        await strict.close()
    lax = Pkcs11Backend(hsm_settings(softhsm, key_label="kek-extractable", require_non_extractable=False))
    try:
        dk = await lax.generate_data_key("kek-extractable", CTX)
        assert await lax.decrypt_data_key(dk.wrapped, CTX) == dk.plaintext
    finally:
        await lax.close()


async def test_wrong_pin_is_access_denied(softhsm: SoftHsm) -> None:
    backend = Pkcs11Backend(hsm_settings(softhsm, pin="wrong-pin"))
    try:
        with pytest.raises(KeyAccessDenied, match="PinIncorrect"):
            await backend.generate_data_key("kek-1", CTX)
    finally:
        await backend.close()


async def test_missing_module_is_unavailable(softhsm: SoftHsm) -> None:
    backend = Pkcs11Backend(hsm_settings(softhsm, module="/nonexistent/libpkcs11.so"))
    try:
        with pytest.raises(KeyUnavailable, match="cannot load"):
            await backend.check()
    finally:
        await backend.close()


# -- sessions and threads --------------------------------------------------------


async def test_sessions_are_lazy_pooled_and_bounded(softhsm: SoftHsm) -> None:
    backend = Pkcs11Backend(hsm_settings(softhsm, sessions=2))
    try:
        assert backend.sessions_opened == 0  # nothing opened at construction
        keys = await asyncio.gather(*(backend.generate_data_key("kek-1", {"bucket": str(i)}) for i in range(30)))
        await asyncio.gather(*(backend.decrypt_data_key(k.wrapped, {"bucket": str(i)}) for i, k in enumerate(keys)))
        # one login ("anchor") session plus at most one session per worker thread
        assert 2 <= backend.sessions_opened <= 3
    finally:
        await backend.close()
    with pytest.raises(KeyUnavailable, match="closed"):
        await backend.generate_data_key("kek-1", CTX)


async def test_session_loss_is_recovered(softhsm: SoftHsm) -> None:
    backend = Pkcs11Backend(hsm_settings(softhsm, sessions=1))
    try:
        dk = await backend.generate_data_key("kek-1", CTX)
        for _ in range(2):
            # the HSM drops every session and the login (restart, failover):
            # the pooled handles go stale
            opened = backend.sessions_opened
            for session in list(backend._idle):
                session.handle.close()
            backend._anchor.close()
            assert await backend.decrypt_data_key(dk.wrapped, CTX) == dk.plaintext
            assert backend.sessions_opened == opened + 2  # a new login and a new session
    finally:
        await backend.close()


async def test_calls_are_serialised_unless_module_is_thread_safe(softhsm: SoftHsm) -> None:
    """With C_Initialize(NULL) no two threads may be inside the module at once."""

    class Probe:
        def __init__(self) -> None:
            self.inside = 0
            self.max_inside = 0
            self.lock = threading.Lock()

    for thread_safe, expect_parallel in ((False, False), (True, True)):
        backend = Pkcs11Backend(hsm_settings(softhsm, sessions=4, module_thread_safe=thread_safe))
        probe = Probe()
        barrier = threading.Event()

        def slow_op(session: Any, probe: Probe = probe, barrier: threading.Event = barrier) -> int:
            with probe.lock:
                probe.inside += 1
                probe.max_inside = max(probe.max_inside, probe.inside)
                if probe.inside >= 2:
                    barrier.set()
            barrier.wait(0.2)
            with probe.lock:
                probe.inside -= 1
            return 1

        try:
            await asyncio.gather(*(backend._run(slow_op) for _ in range(4)))
        finally:
            await backend.close()
        assert (probe.max_inside > 1) == expect_parallel


def test_gcm_reads_back_an_iv_the_hsm_overwrote() -> None:
    """CloudHSM writes its own IV into CK_GCM_PARAMS.pIv: the wrap must record that one."""
    hsm_iv = b"\xa5" * 12

    class CloudHsmLikeKey:
        def encrypt(self, data: bytes, mechanism: Any, mechanism_param: Any) -> bytes:
            # python-pkcs11 hands the HSM a pointer to the nonce's buffer
            ctypes.memmove(ctypes.c_char_p(mechanism_param.nonce), hsm_iv, 12)
            return b"c" * 48

    caller_iv = bytes(bytearray(os.urandom(12)))
    used_iv, sealed = pkcs11_backend.gcm_encrypt(CloudHsmLikeKey(), b"k" * 32, caller_iv, b"aad")
    assert used_iv == hsm_iv and sealed == b"c" * 48


FORK_SCRIPT = r"""
import asyncio, os, sys
from s3proxy.keys.pkcs11 import Pkcs11Backend
from s3proxy.keys.settings import Pkcs11Settings

backend = Pkcs11Backend(Pkcs11Settings(module=sys.argv[1], token_label=sys.argv[2], pin=sys.argv[3],
                                       key_label="kek-1", sessions=2))
dk = asyncio.run(backend.generate_data_key("kek-1", {"bucket": "b"}))  # parent: sessions and threads exist
pid = os.fork()
if pid == 0:
    # child: the parent's sessions and threads are gone; everything is reopened lazily
    async def child():
        assert await backend.decrypt_data_key(dk.wrapped, {"bucket": "b"}) == dk.plaintext
        await backend.close()
    try:
        asyncio.run(child())
    except BaseException as exc:
        print("child failed:", repr(exc), file=sys.stderr)
        os._exit(1)
    os._exit(0)
_, status = os.waitpid(pid, 0)
async def parent():
    assert await backend.decrypt_data_key(dk.wrapped, {"bucket": "b"}) == dk.plaintext
    await backend.close()
asyncio.run(parent())
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_sessions_reopen_after_fork(softhsm: SoftHsm) -> None:
    result = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, softhsm.module, softhsm.token_label, softhsm.pin],
        env={**os.environ, "SOFTHSM2_CONF": str(softhsm.conf)},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr


async def test_check_without_default_key_opens_the_token(softhsm: SoftHsm) -> None:
    backend = Pkcs11Backend(hsm_settings(softhsm, key_label=None))
    try:
        await backend.check()
        assert backend.sessions_opened == 2  # login + one session
    finally:
        await backend.close()
    bad = Pkcs11Backend(hsm_settings(softhsm, key_label=None, token_label="absent"))
    try:
        with pytest.raises(KeyUnavailable, match="absent"):
            await bad.check()
    finally:
        await bad.close()
