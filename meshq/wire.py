"""The wire codec: bytes in, typed messages out, and back. No sockets, no clock.

docs/PROTOCOL.md is the specification; this module is its reference
implementation. Every limit a remote peer could abuse is checked here, and
every malformed input raises :class:`~meshq.errors.ProtocolError` and nothing
else, so callers count and drop with a single ``except``.

Two families of messages exist:

* Control messages travel DEALER -> ROUTER as one frame:
  ``"MQ" | version u8 | kind u8 | body``. The sender's node id is the ZeroMQ
  first 16 bytes of the 20-byte routing id the ROUTER prepends (node id,
  then the number of the sender's link, so links never share an id).
* Data messages travel PUB -> SUB as one frame that starts with the topic, so
  ZeroMQ's prefix filter does the topic matching:
  ``topic | 0x00 | version u8 | sender 16 | flags u8 | seq u64 | time u64 | payload``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgpack
from zmq.utils import z85

from .errors import PayloadTooLarge, ProtocolError
from .message import Message

__all__ = [
    "CONTROL_SIGNATURE",
    "DATA_HEADER_BYTES",
    "ENTRY_HEADER_BYTES",
    "FLAG_BATCH",
    "FLAG_TAIL",
    "FLAG_MSGPACK",
    "MAX_BATCH",
    "data_header_packer",
    "encode_batch",
    "split_batch",
    "ECHO_BODY_BYTES",
    "ECHO_PING_BYTES",
    "NODE_ID_BYTES",
    "PING_HEAD",
    "decode_echo",
    "unpack_echo_ping",
    "encode_echo_ping",
    "ROUTING_ID_BYTES",
    "routing_id",
    "PROTOCOL_VERSION",
    "Bye",
    "ControlMessage",
    "Hello",
    "Limits",
    "Ping",
    "decode_control",
    "TailMarker",
    "decode_data",
    "encode_control",
    "encode_data",
    "encode_payload",
    "encode_msgpack",
    "decode_payload",
    "check_identity",
    "MAX_MESH_BYTES",
    "MAX_SERVICES",
    "parse_endpoint",
    "topic_prefix",
]

PROTOCOL_VERSION: Final = 1
CONTROL_SIGNATURE: Final = b"MQ"
NODE_ID_BYTES: Final = 16
_LINK = struct.Struct(">I")
#: A DEALER's routing id: the node id, then a 4-byte link number.
ROUTING_ID_BYTES: Final = NODE_ID_BYTES + _LINK.size

KIND_HELLO: Final = 1
KIND_PING: Final = 2
KIND_BYE: Final = 3

#: Payload flag: the payload is a msgpack document, not raw bytes.
FLAG_MSGPACK: Final = 0x01
#: Payload flag: the payload is a batch of messages, each ``u32 length | bytes``.
FLAG_BATCH: Final = 0x02
#: A tail marker: no payload; its sequence number is the last one the
#: publisher sent on the topic, so receivers count a lost tail as a gap.
FLAG_TAIL: Final = 0x04
_KNOWN_FLAGS: Final = FLAG_MSGPACK | FLAG_BATCH | FLAG_TAIL
#: Most messages one batch frame carries.
MAX_BATCH: Final = 1024
_ENTRY_LENGTH = struct.Struct(">I")
#: Bytes each batch entry adds before its payload.
ENTRY_HEADER_BYTES: Final = _ENTRY_LENGTH.size

_CONTROL_HEAD = struct.Struct(">2sBB")
# An echo PING's body (16.4): sent ns, echo ns, held us.
_ECHO_BODY = struct.Struct(">QQI")
_ECHO_PING = struct.Struct(">4sQQI")  # PING_HEAD, then the echo body
#: Bytes of an echo PING's body (PROTOCOL.md 16.4).
ECHO_BODY_BYTES: Final = _ECHO_BODY.size
#: Bytes of a whole echo PING frame: PING_HEAD and the echo body.
ECHO_PING_BYTES: Final = _ECHO_PING.size
#: (head, sent, echo, held) of a whole echo PING frame (16.4), whose length
#: the caller checked: decode_echo without a slice or a Python call, for
#: the control loop's heartbeats. struct.error on any other length.
unpack_echo_ping: Final = _ECHO_PING.unpack
_MAX_HELD = 2**32 - 1
#: The 4 bytes every PING starts with; a PING is these alone or with an echo body.
PING_HEAD: Final = _CONTROL_HEAD.pack(CONTROL_SIGNATURE, PROTOCOL_VERSION, KIND_PING)
# After the topic's NUL: version, sender id, flags, sequence, time in ns.
_DATA_HEAD = struct.Struct(">B16sBQQ")
#: Bytes between a data message's topic terminator and its payload.
DATA_HEADER_BYTES: Final = _DATA_HEAD.size
_DATA_TAIL = struct.Struct(">BQQ")  # the per-message part of the header

_PORT = re.compile(r"[1-9][0-9]{0,4}")
#: A CURVE public key in Z85 text, as in HELLO and the mDNS TXT record.
KEY_CHARS: Final = 40
_Z85 = re.compile(r"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
_MAX_ENDPOINTS = 16
#: Most service names one node offers.
MAX_SERVICES: Final = 64
_MAX_ENDPOINT_CHARS = 64
_MAX_NAME_BYTES = 255
#: Longest mesh name in UTF-8 bytes; it must also fit an mDNS TXT entry.
MAX_MESH_BYTES: Final = 128
_MAX_HEADER_CHARS = 1024


@dataclass(frozen=True)
class Limits:
    """Bounds the decoder enforces on what a remote peer sends."""

    max_control_bytes: int = 64 * 1024
    max_topic_bytes: int = 1024
    max_peers: int = 256
    max_headers: int = 64
    max_payload_bytes: int = 64 * 1024 * 1024
    #: Largest msgpack payload decoded: msgpack may expand ~78x in memory.
    max_msgpack_bytes: int = 4 * 1024 * 1024


# --------------------------------------------------------------------------
# Control messages


@dataclass(frozen=True)
class Hello:
    """Introduces a node: who it is and where its sockets listen.

    ``peers`` gossips the nodes the sender knows (id, control endpoints), so a
    node reached through one seed finds the whole mesh. ``reply`` asks the
    receiver to answer with a HELLO of its own.
    """

    sender: bytes
    name: str
    mesh: str
    control: tuple[str, ...]
    publish: tuple[str, ...]
    headers: Mapping[str, str] = field(default_factory=dict)
    peers: tuple[tuple[bytes, tuple[str, ...]], ...] = ()
    reply: bool = False
    #: Names of the request/reply services the sender offers, and where its
    #: service socket listens (empty when it offers none).
    services: tuple[str, ...] = ()
    service: tuple[str, ...] = ()
    #: Where the sender's second, never-dropping publish socket listens
    #: (topics published with ``publish_blocking``); empty if it has none.
    publish_block: tuple[str, ...] = ()
    #: The sender's CURVE public key (Z85, 40 bytes) when it runs with
    #: security, else empty; and the keys of gossiped peers, by node id.
    #: Hints for connecting only: admission is the allowlist's decision.
    key: bytes = b""
    peer_keys: Mapping[bytes, bytes] = field(default_factory=dict)
    #: The sender understands echo PINGs (PROTOCOL.md 16.4) and wants them.
    ping_echo: bool = False


@dataclass(frozen=True)
class Ping:
    """A heartbeat: the sender is alive. Any other message counts as well.

    An echo PING (PROTOCOL.md 16.4, ``timed``) also carries ``sent``, the
    sender's monotonic clock in ns, and ``echo`` / ``held``: the ``sent`` of
    the latest PING it read from the receiver (0: none) and how long it held
    that one before this send, in us, so the receiver can time a round trip.
    """

    sender: bytes
    sent: int = 0
    echo: int = 0
    held: int = 0
    timed: bool = False


@dataclass(frozen=True)
class Bye:
    """The sender is closing; forget it now rather than after a timeout."""

    sender: bytes


ControlMessage = Hello | Ping | Bye


def encode_control(message: ControlMessage) -> bytes:
    """Encode a control frame; the sender travels in the DEALER's routing id."""
    if isinstance(message, Hello):
        fields = {
            "name": message.name,
            "mesh": message.mesh,
            "control": list(message.control),
            "publish": list(message.publish),
            "headers": dict(message.headers),
            "peers": [_gossip_entry(pid, eps, message.peer_keys) for pid, eps in message.peers],
            "reply": message.reply,
            "services": list(message.services),
            "service": list(message.service),
        }
        if message.publish_block:  # optional: absent for most nodes
            fields["publish_block"] = list(message.publish_block)
        if message.key:  # optional: only nodes with security have one
            fields["key"] = message.key.decode()
        if message.ping_echo:  # optional: absent from version 1.0 nodes (16.4)
            fields["ping_echo"] = True
        body: bytes = msgpack.packb(fields, use_bin_type=True)
        return _CONTROL_HEAD.pack(CONTROL_SIGNATURE, PROTOCOL_VERSION, KIND_HELLO) + body
    if isinstance(message, Ping):
        if message.timed:
            return encode_echo_ping(message.sent, message.echo, message.held)
        return _CONTROL_HEAD.pack(CONTROL_SIGNATURE, PROTOCOL_VERSION, KIND_PING)
    return _CONTROL_HEAD.pack(CONTROL_SIGNATURE, PROTOCOL_VERSION, KIND_BYE)


