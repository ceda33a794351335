#!/usr/bin/env bash
# The binding tests, run by scripts/test.sh after the Rust tests:
#   1. installs the Python package the way README says (pip install
#      ./bindings/python, which builds the wheel with maturin) into the venv;
#   2. pytest: the Python unit tests, and the live tests against a
#      hush-server (two Python clients, asyncio, attachments, linking,
#      pinning, reconnection, a Python client and the Rust hush-cli, the
#      Python quickstart);
#   3. the Kotlin program, compiled with kotlinc against JNA, talking to a
#      Python client through a hush-server;
#   4. the PyQt6 desktop client, two windows on Qt's offscreen platform;
#   5. the Python round-trip benchmark, briefly (it must run; its figures
#      are in docs/performance.md);
#   6. Swift: `swift test` where swiftc exists, else one line saying so.
# A missing tool is installed (scripts/bindings-tools.sh) or is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HUSH_VENV:-.venv}"
TOOLS="${HUSH_TOOLS:-.tools}"
eval "$(VENV="$VENV" TOOLS="$TOOLS" scripts/bindings-tools.sh)"
PYTHON="$VENV/bin/python"

TARGET="$(cargo metadata --format-version 1 --no-deps \
    | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"

echo "== bindings: pip install ./bindings/python"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./bindings/python
cargo build --quiet -p hush-server --bin hush-server -p hush-examples --bin hush-cli \
    -p hush-uniffi-bindgen --bin uniffi-bindgen
export HUSH_SERVER_BIN="$TARGET/debug/hush-server"
export HUSH_CLI_BIN="$TARGET/debug/hush-cli"
export UNIFFI_BINDGEN="$TARGET/debug/uniffi-bindgen"
# The library the installed package loads: the Kotlin tests use the same one.
HUSH_FFI_LIB="$("$PYTHON" -c 'import hush._native as n, os; print(os.path.join(os.path.dirname(n.__file__), "libhush_ffi.so"))')"
export HUSH_FFI_LIB PYTHON

echo "== bindings: Python (unit and live)"
"$PYTHON" -m pytest -q bindings/python/tests

echo "== bindings: Kotlin"
bindings/kotlin/run-tests.sh

echo "== bindings: PyQt6 desktop client (offscreen)"
QT_QPA_PLATFORM=offscreen "$PYTHON" -m pytest -q examples/python-gui

echo "== bindings: Python round-trip benchmark (a short run; figures in docs/performance.md)"
"$PYTHON" bindings/python/bench/roundtrip.py -n 200 --repeats 1

echo "== bindings: Swift"
bindings/swift/check.sh
