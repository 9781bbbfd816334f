"""A relay's data directory: made if missing, locked while a relay uses it.

Every failure is a meshq error naming the directory and why, never a bare
OSError with errno text.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

from .errors import StoreInUse, StoreUnusable

__all__ = ["STORE_NAME", "lock_directory"]

#: The SQLite file of a relay, in its data directory.
STORE_NAME = "relay.sqlite"


def lock_directory(directory: Path) -> IO[bytes]:
    """Make ``directory`` if missing and hold an exclusive lock on it until the handle is closed.

    Raises StoreInUse if another relay holds it, StoreUnusable if it is not
    a directory or cannot be written.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / "relay.lock", "ab")  # noqa: SIM115  # held until closed
    except FileExistsError:
        raise StoreUnusable(directory, "it exists and is not a directory") from None
    except OSError as exc:
        raise StoreUnusable(directory, exc.strerror or str(exc)) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreInUse(directory) from None
    return handle
