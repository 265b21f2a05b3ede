"""Drive a strategy in-process, without a SuperLink: build real reply Messages and run one aggregation.

Used by the unit tests and by the benchmark harness. Replies are built from explicit Metadata, as Flower's runtime
builds the messages it delivers: ``Message(content, reply_to=...)`` would need an instruction message, and that
needs the task identity of a running ServerApp.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import (
    DEFAULT_TTL,
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import Strategy

from mledge.contracts import SITE_KEY

# The SuperLink's node id: replies go to it.
SUPERLINK_NODE_ID = 1
_message_ids = itertools.count(1)


def _metadata(node_id: int, server_round: int, run_id: int) -> Metadata:
    return Metadata(
        run_id=run_id,
        message_id=f"reply-{next(_message_ids)}",
        src_node_id=node_id,
        dst_node_id=SUPERLINK_NODE_ID,
        reply_to_message_id=f"instruction-{server_round}-{node_id}",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=DEFAULT_TTL,
        message_type=MessageType.TRAIN,
    )


def to_arrayrecord(arrays: ArrayRecord | Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord from a mapping name -> ndarray (an ArrayRecord is returned as it is)."""
    if isinstance(arrays, ArrayRecord):
        return arrays
    return ArrayRecord({key: Array(np.asarray(value)) for key, value in arrays.items()})


def make_reply(
    site: str | None,
    node_id: int,
    arrays: ArrayRecord | Mapping[str, np.ndarray],
    num_examples: float | None,
    *,
    metrics: Mapping[str, float] | None = None,
    server_round: int = 1,
    run_id: int = 0,
) -> Message:
    """A train reply as a site's ClientApp sends it: arrays, metrics with ``num-examples``, the site's name.

    ``num_examples=None`` leaves the count out and ``site=None`` the site record (to build bad replies on purpose).
    """
    values = dict(metrics or {"train-loss": 0.0})
    if num_examples is not None:
        values["num-examples"] = num_examples
    content = RecordDict({"arrays": to_arrayrecord(arrays), "metrics": MetricRecord(values)})
    if site is not None:
        content[SITE_KEY] = ConfigRecord({SITE_KEY: site})
    return Message(metadata=_metadata(node_id, server_round, run_id), content=content)


def make_error_reply(node_id: int, reason: str, *, server_round: int = 1, run_id: int = 0) -> Message:
    """A reply carrying an error instead of content (a ClientApp that failed)."""
    return Message(metadata=_metadata(node_id, server_round, run_id), error=Error(code=0, reason=reason))


def run_round(
    strategy: Strategy, global_arrays: ArrayRecord, replies: Sequence[Message], server_round: int = 1
) -> tuple[ArrayRecord | None, MetricRecord | None]:
    """One aggregation as the ServerApp runs it: the strategy learns the global model the sites were sent, then
    aggregates their replies. Flower's FedMedian, FedTrimmedAvg and Bulyan empty the replies' arrays: build
    fresh replies for every call."""
    if hasattr(strategy, "set_global_model"):
        strategy.set_global_model(global_arrays)
    return strategy.aggregate_train(server_round, list(replies))
