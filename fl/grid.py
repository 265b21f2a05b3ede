"""The ServerApp's Grid, collecting replies promptly.

Flower's network grids (``flwr.superlink.grid``: the Grid a deployed ServerApp gets) push a round's messages and
then pull the replies with ``time.sleep(3)`` between pulls, so a round whose last reply arrives just after a pull
waits up to 3 s more for nothing: with sites that answer in about a second, most of a round. ``PromptGrid`` wraps
the Grid Flower hands to ``@app.main()`` and does the same push-then-pull with a short pause between pulls; every
other call goes to the wrapped Grid unchanged. A pull is one small request to the SuperLink, so polling every
``REPLY_POLL_S`` costs it little.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

# Pause between two pulls of the replies still missing (Flower's network grids: 3 s).
REPLY_POLL_S = 0.1


class PromptGrid(Grid):
    """``grid``, with ``send_and_receive`` pulling every ``poll_s`` seconds until every reply is in or ``timeout``
    has passed (then it returns the replies it has, as Flower's does)."""

    def __init__(
        self,
        grid: Grid,
        *,
        poll_s: float = REPLY_POLL_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.grid, self.poll_s, self._clock, self._sleep = grid, poll_s, clock, sleep

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        waiting = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else self._clock() + timeout
        replies: list[Message] = []
        while waiting:
            pulled = list(self.grid.pull_messages(waiting))
            replies.extend(pulled)
            waiting.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if not waiting or (deadline is not None and self._clock() >= deadline):
                break
            self._sleep(self.poll_s)
        return replies
