"""Fixtures of the Python binding tests: a live `hush-server` over TLS.

The live tests need the `hush-server` and `hush-cli` binaries. They are
taken from $HUSH_SERVER_BIN and $HUSH_CLI_BIN, or built with cargo from
the workspace this package sits in.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import hush

WORKSPACE = Path(__file__).resolve().parents[3]
SERVER_NAME = "localhost"


def _cargo_bins() -> tuple[str, str]:
    server = os.environ.get("HUSH_SERVER_BIN")
    cli = os.environ.get("HUSH_CLI_BIN")
    if server and cli:
        return server, cli
    subprocess.run(
        ["cargo", "build", "-q", "-p", "hush-server", "--bin", "hush-server",
         "-p", "hush-examples", "--bin", "hush-cli"],
        cwd=WORKSPACE, check=True,
    )
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=WORKSPACE, check=True, capture_output=True,
    ).stdout)
    target = Path(meta["target_directory"]) / "debug"
    return str(target / "hush-server"), str(target / "hush-cli")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `hush-server` process on a free loopback port with its own data."""

    def __init__(self, binary: str, data_dir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.server_name = SERVER_NAME
        self.cert = data_dir / "dev-cert.pem"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "Server":
        self.process = subprocess.Popen(
            [self.binary, "--listen", self.address, "--data-dir", str(self.data_dir),
             "--server-name", SERVER_NAME, "--admin-listen=",
             "--config", str(WORKSPACE / "bindings" / "test-server.toml"), "serve"],
            env={**os.environ, "RUST_LOG": "warn"},
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"hush-server exited with {self.process.returncode}")
            if self.cert.exists():
                try:
                    hush.open_tls(self.host, self.port, SERVER_NAME, self.context(), timeout=1).close()
                    return self
                except hush.ConnectionError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("hush-server did not come up")

    def context(self):
        return hush.tls_context(cafile=str(self.cert))

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


@pytest.fixture(scope="session")
def binaries() -> tuple[str, str]:
    return _cargo_bins()


@pytest.fixture(scope="session")
def server(binaries):
    with tempfile.TemporaryDirectory(prefix="hush-py-server-") as data:
        server = Server(binaries[0], Path(data)).start()
        yield server
        server.stop()


_counter = [0]


@pytest.fixture
def unique_user():
    """A fresh user id per call (the server keeps accounts for the session)."""

    def make(prefix: str) -> str:
        _counter[0] += 1
        return f"{prefix}{os.getpid()}x{_counter[0]}"

    return make
