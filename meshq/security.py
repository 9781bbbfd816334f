"""Security policy as data: this node's CURVE key pair and who may talk to it.

:class:`Curve` is what a user hands to ``Node(security=...)``. It holds the
node's key pair and an :class:`Allowlist` of public keys; the allowlist
alone decides who is let in, in both directions. Keys found elsewhere (the
mDNS TXT record, HELLO, gossip, a seed's ``#KEY`` suffix) are only hints
for *connecting*, kept in a :class:`KeyBook`. How the policy is enforced
(the ZAP thread, socket monitors) lives in meshq/gatekeeper.py.

Keys are Z85 text, 40 characters, as ``zmq.auth`` writes them.
"""

from __future__ import annotations

import collections
import datetime
import logging
import os
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from .errors import KeyFileError

__all__ = [
    "Allowlist",
    "Curve",
    "KeyBook",
    "Rejection",
    "check_key",
    "load_public_key",
    "load_secret_key",
    "split_seed",
    "write_key_pair",
]

log = logging.getLogger("meshq.security")

#: Length of a Z85-encoded CURVE key.
KEY_CHARS = 40
_RECHECK = 0.5  # seconds between looks at an allowlist directory
_MAX_KEYBOOK = 4096  # endpoints whose server key we remember


def check_key(key: str | bytes) -> bytes:
    """Return ``key`` as Z85 bytes. Raises ValueError unless it is a 40-character Z85 key."""
    raw = key.encode("ascii", "replace") if isinstance(key, str) else bytes(key)
    if len(raw) != KEY_CHARS:
        raise ValueError(f"a CURVE public key is {KEY_CHARS} Z85 characters, got {len(raw)}")
    try:
        z85.decode(raw)
    except Exception:  # struct.error, KeyError, ...: whatever, it is no key
        raise ValueError(f"not a Z85 key: {raw!r}") from None
    return raw


