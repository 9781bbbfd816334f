"""docs/protocol-vectors.json against the codecs, both ways, and against a real node.

Every example is encoded from its fields and must give its bytes exactly,
and its bytes are decoded and must give its fields. Every malformed input
must be refused the way the file says. The file is data another
implementation can test itself with; these tests hold meshq to the same data.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from zeroconf import ServiceInfo

import meshq
from meshq import relaywire
from meshq.discovery import SERVICE_TYPE, Candidate, MdnsDiscovery, read_txt
from meshq.errors import ProtocolError
from meshq.message import Message
from meshq.servicewire import (
    check_service_name,
    decode_reply,
    decode_request,
    encode_reply,
    encode_request,
)
from meshq.wire import (
    FLAG_MSGPACK,
    Bye,
    ControlMessage,
    Hello,
    Limits,
    Ping,
    TailMarker,
    decode_control,
    decode_data,
    encode_batch,
    encode_control,
    encode_data,
    encode_msgpack,
    encode_payload,
    routing_id,
    topic_prefix,
)
from tests.test_security import LOOPBACK, wait_until

VECTORS_PATH = Path(__file__).resolve().parent.parent / "docs" / "protocol-vectors.json"
SPEC_PATH = VECTORS_PATH.parent / "PROTOCOL.md"
LIMITS = Limits()
Vector = dict[str, Any]


def load_vectors() -> Vector:
    with VECTORS_PATH.open(encoding="utf-8") as file:
        vectors: Vector = json.load(file)
    return vectors


VECTORS = load_vectors()


def by_kind(section: str, *kinds: str) -> list[Any]:
    """The vectors of ``section`` of these kinds, as pytest params named after them."""
    return [
        pytest.param(vector, id=vector["name"])
        for vector in VECTORS[section]
        if vector["kind"] in kinds
    ]


def value(node: Any) -> Any:
    """A JSON value as msgpack sees it: ``{"$bin": hex}`` is bytes, the rest as is."""
    if isinstance(node, dict):
        if set(node) == {"$bin"}:
            return bytes.fromhex(node["$bin"])
        return {key: value(item) for key, item in node.items()}
    if isinstance(node, list):
        return [value(item) for item in node]
    return node


# --------------------------------------------------------------------------
# From fields to bytes, per kind (the reference encoders)


def control_message(fields: Vector) -> ControlMessage:
    sender = bytes.fromhex(fields["sender"])
    if fields["type"] == "PING":
        return Ping(sender)
    if fields["type"] == "BYE":
        return Bye(sender)
    peers = fields.get("peers", [])
    return Hello(
        sender=sender,
        name=fields["name"],
        mesh=fields["mesh"],
        control=tuple(fields["control"]),
        publish=tuple(fields["publish"]),
        headers=fields.get("headers", {}),
        peers=tuple((bytes.fromhex(peer[0]), tuple(peer[1])) for peer in peers),
        reply=fields.get("reply", False),
        services=tuple(fields.get("services", [])),
        service=tuple(fields.get("service", [])),
        publish_block=tuple(fields.get("publish_block", [])),
        key=fields.get("key", "").encode(),
        peer_keys={bytes.fromhex(peer[0]): peer[2].encode() for peer in peers if len(peer) == 3},
    )


def encode_data_fields(fields: Vector) -> bytes:
    prefix = topic_prefix(fields["topic"], bytes.fromhex(fields["sender"]), LIMITS)
    flags = fields["flags"]
    if "batch" in fields:
        items = value(fields["batch"])
        encoded = items if not flags & FLAG_MSGPACK else [encode_msgpack(i) for i in items]
        payload = encode_batch(encoded)
    else:
        payload = encode_payload(value(fields["data"]))[1]
    return encode_data(prefix, flags, fields["seq"], fields["time_ns"], payload)


class RaisedByTheHandler(Exception):
    """Stands in for the handler's exception; its class name is set per vector."""


def encode_reply_fields(fields: Vector) -> bytes:
    if fields.get("not_served"):
        return encode_reply(fields["request_id"], fields["load"], not_served=True)
    if "error" in fields:
        raised: list[str] = fields["raised"] if "raised" in fields else fields["error"]
        error = type(raised[0], (RaisedByTheHandler,), {})(raised[1])
        return encode_reply(fields["request_id"], fields["load"], error=error)
    flags, payload = encode_payload(value(fields["data"]))
    return encode_reply(fields["request_id"], fields["load"], flags=flags, payload=payload)