def encode_echo_ping(sent: int, echo: int, held: int) -> bytes:
    """An echo PING (16.4): ``sent`` and ``echo`` in ns, ``held`` in us (saturated to u32)."""
    if not 0 <= held <= _MAX_HELD:
        held = 0 if held < 0 else _MAX_HELD
    return _ECHO_PING.pack(PING_HEAD, sent, echo, held)


def decode_echo(body: bytes) -> tuple[int, int, int]:
    """(sent, echo, held) of a 20-byte echo PING body (16.4); the caller checked its length."""
    sent, echo, held = _ECHO_BODY.unpack(body)
    return sent, echo, held


def _gossip_entry(
    peer_id: bytes, endpoints: tuple[str, ...], keys: Mapping[bytes, bytes]
) -> list[object]:
    key = keys.get(peer_id)
    return [peer_id, list(endpoints), key.decode()] if key else [peer_id, list(endpoints)]


def routing_id(node_id: bytes, link: int) -> bytes:
    """The ZeroMQ routing id of a node's ``link``-th DEALER: node id + u32 link number.

    Each DEALER gets its own routing id, so two connections from one node to
    one peer (two addresses of a multi-homed host dialled at once) never
    collide in the peer's ROUTER; the receiver reads the node id from the
    first 16 bytes.
    """
    return node_id + _LINK.pack(link & 0xFFFFFFFF)


