"""Commands to a node's control thread: a queue plus a wake-up file descriptor.

API threads, discovery and the gatekeeper post typed commands; the control
thread polls :attr:`Mailbox.fd` along with its sockets and drains the queue
when it wakes. Posting never blocks.
"""

from __future__ import annotations

import collections
import os
import threading
from dataclasses import dataclass

from .discovery import Candidate

__all__ = ["Announce", "Command", "Found", "Lost", "Mailbox", "Redial", "Stop", "WatchPublisher"]


@dataclass(frozen=True)
class Found:
    """Discovery reports a candidate control endpoint."""

    candidate: Candidate


@dataclass(frozen=True)
class Lost:
    """Discovery withdrew a candidate."""

    candidate: Candidate


@dataclass(frozen=True)
class Stop:
    """The node is closing: say goodbye and end the control thread."""


@dataclass(frozen=True)
class Announce:
    """The node's own services, headers or publish sockets changed: tell every peer now."""


@dataclass(frozen=True)
class Redial:
    """A handshake with ``endpoint`` failed: its DEALER is dead, make a new one when due."""

    endpoint: str


@dataclass(frozen=True)
class WatchPublisher:
    """A publish socket was opened: watch its wake-up descriptor for subscriber changes."""


Command = Found | Lost | Stop | Announce | Redial | WatchPublisher


class Mailbox:
    """A command queue whose :attr:`fd` becomes readable when commands wait.

    ``post`` is safe from any thread; ``drain`` belongs to the control thread.
    """

    def __init__(self) -> None:
        self._commands: collections.deque[Command] = collections.deque()
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._closed = False
        self._lock = threading.Lock()  # a closed descriptor's number may be reused

    @property
    def fd(self) -> int:
        """Poll this for POLLIN; readable while commands wait."""
        return self._read

    def post(self, command: Command) -> None:
        """Queue ``command`` and wake the control thread. Never blocks."""
        self._commands.append(command)
        with self._lock:
            if self._closed:
                return
            try:
                os.write(self._write, b"w")
            except BlockingIOError:
                pass  # a wake-up is already pending

    def drain(self) -> list[Command]:
        """Every command posted so far, oldest first; clears the wake-up."""
        try:
            while os.read(self._read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        commands = []
        while self._commands:
            commands.append(self._commands.popleft())
        return commands

    def close(self) -> None:
        """Release the descriptors (after the control thread ended). Safe to call twice."""
        with self._lock:
            if not self._closed:
                self._closed = True
                os.close(self._read)
                os.close(self._write)
