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
(:mod:`s3proxy.keys.pkcs11_session` does the threads and sessions; this module the wrapping.)
"""

from __future__ import annotations

import hmac as std_hmac
import os
from collections.abc import Callable, Mapping
from typing import Any

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
    WrappedKey,
    check_context,
    context_mac,
    wrap_aad,
    zeroize,
)
from .pkcs11_session import BAD_BLOB_ERRORS, UNSUPPORTED_ERRORS, Session, SessionPool
from .settings import Pkcs11Settings

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


class Pkcs11Backend(SessionPool, KeyBackend):
    name = "pkcs11"

    def __init__(self, settings: Pkcs11Settings, *, lib_loader: Callable[[str], Any] = pkcs11.lib):
        super().__init__(settings, lib_loader)
        self.default_key_id: str | None = settings.key_label
        if settings.mechanism == "aes-kwp" and settings.kwp_mechanism_id not in KWP_MECHANISM_IDS:
            raise KeyConfigError(
                f"keys.pkcs11.kwp_mechanism_id 0x{settings.kwp_mechanism_id:X} is not an AES key "
                "wrap with padding mechanism (0x210A, 0x210B or 0x1091)"
            )
        self._public_keys: dict[str, rsa.RSAPublicKey] = {}

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

    # -- keys -----------------------------------------------------------------

    def _find(self, session: Session, label: str, object_class: ObjectClass) -> Any:
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

    def _random(self, session: Session, n: int) -> bytes:
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

        def read(session: Session) -> tuple[bytes, bytes]:
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

            def gcm(session: Session) -> bytes:
                kek = self._find(session, key_id, ObjectClass.SECRET_KEY)
                iv = self._random(session, GCM_IV_BYTES)
                used_iv, sealed = gcm_encrypt(kek, bytes(dek), iv, aad)
                if len(used_iv) != GCM_IV_BYTES or len(sealed) != DEK_BYTES + GCM_TAG_BITS // 8:
                    raise KeyServiceError("PKCS#11 AES-GCM returned an unexpected length")
                return used_iv + sealed

            blob = await self._run(gcm)
        else:
            kwp = Mechanism(self._settings.kwp_mechanism_id)

            def kwp_wrap(session: Session) -> bytes:
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

        def gcm(session: Session) -> bytearray:
            kek = self._find(session, label, ObjectClass.SECRET_KEY)
            params = pkcs11.GCMParams(blob[:GCM_IV_BYTES], aad, GCM_TAG_BITS)
            try:
                return bytearray(kek.decrypt(blob[GCM_IV_BYTES:], mechanism=Mechanism.AES_GCM, mechanism_param=params))
            except BAD_BLOB_ERRORS:
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

        def kwp_unwrap(session: Session) -> bytearray:
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
            except BAD_BLOB_ERRORS:
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

        def rsa_decrypt(session: Session) -> bytearray:
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
            except UNSUPPORTED_ERRORS as exc:
                raise KeyServiceError(
                    f"the PKCS#11 token rejected {algorithm} ({type(exc).__name__}); "
                    "SoftHSM2 2.6 implements RSA-OAEP with SHA-1 only"
                ) from None
            except BAD_BLOB_ERRORS:
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
        await self._shutdown()
        self._public_keys.clear()
