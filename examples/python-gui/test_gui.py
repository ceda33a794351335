"""Two instances of the PyQt6 client (alice and bob) in one process, against a
live hush-server, driven through their widgets with Qt's offscreen platform.

    HUSH_SERVER_BIN=/path/to/hush-server python -m pytest -q test_gui.py

Without $HUSH_SERVER_BIN the server is built with cargo. Screenshots go to
$HUSH_GUI_SCREENSHOTS, or to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import pytest  # noqa: E402

import hush  # noqa: E402
import hush_gui  # noqa: E402
from PyQt6.QtTest import QTest  # noqa: E402
from PyQt6.QtWidgets import QApplication, QMessageBox  # noqa: E402

WORKSPACE = Path(__file__).resolve().parents[2]
SERVER_NAME = "localhost"


def server_binary() -> str:
    binary = os.environ.get("HUSH_SERVER_BIN")
    if binary:
        return binary
    subprocess.run(["cargo", "build", "-q", "-p", "hush-server", "--bin", "hush-server"],
                   cwd=WORKSPACE, check=True)
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=WORKSPACE, check=True, capture_output=True).stdout)
    return str(Path(meta["target_directory"]) / "debug" / "hush-server")


class Server:
    def __init__(self, binary: str, data_dir: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.host = "127.0.0.1"
        self.cert = data_dir / "dev-cert.pem"
        self.process = subprocess.Popen(
            [binary, "--listen", f"{self.host}:{self.port}", "--data-dir", str(data_dir),
             "--server-name", SERVER_NAME, "--admin-listen=",
             "--config", str(Path(__file__).resolve().parents[2] / "bindings" / "test-server.toml"),
             "serve"],
            env={**os.environ, "RUST_LOG": "warn"}, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"hush-server exited with {self.process.returncode}")
            if self.cert.exists():
                try:
                    hush.open_tls(self.host, self.port, SERVER_NAME,
                                  hush.tls_context(cafile=str(self.cert)), timeout=1).close()
                    return
                except hush.ConnectionError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("hush-server did not come up")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def server():
    with tempfile.TemporaryDirectory(prefix="hush-gui-server-") as data:
        server = Server(server_binary(), Path(data))
        yield server
        server.stop()


@pytest.fixture(scope="session")
def qapp():
    return QApplication.instance() or QApplication(["test_gui"])


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("HUSH_GUI_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def windows(qapp, server, tmp_path):
    """Makes main windows on the test server; closes them all at the end."""
    made: list[hush_gui.HushWindow] = []

    def make(name: str) -> hush_gui.HushWindow:
        window = hush_gui.HushWindow(tmp_path / name, server.host, server.port, SERVER_NAME,
                                     str(server.cert))
        window.show()
        made.append(window)
        return window

    yield make
    for window in made:
        window.close()
    qapp.processEvents()


def spin(condition, what: str, timeout: float = 30.0, window=None) -> None:
    """Runs the Qt event loop until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            seen = ""
            if window is not None:
                seen = "; it shows " + repr({c: v.message_texts()
                                            for c, v in window.conversations.items()})
                seen += f"; status {window.statusBar().currentMessage()!r}"
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{seen}")
        QApplication.processEvents()
        time.sleep(0.01)


def unique(name: str) -> str:
    return f"{name}{os.getpid()}x{time.monotonic_ns() % 1_000_000}"


def sign_up(window: hush_gui.HushWindow, user: str) -> None:
    """Through the sign-up panel, as a user would."""
    QTest.keyClicks(window.user_input, user)
    window.sign_up_button.click()
    spin(lambda: window.ready, f"{user} to sign up, log in and publish its prekeys")
    assert window.status_label.text() == "Connected"
    assert (window.profile.key_path.stat().st_mode & 0o777) == 0o600


def type_and_send(window: hush_gui.HushWindow, contact: str, text: str) -> None:
    view = window.conversations[contact]
    QTest.keyClicks(view.input, text)
    view.send_button.click()


def shows(window: hush_gui.HushWindow, contact: str, text: str) -> bool:
    view = window.conversations.get(contact)
    return view is not None and any(text in line for line in view.message_texts())


