"""The backend matrix of the integration suite (tests/conftest.py): kinds, capabilities, skips.

A test that needs what a backend kind lacks is skipped with the capability named, never silently;
an unknown kind or capability is a usage error, not a silent pass.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ALL_CAPABILITIES, BACKEND_KINDS, CAPABILITIES, ROOT

NAMED_VERSION = "tests/integration/test_s3_compat.py::test_self_copy_of_a_named_version_is_a_restore"


def _pytest(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("S3PROXY_TEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *args],
        cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=300,
    )


def test_capability_table_is_closed() -> None:
    assert set(CAPABILITIES) == {*BACKEND_KINDS, "external"}
    for kind, caps in CAPABILITIES.items():
        assert caps <= ALL_CAPABILITIES | {"lenient_auth"}, kind
    assert "lenient_auth" not in CAPABILITIES["strict"]
    assert CAPABILITIES["strict"] >= {"versioning", "conditional_reads", "conditional_writes", "multipart_etags"}


def test_a_missing_capability_is_a_named_skip() -> None:
    cp = _pytest(NAMED_VERSION, S3PROXY_TEST_BACKEND="rclone")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "backend 'rclone' lacks versioning" in cp.stdout, cp.stdout


def test_an_external_backend_can_declare_what_it_lacks() -> None:
    cp = _pytest(NAMED_VERSION, "--collect-only", S3PROXY_TEST_BACKEND_URL="http://127.0.0.1:9",
                 S3PROXY_TEST_BACKEND_LACKS="versioning")
    assert cp.returncode == 0, cp.stdout + cp.stderr


@pytest.mark.parametrize("env", [{"S3PROXY_TEST_BACKEND": "minio"}])
def test_an_unknown_kind_is_a_usage_error(env: dict[str, str]) -> None:
    cp = _pytest(NAMED_VERSION, "--collect-only", **env)
    assert cp.returncode == 4 and "expected one of strict, moto, rclone" in cp.stdout + cp.stderr
