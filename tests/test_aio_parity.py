"""AsyncNode offers what Node offers, in the same shape (issue 10, point 7)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import meshq
from meshq.aio import SENT
from meshq.node import DIRECT_SERVICE

LOOPBACK = ["127.0.0.1"]


def test_an_async_handler_is_awaited_on_the_loop_and_several_run_at_once(mesh: str) -> None:
    async def scenario() -> tuple[list[object], int]:
        async with (
            meshq.AsyncNode("provider", mesh=mesh, interfaces=LOOPBACK) as provider,
            meshq.AsyncNode("caller", mesh=mesh, interfaces=LOOPBACK) as caller,
        ):
            running = 0
            most = 0
            both_in = asyncio.Event()

            @provider.service("double")
            async def double(data: object) -> object:
                nonlocal running, most
                running += 1
                most = max(most, running)
                if running == 2:
                    both_in.set()
                await asyncio.wait_for(both_in.wait(), 10)  # needs a second request in progress
                running -= 1
                assert isinstance(data, int)
                return data * 2

            @provider.service("broken")
            async def broken(data: object) -> object:
                raise KeyError("nope")

            await caller.wait_for_service("double", timeout=10)
            await caller.wait_for_service("broken", timeout=10)
            answers = list(
                await asyncio.gather(caller.request("double", 1), caller.request("double", 2))
            )
            try:
                await caller.request("broken", 1)
            except meshq.RemoteError as exc:
                answers.append(exc.remote_type)
            return answers, most

    answers, most = asyncio.run(scenario())
    assert answers == [2, 4, "KeyError"]
    assert most == 2  # two requests were in the handler together


def test_on_message_send_to_on_direct_and_run_have_nodes_shape(mesh: str) -> None:
    async def scenario() -> tuple[list[object], object, object, int]:
        async with (
            meshq.AsyncNode("a", mesh=mesh, interfaces=LOOPBACK) as a,
            meshq.AsyncNode("b", mesh=mesh, interfaces=LOOPBACK) as b,
        ):
            got: list[object] = []
            three = asyncio.Event()

            @b.on_message("news/")
            async def on_news(message: meshq.Message) -> None:
                got.append(message.data)
                if message.data == "boom":
                    raise ValueError("a bad handler keeps receiving")
                if len(got) == 3:
                    three.set()

            @b.on_direct
            async def on_direct(sender: str, data: object) -> object:
                return {"from": sender, "echo": data}

            await a.wait_for_peers(1, timeout=10)
            await a.wait_for_subscribers("news/x", 1, timeout=10)
            await a.publish("news/x", "one")  # awaitable, and the same call as without await
            assert a.publish("news/x", "boom") is SENT
            a.publish("news/x", "two")
            await asyncio.wait_for(three.wait(), 10)
            await a.wait_for_service(DIRECT_SERVICE, timeout=10)
            reply = await a.send_to(b.id, [1, 2])
            await b.run(timeout=0.05)  # returns when time is up
            closer = asyncio.get_running_loop().call_later(0.05, asyncio.ensure_future, b.close())
            await b.run()  # returns once the node is closed
            closer.cancel()
            return got, reply, a.id, b.stats()["message_handler_errors"]

    got, reply, a_id, errors = asyncio.run(scenario())
    assert got == ["one", "boom", "two"]
    assert reply == {"from": a_id, "echo": [1, 2]}
    assert errors == 1


def test_durable_subscribe_and_publish_have_nodes_shape(mesh: str, tmp_path: Path) -> None:
    relay = meshq.Relay(meshq.Node("relay", mesh=mesh, interfaces=LOOPBACK), tmp_path, ["orders/"])

    async def scenario() -> tuple[int, list[object]]:
        async with meshq.AsyncNode("client", mesh=mesh, interfaces=LOOPBACK) as client:
            await client.wait_for_service("meshq/relay/orders/", timeout=10)
            seq = await client.publish("orders/1", {"n": 1}, durable=True)
            async with client.subscribe("orders/", durable="billing") as sub:
                message = await sub.recv(timeout=10)
                return seq, [message.topic, message.data]

    try:
        seq, received = asyncio.run(scenario())
    finally:
        relay.close()
    assert seq == 1
    assert received == ["orders/1", {"n": 1}]


def test_a_handler_returning_an_awaitable_is_awaited_and_close_answers_those_in_progress(
    mesh: str,
) -> None:
    async def scenario() -> tuple[object, str]:
        async with meshq.AsyncNode("caller", mesh=mesh, interfaces=LOOPBACK) as caller:
            provider = meshq.AsyncNode("provider", mesh=mesh, interfaces=LOOPBACK)
            started = asyncio.Event()

            async def forever(data: object) -> object:
                started.set()
                await asyncio.Event().wait()  # until cancelled by close()
                return "never"

            async def later(data: object) -> object:
                return {"later": data}

            provider.serve("later", lambda data: later(data))  # not an async def itself
            provider.serve("forever", forever)
            await caller.wait_for_service("forever", timeout=10)
            await caller.wait_for_service("later", timeout=10)
            answer = await caller.request("later", 7)
            pending = asyncio.ensure_future(caller.request("forever", 1, timeout=30, retries=0))
            await asyncio.wait_for(started.wait(), 10)
            await provider.close()  # cancels the handler: its caller is answered, not left waiting
            try:
                await pending
            except meshq.RemoteError as exc:
                return answer, exc.remote_type
            return answer, "no error"

    answer, remote_type = asyncio.run(scenario())
    assert answer == {"later": 7}
    assert remote_type == "Closed"
