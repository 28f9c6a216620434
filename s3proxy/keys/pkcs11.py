"""``pkcs11``: an HSM (SoftHSM2 in tests; CloudHSM, Luna, YubiHSM in production).

The token holds the key-encryption keys, found by label (the key id); it only
ever wraps and unwraps 32-byte DEKs.  Wrap mechanisms (``keys.pkcs11.mechanism``):

``aes-gcm`` -> algorithm ``AES256-GCM``
    ``C_Encrypt(CKM_AES_GCM)`` under a non-extractable AES key, 12-byte IV
    (CSPRNG or ``C_GenerateRandom``), 128-bit tag,
    ``AAD = wrap_aad("pkcs11", label, alg, context)``.  The IV is read back
    from the mechanism parameters after the call, because CloudHSM ignores the
    caller's IV and writes its own there.  Blob: ``IV (12) || ct (32) || tag (16)``.

``aes-kwp`` -> algorithm ``AES-KWP/0x210A`` (the configured mechanism id)
    ``C_WrapKey(CKM_AES_KEY_WRAP_PAD)`` (RFC 5649) of the DEK imported as a
    session object; ``C_UnwrapKey`` back into a session object whose value is
    read and which is destroyed at once.  KWP carries no AAD, so the context
    is bound by ``context_mac`` (HMAC-SHA256 under HKDF(DEK)) appended to the
    blob: ``KWP(DEK) (40) || mac (32)``.  The HSM would unwrap the DEK for any
    context; the proxy refuses it unless the MAC matches.

``rsa-oaep`` -> algorithm ``RSA-OAEP-SHA256`` (or ``-SHA1``)
    RSA-OAEP with the hash and MGF1 hash set explicitly (python-pkcs11
    defaults to SHA-1).  Wrapping uses the token's *public* key (read once
    from the token, encryption done with ``cryptography``), so a proxy holding
    only the public key can encrypt uploads (write-only mode) and never read
    them.  Unwrapping is ``C_Decrypt(CKM_RSA_PKCS_OAEP)`` with the private key
    of the same label.  Blob: ``RSA ct (modulus size) || mac (32)``; the MAC
    binds the context as for KWP.  SoftHSM2 2.6 implements OAEP with SHA-1
    only; CloudHSM, Luna and YubiHSM implement SHA-256.

Threads and sessions: PKCS#11 calls block, so they run in a bounded
``ThreadPoolExecutor`` (``sessions`` threads).  Each call borrows an idle
session from a pool; one extra "anchor" session holds the login (PKCS#11
login state is per application, shared by all its sessions).  Everything is
opened lazily on first use and rebuilt after ``fork()``.  python-pkcs11 calls
``C_Initialize(NULL)``, which by the spec promises the module no concurrent
calls (SoftHSM2 then turns its locks off), so unless
``module_thread_safe`` is set, calls into the module are serialised.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac as std_hmac
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pkcs11
import pkcs11.exceptions as p11e
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pkcs11 import MGF, Attribute, KeyType, Mechanism, ObjectClass

from .base import (
    CONTEXT_MAC_BYTES,
    DEK_BYTES,
    DataKey,
    InvalidWrappedKey,
    KeyAccessDenied,
    KeyBackend,
    KeyConfigError,
    KeyNotFound,
    KeyServiceError,
    KeyUnavailable,
    WrappedKey,
    check_context,
    context_mac,
    wrap_aad,
    zeroize,
)
from .settings import Pkcs11Settings

T = TypeVar("T")

GCM_ALGORITHM = "AES256-GCM"
GCM_IV_BYTES = 12
GCM_TAG_BITS = 128
KWP_PREFIX = "AES-KWP/"
RSA_PREFIX = "RSA-OAEP-"
# Mechanism ids accepted for KWP wraps: SoftHSM2's AES_KEY_WRAP_PAD, PKCS#11
# v3.1's AES_KEY_WRAP_KWP, and the pre-2016 vendor value.
KWP_MECHANISM_IDS = frozenset({0x210A, 0x210B, 0x1091})

_OAEP = {
    "SHA256": (Mechanism.SHA256, MGF.SHA256, hashes.SHA256),
    "SHA1": (Mechanism.SHA_1, MGF.SHA1, hashes.SHA1),
}

# Errors after which the session (or the login) is not usable any more.
_SESSION_ERRORS = (
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.UserNotLoggedIn,
    p11e.KeyHandleInvalid,
    p11e.ObjectHandleInvalid,
)
_UNAVAILABLE_ERRORS = (
    *_SESSION_ERRORS,
    p11e.NoSuchToken,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.DeviceRemoved,
    p11e.DeviceError,
    p11e.DeviceMemory,
    p11e.SessionCount,
    p11e.HostMemory,
    p11e.FunctionFailed,
    p11e.SlotIDInvalid,
)
_ACCESS_ERRORS = (
    p11e.PinIncorrect,
    p11e.PinInvalid,
    p11e.PinExpired,
    p11e.PinLocked,
    p11e.PinLenRange,
    p11e.UserPinNotInitialized,
    p11e.AnotherUserAlreadyLoggedIn,
)
# Errors of C_Decrypt / C_UnwrapKey that mean "this blob does not unwrap".
# SoftHSM2 reports a GCM tag mismatch and a bad KWP integrity check as
# CKR_GENERAL_ERROR.
_BAD_BLOB_ERRORS = (
    p11e.EncryptedDataInvalid,
    p11e.EncryptedDataLenRange,
    p11e.WrappedKeyInvalid,
    p11e.WrappedKeyLenRange,
    p11e.DataInvalid,
    p11e.DataLenRange,
    p11e.GeneralError,
)
_UNSUPPORTED_ERRORS = (
    p11e.MechanismInvalid,
    p11e.MechanismParamInvalid,
    p11e.ArgumentsBad,
    p11e.FunctionNotSupported,
)


def gcm_encrypt(key: Any, plaintext: bytes, iv: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """``C_Encrypt(CKM_AES_GCM)``; returns ``(iv actually used, ciphertext || tag)``.

    python-pkcs11 points ``CK_GCM_PARAMS.pIv`` at the buffer of ``iv``; an HSM
    that generates its own IV (CloudHSM) overwrites that buffer, so the IV is
    copied out of it *after* the call.  ``iv`` must be a private, freshly made
    ``bytes`` object.
    """
    params = pkcs11.GCMParams(iv, aad, GCM_TAG_BITS)
    sealed = key.encrypt(plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=params)
    used_iv = bytes(bytearray(params.nonce))  # copy the buffer as the HSM left it
    return used_iv, bytes(sealed)


def _map_error(exc: p11e.PKCS11Error) -> KeyServiceError:
    """A PKCS#11 error outside wrap/unwrap as a KeyServiceError (messages name the error class only)."""
    name = type(exc).__name__
    if isinstance(exc, _UNAVAILABLE_ERRORS):
        return KeyUnavailable(f"PKCS#11 token unavailable: {name}")
    if isinstance(exc, _ACCESS_ERRORS):
        return KeyAccessDenied(f"PKCS#11 login refused: {name}")
    if isinstance(exc, _UNSUPPORTED_ERRORS):
        return KeyServiceError(f"PKCS#11 mechanism or parameters not supported by the token: {name}")
    return KeyServiceError(f"PKCS#11 error: {name}")


