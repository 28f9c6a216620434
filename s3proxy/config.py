"""Settings: one validated model, loaded once at start.

Sources, later ones winning: built-in defaults, a YAML file (``--config``),
``S3PROXY_*`` environment shortcuts.  Errors name the offending field.
Secrets are ``SecretStr`` and never printed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from s3proxy.keys.settings import KeysSettings, keys_env_overrides


class ConfigError(Exception):
    """Configuration is missing or invalid; the message is safe to print."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def _parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"expected host:port, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class BackendSettings(_Model):
    url: str = "http://127.0.0.1:9000"
    access_key: SecretStr = SecretStr("")
    secret_key: SecretStr = SecretStr("")
    region: str = "us-east-1"
    ca_bundle: Path | None = None
    verify_tls: bool = True
    max_connections: int = Field(256, ge=1)
    # Large GETs fetch ciphertext segments from the backend concurrently
    # (like a download accelerator), decrypting them in order.  1 = one stream.
    get_parallelism: int = Field(4, ge=1, le=32)
    get_segment_size: int = Field(4 * 1024 * 1024, ge=1024 * 1024)
    connect_timeout: float = Field(10.0, gt=0)
    read_timeout: float = Field(300.0, gt=0)
    # Longest a request waits for a free connection when all ``max_connections``
    # are busy; then it is answered 503 SlowDown (the client retries).
    pool_timeout: float = Field(10.0, gt=0)
    # Does the backend give multipart objects "-N" ETags in listings (AWS, MinIO, Ceph do;
    # rclone serve s3 does not)?  "auto": learned (a "-N" seen anywhere means yes, a multipart
    # object seen without it means no; until then plain-ETag listing entries are HEADed once
    # per ETag so sizes are exact); AWS endpoints (amazonaws.com) start as "yes".
    multipart_etags: Literal["auto", "yes", "no"] = "auto"
    # What the backend can do (s3proxy.backend.profiles/probes, docs/BACKENDS.md): a named profile
    # pins the documented set without a request; "auto" probes ``probe_bucket`` (scratch objects
    # under .s3proxy-probe/<random>/, all deleted) in the background at start and every
    # ``probe_interval`` seconds, each probe bounded by ``probe_timeout``.  No ``probe_bucket``:
    # no probe (never a bucket the operator did not name); "custom": nothing pinned or probed.
    profile: Literal["auto", "aws", "minio", "ceph", "rclone", "garage", "seaweedfs", "custom"] = "auto"
    probe_bucket: str | None = None
    probe_interval: float = Field(3600.0, ge=10)
    probe_timeout: float = Field(30.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("backend url must start with http:// or https://")
        parts = urlsplit(v)
        try:
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError:
            raise ValueError("backend url has an invalid port") from None
        if not parts.hostname or any(c.isspace() for c in v) or parts.query or parts.fragment:
            raise ValueError("backend url must look like http(s)://host[:port][/path]")
        return v.rstrip("/")


Action = Literal["read", "write", "list", "delete", "admin"]


class Grant(_Model):
    """Access to a bucket (``*`` for all) and optional key prefix."""

    bucket: str = "*"
    prefix: str = ""
    actions: tuple[Action, ...] = ("read", "write", "list", "delete", "admin")


class Identity(_Model):
    name: str = ""
    access_key: str
    secret_key: SecretStr
    allow: tuple[Grant, ...] = (Grant(),)
    backend_access_key: SecretStr | None = None
    backend_secret_key: SecretStr | None = None


class S3ECSettings(_Model):
    """Reading objects written by the AWS S3 Encryption Client (docs/S3EC.md)."""

    read: bool = False
    # The KMS key the S3 Encryption Client wrapped its data keys with (through the aws-kms
    # key backend); required when read is on.
    kms_key_id: str | None = None
    # AES-CBC content and the context-free "kms" wrap: unauthenticated, off as in the S3EC.
    legacy: bool = False
    # Look for "<key>.instruction" when an object carries no S3EC metadata (one more GET
    # for every plaintext object; V3 objects that need theirs say so and are always looked up).
    instruction_files: bool = False
    instruction_suffix: str = ".instruction"
    # One GCM tag covers the whole object: it is spooled (ciphertext, to spool_dir) and
    # checked before a byte is sent.  Larger objects are refused, never sent unchecked.
    max_object_size: int = Field(default=5 * 1024**3, ge=0)
    spool_dir: Path | None = None

    @model_validator(mode="after")
    def _key_named(self) -> S3ECSettings:
        if self.read and not self.kms_key_id:
            raise ValueError("s3ec.read needs s3ec.kms_key_id: the KMS key the S3 Encryption Client used")
        return self


class NameSettings(_Model):
    """Encrypted object names (docs/NAMES.md): the backend sees only encrypted keys."""

    encrypt: bool = False
    # Length hiding: each segment is padded to a multiple of this many bytes (0: off).
    pad_to: int = Field(0, ge=0, le=256)
    # The most entries (keys and common prefixes) a listing reads from one level, or from a
    # subtree without a delimiter, to return it in plaintext order; larger ones are refused.
    max_level: int = Field(10_000, ge=1, le=1_000_000)


class BucketSettings(_Model):
    mode: Literal["encrypt", "passthrough"] = "encrypt"
    # Serve objects that lack s3proxy metadata (written around the proxy) as
    # plaintext instead of refusing them.
    allow_unencrypted_reads: bool = False
    # The same, only for keys under these prefixes: the allowance while `s3proxy migrate`
    # encrypts a prefix in place (docs/MIGRATION.md); removed once the migration is verified.
    unencrypted_read_prefixes: tuple[str, ...] = ()
    public_read: bool = False
    # Envelope v2 (docs/FORMAT.md 8): the client's x-amz-meta-* (and the verified checksum and
    # MD5 ETag) are stored encrypted inside the envelope; false writes v1 objects with user
    # metadata in plaintext on the backend (readable by either setting).
    seal_metadata: bool = True
    # Object tags (docs/FORMAT.md 8 "t"): "plain" relays them to the backend, where lifecycle
    # and replication rules can filter on them; "sealed" keeps them inside the sealed block
    # (the backend sees none; tagging calls cost a metadata-only self-copy).  Needs seal_metadata.
    tags: Literal["plain", "sealed"] = "plain"
    # System headers kept inside the sealed block ("h") instead of on the backend (which then
    # serves application/octet-stream and no disposition or language).  Empty by default:
    # presigned browser downloads need the backend to serve Content-Type itself.
    seal_headers: tuple[Literal["content-type", "content-disposition", "content-language"], ...] = ()
    s3ec: S3ECSettings = S3ECSettings()
    names: NameSettings = NameSettings()  # encrypted object names (issue 15 item 3, docs/NAMES.md)

    @field_validator("seal_headers", mode="before")
    @classmethod
    def _header_names(cls, v: object) -> object:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list | tuple):
            return tuple(dict.fromkeys(h.strip().lower() if isinstance(h, str) else h for h in v))
        return v

    @model_validator(mode="after")
    def _sealing_needs_v2(self) -> BucketSettings:
        if (self.tags == "sealed" or self.seal_headers) and (self.mode != "encrypt" or not self.seal_metadata):
            raise ValueError("tags: sealed and seal_headers need mode: encrypt and seal_metadata: true (the sealed block)")
        return self

    @model_validator(mode="after")
    def _names_need_encryption(self) -> BucketSettings:
        if self.names.encrypt and self.mode != "encrypt":
            raise ValueError("names.encrypt needs mode: encrypt (the proxy lists and maps the names)")
        return self

    def allows_unencrypted(self, key: str | None) -> bool:
        """Whether an object at ``key`` that has no s3proxy envelope is served as plaintext."""
        if self.allow_unencrypted_reads:
            return True
        return key is not None and any(key.startswith(p) for p in self.unencrypted_read_prefixes)