def encode_vector(vector: Vector) -> bytes:
    """The bytes the reference encoders make of a vector's fields."""
    fields = vector["fields"]
    kind = vector["kind"]
    if kind == "control":
        return encode_control(control_message(fields))
    if kind == "data":
        return encode_data_fields(fields)
    if kind == "request":
        flags, payload = encode_payload(value(fields["data"]))
        return encode_request(
            fields["request_id"], check_service_name(fields["service"]), flags, payload
        )
    if kind == "reply":
        return encode_reply_fields(fields)
    raise AssertionError(f"no encoder for kind {kind}")


# --------------------------------------------------------------------------
# Examples: fields -> bytes -> fields


@pytest.mark.parametrize("vector", by_kind("examples", "control", "data", "request", "reply"))
def test_each_example_encodes_to_its_bytes(vector: Vector) -> None:
    expected = bytes.fromhex(vector["hex"])
    # The flags a vector states are the ones the reference rule (8.3) picks.
    if vector["kind"] in ("data", "request") and "data" in vector["fields"]:
        assert encode_payload(value(vector["fields"]["data"]))[0] == vector["fields"]["flags"]
    assert encode_vector(vector).hex() == expected.hex()


@pytest.mark.parametrize("vector", by_kind("examples", "control"))
def test_each_control_example_decodes_to_its_fields(vector: Vector) -> None:
    fields = vector["fields"]
    routing = routing_id(bytes.fromhex(fields["sender"]), fields["link"])
    assert routing.hex() == vector["routing_id"]
    decoded = decode_control(routing, bytes.fromhex(vector["hex"]), LIMITS)
    assert decoded == control_message(fields)


@pytest.mark.parametrize("vector", by_kind("examples", "data"))
def test_each_data_example_decodes_to_its_messages(vector: Vector) -> None:
    fields = vector["fields"]
    decoded = decode_data(bytes.fromhex(vector["hex"]), LIMITS)
    assert not isinstance(decoded, TailMarker)
    messages = decoded if isinstance(decoded, list) else [decoded]
    items = value(fields["batch"]) if "batch" in fields else [value(fields["data"])]
    assert isinstance(decoded, list) == ("batch" in fields)
    assert [(m.topic, m.sender, m.seq, m.timestamp, m.data) for m in messages] == [
        (fields["topic"], fields["sender"], fields["seq"] + i, fields["time_ns"] / 1e9, item)
        for i, item in enumerate(items)
    ]
    assert all(isinstance(m, Message) for m in messages)


@pytest.mark.parametrize("vector", by_kind("examples", "request"))
def test_each_request_example_decodes_to_its_fields(vector: Vector) -> None:
    fields = vector["fields"]
    request = decode_request(bytes.fromhex(vector["hex"]), LIMITS)
    assert (request.request_id, request.service, request.data) == (
        fields["request_id"],
        fields["service"],
        value(fields["data"]),
    )
    if "relay" in vector:  # and the relay reads the document's arguments as they are
        assert isinstance(request.data, list) and request.data[0] == vector["relay"]
        arguments = request.data[1:]
        expected: object = (
            [relaywire.Publish(*arguments)]
            if vector["relay"] == "pub"
            else relaywire.Fetch(*arguments)
        )
        assert relay_parser(vector["relay"])(request.data) == expected


@pytest.mark.parametrize("vector", by_kind("examples", "reply"))
def test_each_reply_example_decodes_to_its_fields(vector: Vector) -> None:
    fields = vector["fields"]
    reply = decode_reply(bytes.fromhex(vector["hex"]), LIMITS)
    assert (reply.request_id, reply.load) == (fields["request_id"], fields["load"])
    assert reply.not_served == bool(fields.get("not_served"))
    assert reply.error == (tuple(fields["error"]) if "error" in fields else None)
    assert reply.data == (value(fields["data"]) if "data" in fields else None)
    if vector.get("relay") == "records":
        records = relaywire.decode_records(reply.data)
        assert [list(record) for record in records] == value(fields["data"])


def txt_info(entries: list[str]) -> ServiceInfo:
    """A real python-zeroconf record whose TXT rdata holds ``entries`` as written."""
    rdata = b"".join(bytes((len(e.encode()),)) + e.encode() for e in entries)
    return ServiceInfo(
        SERVICE_TYPE,
        f"vector.{SERVICE_TYPE}",
        addresses=[socket.inet_aton("127.0.0.1")],
        port=7600,
        properties=rdata,
    )


