#!/usr/bin/env python3
"""The Hush quickstart in Python: two users, end to end, through a server.

Start the reference server in the repository root first::

    cargo run -p hush-server

then, with the bindings installed (``pip install ./bindings/python``)::

    python examples/python/quickstart.py

Alice and Bob each register a new account (random names, so it runs again
and again), keep their devices in encrypted SQLite stores in a temporary
folder, and exchange a message each way over TLS; the server only ever
sees ciphertext. Both print the safety number they would compare.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile

import hush
from hush import ClientEvent, Connection, Device, NewDevice


def is_text(event: object) -> bool:
    return isinstance(event, ClientEvent.MESSAGE) and isinstance(
        event.content.body, hush.MessageBody.TEXT
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="127.0.0.1:7443", help="HOST:PORT of hush-server")
    parser.add_argument("--server-name", default="localhost", help="the name in its certificate")
    parser.add_argument("--ca", default="hush-data/dev-cert.pem",
                        help="the server certificate to pin (hush-server writes this one)")
    args = parser.parse_args()
    host, _, port = args.server.rpartition(":")
    if not os.path.exists(args.ca):
        print(f"quickstart: no certificate at {args.ca}: start `cargo run -p hush-server` in "
              "the repository root first, or pass --ca", file=sys.stderr)
        return 1
    ctx = hush.tls_context(cafile=args.ca)
    suffix = secrets.token_hex(3)
    alice_id, bob_id = f"alice-{suffix}", f"bob-{suffix}"

    with tempfile.TemporaryDirectory(prefix="hush-quickstart-") as home:
        devices = {}
        for user in (alice_id, bob_id):
            new = NewDevice.for_new_account(user)
            try:
                device_id = hush.register_account(new, host, int(port), args.server_name, ctx)
            except hush.ConnectionError as e:
                print(f"quickstart: {e} (is `cargo run -p hush-server` running?)", file=sys.stderr)
                return 1
            key = hush.generate_storage_key()  # a real app keeps it in the OS keystore
            devices[user] = Device.create_sqlite(os.path.join(home, f"{user}.db"), key, new,
                                                 device_id)
            print(f"registered {user} as device {device_id}")

        def connection(user: str) -> Connection:
            client = devices[user].client(args.server_name)
            return Connection(client, host, int(port), args.server_name, ctx)

        with connection(alice_id) as alice, connection(bob_id) as bob:
            # QueueEmpty comes once the login's prekeys and certificate are
            # published: from then on others can start a session with the device.
            for conn in (alice, bob):
                conn.wait_for(lambda e: isinstance(e, ClientEvent.QUEUE_EMPTY))
            alice.send_text(bob_id, "Hi Bob, this is end-to-end encrypted.")
            alice.wait_for(lambda e: isinstance(e, ClientEvent.SENT))
            got = bob.wait_for(is_text)
            print(f"{bob_id} received from {got.sender.user}: {got.content.body.text}")
            bob.confirm(got.envelope_id)
            bob.send_text(alice_id, "Hi Alice, received and decrypted.")
            reply = alice.wait_for(is_text)
            print(f"{alice_id} received from {reply.sender.user}: {reply.content.body.text}")
            alice.confirm(reply.envelope_id)

        number = devices[alice_id].safety_number(bob_id)
        print(f"safety number of {alice_id} and {bob_id}: {' '.join(number.groups)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
