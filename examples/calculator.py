"""A calculator service with two providers, and a caller that spreads its requests.

    python examples/calculator.py

Three nodes on the loopback interface find each other by mDNS. Two offer the
service "calc"; the caller sends a few additions (they spread over both
providers), then a division by zero, which comes back as meshq.RemoteError
while the service keeps serving.
"""

from __future__ import annotations

import collections
import time

import meshq

LOOPBACK = ["127.0.0.1"]


def main() -> int:
    mesh = f"example-{time.time_ns()}"  # a fresh mesh: never mixes with other runs
    with (
        meshq.Node("left", mesh=mesh, interfaces=LOOPBACK) as left,
        meshq.Node("right", mesh=mesh, interfaces=LOOPBACK) as right,
        meshq.Node("caller", mesh=mesh, interfaces=LOOPBACK) as caller,
    ):
        for provider in (left, right):

            @provider.service("calc")
            def calculate(data: object, name: str = provider.name) -> object:
                if not isinstance(data, dict):  # a peer's data: check it, never assert
                    raise TypeError("expected {'a': number, 'op': '+' or '/', 'b': number}")
                a, op, b = data["a"], data["op"], data["b"]
                value = a + b if op == "+" else a / b
                return {"value": value, "by": name}

        caller.wait_for_service("calc", 2, timeout=10)  # discovery takes a moment

        answered_by: collections.Counter[str] = collections.Counter()
        for i in range(20):
            reply = caller.request("calc", {"a": i, "op": "+", "b": 1}, timeout=1.0)
            if isinstance(reply, dict):  # replies are whatever msgpack carried
                answered_by[str(reply["by"])] += 1
        print(f"20 additions answered by: {dict(answered_by)}")
        try:
            caller.request("calc", {"a": 1, "op": "/", "b": 0})
        except meshq.RemoteError as error:
            print(f"1 / 0 -> RemoteError {error.remote_type}: {error.remote_message}")
        print("after the error:", caller.request("calc", {"a": 6, "op": "/", "b": 3}))
        return 0 if len(answered_by) == 2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
