#!/usr/bin/env python
"""Generate ``s3proxy_format_v1.json`` and ``s3proxy_format_v2.json``: test vectors of docs/FORMAT.md.

``s3proxy_format_v1.json`` (bodies, v1 envelopes, upload tokens) never changes;
``s3proxy_format_v2.json`` holds v2 envelopes (sealed block, section 8) over the
same cases, with fixed seal salts.

Fixed DEK, object ids and salts (salts injected through the private
``_with_salt`` constructors, which exist for this purpose only), so the
output is deterministic. ``tests/unit/test_vectors.py`` checks that the file
equals what the code produces now *and* that an independent reference
implementation of the spec (written in the test) agrees with it.

    python tests/vectors/generate.py           # rewrite the JSON
    python tests/vectors/generate.py --check   # exit 1 if it is stale
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from s3proxy.crypto import envelope, format as fmt, sizes, upload_token  # noqa: E402
from s3proxy.keys.base import WrappedKey  # noqa: E402

OUT = Path(__file__).with_name("s3proxy_format_v1.json")
OUT_V2 = Path(__file__).with_name("s3proxy_format_v2.json")

DEK = bytes(range(32))
OBJECT_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
FULL_CT_LIMIT = 512  # bodies up to this size are stored in full

S_SIZES = [0, 1, 16383, 16384, 16385, 40000]
K_CASES = [(1, 0), (1, 1), (2, 1023), (3, 1024), (4, 1025), (10000, 5000), (7, 100003)]


def plaintext(n: int) -> bytes:
    """The vectors' plaintext: bytes 0..250 repeated, cut to ``n`` bytes."""
    pattern = bytes(range(251))
    return (pattern * (n // 251 + 1))[:n]


def salt_for(label: str, i: int) -> bytes:
    return hashlib.sha256(f"s3proxy vector salt {label} {i}".encode()).digest()[: sizes.SALT_SIZE]


def _okm_fields(okm: bytes) -> dict[str, str]:
    return {"aead_key": okm[:32].hex(), "base_nonce": okm[32:44].hex(), "commitment": okm[44:].hex()}


def s_vectors() -> list[dict[str, Any]]:
    out = []
    for i, p in enumerate(S_SIZES):
        salt = salt_for("S", i)
        enc = fmt.SEncryptor._with_salt(DEK, OBJECT_ID, salt)
        ct = bytes(enc.update(plaintext(p)) + enc.finalize())
        okm = fmt._cobblestone_okm(DEK, fmt.s_context(OBJECT_ID), salt)
        v: dict[str, Any] = {
            "pt_len": p,
            "salt": salt.hex(),
            "context": fmt.s_context(OBJECT_ID).hex(),
            **_okm_fields(okm),
            "ct_len": len(ct),
            "ct_sha256": hashlib.sha256(ct).hexdigest(),
            "header": ct[: sizes.S_HEADER_SIZE].hex(),
            "final_chunk": ct[sizes.S_HEADER_SIZE + (p // sizes.CHUNK_SIZE) * sizes.S_FULL_CHUNK_CT :].hex(),
        }
        if len(ct) <= FULL_CT_LIMIT:
            v["ct"] = ct.hex()
        out.append(v)
    return out


def k_vectors() -> list[dict[str, Any]]:
    out = []
    for i, (part_number, p) in enumerate(K_CASES):
        salt = salt_for("K", i)
        enc = fmt.KPartEncryptor._with_salt(DEK, OBJECT_ID, part_number, p, salt)
        ct = bytes(enc.update(plaintext(p)) + enc.finalize())
        okm = fmt._k_okm(DEK, OBJECT_ID, salt, part_number, p)
        cs = sizes.k_chunk_size(p)
        first_end = sizes.k_chunk_ct_offset(p, cs, 1)
        last_start = sizes.k_chunk_ct_offset(p, cs, sizes.K_CHUNKS - 1)
        out.append(
            {
                "part_number": part_number,
                "pt_len": p,
                "chunk_size": cs,
                "salt": salt.hex(),
                **_okm_fields(okm),
                "ct_len": len(ct),
                "ct_sha256": hashlib.sha256(ct).hexdigest(),
                "header": ct[: sizes.K_HEADER_SIZE].hex(),
                "first_chunk": ct[sizes.K_HEADER_SIZE : first_end].hex(),
                "last_chunk": ct[last_start:].hex(),
            }
        )
    return out


ENVELOPE_CASES: list[dict[str, Any]] = [
    {
        "comment": "S object, local keyring",
        "layout": "S",
        "bucket": "photos",
        "key": "2024/cat.jpg",
        "wrapped": {"backend": "local", "key_id": "k1", "algorithm": "AES256-GCM", "blob": bytes(range(60)).hex()},
        "context": {"bucket": "photos"},
    },
    {
        "comment": "K object, AWS KMS key ARN, key with a space",
        "layout": "K",
        "bucket": "backups",
        "key": "db/dump 2024-01-01.tar.gz",
        "wrapped": {
            "backend": "aws-kms",
            "key_id": "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
            "algorithm": "KMS",
            "blob": bytes((i * 37) % 256 for i in range(184)).hex(),
        },
        "context": {"bucket": "backups", "purpose": "s3proxy"},
    },
    {
        "comment": "non-ASCII and reserved characters everywhere",
        "layout": "S",
        "bucket": "donnees",
        "key": "ü/ß;%.txt",
        "wrapped": {"backend": "pkcs11", "key_id": "my key;ü%", "algorithm": "AES-KWP", "blob": bytes(40).hex()},
        "context": {"bucket": "donnees", "ключ": "значение", "quote\"": "back\\slash"},
    },
    {
        "comment": "empty key id, empty blob, empty context",
        "layout": "K",
        "bucket": "b",
        "key": "k",
        "wrapped": {"backend": "sse-c", "key_id": "", "algorithm": "none", "blob": ""},
        "context": {},
    },
]


# Upload tokens as format-v1 s3proxy wrote them (no tag); frozen here, never regenerated.
V1_TOKENS = [
    "AZa-w8KtqaBSv08jpSw5g8AFbG9jYWwAAmsxCkFFUzI1Ni1HQ00APAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4fICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6OwATeyJidWNrZXQiOiJwaG90b3MifQ",
    "Ac6mF9_IZzDbugSpTyTOpZoHYXdzLWttcwBLYXJuOmF3czprbXM6dXMtZWFzdC0xOjExMTEyMjIyMzMzMzprZXkvMTIzNGFiY2QtMTJhYi0zNGNkLTU2ZWYtMTIzNDU2Nzg5MGFiA0tNUwC4ACVKb5S53gMoTXKXvOEGK1B1mr_kCS5TeJ3C5wwxVnugxeoPNFl-o8jtEjdcgabL8BU6X4SpzvMYPWKHrNH2G0Bliq_U-R5DaI2y1_whRmuQtdr_JEluk7jdAidMcZa74AUqT3SZvuMILVJ3nMHmCzBVep_E6Q4zWH2ix-wRNluApcrvFDleg6jN8hc8YYar0PUaP2SJrtP4HUJnjLHW-yBFao-02f4jSG2St9wBJktwlbrfBClOcwAoeyJidWNrZXQiOiJiYWNrdXBzIiwicHVycG9zZSI6InMzcHJveHkifQ",
    "AWPhVZxViRukTYLbN5ZyVY4GcGtjczExAApteSBrZXk7w7wlB0FFUy1LV1AAKAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAASnsiYnVja2V0IjoiZG9ubmVlcyIsInF1b3RlXCIiOiJiYWNrXFxzbGFzaCIsItC60LvRjtGHIjoi0LfQvdCw0YfQtdC90LjQtSJ9",
    "AbGHbmZqgzINSGuQb7qwyjsFc3NlLWMAAARub25lAAAAAnt9",
]


def envelope_vectors() -> list[dict[str, Any]]:
    out = []
    for i, case in enumerate(ENVELOPE_CASES):
        object_id = hashlib.sha256(f"s3proxy vector object id {i}".encode()).digest()[:16]
        w = case["wrapped"]
        wrapped = WrappedKey(w["backend"], w["key_id"], w["algorithm"], bytes.fromhex(w["blob"]))
        env = envelope.make_envelope(
            DEK, case["layout"], object_id, wrapped, case["context"], case["bucket"], case["key"]
        )
        out.append(
            {
                **case,
                "object_id": object_id.hex(),
                "binding": env.binding.hex(),
                "metadata": envelope.encode_metadata(env),
                "backend_upload_id": f"vector-upload-{i}~2",
                "upload_token": upload_token.encode_upload_token(env, DEK, case["bucket"], case["key"], f"vector-upload-{i}~2"),
                # format-v1 tokens (untagged), kept so that tests prove they are refused
                "upload_token_v1": V1_TOKENS[i],
            }
        )
    return out


def build() -> dict[str, Any]:
    return {
        "description": "s3proxy object format v1 test vectors (docs/FORMAT.md); generated by tests/vectors/generate.py",
        "plaintext": "bytes 0..250 repeated, cut to pt_len",
        "dek": DEK.hex(),
        "object_id": OBJECT_ID.hex(),
        "sizes": {
            "S_HEADER_SIZE": sizes.S_HEADER_SIZE,
            "CHUNK_SIZE": sizes.CHUNK_SIZE,
            "K_HEADER_SIZE": sizes.K_HEADER_SIZE,
            "K_CHUNKS": sizes.K_CHUNKS,
            "K_PART_OVERHEAD": sizes.K_PART_OVERHEAD,
        },
        "s": s_vectors(),
        "k": k_vectors(),
        "envelope": envelope_vectors(),
    }


# Sealed-block contents of the v2 vectors, applied to every envelope case in turn.
SEAL_CASES: list[dict[str, Any]] = [
    {"comment": "no user metadata: an empty sealed block", "m": {}},
    {"comment": "user metadata", "m": {"color": "blue", "patient": "jane-doe", "empty": ""}},
    {
        "comment": "metadata, verified checksum and client-facing ETag",
        "m": {"a": "1"},
        "c": {"alg": "CRC32", "v": "NSRBwg==", "type": "FULL_OBJECT"},
        "e": '"900150983cd24fb0d6963f7d28e17f72"',
    },
    {"comment": "non-ASCII and a lone surrogate (aiohttp's surrogateescape)", "m": {"ü-name": "значение", "raw": "\udcff"}},
]


def envelope_v2_vectors() -> list[dict[str, Any]]:
    out = []
    for i, case in enumerate(ENVELOPE_CASES):
        object_id = hashlib.sha256(f"s3proxy vector object id {i}".encode()).digest()[:16]
        w = case["wrapped"]
        wrapped = WrappedKey(w["backend"], w["key_id"], w["algorithm"], bytes.fromhex(w["blob"]))
        for j, seal_case in enumerate(SEAL_CASES):
            contents = envelope.SealContents(seal_case["m"], seal_case.get("c"), seal_case.get("e"))
            salt = salt_for(f"seal {i}", j)
            env = envelope.make_envelope(
                DEK, case["layout"], object_id, wrapped, case["context"], case["bucket"], case["key"],
                sealed=contents, seal_salt=salt,
            )
            out.append(
                {
                    **case,
                    "comment": f"{case['comment']}; {seal_case['comment']}",
                    "object_id": object_id.hex(),
                    "seal_contents": {k: v for k, v in seal_case.items() if k != "comment"},
                    "seal_plaintext": contents.encode().decode("ascii"),
                    "seal_salt": salt.hex(),
                    "binding": env.binding.hex(),
                    "metadata": envelope.encode_metadata(env),
                }
            )
    return out


def build_v2() -> dict[str, Any]:
    return {
        "description": "s3proxy envelope v2 test vectors (docs/FORMAT.md 8); generated by tests/vectors/generate.py",
        "dek": DEK.hex(),
        "envelope": envelope_v2_vectors(),
    }


def render() -> str:
    return json.dumps(build(), indent=1, ensure_ascii=False) + "\n"


def render_v2() -> str:
    return json.dumps(build_v2(), indent=1, ensure_ascii=True) + "\n"  # ASCII: it holds a lone surrogate


def main(argv: list[str]) -> int:
    outputs = ((OUT, render()), (OUT_V2, render_v2()))
    if "--check" in argv:
        stale = [out for out, text in outputs if not out.exists() or out.read_text(encoding="utf-8") != text]
        for out in stale:
            print(f"{out} is stale: run python {Path(__file__).relative_to(ROOT)}", file=sys.stderr)
        return 1 if stale else 0
    for out, text in outputs:
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
