"""The exceptions meshq raises: one root, one class per condition.

Errors caused by a remote peer (``ProtocolError``) are counted and logged by
the node and never reach the application; they are raised only by the
sans-I/O codec, so that its callers can count them.
"""

from __future__ import annotations

__all__ = [
    "BindError",
    "Closed",
    "KeyFileError",
    "MeshqError",
    "NoProviders",
    "PayloadTooLarge",
    "ProtocolError",
    "RemoteError",
    "Timeout",
    "TransportError",
]


class MeshqError(Exception):
    """Root of every error meshq raises."""


class Timeout(MeshqError, TimeoutError):
    """A blocking call did not finish within its ``timeout`` (seconds)."""


class Closed(MeshqError):
    """The node or subscription was used after ``close()``.

    ``errno`` is the ZeroMQ error number that revealed it, 0 if none did.
    """

    def __init__(self, message: str = "node is closed", *, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class TransportError(MeshqError):
    """ZeroMQ refused an operation for a reason other than a close (meshq/zmqerrors.py).

    ``doing`` names the operation, ``errno`` and ``strerror`` say why (for
    example ``EMFILE``: the process has no file descriptor left).
    """

    def __init__(self, doing: str, errno: int, strerror: str) -> None:
        super().__init__(f"{doing}: {strerror} (errno {errno})")
        self.doing = doing
        self.errno = errno
        self.strerror = strerror


class NoProviders(MeshqError):
    """No peer offers ``service`` right now; raised at once, not after a timeout."""

    def __init__(self, service: str) -> None:
        super().__init__(f"no provider of service {service!r}")
        self.service = service


class RemoteError(MeshqError):
    """A service handler raised: ``remote_type`` and ``remote_message`` say what.

    ``provider`` is the id of the node whose handler failed.
    """

    def __init__(self, service: str, provider: str, remote_type: str, remote_message: str) -> None:
        super().__init__(f"{service}: {remote_type}: {remote_message}")
        self.service = service
        self.provider = provider
        self.remote_type = remote_type
        self.remote_message = remote_message


class BindError(MeshqError):
    """A socket could not listen on ``address`` (port in use, address not local, ...)."""

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot listen on {address}: {reason}")
        self.address = address
        self.reason = reason


class ProtocolError(MeshqError):
    """Bytes from a remote peer that do not follow docs/PROTOCOL.md.

    The remote peer is at fault, never the local caller. ``reason`` is a short
    machine-friendly description such as ``"truncated header"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyFileError(MeshqError):
    """A CURVE key file cannot be used: missing, malformed, or readable by others.

    ``path`` names the file; ``reason`` says what is wrong with it.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class PayloadTooLarge(MeshqError, ValueError):
    """A payload is bigger than receivers accept; refused at the sender, nothing sent.

    ``what`` names the payload (message, request, reply), ``size`` its
    encoded bytes and ``limit`` the bound (``MeshConfig.max_msgpack_bytes``
    for msgpack data). A ValueError too, as for any bad argument.
    """

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(
            f"{what} too large: {size} bytes of msgpack, receivers accept at most {limit} "
            f"(MeshConfig.max_msgpack_bytes); send bytes instead (up to max_message_bytes) "
            f"or raise max_msgpack_bytes on every node"
        )
        self.what = what
        self.size = size
        self.limit = limit
