"""Test harness: agent processes and a small LAN of network namespaces.

Every process started here is ended by its PID; every namespace created is
deleted, also when a test fails (use the context managers).
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

AGENT = str(Path(__file__).with_name("agent.py"))
Event = dict[str, Any]


class Agent:
    """One agent process (tests/agent.py); ``expect`` waits for its events."""

    def __init__(self, argv: Sequence[str], name: str) -> None:
        self.name = name
        self.events: list[Event] = []
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self.process = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ready = self.expect(lambda e: e["ev"] == "ready", timeout=20)
        self.id: str = self.ready["id"]

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self._queue.put(json.loads(line))
            except json.JSONDecodeError:
                pass  # not ours (a stray print); the event stream is JSON only
        self._queue.put(None)

    def expect(self, predicate: Callable[[Event], bool], timeout: float) -> Event:
        """The first event (seen before or arriving within ``timeout`` s) matching predicate."""
        for event in self.events:
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name}: no matching event in {timeout} s; saw {self.events}"
                )
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if item is None:
                raise AssertionError(
                    f"{self.name} exited ({self.process.poll()}); saw {self.events}; "
                    f"stderr: {self.stderr()}"
                )
            self.events.append(item)
            if predicate(item):
                return item

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stderr(self) -> str:
        if self.process.poll() is None or self.process.stderr is None:
            return ""
        return self.process.stderr.read()[-3000:]

    def stop(self, timeout: float = 10) -> None:
        """Ask the agent to close; kill it (by PID) if it does not exit in time."""
        if self.process.poll() is None:
            try:
                self.send(cmd="close")
                self.process.wait(timeout=timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def joined(name: str) -> Callable[[Event], bool]:
    return lambda e: e["ev"] == "joined" and e["name"] == name


def left(name: str) -> Callable[[Event], bool]:
    return lambda e: e["ev"] == "left" and e["name"] == name


def agent_argv(name: str, mesh: str, interface: str, *extra: str) -> list[str]:
    return [sys.executable, AGENT, "--name", name, "--mesh", mesh, "--interface", interface, *extra]


def can_make_namespaces() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


class Lan:
    """A bridge and ``hosts`` namespaces with addresses 198.18.0.1, .2, ...

    The bridge lives in a namespace of its own, so nothing is added to the
    machine's real network stack. Names carry a per-run suffix.
    """

    def __init__(self, hosts: int) -> None:
        suffix = secrets.token_hex(3)
        self.switch = f"mqs{suffix}"
        self.hosts = [f"mqh{suffix}{i}" for i in range(1, hosts + 1)]
        self.addresses = [f"198.18.0.{i}" for i in range(1, hosts + 1)]
        self._created: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        _ip("netns", "add", self.switch)
        self._created.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for index, (host, address) in enumerate(
            zip(self.hosts, self.addresses, strict=True), start=1
        ):
            _ip("netns", "add", host)
            self._created.append(host)
            port = f"p{index}"
            _ip(
                "-n",
                host,
                "link",
                "add",
                "eth0",
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                self.switch,
            )
            _ip("-n", self.switch, "link", "set", port, "master", "br0")
            _ip("-n", self.switch, "link", "set", port, "up")
            _ip("-n", host, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", host, "link", "set", "lo", "up")
            _ip("-n", host, "link", "set", "eth0", "up")
            _ip("-n", host, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def argv(self, host: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside host number ``host`` (0-based)."""
        return ["ip", "netns", "exec", self.hosts[host], *argv]

    def link(self, host: int, up: bool) -> None:
        _ip("-n", self.hosts[host], "link", "set", "eth0", "up" if up else "down")

    def close(self) -> None:
        """Delete every namespace made (their veths and the bridge go with them)."""
        for name in reversed(self._created):
            subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)
        self._created.clear()

    def __enter__(self) -> Lan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
