#!/usr/bin/env python3
"""A 1 KiB encrypt + decrypt round trip through the Python bindings of Hush,
beside the `vodozemac` Python package doing the same Olm work, in one run.

    pip install ./bindings/python vodozemac
    python bindings/python/bench/roundtrip.py

Hush goes through `PeerSession.encrypt` / `decrypt`, the hot path (bytes in,
bytes out; the package calls the exported functions directly, see
`hush/_fastpath.py`); the generated-code path and `Device.encrypt` /
`decrypt` are printed beside it. Both sides first exchange one message each
way, so that every measured
message is a plain chain step (no DH ratchet step) in one direction, and
decrypt what the other side just encrypted. Hush's devices keep their state
in a `MemoryStore`: every call still seals and writes the session, as it
would on disk, minus the disk. Prints the median per-call time of 7
repeats and the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import vodozemac as vz

import hush


def hush_pair():
    alice = hush.Device.create_in_memory(hush.NewDevice.for_new_account("alice"), 1)
    bob = hush.Device.create_in_memory(hush.NewDevice.for_new_account("bob"), 1)
    alice.start_session(bob.bundle())
    a, b = alice.address(), bob.address()
    bob.decrypt(a, alice.encrypt(b, b"first"))
    alice.decrypt(b, bob.encrypt(a, b"reply"))
    return alice, bob, a, b


def vodozemac_pair():
    alice, bob = vz.Account(), vz.Account()
    bob.generate_one_time_keys(1)
    otk = next(iter(bob.one_time_keys.values()))
    bob.mark_keys_as_published()
    out = alice.create_outbound_session(bob.curve25519_key, otk)
    first = out.encrypt(b"first")
    inbound, _ = bob.create_inbound_session(alice.curve25519_key, first.to_pre_key())
    out.decrypt(inbound.encrypt(b"reply"))
    return out, inbound


def time_per_call(fn, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def breakdown(payload: bytes, n: int) -> None:
    """Where a call through uniffi's generated Python spends its time."""
    from hush._native import hush_ffi as generated

    alice, _, _, _ = hush_pair()
    pieces = [
        ("a bare ctypes call (the contract version)",
         generated._UniffiLib.ffi_hush_ffi_uniffi_contract_version),
        ("a trivial method returning 32 bytes (identity_key)", alice.identity_key),
        ("lowering 1 KiB of bytes into a Rust buffer, and freeing it",
         lambda: generated._UniffiFfiConverterBytes.lower(payload).free()),
    ]
    for label, fn in pieces:
        time_per_call(fn, n // 10)
        print(f"{label}: {statistics.median(time_per_call(fn, n) for _ in range(5)) * 1e6:.2f} us")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=3000, help="round trips per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--breakdown", action="store_true",
                        help="also time pieces of a call through uniffi's generated Python")
    args = parser.parse_args()
    payload = os.urandom(1024)
    if args.breakdown:
        breakdown(payload, args.n)

    alice, bob, a, b = hush_pair()
    # The hot path: a session handle, bytes in and bytes out.
    to_bob, from_alice = alice.session(b), bob.session(a)

    def hush_round() -> None:
        if from_alice.decrypt(to_bob.encrypt(payload)) != payload:
            raise AssertionError("hush round trip")

    from hush import _fastpath

    def hush_round_generated() -> None:
        sealed = _fastpath.generated_encrypt(to_bob, payload)
        if _fastpath.generated_decrypt(from_alice, sealed) != payload:
            raise AssertionError("hush round trip")

    def hush_round_records() -> None:
        if bob.decrypt(a, alice.encrypt(b, payload)).plaintext != payload:
            raise AssertionError("hush round trip")

    out, inbound = vodozemac_pair()

    def vz_round() -> None:
        # The wire form both ways, as Hush's bytes are.
        kind, body = out.encrypt(payload).to_parts()
        if inbound.decrypt(vz.AnyOlmMessage.from_parts(kind, body)) != payload:
            raise AssertionError("vodozemac round trip")

    hush_times, generated_times, record_times, vz_times = [], [], [], []
    for fn in (hush_round, hush_round_generated, hush_round_records, vz_round):
        time_per_call(fn, args.n // 10)  # warm up
    for _ in range(args.repeats):
        hush_times.append(time_per_call(hush_round, args.n))
        generated_times.append(time_per_call(hush_round_generated, args.n))
        record_times.append(time_per_call(hush_round_records, args.n))
        vz_times.append(time_per_call(vz_round, args.n))
    h, v = statistics.median(hush_times), statistics.median(vz_times)
    g, r = statistics.median(generated_times), statistics.median(record_times)
    print(f"python {platform.python_version()}, {platform.machine()}, "
          f"{args.repeats} x {args.n} round trips of 1 KiB")
    print(f"hush      {h * 1e6:8.1f} us per encrypt+decrypt "
          f"(min {min(hush_times) * 1e6:.1f}, max {max(hush_times) * 1e6:.1f})")
    print(f"  the same PeerSession calls through uniffi's generated Python: {g * 1e6:.1f} us")
    print(f"  Device.encrypt/decrypt (addresses and records, generated): {r * 1e6:.1f} us")
    print(f"vodozemac {v * 1e6:8.1f} us per encrypt+decrypt "
          f"(min {min(vz_times) * 1e6:.1f}, max {max(vz_times) * 1e6:.1f})")
    print(f"hush / vodozemac = {h / v:.2f}")


if __name__ == "__main__":
    main()
