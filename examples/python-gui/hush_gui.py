#!/usr/bin/env python3
"""A small desktop chat client on the Hush Python bindings, in PyQt6.

It uses only the public ``hush`` package: ``hush.register_account`` and
``Device.create_sqlite`` to sign up, ``Device.open_sqlite`` to open an
existing profile, ``hush.Connection`` to stay connected, and the client's
text, attachment, safety-number and identity-change API.

Run the reference server in the repository root (``cargo run -p
hush-server``), then::

    python examples/python-gui/hush_gui.py --profile alice

A profile folder holds:

* ``store.db``: the device's encrypted SQLite store (keys, sessions);
* ``storage.key``: the key of that store, hex, mode 0600;
* ``profile.json``: the user id, the contacts and the conversation history.

``Connection`` calls its callback on its own thread; :class:`EventBridge`
turns each event into a Qt signal, so every widget is only touched on the
GUI thread.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import hush
from hush import ClientEvent, Device, MessageBody, NewDevice
from PyQt6.QtCore import QObject, Qt, QTimer, pyqtSignal
from PyQt6.QtGui import QFont
from PyQt6.QtWidgets import (
    QApplication,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

#: Uploads are fed to the client in pieces of this size; the progress bar
#: moves after each piece.
PIECE = 256 * 1024


def _mono() -> QFont:
    font = QFont("monospace")
    font.setStyleHint(QFont.StyleHint.Monospace)
    return font


class EventBridge(QObject):
    """Carries events from background threads to the GUI thread."""

    event = pyqtSignal(object)       # a hush.Connection event
    registered = pyqtSignal(object)  # (NewDevice, device id) or an Exception


class Profile:
    """The profile folder: store, storage key and a JSON of settings."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.store_path = self.folder / "store.db"
        self.key_path = self.folder / "storage.key"
        self.json_path = self.folder / "profile.json"
        self.data: dict = {"user": None, "device_id": None, "contacts": [], "history": {}}
        if self.json_path.exists():
            self.data.update(json.loads(self.json_path.read_text()))

    @property
    def exists(self) -> bool:
        return bool(self.data["user"]) and self.store_path.exists() and self.key_path.exists()

    def new_storage_key(self) -> bytes:
        # A real app keeps this key in the OS keystore (Keychain, Windows
        # Credential Manager, Secret Service / libsecret), not in a file.
        key = hush.generate_storage_key()
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.hex())
        os.chmod(self.key_path, 0o600)
        return key

    def storage_key(self) -> bytes:
        return bytes.fromhex(self.key_path.read_text().strip())

    def history(self, contact: str) -> list:
        return self.data["history"].setdefault(contact, [])

    def save(self) -> None:
        # The history is kept in plain JSON to keep the example short; a real
        # app encrypts it too (for instance in a database under the same key).
        tmp = self.json_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.json_path)


def describe(record: dict) -> str:
    """One line for a message record, as the conversation view shows it."""
    when = time.strftime("%H:%M", time.localtime(record["time"]))
    if record["kind"] == "file":
        body = f"file {record['name']} ({record['size']:,} bytes)"
    elif record["kind"] == "system":
        return f"— {record['text']} —"
    else:
        body = record["text"]
    status = {"pending": "  … pending", "sent": "  ✓ sent", "failed": "  ✗ failed"}
    return f"[{when}] {record['sender']}: {body}{status.get(record.get('status'), '')}"