def _load(path: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeyFileError(str(path), str(exc)) from None
    try:
        return check_key(public), None if secret is None else check_key(secret)
    except ValueError as exc:
        raise KeyFileError(str(path), str(exc)) from None


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The Z85 public key in a ``zmq.auth`` certificate file. Raises meshq.KeyFileError."""
    return _load(Path(path))[0]


def load_secret_key(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` file.

    Raises meshq.KeyFileError if the file is missing, holds no secret key,
    or can be read by its group or by others (mode must be 0600 or stricter):
    a secret anyone may read is no secret.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise KeyFileError(str(path), exc.strerror or "cannot read") from None
    # What the file is comes first: a public key given by mistake needs
    # "this is a public key", not advice about its (public) mode.
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(
            str(path),
            "this is a public key (no secret-key in it); "
            f"pass the .key_secret file made with it instead (e.g. {_secret_twin(path)})",
        )
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            str(path),
            f"secret key file has mode {stat.S_IMODE(mode):04o}; it must be readable by "
            f"its owner only (chmod 600 {path})",
        )
    return public, secret


def _secret_twin(path: Path) -> str:
    """The name ``meshq keygen`` gives the secret half of a public key file."""
    return str(path.with_name(path.name + "_secret") if path.suffix == ".key" else path)


def write_key_pair(name: str, directory: str | os.PathLike[str] = ".") -> tuple[Path, Path]:
    """Write a new key pair as ``NAME.key`` and ``NAME.key_secret`` (mode 0600).

    The format is the one ``zmq.auth.load_certificate`` reads. Returns the two
    paths. Raises ValueError for a name with a path separator, FileExistsError
    rather than overwrite a key, OSError if the directory cannot be written.
    """
    if not name or os.sep in name or name.startswith("."):
        raise ValueError(f"key name must be a plain file name: {name!r}")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    head = f"#   ****  Generated on {now} by meshq keygen  ****\n#   ZeroMQ CURVE "
    public_text = (
        f"{head}Public Certificate\n#   Give this file to the peers that should admit you.\n\n"
        f'metadata\ncurve\n    public-key = "{public.decode()}"\n'
    )
    secret_text = (
        f"{head}**Secret** Certificate\n#   DO NOT PROVIDE THIS FILE TO OTHER USERS.\n\n"
        f'metadata\ncurve\n    public-key = "{public.decode()}"\n'
        f'    secret-key = "{secret.decode()}"\n'
    )
    public_path = folder / f"{name}.key"
    secret_path = folder / f"{name}.key_secret"
    # O_EXCL: never clobber a key; mode 0600 from the start, so the secret is
    # never readable by others, not even for a moment.
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secret_text)
    fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w") as out:
        out.write(public_text)
    return public_path, secret_path


class Allowlist:
    """The public keys admitted: a fixed list, or a directory of ``*.key`` files.

    A directory is looked at again at most every ``recheck`` seconds, when a
    key is asked about, so adding or removing a file takes effect without a
    restart. A malformed file is skipped with a warning. Thread-safe.
    """

    def __init__(
        self, source: str | os.PathLike[str] | Iterable[str | bytes], recheck: float = _RECHECK
    ) -> None:
        self._lock = threading.Lock()
        self._recheck = recheck
        self._directory: Path | None = None
        self._keys: frozenset[bytes] = frozenset()
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._next_check = 0.0
        if isinstance(source, (str, os.PathLike)):
            self._directory = Path(source)
            if not self._directory.is_dir():
                raise KeyFileError(str(source), "allowlist is not a directory")
            self._reload()
        else:
            self._keys = frozenset(check_key(key) for key in source)

    @property
    def directory(self) -> Path | None:
        return self._directory

    def keys(self) -> frozenset[bytes]:
        """The Z85 keys admitted right now."""
        if self._directory is not None and time.monotonic() >= self._next_check:
            with self._lock:
                if time.monotonic() >= self._next_check:
                    self._reload()
        return self._keys

    def allows(self, key: bytes) -> bool:
        """Whether the Z85 ``key`` is admitted right now."""
        return key in self.keys()

    def _reload(self) -> None:
        assert self._directory is not None
        self._next_check = time.monotonic() + self._recheck
        try:
            entries = [
                (entry.name, entry.stat().st_mtime_ns, entry.stat().st_size)
                for entry in os.scandir(self._directory)
                if entry.name.endswith(".key") and entry.is_file()
            ]
        except OSError as exc:
            # A directory gone or unreadable admits nobody: fail closed.
            log.warning("allowlist %s unreadable (%s): admitting nobody", self._directory, exc)
            self._keys, self._signature = frozenset(), None
            return
        signature = tuple(sorted(entries))
        if signature == self._signature:
            return  # nothing changed: no file reads
        keys = set()
        for name, _mtime, _size in signature:
            try:
                keys.add(load_public_key(self._directory / name))
            except KeyFileError as exc:
                log.warning("allowlist: skipping %s", exc)
        self._keys, self._signature = frozenset(keys), signature
        log.info("allowlist %s: %d key(s)", self._directory, len(keys))


class Curve:
    """CURVE security for a node: its key pair and the keys it admits.

    Args:
        secret_key_file: this node's ``.key_secret`` file (``meshq keygen``),
            mode 0600.
        allow: a directory of public ``.key`` files (re-read while running),
            or a list of Z85 public keys. The node's own key need not be in it.
        recheck: seconds between looks at the allowlist directory.

    Raises meshq.KeyFileError for an unusable key file or allowlist
    directory, ValueError for a malformed key in a list.
    """

    def __init__(
        self,
        secret_key_file: str | os.PathLike[str],
        allow: str | os.PathLike[str] | Iterable[str | bytes],
        *,
        recheck: float = _RECHECK,
    ) -> None:
        if not zmq.has("curve"):
            raise KeyFileError(str(secret_key_file), "this libzmq was built without CURVE")
        self.public_key, self._secret_key = load_secret_key(secret_key_file)
        self.allowlist = Allowlist(allow, recheck)

    @property
    def secret_key(self) -> bytes:
        return self._secret_key

    def allows(self, key: bytes) -> bool:
        """Whether a peer holding Z85 ``key`` may exchange data with us (ourselves included)."""
        return key == self.public_key or self.allowlist.allows(key)

    def __repr__(self) -> str:
        allow = self.allowlist.directory or f"{len(self.allowlist.keys())} keys"
        return f"Curve(public_key={self.public_key.decode()!r}, allow={str(allow)!r})"


@dataclass(frozen=True)
class Rejection:
    """A connection refused by security: who (``address``), with which ``key``, why.

    ``address`` is the peer's IP address (inbound) or the endpoint we dialled
    (outbound); ``key`` is the Z85 key, or "" when none was offered; ``time``
    is seconds since the epoch.
    """

    address: str
    key: str
    reason: str
    time: float


def split_seed(seed: str) -> tuple[str, bytes | None]:
    """Split ``"tcp://198.18.0.5:7600#KEY"`` into the endpoint and the seed's Z85 key.

    Without ``#`` the key is None. Raises ValueError for a malformed key.
    """
    endpoint, sep, key = seed.partition("#")
    return endpoint, check_key(key) if sep else None


class KeyBook:
    """Which server key to expect at which endpoint: hints for connecting.

    A hint (mDNS, gossip, seed) never replaces a key that a peer proved on an
    authenticated connection (its HELLO); a proven key replaces anything.
    Bounded: the oldest entries are forgotten first. Thread-safe.
    """

    def __init__(self, capacity: int = _MAX_KEYBOOK) -> None:
        self._keys: collections.OrderedDict[str, tuple[bytes, bool]] = collections.OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def learn(self, endpoint: str, key: bytes, *, proven: bool = False) -> None:
        with self._lock:
            known = self._keys.get(endpoint)
            if known is not None and known[1] and not proven and known[0] != key:
                return
            self._keys[endpoint] = (key, proven or (known is not None and known == (key, True)))
            self._keys.move_to_end(endpoint)
            while len(self._keys) > self._capacity:
                self._keys.popitem(last=False)

    def get(self, endpoint: str) -> bytes | None:
        with self._lock:
            known = self._keys.get(endpoint)
        return None if known is None else known[0]
