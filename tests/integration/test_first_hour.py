"""A new user's first hour (issue 13): the CLI as it is run on a fresh clone.

Start-up problems end with one line and exit code 2 (no traceback), the
check-config verdict matches what serve would do, the environment shortcuts
work alone, every option is documented, and the lines ``s3proxy dev`` prints
run as printed.  Everything runs ``python -m s3proxy`` as a subprocess on
free loopback ports.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest

from s3proxy.cli import build_parser
from s3proxy.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
MASTER_KEY = base64.b64encode(b"k" * 32).decode()
IDENTITY = {"S3PROXY_ACCESS_KEY": "first-hour-ak", "S3PROXY_SECRET_KEY": "first-hour-sk"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def port_in_use() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any S3PROXY_* / AWS_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3PROXY_", "AWS_"))}
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "s3proxy", *args], env=env if env is not None else clean_env(),
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
    )


def assert_one_line_failure(cp: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2 with one ``s3proxy: ...`` line (a configuration error lists its fields indented below it)."""
    assert cp.returncode == 2, (cp.returncode, cp.stdout, cp.stderr)
    assert "Traceback" not in cp.stderr + cp.stdout
    assert "Unclosed" not in cp.stderr
    lines = [line for line in cp.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("s3proxy: "), cp.stderr
    if lines[0] == "s3proxy: invalid configuration:":
        assert all(line.startswith("  ") for line in lines[1:]), cp.stderr
    else:
        assert len(lines) == 1, cp.stderr
    text = "\n".join(lines)
    for needle in needles:
        assert needle in text, text
    return text


# -- ports in use --------------------------------------------------------------------


def test_serve_port_in_use_is_one_line_exit_2() -> None:
    with port_in_use() as port:
        cp = run("serve", "--listen", f"127.0.0.1:{port}",
                 env=clean_env(S3PROXY_MASTER_KEY=MASTER_KEY, **IDENTITY))
    assert_one_line_failure(cp, f"127.0.0.1:{port}", "in use", "--listen", "S3PROXY_LISTEN")


def test_serve_port_in_use_via_environment() -> None:
    with port_in_use() as port:
        cp = run("serve", env=clean_env(S3PROXY_MASTER_KEY=MASTER_KEY, S3PROXY_LISTEN=f"127.0.0.1:{port}", **IDENTITY))
    assert_one_line_failure(cp, f"127.0.0.1:{port}", "in use")


def test_admin_port_in_use_is_one_line_exit_2() -> None:
    with port_in_use() as port:
        cp = run("serve", "--listen", f"127.0.0.1:{free_port()}",
                 env=clean_env(S3PROXY_MASTER_KEY=MASTER_KEY, S3PROXY_ADMIN_LISTEN=f"127.0.0.1:{port}", **IDENTITY))
    assert_one_line_failure(cp, f"127.0.0.1:{port}", "admin_listen", "in use", "S3PROXY_ADMIN_LISTEN")


def test_dev_port_in_use_is_one_line_exit_2(tmp_path: Path) -> None:
    with port_in_use() as port:
        cp = run("dev", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "dev"))
        cp_env = run("dev", "--data-dir", str(tmp_path / "dev"), env=clean_env(S3PROXY_LISTEN=f"127.0.0.1:{port}"))
    assert_one_line_failure(cp, f"127.0.0.1:{port}", "in use", "--listen", "S3PROXY_LISTEN")
    assert_one_line_failure(cp_env, f"127.0.0.1:{port}", "in use")


# -- other start-up failures -----------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "args", "needle"),
    [
        ({"S3PROXY_TLS_CERT": "/nonexistent/cert.pem", "S3PROXY_TLS_KEY": "/nonexistent/key.pem"}, (), "tls.cert"),
        ({"S3PROXY_TLS_CERT": "README.md", "S3PROXY_TLS_KEY": "README.md"}, (), "TLS certificate"),
        ({}, ("--config", "/nonexistent/s3proxy.yaml"), "cannot read config file"),
        ({"S3PROXY_MASTER_KEY": "not-base64!"}, (), "invalid key configuration"),
        ({"S3PROXY_BACKEND_URL": "http://host:port"}, (), "backend.url"),
        ({"S3PROXY_LISTEN": "no-such-host.invalid:8080"}, (), "no-such-host.invalid"),
    ],
    ids=["tls-missing", "tls-garbage", "config-missing", "bad-master-key", "backend-url", "unknown-host"],
)
def test_startup_failures_are_one_line(env: dict[str, str], args: tuple[str, ...], needle: str) -> None:
    cp = run("serve", *args, env=clean_env(**{"S3PROXY_MASTER_KEY": MASTER_KEY, **IDENTITY, **env}))
    assert_one_line_failure(cp, needle)
    assert MASTER_KEY not in cp.stderr


# -- check-config -------------------------------------------------------------------------


def test_check_config_refuses_no_identities() -> None:
    cp = run("check-config", env=clean_env(S3PROXY_MASTER_KEY=MASTER_KEY))
    assert_one_line_failure(cp, "no client identity", "S3PROXY_ACCESS_KEY")


def test_check_config_warns_about_default_backend() -> None:
    cp = run("check-config", env=clean_env(S3PROXY_MASTER_KEY=MASTER_KEY, **IDENTITY))
    assert cp.returncode == 0, cp.stderr
    assert "configuration OK" in cp.stdout
    assert "warning: backend.url is not configured" in cp.stderr
    assert "warning: backend credentials are empty" in cp.stderr
    configured = clean_env(S3PROXY_MASTER_KEY=MASTER_KEY, S3PROXY_BACKEND_URL="http://127.0.0.1:9",
                           S3PROXY_BACKEND_ACCESS_KEY="bk", S3PROXY_BACKEND_SECRET_KEY="bs", **IDENTITY)
    cp = run("check-config", env=configured)
    assert cp.returncode == 0 and "warning" not in cp.stderr, cp.stderr


