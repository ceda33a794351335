#!/usr/bin/env bash
# Builds the Rust library `hush-ffi` and generates the Swift bindings into
# this package (nothing generated is committed).
#
#   bindings/swift/build.sh                 host build (macOS or Linux), for `swift test`
#   bindings/swift/build.sh --xcframework   also build/Hush.xcframework for iOS (macOS + Xcode)
#
# Host build:
#   - `cargo build -p hush-ffi --release` (CARGO_TARGET_DIR is respected: the
#     target folder is read from `cargo metadata`);
#   - copies libhush_ffi.{dylib,so} to lib/ (Package.swift links it from there);
#   - runs the workspace's pinned generator (`hush-uniffi-bindgen`) and puts
#     hush_ffi.swift in Sources/Hush/, hush_ffiFFI.h and module.modulemap in
#     Sources/hush_ffiFFI/.
#
# --xcframework (macOS only): the host build, then a static library
# (`cargo rustc --crate-type staticlib`, so Cargo.toml keeps its crate types)
# for each of aarch64-apple-ios (devices), aarch64-apple-ios-sim and
# x86_64-apple-ios (simulators), and aarch64-apple-darwin and
# x86_64-apple-darwin (macOS, so that `swift test` keeps working on the Mac
# once Package.swift switches to the XCFramework); each pair of slices is
# merged with `lipo`, and `xcodebuild -create-xcframework` assembles
# build/Hush.xcframework with the header and module map. The targets must
# be installed first:
#   rustup target add aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios \
#       aarch64-apple-darwin x86_64-apple-darwin
# IPHONEOS_DEPLOYMENT_TARGET (default 15.0) and MACOSX_DEPLOYMENT_TARGET
# (default 12.0), as in Package.swift, set the minimum OS versions.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
workspace="$(cd "$here/../.." && pwd)"

usage() {
    sed -n '2,6p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

xcframework=false
for arg in "$@"; do
    case "$arg" in
        --xcframework) xcframework=true ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "build.sh: unknown argument: $arg" >&2
            usage >&2
            exit 2
            ;;
    esac
done

cd "$workspace"

# The target folder, wherever CARGO_TARGET_DIR or a cargo config puts it.
target_dir="$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
if [ -z "$target_dir" ]; then
    echo "build.sh: could not read the target directory from cargo metadata" >&2
    exit 1
fi

case "$(uname -s)" in
    Darwin) lib_name="libhush_ffi.dylib" ;;
    *) lib_name="libhush_ffi.so" ;;
esac

echo "== hush-ffi (release) for this machine"
cargo build -p hush-ffi --release --locked
host_lib="$target_dir/release/$lib_name"
if [ ! -f "$host_lib" ]; then
    echo "build.sh: $host_lib was not built" >&2
    exit 1
fi

mkdir -p "$here/lib"
cp -f "$host_lib" "$here/lib/$lib_name"
if [ "$(uname -s)" = "Darwin" ]; then
    # Found through the rpath Package.swift sets, wherever lib/ is.
    install_name_tool -id "@rpath/$lib_name" "$here/lib/$lib_name"
fi

echo "== Swift bindings (hush-uniffi-bindgen)"
gen="$(mktemp -d "${TMPDIR:-/tmp}/hush-swift-gen.XXXXXX")"
trap 'rm -rf "$gen"' EXIT
cargo run -q --locked -p hush-uniffi-bindgen -- \
    generate --library "$host_lib" --language swift --no-format --out-dir "$gen"
for f in hush_ffi.swift hush_ffiFFI.h hush_ffiFFI.modulemap; do
    if [ ! -f "$gen/$f" ]; then
        echo "build.sh: the generator did not write $f" >&2
        exit 1
    fi
done

