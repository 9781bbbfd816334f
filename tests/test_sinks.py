"""Pipeline sinks by name, the @node.worker decorator, and the asyncio pipeline."""

from __future__ import annotations

import asyncio
import collections

import pytest

import meshq
from meshq.patterns import AsyncPipeline, AsyncSink, Pipeline, Sink, Worker
from tests.harness import Agent, agent_argv
from tests.test_pipeline import wait_for_workers
from tests.test_services import wait_for_service

LOOPBACK = ["127.0.0.1"]


def wait_for_sinks(node: meshq.Node, name: str, n: int) -> None:
    wait_for_service(node, f"pipeline-sink/{name}", n)


def square(task: object) -> object:
    assert isinstance(task, int)
    if task == 13:
        raise ValueError("unlucky")
    return task * task


def test_results_go_to_the_sinks_of_that_name_and_the_producer_still_counts(mesh: str) -> None:
    with (
        meshq.Node("worker", mesh=mesh, interfaces=LOOPBACK) as worker_node,
        meshq.Node("collector", mesh=mesh, interfaces=LOOPBACK) as collector,
        meshq.Node("producer", mesh=mesh, interfaces=LOOPBACK) as producer,
    ):
        worker = Worker(worker_node, "square", square)
        remote = Sink(collector, "squares")
        local = Sink(worker_node, "squares")  # the worker's own: taken directly
        wait_for_workers(producer, "square", 1)
        wait_for_sinks(worker_node, "squares", 2)
        pipeline = Pipeline(producer, "square", batch=8, sink="squares")
        pipeline.push_many(range(100))
        pipeline.drain(timeout=30)
        at_producer = list(pipeline.results())
        sunk = [*remote.results(), *local.results()]
    assert (pipeline.completed, pipeline.failed, pipeline.lost) == (99, 1, 0)
    assert {r.task: r.value for r in sunk if r.ok} == {i: i * i for i in range(100) if i != 13}
    assert [(r.task, r.error) for r in sunk if not r.ok] == [(13, "ValueError: unlucky")]
    assert len(sunk) == 100  # each result in exactly one sink
    assert local.received == 100 and remote.received == 0  # a worker prefers its own node's
    assert all(r.value is None for r in at_producer)  # values went to the sink
    assert worker.undelivered == 0


def test_workers_feeding_each_others_sinks_do_not_deadlock(mesh: str) -> None:
    # Node a works stage s1 and holds sink "to-a"; node b the reverse. s1's
    # results go to b's sink while s2's go to a's: each worker waits on the
    # other node's service thread, which must keep serving meanwhile.
    with (
        meshq.Node("a", mesh=mesh, interfaces=LOOPBACK) as a,
        meshq.Node("b", mesh=mesh, interfaces=LOOPBACK) as b,
        meshq.Node("producer", mesh=mesh, interfaces=LOOPBACK) as producer,
    ):
        Worker(a, "s1", square)
        Worker(b, "s2", square)
        to_a, to_b = Sink(a, "to-a"), Sink(b, "to-b")
        wait_for_workers(producer, "s1", 1)
        wait_for_workers(producer, "s2", 1)
        wait_for_sinks(a, "to-b", 1)
        wait_for_sinks(b, "to-a", 1)
        first = Pipeline(producer, "s1", batch=2, sink="to-b", timeout=10)
        second = Pipeline(producer, "s2", batch=2, sink="to-a", timeout=10)
        tasks = [n for n in range(16) if n != 13]
        first.push_many(tasks)
        second.push_many(tasks)
        first.drain(timeout=30)
        second.drain(timeout=30)
    for pipeline in (first, second):
        assert (pipeline.completed, pipeline.failed, pipeline.undelivered) == (15, 0, 0)
    for sink in (to_a, to_b):
        assert sorted(r.task for r in sink.results()) == tasks  # each once
        assert sink.received == 15


def test_results_no_sink_takes_are_counted_as_failed_and_undelivered(mesh: str) -> None:
    with (
        meshq.Node("worker", mesh=mesh, interfaces=LOOPBACK) as worker_node,
        meshq.Node("producer", mesh=mesh, interfaces=LOOPBACK) as producer,
    ):
        worker = Worker(worker_node, "square", square)
        full = Sink(producer, "tiny", max_pending=10)
        wait_for_workers(producer, "square", 1)
        wait_for_sinks(worker_node, "tiny", 1)
        nowhere = Pipeline(producer, "square", batch=5, sink="nobody")
        nowhere.push_many(range(10))
        nowhere.drain(timeout=30)
        overflowing = Pipeline(producer, "square", batch=5, sink="tiny")
        overflowing.push_many(range(20))
        overflowing.drain(timeout=30)
        errors = {r.error.split(":")[0] for r in nowhere.results()}
    assert (nowhere.completed, nowhere.failed, nowhere.undelivered) == (0, 10, 10)
    assert errors == {"results not delivered to sink 'nobody'"}
    assert overflowing.completed + overflowing.failed == 20
    assert overflowing.undelivered == 10 and full.received == 10 and full.refused == 2
    assert worker.undelivered == 20


def test_the_worker_decorator_offers_a_stage(mesh: str) -> None:
    with (
        meshq.Node("worker", mesh=mesh, interfaces=LOOPBACK) as worker_node,
        meshq.Node("producer", mesh=mesh, interfaces=LOOPBACK) as producer,
    ):

        @worker_node.worker("upper")
        def upper(task: object) -> object:
            assert isinstance(task, str)
            return task.upper()

        assert upper("x") == "X"  # the decorator returns the handler itself
        wait_for_workers(producer, "upper", 1)
        pipeline = Pipeline(producer, "upper", batch=2)
        pipeline.push_many(["a", "b", "c"])
        pipeline.drain(timeout=30)
        assert [r.value for r in pipeline.results()] == ["A", "B", "C"]
        with pytest.raises(ValueError):
            worker_node.worker("")(upper)


