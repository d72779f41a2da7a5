#!/usr/bin/env bash
# Set up softphone in .venv on a fresh Debian machine and run the demo call.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    echo "==> installing python3-venv"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q python3 python3-venv python3-pip
fi
if ! ldconfig -p 2>/dev/null | grep -q 'libopus\.so\.0'; then
    echo "==> installing libopus0"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q libopus0
fi
echo "==> installing softphone into .venv"
python3 -m venv .venv
.venv/bin/python -m pip install -q .
echo "==> softphone demo"
exec .venv/bin/softphone demo "$@"
