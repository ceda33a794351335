"""Unit tests of the Python bindings: no server, no network."""

from __future__ import annotations

import gc
import threading

import pytest

import hush
from hush import AttachmentKind, Device, DeviceAddress, HushError, NewDevice


def make_device(user: str, device_id: int = 1) -> Device:
    return Device.create_in_memory(NewDevice.for_new_account(user), device_id)


def pair() -> tuple[Device, Device]:
    """Alice with a session to Bob, who has not answered yet."""
    alice, bob = make_device("alice"), make_device("bob")
    events = alice.start_session(bob.bundle())
    assert any(isinstance(e, hush.TrustEvent.IDENTITY_TRUSTED) and e.user == "bob" for e in events)
    return alice, bob


def test_encrypt_decrypt_both_ways():
    alice, bob = pair()
    a, b = alice.address(), bob.address()
    assert a == DeviceAddress(user="alice", device=1)
    first = alice.encrypt(b, b"hello bob")
    got = bob.decrypt(a, first)
    assert got.plaintext == b"hello bob"
    assert any(isinstance(e, hush.TrustEvent.IDENTITY_TRUSTED) for e in got.events)
    for i in range(20):
        msg = f"message {i}".encode()
        if i % 3 == 0:
            assert alice.decrypt(b, bob.encrypt(a, msg)).plaintext == msg
        else:
            assert bob.decrypt(a, alice.encrypt(b, msg)).plaintext == msg


def test_ciphertext_hides_plaintext_and_is_fresh():
    alice, bob = pair()
    c1 = alice.encrypt(bob.address(), b"same text")
    c2 = alice.encrypt(bob.address(), b"same text")
    assert c1 != c2
    assert b"same text" not in c1


def test_errors_raise_python_exceptions():
    alice, bob = make_device("alice"), make_device("bob")
    with pytest.raises(HushError.NoSession) as no_session:
        alice.encrypt(bob.address(), b"x")
    assert "bob" in no_session.value.peer
    with pytest.raises(HushError.InvalidArgument):
        NewDevice.for_new_account("")
    with pytest.raises(HushError.InvalidArgument):
        alice.start_session(b"\x01not a bundle")
    with pytest.raises(HushError.InvalidArgument):
        alice.start_session(b"\x00" * 100_000)  # over the length cap
    with pytest.raises(HushError.InvalidArgument):
        Device.create_in_memory(NewDevice.for_new_account("carol"), 1).accept_identity_change(
            "bob", b"short"
        )
    # Every variant is a HushError, so one except clause catches them all.
    with pytest.raises(HushError):
        alice.encrypt(DeviceAddress(user="nobody", device=9), b"x")


def test_tampered_message_is_refused_and_session_survives():
    alice, bob = pair()
    a, b = alice.address(), bob.address()
    assert bob.decrypt(a, alice.encrypt(b, b"one")).plaintext == b"one"
    good = alice.encrypt(b, b"two")
    bad = bytearray(good)
    bad[-1] ^= 1
    with pytest.raises(HushError.Refused):
        bob.decrypt(a, bytes(bad))
    assert bob.decrypt(a, good).plaintext == b"two"
    with pytest.raises(HushError.Refused):
        bob.decrypt(a, good)  # a replay


def test_identity_change_is_reported_until_accepted():
    alice, bob = pair()
    bob.decrypt(alice.address(), alice.encrypt(bob.address(), b"hi"))
    # "alice" comes back with a new account identity (a new install).
    impostor = make_device("alice")
    with pytest.raises(HushError.IdentityChanged) as changed:
        bob.start_session(impostor.bundle())
    assert changed.value.user == "alice"
    assert changed.value.trusted == alice.identity_key()
    assert changed.value.received == impostor.identity_key()
    bob.accept_identity_change("alice", changed.value.received)
    bob.start_session(impostor.bundle())
    assert bob.trusted_identity("alice") == impostor.identity_key()


def test_safety_numbers_match_and_qr_verifies():
    alice, bob = pair()
    bob.decrypt(alice.address(), alice.encrypt(bob.address(), b"hi"))
    a_num, b_num = alice.safety_number("bob"), bob.safety_number("alice")
    assert a_num is not None and b_num is not None
    assert a_num.digits == b_num.digits and len(a_num.digits) == 60
    assert len(a_num.groups) == 12
    assert bob.verify_safety_qr("alice", a_num.qr_payload)
    other = make_device("carol")
    other.start_session(bob.bundle())
    assert not bob.verify_safety_qr("alice", other.safety_number("bob").qr_payload)
    assert alice.safety_number("nobody") is None


def test_sqlite_store_survives_reopen(tmp_path):
    key = hush.generate_storage_key()
    assert len(key) == 32
    path = str(tmp_path / "alice.db")
    alice = Device.create_sqlite(path, key, NewDevice.for_new_account("alice"), 3)
    bob = make_device("bob")
    alice.start_session(bob.bundle())
    bob.decrypt(alice.address(), alice.encrypt(bob.address(), b"before"))
    # The store is locked while open.
    with pytest.raises(HushError.StoreLocked):
        Device.open_sqlite(path, key)
    del alice
    gc.collect()
    with pytest.raises(HushError.WrongStorageKey):
        Device.open_sqlite(path, hush.generate_storage_key())
    alice = Device.open_sqlite(path, key)
    assert alice.address() == DeviceAddress(user="alice", device=3)
    assert bob.decrypt(alice.address(), alice.encrypt(bob.address(), b"after")).plaintext == b"after"
    assert alice.decrypt(bob.address(), bob.encrypt(alice.address(), b"reply")).plaintext == b"reply"
    with pytest.raises(HushError.NoAccount):
        Device.open_sqlite(str(tmp_path / "empty.db"), key)
    other = str(tmp_path / "other.db")
    first = Device.create_sqlite(other, key, NewDevice.for_new_account("zoe"), 1)
    del first
    gc.collect()
    with pytest.raises(HushError.AccountExists):
        Device.create_sqlite(other, key, NewDevice.for_new_account("zoe"), 2)


def test_new_device_keys_are_used_once(tmp_path):
    new = NewDevice.for_new_account("dora")
    Device.create_in_memory(new, 1)
    with pytest.raises(HushError.AlreadyUsed):
        Device.create_in_memory(new, 2)
    with pytest.raises(HushError.AlreadyUsed):
        new.registration("localhost")


class DictStorage(hush.AppStorage):
    """App-provided storage over a dict; each batch lands whole or not at all."""

    def __init__(self) -> None:
        self.rows: dict[tuple[int, bytes], bytes] = {}
        self.batches = 0
        self.fail_next = False

    def get(self, table, key):
        return self.rows.get((table, key))

    def scan(self, table):
        return [hush.StoredRow(key=k, value=v) for (t, k), v in self.rows.items() if t == table]

    def apply(self, batch):
        if self.fail_next:
            self.fail_next = False
            raise HushError.Storage("disk full")
        staged = dict(self.rows)
        for op in batch:
            if isinstance(op, hush.StoreOp.PUT):
                staged[(op.table, op.key)] = op.value
            else:
                staged.pop((op.table, op.key), None)
        self.rows = staged
        self.batches += 1


def test_app_storage_receives_atomic_batches_and_reopens():
    storage = DictStorage()
    key = hush.generate_storage_key()
    alice = Device.create_with_storage(storage, key, NewDevice.for_new_account("alice"), 1)
    assert storage.batches == 1 and storage.rows
    bob = make_device("bob")
    alice.start_session(bob.bundle())
    before = dict(storage.rows)
    # A failing apply keeps nothing, and the error reaches Python unchanged.
    storage.fail_next = True
    with pytest.raises(HushError.Storage) as failed:
        alice.encrypt(bob.address(), b"lost")
    assert "disk full" in failed.value.reason
    assert storage.rows == before
    message = alice.encrypt(bob.address(), b"kept")
    assert storage.rows != before
    # Nothing readable lands in the app's database.
    assert not any(b"kept" in v for v in storage.rows.values())
    del alice
    gc.collect()
    reopened = Device.open_with_storage(storage, key)
    assert bob.decrypt(reopened.address(), message).plaintext == b"kept"
    with pytest.raises(HushError.WrongStorageKey):
        Device.open_with_storage(storage, hush.generate_storage_key())


def test_app_storage_that_raises_anything_becomes_a_storage_error():
    class Broken(DictStorage):
        def apply(self, batch):
            raise RuntimeError("boom")

    with pytest.raises(HushError.Storage):
        Device.create_with_storage(Broken(), hush.generate_storage_key(),
                                   NewDevice.for_new_account("eve"), 1)


def test_attachments_round_trip_in_chunks_and_detect_tampering():
    data = bytes(range(256)) * 1000  # 256 000 bytes
    enc = hush.AttachmentEncryptor(AttachmentKind.FILE, "application/octet-stream", len(data))
    blob = bytearray()
    for i in range(0, len(data), 70_000):
        blob += enc.update(data[i:i + 70_000])
    blob += enc.finish()
    assert len(blob) == enc_len(data)
    pointer = enc.pointer(b"blob-1")
    info = hush.attachment_info(pointer)
    assert info.plaintext_len == len(data) and info.kind == AttachmentKind.FILE
    assert info.ciphertext_len == len(blob)

    dec = hush.AttachmentDecryptor(pointer)
    out = bytearray()
    for i in range(0, len(blob), 50_001):
        out += dec.update(bytes(blob[i:i + 50_001]))
    dec.finish()
    assert bytes(out) == data

    blob[100] ^= 1
    dec = hush.AttachmentDecryptor(pointer)
    with pytest.raises(HushError.Attachment):
        dec.update(bytes(blob))
        dec.finish()

    dec = hush.AttachmentDecryptor(pointer)
    dec.update(bytes(blob[:1000]))
    with pytest.raises(HushError.Attachment):
        dec.finish()  # truncated

    with pytest.raises(HushError.Attachment):
        hush.AttachmentEncryptor(AttachmentKind.IMAGE, "image/png", 1 << 40)
    with pytest.raises(HushError.Attachment):
        hush.attachment_info(b"garbage")


def enc_len(data: bytes) -> int:
    enc = hush.AttachmentEncryptor(AttachmentKind.FILE, "application/octet-stream", len(data))
    return enc.ciphertext_len()


def test_objects_are_safe_to_share_between_threads():
    alice, bob = pair()
    a, b = alice.address(), bob.address()
    bob.decrypt(a, alice.encrypt(b, b"start"))
    out: list[bytes] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(25):
            c = alice.encrypt(b, f"{n}-{i}".encode())
            with lock:
                out.append(c)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = sorted(bob.decrypt(a, c).plaintext for c in out)
    assert got == sorted(f"{n}-{i}".encode() for n in range(4) for i in range(25))


def test_registration_and_client_are_sans_io():
    new = NewDevice.for_new_account("frank")
    reg = new.registration("localhost")
    # Nothing is sent before the server's challenge.
    assert reg.take_transmit() == b""
    with pytest.raises(HushError.Protocol):
        reg.handle_input(b"\xff\xff\xff\xff" + b"x" * 16)
    with pytest.raises(HushError.InvalidArgument):
        new.registration("not a name!")
    device = Device.create_in_memory(new, 1)
    client = device.client("localhost")
    assert not client.is_authenticated()
    client.handle_connected()
    with pytest.raises(HushError.InvalidArgument):
        client.confirm(b"short")
    with pytest.raises(HushError.InvalidArgument):
        device.client("bad name!")
    # The device keeps working beside its client.
    assert client.device().address() == device.address()


def test_peer_sessions_pass_plain_bytes_and_queue_trust_events():
    alice, bob = make_device("alice"), make_device("bob")
    to_bob = alice.session(bob.address())
    with pytest.raises(HushError.NoSession):
        to_bob.encrypt(b"too early")
    alice.start_session(bob.bundle())
    from_alice = bob.session(alice.address())
    assert from_alice.peer() == alice.address()
    assert from_alice.decrypt(to_bob.encrypt(b"first")) == b"first"
    events = bob.take_trust_events()
    assert any(isinstance(e, hush.TrustEvent.IDENTITY_TRUSTED) and e.user == "alice"
               for e in events)
    assert bob.take_trust_events() == []
    to_alice = bob.session(alice.address())
    from_bob = alice.session(bob.address())
    for i in range(10):
        assert from_bob.decrypt(to_alice.encrypt(b"%d" % i)) == b"%d" % i
    with pytest.raises(HushError.Refused):
        from_bob.decrypt(b"\x00" * 40)


