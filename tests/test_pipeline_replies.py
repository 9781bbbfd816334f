"""The two forms of a pipeline reply (docs/PROTOCOL.md 9.9), bad replies, and taking results.

A worker answers a batch whose tasks all succeeded with the compact reply
``{"values": [...]}``, and any other batch with the full reply (one
``[ok, value_or_error]`` per task). A producer accepts both, so a worker of
an earlier revision, which always sends the full reply, still works. The
earlier worker is played by a plain service handler returning its bytes'
worth: the same msgpack payload, flags and frame.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

import meshq
from meshq.patterns import Pipeline, Worker
from meshq.patterns.worker import TaskHandler
from tests.test_pipeline import wait_for_workers

LOOPBACK = ["127.0.0.1"]
#: (worker node, producer node)
Nodes = tuple[meshq.Node, meshq.Node]


@pytest.fixture
def nodes(mesh: str) -> Iterator[Nodes]:
    """A node for the worker and one for the producer, on loopback."""
    with (
        meshq.Node("worker", mesh=mesh, interfaces=LOOPBACK) as worker_node,
        meshq.Node("producer", mesh=mesh, interfaces=LOOPBACK) as producer,
    ):
        yield worker_node, producer


def start_worker(nodes: Nodes, stage: str, handler: TaskHandler) -> Worker:
    """A Worker of ``stage`` on the worker node; returns once the producer knows it."""
    worker_node, producer = nodes
    worker = Worker(worker_node, stage, handler)
    wait_for_workers(producer, stage, 1)
    return worker


def serve_in_place_of_a_worker(nodes: Nodes, stage: str, handler: meshq.services.Handler) -> None:
    """``handler`` as a plain service where a worker of ``stage`` would be: its return
    value is the whole reply. Returns once the producer knows it."""
    worker_node, producer = nodes
    worker_node.serve(f"pipeline/{stage}", handler)
    wait_for_workers(producer, stage, 1)


def square(task: object) -> object:
    assert isinstance(task, int)
    if task < 0:
        raise ValueError(f"negative: {task}")
    return task * task


def test_a_worker_answers_an_all_ok_batch_with_the_values_alone(nodes: Nodes) -> None:
    _, producer = nodes
    start_worker(nodes, "square", square)
    # The batches as a producer sends them, read as plain requests: the wire form.
    assert producer.request("pipeline/square", [1, 2, 3], timeout=10) == {"values": [1, 4, 9]}
    assert producer.request("pipeline/square", [], timeout=10) == {"values": []}
    assert producer.request("pipeline/square", [2, -1], timeout=10) == [
        [True, 4],
        [False, "ValueError: negative: -1"],
    ]


def test_a_value_that_cannot_travel_fails_alone_also_when_no_task_raised(nodes: Nodes) -> None:
    unsendable = object()

    def odd(task: object) -> object:
        return unsendable if task == "object" else task

    _, producer = nodes
    worker = start_worker(nodes, "odd", odd)
    reply = producer.request("pipeline/odd", ["a", "object", "b"], timeout=10)
    assert isinstance(reply, list) and len(reply) == 3
    assert reply[0] == [True, "a"] and reply[2] == [True, "b"]
    assert reply[1][0] is False and reply[1][1].startswith("TypeError")
    assert (worker.done, worker.errors) == (3, 1)

    pipeline = Pipeline(producer, "odd", batch=3)
    pipeline.push_many(["a", "object", "b"])
    pipeline.drain(timeout=10)
    results = {r.task: r for r in pipeline.results()}
    assert (results["a"].value, results["b"].value) == ("a", "b")
    assert not results["object"].ok and results["object"].error.startswith("TypeError")
    assert (pipeline.completed, pipeline.failed) == (2, 1)


def full_reply(batch: object) -> object:
    """What a worker of revision 1.3 or earlier answers: one ``[ok, value]`` per task."""
    assert isinstance(batch, list)
    outcomes: list[list[object]] = []
    for task in batch:
        try:
            outcomes.append([True, square(task)])
        except ValueError as exc:
            outcomes.append([False, f"ValueError: {exc}"])
    return outcomes


def test_a_producer_still_takes_the_full_reply_of_an_earlier_worker(nodes: Nodes) -> None:
    _, producer = nodes
    serve_in_place_of_a_worker(nodes, "old", full_reply)
    pipeline = Pipeline(producer, "old", batch=4)
    pipeline.push_many([1, 2, 3, 4, 5, -6, 7])  # a batch all ok, one with a failure
    pipeline.drain(timeout=10)
    results = list(pipeline.results())
    assert [r.task for r in results] == [1, 2, 3, 4, 5, -6, 7]
    assert [r.value for r in results if r.ok] == [1, 4, 9, 16, 25, 49]
    assert [r.error for r in results if not r.ok] == ["ValueError: negative: -6"]
    assert (pipeline.completed, pipeline.failed, pipeline.lost) == (6, 1, 0)


@pytest.mark.parametrize(
    "reply",
    [
        {"values": [1, 4]},  # one value short
        {"values": [1, 4, 9, 16]},  # one too many
        {"values": 1},
        {"values": None},
        {"values": [1, 4, 9], "errors": {}},  # another key: not the compact reply
        {"value": [1, 4, 9]},
        {},
        [[True, 1], [True, 4]],  # the full reply, short
        [[True, 1], [True, 4], [True]],
        [[True, 1], [True, 4], 9],
        "values",
        None,
    ],
    ids=repr,
)
def test_a_malformed_reply_fails_its_batch_and_nothing_else(nodes: Nodes, reply: object) -> None:
    served = []

    def bad(batch: object) -> object:
        assert isinstance(batch, list)
        served.append(batch)
        return reply if len(served) == 1 else [[True, square(task)] for task in batch]

    _, producer = nodes
    serve_in_place_of_a_worker(nodes, "bad", bad)
    pipeline = Pipeline(producer, "bad", batch=3, credit=1)
    pipeline.push_many([1, 2, 3, 4, 5, 6])  # the first batch gets the bad reply
    pipeline.drain(timeout=10)
    results = list(pipeline.results())
    assert [(r.task, r.ok, r.error) for r in results[:3]] == [
        (task, False, "malformed reply") for task in (1, 2, 3)
    ]
    assert [(r.task, r.value) for r in results[3:]] == [(4, 16), (5, 25), (6, 36)]
    assert (pipeline.completed, pipeline.failed, pipeline.lost) == (3, 3, 0)


def test_results_are_handed_out_once_in_order_also_when_taken_in_parts(nodes: Nodes) -> None:
    _, producer = nodes
    start_worker(nodes, "square", square)
    pipeline = Pipeline(producer, "square", batch=4)
    pipeline.push_many([0, 1, 2, 3, 4, -5, 6, 7, 8, 9])
    pipeline.drain(timeout=10)
    first = [r.task for r in itertools.islice(pipeline.results(), 6)]  # stops mid-batch
    pipeline.push_many([10, 11])
    pipeline.drain(timeout=10)
    rest = list(pipeline.results())
    assert first == [0, 1, 2, 3, 4, -5]
    assert [r.task for r in rest] == [6, 7, 8, 9, 10, 11]
    assert [r.value for r in rest] == [36, 49, 64, 81, 100, 121]
    assert list(pipeline.results()) == []
    assert (pipeline.completed, pipeline.failed) == (11, 1)


def test_without_keep_results_only_the_counters_are_kept(nodes: Nodes) -> None:
    _, producer = nodes
    start_worker(nodes, "square", square)
    pipeline = Pipeline(producer, "square", batch=4, keep_results=False)
    pipeline.push_many([1, 2, 3, 4, -5, 6])
    pipeline.drain(timeout=10)
    assert list(pipeline.results()) == []
    assert (pipeline.completed, pipeline.failed) == (5, 1)