def test_two_windows_chat_send_a_file_and_compare_safety_numbers(
        windows, tmp_path, screenshots, monkeypatch):
    alice_id, bob_id = unique("alice"), unique("bob")
    alice, bob = windows("alice"), windows("bob")
    sign_up(alice, alice_id)
    sign_up(bob, bob_id)

    # Alice adds Bob and writes; Bob's window gets a new contact and the text.
    QTest.keyClicks(alice.contact_input, bob_id)
    alice.add_button.click()
    type_and_send(alice, bob_id, "hello bob, from the GUI")
    spin(lambda: shows(bob, alice_id, "hello bob, from the GUI"), "bob to see alice's text",
         window=bob)
    spin(lambda: shows(alice, bob_id, "✓ sent"), "alice's message to be marked sent",
         window=alice)
    assert bob.contact_list.findItems(alice_id, hush_gui.Qt.MatchFlag.MatchExactly)

    bob.contact_list.setCurrentRow(0)
    type_and_send(bob, alice_id, "hi alice, got it")
    spin(lambda: shows(alice, bob_id, "hi alice, got it"), "alice to see bob's reply",
         window=alice)
    line = next(t for t in alice.conversations[bob_id].message_texts() if "got it" in t)
    assert bob_id in line  # shown with its sender

    # A file of three pieces: the progress bar reaches 100 and Bob sees it.
    data = os.urandom(600 * 1024)
    source = tmp_path / "report.bin"
    source.write_bytes(data)
    monkeypatch.setattr(hush_gui.QFileDialog, "getOpenFileName",
                        lambda *a, **k: (str(source), ""))
    progress = alice.conversations[bob_id].upload_progress
    seen: list[int] = []
    progress.valueChanged.connect(seen.append)
    alice.conversations[bob_id].file_button.click()
    spin(lambda: shows(bob, alice_id, "report.bin"), "bob to see the attachment", window=bob)
    assert progress.value() == 100
    assert seen == [0, 42, 85, 100], seen  # 0, then one step per 256 KiB piece
    spin(lambda: shows(alice, bob_id, "report.bin (614,400 bytes)  ✓ sent"),
         "the attachment to be marked sent")

    # Bob saves it: downloaded, decrypted and checked, with progress.
    (row,) = bob.conversations[alice_id].attachment_rows()
    target = tmp_path / "saved.bin"
    monkeypatch.setattr(hush_gui.QFileDialog, "getSaveFileName",
                        lambda *a, **k: (str(target), ""))
    row.save_button.click()
    spin(lambda: target.exists(), "the download to finish")
    assert target.read_bytes() == data
    assert row.progress.value() == 100

    # Safety numbers, from each side's "Safety number…" button, match.
    alice.conversations[bob_id].safety_button.click()
    bob.conversations[alice_id].safety_button.click()
    QApplication.processEvents()
    (dialog_a,) = alice.findChildren(hush_gui.SafetyNumberDialog)
    (dialog_b,) = bob.findChildren(hush_gui.SafetyNumberDialog)
    assert len(dialog_a.group_labels) == 12
    assert dialog_a.digits() == dialog_b.digits() == alice.device.safety_number(bob_id).digits

    QApplication.processEvents()
    shots = {
        "alice.png": alice, "bob.png": bob, "alice-safety-number.png": dialog_a,
    }
    for name, widget in shots.items():
        assert widget.grab().save(str(screenshots / name))
        assert (screenshots / name).stat().st_size > 0
    dialog_a.close()
    dialog_b.close()

    # One window per profile: a second one on the open store says so.
    second = windows("alice")
    assert "open in another window" in second.sign_up_error.text()
    assert second.conn is None
    alice.ensure_contact("zed")  # saved by alice after the second window read the file
    second.close()  # which must not write its stale copy back
    assert "zed" in json.loads(alice.profile.json_path.read_text())["contacts"]

    # The history is kept: a reopened profile shows the conversation.
    alice.close()
    again = windows("alice")
    assert again.user == alice_id
    spin(lambda: again.ready, "the reopened profile to log in")
    texts = again.conversations[bob_id].message_texts()
    assert any("hello bob, from the GUI" in t for t in texts)
    assert any("hi alice, got it" in t for t in texts)


