"""A fresh SoftHSM2 token for tests: one place that knows how to make one."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def in_ci() -> bool:
    """``CI=true`` (set by CI services and by ``.ci/run``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def softhsm_missing() -> str | None:
    """Why SoftHSM2 tests can't run here, or None (the caller skips).

    Under CI (``CI=true``) a missing SoftHSM2 fails the test instead: CI must
    not pass with every PKCS#11 test silently skipped.
    """
    reason = None
    if shutil.which("softhsm2-util") is None:
        reason = "softhsm2-util not installed (apt-get install softhsm2)"
    elif not os.path.exists(SOFTHSM_MODULE):
        reason = f"SoftHSM2 module {SOFTHSM_MODULE} not installed (apt-get install softhsm2)"
    if reason is not None and in_ci():
        import pytest

        pytest.fail(f"{reason}; CI=true: the PKCS#11 tests must run (scripts/system-deps.sh installs SoftHSM2)",
                    pytrace=False)
    return reason


@contextlib.contextmanager
def fresh_token(root: Path, label: str, pin: str, so_pin: str) -> Iterator[tuple[Any, Path]]:
    """Initialise token ``label`` in a token directory under ``root`` (SOFTHSM2_CONF points
    there while the context is open); yields (the python-pkcs11 token, the conf file)."""
    import pkcs11

    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
        "slots.removable = false\n"
    )
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", so_pin],
            check=True, capture_output=True, env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        )
        lib = pkcs11.lib(SOFTHSM_MODULE)
        lib.reinitialize()  # the module may have been loaded (and initialised) by another test already
        yield lib.get_token(token_label=label), conf
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous
