#!/usr/bin/env bash
# Runs the whole Hush test suite. With CI=true a missing tool is an error,
# never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo nextest --version >/dev/null 2>&1; then
    if [ "${CI:-}" = "true" ]; then
        echo "cargo-nextest is missing" >&2
        exit 1
    fi
    cargo install cargo-nextest --locked
fi

# A Python virtual environment for the independent vector check and the
# Python bindings' tests.
VENV="${HUSH_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt

# The MySQL backend's tests need a server: HUSH_TEST_MYSQL_URL, or a local
# MySQL/MariaDB that lets root in without a password. Without one they are
# skipped with a message, except under CI=true, where they fail.
if [ -z "${HUSH_TEST_MYSQL_URL:-}" ] && command -v mysqladmin >/dev/null 2>&1 \
    && mysqladmin --host=127.0.0.1 --user=root --silent ping >/dev/null 2>&1; then
    export HUSH_TEST_MYSQL_URL="mysql://root@127.0.0.1:3306/test"
fi

# Unit, integration and property tests (including the vectors check, the
# SQLite crash tests, the fuzz-corpus replay, the server over TLS on both
# backends and the quickstart), then the documentation examples.
cargo nextest run --workspace --all-features --no-fail-fast
cargo test --workspace --all-features --doc
# An independent implementation of docs/protocol.md checks the test vectors.
"$VENV/bin/python" tests/vectors/verify.py
# The experiment quoted in docs/performance.md must still apply to the SDK.
git apply --check benches/experiments/skip-own-account-send.patch
# Python, Kotlin and Swift bindings, and the PyQt6 client (installs their
# tools where missing: see scripts/bindings-tools.sh).
HUSH_VENV="$VENV" ./scripts/test-bindings.sh