def _alg_kwp(mech_id: int) -> str:
    return f"{KWP_PREFIX}0x{mech_id:04X}"


def _parse_kwp(algorithm: str) -> Mechanism:
    try:
        mech_id = int(algorithm[len(KWP_PREFIX) :], 16)
    except ValueError:
        raise InvalidWrappedKey(f"unsupported pkcs11 wrap algorithm {algorithm!r}") from None
    if mech_id not in KWP_MECHANISM_IDS:
        raise InvalidWrappedKey(f"unsupported pkcs11 wrap algorithm {algorithm!r}")
    try:
        return Mechanism(mech_id)
    except ValueError:  # pragma: no cover - every KWP_MECHANISM_IDS value is in the enum
        raise InvalidWrappedKey(f"unsupported pkcs11 wrap algorithm {algorithm!r}") from None


@dataclass
class _Session:
    handle: Any  # pkcs11.Session
    generation: int
    keys: dict[tuple[str, ObjectClass], Any] = field(default_factory=dict)


class Pkcs11Backend(KeyBackend):
    name = "pkcs11"

    def __init__(self, settings: Pkcs11Settings, *, lib_loader: Callable[[str], Any] = pkcs11.lib):
        self._settings = settings
        self._lib_loader = lib_loader
        self.default_key_id: str | None = settings.key_label
        if settings.mechanism == "aes-kwp" and settings.kwp_mechanism_id not in KWP_MECHANISM_IDS:
            raise KeyConfigError(
                f"keys.pkcs11.kwp_mechanism_id 0x{settings.kwp_mechanism_id:X} is not an AES key "
                "wrap with padding mechanism (0x210A, 0x210B or 0x1091)"
            )
        self._pin = settings.pin.get_secret_value() if settings.pin is not None else None
        self._call_lock: AbstractContextManager[Any] = (
            nullcontext() if settings.module_thread_safe else threading.Lock()
        )
        self._state = threading.Lock()  # guards the fields below
        self._pid = os.getpid()
        self._executor: ThreadPoolExecutor | None = None
        self._lib: Any = None
        self._token: Any = None
        self._anchor: Any = None  # logged-in session that only holds the login
        self._idle: list[_Session] = []
        self._generation = 0
        self._closed = False
        self._public_keys: dict[str, rsa.RSAPublicKey] = {}
        self.sessions_opened = 0  # for tests and metrics

    @classmethod
    def from_settings(cls, settings: Pkcs11Settings) -> Pkcs11Backend:
        return cls(settings)

    @property
    def algorithm(self) -> str:
        s = self._settings
        if s.mechanism == "aes-gcm":
            return GCM_ALGORITHM
        if s.mechanism == "aes-kwp":
            return _alg_kwp(s.kwp_mechanism_id)
        return RSA_PREFIX + s.oaep_hash.upper()

    # -- threads, sessions, fork ---------------------------------------------

    def _check_process(self) -> None:
        """After fork(): forget the parent's sessions and threads (never close them here)."""
        pid = os.getpid()
        if pid == self._pid:
            return
        with self._state:
            if pid == self._pid:
                return
            self._pid = pid
            self._executor = None
            self._idle = []
            self._anchor = None
            self._token = None
            self._generation += 1
            if self._lib is not None:
                with contextlib.suppress(p11e.PKCS11Error):
                    self._lib.reinitialize()  # C_Initialize again in the child
                self._lib = None

    def _get_executor(self) -> ThreadPoolExecutor:
        with self._state:
            if self._closed:
                raise KeyUnavailable("the pkcs11 backend is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._settings.sessions, thread_name_prefix="s3proxy-pkcs11"
                )
            return self._executor

    async def _run(self, fn: Callable[[_Session], T]) -> T:
        self._check_process()
        executor = self._get_executor()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self._in_thread, fn)

    def _in_thread(self, fn: Callable[[_Session], T]) -> T:
        for attempt in range(2):
            with self._call_lock:
                try:
                    session = self._acquire()
                except KeyServiceError:
                    raise
                except p11e.PKCS11Error as exc:
                    raise _map_error(exc) from None
                try:
                    result = fn(session)
                except _SESSION_ERRORS as exc:
                    # The HSM dropped the session or the login (restart,
                    # failover): rebuild everything, log in again, retry once.
                    self._discard(session)
                    if attempt == 0:
                        continue
                    raise KeyUnavailable(f"PKCS#11 session lost: {type(exc).__name__}") from None
                except _UNAVAILABLE_ERRORS as exc:
                    self._discard(session)
                    raise _map_error(exc) from None
                except p11e.PKCS11Error as exc:
                    self._release(session)
                    raise _map_error(exc) from None
                except BaseException:
                    self._release(session)
                    raise
                self._release(session)
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _open_token(self) -> Any:
        s = self._settings
        if self._lib is None:
            try:
                self._lib = self._lib_loader(s.module)
            except p11e.PKCS11Error as exc:
                raise KeyUnavailable(f"cannot load PKCS#11 module {s.module!r}: {exc}") from None
        if self._token is None:
            try:
                self._token = self._lib.get_token(token_label=s.token_label)
            except p11e.NoSuchToken:
                raise KeyUnavailable(f"PKCS#11 token {s.token_label!r} not present") from None
            except p11e.MultipleTokensReturned:
                raise KeyServiceError(f"several PKCS#11 tokens labelled {s.token_label!r}") from None
        if self._anchor is None and self._pin is not None:
            try:
                self._anchor = self._token.open(user_pin=self._pin)
                self.sessions_opened += 1
            except p11e.UserAlreadyLoggedIn:
                self._anchor = None  # another user of the module logged in for us
        return self._token

    def _acquire(self) -> _Session:
        with self._state:
            while self._idle:
                session = self._idle.pop()
                if session.generation == self._generation:
                    return session
                self._close_quietly(session.handle)
            token = self._open_token()
            handle = token.open()
            self.sessions_opened += 1
            session = _Session(handle=handle, generation=self._generation)
            return session

    def _release(self, session: _Session) -> None:
        with self._state:
            if session.generation == self._generation and not self._closed:
                self._idle.append(session)
            else:
                self._close_quietly(session.handle)

    def _discard(self, session: _Session) -> None:
        """Drop ``session`` and start a new generation: every session and the login are rebuilt."""
        with self._state:
            self._close_quietly(session.handle)
            if session.generation != self._generation:
                return  # another thread already started over
            self._generation += 1  # idle sessions are closed as they are taken, busy ones when released
            if self._anchor is not None:
                self._close_quietly(self._anchor)
                self._anchor = None
            self._token = None  # look the token up again: a re-initialised HSM may move slots

    @staticmethod
    def _close_quietly(handle: Any) -> None:
        with contextlib.suppress(p11e.PKCS11Error):
            handle.close()

    # -- keys -----------------------------------------------------------------

    def _find(self, session: _Session, label: str, object_class: ObjectClass) -> Any:
        cached = session.keys.get((label, object_class))
        if cached is not None:
            return cached
        try:
            key = session.handle.get_key(object_class=object_class, label=label)
        except p11e.NoSuchKey:
            raise KeyNotFound(f"no PKCS#11 {object_class.name.lower()} labelled {label!r}") from None
        except p11e.MultipleObjectsReturned:
            raise KeyServiceError(f"several PKCS#11 keys labelled {label!r}") from None
        if (
            object_class in (ObjectClass.SECRET_KEY, ObjectClass.PRIVATE_KEY)
            and self._settings.require_non_extractable
            and (key[Attribute.EXTRACTABLE] or not key[Attribute.SENSITIVE])
        ):
            raise KeyServiceError(
                f"refusing PKCS#11 key {label!r}: it is extractable or not sensitive "
                "(keys.pkcs11.require_non_extractable)"
            )
        session.keys[(label, object_class)] = key
        return key

    def _random(self, session: _Session, n: int) -> bytes:
        if self._settings.random_source == "token":
            out = bytes(session.handle.generate_random(n * 8))
            if len(out) != n:
                raise KeyServiceError("PKCS#11 C_GenerateRandom returned the wrong length")
            return out
        return os.urandom(n)

    async def _public_key(self, label: str) -> rsa.RSAPublicKey:
        cached = self._public_keys.get(label)
        if cached is not None:
            return cached

        def read(session: _Session) -> tuple[bytes, bytes]:
            key = self._find(session, label, ObjectClass.PUBLIC_KEY)
            return bytes(key[Attribute.MODULUS]), bytes(key[Attribute.PUBLIC_EXPONENT])

        modulus, exponent = await self._run(read)
        public = rsa.RSAPublicNumbers(
            int.from_bytes(exponent, "big"), int.from_bytes(modulus, "big")
        ).public_key()
        self._public_keys[label] = public
        return public

    # -- wrap / unwrap --------------------------------------------------------

    async def generate_data_key(self, key_id: str, context: Mapping[str, str]) -> DataKey:
        if self._settings.random_source == "token":
            dek = bytearray(await self._run(lambda s: self._random(s, DEK_BYTES)))
        else:
            dek = bytearray(os.urandom(DEK_BYTES))
        try:
            wrapped = await self.wrap_data_key(key_id, dek, context)
        except BaseException:
            zeroize(dek)
            raise
        return DataKey(plaintext=dek, wrapped=wrapped)

    async def wrap_data_key(
        self, key_id: str, dek: bytes | bytearray, context: Mapping[str, str]
    ) -> WrappedKey:
        if len(dek) != DEK_BYTES:
            raise ValueError(f"data keys are {DEK_BYTES} bytes")
        algorithm = self.algorithm
        aad = wrap_aad(self.name, key_id, algorithm, check_context(context))
        mechanism = self._settings.mechanism
        if mechanism == "rsa-oaep":
            public = await self._public_key(key_id)
            hash_cls = _OAEP[self._settings.oaep_hash.upper()][2]
            sealed = public.encrypt(
                bytes(dek), padding.OAEP(mgf=padding.MGF1(hash_cls()), algorithm=hash_cls(), label=None)
            )
            blob = sealed + context_mac(dek, sealed, aad)
        elif mechanism == "aes-gcm":

            def gcm(session: _Session) -> bytes:
                kek = self._find(session, key_id, ObjectClass.SECRET_KEY)
                iv = self._random(session, GCM_IV_BYTES)
                used_iv, sealed = gcm_encrypt(kek, bytes(dek), iv, aad)
                if len(used_iv) != GCM_IV_BYTES or len(sealed) != DEK_BYTES + GCM_TAG_BITS // 8:
                    raise KeyServiceError("PKCS#11 AES-GCM returned an unexpected length")
                return used_iv + sealed

            blob = await self._run(gcm)
        else:
            kwp = Mechanism(self._settings.kwp_mechanism_id)

            def kwp_wrap(session: _Session) -> bytes:
                kek = self._find(session, key_id, ObjectClass.SECRET_KEY)
                temp = session.handle.create_object(
                    {
                        Attribute.CLASS: ObjectClass.SECRET_KEY,
                        Attribute.KEY_TYPE: KeyType.AES,
                        Attribute.VALUE: bytes(dek),
                        Attribute.TOKEN: False,
                        Attribute.SENSITIVE: False,
                        Attribute.EXTRACTABLE: True,
                    }
                )
                try:
                    return bytes(kek.wrap_key(temp, mechanism=kwp))
                finally:
                    temp.destroy()

            sealed = await self._run(kwp_wrap)
            blob = sealed + context_mac(dek, sealed, aad)
        return WrappedKey(backend=self.name, key_id=key_id, algorithm=algorithm, blob=blob)

    async def decrypt_data_key(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytearray:
        if wrapped.backend != self.name:
            raise InvalidWrappedKey(f"wrapped key belongs to backend {wrapped.backend!r}, not 'pkcs11'")
        algorithm = wrapped.algorithm
        aad = wrap_aad(self.name, wrapped.key_id, algorithm, check_context(context))
        if algorithm == GCM_ALGORITHM:
            return await self._unwrap_gcm(wrapped.key_id, bytes(wrapped.blob), aad)
        if algorithm.startswith(KWP_PREFIX):
            return await self._unwrap_kwp(wrapped.key_id, _parse_kwp(algorithm), bytes(wrapped.blob), aad)
        if algorithm.startswith(RSA_PREFIX):
            return await self._unwrap_rsa(wrapped.key_id, algorithm, bytes(wrapped.blob), aad)
        raise InvalidWrappedKey(f"unsupported pkcs11 wrap algorithm {algorithm!r}")

    async def _unwrap_gcm(self, label: str, blob: bytes, aad: bytes) -> bytearray:
        """AES-GCM on the token, the wrap AAD authenticated by the token."""
        if len(blob) != GCM_IV_BYTES + DEK_BYTES + GCM_TAG_BITS // 8:
            raise InvalidWrappedKey("wrapped data key has the wrong length")

        def gcm(session: _Session) -> bytearray:
            kek = self._find(session, label, ObjectClass.SECRET_KEY)
            params = pkcs11.GCMParams(blob[:GCM_IV_BYTES], aad, GCM_TAG_BITS)
            try:
                return bytearray(kek.decrypt(blob[GCM_IV_BYTES:], mechanism=Mechanism.AES_GCM, mechanism_param=params))
            except _BAD_BLOB_ERRORS:
                raise InvalidWrappedKey(
                    "wrapped data key does not authenticate (tampered, wrong key or wrong context)"
                ) from None

        dek = await self._run(gcm)
        if len(dek) != DEK_BYTES:
            zeroize(dek)
            raise InvalidWrappedKey("unwrapped data key has the wrong length")
        return dek

    async def _unwrap_kwp(self, label: str, mechanism: Mechanism, blob: bytes, aad: bytes) -> bytearray:
        """AES key wrap (with padding) on the token; the context is checked by our MAC after unwrapping."""
        if len(blob) <= CONTEXT_MAC_BYTES:
            raise InvalidWrappedKey("wrapped data key is too short")
        sealed, tag = blob[:-CONTEXT_MAC_BYTES], blob[-CONTEXT_MAC_BYTES:]

        def kwp_unwrap(session: _Session) -> bytearray:
            kek = self._find(session, label, ObjectClass.SECRET_KEY)
            try:
                temp = kek.unwrap_key(
                    ObjectClass.SECRET_KEY,
                    KeyType.AES,
                    sealed,
                    mechanism=mechanism,
                    store=False,
                    template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
                )
            except _BAD_BLOB_ERRORS:
                raise InvalidWrappedKey("wrapped data key does not unwrap (tampered or wrong key)") from None
            try:
                return bytearray(temp[Attribute.VALUE])
            finally:
                temp.destroy()

        return self._verify_mac(await self._run(kwp_unwrap), sealed, tag, aad)

    async def _unwrap_rsa(self, label: str, algorithm: str, blob: bytes, aad: bytes) -> bytearray:
        """RSA-OAEP with the token's private key; the context is checked by our MAC after decrypting."""
        hash_name = algorithm[len(RSA_PREFIX) :]
        if hash_name not in _OAEP:
            raise InvalidWrappedKey(f"unsupported pkcs11 wrap algorithm {algorithm!r}")
        hash_mech, mgf, _ = _OAEP[hash_name]
        if self._settings.encrypt_only:
            raise self._encrypt_only_error(label)
        if len(blob) <= CONTEXT_MAC_BYTES:
            raise InvalidWrappedKey("wrapped data key is too short")
        sealed, tag = blob[:-CONTEXT_MAC_BYTES], blob[-CONTEXT_MAC_BYTES:]

        def rsa_decrypt(session: _Session) -> bytearray:
            try:
                private = self._find(session, label, ObjectClass.PRIVATE_KEY)
            except KeyNotFound:
                try:
                    self._find(session, label, ObjectClass.PUBLIC_KEY)
                except KeyNotFound:
                    raise KeyNotFound(f"no PKCS#11 RSA key pair labelled {label!r}") from None
                raise self._encrypt_only_error(label) from None
            try:
                return bytearray(
                    private.decrypt(sealed, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=(hash_mech, mgf, None))
                )
            except _UNSUPPORTED_ERRORS as exc:
                raise KeyServiceError(
                    f"the PKCS#11 token rejected {algorithm} ({type(exc).__name__}); "
                    "SoftHSM2 2.6 implements RSA-OAEP with SHA-1 only"
                ) from None
            except _BAD_BLOB_ERRORS:
                raise InvalidWrappedKey("wrapped data key does not decrypt (tampered or wrong key)") from None

        return self._verify_mac(await self._run(rsa_decrypt), sealed, tag, aad)

    @staticmethod
    def _verify_mac(dek: bytearray, sealed: bytes, tag: bytes, aad: bytes) -> bytearray:
        if len(dek) != DEK_BYTES or not std_hmac.compare_digest(context_mac(dek, sealed, aad), tag):
            zeroize(dek)
            raise InvalidWrappedKey(
                "wrapped data key does not authenticate (tampered, wrong key or wrong context)"
            )
        return dek

    @staticmethod
    def _encrypt_only_error(label: str) -> KeyAccessDenied:
        return KeyAccessDenied(
            f"the pkcs11 backend is encrypt-only for RSA key {label!r} (public key only): "
            "it can encrypt uploads but cannot unwrap data keys; read these objects through "
            "a proxy that holds the private key"
        )

    async def rewrap(
        self,
        wrapped: WrappedKey,
        context: Mapping[str, str],
        to_key_id: str,
        to_context: Mapping[str, str],
    ) -> WrappedKey:
        # No HSM primitive re-wraps an encrypted blob under another key without
        # exposing it, so the DEK passes through memory and is zeroed after.
        dek = await self.decrypt_data_key(wrapped, context)
        try:
            return await self.wrap_data_key(to_key_id, dek, to_context)
        finally:
            zeroize(dek)

    async def check(self) -> None:
        label = self.default_key_id
        if label is None:
            await self._run(lambda s: None)  # the module loads, the token is there, the PIN works
            return
        if self._settings.mechanism == "rsa-oaep":
            await self._public_key(label)
        else:
            await self._run(lambda s: self._find(s, label, ObjectClass.SECRET_KEY))

    async def close(self) -> None:
        self._check_process()
        with self._state:
            if self._closed:
                return
            executor = self._executor
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sessions)
        with self._state:
            self._closed = True
            self._executor = None
        if executor is not None:
            executor.shutdown(wait=False)
        self._public_keys.clear()

    def _close_sessions(self) -> None:
        with self._call_lock, self._state:
            self._generation += 1
            for session in self._idle:
                self._close_quietly(session.handle)
            self._idle = []
            if self._anchor is not None:
                self._close_quietly(self._anchor)  # logs out: close it last
                self._anchor = None
            self._token = None
