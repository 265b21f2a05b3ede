"""Drive strategies and ClientApps in-process, without a SuperLink or SuperNodes.

Two levels, both used by the unit tests and the benchmarks:

- ``make_reply`` / ``run_round``: build real reply Messages and run one aggregation. Replies are built from explicit
  Metadata, as Flower's runtime builds the messages it delivers: ``Message(content, reply_to=...)`` would need an
  instruction message, and that needs the task identity of a running ServerApp.
- ``InProcessGrid``: a Flower ``Grid`` that hands each message to a real ClientApp object in this process, one
  Context per node, so a ServerApp's code (fl/serverapp.py) and the strategies run unchanged against real sites.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast

import numpy as np
from flwr.app import (
    DEFAULT_TTL,
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

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


# --- a Grid whose nodes are ClientApp objects in this process -------------------------------------------------

# Flower's ErrorCode.CLIENT_APP_RAISED_EXCEPTION: what a SuperNode replies when the ClientApp raises.
CLIENT_APP_RAISED_EXCEPTION = 2
log = logging.getLogger("flwr").getChild("mledge.simulation")


def clientapp_error_reason(exc: BaseException) -> str:
    """The reason a SuperNode puts in its error reply when the ClientApp raises (flwr's run_clientapp format)."""
    return str(type(exc)) + ":<'" + str(exc) + "'>"


def over_the_wire(message: Message) -> Message:
    """A copy of ``message`` as the other side receives it: deflated to bytes and inflated again (so neither side
    shares records with the other), keeping its message id."""
    objects = get_all_nested_objects(message)
    contents = {object_id: obj.deflate() for object_id, obj in objects.items()}
    copy = cast(Message, inflate_object_from_contents(message.object_id, contents))
    copy.metadata.__dict__["_message_id"] = message.metadata.message_id
    return copy


class InProcessGrid(Grid):
    """A ``Grid`` whose nodes run a real ClientApp in this process: simulation support for tests and benchmarks.

    ``nodes`` maps node id -> node config (``{"site": ..., "data-dir": ...}`` for fl/clientapp.py); each node keeps
    one Context for the whole run, as a SuperNode does. ``push_messages`` runs the ClientApp on a wire copy of each
    message at once (one node after another) and keeps the reply for ``pull_messages``; an exception raised by the
    ClientApp becomes an error reply (code 2, the SuperNode's reason format). A node in ``silent`` (a set that may
    be changed between calls) is connected but never answers: its reply is missing, as after a reply timeout; so is
    the reply to any message for which ``drop(message)`` is true (e.g. one node in one round only).
    ``send_and_receive`` does not wait for missing replies; its ``timeout`` is accepted and ignored.

    Creating instruction Messages (``Message(content, dst_node_id=..., message_type=...)``, which strategies and the
    ServerApp do) needs the task identity of a running ServerApp: the grid sets it, as Flower's
    flwr/server/compat/app.py does, and ``close()`` (or leaving a ``with`` block) puts the previous one back.

    ``apps`` gives some nodes another ClientApp than ``app`` (a site that lies, in a test).
    ``record=True`` keeps every message as the ClientApp received it (``received``, in order) and every reply it
    sent (``replies``), for tests to inspect; off by default, since benchmarks would keep every model.
    """

    def __init__(
        self,
        app: ClientApp | Callable[[Message, Context], Message],
        nodes: Mapping[int, Mapping[str, str | int | float | bool]],
        *,
        run_id: int = 1,
        run_config: Mapping[str, str | int | float | bool] | None = None,
        silent: Iterable[int] = (),
        drop: Callable[[Message], bool] | None = None,
        record: bool = False,
        apps: Mapping[int, ClientApp | Callable[[Message, Context], Message]] | None = None,
    ) -> None:
        if SUPERLINK_NODE_ID in nodes:
            raise ValueError(f"node id {SUPERLINK_NODE_ID} is the SuperLink's")
        self.app = app
        self.apps = dict(apps or {})  # nodes that run other code than ``app`` (a malicious site, say)
        self.contexts = {
            int(node): Context(
                run_id=run_id,
                node_id=int(node),
                node_config=dict(config),
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for node, config in nodes.items()
        }
        self.silent: set[int] = set(silent)
        self.offline: set[int] = set()  # nodes not connected at all: get_node_ids leaves them out
        self.drop = drop
        self.record = record
        self.received: list[Message] = []
        self.replies: list[Message] = []
        self._pending: dict[str, Message] = {}  # instruction message id -> reply
        self._run = Run.create_empty(run_id)
        self._previous_identity = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
        self._set_identity()

    def _set_identity(self) -> None:
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = self._run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    def close(self) -> None:
        """Put back the task identity that was set before this grid."""
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = self._previous_identity

    def __enter__(self) -> InProcessGrid:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- Grid ----------------------------------------------------------------------------------------------------

    def set_run(self, run: Run) -> None:
        if not isinstance(run, Run):
            raise TypeError(f"`run` must be an instance of Run, got {type(run).__name__}")
        self._run = run
        for context in self.contexts.values():
            context.run_id = run.run_id
        self._set_identity()

    @property
    def run(self) -> Run:
        return Run(**vars(self._run))

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        return [node for node in self.contexts if node not in self.offline]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            node = message.metadata.dst_node_id
            if node not in self.contexts:
                raise ValueError(f"no node {node} in this grid (nodes: {sorted(self.contexts)})")
            if message.metadata.reply_to_message_id or message.has_error():
                raise ValueError(f"not an instruction message: {message.metadata}")
            message_id = str(uuid.uuid4())
            message.metadata.__dict__["_message_id"] = message_id
            ids.append(message_id)
            if node not in self.silent and not (self.drop and self.drop(message)):
                self._pending[message_id] = self._deliver(message)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        return [self._pending.pop(i) for i in message_ids if i in self._pending]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, message: Message) -> Message:
        """Run the node's ClientApp on a wire copy of ``message``; the reply (or error reply), as the SuperLink
        hands it back."""
        received = over_the_wire(message)
        if self.record:
            self.received.append(received)
        try:
            node = message.metadata.dst_node_id
            reply = self.apps.get(node, self.app)(received, self.contexts[node])
        except Exception as exc:  # as a SuperNode does: the ServerApp gets an error reply, the run goes on
            log.warning("node %s: the ClientApp raised %r", message.metadata.dst_node_id, exc)
            reply = Message(
                Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=clientapp_error_reason(exc)), reply_to=received
            )
        reply.metadata.__dict__["_message_id"] = str(uuid.uuid4())
        if self.record:
            self.replies.append(reply)
        return over_the_wire(reply)