def test_master_key_env_alone_works() -> None:
    # Alone, and over the example configuration (whose key is a placeholder).
    cp = run("check-config", env=clean_env(S3PROXY_MASTER_KEY=MASTER_KEY, **IDENTITY))
    assert cp.returncode == 0, cp.stderr
    cp = run("check-config", "--config", "config/s3proxy.example.yaml", env=clean_env(S3PROXY_MASTER_KEY=MASTER_KEY))
    assert cp.returncode == 0, cp.stderr
    assert MASTER_KEY not in cp.stdout + cp.stderr
    settings = load_settings(ROOT / "config/s3proxy.example.yaml", environ={"S3PROXY_MASTER_KEY": MASTER_KEY})
    assert settings.keys.local is not None
    assert list(settings.keys.local.master_keys) == ["default"]
    assert settings.keys.local.default_key_id == "default"
    with_id = load_settings(environ={"S3PROXY_MASTER_KEY": MASTER_KEY, "S3PROXY_MASTER_KEY_ID": "2027-01"})
    assert with_id.keys.local is not None and list(with_id.keys.local.master_keys) == ["2027-01"]


# -- help and version -----------------------------------------------------------------------


def test_version() -> None:
    cp = run("--version")
    assert cp.returncode == 0
    assert cp.stdout.strip() == f"s3proxy {version('s3proxy')}"


def test_every_option_has_help_and_a_default() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    choices: dict[str, object] = subparsers.choices  # type: ignore[assignment]
    assert {"serve", "dev", "check-config", "rewrap", "doctor", "decrypt", "migrate", "export"} <= set(choices)
    config_help = set()
    for name in choices:
        cp = run(name, "--help")
        assert cp.returncode == 0, cp.stderr
        text = " ".join(cp.stdout.split())  # argparse wraps lines
        sub = choices[name]
        for action in sub._actions:  # type: ignore[attr-defined]
            if "-h" in action.option_strings:
                continue
            assert action.help, f"{name} {action.option_strings} has no help"
            assert action.option_strings[0] in text
            assert "default" in action.help or "required" in action.help or action.default not in (None, False), (
                f"{name} {action.option_strings}: help does not say the default"
            )
            if action.dest == "config":
                config_help.add(action.help)
        assert "(default:" in text
    assert len(config_help) == 1  # one wording of --config everywhere


# -- serve and dev running ---------------------------------------------------------------------


def _wait_for(proc: subprocess.Popen[str], pattern: str, timeout: float = 20) -> list[str]:
    """Lines of ``proc``'s merged output up to the first one matching ``pattern``."""
    lines: list[str] = []
    seen = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if re.search(pattern, line):
                seen.set()
        seen.set()  # EOF: the process ended

    threading.Thread(target=read, daemon=True).start()
    seen.wait(timeout)
    if not any(re.search(pattern, line) for line in lines):
        raise AssertionError(f"{pattern!r} not seen; output:\n" + "\n".join(lines))
    return list(lines)


@contextlib.contextmanager
def started(args: list[str], env: dict[str, str], cwd: Path = ROOT) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3proxy", *args], env=env, cwd=cwd,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_warns_when_backend_does_not_answer_and_starts_anyway() -> None:
    port, dead = free_port(), free_port()
    env = clean_env(S3PROXY_MASTER_KEY=MASTER_KEY, S3PROXY_BACKEND_URL=f"http://127.0.0.1:{dead}",
                    S3PROXY_BACKEND_ACCESS_KEY="bk", S3PROXY_BACKEND_SECRET_KEY="bs",
                    S3PROXY_LOG_FORMAT="console", **IDENTITY)
    with started(["serve", "--listen", f"127.0.0.1:{port}"], env) as proc:
        lines = _wait_for(proc, "server.started")
    text = "\n".join(lines)
    assert "backend.unreachable" in text and f"127.0.0.1:{dead}" in text
    assert "Traceback" not in text


def test_dev_prints_runnable_aws_lines(tmp_path: Path) -> None:
    port = free_port()
    with started(["dev", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "dev")], clean_env()) as proc:
        lines = _wait_for(proc, r"\bs3 ls\b")
        export = next(line for line in lines if line.strip().startswith("export AWS_ACCESS_KEY_ID="))
        ls_line = next(line for line in lines if " s3 ls " in line)
        cp_line = next(line for line in lines if " s3 cp " in line)
        assert f"--endpoint-url http://127.0.0.1:{port}" in ls_line and f"http://127.0.0.1:{port}" in cp_line
        argv = shlex.split(ls_line)
        aws = argv[0]
        # Either a full path that exists, or `aws` on PATH (never a command that is not there).
        assert Path(aws).is_file() if os.sep in aws else shutil.which(aws), ls_line
        env = clean_env()
        for assignment in shlex.split(export.strip())[1:]:
            name, _, value = assignment.partition("=")
            env[name] = value
        result = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr


# -- CI must not skip the HSM tests ------------------------------------------------------------


def test_missing_softhsm_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests import softhsm

    monkeypatch.setattr(softhsm.shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        softhsm.softhsm_missing()
    monkeypatch.setenv("CI", "false")
    assert "softhsm2-util" in (softhsm.softhsm_missing() or "")
