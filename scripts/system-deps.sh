#!/usr/bin/env bash
# System packages the test suite needs: SoftHSM2 (a real PKCS#11 token).
# Installs them with apt-get when missing and we are root; otherwise says how.
set -euo pipefail
if command -v softhsm2-util >/dev/null 2>&1 && [ -e /usr/lib/softhsm/libsofthsm2.so ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq softhsm2 >/dev/null
  exit 0
fi
echo "note: SoftHSM2 is not installed (sudo apt-get install softhsm2); PKCS#11 tests will be skipped" >&2