def test_close_releases_the_store_at_once(tmp_path):
    key = hush.generate_storage_key()
    path = str(tmp_path / "d.db")
    device = Device.create_sqlite(path, key, NewDevice.for_new_account("gail"), 1)
    client = device.client("localhost")
    session = device.session(DeviceAddress(user="bob", device=1))
    device.close_store()
    reopened = Device.open_sqlite(path, key)  # no garbage collection needed
    assert reopened.address().user == "gail"
    for call in (device.address, client.take_transmit, lambda: session.encrypt(b"x"),
                 lambda: device.client("localhost")):
        with pytest.raises(HushError.AlreadyUsed):
            call()


def test_safety_number_with_an_identity_not_trusted_yet():
    alice, bob = pair()
    bob.decrypt(alice.address(), alice.encrypt(bob.address(), b"hi"))
    trusted = bob.safety_number("alice")
    assert bob.safety_number_with("alice", alice.identity_key()).digits == trusted.digits
    other = make_device("alice")
    new = bob.safety_number_with("alice", other.identity_key())
    assert new.digits != trusted.digits
    with pytest.raises(HushError.InvalidArgument):
        bob.safety_number_with("alice", b"short")


def test_the_direct_hot_path_matches_the_generated_one():
    from hush import _fastpath

    assert hush.PeerSession.encrypt is not _fastpath.generated_encrypt
    alice, bob = pair()
    to_bob, from_alice = alice.session(bob.address()), bob.session(alice.address())
    # Each path reads what the other wrote, in both directions.
    assert from_alice.decrypt(_fastpath.generated_encrypt(to_bob, b"generated")) == b"generated"
    assert _fastpath.generated_decrypt(from_alice, to_bob.encrypt(b"direct")) == b"direct"
    assert from_alice.decrypt(to_bob.encrypt(b"")) == b""
    big = bytes(range(256)) * 200
    assert from_alice.decrypt(to_bob.encrypt(big)) == big
    # The same errors, raised the same way.
    stranger = make_device("zed").session(bob.address())
    for call in (stranger.encrypt, lambda m: _fastpath.generated_encrypt(stranger, m)):
        with pytest.raises(HushError.NoSession):
            call(b"x")
    for call in (from_alice.decrypt, lambda m: _fastpath.generated_decrypt(from_alice, m)):
        with pytest.raises(HushError.Refused):
            call(b"\x00" * 40)
    for call in (to_bob.encrypt, lambda m: _fastpath.generated_encrypt(to_bob, m)):
        with pytest.raises(TypeError):
            call("text, not bytes")
    # Nothing leaks: many calls keep the process's memory flat.
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(20_000):
        from_alice.decrypt(to_bob.encrypt(big[:1024]))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 20_000, f"{grown_kib} KiB more after 20,000 round trips"


def test_garbage_in_raises_hush_errors_never_a_panic():
    """Random bytes into every entry point that parses untrusted input: a
    `HushError` or a normal return, never uniffi's `InternalError` (a Rust
    panic caught at the boundary)."""
    import random

    rng = random.Random(6)
    alice, bob = pair()
    session = bob.session(alice.address())
    client = make_device("carl").client("localhost")
    registration = NewDevice.for_new_account("dana").registration("localhost")
    enc = hush.AttachmentEncryptor(AttachmentKind.FILE, "a/b", 10)
    enc.update(b"0123456789")
    enc.finish()
    pointer = enc.pointer(b"id")
    entry_points = [
        lambda b: bob.decrypt(alice.address(), b),
        session.decrypt,
        alice.start_session,
        hush.attachment_info,
        hush.AttachmentDecryptor,
        lambda b: hush.AttachmentDecryptor(pointer).update(b),
        lambda b: client.send_link(b, b),
        lambda b: client.begin_download(b),
        lambda b: bob.verify_safety_qr("alice", b),
        lambda b: alice.accept_identity_change("bob", b),
    ]
    for n in range(200):
        data = rng.randbytes(rng.choice([0, 1, 4, 16, 33, 64, 200, 1200, 3000]))
        for call in entry_points:
            try:
                call(data)
            except HushError:
                pass
    # The framing layers take a stream: feed pieces, and stop at the first
    # protocol error (the connection would be closed).
    for feed in (client.handle_input, registration.handle_input):
        try:
            for _ in range(100):
                feed(rng.randbytes(rng.randint(0, 300)))
        except HushError.Protocol:
            pass
    # The devices still work.
    assert session.decrypt(alice.session(bob.address()).encrypt(b"still fine")) == b"still fine"
