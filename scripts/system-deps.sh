#!/usr/bin/env bash
# System packages a fresh machine needs: make and python3-venv (to build .venv)
# and SoftHSM2 (a real PKCS#11 token for the tests).  Installs the missing ones
# with apt-get (after apt-get update) when we are root or have password-less
# sudo; otherwise says how.  Without SoftHSM2 the PKCS#11 tests are skipped,
# except under CI=true, where anything missing is an error (exit 1): CI must
# not pass with the HSM tests silently skipped.
set -euo pipefail

PY=${PY:-python3}
SOFTHSM_MODULE=/usr/lib/softhsm/libsofthsm2.so

in_ci() {
  case "${CI:-}" in [Tt]rue | 1 | [Yy]es) return 0 ;; *) return 1 ;; esac
}

missing_packages() {
  local out=()
  command -v make >/dev/null 2>&1 || out+=(make)
  if ! command -v "$PY" >/dev/null 2>&1; then
    out+=(python3 python3-venv)
  elif ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    out+=(python3-venv) # Debian splits ensurepip (needed by `python3 -m venv`) out of python3
  fi
  if ! command -v softhsm2-util >/dev/null 2>&1 || [ ! -e "$SOFTHSM_MODULE" ]; then
    out+=(softhsm2)
  fi
  echo "${out[*]:-}"
}

missing=$(missing_packages)
[ -z "$missing" ] && exit 0

sudo=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo="sudo -n"
fi
if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; }; then
  echo "system-deps: installing $missing (apt-get)" >&2
  # shellcheck disable=SC2086  # $missing is a list of package names
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
  # shellcheck disable=SC2086
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  missing=$(missing_packages)
  [ -z "$missing" ] && exit 0
fi

hint="sudo apt-get install $missing"
if in_ci; then
  echo "system-deps: error: missing $missing and cannot install them here ($hint); CI=true needs them all" >&2
  exit 1
fi
if [ "$missing" != softhsm2 ]; then
  echo "system-deps: error: missing $missing ($hint)" >&2
  exit 1
fi
echo "note: SoftHSM2 is not installed ($hint); PKCS#11 tests will be skipped" >&2