def browser() -> MdnsDiscovery:
    """A browsing node's record reader, for mesh ``txt_local.mesh`` (never started)."""
    return MdnsDiscovery(
        node_id=bytes(16),
        name="local",
        mesh=VECTORS["txt_local"]["mesh"],
        interfaces=LOOPBACK,
        # Not the records' port: a record at the browser's own endpoint is
        # never a candidate (PROTOCOL.md 3.3).
        control_port=7601,
    )


@pytest.mark.parametrize("vector", by_kind("examples", "txt"))
def test_each_txt_example_announces_its_node(vector: Vector) -> None:
    fields = vector["fields"]
    key = fields["key"].encode() if "key" in fields else None
    announced = read_txt(txt_info(vector["txt"]).decoded_properties, VECTORS["txt_local"]["mesh"])
    assert announced == (bytes.fromhex(fields["id"]), key)
    candidate = browser()._candidate(txt_info(vector["txt"]))
    assert candidate == Candidate("tcp://127.0.0.1:7600", bytes.fromhex(fields["id"]), "mdns", key)


# --------------------------------------------------------------------------
# Malformed input: refused by the codec, with the outcome the file names


def relay_parser(operation: str) -> Callable[[list[object]], object]:
    parsers: dict[str, Callable[[list[object]], object]] = {
        "pub": relaywire.parse_publishes,
        "pubs": relaywire.parse_publishes,
        "fetch": relaywire.parse_fetch,
        "open": relaywire.parse_open,
        "ack": relaywire.parse_ack,
        "nak": relaywire.parse_nak,
        "read": relaywire.parse_read,
        "dead": relaywire.parse_read,
    }
    return parsers[operation]


OUTCOMES = {
    "control": ("dropped", "protocol_errors"),
    "data": ("dropped", "Subscription.dropped"),
    "request": ("dropped", "service_protocol_errors"),
    "reply": ("dropped", "reply_protocol_errors"),
    "relay": ("error_reply", None),
    "txt": ("ignored", None),
}


def test_the_file_covers_every_kind_and_names_each_vector_once() -> None:
    names = [v["name"] for v in VECTORS["examples"] + VECTORS["malformed"]]
    assert len(names) == len(set(names))
    assert {v["kind"] for v in VECTORS["malformed"]} == set(OUTCOMES)
    for vector in VECTORS["malformed"]:
        outcome, counter = OUTCOMES[vector["kind"]]
        assert (vector["outcome"], vector.get("counted")) == (outcome, counter), vector["name"]
        assert vector["offence"] == (vector["kind"] in ("control", "request")), vector["name"]


def test_the_spec_refers_to_every_example_and_only_to_existing_ones() -> None:
    spec = SPEC_PATH.read_text(encoding="utf-8")
    worked = spec[spec.index("## 13. Worked examples") : spec.index("## 14.")]
    named = {v["name"] for v in VECTORS["examples"]}
    referred = set(re.findall(r"[Vv]ector\s+`([a-z0-9-]+)`", worked))
    assert referred == named


@pytest.mark.parametrize("vector", by_kind("malformed", "control"))
def test_each_malformed_control_message_is_a_protocol_error(vector: Vector) -> None:
    with pytest.raises(ProtocolError):
        decode_control(bytes.fromhex(vector["routing_id"]), bytes.fromhex(vector["hex"]), LIMITS)


@pytest.mark.parametrize("vector", by_kind("malformed", "data"))
def test_each_malformed_data_frame_is_a_protocol_error(vector: Vector) -> None:
    with pytest.raises(ProtocolError):
        decode_data(bytes.fromhex(vector["hex"]), LIMITS)


@pytest.mark.parametrize("vector", by_kind("malformed", "request"))
def test_each_malformed_request_is_a_protocol_error(vector: Vector) -> None:
    with pytest.raises(ProtocolError):
        decode_request(bytes.fromhex(vector["hex"]), LIMITS)


@pytest.mark.parametrize("vector", by_kind("malformed", "reply"))
def test_each_malformed_reply_is_a_protocol_error(vector: Vector) -> None:
    with pytest.raises(ProtocolError):
        decode_reply(bytes.fromhex(vector["hex"]), LIMITS)


@pytest.mark.parametrize("vector", by_kind("malformed", "relay"))
def test_each_malformed_relay_request_is_refused_by_the_relay_codec(vector: Vector) -> None:
    # A well-formed request frame whose document the relay refuses (9.10).
    request = decode_request(bytes.fromhex(vector["hex"]), LIMITS)
    assert isinstance(request.data, list) and request.data
    assert vector["error_type"] == "ProtocolError"
    with pytest.raises(ProtocolError):
        relay_parser(str(request.data[0]))(request.data)


