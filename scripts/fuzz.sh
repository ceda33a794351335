#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ (as `cargo fuzz list` names them) for
# SECONDS seconds each (default 20), starting from the committed corpus in
# fuzz/corpus/<target>/. New inputs go to a scratch directory that is removed
# afterwards, so the committed corpus is never modified. A crash stops the run
# with a failure and leaves its input in fuzz/artifacts/<target>/ (see
# fuzz/README.md for reproducing it).
#
# Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-20}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes nightly-only flags; this lets a stable toolchain take them.
export RUSTC_BOOTSTRAP=1
# The fuzz build (sanitizer flags, its own Cargo.lock) goes beside the main
# build, which .ci/run keeps outside the clone, so that reruns are
# incremental. With neither variable set, cargo-fuzz's default (fuzz/target).
build=()
if [ -n "${HUSH_FUZZ_TARGET_DIR:-}" ]; then
    build=(--target-dir "$HUSH_FUZZ_TARGET_DIR")
elif [ -n "${CARGO_TARGET_DIR:-}" ]; then
    build=(--target-dir "${CARGO_TARGET_DIR%/}-fuzz")
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

# One build of every target first, so that each run below fuzzes for its
# whole time.
cargo fuzz build "${build[@]}"
for target in $(cargo fuzz list); do
    echo "== fuzz $target (${seconds}s)"
    mkdir "$scratch/$target"
    # -timeout: one input taking 10 s is a hang (inputs take milliseconds).
    cargo fuzz run "${build[@]}" "$target" \
        "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1
done
