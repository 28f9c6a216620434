"""Fixtures of the key tests: a moto KMS server over HTTP, a SoftHSM2 token, fake clocks."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.softhsm import SOFTHSM_MODULE, fresh_token, softhsm_missing

TOKEN_LABEL = "s3proxy-test"
TOKEN_PIN = "s3proxy-user-pin-4711"
TOKEN_SO_PIN = "s3proxy-so-pin-0815"


class FakeClock:
    """A settable monotonic clock for the cache and manager."""

    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def closed_port_url() -> str:
    """An http URL on which nothing listens (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


def b64key(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# -- AWS KMS on moto's server mode --------------------------------------------


@dataclass
class MotoKms:
    url: str
    region: str
    key_arns: list[str]
    alias: str
    access_key_id: str = "AKIAS3PROXYTEST"
    secret_access_key: str = "s3proxy-test-secret-ZyX"

    def boto_client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "kms",
            endpoint_url=self.url,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def new_key(self) -> str:
        arn: str = self.boto_client().create_key(Description="s3proxy test")["KeyMetadata"]["Arn"]
        return arn


@pytest.fixture(scope="session")
def moto_kms() -> Iterator[MotoKms]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        kms = MotoKms(url=f"http://{host}:{port}", region="us-east-1", key_arns=[], alias="alias/s3proxy-test")
        client = kms.boto_client()
        for _ in range(2):
            kms.key_arns.append(client.create_key(Description="s3proxy test")["KeyMetadata"]["Arn"])
        client.create_alias(AliasName=kms.alias, TargetKeyId=kms.key_arns[0])
        yield kms
    finally:
        server.stop()


# -- SoftHSM2 -------------------------------------------------------------------


@dataclass
class SoftHsm:
    module: str
    token_label: str
    pin: str
    conf: Path
    # label of an RSA key pair whose private half also exists in software
    soft_rsa_label: str = "rsa-soft"
    soft_rsa_private_pem: bytes = b""
    pub_only_label: str = "rsa-pubonly"
    labels: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """A fresh token in a temp dir with AES and RSA keys; created before the module is first loaded."""
    reason = softhsm_missing()
    if reason is not None:
        pytest.skip(reason)
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from pkcs11 import Attribute, KeyType, ObjectClass
    from pkcs11.util.rsa import decode_rsa_private_key, decode_rsa_public_key

    root = tmp_path_factory.mktemp("softhsm")
    with fresh_token(root, TOKEN_LABEL, TOKEN_PIN, TOKEN_SO_PIN) as (token, conf):
        secret = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False}
        soft = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pub_only = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with token.open(rw=True, user_pin=TOKEN_PIN) as session:
            for label in ("kek-1", "kek-2"):
                session.generate_key(KeyType.AES, 256, label=label, store=True, template=secret)
            session.generate_key(
                KeyType.AES, 256, label="kek-extractable", store=True,
                template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
            )
            for label in ("rsa-1", "rsa-2"):
                session.generate_keypair(
                    KeyType.RSA, 2048, label=label, store=True, private_template=secret
                )
            der = soft.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
            private_attrs = decode_rsa_private_key(der)
            private_attrs.update({Attribute.TOKEN: True, Attribute.LABEL: "rsa-soft", **secret})
            session.create_object(private_attrs)
            for label, key in (("rsa-soft", soft), ("rsa-pubonly", pub_only)):
                pub_der = key.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.PKCS1
                )
                public_attrs = decode_rsa_public_key(pub_der)
                public_attrs.update({Attribute.TOKEN: True, Attribute.LABEL: label})
                session.create_object(public_attrs)
            assert session.get_key(object_class=ObjectClass.PRIVATE_KEY, label="rsa-soft")
        yield SoftHsm(
            module=SOFTHSM_MODULE,
            token_label=TOKEN_LABEL,
            pin=TOKEN_PIN,
            conf=conf,
            soft_rsa_private_pem=soft.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