def decode_control(routing: bytes, frame: bytes, limits: Limits) -> ControlMessage:
    """Decode one control frame received from ZeroMQ routing id ``routing``.

    Raises ProtocolError for anything that is not a valid control message.
    """
    if len(routing) != ROUTING_ID_BYTES:
        raise ProtocolError("bad routing id")
    sender = routing[:NODE_ID_BYTES]
    if len(frame) > _CONTROL_HEAD.size + limits.max_control_bytes:
        raise ProtocolError("control message too large")
    if len(frame) < _CONTROL_HEAD.size:
        raise ProtocolError("truncated control header")
    signature, version, kind = _CONTROL_HEAD.unpack_from(frame)
    if signature != CONTROL_SIGNATURE:
        raise ProtocolError("bad signature")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version}")
    body = frame[_CONTROL_HEAD.size :]
    if kind == KIND_PING:
        if not body:
            return Ping(sender)
        if len(body) != ECHO_BODY_BYTES:
            raise ProtocolError("bad PING body")
        sent, echo, held = _ECHO_BODY.unpack(body)
        return Ping(sender, sent, echo, held, timed=True)
    if kind == KIND_BYE:
        if body:
            raise ProtocolError("unexpected body")
        return Bye(sender)
    if kind != KIND_HELLO:
        raise ProtocolError(f"unknown control kind {kind}")
    return _decode_hello(sender, body, limits)


