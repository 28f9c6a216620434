"""Keys with dot segments: a prefix grant must hold on what the backend stores (A6).

An identity granted only ``mallory/`` names ``mallory/../victim/x``: if anything between the
grant check and the backend normalised the path, she would write or read ``victim/x``.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.adversarial.conftest import MALLORY_AK, MALLORY_SK
from tests.integration.helpers import send_signed, sign


@pytest.mark.parametrize("key", ["mallory/../victim/x", "mallory/./../victim/x", "mallory/%2e%2e/victim/x",
                                 "mallory/..%2fvictim/x", "mallory//../victim/x"])
def test_dot_segments_never_leave_the_granted_prefix(attack_proxy: Any, victim: Any, storage: Any, key: str) -> None:
    b = "adv-" + uuid.uuid4().hex[:12]
    victim.create_bucket(Bucket=b)
    try:
        victim.put_object(Bucket=b, Key="victim/x", Body=b"victim's secret")
        # raw request so that no client library normalises the path first
        path = f"{attack_proxy.url}/{b}/{key}"
        put = send_signed(sign("PUT", path, MALLORY_AK, MALLORY_SK, body=b"mallory's bytes"), url=path)
        get = send_signed(sign("GET", path, MALLORY_AK, MALLORY_SK), url=path)
        assert b"victim's secret" not in (get.body or b"")
        assert victim.get_object(Bucket=b, Key="victim/x")["Body"].read() == b"victim's secret"
        assert put.status is not None and put.status < 500
        stored = {o["Key"] for o in storage.list_objects_v2(Bucket=b).get("Contents", [])}
        if put.status == 200:  # stored under the literal key, inside her prefix
            assert stored == {"victim/x", key}, stored
    finally:
        for o in storage.list_objects_v2(Bucket=b).get("Contents", []):
            storage.delete_object(Bucket=b, Key=o["Key"])
        storage.delete_bucket(Bucket=b)
