"""SSE-C goes through the KeyManager (issue 10, finding 8): every use of a customer key writes
an audit line with the request id and the caller's identity, and the log never holds the key."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import proxy_settings, start_proxy, stop_proxy
from tests.integration.helpers import temp_bucket
from tests.integration.keyfixtures import local_keys, with_keys

CK = os.urandom(32)
OTHER = os.urandom(32)


def ssec(key: bytes) -> dict[str, str]:
    return {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": base64.b64encode(key).decode(),
            "SSECustomerKeyMD5": base64.b64encode(hashlib.md5(key).digest()).decode()}


def test_sse_c_audited_with_request_id_and_identity(backend: Any, tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    p = start_proxy(with_keys(proxy_settings(backend), {**local_keys("k1"), "audit": {"target": str(log)}},
                              require_https_for_sse_c=False))
    try:
        s3 = p.client()
        with temp_bucket(s3) as bucket:
            s3.put_object(Bucket=bucket, Key="c", Body=b"customer", **ssec(CK))
            assert s3.get_object(Bucket=bucket, Key="c", **ssec(CK))["Body"].read() == b"customer"
            with pytest.raises(ClientError) as err:
                s3.get_object(Bucket=bucket, Key="c", **ssec(OTHER))
            assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
            src = ssec(CK)
            s3.copy_object(Bucket=bucket, Key="d", CopySource={"Bucket": bucket, "Key": "c"}, **ssec(OTHER),
                           CopySourceSSECustomerAlgorithm="AES256", CopySourceSSECustomerKey=src["SSECustomerKey"],
                           CopySourceSSECustomerKeyMD5=src["SSECustomerKeyMD5"])
            assert s3.get_object(Bucket=bucket, Key="d", **ssec(OTHER))["Body"].read() == b"customer"
    finally:
        stop_proxy(p)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    ssec_lines = [r for r in records if r["event"] == "key.object" and r["backend"] == "sse-c"]
    ops = [(r["operation"], r["key"], r["outcome"]) for r in ssec_lines]
    assert ("PutObject", "c", "ok") in ops
    assert ("GetObject", "c", "ok") in ops
    assert ("GetObject", "c", "InvalidWrappedKey") in ops
    assert ("CopyObject", "d", "ok") in ops  # the copy's new wrap under the destination key
    request_ids = [r["request_id"] for r in ssec_lines]
    assert all(request_ids) and len(set(request_ids)) >= 4
    for r in ssec_lines:
        assert r["identity"] == "tester" and r["bucket"] == bucket, r
        assert r["key_id"] in (ssec(CK)["SSECustomerKeyMD5"], ssec(OTHER)["SSECustomerKeyMD5"])
    text = log.read_text()
    for key in (CK, OTHER):
        for secret in (key.hex(), base64.b64encode(key).decode().rstrip("="),
                       base64.urlsafe_b64encode(key).decode().rstrip("=")):
            assert secret not in text
