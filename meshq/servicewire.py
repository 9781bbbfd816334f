"""The request/reply codec: service requests and replies as single frames.

Pure functions like meshq/wire.py (whose data-message codec this mirrors);
docs/PROTOCOL.md specifies the bytes. A caller's DEALER sends a REQUEST to a
provider's service ROUTER; the provider answers on the same connection:

    request: "Q" | version u8 | flags u8 | request id u64 | name length u8 | name | payload
    reply:   "A" | version u8 | flags u8 | request id u64 | load u32 | payload

Request flags: bit 0 payload is msgpack (else raw bytes). Reply flags: bit 0
as for requests; bit 1 the handler raised, and the payload is msgpack
``[type name, message]``; bit 2 the provider does not serve that name (any
more), and the payload is empty. ``load`` is how many requests the provider
holds, this one excluded, when it answered: callers balance on it.
"""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

from .errors import ProtocolError
from .wire import FLAG_MSGPACK, PROTOCOL_VERSION, Limits, decode_payload, encode_msgpack

__all__ = [
    "REPLY_ERROR",
    "REPLY_HEAD",
    "REPLY_NOT_SERVED",
    "REQUEST_HEAD",
    "Reply",
    "Request",
    "check_service_name",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_answer",
    "encode_request",
]

REPLY_ERROR: Final = 0x02
REPLY_NOT_SERVED: Final = 0x04
_REQUEST_FLAGS: Final = FLAG_MSGPACK
_REPLY_FLAGS: Final = FLAG_MSGPACK | REPLY_ERROR | REPLY_NOT_SERVED
MAX_SERVICE_NAME_BYTES: Final = 255

#: The fixed starts of a request (kind, version, flags, request id, name
#: length) and of a reply (kind, version, flags, request id, load): the hot
#: paths of meshq/services.py and meshq/requester.py read and write them
#: directly, with the same checks as the decoders below.
REQUEST_HEAD: Final = struct.Struct(">cBBQB")
REPLY_HEAD: Final = struct.Struct(">cBBQI")
_REQUEST_HEAD = REQUEST_HEAD
_REPLY_HEAD = REPLY_HEAD
_REPLY_PACK = _REPLY_HEAD.pack


class Request(NamedTuple):
    """A decoded request; ``data`` is bytes or the decoded msgpack object.

    (Named tuples rather than dataclasses: one is built per message.)
    """

    request_id: int
    service: str
    data: object


class Reply(NamedTuple):
    """A decoded reply. ``error`` is (type name, message) when the handler raised."""

    request_id: int
    load: int
    data: object = None
    error: tuple[str, str] | None = None
    not_served: bool = False


def _unpack_head(
    frame: bytes, head: struct.Struct, kind: bytes, known_flags: int
) -> tuple[int, int, int]:
    """Check the common start of a request ("Q") or reply ("A"); return its last three fields.

    Raises ProtocolError for a short frame, another kind, another version or
    unknown flags.
    """
    what = "request" if kind == b"Q" else "reply"
    if len(frame) < head.size:
        raise ProtocolError(f"truncated {what}")
    got_kind, version, flags, request_id, last = head.unpack_from(frame)
    if got_kind != kind:
        raise ProtocolError(f"not a {what}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version}")
    if flags & ~known_flags:
        raise ProtocolError(f"unknown {what} flags")
    return flags, request_id, last


def check_service_name(name: str) -> bytes:
    """The name's UTF-8 bytes; ValueError unless it is 1..255 bytes."""
    encoded = name.encode()
    if not 0 < len(encoded) <= MAX_SERVICE_NAME_BYTES:
        raise ValueError(f"service name must be 1..{MAX_SERVICE_NAME_BYTES} UTF-8 bytes")
    return encoded


def encode_request(request_id: int, service: bytes, flags: int, payload: bytes) -> bytes:
    """One request frame; ``service`` from check_service_name, ``flags`` from encode_payload."""
    return (
        _REQUEST_HEAD.pack(b"Q", PROTOCOL_VERSION, flags, request_id, len(service))
        + service
        + payload
    )


def decode_request(frame: bytes, limits: Limits) -> Request:
    """Parse a request frame. Raises ProtocolError."""
    flags, request_id, name_length = _unpack_head(frame, _REQUEST_HEAD, b"Q", _REQUEST_FLAGS)
    start = _REQUEST_HEAD.size + name_length
    if name_length == 0 or len(frame) < start:
        raise ProtocolError("bad service name")
    try:
        service = frame[_REQUEST_HEAD.size : start].decode()
    except UnicodeDecodeError:
        raise ProtocolError("bad service name") from None
    return Request(request_id, service, decode_payload(flags, frame[start:], limits))


def encode_reply(
    request_id: int,
    load: int,
    *,
    flags: int = 0,
    payload: bytes = b"",
    error: BaseException | None = None,
    not_served: bool = False,
) -> bytes:
    """One reply frame: a result (``flags``/``payload``), an error, or "not served"."""
    if not_served:
        flags, payload = REPLY_NOT_SERVED, b""
    elif error is not None:
        flags = REPLY_ERROR | FLAG_MSGPACK
        try:
            text = str(error)
        except BaseException:  # an exception whose __str__ fails still gets an answer
            text = "<unprintable>"
        # "replace": a message that is not valid UTF-8 must not stop the reply.
        message = text[:4096].encode("utf-8", "replace").decode()
        payload = encode_msgpack([type(error).__name__, message])
    load = min(max(load, 0), 0xFFFFFFFF)
    return _REPLY_HEAD.pack(b"A", PROTOCOL_VERSION, flags, request_id, load) + payload


def encode_answer(request_id: int, load: int, flags: int, payload: bytes) -> bytes:
    """A result's reply frame: :func:`encode_reply` without the error cases, for the hot path."""
    return _REPLY_PACK(b"A", PROTOCOL_VERSION, flags, request_id, min(load, 0xFFFFFFFF)) + payload


def decode_reply(frame: bytes, limits: Limits) -> Reply:
    """Parse a reply frame. Raises ProtocolError."""
    flags, request_id, load = _unpack_head(frame, _REPLY_HEAD, b"A", _REPLY_FLAGS)
    payload = frame[_REPLY_HEAD.size :]
    if flags & REPLY_NOT_SERVED:
        return Reply(request_id, load, not_served=True)
    if flags & REPLY_ERROR:
        error = decode_payload(FLAG_MSGPACK, payload, limits)
        if not (
            isinstance(error, list)
            and len(error) == 2
            and all(isinstance(part, str) for part in error)
        ):
            raise ProtocolError("bad error reply")
        return Reply(request_id, load, error=(error[0], error[1]))
    return Reply(request_id, load, decode_payload(flags, payload, limits), None, False)
