// swift-tools-version:5.10
//
// Hush for Swift: the uniffi bindings of the Hush SDK and a ready
// connection over Network.framework.
//
// Tools 5.10 (Xcode 15.3) at least: the Swift uniffi 0.32 generates uses
// `nonisolated(unsafe)`, which Swift 5.9 does not know.
//
// Nothing generated is committed. Run `./build.sh` first; it builds the Rust
// library `hush-ffi` and writes:
//
//   Sources/hush_ffiFFI/hush_ffiFFI.h      the C declarations of the library
//   Sources/hush_ffiFFI/module.modulemap   makes them the Clang module `hush_ffiFFI`
//   Sources/Hush/hush_ffi.swift            the generated Swift API (Device, Client, ...)
//   lib/libhush_ffi.{dylib,so}             the library itself, for `swift test`
//
// Linking, two ways:
//
// * Host builds (`swift build` / `swift test` on macOS or Linux): the target
//   `hush_ffiFFI` is a system library target (a module map and a header, no
//   code), and `Hush` links `libhush_ffi` from `lib/` with `-L` and an rpath
//   so the tests find it at run time. Those are `unsafeFlags`, which SwiftPM
//   allows only in a root package: good for developing and CI here, not for
//   depending on this package from an app.
// * iOS (and apps): `./build.sh --xcframework` (macOS only) builds
//   `build/Hush.xcframework` (static libraries for iOS devices, the iOS
//   simulator and macOS, with the header and module map). When that folder exists,
//   `hush_ffiFFI` is a binary target over it instead, no unsafe flags are
//   used, and an app can depend on this package (path or Git dependency).
//   README.md, "iOS: XCFramework", has the details.

import Foundation
import PackageDescription

let packageDir = Context.packageDirectory
let xcframeworkPath = "build/Hush.xcframework"
let useXCFramework = FileManager.default.fileExists(atPath: packageDir + "/" + xcframeworkPath)
let libDir = packageDir + "/lib"

let ffiTarget: Target
let hushLinkerSettings: [LinkerSetting]
if useXCFramework {
    // The module map inside the XCFramework names the module `hush_ffiFFI`,
    // which is what the generated Swift imports. (With tools 5.8 and later a
    // local binary target's name need not match the .xcframework's name.)
    ffiTarget = .binaryTarget(name: "hush_ffiFFI", path: xcframeworkPath)
    hushLinkerSettings = []
} else {
    ffiTarget = .systemLibrary(name: "hush_ffiFFI", path: "Sources/hush_ffiFFI")
    hushLinkerSettings = [
        .linkedLibrary("hush_ffi"),
        .unsafeFlags(["-L", libDir, "-Xlinker", "-rpath", "-Xlinker", libDir]),
    ]
}

let package = Package(
    name: "Hush",
    // Network.framework's TLS options and `SecTrustCopyCertificateChain`
    // need iOS 15 / macOS 12. On Linux only the core API (no connection
    // helper) is built.
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "Hush", targets: ["Hush"]),
    ],
    targets: [
        ffiTarget,
        .target(
            name: "Hush",
            dependencies: ["hush_ffiFFI"],
            path: "Sources/Hush",
            linkerSettings: hushLinkerSettings
        ),
        .testTarget(
            name: "HushTests",
            dependencies: ["Hush"],
            path: "Tests/HushTests"
        ),
    ]
)