mkdir -p "$here/Sources/Hush" "$here/Sources/hush_ffiFFI"
cp -f "$gen/hush_ffi.swift" "$here/Sources/Hush/hush_ffi.swift"
cp -f "$gen/hush_ffiFFI.h" "$here/Sources/hush_ffiFFI/hush_ffiFFI.h"
# SwiftPM and XCFrameworks want the name module.modulemap. The generated map
# declares `use "Darwin"`, `use "_Builtin_stdbool"` and `use "_Builtin_stdint"`;
# they are dropped: there is no Darwin module off Apple platforms, and newer
# Xcode toolchains no longer have the builtin modules, where such a map fails
# to build and the generated Swift's `#if canImport(hush_ffiFFI)` silently
# turns false (uniffi-rs issue 2917). The header includes what it needs.
grep -v '^[[:space:]]*use "' "$gen/hush_ffiFFI.modulemap" >"$gen/module.modulemap"
cp -f "$gen/module.modulemap" "$here/Sources/hush_ffiFFI/module.modulemap"
echo "wrote Sources/Hush/hush_ffi.swift, Sources/hush_ffiFFI/{hush_ffiFFI.h,module.modulemap}, lib/$lib_name"

if [ "$xcframework" != true ]; then
    exit 0
fi

echo "== iOS and macOS static libraries, build/Hush.xcframework"
if [ "$(uname -s)" != "Darwin" ]; then
    echo "build.sh: --xcframework needs macOS with Xcode (xcodebuild, lipo)" >&2
    exit 1
fi
for tool in xcodebuild lipo rustup; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "build.sh: --xcframework needs $tool" >&2
        exit 1
    fi
done

apple_targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin)
installed="$(rustup target list --installed)"
missing=()
for t in "${apple_targets[@]}"; do
    if ! grep -qx "$t" <<<"$installed"; then
        missing+=("$t")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "build.sh: missing Rust targets; run: rustup target add ${missing[*]}" >&2
    exit 1
fi

export IPHONEOS_DEPLOYMENT_TARGET="${IPHONEOS_DEPLOYMENT_TARGET:-15.0}"
export MACOSX_DEPLOYMENT_TARGET="${MACOSX_DEPLOYMENT_TARGET:-12.0}"
for t in "${apple_targets[@]}"; do
    echo "-- $t"
    # A static library: what an iOS app links (no dylib to embed and sign).
    cargo rustc -p hush-ffi --lib --release --locked --target "$t" --crate-type staticlib
done

out="$here/build"
rm -rf "$out/Hush.xcframework" "$out/ios" "$out/ios-simulator" "$out/macos" "$out/headers"
mkdir -p "$out/ios" "$out/ios-simulator" "$out/macos" "$out/headers"
cp -f "$target_dir/aarch64-apple-ios/release/libhush_ffi.a" "$out/ios/libhush_ffi.a"
# One library per platform: the simulator's two architectures in one file,
# and the Mac's.
lipo -create \
    "$target_dir/aarch64-apple-ios-sim/release/libhush_ffi.a" \
    "$target_dir/x86_64-apple-ios/release/libhush_ffi.a" \
    -output "$out/ios-simulator/libhush_ffi.a"
lipo -create \
    "$target_dir/aarch64-apple-darwin/release/libhush_ffi.a" \
    "$target_dir/x86_64-apple-darwin/release/libhush_ffi.a" \
    -output "$out/macos/libhush_ffi.a"
cp -f "$gen/hush_ffiFFI.h" "$out/headers/hush_ffiFFI.h"
cp -f "$gen/module.modulemap" "$out/headers/module.modulemap"

xcodebuild -create-xcframework \
    -library "$out/ios/libhush_ffi.a" -headers "$out/headers" \
    -library "$out/ios-simulator/libhush_ffi.a" -headers "$out/headers" \
    -library "$out/macos/libhush_ffi.a" -headers "$out/headers" \
    -output "$out/Hush.xcframework"
rm -rf "$out/ios" "$out/ios-simulator" "$out/macos" "$out/headers"
echo "wrote build/Hush.xcframework (Package.swift now uses it instead of lib/)"