def _decode_hello(sender: bytes, body: bytes, limits: Limits) -> Hello:
    fields = _unpack(body, limits)
    if not isinstance(fields, dict):
        raise ProtocolError("HELLO body is not a map")
    headers = fields.get("headers", {})
    if not isinstance(headers, dict) or len(headers) > limits.max_headers:
        raise ProtocolError("bad headers")
    for key, value in headers.items():
        if not (_is_text(key, _MAX_HEADER_CHARS) and _is_text(value, _MAX_HEADER_CHARS)):
            raise ProtocolError("bad header entry")
    peers = fields.get("peers", [])
    if not isinstance(peers, list) or len(peers) > limits.max_peers:
        raise ProtocolError("bad peer list")
    gossip = []
    peer_keys = {}
    for entry in peers:
        if not (isinstance(entry, list) and len(entry) in (2, 3)):
            raise ProtocolError("bad peer entry")
        _check_node_id(entry[0], "peer id")
        gossip.append((bytes(entry[0]), _endpoints(entry[1], "peer endpoints")))
        if len(entry) == 3:
            peer_keys[bytes(entry[0])] = _key(entry[2])
    reply = fields.get("reply", False)
    if not isinstance(reply, bool):
        raise ProtocolError("bad reply flag")
    ping_echo = fields.get("ping_echo", False)
    if not isinstance(ping_echo, bool):
        raise ProtocolError("bad ping_echo flag")
    services = fields.get("services", [])
    if not isinstance(services, list) or len(services) > MAX_SERVICES:
        raise ProtocolError("bad service list")
    for service_name in services:
        if not isinstance(service_name, str) or not 0 < len(service_name.encode()) <= 255:
            raise ProtocolError("bad service name")
    service_endpoints = fields.get("service", [])
    if not isinstance(service_endpoints, list):
        raise ProtocolError("bad service endpoints")
    if service_endpoints or services:
        service_endpoints = _endpoints(service_endpoints, "service endpoints")
    publish_block = fields.get("publish_block", [])
    if publish_block != []:
        publish_block = _endpoints(publish_block, "publish_block endpoints")
    return Hello(
        sender=sender,
        name=_text(fields.get("name"), "name"),
        mesh=_text(fields.get("mesh"), "mesh", MAX_MESH_BYTES),
        control=_endpoints(fields.get("control"), "control endpoints"),
        publish=_endpoints(fields.get("publish"), "publish endpoints"),
        headers=headers,
        peers=tuple(gossip),
        reply=reply,
        services=tuple(services),
        service=tuple(service_endpoints),
        publish_block=tuple(publish_block),
        key=_key(fields["key"]) if "key" in fields else b"",
        peer_keys=peer_keys,
        ping_echo=ping_echo,
    )


def _key(value: object) -> bytes:
    """A Z85 CURVE public key as sent in HELLO: 40 characters of the Z85 alphabet."""
    if not (isinstance(value, str) and len(value) == KEY_CHARS and _Z85.fullmatch(value)):
        raise ProtocolError("bad key")
    try:
        z85.decode(value)  # an alphabet-only string may still overflow 32 bits
    except Exception:
        raise ProtocolError("bad key") from None
    return value.encode()


class _ExtRefused(ValueError):
    """An ext type in a HELLO body: the spec allows none (6.4)."""


def _refuse_ext(code: int, data: bytes) -> object:
    raise _ExtRefused(f"ext type {code} in a HELLO body")


