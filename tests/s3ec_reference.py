"""An independent writer of AWS S3 Encryption Client objects, for tests.

Written from AWS's public specification (awslabs/aws-encryption-sdk-specification,
s3-encryption/: data-format/content-metadata.md, data-format/metadata-strategy.md,
encryption.md, key-derivation.md, materials/s3-kms-keyring.md), not from
s3proxy's reader: one-shot AESGCM / CBC from ``cryptography``, metadata as the
S3EC writes it.  The data key comes from a caller-supplied KMS (moto's KMS in the
integration tests, a fixed key in unit tests).

``encrypt_v2`` : V2 format, AES/GCM/NoPadding, kms+context (S3EC v2 / Java v3 default).
``encrypt_v3`` : V3 format, suite 115 (ALG_AES_256_GCM_HKDF_SHA512_COMMIT_KEY), wrap "12".
``encrypt_cbc``: V2 (or V1) format, AES/CBC/PKCS5Padding, legacy.
``to_instruction_file``: move the metadata into an instruction file as the S3EC does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

# (plaintext data key, encrypted data key) for a given encryption context
KeyMaker = Callable[[dict[str, str]], tuple[bytes, bytes]]


@dataclass
class S3ECWritten:
    body: bytes
    metadata: dict[str, str]  # user metadata names without "x-amz-meta-"
    data_key: bytes


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def fixed_keys(data_key: bytes = b"\x11" * 32, edk: bytes = b"wrapped-by-kms") -> KeyMaker:
    return lambda ctx: (data_key, edk)


def encrypt_v2(plaintext: bytes, make_key: KeyMaker, context: dict[str, str] | None = None) -> S3ECWritten:
    ec = dict(context or {})
    ec["aws:x-amz-cek-alg"] = "AES/GCM/NoPadding"  # the KMS keyring's default context entry
    pdk, edk = make_key(ec)
    iv = os.urandom(12)
    body = AESGCM(pdk).encrypt(iv, plaintext, None)  # no AAD for this suite
    meta = {
        "x-amz-key-v2": _b64(edk),
        "x-amz-iv": _b64(iv),
        "x-amz-matdesc": json.dumps(ec),
        "x-amz-wrap-alg": "kms+context",
        "x-amz-cek-alg": "AES/GCM/NoPadding",
        "x-amz-tag-len": "128",
        "x-amz-unencrypted-content-length": str(len(plaintext)),
    }
    return S3ECWritten(body, meta, pdk)


def encrypt_v3(plaintext: bytes, make_key: KeyMaker, context: dict[str, str] | None = None) -> S3ECWritten:
    ec = dict(context or {})
    ec["aws:x-amz-cek-alg"] = "115"
    pdk, edk = make_key(ec)
    message_id = os.urandom(28)
    suite = b"\x00\x73"
    prk = hmac.new(message_id, pdk, hashlib.sha512).digest()  # HKDF-Extract, salt = message id
    key = HKDFExpand(hashes.SHA512(), 32, suite + b"DERIVEKEY").derive(prk)
    commit = HKDFExpand(hashes.SHA512(), 28, suite + b"COMMITKEY").derive(prk)
    body = AESGCM(key).encrypt(b"\x01" * 12, plaintext, suite)
    meta = {
        "x-amz-c": "115",
        "x-amz-3": _b64(edk),
        "x-amz-w": "12",
        "x-amz-d": _b64(commit),
        "x-amz-i": _b64(message_id),
        "x-amz-t": json.dumps(ec),
    }
    return S3ECWritten(body, meta, pdk)


def encrypt_cbc(plaintext: bytes, make_key: KeyMaker, *, v1: bool = False, with_length: bool = True) -> S3ECWritten:
    ctx = {"kms_cmk_id": "alias/s3ec"}
    pdk, edk = make_key(ctx)
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(pdk), modes.CBC(iv)).encryptor()
    body = enc.update(padded) + enc.finalize()
    meta = {"x-amz-iv": _b64(iv), "x-amz-matdesc": json.dumps(ctx)}
    if v1:
        meta["x-amz-key"] = _b64(edk)
    else:
        meta.update({"x-amz-key-v2": _b64(edk), "x-amz-wrap-alg": "kms", "x-amz-cek-alg": "AES/CBC/PKCS5Padding"})
    if with_length:
        meta["x-amz-unencrypted-content-length"] = str(len(plaintext))
    return S3ECWritten(body, meta, pdk)


def to_instruction_file(w: S3ECWritten) -> tuple[dict[str, str], bytes]:
    """(object metadata, instruction file body): V1/V2 keep nothing on the object; V3 keeps c, d, i."""
    keep = ("x-amz-c", "x-amz-d", "x-amz-i")
    obj = {k: v for k, v in w.metadata.items() if k in keep}
    inst = {k: v for k, v in w.metadata.items() if k not in keep}
    return obj, json.dumps(inst).encode()
