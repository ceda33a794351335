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

# Unit, integration and property tests (including the vectors check, the
# SQLite crash tests and the fuzz-corpus replay), then the documentation examples.
cargo nextest run --workspace --all-features --no-fail-fast
cargo test --workspace --all-features --doc
