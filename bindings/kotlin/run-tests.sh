#!/usr/bin/env bash
# The Kotlin binding tests (CI entry; runs from any directory).
#
# Generates the Kotlin bindings from libhush_ffi.so, compiles them with the
# connection helper and the test program in one kotlinc call, starts a
# hush-server on a free port and the Python peer (tests/python_peer.py),
# and runs the Kotlin program against both. Exits non-zero on any failure.
#
# Inputs (environment):
#   KOTLINC         kotlinc (default: kotlinc on PATH; npm package kotlin-compiler)
#   JNA_JAR         JNA 5.x jar (default: /usr/share/java/jna.jar, Debian libjna-java)
#   HUSH_FFI_LIB    libhush_ffi.so (default: cargo build -p hush-ffi --release)
#   UNIFFI_BINDGEN  the generator command (default: cargo run -q -p hush-uniffi-bindgen --)
#   HUSH_SERVER_BIN hush-server (default: cargo build -p hush-server)
#   PYTHON          a python with the `hush` wheel installed (default: python3)
#   JAVA            java (default: java on PATH)
# A missing tool is a failure with a message, with or without CI=true:
# these tests never skip silently.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORKSPACE="$(cd "$HERE/../.." && pwd)"
BUILD="$HERE/build"
START=$SECONDS

die() {
    echo "bindings/kotlin/run-tests.sh: ERROR: $*" >&2
    exit 1
}
step() { echo "== kotlin: $* ($((SECONDS - START)) s)"; }

ci_note=""
[ "${CI:-}" = "true" ] && ci_note=" (CI=true: required)"

# -- tools -----------------------------------------------------------------------
KOTLINC="${KOTLINC:-$(command -v kotlinc || true)}"
[ -n "$KOTLINC" ] && [ -x "$KOTLINC" ] ||
    die "kotlinc not found${ci_note}: set KOTLINC, or install it with 'npm install kotlin-compiler' (bindings/kotlin/README.md)"
JNA_JAR="${JNA_JAR:-/usr/share/java/jna.jar}"
[ -f "$JNA_JAR" ] || die "JNA jar not found at $JNA_JAR${ci_note}: set JNA_JAR, or 'apt-get install libjna-java libjna-jni'"
JAVA="${JAVA:-$(command -v java || true)}"
[ -n "$JAVA" ] || die "java not found${ci_note}: install a JDK (17+) or set JAVA"
PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || die "python not found: $PYTHON${ci_note}"
"$PYTHON" -c 'import hush, hush.connection' 2>/dev/null ||
    die "the python module 'hush' is not importable with $PYTHON${ci_note}: set PYTHON to a venv with the hush wheel (bindings/python)"

