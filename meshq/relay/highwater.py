"""Sequence numbers reserved ahead of use, in a small file beside the store (outside its WAL).

A relay may confirm a sequence number only once it is on disk; if a damaged
write-ahead log later takes that transaction away, SQLite's own view of the
stream ends earlier, and a relay trusting it would give the number out
again, to another message. So before a sequence number above the
reservation is stored, the reservation is raised by ``step`` and written
here (a new file, fsynced, renamed over the old one, the directory
fsynced). After WAL damage, a stream goes on above its reservation: a gap
in the numbers, never a number given out twice. One write per ``step``
sequence numbers per stream, so it costs nothing measurable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["HighWater"]

STEP = 100_000


class HighWater:
    """The reserved sequence number per stream, kept in ``path``.

    Raises OSError if the file cannot be read or written, ValueError if it
    is not what this module writes.
    """

    def __init__(self, path: Path, step: int = STEP) -> None:
        self.path = path
        self.step = step
        self.reserved: dict[str, int] = {}
        try:
            loaded = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not a sequence reservation file: {exc}") from None
        if not (
            isinstance(loaded, dict)
            and all(isinstance(k, str) and type(v) is int for k, v in loaded.items())
        ):
            raise ValueError(f"{path} is not a sequence reservation file")
        self.reserved = loaded

    def get(self, stream: str) -> int:
        """The highest sequence number of ``stream`` that may have been used (0: none)."""
        return self.reserved.get(stream, 0)

    def cover(self, stream: str, seq: int) -> None:
        """Make sure ``seq`` is reserved; raises OSError (disk full) if that needs a write."""
        if seq > self.reserved.get(stream, 0):
            self._write({**self.reserved, stream: seq + self.step})

    def _write(self, reserved: dict[str, int]) -> None:
        temporary = self.path.with_name(self.path.name + ".new")
        with open(temporary, "w") as handle:
            json.dump(reserved, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self.reserved = reserved
