"""What the ServerApp needs from an aggregation strategy, declared once.

Flower's ``Strategy`` gives ``configure_train`` and ``aggregate_train``; every MLEDGE strategy also reports, after
each ``aggregate_train``, which sites' updates it rejected and why (``last_rejected``) and the weight each
accepted site got (``last_weights``): the ServerApp records the first as the run's failures and logs the second.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid


@runtime_checkable
class AggregationStrategy(Protocol):
    last_rejected: Mapping[str, str]
    last_weights: Mapping[str, float]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]: ...

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]: ...
