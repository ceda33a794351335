#!/usr/bin/env bash
# CI entry of the Swift package: `swift test` against a live hush-server.
#
# Without a Swift toolchain it prints one line and succeeds: Swift is the only
# part of CI allowed to be skipped (there is no Swift on most Linux CI
# machines; macOS runners have it).
#
# With one: build.sh (the Rust library and the generated bindings), a
# hush-server on a free loopback port with its own data folder (the binary
# from $HUSH_SERVER_BIN, or `cargo build -p hush-server`), then `swift test`
# with HUSH_TEST_SERVER and HUSH_TEST_CA set so that the live tests run. The
# server is stopped and its folder removed afterwards, whatever happens.
set -euo pipefail

if ! command -v swiftc >/dev/null 2>&1 || ! command -v swift >/dev/null 2>&1; then
    echo "Swift: not checked (no swiftc on this machine)"
    exit 0
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
workspace="$(cd "$here/../.." && pwd)"

echo "== Swift: build.sh"
"$here/build.sh"

echo "== Swift: hush-server for the live tests"
server_bin="${HUSH_SERVER_BIN:-}"
if [ -z "$server_bin" ]; then
    (cd "$workspace" && cargo build -q --locked -p hush-server --bin hush-server)
    target_dir="$(cd "$workspace" && cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
    server_bin="$target_dir/debug/hush-server"
fi
if [ ! -x "$server_bin" ]; then
    echo "check.sh: no hush-server at $server_bin" >&2
    exit 1
fi

# Whether something accepts TCP connections on 127.0.0.1:$1.
listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A port nothing listens on (the server binds it right after).
port=""
for _ in $(seq 1 50); do
    candidate=$((20000 + RANDOM % 40000))
    if ! listening "$candidate"; then
        port="$candidate"
        break
    fi
done
if [ -z "$port" ]; then
    echo "check.sh: no free port found" >&2
    exit 1
fi

data_dir="$(mktemp -d "${TMPDIR:-/tmp}/hush-swift-server.XXXXXX")"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$data_dir"
}
trap cleanup EXIT

RUST_LOG="${RUST_LOG:-warn}" "$server_bin" --listen "127.0.0.1:$port" --data-dir "$data_dir" \
    --server-name localhost --admin-listen= --config "$workspace/bindings/test-server.toml" serve >/dev/null &
server_pid=$!

# Up when it has written its development certificate and accepts connections.
for _ in $(seq 1 600); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        wait "$server_pid" || true
        server_pid=""
        echo "check.sh: hush-server exited before it was up" >&2
        exit 1
    fi
    if [ -f "$data_dir/dev-cert.pem" ] && listening "$port"; then
        break
    fi
    sleep 0.1
done
if ! listening "$port"; then
    echo "check.sh: hush-server did not come up on 127.0.0.1:$port" >&2
    exit 1
fi

echo "== Swift: swift test"
cd "$here"
HUSH_TEST_SERVER="127.0.0.1:$port" HUSH_TEST_CA="$data_dir/dev-cert.pem" swift test
