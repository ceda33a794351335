//! `uniffi-bindgen`: generates the Python, Kotlin and Swift sources of
//! `hush-ffi` from the built library (library mode), for example
//!
//! ```text
//! cargo run -p hush-uniffi-bindgen -- generate --library target/release/libhush_ffi.so \
//!     --language kotlin --out-dir bindings/kotlin/generated
//! ```
//!
//! It is the same uniffi version as the runtime in `hush-ffi`, which the
//! generated code checks when it loads the library.

fn main() {
    uniffi::uniffi_bindgen_main()
}
