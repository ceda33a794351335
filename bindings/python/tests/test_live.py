"""Live tests: Python clients through a real `hush-server` over TLS, and a
Python client talking to the Rust `hush-cli`."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hush
from hush import ClientEvent, Connected, Connection, Device, Disconnected, NewDevice
from hush.aio import AsyncConnection

from conftest import SERVER_NAME, Server, free_port


def new_device(server: Server, user: str, path: Path) -> Device:
    """A registered device that has logged in once, which publishes its
    prekeys: from then on others can reach it."""
    new = NewDevice.for_new_account(user)
    device_id = hush.register_account(new, server.host, server.port, SERVER_NAME, server.context())
    device = Device.create_sqlite(str(path), hush.generate_storage_key(), new, device_id)
    with Connection(device.client(SERVER_NAME), server.host, server.port, SERVER_NAME,
                    server.context()) as conn:
        conn.wait_for(lambda e: isinstance(e, ClientEvent.PRE_KEYS_REPLENISHED))
    return device


def connect(server: Server, device: Device, until=ClientEvent.QUEUE_EMPTY, **kw) -> Connection:
    conn = Connection(device.client(SERVER_NAME), server.host, server.port, SERVER_NAME,
                      server.context(), **kw)
    conn.start()
    conn.wait_for(lambda e: isinstance(e, until))
    return conn


def is_message(text: str):
    return lambda e: (isinstance(e, ClientEvent.MESSAGE)
                      and isinstance(e.content.body, hush.MessageBody.TEXT)
                      and e.content.body.text == text)


def test_two_python_clients_talk_through_the_server(server, tmp_path, unique_user):
    alice_id, bob_id = unique_user("alice"), unique_user("bob")
    alice = new_device(server, alice_id, tmp_path / "alice.db")
    bob = new_device(server, bob_id, tmp_path / "bob.db")
    with connect(server, alice) as a, connect(server, bob) as b:
        sent_id = a.send_text(bob_id, "hello bob")
        sent = a.wait_for(lambda e: isinstance(e, ClientEvent.SENT))
        assert sent.message_id == sent_id and sent.recipient == bob_id
        got = b.wait_for(is_message("hello bob"))
        assert got.sender.user == alice_id
        b.confirm(got.envelope_id)
        b.send_text(alice_id, "hello alice")
        reply = a.wait_for(is_message("hello alice"))
        a.confirm(reply.envelope_id)
        assert reply.sender.user == bob_id
    # Both sides compare the same safety number.
    assert alice.safety_number(bob_id).digits == bob.safety_number(alice_id).digits


def test_offline_messages_wait_and_unconfirmed_ones_come_back(server, tmp_path, unique_user):
    alice_id, bob_id = unique_user("alice"), unique_user("bob")
    alice = new_device(server, alice_id, tmp_path / "alice.db")
    bob = new_device(server, bob_id, tmp_path / "bob.db")
    with connect(server, alice) as a:
        for i in range(3):
            a.send_text(bob_id, f"queued {i}")
        for _ in range(3):
            a.wait_for(lambda e: isinstance(e, ClientEvent.SENT))
    # Bob comes back: the queue arrives in order. He does not confirm the last.
    seen = []
    conn = Connection(bob.client(SERVER_NAME), server.host, server.port, SERVER_NAME,
                      server.context())
    with conn:
        while len(seen) < 3:
            e = conn.wait_for(lambda e: isinstance(e, ClientEvent.MESSAGE))
            seen.append(e.content.body.text)
            if len(seen) < 3:
                conn.confirm(e.envelope_id)
    assert seen == ["queued 0", "queued 1", "queued 2"]
    # The unconfirmed one is delivered again after reconnecting.
    with Connection(bob.client(SERVER_NAME), server.host, server.port, SERVER_NAME,
                    server.context()) as conn:
        again = conn.wait_for(lambda e: isinstance(e, ClientEvent.MESSAGE))
        assert again.content.body.text == "queued 2"
        conn.confirm(again.envelope_id)


def test_a_message_sent_offline_survives_closing_the_app(server, tmp_path, unique_user):
    """Sent with no connection, then the app closes its store (as on exit):
    the reopened device sends it after login, once."""
    alice_id, bob_id = unique_user("alice"), unique_user("bob")
    new = NewDevice.for_new_account(alice_id)
    device_id = hush.register_account(new, server.host, server.port, SERVER_NAME,
                                      server.context())
    key = hush.generate_storage_key()
    path = str(tmp_path / "alice.db")
    alice = Device.create_sqlite(path, key, new, device_id)
    bob = new_device(server, bob_id, tmp_path / "bob.db")
    connect(server, alice).close()  # publishes alice's prekeys
    # Alice's client has no connection: the message waits in the outbox.
    client = alice.client(SERVER_NAME)
    sent_id = client.send_text(bob_id, "written offline")
    assert client.has_pending_sends()
    alice.close_store()
    alice = Device.open_sqlite(path, key)
    with connect(server, alice) as a, connect(server, bob) as b:
        sent = a.wait_for(lambda e: isinstance(e, ClientEvent.SENT))
        assert sent.message_id == sent_id
        got = b.wait_for(is_message("written offline"))
        b.confirm(got.envelope_id)
        with pytest.raises(TimeoutError):
            b.wait_for(lambda e: isinstance(e, ClientEvent.MESSAGE), timeout=1.0)


def test_attachment_upload_and_download(server, tmp_path, unique_user):
    alice_id, bob_id = unique_user("alice"), unique_user("bob")
    alice = new_device(server, alice_id, tmp_path / "alice.db")
    bob = new_device(server, bob_id, tmp_path / "bob.db")
    data = bytes(range(251)) * 4000  # about 1 MB
    with connect(server, alice) as a, connect(server, bob) as b:
        transfer = a.call(lambda c: c.begin_upload(hush.AttachmentKind.FILE, "application/x-test",
                                                   len(data)))
        a.wait_for(lambda e: isinstance(e, ClientEvent.UPLOAD_READY) and e.transfer == transfer)
        for i in range(0, len(data), 256 * 1024):
            a.call(lambda c: c.upload(transfer, data[i:i + 256 * 1024]))
        a.call(lambda c: c.finish_upload(transfer))
        uploaded = a.wait_for(lambda e: isinstance(e, ClientEvent.UPLOADED))
        assert uploaded.info.plaintext_len == len(data)
        a.call(lambda c: c.send_attachment(bob_id, uploaded.pointer, "a file"))
        msg = b.wait_for(lambda e: isinstance(e, ClientEvent.MESSAGE))
        body = msg.content.body
        assert isinstance(body, hush.MessageBody.ATTACHMENT) and body.caption == "a file"
        download = b.call(lambda c: c.begin_download(body.pointer))
        out = bytearray()
        while True:
            e = b.wait_for(lambda e: isinstance(e, (ClientEvent.ATTACHMENT_DATA,
                                                    ClientEvent.DOWNLOADED,
                                                    ClientEvent.TRANSFER_FAILED)))
            assert not isinstance(e, ClientEvent.TRANSFER_FAILED), e.reason
            if isinstance(e, ClientEvent.DOWNLOADED):
                break
            assert e.transfer == download
            out += e.data
        assert bytes(out) == data
        b.confirm(msg.envelope_id)


def test_asyncio_connection(server, tmp_path, unique_user):
    alice_id, bob_id = unique_user("alice"), unique_user("bob")
    alice = new_device(server, alice_id, tmp_path / "alice.db")
    bob = new_device(server, bob_id, tmp_path / "bob.db")

    async def run() -> None:
        ctx = server.context()
        async with AsyncConnection(alice.client(SERVER_NAME), server.host, server.port,
                                   SERVER_NAME, ctx) as a, \
                AsyncConnection(bob.client(SERVER_NAME), server.host, server.port,
                                SERVER_NAME, ctx) as b:
            await a.wait_for(lambda e: isinstance(e, ClientEvent.QUEUE_EMPTY))
            await b.wait_for(lambda e: isinstance(e, ClientEvent.QUEUE_EMPTY))
            await a.send_text(bob_id, "over asyncio")
            got = await b.wait_for(is_message("over asyncio"))
            b.confirm(got.envelope_id)
            await b.send_text(alice_id, "back over asyncio")
            reply = await a.wait_for(is_message("back over asyncio"))
            a.confirm(reply.envelope_id)

    asyncio.run(run())


def test_pinning_refuses_another_certificate(server, tmp_path):
    der = ssl.PEM_cert_to_DER_cert(server.cert.read_text())
    good = hashlib.sha256(der).hexdigest()
    hush.open_tls(server.host, server.port, SERVER_NAME, hush.tls_context(pin_sha256=good),
                  pin_sha256=good).close()
    with pytest.raises(hush.ConnectionError, match="does not match the pin"):
        hush.open_tls(server.host, server.port, SERVER_NAME,
                      hush.tls_context(pin_sha256="00" * 32), pin_sha256="00" * 32)
    # The system trust store does not know the development certificate.
    with pytest.raises(hush.ConnectionError):
        hush.open_tls(server.host, server.port, SERVER_NAME, hush.tls_context())
    # Nor is another name in it accepted.
    with pytest.raises(hush.ConnectionError):
        hush.open_tls(server.host, server.port, "other.example", server.context())


def test_refused_registration_raises(server, unique_user):
    user = unique_user("taken")
    hush.register_account(NewDevice.for_new_account(user), server.host, server.port, SERVER_NAME,
                          server.context())
    with pytest.raises(hush.ConnectionError, match="CONFLICT"):
        hush.register_account(NewDevice.for_new_account(user), server.host, server.port,
                              SERVER_NAME, server.context())


def test_reconnects_with_backoff_when_the_server_comes_up(binaries, tmp_path, unique_user):
    port = free_port()
    late = Server(binaries[0], tmp_path / "late", port)
    late.data_dir.mkdir()
    # The certificate exists before the server does, as for a pinned server.
    subprocess.run([binaries[0], "--data-dir", str(late.data_dir), "--server-name", SERVER_NAME,
                    "gen-dev-cert"], check=True, capture_output=True)
    device = Device.create_in_memory(NewDevice.for_new_account(unique_user("early")), 1)
    conn = Connection(device.client(SERVER_NAME), "127.0.0.1", port, SERVER_NAME,
                      late.context(), backoff=0.1, max_backoff=0.4)
    with conn:
        delays = [conn.wait_for(lambda e: isinstance(e, Disconnected)).retry_in
                  for _ in range(4)]
        assert delays[:3] == [0.1, 0.2, 0.4] and delays[3] == 0.4
        late.start()
        try:
            conn.wait_for(lambda e: isinstance(e, Connected), timeout=30)
            assert conn.is_connected
        finally:
            conn.close()
            late.stop()
    assert not conn.is_connected


def test_a_python_client_and_hush_cli_talk(server, binaries, tmp_path, unique_user):
    cli_bin = binaries[1]
    py_id, cli_id = unique_user("py"), unique_user("cli")
    home = tmp_path / "cli-home"
    flags = ["--home", str(home), "--server", server.address, "--server-name", SERVER_NAME,
             "--ca", str(server.cert)]

    def cli(*args: str, timeout: float = 60) -> str:
        out = subprocess.run([cli_bin, *flags, *args], capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, f"hush-cli {args}: {out.stdout}\n{out.stderr}"
        return out.stdout

    cli("register", cli_id)
    device = new_device(server, py_id, tmp_path / "py.db")
    with connect(server, device) as conn:
        conn.send_text(cli_id, "hello from python")
        conn.wait_for(lambda e: isinstance(e, ClientEvent.SENT))
        heard = cli("listen", "--count", "1", "--timeout", "30")
        assert "hello from python" in heard and py_id in heard
        cli("send", py_id, "hello from the cli")
        got = conn.wait_for(is_message("hello from the cli"))
        assert got.sender.user == cli_id
        conn.confirm(got.envelope_id)
    safety = cli("safety", py_id)
    groups = device.safety_number(cli_id).groups
    assert all(g in safety for g in groups), safety


def test_linking_a_second_python_device(server, tmp_path, unique_user):
    user, peer = unique_user("multi"), unique_user("peer")
    first = new_device(server, user, tmp_path / "first.db")
    other = new_device(server, peer, tmp_path / "peer.db")
    with connect(server, first) as f:
        codes: list[bytes] = []
        import threading

        result: dict[str, object] = {}

        def new_side() -> None:
            try:
                account = hush.wait_for_link(server.host, server.port, SERVER_NAME,
                                             server.context(), codes.append, timeout=30)
                result["linked"] = hush.register_linked_device(
                    account, server.host, server.port, SERVER_NAME, server.context())
            except Exception as e:  # noqa: BLE001 - reported below
                result["error"] = e

        t = threading.Thread(target=new_side)
        t.start()
        deadline = time.monotonic() + 30
        while not codes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert codes, result
        f.call(lambda c: c.request_link_permission())
        permission = f.wait_for(lambda e: isinstance(e, ClientEvent.LINK_PERMISSION)).permission
        f.call(lambda c: c.send_link(codes[0], permission))
        t.join(30)
        assert "error" not in result, result.get("error")
        new, device_id = result["linked"]
        second = Device.create_sqlite(str(tmp_path / "second.db"), hush.generate_storage_key(),
                                      new, device_id)
        assert second.address().user == user and second.identity_key() == first.identity_key()
    # The new device's first login publishes its prekeys.
    with connect(server, second, until=ClientEvent.PRE_KEYS_REPLENISHED) as s, \
            connect(server, other) as o:
        o.send_text(user, "to both devices")
        o.wait_for(lambda e: isinstance(e, ClientEvent.SENT))
        got = s.wait_for(is_message("to both devices"))
        s.confirm(got.envelope_id)


def test_the_python_quickstart_example_runs(server):
    script = Path(__file__).resolve().parents[3] / "examples" / "python" / "quickstart.py"
    out = subprocess.run(
        [sys.executable, str(script), "--server", server.address, "--server-name", SERVER_NAME,
         "--ca", str(server.cert)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "received from alice-" in out.stdout and "received from bob-" in out.stdout
    assert "safety number of" in out.stdout
