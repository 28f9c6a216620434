"""Fixtures for the attack suite: the attackers of docs/THREAT_MODEL.md as clients.

- ``victim``: an identity with full grants (the data owner).
- ``mallory``: a limited identity (A6) that may read, write, list and delete only under
  ``mallory/`` in every bucket: the "client with write access to any key in the bucket".
- ``storage``: a client straight to the backend with the backend's credentials (A1-A3).
- anonymous requests are made with ``tests.integration.helpers.send`` and no signature.

The proxy here runs in front of the suite's backend (``S3PROXY_TEST_BACKEND``; the strict
embedded store by default; with moto, which accepts requests AWS refuses (an upload id under
another key, two auth mechanisms), a defence that holds does not lean on the backend).
``strict_proxy`` always runs in front of the embedded devstore, which refuses them.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CLIENT_AK, CLIENT_SK, Backend, Proxy, proxy_settings, start_proxy, stop_proxy

MALLORY_AK = "AKIDS3PROXYMALLORY01"
MALLORY_SK = "s3proxy-test-secret-key-mallory-00000001"
STORE_AK = "ADVERSARIALSTORE0001"
STORE_SK = "adversarial-store-secret-0000000000001"

IDENTITIES = [
    {"name": "victim", "access_key": CLIENT_AK, "secret_key": CLIENT_SK},
    {"name": "mallory", "access_key": MALLORY_AK, "secret_key": MALLORY_SK,
     "allow": [{"bucket": "*", "prefix": "mallory/", "actions": ["read", "write", "list", "delete"]}]},
]


@pytest.fixture(scope="module")
def attack_proxy(backend: Backend) -> Iterator[Proxy]:
    p = start_proxy(proxy_settings(backend, identities=IDENTITIES, buckets={"plain-passthrough": {"mode": "passthrough"}}))
    yield p
    stop_proxy(p)


@pytest.fixture()
def victim(attack_proxy: Proxy) -> Any:
    return attack_proxy.client(CLIENT_AK, CLIENT_SK)


@pytest.fixture()
def mallory(attack_proxy: Proxy) -> Any:
    return attack_proxy.client(MALLORY_AK, MALLORY_SK)


@pytest.fixture()
def enc_bucket(victim: Any) -> Iterator[str]:
    """A fresh encrypted bucket of the victim's, emptied and removed afterwards."""
    name = "adv-" + uuid.uuid4().hex[:12]
    victim.create_bucket(Bucket=name)
    yield name
    for o in victim.list_objects_v2(Bucket=name).get("Contents", []):
        victim.delete_object(Bucket=name, Key=o["Key"])
    victim.delete_bucket(Bucket=name)


@pytest.fixture()
def storage(backend: Backend) -> Any:
    return backend.client()


@pytest.fixture(scope="module")
def devstore_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    from s3proxy.devstore import start_devstore

    root: Path = tmp_path_factory.mktemp("adversarial-devstore")
    loop = asyncio.new_event_loop()
    box: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    t = threading.Thread(target=run, daemon=True, name="adversarial-devstore")
    t.start()
    box["runner"], box["port"] = asyncio.run_coroutine_threadsafe(
        start_devstore(root, {STORE_AK: STORE_SK}, "127.0.0.1", 0), loop
    ).result(30)
    yield Backend(f"http://127.0.0.1:{box['port']}", STORE_AK, STORE_SK, "us-east-1", "devstore")
    asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    t.join(10)


@pytest.fixture(scope="module")
def strict_proxy(devstore_backend: Backend) -> Iterator[Proxy]:
    p = start_proxy(proxy_settings(devstore_backend, identities=IDENTITIES,
                                   buckets={"plain-passthrough": {"mode": "passthrough"}}))
    yield p
    stop_proxy(p)