@pytest.mark.parametrize("vector", by_kind("malformed", "txt"))
def test_each_malformed_txt_record_is_ignored(vector: Vector) -> None:
    txt = txt_info(vector["txt"]).decoded_properties
    assert read_txt(txt, VECTORS["txt_local"]["mesh"]) is None
    assert browser()._candidate(txt_info(vector["txt"])) is None


# --------------------------------------------------------------------------
# The outcome on a real node: dropped and counted, the offender cut off


@pytest.fixture
def context() -> Iterator[zmq.Context]:  # type: ignore[type-arg]
    made: zmq.Context = zmq.Context()  # type: ignore[type-arg]
    yield made
    made.destroy(linger=0)


def dealer_to(context: zmq.Context, node: meshq.Node) -> zmq.Socket:  # type: ignore[type-arg]
    dealer: zmq.Socket = context.socket(zmq.DEALER)  # type: ignore[type-arg]
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.ROUTING_ID, routing_id(os.urandom(16), 1))
    dealer.connect(node.control_endpoints[0])
    return dealer


def hello_of(vector_name: str, mesh: str) -> bytes:
    """A valid HELLO made from an example's fields, in this test's mesh."""
    vector = next(v for v in VECTORS["examples"] if v["name"] == vector_name)
    fields = {**vector["fields"], "name": "vector", "mesh": mesh, "peers": [], "reply": False}
    fields["control"] = fields["publish"] = ["tcp://127.0.0.1:9"]
    return encode_control(control_message(fields))


def test_a_node_drops_and_counts_every_malformed_control_vector(
    context: zmq.Context,  # type: ignore[type-arg]
    mesh: str,
) -> None:
    frames = [
        bytes.fromhex(v["hex"])
        for v in VECTORS["malformed"]
        if v["kind"] == "control" and len(bytes.fromhex(v["routing_id"])) == 20
    ]
    config = meshq.MeshConfig(max_offences=len(frames) + 1)  # counted, not yet cut off
    with meshq.Node("a", mesh=mesh, interfaces=LOOPBACK, config=config, discovery=False) as a:
        dealer = dealer_to(context, a)
        for frame in frames:
            dealer.send(frame)
        wait_until(
            lambda: a.stats().get("protocol_errors", 0) >= len(frames), "a drops every vector"
        )
        assert a.stats()["protocol_errors"] == len(frames) and a.peers() == []
        # The same sender, with a valid HELLO, is still heard.
        dealer.send(hello_of("hello", mesh))
        wait_until(lambda: [p.name for p in a.peers()] == ["vector"], "the valid HELLO joins")
        dealer.close()


def test_a_zero_length_ext_in_a_hello_keeps_its_sender_out(
    context: zmq.Context,  # type: ignore[type-arg]
    mesh: str,
) -> None:
    # Issue 15: c7 00 05 under an unknown key passed max_ext_len=0 and joined.
    valid = hello_of("hello", mesh)
    fixmap = valid[4]
    assert 0x80 <= fixmap < 0x8F
    with_ext = valid[:4] + bytes((fixmap + 1,)) + valid[5:] + b"\xa6future\xc7\x00\x05"
    with meshq.Node("a", mesh=mesh, interfaces=LOOPBACK, discovery=False) as a:
        dealer = dealer_to(context, a)
        dealer.send(with_ext)
        wait_until(lambda: a.stats().get("protocol_errors", 0) == 1, "a drops the HELLO")
        assert a.peers() == []
        dealer.send(valid)  # the same HELLO without the ext joins
        wait_until(lambda: len(a.peers()) == 1, "the HELLO without the ext joins")
        dealer.close()


def test_a_repeat_offender_is_cut_off(
    context: zmq.Context,  # type: ignore[type-arg]
    mesh: str,
) -> None:
    frames = [
        bytes.fromhex(v["hex"])
        for v in VECTORS["malformed"]
        if v["kind"] == "control" and len(bytes.fromhex(v["routing_id"])) == 20
    ][:3]
    config = meshq.MeshConfig(max_offences=3)
    with meshq.Node("a", mesh=mesh, interfaces=LOOPBACK, config=config, discovery=False) as a:
        dealer = dealer_to(context, a)
        for frame in frames:
            dealer.send(frame)
        wait_until(lambda: a.stats().get("peers_banned", 0) == 1, "a cuts the sender off")
        dealer.send(hello_of("hello", mesh))
        wait_until(lambda: a.stats().get("banned_dropped", 0) >= 1, "its HELLO dropped unread")
        assert a.peers() == []
        dealer.close()