def _unpack(body: bytes, limits: Limits) -> Any:
    try:
        return msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_str_len=limits.max_control_bytes,
            max_bin_len=limits.max_control_bytes,
            max_array_len=max(limits.max_peers, _MAX_ENDPOINTS),
            max_map_len=max(limits.max_headers, 16),
            # max_ext_len=0 bounds only an ext's length: a zero-length ext
            # (c7 00 05) passes it, so the hook refuses every ext that does.
            # The timestamp ext (-1) never reaches the hook, but has no
            # zero-length form, so the length bound refuses it.
            max_ext_len=0,
            ext_hook=_refuse_ext,
        )
    except _ExtRefused:
        raise ProtocolError("ext type in HELLO body") from None
    except Exception as exc:  # msgpack raises many types; all mean "bad body"
        raise ProtocolError(f"bad msgpack body: {type(exc).__name__}") from None


def _is_text(value: object, max_chars: int) -> bool:
    return isinstance(value, str) and len(value) <= max_chars


def _text(value: object, what: str, max_bytes: int = _MAX_NAME_BYTES) -> str:
    if not isinstance(value, str) or len(value.encode()) > max_bytes:
        raise ProtocolError(f"bad {what}")
    return value


def check_identity(
    name: str,
    mesh: str,
    headers: Mapping[str, str],
    interfaces: int,
    limits: Limits,
    services: Sequence[str] = (),
) -> None:
    """Check locally what peers would refuse in our HELLO. Raises ValueError.

    Without this a node with a 300-byte name, or headers too big for one
    HELLO, would start fine and be silently ignored by every peer.
    """
    if not 0 < len(name.encode()) <= _MAX_NAME_BYTES:
        raise ValueError(f"node name must be 1..{_MAX_NAME_BYTES} UTF-8 bytes")
    if not 0 < len(mesh.encode()) <= MAX_MESH_BYTES:
        raise ValueError(f"mesh name must be 1..{MAX_MESH_BYTES} UTF-8 bytes")
    if len(headers) > limits.max_headers:
        raise ValueError(f"at most {limits.max_headers} headers")
    for key, value in headers.items():
        if not (_is_text(key, _MAX_HEADER_CHARS) and _is_text(value, _MAX_HEADER_CHARS)):
            raise ValueError(f"headers must be str -> str, each at most {_MAX_HEADER_CHARS} chars")
    widest = ("tcp://255.255.255.255:65535",) * interfaces
    try:
        hello = Hello(
            bytes(NODE_ID_BYTES),
            name,
            mesh,
            widest,
            widest,
            headers,
            services=tuple(services),
            service=widest if services else (),
            publish_block=widest,  # the node may open its blocking socket later
            key=b"0" * KEY_CHARS,  # and may run with security
            ping_echo=True,  # as every HELLO of this implementation
        )
        frame = encode_control(hello)
    except (ValueError, TypeError) as exc:  # e.g. a lone surrogate in a header
        raise ValueError(f"name, mesh or headers cannot be encoded: {exc}") from None
    if len(frame) - _CONTROL_HEAD.size > limits.max_control_bytes:
        raise ValueError(
            f"name, mesh, headers and services need {len(frame)} bytes, over the "
            f"{limits.max_control_bytes}-byte HELLO limit"
        )