cargo_target_dir() {
    (cd "$WORKSPACE" && cargo metadata --format-version 1 --no-deps) |
        "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}

if [ -z "${HUSH_FFI_LIB:-}" ]; then
    step "cargo build -p hush-ffi --release"
    (cd "$WORKSPACE" && cargo build -q -p hush-ffi --release)
    HUSH_FFI_LIB="$(cargo_target_dir)/release/libhush_ffi.so"
fi
[ -f "$HUSH_FFI_LIB" ] || die "libhush_ffi.so not found at $HUSH_FFI_LIB (HUSH_FFI_LIB)"
HUSH_FFI_LIB="$(cd "$(dirname "$HUSH_FFI_LIB")" && pwd)/$(basename "$HUSH_FFI_LIB")"
if [ -z "${HUSH_SERVER_BIN:-}" ]; then
    step "cargo build -p hush-server"
    (cd "$WORKSPACE" && cargo build -q -p hush-server --bin hush-server)
    HUSH_SERVER_BIN="$(cargo_target_dir)/debug/hush-server"
fi
[ -x "$HUSH_SERVER_BIN" ] || die "hush-server not found at $HUSH_SERVER_BIN (HUSH_SERVER_BIN)"
if [ -n "${UNIFFI_BINDGEN:-}" ]; then
    read -r -a BINDGEN <<<"$UNIFFI_BINDGEN"
else
    BINDGEN=(cargo run -q --manifest-path "$WORKSPACE/Cargo.toml" -p hush-uniffi-bindgen --)
fi

# -- generate and compile ----------------------------------------------------------
rm -rf "$BUILD/generated" "$BUILD/native"
mkdir -p "$BUILD/generated" "$BUILD/native"
# JNA looks for lib<name>.so in jna.library.path: give it that name whatever the input is called.
ln -sf "$HUSH_FFI_LIB" "$BUILD/native/libhush_ffi.so"

step "uniffi-bindgen generate --language kotlin"
# From the workspace: uniffi-bindgen reads `cargo metadata` of the current directory.
(cd "$WORKSPACE" && "${BINDGEN[@]}" generate --library "$HUSH_FFI_LIB" --language kotlin --no-format \
    --out-dir "$BUILD/generated" >/dev/null) || die "uniffi-bindgen failed (UNIFFI_BINDGEN=${BINDGEN[*]})"
GENERATED="$BUILD/generated/uniffi/hush_ffi/hush_ffi.kt"
[ -f "$GENERATED" ] || die "uniffi-bindgen did not write $GENERATED"

step "kotlinc (generated bindings + connection helper + test)"
mapfile -t SOURCES < <(find "$HERE/src/main/kotlin" "$HERE/src/test/kotlin" -name '*.kt' | sort)
"$KOTLINC" -nowarn -include-runtime -d "$BUILD/hush-kotlin-tests.jar" -cp "$JNA_JAR" \
    "$GENERATED" "${SOURCES[@]}"

# -- server and Python peer ----------------------------------------------------------
RUN="$(mktemp -d "${TMPDIR:-/tmp}/hush-kotlin-run-XXXXXX")"
SERVER_PID=""
PEER_PID=""
cleanup() {
    local rc=$?
    [ -n "$PEER_PID" ] && kill "$PEER_PID" 2>/dev/null && wait "$PEER_PID" 2>/dev/null
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    if [ "$rc" -ne 0 ] && [ -f "$RUN/server.log" ]; then
        echo "-- hush-server log (last 30 lines):" >&2
        tail -n 30 "$RUN/server.log" >&2 || true
    fi
    rm -rf "$RUN"
    return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
SERVER_NAME=localhost
CERT="$RUN/server/dev-cert.pem"
step "hush-server on 127.0.0.1:$PORT"
mkdir -p "$RUN/server"
RUST_LOG="${RUST_LOG:-warn}" "$HUSH_SERVER_BIN" --listen "127.0.0.1:$PORT" --data-dir "$RUN/server" \
    --server-name "$SERVER_NAME" --admin-listen= --config "$WORKSPACE/bindings/test-server.toml" serve >"$RUN/server.log" 2>&1 &
SERVER_PID=$!
# Up when the certificate exists and a TLS handshake succeeds.
"$PYTHON" - "$CERT" "$PORT" "$SERVER_PID" <<'PY' || die "hush-server did not come up (log above)"
import os, sys, time
import hush
cert, port, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("hush-server exited")
    if os.path.exists(cert):
        try:
            hush.open_tls("127.0.0.1", port, "localhost", hush.tls_context(cafile=cert), timeout=1).close()
            sys.exit(0)
        except hush.ConnectionError:
            pass
    time.sleep(0.05)
sys.exit("timeout")
PY

SUFFIX="$$x$RANDOM"
KT_USER="kt$SUFFIX"
PY_USER="py$SUFFIX"
READY="$RUN/peer-ready"
step "python peer $PY_USER"
"$PYTHON" "$HERE/tests/python_peer.py" --port "$PORT" --server-name "$SERVER_NAME" --cert "$CERT" \
    --user "$PY_USER" --expect-from "$KT_USER" --ready-file "$READY" --timeout 90 --data-dir "$RUN" &
PEER_PID=$!

step "Kotlin test program ($KT_USER)"
kotlin_rc=0
"$JAVA" -Djna.library.path="$BUILD/native" -cp "$BUILD/hush-kotlin-tests.jar:$JNA_JAR" \
    org.hush.connection.test.InteropTestKt \
    --host 127.0.0.1 --port "$PORT" --server-name "$SERVER_NAME" --cert "$CERT" \
    --user "$KT_USER" --peer-ready-file "$READY" --peer-timeout-ms 90000 || kotlin_rc=$?

peer_rc=0
if [ "$kotlin_rc" -ne 0 ]; then
    # The peer waits for a text that may never come: do not wait for its timeout.
    kill "$PEER_PID" 2>/dev/null || true
fi
wait "$PEER_PID" || peer_rc=$?
PEER_PID=""

[ "$kotlin_rc" -eq 0 ] || die "the Kotlin test program failed (exit $kotlin_rc)"
[ "$peer_rc" -eq 0 ] || die "the Python peer failed (exit $peer_rc)"
step "passed"
