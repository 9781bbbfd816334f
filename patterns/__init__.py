"""Reusable patterns built on the public :class:`meshq.Node` API only.

Shipped as ``meshq.patterns``.
"""

from __future__ import annotations

from .pipeline import AsyncPipeline, Pipeline, Result, Worker
from .publisher import AsyncPublisher, Publisher
from .sink import AsyncSink, Sink

__all__ = [
    "AsyncPipeline",
    "AsyncPublisher",
    "AsyncSink",
    "Pipeline",
    "Publisher",
    "Result",
    "Sink",
    "Worker",
]
