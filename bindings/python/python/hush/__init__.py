"""Hush: Signal-class end-to-end encryption (PQXDH + Double Ratchet).

Everything of the Rust core is re-exported here (``Device``, ``Client``,
``NewDevice``, ``Registration``, ``HushError``, ...); :mod:`hush.connection`
and :mod:`hush.aio` add a ready TLS connection for the sans-IO client.
"""

from ._native import *  # noqa: F401,F403
from ._native import HushError  # noqa: F401 - named for type checkers
from . import _fastpath

_fastpath.install()
from .connection import (  # noqa: F401
    Connected,
    Connection,
    ConnectionError,
    Disconnected,
    open_tls,
    register_account,
    register_linked_device,
    run_registration,
    tls_context,
    wait_for_link,
)
