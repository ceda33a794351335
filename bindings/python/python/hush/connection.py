"""A ready TLS connection for the Hush sans-IO client, over Python's ``ssl``.

The Rust core never touches the network: a :class:`hush.Client` takes the
bytes read from the server and hands back the bytes to write. This module
owns the socket so that an app does not have to:

* :class:`Connection` runs the socket on one background thread, hands
  events to a callback or a queue, reconnects with exponential backoff and
  closes cleanly;
* :func:`register_account`, :func:`wait_for_link` and
  :func:`register_linked_device` run the one-shot registration connections;
* :func:`tls_context` pins the server: trust one certificate or CA file
  (self-hosted servers with their own certificate), and/or require the
  certificate's SHA-256 fingerprint.

The asyncio variant is :mod:`hush.aio`.
"""

from __future__ import annotations

import hashlib
import queue
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Union

from . import _native as native

__all__ = [
    "Connected",
    "Connection",
    "ConnectionError",
    "Disconnected",
    "tls_context",
    "open_tls",
    "register_account",
    "register_linked_device",
    "run_registration",
    "wait_for_link",
]

#: How long the TCP and TLS handshakes may take.
CONNECT_TIMEOUT = 10.0
#: How long a registration may wait for the server.
REGISTRATION_TIMEOUT = 30.0
_READ_SIZE = 64 * 1024


class ConnectionError(Exception):  # noqa: A001 - the module's own error
    """The server could not be reached, or refused or broke the connection."""


@dataclass(frozen=True)
class Connected:
    """Put on the event queue when a connection (or reconnection) is up."""


@dataclass(frozen=True)
class Disconnected:
    """Put on the event queue when a connection is lost.

    ``retry_in`` is the delay before the next attempt, or ``None`` when the
    connection was closed for good.
    """

    reason: str
    retry_in: Optional[float]


ConnectionEvent = Union[native.ClientEvent, Connected, Disconnected]


def tls_context(
    cafile: Optional[str] = None,
    cadata: Optional[str] = None,
    pin_sha256: Optional[str] = None,
) -> ssl.SSLContext:
    """A TLS 1.3 client context for a Hush server.

    * With neither ``cafile`` nor ``cadata`` nor ``pin_sha256``, the system's
      trust store is used (a server with a public certificate).
    * ``cafile`` / ``cadata`` (PEM) trust exactly that certificate or CA: the
      development certificate ``hush-server`` writes, or a private CA.
    * ``pin_sha256`` (hex of the SHA-256 of the server certificate's DER) is
      checked by :func:`open_tls` after the handshake; given alone, it is the
      only check (the pin is stronger than a CA).
    """
    if pin_sha256 is not None and cafile is None and cadata is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif cafile is not None or cadata is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=cafile, cadata=cadata)
    else:
        ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def _check_pin(sock: ssl.SSLSocket, pin_sha256: Optional[str]) -> None:
    if pin_sha256 is None:
        return
    der = sock.getpeercert(binary_form=True)
    if der is None:
        raise ConnectionError("the server sent no certificate")
    seen = hashlib.sha256(der).hexdigest()
    if seen != pin_sha256.lower().replace(":", ""):
        raise ConnectionError(
            f"the server's certificate does not match the pin (it is sha256:{seen})"
        )


def open_tls(
    host: str,
    port: int,
    server_name: str,
    context: ssl.SSLContext,
    pin_sha256: Optional[str] = None,
    timeout: float = CONNECT_TIMEOUT,
) -> ssl.SSLSocket:
    """A blocking TLS connection to ``host:port`` checked for ``server_name``."""
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise ConnectionError(f"cannot connect to {host}:{port}: {e}") from e
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock = context.wrap_socket(raw, server_hostname=server_name)
        _check_pin(sock, pin_sha256)
    except (OSError, ssl.SSLError, ConnectionError) as e:
        raw.close()
        if isinstance(e, ConnectionError):
            raise
        raise ConnectionError(f"TLS with {host}:{port} as {server_name!r} failed: {e}") from e
    return sock