class TLSSettings(_Model):
    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None
    self_signed: bool = False


class LogSettings(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    access_log: bool = True


class LimitSettings(_Model):
    max_xml_body: int = Field(2 * 1024 * 1024, ge=1024)
    max_header_size: int = Field(16 * 1024, ge=1024)
    # Plaintext limits chosen so that the ciphertext stays within S3's 5 GiB
    # PUT / UploadPart / CopyObject limits (see docs/FORMAT.md for the overheads).
    max_object_size: int = Field(5_363_471_288, ge=1)
    max_part_size: int = Field(5 * 1024**3 - 16_454, ge=1)
    # Resource limits, per worker process.  Over a request limit the client gets
    # 503 SlowDown with Retry-After (S3 clients back off and retry).
    max_connections: int = Field(4096, ge=1)  # open client connections; more are refused with 503
    max_requests: int = Field(1024, ge=1)  # requests in flight, all clients together
    # Requests in flight per access key (anonymous requests share one budget).
    # Keep it below backend.max_connections so one client cannot hold every
    # backend connection.
    max_requests_per_identity: int = Field(128, ge=1)
    # Seconds the proxy may wait for the next byte of a request body; then the
    # request ends with 400 RequestTimeout and nothing is stored.  Time spent
    # while the proxy itself is not reading (backend backpressure) does not count.
    body_idle_timeout: float = Field(60.0, gt=0)
    # Seconds a client may take no byte of a response the proxy is writing (it stopped
    # reading); then the connection is closed, freeing its request slot and backend
    # connections.  A slow but steady reader is never cut.
    send_idle_timeout: float = Field(60.0, gt=0)
    # Seconds from the first byte of a request to the end of its headers (slowloris).
    header_timeout: float = Field(30.0, gt=0)
    # Seconds an idle keep-alive connection (or one that never sends a request) stays open.
    keepalive_timeout: float = Field(75.0, gt=0)
    retry_after: int = Field(1, ge=0)  # Retry-After seconds on 503 SlowDown


class Settings(_Model):
    listen: str = "127.0.0.1:8080"
    admin_listen: str | None = None
    base_domain: str | None = None  # enables virtual-hosted-style addressing
    clock_skew_seconds: int = Field(900, ge=0)
    backend: BackendSettings = BackendSettings()
    identities: tuple[Identity, ...] = ()
    buckets: dict[str, BucketSettings] = {}
    default_bucket: BucketSettings = BucketSettings()
    keys: KeysSettings = Field(default_factory=KeysSettings)
    tls: TLSSettings = TLSSettings()
    log: LogSettings = LogSettings()
    limits: LimitSettings = LimitSettings()
    workers: int = Field(1, ge=1)
    shutdown_timeout: float = Field(30.0, ge=0)
    require_https_for_sse_c: bool = True
    # SigV2 (boto3's default presigned URLs, legacy tools); SigV4 is always accepted.
    allow_sigv2: bool = True

    @field_validator("listen", "admin_listen")
    @classmethod
    def _hostport(cls, v: str | None) -> str | None:
        if v is not None:
            _parse_hostport(v)
        return v

    @property
    def listen_addr(self) -> tuple[str, int]:
        return _parse_hostport(self.listen)

    @property
    def admin_addr(self) -> tuple[str, int] | None:
        return _parse_hostport(self.admin_listen) if self.admin_listen else None

    def bucket(self, name: str) -> BucketSettings:
        return self.buckets.get(name, self.default_bucket)


_ENV_SHORTCUTS: dict[str, tuple[str, ...]] = {
    "S3PROXY_LISTEN": ("listen",),
    "S3PROXY_ADMIN_LISTEN": ("admin_listen",),
    "S3PROXY_BASE_DOMAIN": ("base_domain",),
    "S3PROXY_BACKEND_URL": ("backend", "url"),
    "S3PROXY_BACKEND_ACCESS_KEY": ("backend", "access_key"),
    "S3PROXY_BACKEND_SECRET_KEY": ("backend", "secret_key"),
    "S3PROXY_BACKEND_REGION": ("backend", "region"),
    "S3PROXY_BACKEND_CA_BUNDLE": ("backend", "ca_bundle"),
    "S3PROXY_BACKEND_MAX_CONNECTIONS": ("backend", "max_connections"),
    "S3PROXY_BACKEND_POOL_TIMEOUT": ("backend", "pool_timeout"),
    "S3PROXY_BACKEND_PROFILE": ("backend", "profile"),
    "S3PROXY_BACKEND_PROBE_BUCKET": ("backend", "probe_bucket"),
    "S3PROXY_MAX_CONNECTIONS": ("limits", "max_connections"),
    "S3PROXY_MAX_REQUESTS": ("limits", "max_requests"),
    "S3PROXY_MAX_REQUESTS_PER_IDENTITY": ("limits", "max_requests_per_identity"),
    "S3PROXY_BODY_IDLE_TIMEOUT": ("limits", "body_idle_timeout"),
    "S3PROXY_SEND_IDLE_TIMEOUT": ("limits", "send_idle_timeout"),
    "S3PROXY_HEADER_TIMEOUT": ("limits", "header_timeout"),
    "S3PROXY_KEEPALIVE_TIMEOUT": ("limits", "keepalive_timeout"),
    "S3PROXY_TLS_CERT": ("tls", "cert"),
    "S3PROXY_TLS_KEY": ("tls", "key"),
    "S3PROXY_TLS_CLIENT_CA": ("tls", "client_ca"),
    "S3PROXY_LOG_LEVEL": ("log", "level"),
    "S3PROXY_LOG_FORMAT": ("log", "format"),
    "S3PROXY_WORKERS": ("workers",),
    "S3PROXY_DEFAULT_BUCKET_MODE": ("default_bucket", "mode"),
}


def _set_path(d: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        nxt = d.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            d[part] = nxt
        d = nxt
    d[path[-1]] = value


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for name, path in _ENV_SHORTCUTS.items():
        if environ.get(name):
            _set_path(d, path, environ[name])
    ak, sk = environ.get("S3PROXY_ACCESS_KEY"), environ.get("S3PROXY_SECRET_KEY")
    if ak or sk:
        if not (ak and sk):
            raise ConfigError("S3PROXY_ACCESS_KEY and S3PROXY_SECRET_KEY must be set together")
        d["identities"] = [{"name": "default", "access_key": ak, "secret_key": sk}]
    keys = keys_env_overrides(environ)
    if keys:
        d["keys"] = keys
    return d


def _without_file_master_keys(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """``S3PROXY_MASTER_KEY`` replaces the file's ``keys.local.master_keys`` (and its default id).

    Like every environment shortcut it wins over the file, here as a whole: the
    key it brings (id ``S3PROXY_MASTER_KEY_ID``, else ``default``) is the
    keyring, not an addition to keys (or placeholders) listed in the file.
    Older keys that must stay readable go in ``keys.local.master_key_file``.
    """
    keys = data.get("keys")
    if not environ.get("S3PROXY_MASTER_KEY") or not isinstance(keys, dict):
        return data
    local = keys.get("local")
    if not isinstance(local, dict):
        return data
    local = {k: v for k, v in local.items() if k not in ("master_keys", "default_key_id")}
    return {**data, "keys": {**keys, "local": local}}


def _format_validation(err: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load and validate settings from an optional YAML file and the environment."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not UTF-8 text") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path} must hold a mapping at top level")
        data = raw
    data = _merge(_without_file_master_keys(data, environ), env_overrides(environ))
    if overrides:
        data = _merge(data, overrides)
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation(e)) from None