class SafetyNumberDialog(QDialog):
    """The safety number in 3 rows of 4 groups, with what to do with it."""

    def __init__(self, parent: QWidget, me: str, contact: str, number: hush.SafetyNumber):
        super().__init__(parent)
        self.setWindowTitle(f"Safety number with {contact}")
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(f"<b>{me}</b> and <b>{contact}</b>"))
        grid = QGridLayout()
        self.group_labels: list[QLabel] = []
        font = _mono()
        font.setPointSize(14)
        for i, group in enumerate(number.groups):
            label = QLabel(group)
            label.setFont(font)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            grid.addWidget(label, i // 4, i % 4)
            self.group_labels.append(label)
        layout.addLayout(grid)
        explain = QLabel(
            "Compare these numbers with the ones on your contact's screen, in "
            "person or over a call you trust. If they are the same, nobody is "
            "in the middle of your conversation. They change when either of you "
            "reinstalls or changes identity."
        )
        explain.setWordWrap(True)
        layout.addWidget(explain)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def digits(self) -> str:
        return "".join(label.text() for label in self.group_labels)


class AttachmentRow(QWidget):
    """An attachment in a conversation: a label, Save… and a progress bar."""

    def __init__(self, record: dict, on_save) -> None:
        super().__init__()
        self.record = record
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        self.label = QLabel(describe(record))
        layout.addWidget(self.label)
        row = QHBoxLayout()
        self.save_button = QPushButton("Save…")
        self.save_button.clicked.connect(lambda: on_save(self))
        self.save_button.setVisible(record["direction"] == "in")
        row.addWidget(self.save_button)
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(200)
        self.progress.setVisible(False)
        row.addWidget(self.progress)
        row.addStretch(1)
        layout.addLayout(row)

    def refresh(self) -> None:
        self.label.setText(describe(self.record))


class ConversationView(QWidget):
    """The messages with one contact, the input line and the buttons."""

    def __init__(self, window: "HushWindow", contact: str) -> None:
        super().__init__()
        self.main = window
        self.contact = contact
        self.items: dict[str, QListWidgetItem] = {}  # message id (hex) -> item
        self.pending_identity: Optional[bytes] = None
        layout = QVBoxLayout(self)

        # The identity-change warning, hidden until IdentityChanged arrives.
        self.banner = QFrame()
        self.banner.setStyleSheet("QFrame { background: #c62828; } QLabel { color: white; }")
        banner_layout = QHBoxLayout(self.banner)
        self.banner_label = QLabel()
        self.banner_label.setWordWrap(True)
        banner_layout.addWidget(self.banner_label, 1)
        self.accept_button = QPushButton("I verified, accept")
        self.accept_button.clicked.connect(self.accept_identity)
        banner_layout.addWidget(self.accept_button)
        self.banner.setVisible(False)
        layout.addWidget(self.banner)

        header = QHBoxLayout()
        title = QLabel(f"<b>{contact}</b>")
        header.addWidget(title, 1)
        self.safety_button = QPushButton("Safety number…")
        self.safety_button.clicked.connect(lambda: self.main.show_safety_number(contact))
        header.addWidget(self.safety_button)
        layout.addLayout(header)

        self.messages = QListWidget()
        self.messages.setWordWrap(True)
        layout.addWidget(self.messages, 1)

        self.upload_progress = QProgressBar()
        self.upload_progress.setFormat("Uploading %p%")
        self.upload_progress.setVisible(False)
        layout.addWidget(self.upload_progress)

        row = QHBoxLayout()
        self.input = QLineEdit()
        self.input.setPlaceholderText(f"Message {contact}")
        self.input.returnPressed.connect(self.send_clicked)
        row.addWidget(self.input, 1)
        self.send_button = QPushButton("Send")
        self.send_button.clicked.connect(self.send_clicked)
        row.addWidget(self.send_button)
        self.file_button = QPushButton("Send file…")
        self.file_button.clicked.connect(self.file_clicked)
        row.addWidget(self.file_button)
        layout.addLayout(row)

        for record in self.main.profile.history(contact):
            self.show_record(record)

    # -- showing ---------------------------------------------------------

    def show_record(self, record: dict) -> None:
        item = QListWidgetItem()
        if record["kind"] == "file":
            row = AttachmentRow(record, self.main.save_attachment)
            item.setSizeHint(row.sizeHint())
            self.messages.addItem(item)
            self.messages.setItemWidget(item, row)
        else:
            item.setText(describe(record))
            if record["direction"] == "out":
                item.setForeground(Qt.GlobalColor.darkBlue)
            self.messages.addItem(item)
        if record.get("id"):
            self.items[record["id"]] = item
        self.messages.scrollToBottom()

    def refresh(self, message_id: str) -> None:
        item = self.items.get(message_id)
        if item is None:
            return
        row = self.messages.itemWidget(item)
        if isinstance(row, AttachmentRow):
            row.refresh()
        else:
            record = next(r for r in self.main.profile.history(self.contact)
                          if r.get("id") == message_id)
            item.setText(describe(record))

    def message_texts(self) -> list[str]:
        """What the view shows, one string per message (for tests too)."""
        texts = []
        for i in range(self.messages.count()):
            item = self.messages.item(i)
            row = self.messages.itemWidget(item)
            texts.append(row.label.text() if isinstance(row, AttachmentRow) else item.text())
        return texts

    def attachment_rows(self) -> list[AttachmentRow]:
        rows = (self.messages.itemWidget(self.messages.item(i))
                for i in range(self.messages.count()))
        return [r for r in rows if isinstance(r, AttachmentRow)]

    # -- actions ---------------------------------------------------------

    def send_clicked(self) -> None:
        text = self.input.text().strip()
        if text:
            self.input.clear()
            self.main.send_text(self.contact, text)

    def file_clicked(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, f"Send a file to {self.contact}")
        if path:
            self.main.send_file(self.contact, path)

    def show_identity_change(self, received: bytes) -> None:
        self.pending_identity = received
        self.banner_label.setText(
            f"⚠ {self.contact}'s identity has changed. They may have reinstalled "
            "the app, or someone may be intercepting. Nothing is exchanged with "
            "them until you compare the new safety number and accept it."
        )
        self.banner.setVisible(True)

    def accept_identity(self) -> None:
        if self.pending_identity is not None:
            self.main.accept_identity_change(self.contact, self.pending_identity)


class HushWindow(QMainWindow):
    """The main window: sign-up panel, then contacts and conversations."""

    def __init__(self, profile: str | os.PathLike, host: str = "127.0.0.1", port: int = 7443,
                 server_name: str = "localhost", ca: Optional[str] = None) -> None:
        super().__init__()
        self.profile = Profile(profile)
        self.host, self.port, self.server_name = host, port, server_name
        self.context = hush.tls_context(cafile=ca)
        self.device: Optional[Device] = None
        self.conn: Optional[hush.Connection] = None
        self.connected = False
        self.queue_empty = False  # logged in and the server's queue delivered
        self.conversations: dict[str, ConversationView] = {}
        self.uploads: dict[int, dict] = {}    # transfer -> upload state
        self.downloads: dict[int, dict] = {}  # transfer -> download state
        self.bridge = EventBridge()
        self.bridge.event.connect(self.handle_event, Qt.ConnectionType.QueuedConnection)
        self.bridge.registered.connect(self.registration_done,
                                       Qt.ConnectionType.QueuedConnection)
        self.setWindowTitle("Hush")
        self.resize(820, 560)

        self.pages = QStackedWidget()
        self.setCentralWidget(self.pages)
        self.pages.addWidget(self._build_signup())
        self.pages.addWidget(self._build_chat())
        self.status_label = QLabel("Disconnected")
        self.statusBar().addPermanentWidget(self.status_label)

        if self.profile.exists:
            self.open_existing()

    # -- building --------------------------------------------------------

    def _build_signup(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addStretch(1)
        layout.addWidget(QLabel("<h2>Welcome to Hush</h2>"))
        layout.addWidget(QLabel(f"Create an account on {self.host}:{self.port} "
                                f"({self.server_name}). Pick a user id:"))
        self.user_input = QLineEdit()
        self.user_input.setPlaceholderText("user id, e.g. alice")
        self.user_input.returnPressed.connect(self.sign_up_clicked)
        layout.addWidget(self.user_input)
        self.sign_up_button = QPushButton("Create account")
        self.sign_up_button.clicked.connect(self.sign_up_clicked)
        layout.addWidget(self.sign_up_button)
        self.sign_up_error = QLabel()
        self.sign_up_error.setStyleSheet("color: #c62828")
        self.sign_up_error.setWordWrap(True)
        layout.addWidget(self.sign_up_error)
        layout.addStretch(2)
        return page

    def _build_chat(self) -> QWidget:
        splitter = QSplitter()
        left = QWidget()
        left_layout = QVBoxLayout(left)
        self.me_label = QLabel()
        left_layout.addWidget(self.me_label)
        self.contact_list = QListWidget()
        self.contact_list.currentTextChanged.connect(self.select_contact)
        left_layout.addWidget(self.contact_list, 1)
        add_row = QHBoxLayout()
        self.contact_input = QLineEdit()
        self.contact_input.setPlaceholderText("add contact: user id")
        self.contact_input.returnPressed.connect(self.add_contact_clicked)
        add_row.addWidget(self.contact_input, 1)
        self.add_button = QPushButton("Add")
        self.add_button.clicked.connect(self.add_contact_clicked)
        add_row.addWidget(self.add_button)
        left_layout.addLayout(add_row)
        splitter.addWidget(left)
        self.conversation_stack = QStackedWidget()
        self.conversation_stack.addWidget(QLabel("Add a contact to start a conversation.",
                                                 alignment=Qt.AlignmentFlag.AlignCenter))
        splitter.addWidget(self.conversation_stack)
        splitter.setSizes([220, 600])
        return splitter

    # -- account ---------------------------------------------------------

    def sign_up_clicked(self) -> None:
        user = self.user_input.text().strip()
        if not user:
            self.sign_up_error.setText("Enter a user id.")
            return
        self.sign_up_button.setEnabled(False)
        self.sign_up_error.setText("Registering…")

        def work() -> None:  # registration blocks on the network: not on the GUI thread
            try:
                new = NewDevice.for_new_account(user)
                device_id = hush.register_account(new, self.host, self.port,
                                                  self.server_name, self.context)
                self.bridge.registered.emit((user, new, device_id))
            except Exception as e:  # noqa: BLE001 - shown to the user
                self.bridge.registered.emit(e)

        threading.Thread(target=work, name="hush-register", daemon=True).start()

    def registration_done(self, result: object) -> None:
        self.sign_up_button.setEnabled(True)
        if isinstance(result, Exception):
            self.sign_up_error.setText(f"Could not register: {result}")
            return
        user, new, device_id = result
        key = self.profile.new_storage_key()
        self.device = Device.create_sqlite(str(self.profile.store_path), key, new, device_id)
        self.profile.data.update(user=user, device_id=device_id)
        self.profile.save()
        self.sign_up_error.setText("")
        self.start_chat()

    def open_existing(self) -> None:
        try:
            self.device = Device.open_sqlite(str(self.profile.store_path),
                                             self.profile.storage_key())
        except hush.HushError.StoreLocked:
            self.user_input.setEnabled(False)
            self.sign_up_button.setEnabled(False)
            self.sign_up_error.setText(f"The profile {self.profile.folder} is open in "
                                       "another window or program.")
            return
        self.start_chat()

    @property
    def ready(self) -> bool:
        """Logged in, queue delivered, and reachable by others."""
        return self.queue_empty and bool(self.profile.data.get("prekeys_published"))

    @property
    def user(self) -> str:
        return self.profile.data["user"]

    def start_chat(self) -> None:
        self.setWindowTitle(f"Hush — {self.user}")
        self.me_label.setText(f"Signed in as <b>{self.user}</b> "
                              f"(device {self.profile.data['device_id']})")
        for contact in self.profile.data["contacts"]:
            self.ensure_contact(contact, select=False)
        if self.contact_list.count():
            self.contact_list.setCurrentRow(0)
        self.pages.setCurrentIndex(1)
        self.conn = hush.Connection(self.device.client(self.server_name), self.host, self.port,
                                    self.server_name, self.context,
                                    on_event=self.bridge.event.emit)
        self.status_label.setText("Connecting…")
        self.conn.start()

    # -- contacts --------------------------------------------------------

    def add_contact_clicked(self) -> None:
        contact = self.contact_input.text().strip()
        if not contact or contact == self.user:
            return
        self.contact_input.clear()
        self.ensure_contact(contact, select=True)

    def ensure_contact(self, contact: str, select: bool = False) -> ConversationView:
        view = self.conversations.get(contact)
        if view is None:
            view = ConversationView(self, contact)
            self.conversations[contact] = view
            self.conversation_stack.addWidget(view)
            self.contact_list.addItem(contact)
            if contact not in self.profile.data["contacts"]:
                self.profile.data["contacts"].append(contact)
                self.profile.save()
        if select:
            self.contact_list.setCurrentItem(self.contact_item(contact))
        return view

    def contact_item(self, contact: str) -> QListWidgetItem:
        return self.contact_list.findItems(contact, Qt.MatchFlag.MatchExactly)[0]

    def select_contact(self, contact: str) -> None:
        view = self.conversations.get(contact)
        if view is not None:
            self.conversation_stack.setCurrentWidget(view)
            item = self.contact_item(contact)
            font = item.font()
            font.setBold(False)  # read
            item.setFont(font)

    def mark_unread(self, contact: str) -> None:
        if self.conversation_stack.currentWidget() is not self.conversations[contact]:
            item = self.contact_item(contact)
            font = item.font()
            font.setBold(True)
            item.setFont(font)

    def add_record(self, contact: str, record: dict) -> None:
        view = self.ensure_contact(contact)
        self.profile.history(contact).append(record)
        self.profile.save()
        view.show_record(record)
        if record["direction"] == "in":
            self.mark_unread(contact)

    def find_record(self, message_id: str) -> tuple[Optional[str], Optional[dict]]:
        for contact, records in self.profile.data["history"].items():
            for record in records:
                if record.get("id") == message_id:
                    return contact, record
        return None, None

    def set_status(self, message_id: bytes, status: str) -> None:
        contact, record = self.find_record(message_id.hex())
        if record is not None:
            record["status"] = status
            self.profile.save()
            self.conversations[contact].refresh(record["id"])

    # -- sending ---------------------------------------------------------

    def send_text(self, contact: str, text: str) -> None:
        try:
            message_id = self.conn.send_text(contact, text)
        except hush.HushError as e:
            self.statusBar().showMessage(f"Not sent: {e}", 10000)
            return
        self.add_record(contact, {"id": message_id.hex(), "direction": "out",
                                  "sender": self.user, "time": time.time(),
                                  "kind": "text", "text": text, "status": "pending"})

    def send_file(self, contact: str, path: str) -> None:
        size = os.path.getsize(path)
        media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        try:
            transfer = self.conn.call(
                lambda c: c.begin_upload(hush.AttachmentKind.FILE, media_type, size))
        except hush.HushError as e:
            self.statusBar().showMessage(f"Cannot send {os.path.basename(path)}: {e}", 10000)
            return
        view = self.conversations[contact]
        view.upload_progress.setFormat(f"Uploading {os.path.basename(path)}: %p%")
        view.upload_progress.setValue(0)
        view.upload_progress.setVisible(True)
        view.file_button.setEnabled(False)
        self.uploads[transfer] = {"contact": contact, "path": path, "size": size,
                                  "file": None, "fed": 0}

    def feed_upload(self, transfer: int) -> None:
        """Feeds one piece, updates the progress bar, and comes back for the
        next through the event loop so the window stays responsive."""
        up = self.uploads.get(transfer)
        if up is None:
            return
        if up["file"] is None:
            up["file"] = open(up["path"], "rb")
        piece = up["file"].read(PIECE)
        view = self.conversations[up["contact"]]
        if piece:
            self.conn.call(lambda c: c.upload(transfer, piece))
            up["fed"] += len(piece)
            view.upload_progress.setValue(int(100 * up["fed"] / max(up["size"], 1)))
            QTimer.singleShot(0, lambda: self.feed_upload(transfer))
        else:
            up["file"].close()
            self.conn.call(lambda c: c.finish_upload(transfer))
            view.upload_progress.setValue(100)

    def uploaded(self, event: ClientEvent.UPLOADED) -> None:
        up = self.uploads.pop(event.transfer, None)
        if up is None:
            return
        contact, name = up["contact"], os.path.basename(up["path"])
        view = self.conversations[contact]
        view.file_button.setEnabled(True)
        view.upload_progress.setFormat(f"Uploaded {name}")
        message_id = self.conn.call(lambda c: c.send_attachment(contact, event.pointer, name))
        self.add_record(contact, {"id": message_id.hex(), "direction": "out",
                                  "sender": self.user, "time": time.time(), "kind": "file",
                                  "name": name, "size": event.info.plaintext_len,
                                  "status": "pending"})

    # -- downloading -----------------------------------------------------

    def save_attachment(self, row: AttachmentRow, path: Optional[str] = None) -> None:
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Save attachment", row.record["name"])
            if not path:
                return
        transfer = self.conn.call(lambda c: c.begin_download(bytes.fromhex(row.record["pointer"])))
        part = path + ".part"
        self.downloads[transfer] = {"row": row, "path": path, "part": part,
                                    "file": open(part, "wb"), "got": 0}
        row.save_button.setEnabled(False)
        row.progress.setValue(0)
        row.progress.setVisible(True)

    def download_event(self, event: ClientEvent) -> None:
        down = self.downloads.get(event.transfer)
        if down is None:
            return
        row = down["row"]
        if isinstance(event, ClientEvent.ATTACHMENT_DATA):
            down["file"].write(event.data)
            down["got"] += len(event.data)
            row.progress.setValue(int(100 * down["got"] / max(row.record["size"], 1)))
            return
        del self.downloads[event.transfer]
        down["file"].close()
        row.save_button.setEnabled(True)
        if isinstance(event, ClientEvent.DOWNLOADED):
            os.replace(down["part"], down["path"])
            row.progress.setValue(100)
            row.record["saved_to"] = down["path"]
            self.profile.save()
            self.statusBar().showMessage(f"Saved {down['path']}", 10000)
        else:  # TRANSFER_FAILED: what came so far is not to be trusted
            os.remove(down["part"])
            row.progress.setVisible(False)
            self.statusBar().showMessage(f"Download failed: {event.reason}", 10000)

    # -- trust -----------------------------------------------------------

    def show_safety_number(self, contact: str) -> Optional[SafetyNumberDialog]:
        number = self.device.safety_number(contact)
        if number is None:
            QMessageBox.information(self, "Safety number",
                                    f"No identity is known for {contact} yet: "
                                    "exchange a message first.")
            return None
        dialog = SafetyNumberDialog(self, self.user, contact, number)
        dialog.show()
        return dialog

    def accept_identity_change(self, contact: str, received: bytes,
                               confirm: bool = True) -> None:
        # The new safety number, computed with the identity not yet trusted,
        # is what the user compares with the contact before accepting.
        if confirm:
            number = self.device.safety_number_with(contact, received)
            rows = [" ".join(number.groups[i:i + 4]) for i in range(0, 12, 4)]
            answer = QMessageBox.question(
                self, "Accept the new identity?",
                f"The new safety number with {contact}:\n\n" + "\n".join(rows)
                + "\n\nAccept it only after comparing it with them over a channel "
                "you trust (in person, or on a call).")
            if answer != QMessageBox.StandardButton.Yes:
                return
        try:
            self.device.accept_identity_change(contact, received)
        except hush.HushError as e:
            self.statusBar().showMessage(f"Could not accept: {e}", 10000)
            return
        view = self.conversations[contact]
        view.banner.setVisible(False)
        view.pending_identity = None
        self.add_record(contact, {"direction": "system", "sender": "", "time": time.time(),
                                  "kind": "system",
                                  "text": f"you accepted {contact}'s new identity"})
        if confirm:
            self.show_safety_number(contact)

    # -- events ----------------------------------------------------------

    def handle_event(self, event: object) -> None:
        """Every event of the connection, on the GUI thread."""
        if isinstance(event, hush.Connected):
            self.connected = True
            self.status_label.setText("Connected")
        elif isinstance(event, hush.Disconnected):
            self.connected = self.queue_empty = False
            retry = "" if event.retry_in is None else f", retrying in {event.retry_in:g} s"
            self.status_label.setText(f"Disconnected ({event.reason}{retry})")
        elif isinstance(event, ClientEvent.QUEUE_EMPTY):
            self.queue_empty = True
        elif isinstance(event, ClientEvent.PRE_KEYS_REPLENISHED):
            # The first login publishes the prekeys: only then can others
            # start a conversation with this device.
            if not self.profile.data.get("prekeys_published"):
                self.profile.data["prekeys_published"] = True
                self.profile.save()
        elif isinstance(event, ClientEvent.MESSAGE):
            self.message(event)
        elif isinstance(event, ClientEvent.SENT):
            self.set_status(event.message_id, "sent")
        elif isinstance(event, ClientEvent.DELIVERY_FAILED):
            self.set_status(event.message_id, "failed")
            self.statusBar().showMessage(f"Not delivered to {event.recipient}: "
                                         f"{event.reason}", 10000)
        elif isinstance(event, ClientEvent.IDENTITY_CHANGED):
            self.ensure_contact(event.user).show_identity_change(event.received)
            self.mark_unread(event.user)
        elif isinstance(event, ClientEvent.UNDECRYPTABLE):
            self.statusBar().showMessage(f"A message from {event.sender.user} could not "
                                         f"be decrypted: {event.reason}", 10000)
        elif isinstance(event, ClientEvent.UPLOAD_READY):
            self.feed_upload(event.transfer)
        elif isinstance(event, ClientEvent.UPLOADED):
            self.uploaded(event)
        elif isinstance(event, (ClientEvent.ATTACHMENT_DATA, ClientEvent.DOWNLOADED,
                                ClientEvent.TRANSFER_FAILED)):
            if isinstance(event, ClientEvent.TRANSFER_FAILED) and event.transfer in self.uploads:
                up = self.uploads.pop(event.transfer)
                self.conversations[up["contact"]].file_button.setEnabled(True)
                self.conversations[up["contact"]].upload_progress.setVisible(False)
                self.statusBar().showMessage(f"Upload failed: {event.reason}", 10000)
            else:
                self.download_event(event)
        elif isinstance(event, ClientEvent.SERVER_ERROR):
            self.statusBar().showMessage(f"Server: {event.code.name}: {event.reason}", 10000)

    def message(self, event: ClientEvent.MESSAGE) -> None:
        content, body = event.content, event.content.body
        # A copy of what another device of ours sent goes to that conversation.
        outgoing = content.sync_recipient is not None
        contact = content.sync_recipient if outgoing else event.sender.user
        record = {"id": content.message_id.hex(), "direction": "out" if outgoing else "in",
                  "sender": event.sender.user, "time": event.server_time,
                  "status": "sent" if outgoing else None}
        if isinstance(body, MessageBody.TEXT):
            record.update(kind="text", text=body.text)
        elif isinstance(body, MessageBody.ATTACHMENT):
            record.update(kind="file", name=body.caption or "attachment",
                          size=body.info.plaintext_len, media_type=body.info.media_type,
                          pointer=body.pointer.hex())
        else:
            record = None  # receipts and unknown kinds are not shown
        if record is not None:
            self.add_record(contact, record)  # kept (saved) first,
        self.conn.confirm(event.envelope_id)  # then the server may drop it

    # -- closing ---------------------------------------------------------

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        if self.device is None:
            return  # nothing open: the sign-up panel, or a profile open elsewhere
        if self.conn is not None:
            # Give sends still on their way (copies for our other devices
            # report no SENT) a moment to reach the server.
            deadline = time.monotonic() + 3
            while (self.conn.is_connected and self.conn.client.has_pending_sends()
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            self.conn.close()
            self.conn = None
        for down in self.downloads.values():
            down["file"].close()
        self.profile.save()
        # Releases the store at once (another window may open this profile).
        if self.device is not None:
            self.device.close_store()
        self.device = None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="A PyQt6 chat client on Hush.")
    parser.add_argument("--profile", default="hush-profile",
                        help="profile folder (created on sign-up)")
    parser.add_argument("--server", default="127.0.0.1:7443", help="HOST:PORT of hush-server")
    parser.add_argument("--server-name", default="localhost", help="the name in its certificate")
    parser.add_argument("--ca", default="hush-data/dev-cert.pem",
                        help="the server certificate to trust (hush-server writes this one)")
    args = parser.parse_args(argv)
    host, _, port = args.server.rpartition(":")
    if not os.path.exists(args.ca):
        print(f"hush_gui: no certificate at {args.ca}: start `cargo run -p hush-server` in the "
              "repository root first, or pass --ca", file=sys.stderr)
        return 1
    app = QApplication(sys.argv[:1])
    window = HushWindow(args.profile, host, int(port), args.server_name, args.ca)
    app.aboutToQuit.connect(window.shutdown)
    # Ctrl+C in the terminal quits cleanly: Python only sees the signal when
    # it runs, so a timer hands it control now and then.
    signal.signal(signal.SIGINT, lambda *_: app.quit())
    tick = QTimer()
    tick.timeout.connect(lambda: None)
    tick.start(250)
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
