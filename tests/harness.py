"""Test harness: agent processes and a small LAN of network namespaces.

Every process started here is ended by its PID; every namespace created is
deleted, also when a test fails (use the context managers).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
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

    def watch(self, predicate: Callable[[Event], bool], until: float) -> Event | None:
        """The first event arriving before monotonic time ``until`` that matches, else None.

        Every event read meanwhile is kept in ``events``.
        """
        while True:
            remaining = until - time.monotonic()
            try:
                if remaining > 0:
                    item = self._queue.get(timeout=remaining)
                else:
                    item = self._queue.get_nowait()  # only what has arrived already
            except queue.Empty:
                return None
            if item is None:
                self._queue.put(None)  # the end stays visible to the next caller
                return None
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


def agent_argv(name: str, mesh: str, interface: str | None, *extra: str) -> list[str]:
    """An agent's command line; ``interface`` None leaves the node its default interfaces."""
    chosen = ["--interface", interface] if interface is not None else []
    return [sys.executable, AGENT, "--name", name, "--mesh", mesh, *chosen, *extra]


@contextlib.contextmanager
def python_child(source: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """``python -c source args``, its stdout and stderr piped (text); ended by its
    PID on the way out if it still runs. Its stdout is never None."""
    child = subprocess.Popen(
        [sys.executable, "-c", source, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        yield child
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


def can_make_namespaces() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


class Link:
    """One interface of a host in a :class:`Network`.

    ``lan`` is the index of the switch it plugs into, or None for a bridge
    of the host's own: with nothing attached (a docker0 on a host that runs
    no container), or with ``plugged`` one veth pair inside the host plugged
    in (a docker0 with a container). Links are made in the order given, so
    that is their interface order.
    """

    def __init__(self, name: str, address: str, lan: int | None, plugged: bool = False) -> None:
        self.name = name
        self.address = address  # with its prefix: "198.18.91.1/24"
        self.lan = lan
        self.plugged = plugged

    @property
    def ip(self) -> str:
        return self.address.partition("/")[0]


class Network:
    """Switches (bridges in namespaces of their own) and hosts with the links given.

    ``Network(2, [[Link("eth0", "198.18.91.1/24", 0), Link("dock0", "198.18.93.1/24", None)]])``
    makes two switches and one host plugged into the first one, with a
    portless bridge ``dock0``. Names carry a per-run suffix; ``close``
    deletes every namespace made, with the links in it.
    """

    def __init__(self, lans: int, hosts: Sequence[Sequence[Link]]) -> None:
        suffix = secrets.token_hex(3)
        self.switches = [f"mqs{suffix}{i}" for i in range(lans)]
        self.hosts = [f"mqh{suffix}{i}" for i in range(len(hosts))]
        self.links = [list(links) for links in hosts]
        self._created: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        for switch in self.switches:
            _ip("netns", "add", switch)
            self._created.append(switch)
            _ip("-n", switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", switch, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
            _ip("-n", switch, "link", "set", "br0", "up")
        ports = 0
        for host, links in zip(self.hosts, self.links, strict=True):
            _ip("netns", "add", host)
            self._created.append(host)
            _ip("-n", host, "link", "set", "lo", "up")
            multicast_route = False
            for link in links:
                if link.lan is None:
                    _ip("-n", host, "link", "add", link.name, "type", "bridge")
                    if link.plugged:  # a "container": carrier on the bridge
                        _ip(
                            "-n",
                            host,
                            "link",
                            "add",
                            "ctr0",
                            "type",
                            "veth",
                            "peer",
                            "name",
                            "ctr1",
                        )
                        _ip("-n", host, "link", "set", "ctr0", "master", link.name)
                        _ip("-n", host, "link", "set", "ctr0", "up")
                        _ip("-n", host, "link", "set", "ctr1", "up")
                else:
                    ports += 1
                    port, switch = f"p{ports}", self.switches[link.lan]
                    _ip("-n", host, "link", "add", link.name, "type", "veth", "peer", "name", port)
                    _ip("-n", host, "link", "set", port, "netns", switch)
                    _ip("-n", switch, "link", "set", port, "master", "br0")
                    _ip("-n", switch, "link", "set", port, "up")
                _ip("-n", host, "addr", "add", link.address, "dev", link.name)
                _ip("-n", host, "link", "set", link.name, "up")
                if link.lan is not None and not multicast_route:
                    # zeroconf picks the interface per socket; the route only
                    # has to exist for the first send to leave at all.
                    _ip("-n", host, "route", "add", "224.0.0.0/4", "dev", link.name)
                    multicast_route = True

    def argv(self, host: int, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside host number ``host`` (0-based)."""
        return ["ip", "netns", "exec", self.hosts[host], *argv]

    def close(self) -> None:
        """Delete every namespace made (their links and bridges go with them)."""
        for name in reversed(self._created):
            subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)
        self._created.clear()

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Lan(Network):
    """A bridge and ``hosts`` namespaces with addresses 198.18.0.1, .2, ... on ``eth0``.

    The bridge lives in a namespace of its own, so nothing is added to the
    machine's real network stack. Names carry a per-run suffix.
    """

    def __init__(self, hosts: int) -> None:
        self.addresses = [f"198.18.0.{i}" for i in range(1, hosts + 1)]
        super().__init__(1, [[Link("eth0", f"{address}/24", 0)] for address in self.addresses])
        self.switch = self.switches[0]

    def link(self, host: int, up: bool) -> None:
        _ip("-n", self.hosts[host], "link", "set", "eth0", "up" if up else "down")

    def __enter__(self) -> Lan:
        return self


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
