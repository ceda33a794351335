"""The asyncio variant of :class:`hush.connection.Connection`.

::

    async with AsyncConnection(client, host, port, server_name, ctx) as conn:
        await conn.send_text("bob", "hello")
        async for event in conn:
            ...

The client's calls are short and run on the event loop; the socket is an
``asyncio`` stream. Reconnection and backoff work as in the threaded
connection, and :class:`~hush.connection.Connected` /
:class:`~hush.connection.Disconnected` come among the events.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import AsyncIterator, Callable, Optional

from . import _native as native
from .connection import (
    CONNECT_TIMEOUT,
    Connected,
    ConnectionError,
    ConnectionEvent,
    Disconnected,
    _check_pin,
)

__all__ = ["AsyncConnection"]

_READ_SIZE = 64 * 1024


class AsyncConnection:
    """Keeps a :class:`hush.Client` connected, on an asyncio event loop."""

    def __init__(
        self,
        client: native.Client,
        host: str,
        port: int,
        server_name: str,
        context: ssl.SSLContext,
        *,
        pin_sha256: Optional[str] = None,
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
        self.events: "asyncio.Queue[ConnectionEvent]" = asyncio.Queue()
        self._wake = asyncio.Event()
        self._closing = False
        self._task: Optional[asyncio.Task[None]] = None

    async def __aenter__(self) -> "AsyncConnection":
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def start(self) -> None:
        """Starts the connection task."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Closes for good and waits for the task to end."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task

    def wake(self) -> None:
        """Tells the task the client has something to send."""
        self._wake.set()

    async def send_text(self, recipient: str, text: str) -> bytes:
        """Sends text; returns the message id (``Sent`` follows)."""
        message_id = self.client.send_text(recipient, text)
        self.wake()
        return message_id

    def confirm(self, envelope_id: bytes) -> None:
        """Confirms a kept message."""
        self.client.confirm(envelope_id)
        self.wake()

    async def wait_for(
        self, predicate: Callable[[ConnectionEvent], bool], timeout: float = 30.0
    ) -> ConnectionEvent:
        """Takes events until one matches (the others are dropped)."""

        async def take() -> ConnectionEvent:
            while True:
                event = await self.events.get()
                if predicate(event):
                    return event

        return await asyncio.wait_for(take(), timeout)

    def __aiter__(self) -> AsyncIterator[ConnectionEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ConnectionEvent]:
        while True:
            event = await self.events.get()
            yield event
            if isinstance(event, Disconnected) and event.retry_in is None:
                return

    async def _run(self) -> None:
        delay = self.backoff
        while not self._closing:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        self.host, self.port, ssl=self.context, server_hostname=self.server_name
                    ),
                    CONNECT_TIMEOUT,
                )
            except (OSError, ssl.SSLError, asyncio.TimeoutError) as e:
                reason = f"cannot connect to {self.host}:{self.port}: {e}"
            else:
                try:
                    _check_pin(writer.get_extra_info("ssl_object"), self.pin_sha256)
                    delay = self.backoff
                    reason = await self._serve(reader, writer)
                except ConnectionError as e:
                    reason = str(e)
                finally:
                    writer.close()
                    try:
                        await writer.wait_closed()
                    except (OSError, ssl.SSLError):
                        pass
            if self._closing or not self.reconnect:
                await self.events.put(Disconnected(reason, None))
                return
            await self.events.put(Disconnected(reason, delay))
            try:
                await asyncio.wait_for(self._sleep_until_closing(), delay)
            except asyncio.TimeoutError:
                pass
            delay = min(delay * 2, self.max_backoff)

    async def _sleep_until_closing(self) -> None:
        while not self._closing:
            self._wake.clear()
            await self._wake.wait()

    async def _flush(self, writer: asyncio.StreamWriter) -> None:
        out = self.client.take_transmit()
        if out:
            writer.write(out)
            await writer.drain()
        while (event := self.client.poll_event()) is not None:
            await self.events.put(event)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        self.client.handle_connected()
        await self.events.put(Connected())
        read = asyncio.ensure_future(reader.read(_READ_SIZE))
        try:
            while not self._closing:
                await self._flush(writer)
                wait_ms = self.client.timeout_millis()
                timeout = 1.0 if wait_ms is None else min(max(wait_ms / 1000, 0.0), 1.0)
                self._wake.clear()
                woken = asyncio.ensure_future(self._wake.wait())
                done, _ = await asyncio.wait(
                    {read, woken}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                woken.cancel()
                if read in done:
                    try:
                        data = read.result()
                    except (OSError, ssl.SSLError) as e:
                        return f"read failed: {e}"
                    if not data:
                        return "the server closed the connection"
                    try:
                        self.client.handle_input(data)
                    except native.HushError.Protocol as e:
                        return f"protocol error: {e}"
                    read = asyncio.ensure_future(reader.read(_READ_SIZE))
                if wait_ms == 0:
                    self.client.handle_timeout()
            await self._flush(writer)
            return "closed"
        except (OSError, ssl.SSLError) as e:
            return f"write failed: {e}"
        finally:
            read.cancel()
