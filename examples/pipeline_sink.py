"""A pipeline whose results go to a sink on another node, not back to the producer.

    python examples/pipeline_sink.py

Two worker nodes offer the stage "square" with the ``@node.worker``
decorator; a collector node holds a ``Sink`` named "squares"; a producer
pushes 100 numbers with ``sink="squares"``. The producer still counts every
task (the workers answer it once the sink took the results); the collector
receives the values.
"""

from __future__ import annotations

import time

import meshq
from meshq.patterns import Pipeline, Sink

LOOPBACK = ["127.0.0.1"]


def wait_for(node: meshq.Node, service: str, n: int) -> bool:
    try:
        node.wait_for_service(service, n, timeout=10)  # discovery takes a moment
    except meshq.Timeout:
        return False
    return True


def main() -> int:
    mesh = f"example-{time.time_ns()}"  # a fresh mesh: never mixes with other runs
    nodes = [meshq.Node(name, mesh=mesh, interfaces=LOOPBACK) for name in ("w1", "w2", "sink")]
    try:
        for node in nodes[:2]:

            @node.worker("square")
            def square(task: object) -> object:
                if not isinstance(task, int):  # a peer's data: check it, never assert
                    raise TypeError(f"expected an int, got {type(task).__name__}")
                return task * task

        sink = Sink(nodes[2], "squares")
        with meshq.Node("producer", mesh=mesh, interfaces=LOOPBACK) as producer:
            if not (
                wait_for(producer, "pipeline/square", 2)
                and wait_for(nodes[0], "pipeline-sink/squares", 1)
            ):
                print("workers or sink did not appear")
                return 1
            pipeline = Pipeline(producer, "square", batch=10, sink="squares")
            pipeline.push_many(range(100))
            pipeline.drain(timeout=30)
        total = sum(r.value for r in sink.results() if isinstance(r.value, int))
        done, failed, lost = pipeline.completed, pipeline.failed, pipeline.lost
        print(f"producer: completed {done}, failed {failed}, lost {lost}")
        print(f"sink received {sink.received} results, sum of squares {total}")
        return 0 if sink.received == 100 else 1
    finally:
        for node in nodes:
            node.close()


if __name__ == "__main__":
    raise SystemExit(main())
