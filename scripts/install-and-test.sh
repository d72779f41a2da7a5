#!/usr/bin/env bash
# Install everything the test suite needs (Debian packages, a virtualenv with
# softphone and its test tools) and run the whole suite: lint, types, tests.
# Usage: bash scripts/install-and-test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

packages=$(grep -v '^\s*#' scripts/debian-packages.txt | grep -v '^\s*$' | tr '\n' ' ')
echo "==> installing Debian packages: $packages"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $packages

echo "==> creating .venv and installing softphone[test]"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"

echo "==> ruff"
.venv/bin/ruff check softphone tests examples benchmarks
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
# (tests/test_packaging.py builds the wheel, installs it into a clean venv and runs
# `softphone demo` from it in an empty folder: the wheel check, about a minute.)
# Two workers (pytest-xdist): most tests wait on real-time calls, so two run
# side by side on two cores; the network lab and the wheel build keep to one
# worker each (tests/conftest.py). SOFTPHONE_TEST_WORKERS=0 runs in one process.
.venv/bin/python -m pytest -n "${SOFTPHONE_TEST_WORKERS:-2}" --dist loadgroup "$@"
