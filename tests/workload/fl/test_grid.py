"""The ServerApp's PromptGrid (fl/grid.py): replies collected with a short pause between pulls, not Flower's 3 s.

The wrapped grid is the in-process one running the real ClientApp on query messages (it names its site); a subclass
makes each node's reply visible only after some pulls, as replies trickle into a SuperLink. Time is a counter moved
by the grid's own pauses, so nothing here sleeps.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ConfigRecord, Message, RecordDict

import fl.clientapp as clientapp
from fl.grid import REPLY_POLL_S, PromptGrid
from fl.simulation.harness import InProcessGrid
from mledge.contracts import CONFIG_KEY, MSG_QUERY

NODES = {11: {"site": "plant_a"}, 12: {"site": "plant_b"}, 13: {"site": "plant_c"}}


class TrickleGrid(InProcessGrid):
    """Node n's reply shows up at the ``ready[n]``-th pull (never, for a node that is not in ``ready``)."""

    def __init__(self, ready: dict[int, int]) -> None:
        super().__init__(clientapp.app, NODES, silent=set(NODES) - set(ready))
        self.ready, self.pulls = ready, 0
        self.node_of: dict[str, int] = {}

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        messages = list(messages)
        ids = super().push_messages(messages)
        self.node_of.update({i: m.metadata.dst_node_id for i, m in zip(ids, messages, strict=True)})
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        self.pulls += 1
        due = [i for i in message_ids if self.ready.get(self.node_of[i], 0) <= self.pulls]
        return super().pull_messages(due)


class Clock:
    def __init__(self) -> None:
        self.now, self.pauses = 0.0, []

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def queries(grid: PromptGrid) -> list[Message]:
    return [Message(RecordDict({CONFIG_KEY: ConfigRecord({})}), message_type=MSG_QUERY, dst_node_id=n) for n in NODES]


def sites(replies: list[Message]) -> list[str]:
    return sorted(str(r.content["site"]["site"]) for r in replies)


def test_replies_are_pulled_until_all_are_in_with_short_pauses():
    clock = Clock()
    inner = TrickleGrid({11: 1, 12: 4, 13: 7})
    with inner:
        grid = PromptGrid(inner, clock=lambda: clock.now, sleep=clock.sleep)
        replies = grid.send_and_receive(queries(grid), timeout=60)
    assert sites(replies) == ["plant_a", "plant_b", "plant_c"]
    assert inner.pulls == 7  # it stops at the pull that brought the last reply
    assert clock.pauses == [REPLY_POLL_S] * 6  # and never waits after it
    assert clock.now < 1.0  # Flower's own grid would have slept 18 s between those 7 pulls


def test_a_missing_reply_is_waited_for_until_the_timeout_and_the_others_are_returned():
    clock = Clock()
    inner = TrickleGrid({11: 2, 13: 3})  # plant_b never answers
    with inner:
        grid = PromptGrid(inner, poll_s=0.5, clock=lambda: clock.now, sleep=clock.sleep)
        replies = grid.send_and_receive(queries(grid), timeout=5)
    assert sites(replies) == ["plant_a", "plant_c"]
    assert clock.now == 5.0 and clock.pauses == [0.5] * 10 and inner.pulls == 11


def test_everything_else_is_the_wrapped_grids():
    inner = InProcessGrid(clientapp.app, NODES, run_id=42)
    with inner:
        grid = PromptGrid(inner)
        assert list(grid.get_node_ids()) == list(NODES)
        assert [n.node_id for n in grid.get_nodes()] == list(NODES)
        assert grid.run.run_id == 42
        inner.offline.add(12)
        assert list(grid.get_node_ids()) == [11, 13]
