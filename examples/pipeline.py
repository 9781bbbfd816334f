"""A pipeline of three workers: tasks spread over them, results come back.

    python examples/pipeline.py

Three worker nodes offer the stage "resize" (here: a stand-in that reports
the size it would produce); a producer pushes 100 tasks in batches, waits
until every one is answered, and prints which worker did how many. Nothing
is lost silently: completed + failed + lost always adds up to what was
pushed.
"""

from __future__ import annotations

import collections
import time

import meshq
from meshq.patterns import Pipeline, Worker

LOOPBACK = ["127.0.0.1"]


def resize_on(worker: str) -> meshq.services.Handler:
    def resize(task: object) -> object:
        if not isinstance(task, dict):  # a peer's data: check it, never assert
            raise TypeError("expected {'image': name, 'width': pixels}")
        return {"image": task["image"], "width": task["width"] // 2, "by": worker}

    return resize


def main() -> int:
    mesh = f"example-{time.time_ns()}"  # a fresh mesh: never mixes with other runs
    workers = [meshq.Node(f"worker-{i}", mesh=mesh, interfaces=LOOPBACK) for i in range(3)]
    try:
        for node in workers:
            Worker(node, "resize", resize_on(node.name))
        with meshq.Node("producer", mesh=mesh, interfaces=LOOPBACK) as producer:
            try:  # discovery takes a moment
                producer.wait_for_service("pipeline/resize", 3, timeout=10)
            except meshq.Timeout:
                print("workers did not appear")
                return 1
            pipeline = Pipeline(producer, "resize", batch=10, credit=2)
            pipeline.push_many({"image": f"img-{i}.png", "width": 800} for i in range(100))
            pipeline.drain(timeout=30)
            by_worker = collections.Counter(
                str(r.value["by"]) for r in pipeline.results() if isinstance(r.value, dict)
            )
        print(f"completed {pipeline.completed}, failed {pipeline.failed}, lost {pipeline.lost}")
        print(f"tasks per worker: {dict(sorted(by_worker.items()))}")
        return 0 if pipeline.completed == 100 else 1
    finally:
        for node in workers:
            node.close()


if __name__ == "__main__":
    raise SystemExit(main())