def test_async_pipeline_with_an_async_sink(mesh: str) -> None:
    handled = collections.Counter[str]()

    async def main() -> None:
        async with (
            meshq.AsyncNode("w", mesh=mesh, interfaces=LOOPBACK) as worker_node,
            meshq.AsyncNode("p", mesh=mesh, interfaces=LOOPBACK) as producer,
        ):

            @worker_node.worker("square")
            def counted(task: object) -> object:
                handled["w"] += 1
                return square(task)

            sink = AsyncSink(producer, "squares")
            await wait_for_async_service(producer, "pipeline/square")
            await wait_for_async_service(worker_node, "pipeline-sink/squares")
            pipeline = AsyncPipeline(producer, "square", batch=4, credit=1, sink="squares")
            await pipeline.push_many(range(40), timeout=30)
            await pipeline.drain(timeout=30)
            got = [await sink.get(timeout=10) for _ in range(40)]
            assert sorted(r.task for r in got) == list(range(40))  # type: ignore[type-var]
            assert (pipeline.completed, pipeline.failed, pipeline.lost) == (39, 1, 0)
            with pytest.raises(meshq.Timeout):
                await sink.get(timeout=0.05)

            back = AsyncPipeline(producer, "square", batch=3)
            await back.push_many([2, 3])
            await back.drain(timeout=30)
            assert [r.value for r in back.results()] == [4, 9]

    asyncio.run(main())
    assert handled["w"] == 42


async def wait_for_async_service(node: meshq.AsyncNode, service: str) -> None:
    await node.wait_for_service(service, timeout=10)


def test_pipeline_with_sinks_across_processes(mesh: str, agents: list[Agent]) -> None:
    workers = []
    for name in ("w1", "w2"):
        agent = Agent(agent_argv(name, mesh, "127.0.0.1"), name)
        agents.append(agent)
        workers.append(agent)
        agent.send(cmd="worker", stage="job")
        agent.expect(lambda e: e["ev"] == "working", timeout=10)
    collectors = []
    for name in ("s1", "s2"):
        collector = Agent(agent_argv(name, mesh, "127.0.0.1"), name)
        agents.append(collector)
        collector.send(cmd="sink", name="done")
        collector.expect(lambda e: e["ev"] == "sinking", timeout=10)
        collectors.append(collector)
    # Each worker picks among the sinks its own node knows: let both know both.
    for worker in workers:
        worker.send(cmd="wait_service", name="pipeline-sink/done", n=2)
        worker.expect(lambda e: e["ev"] == "service_seen", timeout=30)
    with meshq.Node("producer", mesh=mesh, interfaces=LOOPBACK) as producer:
        wait_for_workers(producer, "job", 2)
        wait_for_sinks(producer, "done", 2)
        pipeline = Pipeline(producer, "job", batch=10, sink="done")
        pipeline.push_many(range(200), timeout=30)
        pipeline.drain(timeout=30)
    assert (pipeline.completed, pipeline.failed, pipeline.lost) == (200, 0, 0)
    sunk = []
    for collector in collectors:
        collector.send(cmd="sink_report")
        sunk.append(collector.expect(lambda e: e["ev"] == "sunk", timeout=10)["tasks"])
    assert sorted(sunk[0] + sunk[1]) == list(range(200))  # each result in one sink
    # 20 deliveries, each to the less busy sink, ties at random: both get some
    # (all to one would take 20 coin flips alike: about 2 in a million).
    assert sunk[0] and sunk[1]


@pytest.mark.parametrize(
    "reply",
    [
        "nope",
        [[True, 1]],  # one outcome for two tasks
        [[True, 1], "x"],
        [[True, 1], [True, 2, 3]],
        {"outcomes": [[True, 1], [True, 2]], "undelivered": ""},  # a sink reply, unasked
    ],
)
def test_a_malformed_worker_reply_fails_its_batch_and_nothing_else(
    mesh: str, reply: object
) -> None:
    with (
        meshq.Node("liar", mesh=mesh, interfaces=LOOPBACK) as liar,
        meshq.Node("producer", mesh=mesh, interfaces=LOOPBACK) as producer,
    ):
        liar.serve("pipeline/odd", lambda batch: reply)  # not a real worker
        wait_for_workers(producer, "odd", 1)
        pipeline = Pipeline(producer, "odd", batch=2)
        pipeline.push_many(["a", "b", "c", "d"])
        pipeline.drain(timeout=30)
        results = list(pipeline.results())
    assert (pipeline.completed, pipeline.failed, pipeline.lost) == (0, 4, 0)
    assert {r.error for r in results} == {"malformed reply"}


def test_outcomes_count_as_the_results_say(mesh: str) -> None:
    with (
        meshq.Node("odd", mesh=mesh, interfaces=LOOPBACK) as odd,
        meshq.Node("producer", mesh=mesh, interfaces=LOOPBACK) as producer,
    ):
        odd.serve("pipeline/odd", lambda batch: [[1, "yes"], [0, "no"]])  # truthy, not bool
        wait_for_workers(producer, "odd", 1)
        pipeline = Pipeline(producer, "odd", batch=2)
        pipeline.push_many(["a", "b"])
        pipeline.drain(timeout=30)
        results = list(pipeline.results())
    assert (pipeline.completed, pipeline.failed) == (1, 1)
    assert results == [("a", True, "yes", ""), ("b", False, None, "no")]
