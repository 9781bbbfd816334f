"""What a relay's store can fail with at start: each names the file or directory and what to do."""

from __future__ import annotations

from pathlib import Path

from ..errors import MeshqError

__all__ = ["StoreDamaged", "StoreInUse", "StoreUnusable"]


class StoreInUse(MeshqError):
    """Another relay (process) already serves the store in ``directory``."""

    def __init__(self, directory: Path) -> None:
        super().__init__(f"{directory} is in use by another relay")
        self.directory = directory


class StoreUnusable(MeshqError):
    """The data ``directory`` cannot hold a store: ``reason`` says why (not a directory, ...)."""

    def __init__(self, directory: Path, reason: str) -> None:
        super().__init__(f"relay data directory {directory} cannot be used: {reason}")
        self.directory = directory
        self.reason = reason


class StoreDamaged(MeshqError):
    """The SQLite file at ``path`` is damaged (``reason``: SQLite's words); a relay refuses it.

    Restore the file from a backup, or salvage it: ``meshq relay --salvage``
    (or :func:`meshq.relay.salvage`) moves it aside and copies every record
    that passes its checksum into a new store.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"relay store {path} is damaged ({reason}); the relay will not serve it. "
            f"Restore it from a backup, or start with --salvage to move it aside and copy "
            f"every record that passes its checksum into a new store"
        )
        self.path = path
        self.reason = reason