def run_registration(
    registration: native.Registration,
    sock: ssl.SSLSocket,
    wanted: Callable[[native.RegistrationEvent], bool],
    timeout: float = REGISTRATION_TIMEOUT,
) -> native.RegistrationEvent:
    """Drives ``registration`` over ``sock`` until an event ``wanted``
    accepts, or a refusal; returns that event.

    Raises :class:`ConnectionError` on a refusal, a closed connection or
    after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        out = registration.take_transmit()
        if out:
            sock.sendall(out)
        while (event := registration.poll_event()) is not None:
            if wanted(event):
                return event
            if event.is_refused():
                raise ConnectionError(f"the server refused: {event.code.name}: {event.reason}")
            if event.is_link_refused():
                raise ConnectionError(f"the link message was refused: {event.reason}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConnectionError("the server did not answer in time")
        sock.settimeout(min(left, 1.0))
        try:
            data = sock.recv(_READ_SIZE)
        except (socket.timeout, TimeoutError):
            continue
        if not data:
            raise ConnectionError("the server closed the connection")
        registration.handle_input(data)


def register_account(
    new_device: native.NewDevice,
    host: str,
    port: int,
    server_name: str,
    context: ssl.SSLContext,
    pin_sha256: Optional[str] = None,
) -> int:
    """Registers ``new_device`` (from ``NewDevice.for_new_account``) and
    returns the device id the server gave; then create the ``Device``."""
    registration = new_device.registration(server_name)
    with open_tls(host, port, server_name, context, pin_sha256) as sock:
        event = run_registration(registration, sock, lambda e: e.is_registered())
    return event.device_id


def wait_for_link(
    host: str,
    port: int,
    server_name: str,
    context: ssl.SSLContext,
    on_code: Callable[[bytes], None],
    pin_sha256: Optional[str] = None,
    timeout: float = 600.0,
) -> native.LinkedAccount:
    """As a new device: asks the server for a provisioning address, calls
    ``on_code`` with the link code to show (``code.hex()`` is what
    ``hush-cli approve`` takes), and waits up to ``timeout`` seconds for an
    existing device to send the account."""
    registration = native.Registration.provisioning(server_name)
    with open_tls(host, port, server_name, context, pin_sha256) as sock:
        shown = run_registration(registration, sock, lambda e: e.is_show_code())
        on_code(shown.code)
        linked = run_registration(registration, sock, lambda e: e.is_linked(), timeout)
    return linked.account


def register_linked_device(
    account: native.LinkedAccount,
    host: str,
    port: int,
    server_name: str,
    context: ssl.SSLContext,
    pin_sha256: Optional[str] = None,
) -> tuple[native.NewDevice, int]:
    """Registers a device of the linked ``account``; returns its keys and
    device id, to create the ``Device`` with."""
    new_device = native.NewDevice.for_linked_account(account)
    return new_device, register_account(new_device, host, port, server_name, context, pin_sha256)


class Connection:
    """Keeps a :class:`hush.Client` connected to its server.

    One background thread owns the TLS socket: it feeds what it reads to
    the client, writes what the client transmits, runs the client's timers,
    and hands every event to ``on_event`` (called on that thread) or, when
    no callback is given, to the queue :attr:`events`. It reconnects after a
    failure, waiting ``backoff`` seconds, doubled on each failure up to
    ``max_backoff``, and puts :class:`Connected` / :class:`Disconnected`
    among the events.

    The client is thread-safe: call ``connection.client.send_text(...)``
    (or :meth:`send_text`) from any thread, then :meth:`wake` so the
    background thread writes it out; the helpers here do both.

    Use it as a context manager, or call :meth:`start` and :meth:`close`::

        with Connection(client, "chat.example.org", 7443, "chat.example.org",
                        tls_context(cafile="server.pem")) as conn:
            conn.send_text("bob", "hello")
            event = conn.wait_for(lambda e: isinstance(e, ClientEvent.SENT))
    """

    def __init__(
        self,
        client: native.Client,
        host: str,
        port: int,
        server_name: str,
        context: ssl.SSLContext,
        *,
        pin_sha256: Optional[str] = None,
        on_event: Optional[Callable[[ConnectionEvent], None]] = None,
        reconnect: bool = True,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.client = client
        self.host = host
        self.port = port
        self.server_name = server_name
        self.context = context
        self.pin_sha256 = pin_sha256
        self.reconnect = reconnect
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.events: "queue.Queue[ConnectionEvent]" = queue.Queue()
        self._on_event = on_event or self.events.put
        self._closing = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: Optional[threading.Thread] = None
        self._connected = threading.Event()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "Connection":
        """Starts the background thread (it connects, then keeps connected)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hush-connection", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Closes the connection for good and waits for the thread to end.
        Messages not yet stored by the server stay with the client and are
        sent on the next connection."""
        self._closing.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> "Connection":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_connected(self) -> bool:
        """Whether a TLS connection is up right now."""
        return self._connected.is_set()

    def wake(self) -> None:
        """Tells the background thread the client has something to send."""
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already woken, or closed

    # -- conveniences ------------------------------------------------------

    def send_text(self, recipient: str, text: str) -> bytes:
        """Sends text; returns the message id (``Sent`` follows)."""
        message_id = self.client.send_text(recipient, text)
        self.wake()
        return message_id

    def confirm(self, envelope_id: bytes) -> None:
        """Confirms a kept message (the server may drop it)."""
        self.client.confirm(envelope_id)
        self.wake()

    def call(self, fn: Callable[[native.Client], object]) -> object:
        """Runs ``fn(client)`` and wakes the thread to write what it queued."""
        result = fn(self.client)
        self.wake()
        return result

    def wait_for(
        self, predicate: Callable[[ConnectionEvent], bool], timeout: float = 30.0
    ) -> ConnectionEvent:
        """Takes events from :attr:`events` until one matches; the others are
        dropped. Raises ``TimeoutError``. Only without ``on_event``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching event in time")
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if predicate(event):
                return event

    # -- the background thread ---------------------------------------------

    def _emit(self, event: ConnectionEvent) -> None:
        try:
            self._on_event(event)
        except Exception:  # noqa: BLE001 - an app callback must not kill the thread
            import traceback

            traceback.print_exc()

    def _run(self) -> None:
        delay = self.backoff
        while not self._closing.is_set():
            try:
                sock = open_tls(
                    self.host, self.port, self.server_name, self.context, self.pin_sha256
                )
            except ConnectionError as e:
                reason = str(e)
            else:
                delay = self.backoff
                try:
                    reason = self._serve(sock)
                finally:
                    self._connected.clear()
                    try:
                        sock.close()
                    except OSError:
                        pass
            if self._closing.is_set() or not self.reconnect:
                self._emit(Disconnected(reason, None))
                return
            self._emit(Disconnected(reason, delay))
            self._closing.wait(delay)
            delay = min(delay * 2, self.max_backoff)

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _pump_events(self) -> None:
        while (event := self.client.poll_event()) is not None:
            self._emit(event)

    def _serve(self, sock: ssl.SSLSocket) -> str:
        """Runs one connection; returns why it ended."""
        sock.setblocking(False)
        self.client.handle_connected()
        self._connected.set()
        self._emit(Connected())
        out = bytearray()
        with selectors.DefaultSelector() as sel:
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            sel.register(sock, selectors.EVENT_READ, "sock")
            while not self._closing.is_set():
                out += self.client.take_transmit()
                self._pump_events()
                # Write what we can without blocking.
                while out:
                    try:
                        sent = sock.send(out)
                    except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                        break
                    except OSError as e:
                        return f"write failed: {e}"
                    del out[:sent]
                sel.modify(
                    sock,
                    selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0),
                    "sock",
                )
                wait_ms = self.client.timeout_millis()
                timeout = 1.0 if wait_ms is None else min(max(wait_ms / 1000, 0.0), 1.0)
                ready = sel.select(timeout)
                for key, _ in ready:
                    if key.data == "wake":
                        self._drain_wake()
                # Read everything available, including what TLS buffered.
                while True:
                    try:
                        data = sock.recv(_READ_SIZE)
                    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                        break
                    except OSError as e:
                        return f"read failed: {e}"
                    if not data:
                        return "the server closed the connection"
                    try:
                        self.client.handle_input(data)
                    except native.HushError.Protocol as e:
                        return f"protocol error: {e}"
                if wait_ms is not None and wait_ms == 0:
                    self.client.handle_timeout()
        # Closing: flush what is queued (acks, for instance), briefly.
        out += self.client.take_transmit()
        if out:
            sock.setblocking(True)
            sock.settimeout(2.0)
            try:
                sock.sendall(out)
            except OSError:
                pass
        return "closed"
