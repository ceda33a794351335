"""The Python side of the Kotlin interop test (bindings/kotlin/run-tests.sh).

Registers USER on the server, connects (which publishes its prekeys), then
writes its user id to --ready-file: from then on the Kotlin user can reach
it. Waits for a text from --expect-from, replies "pong: <text>", waits for
the server to store the reply, confirms the message and exits 0. Any
failure or timeout exits 1 with a message on stderr.

Only the `hush` package is used (the wheel of bindings/python).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import hush
from hush import ClientEvent


def fail(message: str) -> "None":
    print(f"python_peer: FAILED: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--server-name", default="localhost")
    p.add_argument("--cert", required=True, help="the server's PEM certificate to trust")
    p.add_argument("--user", required=True, help="this peer's user id")
    p.add_argument("--expect-from", required=True, help="the Kotlin user id")
    p.add_argument("--ready-file", required=True, help="written with the user id once reachable")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the text")
    p.add_argument("--data-dir", help="where to keep the peer's store (default: a temporary directory)")
    args = p.parse_args()

    ctx = hush.tls_context(cafile=args.cert)
    new = hush.NewDevice.for_new_account(args.user)
    try:
        device_id = hush.register_account(new, args.host, args.port, args.server_name, ctx)
    except hush.ConnectionError as e:
        fail(f"registering {args.user}: {e}")
    with tempfile.TemporaryDirectory(prefix="hush-py-peer-", dir=args.data_dir) as home:
        device = hush.Device.create_sqlite(
            str(Path(home) / "peer.db"), hush.generate_storage_key(), new, device_id
        )
        conn = hush.Connection(device.client(args.server_name), args.host, args.port,
                               args.server_name, ctx, backoff=0.2, max_backoff=2.0)
        with conn:
            try:
                # The first login publishes the prekeys (PreKeysReplenished
                # follows); only then can the Kotlin side start a session.
                conn.wait_for(lambda e: isinstance(e, ClientEvent.PRE_KEYS_REPLENISHED),
                              timeout=30)
            except TimeoutError:
                fail("did not log in to the server within 30 s")
            # Reachable now: tell the Kotlin side (atomically: write, then rename).
            tmp = args.ready_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(args.user + "\n")
            os.replace(tmp, args.ready_file)
            print(f"python_peer: {args.user} ready", flush=True)

            def from_kotlin(e: object) -> bool:
                return (isinstance(e, ClientEvent.MESSAGE)
                        and isinstance(e.content.body, hush.MessageBody.TEXT)
                        and e.sender.user == args.expect_from)

            try:
                got = conn.wait_for(from_kotlin, timeout=args.timeout)
            except TimeoutError:
                fail(f"no text from {args.expect_from} within {args.timeout:.0f} s")
            text = got.content.body.text
            print(f"python_peer: got {text!r} from {got.sender.user}/{got.sender.device}",
                  flush=True)
            reply_id = conn.send_text(args.expect_from, f"pong: {text}")
            try:
                outcome = conn.wait_for(
                    lambda e: isinstance(e, (ClientEvent.SENT, ClientEvent.DELIVERY_FAILED))
                    and e.message_id == reply_id, timeout=30)
            except TimeoutError:
                fail("the server did not store the reply within 30 s")
            if isinstance(outcome, ClientEvent.DELIVERY_FAILED):
                fail(f"the reply was not delivered: {outcome.reason}")
            conn.confirm(got.envelope_id)
            print("python_peer: replied and confirmed", flush=True)


if __name__ == "__main__":
    main()