def _check_node_id(value: object, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != NODE_ID_BYTES:
        raise ProtocolError(f"bad {what}")


def _endpoints(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not 0 < len(value) <= _MAX_ENDPOINTS:
        raise ProtocolError(f"bad {what}")
    for endpoint in value:
        if not isinstance(endpoint, str) or len(endpoint) > _MAX_ENDPOINT_CHARS:
            raise ProtocolError(f"bad {what}")
        try:
            parse_endpoint(endpoint)
        except ValueError:
            raise ProtocolError(f"bad {what}") from None
    return tuple(value)


@functools.lru_cache(maxsize=1024)  # every HELLO's gossip repeats the same endpoints
def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """Split ``"tcp://198.18.0.5:7600"`` into host and port.

    Raises ValueError unless it is a TCP endpoint with an IPv4 address and a
    port in 1..65535.
    """
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"not a tcp:// endpoint: {endpoint!r}")
    host, sep, port_text = endpoint[6:].rpartition(":")
    # ASCII digits only, no leading zero: one spelling per endpoint, so that
    # endpoints compare equal as strings (restart detection relies on it).
    if not sep or not _PORT.fullmatch(port_text):
        raise ValueError(f"endpoint needs a port 1..65535: {endpoint!r}")
    if str(ipaddress.IPv4Address(host)) != host:  # IPv4Address raises ValueError too
        raise ValueError(f"endpoint needs a dotted-quad IPv4 address: {endpoint!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port out of range: {endpoint!r}")
    return host, port


# --------------------------------------------------------------------------
# Data messages


def topic_prefix(topic: str, sender: bytes, limits: Limits) -> bytes:
    """The constant start of every data frame a sender publishes on ``topic``.

    Built once per topic so the per-message work is one pack and one join.
    Raises TypeError for a topic that is not a str, ValueError for an empty,
    oversized or NUL-containing one.
    """
    if not isinstance(topic, str):  # once per new topic, never per message
        raise TypeError(not_a_str("topic", topic, "'sensors/temp'"))
    encoded = topic.encode()
    if not encoded or len(encoded) > limits.max_topic_bytes or b"\0" in encoded:
        raise ValueError(
            f"topic must be 1..{limits.max_topic_bytes} UTF-8 bytes without NUL: {topic!r}"
        )
    return encoded + b"\0" + bytes((PROTOCOL_VERSION,)) + sender


def not_a_str(argument: str, value: object, example: str) -> str:
    """The message of a TypeError for a ``str`` argument given something else."""
    fix = f"; decode it: {value!r}.decode()" if isinstance(value, bytes) else ""
    return f"{argument} must be a str such as {example}, not {type(value).__name__} {value!r}{fix}"


def encode_payload(data: object) -> tuple[int, bytes]:
    """Return (flags, payload bytes): bytes travel as they are, the rest as msgpack.

    Raises TypeError if ``data`` is not msgpack-serialisable.
    """
    if type(data) is bytes:
        return 0, data
    if isinstance(data, (bytearray, memoryview)):
        return 0, bytes(data)
    return FLAG_MSGPACK, encode_msgpack(data)


def check_payload_size(flags: int, payload: bytes, limits: Limits, what: str) -> None:
    """Refuse at the sender what every receiver would drop (decode_payload's bound).

    Raises meshq.PayloadTooLarge (a ValueError) for msgpack data over
    ``limits.max_msgpack_bytes``; bytes are bounded by the frame size instead.
    """
    if flags & FLAG_MSGPACK and len(payload) > limits.max_msgpack_bytes:
        raise PayloadTooLarge(what, len(payload), limits.max_msgpack_bytes)


def encode_msgpack(data: object) -> bytes:
    """msgpack-encode anything, bytes included. Raises TypeError if it cannot."""
    packed: bytes = msgpack.packb(data, use_bin_type=True)
    return packed


def encode_data(prefix: bytes, flags: int, seq: int, time_ns: int, payload: bytes) -> bytes:
    """Join one data frame from its constant prefix and per-message fields."""
    return prefix + _DATA_TAIL.pack(flags, seq, time_ns) + payload


def data_header_packer(prefix: bytes) -> Callable[[bytes, int, int, int], bytes]:
    """A function ``pack(prefix, flags, seq, time_ns)`` giving a frame's whole header.

    One struct call per message instead of a pack and a join; the result
    equals ``encode_data(prefix, flags, seq, time_ns, b"")``.
    """
    return struct.Struct(f">{len(prefix)}s{_DATA_TAIL.format[1:]}").pack


def encode_batch(payloads: Sequence[bytes]) -> bytes:
    """The payload of a FLAG_BATCH frame: each payload as ``u32 length | bytes``."""
    pack = _ENTRY_LENGTH.pack
    sizes = set(map(len, payloads))
    if len(sizes) == 1:
        # Payloads of one size (a burst of readings, say): one join in C,
        # about a tenth of the cost per payload of the general loop.
        head = pack(sizes.pop())
        return head + head.join(payloads)
    return b"".join([part for payload in payloads for part in (pack(len(payload)), payload)])


def split_batch(frame: bytes, start: int, limits: Limits) -> list[bytes]:
    """The payloads of a FLAG_BATCH frame, from ``start``. Raises ProtocolError."""
    payloads: list[bytes] = []
    end = len(frame)
    unpack = _ENTRY_LENGTH.unpack_from
    while start < end:
        if len(payloads) == MAX_BATCH:
            raise ProtocolError("batch too long")
        if end - start < _ENTRY_LENGTH.size:
            raise ProtocolError("truncated batch entry")
        (length,) = unpack(frame, start)
        start += _ENTRY_LENGTH.size
        if length > end - start:
            raise ProtocolError("truncated batch entry")
        payloads.append(frame[start : start + length])
        start += length
    if not payloads:
        raise ProtocolError("empty batch")
    return payloads


class TailMarker:
    """A received tail marker: publisher ``sender`` had sent up to ``seq`` on its topic."""

    __slots__ = ("sender", "seq", "topic_end")

    def __init__(self, topic_end: int, sender: bytes, seq: int) -> None:
        self.topic_end = topic_end
        self.sender = sender
        self.seq = seq


def decode_data(frame: bytes, limits: Limits) -> Message | list[Message] | TailMarker:
    """Turn a data frame into a Message, a list of them for a batch frame, or a tail marker.

    Raises ProtocolError for any malformed frame; a bad batch is refused
    whole. Runs once per received frame, so it is written for speed.
    """
    topic_end = frame.find(b"\0", 0, limits.max_topic_bytes + 1)
    if topic_end <= 0:
        raise ProtocolError("no topic terminator")
    start = topic_end + 1 + _DATA_HEAD.size
    if len(frame) < start:
        raise ProtocolError("truncated data header")
    version, sender, flags, seq, _time_ns = _DATA_HEAD.unpack_from(frame, topic_end + 1)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {version}")
    if len(frame) - start > limits.max_payload_bytes:
        raise ProtocolError("payload too large")
    if not flags:
        return Message(frame, topic_end, seq, frame[start:])
    if flags & ~_KNOWN_FLAGS:
        raise ProtocolError("unknown flags")
    if flags & FLAG_TAIL:
        if flags != FLAG_TAIL or len(frame) != start or not seq:
            raise ProtocolError("bad tail marker")
        return TailMarker(topic_end, sender, seq)
    if not flags & FLAG_BATCH:
        data = decode_payload(flags, frame[start:], limits)
        return Message(frame, topic_end, seq, data)
    payloads: list[object] = list(split_batch(frame, start, limits))
    if flags & FLAG_MSGPACK:
        payloads = [decode_payload(FLAG_MSGPACK, p, limits) for p in payloads]  # type: ignore[arg-type]
    return [Message(frame, topic_end, seq + offset, data) for offset, data in enumerate(payloads)]


def decode_payload(flags: int, payload: bytes, limits: Limits) -> object:
    """Turn a payload back into what was published. Raises ProtocolError."""
    if not flags & FLAG_MSGPACK:
        return payload
    if len(payload) > limits.max_msgpack_bytes:
        raise ProtocolError("msgpack payload too large")
    # Every container or string needs at least one byte per element, so the
    # payload's length bounds each count; saying so explicitly keeps it
    # true whatever msgpack's defaults become.
    most = len(payload)
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=False,
            max_str_len=most,
            max_bin_len=most,
            max_array_len=most,
            max_map_len=most,
            max_ext_len=most,
        )
    except Exception as exc:  # every msgpack failure is the sender's fault
        raise ProtocolError(f"bad msgpack payload: {type(exc).__name__}") from None
