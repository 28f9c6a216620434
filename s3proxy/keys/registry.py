"""Key backends by name, and ``build_key_manager`` (the app's one entry point).

Backend modules are imported only when configured, so an optional dependency
(aiobotocore, python-pkcs11) that is missing fails with an install hint, and
only for the backend that needs it.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from prometheus_client import CollectorRegistry

from .audit import AuditLog
from .base import KeyBackend, KeyConfigError
from .cache import DataKeyCache
from .manager import KeyManager
from .policy import KeyPolicy
from .settings import KeysSettings


@dataclass(frozen=True)
class BackendSpec:
    name: str
    module: str  # importable module holding the class
    class_name: str
    settings_field: str  # the KeysSettings attribute of its section
    requires: tuple[str, ...]  # top-level modules of optional dependencies
    install_hint: str


BACKENDS: Mapping[str, BackendSpec] = MappingProxyType(
    {
        "local": BackendSpec(
            name="local",
            module="s3proxy.keys.local",
            class_name="LocalKeyBackend",
            settings_field="local",
            requires=("cryptography",),
            install_hint="pip install cryptography",
        ),
        "aws-kms": BackendSpec(
            name="aws-kms",
            module="s3proxy.keys.aws_kms",
            class_name="AwsKmsBackend",
            settings_field="aws_kms",
            requires=("aiobotocore", "botocore", "aiohttp"),
            install_hint="pip install 's3proxy[kms]' (aiobotocore)",
        ),
        "pkcs11": BackendSpec(
            name="pkcs11",
            module="s3proxy.keys.pkcs11",
            class_name="Pkcs11Backend",
            settings_field="pkcs11",
            requires=("pkcs11",),
            install_hint=(
                "pip install 's3proxy[pkcs11]' (python-pkcs11; and install your HSM's PKCS#11 module, e.g. apt-get install softhsm2)"
            ),
        ),
    }
)


class BackendUnavailableError(KeyConfigError):
    """A configured backend's optional dependency is not installed."""


def backend_class(name: str) -> type[KeyBackend]:
    """The class of backend ``name``, importing its module (and dependencies) now."""
    spec = BACKENDS.get(name)
    if spec is None:
        raise KeyConfigError(f"unknown key backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing in spec.requires:
            raise BackendUnavailableError(
                f"the {name!r} key backend needs the {missing!r} module, which is not installed: {spec.install_hint}"
            ) from exc
        raise
    cls: type[KeyBackend] = getattr(module, spec.class_name)
    return cls


def create_backend(name: str, settings: KeysSettings) -> KeyBackend:
    spec = BACKENDS.get(name)
    if spec is None:
        raise KeyConfigError(f"unknown key backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    section = getattr(settings, spec.settings_field)
    if section is None:
        raise KeyConfigError(f"key backend {name!r} has no settings (keys.{spec.settings_field})")
    cls = backend_class(name)
    backend: KeyBackend = cls.from_settings(section)  # type: ignore[attr-defined]
    return backend


def build_key_manager(
    settings: KeysSettings,
    *,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.monotonic,
    audit: AuditLog | None = None,
) -> KeyManager:
    """Build the backends (lazily connecting), the cache, the policy and the audit log.

    The selected ``keys.backend`` writes; every other backend with a section
    is built too, so objects wrapped by it stay readable (migration).  Raises
    KeyConfigError (never mentioning a secret) when the configuration is unusable.
    """
    backends: dict[str, KeyBackend] = {}
    for name in settings.configured_backends():
        backends[name] = create_backend(name, settings)
    write_backend = backends[settings.backend]
    default_key_id = settings.default_key_id or getattr(write_backend, "default_key_id", None)
    if not default_key_id:
        raise KeyConfigError(f"no default key for the {settings.backend!r} backend (keys.default_key_id)")
    policy = KeyPolicy(default_key_id, settings.rules, settings.allowed_client_keys)
    cache = DataKeyCache.from_settings(settings.cache, clock=clock, registry=registry)
    return KeyManager(
        backends=backends,
        write_backend=settings.backend,
        policy=policy,
        cache=cache,
        audit=audit if audit is not None else AuditLog.from_settings(settings.audit),
        clock=clock,
        registry=registry,
    )