def test_identity_change_banner_from_a_synthetic_event(windows, screenshots, monkeypatch):
    """A real identity change needs the contact to re-register under the same
    id, which the reference server refuses; the event is fed in by hand."""
    carol_id, dave_id = unique("carol"), unique("dave")
    carol, dave = windows("carol"), windows("dave")
    sign_up(carol, carol_id)
    sign_up(dave, dave_id)
    # A taken user id is refused on the sign-up panel, and nothing is created.
    late = windows("late")
    QTest.keyClicks(late.user_input, carol_id)
    late.sign_up_button.click()
    spin(lambda: "Could not register" in late.sign_up_error.text(), "the refusal")
    assert "CONFLICT" in late.sign_up_error.text()
    assert not late.profile.store_path.exists() and late.device is None
    carol.ensure_contact(dave_id, select=True)
    type_and_send(carol, dave_id, "hi dave")
    spin(lambda: shows(dave, carol_id, "hi dave"), "dave to see carol's text", window=dave)
    identity = carol.device.trusted_identity(dave_id)
    assert identity is not None

    view = carol.conversations[dave_id]
    assert not view.banner.isVisible()
    # The identity a reinstalled "dave" would present.
    reinstalled = hush.Device.create_in_memory(hush.NewDevice.for_new_account(dave_id), 1)
    new_identity = reinstalled.identity_key()
    carol.handle_event(hush.ClientEvent.IDENTITY_CHANGED(dave_id, identity, new_identity))
    assert view.banner.isVisible()
    assert "identity has changed" in view.banner_label.text()
    assert carol.findChildren(hush_gui.SafetyNumberDialog) == []
    QApplication.processEvents()
    assert carol.grab().save(str(screenshots / "carol-identity-changed.png"))

    asked: list[str] = []

    def question(_parent, _title, text, *rest, **kw):
        asked.append(text)
        return QMessageBox.StandardButton.Yes

    monkeypatch.setattr(hush_gui.QMessageBox, "question", question)
    view.accept_button.click()
    # The user was shown the new safety number before accepting it.
    new_number = carol.device.safety_number_with(dave_id, new_identity)
    assert asked and all(group in asked[0] for group in new_number.groups)
    assert not view.banner.isVisible()
    assert shows(carol, dave_id, f"you accepted {dave_id}'s new identity")
    assert carol.device.trusted_identity(dave_id) == new_identity
    (dialog,) = carol.findChildren(hush_gui.SafetyNumberDialog)
    assert dialog.digits() == new_number.digits
    assert dialog.digits() != dave.device.safety_number(carol_id).digits


@pytest.mark.skipif(not os.environ.get("HUSH_CLI_BIN"), reason="set HUSH_CLI_BIN to hush-cli")
def test_the_gui_and_hush_cli_talk(windows, server, tmp_path):
    """The GUI against the Rust command-line client, each way."""
    cli_id, gui_id = unique("cli"), unique("gui")
    flags = ["--home", str(tmp_path / "cli-home"), "--server", f"{server.host}:{server.port}",
             "--server-name", SERVER_NAME, "--ca", str(server.cert)]

    def cli(*args: str) -> str:
        out = subprocess.run([os.environ["HUSH_CLI_BIN"], *flags, *args], capture_output=True,
                             text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, f"hush-cli {args}: {out.stdout}\n{out.stderr}"
        return out.stdout

    cli("register", cli_id)
    gui = windows("gui")
    sign_up(gui, gui_id)
    gui.ensure_contact(cli_id, select=True)
    type_and_send(gui, cli_id, "hello from the window")
    spin(lambda: shows(gui, cli_id, "✓ sent"), "the text to be sent", window=gui)
    heard = cli("listen", "--count", "1", "--timeout", "30")
    assert "hello from the window" in heard and gui_id in heard
    cli("send", gui_id, "hello from the terminal")
    spin(lambda: shows(gui, cli_id, "hello from the terminal"), "the cli's text", window=gui)
    safety = cli("safety", gui_id)
    assert all(group in safety for group in gui.device.safety_number(cli_id).groups), safety
