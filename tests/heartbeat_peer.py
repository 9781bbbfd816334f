"""One data socket of meshq's making in a process of its own, for the ZMTP heartbeat tests.

    python tests/heartbeat_peer.py bind XPUB
    python tests/heartbeat_peer.py connect SUB tcp://127.0.0.1:5555

``bind`` binds the socket to a free port on 127.0.0.1 and prints the
endpoint as one JSON line; ``connect`` connects it (a SUB subscribes to
everything) and prints ``"connected"``. Then it holds the socket, doing
nothing, until stdin closes. The test freezes the process with SIGSTOP: its
libzmq I/O thread stops with it, as on a frozen host.
"""

from __future__ import annotations

import json
import sys

import zmq

from meshq.config import MeshConfig
from meshq.sockets import SocketFactory


def main(argv: list[str]) -> None:
    role, kind, *rest = argv
    context = zmq.Context()
    sock = SocketFactory(MeshConfig()).make(context, getattr(zmq, kind))
    if role == "bind":
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        print(json.dumps(f"tcp://127.0.0.1:{port}"), flush=True)
    else:
        if kind == "SUB":
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(rest[0])
        print(json.dumps("connected"), flush=True)
    sys.stdin.read()  # until the test closes our stdin
    sock.close(linger=0)
    context.term()


if __name__ == "__main__":
    main(sys.argv[1:])
