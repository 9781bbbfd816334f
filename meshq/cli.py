"""The meshq command: what people do by hand with a mesh.

meshq demo                  a live local mesh of three processes, ~10 s
meshq peers [--watch]       who is on the mesh
meshq pub TOPIC DATA        publish one message (or --count N)
meshq sub PREFIX            print messages as they arrive
meshq call SERVICE DATA     ask a service and print the reply
meshq services              who offers which service
meshq relay --data DIR --streams "orders/"   store durable streams
meshq streams               durable streams, their consumers and lag
meshq replay STREAM         print a stream's stored messages
meshq keygen NAME           write a CURVE key pair (NAME.key, NAME.key_secret)
meshq doctor                check this host and the LAN; meshq top, meshq exporter

Every command that joins a mesh (all but demo and keygen) takes --mesh,
--interface, --seed, --key and --allow. SIGTERM closes a command as Ctrl-C
does: its node says goodbye, so peers see it leave at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .config import MeshConfig
from .durable import wait_for_relay
from .errors import MeshqError, NoProviders, RemoteError, Timeout
from .node import Node
from .opscli import add_commands as add_ops_commands
from .relay.commands import add_commands
from .security import Curve, write_key_pair

__all__ = ["main"]


def _node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mesh", default="default", help="mesh name")
    parser.add_argument(
        "--interface",
        action="append",
        dest="interfaces",
        metavar="IP",
        help="IPv4 address to listen on; repeat for more "
        "(default: $MESHQ_INTERFACES, else every non-loopback address)",
    )
    parser.add_argument(
        "--seed",
        action="append",
        dest="seeds",
        default=[],
        metavar="ENDPOINT",
        help="control endpoint to join through, e.g. tcp://198.18.0.5:7600; repeatable",
    )
    parser.add_argument("--name", help="this node's name")
    parser.add_argument("--port", type=int, default=0, help="control port; 0: any free one")
    parser.add_argument("--no-mdns", action="store_true", help="use seeds only")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument(
        "--key", metavar="FILE", help="this node's CURVE secret key file: turns security on"
    )
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="DIR_OR_KEY",
        help="with --key: a directory of allowed public .key files, or one Z85 key "
        "(repeatable; --allow=KEY also takes a key that starts with '-')",
    )


def _security(args: argparse.Namespace) -> Curve | None:
    if args.key is None:
        if args.allow:
            raise ValueError("--allow needs --key")
        return None
    if len(args.allow) == 1 and not _is_key(args.allow[0]):
        return Curve(args.key, allow=args.allow[0])
    return Curve(args.key, allow=args.allow)


def _is_key(text: str) -> bool:
    return len(text) == 40 and not os.path.isdir(text)


#: The Z85 alphabet (ZeroMQ RFC 32): a CURVE key in text is 40 of these.
_Z85 = frozenset(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)
#: Options whose value may be a Z85 key, which starts with '-' once in 85 keys.
_KEY_OPTIONS = ("--allow",)


def _join_key_values(argv: Sequence[str]) -> list[str]:
    """``--allow KEY`` as ``--allow=KEY``, so a key starting with '-' is not read as an option.

    argparse takes a value that starts with '-' for an option of its own;
    a 40-character Z85 word after --allow can only be a key.
    """
    joined: list[str] = []
    words = iter(argv)
    for word in words:
        if word in _KEY_OPTIONS:
            value = next(words, None)
            if value is None:
                joined.append(word)
            elif value.startswith("-") and len(value) == 40 and set(value) <= _Z85:
                joined.append(f"{word}={value}")
            else:
                joined.extend((word, value))
        else:
            joined.append(word)
    return joined


def _make_node(args: argparse.Namespace, default_name: str) -> Node:
    return Node(
        args.name or default_name,
        mesh=args.mesh,
        interfaces=args.interfaces,
        seeds=args.seeds,
        config=MeshConfig(control_port=args.port),
        discovery=not args.no_mdns,
        security=_security(args),
    )


def _cmd_keygen(args: argparse.Namespace) -> int:
    public, secret = write_key_pair(args.name, args.dir)
    key = public.read_text().split('public-key = "')[1][:40]
    print(f"public key {key}\nwrote {public} (give it to peers) and {secret} (keep it, mode 0600)")
    return 0


def _cmd_peers(args: argparse.Namespace) -> int:
    with _make_node(args, "meshq-peers") as node:
        if args.watch:
            print(f"watching mesh {args.mesh!r} (Ctrl-C to stop)", flush=True)
            for event in node.events(timeout=args.duration):
                peer = event.peer
                reason = f" ({event.reason})" if event.reason else ""
                print(f"{event.kind.value:9} {peer.name:20} {peer.id[:8]} {peer.endpoint}{reason}")
            return 0
        _wait_for_peers(node, args.expect, args.wait)
        peers = node.peers()
        print(f"{len(peers)} peer(s) on mesh {args.mesh!r}")
        for peer in sorted(peers, key=lambda p: p.name):
            print(f"  {peer.name:20} {peer.id[:8]}  {peer.state.value:7}  {peer.endpoint}")
        return 0


def _data(args: argparse.Namespace) -> object:
    """DATA as sent: UTF-8 bytes, or parsed as JSON with --json (ValueError naming it)."""
    if not args.json:
        return args.data.encode()
    try:
        return json.loads(args.data)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"argument DATA: not valid JSON ({exc}): {args.data!r}; "
            "quote it for the shell, e.g. '{\"celsius\": 21.5}', or drop --json to send text"
        ) from None


def _wait_for_peers(node: Node, expect: int | None, wait: float) -> None:
    """Listen ``wait`` seconds, or less once ``expect`` peers answered."""
    try:
        node.wait_for_peers(expect if expect is not None else node.config.max_peers + 1, wait)
    except Timeout:
        pass  # show whoever answered


def _cmd_pub(args: argparse.Namespace) -> int:
    data = _data(args)
    with _make_node(args, "meshq-pub") as node:
        node.check_topic(args.topic)
        if args.durable:
            return _publish_durably(node, args, data)
        try:
            found = node.wait_for_subscribers(args.topic, args.subscribers, timeout=args.timeout)
        except Timeout:
            found = node.subscribers(args.topic)
            print(
                f"nothing sent: {found} of {args.subscribers} subscriber(s) of {args.topic!r} "
                f"after {args.timeout:g} s (a message nobody subscribes to is dropped).\n"
                f"Start one with: meshq sub {_shell_word(args.topic)} --mesh {args.mesh}; "
                "wait longer with --timeout SECONDS, or send anyway with --subscribers 0.",
                file=sys.stderr,
            )
            return 1
        for _ in range(args.count):
            node.publish(args.topic, data)
        print(f"published {args.count} message(s) on {args.topic!r} to {found} subscriber(s)")
    return 0


def _shell_word(text: str) -> str:
    return text if text.replace("/", "").replace("-", "").replace("_", "").isalnum() else repr(text)


def _publish_durably(node: Node, args: argparse.Namespace, data: object) -> int:
    # Discovery takes a moment: wait for the relay.
    if not wait_for_relay(node, args.topic, args.timeout):
        print(f"no relay stores {args.topic!r}", file=sys.stderr)
        return 1
    try:
        seqs = [node.publish(args.topic, data, durable=True) for _ in range(args.count)]
    except NoProviders:
        print(f"no relay stores {args.topic!r}", file=sys.stderr)
        return 1
    print(f"stored {args.count} message(s) on {args.topic!r}, last seq {seqs[-1]}")
    return 0


def _cmd_sub(args: argparse.Namespace) -> int:
    received = 0
    with _make_node(args, "meshq-sub") as node, node.subscribe(args.prefix) as sub:
        print(f"subscribed to {args.prefix!r} on mesh {args.mesh!r}", flush=True)
        deadline = None if args.timeout is None else time.monotonic() + args.timeout
        while args.count is None or received < args.count:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            try:
                message = sub.recv(timeout=remaining)
            except Timeout:
                break
            received += 1
            print(f"{message.topic} [{message.sender[:8]} #{message.seq}] {message.data!r}")
            sys.stdout.flush()
    return 0 if args.count is None or received >= args.count else 1


def _wait_for_service(node: Node, service: str, timeout: float) -> bool:
    try:
        node.wait_for_service(service, timeout=timeout)
    except Timeout:
        return False
    return True


def _cmd_call(args: argparse.Namespace) -> int:
    data = _data(args)
    with _make_node(args, "meshq-call") as node:
        # Discovery takes a moment: wait for a provider before calling.
        _wait_for_service(node, args.service, args.wait)
        try:
            reply = node.request(args.service, data, timeout=args.timeout, retries=args.retries)
        except NoProviders:
            print(f"no provider of {args.service!r} on mesh {args.mesh!r}", file=sys.stderr)
            return 1
        except (RemoteError, Timeout) as exc:
            print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(reply) if not isinstance(reply, bytes) else repr(reply))
    return 0


def _cmd_services(args: argparse.Namespace) -> int:
    with _make_node(args, "meshq-services") as node:
        _wait_for_peers(node, args.expect, args.wait)
        names = {peer.id: peer.name for peer in node.peers()}
        offered = node.services()
        print(f"{len(offered)} service(s) on mesh {args.mesh!r}")
        for service in sorted(offered):
            providers = ", ".join(sorted(names.get(p, p[:8]) for p in offered[service]))
            print(f"  {service:20} {providers}")
    return 0


#: Subcommands defined next to what they run (meshq/relay/commands.py).
relay_commands: dict[str, Callable[[argparse.Namespace], int]] = {}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout, and shows every option's default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "default" in text
            or default is None
            or default is False
            or default == []
            or default is argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's parser: defaults shown, layout kept."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The ``meshq`` argument parser, with every subcommand."""
    summary, _commands, common = __doc__.split("\n\n")[:3]
    parser = _Parser(
        prog="meshq",
        description=summary,
        epilog=f"{common}\n\nmeshq COMMAND --help lists a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"meshq {__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    demo = commands.add_parser("demo", help="run a live local mesh of several processes")
    demo.add_argument("--nodes", type=int, default=3, help="processes")
    demo.add_argument("--duration", type=float, default=10.0, help="seconds")
    demo.add_argument("--rate", type=int, default=20_000, help="msg/s per node cap")
    demo.add_argument("--mesh", default=None, help="mesh name (default: a fresh one)")
    demo.add_argument("--interface", default="127.0.0.1", help="IPv4 address")

    peers = commands.add_parser("peers", help="list (or --watch) the peers on a mesh")
    _node_options(peers)
    peers.add_argument("--watch", action="store_true", help="print peer events as they happen")
    peers.add_argument("--wait", type=float, default=2.0, help="seconds to listen")
    peers.add_argument(
        "--expect", type=int, default=None, help="stop once N peers are seen (default: --wait)"
    )
    peers.add_argument(
        "--duration", type=float, default=None, help="--watch for N seconds (default: until Ctrl-C)"
    )

    pub = commands.add_parser("pub", help="publish a message")
    _node_options(pub)
    pub.add_argument("topic")
    pub.add_argument("data", help="sent as UTF-8 bytes, or as msgpack with --json")
    pub.add_argument("--json", action="store_true", help="parse DATA as JSON")
    pub.add_argument("--count", type=int, default=1, help="how many times")
    pub.add_argument(
        "--subscribers",
        type=int,
        default=1,
        help="first wait for N subscribers; 0 sends at once, received or not",
    )
    pub.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for them (or for the relay)"
    )
    pub.add_argument(
        "--durable", action="store_true", help="store it on the stream's relay; wait for confirms"
    )

    sub = commands.add_parser("sub", help="print messages whose topic starts with PREFIX")
    _node_options(sub)
    sub.add_argument("prefix")
    sub.add_argument("--count", type=int, default=None, help="exit after N messages")
    sub.add_argument("--timeout", type=float, default=None, help="exit after N seconds")

    call = commands.add_parser("call", help="ask a service and print its reply")
    _node_options(call)
    call.add_argument("service")
    call.add_argument("data", help="sent as UTF-8 bytes, or as msgpack with --json")
    call.add_argument("--json", action="store_true", help="parse DATA as JSON")
    call.add_argument("--timeout", type=float, default=1.0, help="seconds per attempt")
    call.add_argument("--retries", type=int, default=2, help="attempts after the first")
    call.add_argument("--wait", type=float, default=3.0, help="seconds to find a provider")

    services = commands.add_parser("services", help="list who offers which service")
    _node_options(services)
    services.add_argument("--wait", type=float, default=2.0, help="seconds to listen")
    services.add_argument(
        "--expect", type=int, default=None, help="stop once N peers are seen (default: --wait)"
    )

    keygen = commands.add_parser("keygen", help="write a CURVE key pair for --key/--allow")
    keygen.add_argument("name", help="file name: NAME.key and NAME.key_secret")
    keygen.add_argument("--dir", default=".", help="directory")

    relay_commands.update(add_commands(commands, _node_options, _make_node))
    relay_commands.update(add_ops_commands(commands, _node_options, _make_node))  # doctor, top, ...
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``meshq`` console script; returns the exit status."""
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser().parse_args(_join_key_values(argv))
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # systemd and docker stop with SIGTERM: close as Ctrl-C does, so the
    # node's with-block says goodbye and peers see it leave at once.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.command == "demo":
            from .demo import run_demo

            return run_demo(args.nodes, args.duration, args.rate, args.mesh, args.interface)
        handlers = {
            "peers": _cmd_peers,
            "pub": _cmd_pub,
            "sub": _cmd_sub,
            "call": _cmd_call,
            "services": _cmd_services,
            "keygen": _cmd_keygen,
            **relay_commands,
        }
        return handlers[args.command](args)
    except Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except (ValueError, TypeError, OSError, MeshqError) as exc:
        print(f"meshq: {_cli_advice(exc)}", file=sys.stderr)
        return 2


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: unwinds like Ctrl-C, so nodes say goodbye."""


def _terminate(signum: int, frame: object) -> None:
    # A second SIGTERM must not cut the goodbye short (SIGKILL still does).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


def _cli_advice(error: BaseException) -> str:
    """An error's text in the CLI's terms: options, not Python arguments."""
    text = str(error)
    for python, cli in _PYTHON_TO_CLI:
        text = text.replace(python, cli)
    return text


#: Advice the library gives in Python terms, and its command-line form.
_PYTHON_TO_CLI = (
    ("interfaces=['127.0.0.1']", "--interface 127.0.0.1"),
    ("leave interfaces out", "leave --interface out"),
    ("interfaces: ", "--interface: "),
)


if __name__ == "__main__":
    sys.exit(main())
