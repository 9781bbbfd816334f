"""Pipelines of workers (meshq.patterns): spread, errors, backpressure, a worker killed midway."""

from __future__ import annotations

import collections
import signal
import threading

import pytest

import meshq
from meshq.patterns import Pipeline, Worker
from tests.harness import Agent, agent_argv
from tests.test_services import wait_for_service

LOOPBACK = ["127.0.0.1"]


def wait_for_workers(node: meshq.Node, stage: str, n: int) -> None:
    wait_for_service(node, f"pipeline/{stage}", n)


def square_counted_by(name: str, handled: collections.Counter[str]) -> meshq.services.Handler:
    def square(task: object) -> object:
        handled[name] += 1
        assert isinstance(task, int)
        return task * task

    return square


def test_tasks_spread_over_workers_and_every_result_comes_back(mesh: str) -> None:
    nodes = [meshq.Node(f"w{i}", mesh=mesh, interfaces=LOOPBACK) for i in range(3)]
    try:
        handled = collections.Counter[str]()
        for node in nodes:
            Worker(node, "square", square_counted_by(node.name, handled))
        with meshq.Node("producer", mesh=mesh, interfaces=LOOPBACK) as producer:
            wait_for_workers(producer, "square", 3)
            pipeline = Pipeline(producer, "square", batch=10, credit=2)
            pipeline.push_many(range(300))
            pipeline.drain(timeout=30)
            results = list(pipeline.results())
        assert sorted(r.value for r in results) == sorted(i * i for i in range(300))  # type: ignore[type-var]
        assert (pipeline.completed, pipeline.failed, pipeline.lost) == (300, 0, 0)
        assert set(handled) == {"w0", "w1", "w2"}
    finally:
        for node in nodes:
            node.close()


def test_a_failing_task_fails_alone(mesh: str) -> None:
    with (
        meshq.Node("worker", mesh=mesh, interfaces=LOOPBACK) as worker_node,
        meshq.Node("producer", mesh=mesh, interfaces=LOOPBACK) as producer,
    ):
        worker = Worker(worker_node, "div", lambda task: 12 / task)  # type: ignore[operator]
        wait_for_workers(producer, "div", 1)
        pipeline = Pipeline(producer, "div", batch=4)
        pipeline.push_many([1, 2, 0, 3])
        pipeline.drain(timeout=10)
        results = {r.task: r for r in pipeline.results()}
        assert results[0].ok is False and "ZeroDivisionError" in results[0].error
        assert [results[t].value for t in (1, 2, 3)] == [12.0, 6.0, 4.0]
        assert (pipeline.completed, pipeline.failed, worker.errors) == (3, 1, 1)


def test_odd_task_failures_stay_with_their_task(mesh: str) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    def odd(task: object) -> object:
        if task == "object":
            return object()  # msgpack cannot send it
        if task == "unprintable":
            raise Unprintable()
        if task == "interrupt":
            raise KeyboardInterrupt
        return task

    with (
        meshq.Node("worker", mesh=mesh, interfaces=LOOPBACK) as worker_node,
        meshq.Node("producer", mesh=mesh, interfaces=LOOPBACK) as producer,
    ):
        Worker(worker_node, "odd", odd)
        wait_for_workers(producer, "odd", 1)
        pipeline = Pipeline(producer, "odd", batch=4)
        pipeline.push_many(["ok", "object", "unprintable", "interrupt"])
        pipeline.drain(timeout=10)
        results = {r.task: r for r in pipeline.results()}
        assert results["ok"].ok and results["ok"].value == "ok"
        assert not results["object"].ok and "TypeError" in results["object"].error
        assert results["unprintable"].error == "Unprintable: <unprintable>"
        assert results["interrupt"].error.startswith("KeyboardInterrupt")
        assert (pipeline.completed, pipeline.failed) == (1, 3)


def test_push_blocks_when_every_worker_is_full_then_times_out(mesh: str) -> None:
    release = threading.Event()
    with (
        meshq.Node("worker", mesh=mesh, interfaces=LOOPBACK) as worker_node,
        meshq.Node("producer", mesh=mesh, interfaces=LOOPBACK) as producer,
    ):
        Worker(worker_node, "slow", lambda task: release.wait(10) and task)
        wait_for_workers(producer, "slow", 1)
        pipeline = Pipeline(producer, "slow", batch=1, credit=1, timeout=20)
        pipeline.push("first")  # takes the only credit
        with pytest.raises(meshq.Timeout):
            pipeline.push("second", timeout=0.2)
        release.set()
        pipeline.push("second", timeout=10)  # room again once the first is done
        pipeline.drain(timeout=10)
        assert pipeline.completed == 2


@pytest.mark.parametrize("redeliver", [False, True])
def test_a_worker_killed_midway_loses_only_what_it_held(
    mesh: str, agents: list[Agent], redeliver: bool
) -> None:
    workers = []
    for name in ("k1", "k2", "k3"):
        agent = Agent(agent_argv(name, mesh, "127.0.0.1"), name)
        agents.append(agent)
        agent.send(cmd="worker", stage="job", delay=0.03)  # 0.15 s a batch: held when killed
        agent.expect(lambda e: e["ev"] == "working", timeout=10)
        workers.append(agent)
    with meshq.Node("producer", mesh=mesh, interfaces=LOOPBACK) as producer:
        wait_for_workers(producer, "job", 3)
        pipeline = Pipeline(producer, "job", batch=5, credit=2, timeout=2.0, redeliver=redeliver)
        pipeline.push_many(range(60))  # about a fifth of the work
        workers[0].signal(signal.SIGKILL)  # dies holding batches
        pipeline.push_many(range(60, 300), timeout=30)
        pipeline.drain(timeout=30)
        done = [r.task for r in pipeline.results() if r.ok]
    assert pipeline.pushed == 300
    assert pipeline.completed + pipeline.failed + pipeline.lost == 300  # nothing unaccounted
    assert sorted([*done, *pipeline.lost_tasks]) == list(range(300))  # each task exactly once
    if redeliver:
        assert pipeline.lost == 0  # what the dead worker held went to another
    else:
        assert pipeline.lost > 0  # what the dead worker held, and nothing else
    assert workers[1].process.poll() is None and workers[2].process.poll() is None
