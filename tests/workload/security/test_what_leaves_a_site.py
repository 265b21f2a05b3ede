"""What leaves a site is exactly what fl/protocol.py declares and README's table shows.

The real ClientApp answers each kind of message over the wire (fl/simulation/harness.py), on generated stores; every
record and key of every reply must be declared, and every declared key must really be sent (no stale entry).
The site task that returns data to the platform (collect) is held to the same declaration.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from fl import clientapp
from fl.model import build_model
from fl.protocol import WHAT_LEAVES_A_SITE, declared, disclosure_table
from fl.simulation.harness import InProcessGrid
from mledge.contracts import (
    ARRAYS_KEY,
    CHAMPION_KEY,
    CONFIG_KEY,
    MSG_FINALISE,
    MSG_QUERY,
    MSG_TRAIN,
    SITE_CHAMPION_KEY,
)
from mledge.onsite.store import accept_incoming, batch_paths

README = Path(__file__).resolve().parents[3] / "README.md"
NODES = {11: "plant_a", 12: "plant_b"}


def channel(message_type: str) -> str:
    return f"Flower reply to `{message_type}`"


def weights() -> ArrayRecord:
    return ArrayRecord(build_model(seed=3).state_dict())


def instructions(node: int) -> list[Message]:
    return [
        Message(RecordDict({CONFIG_KEY: ConfigRecord({})}), message_type=MSG_QUERY, dst_node_id=node),
        Message(
            RecordDict({
                ARRAYS_KEY: weights(),
                CONFIG_KEY: ConfigRecord({"local-epochs": 1, "learning-rate": 0.01, "server-round": 1}),
            }),
            message_type=MSG_TRAIN, dst_node_id=node,
        ),
        Message(
            RecordDict({
                ARRAYS_KEY: weights(), CHAMPION_KEY: weights(), SITE_CHAMPION_KEY: weights(),
                CONFIG_KEY: ConfigRecord({"learning-rate": 0.01, "personal-epochs": 1, "recent-batches": 2}),
            }),
            message_type=MSG_FINALISE, dst_node_id=node,
        ),
    ]


@pytest.fixture(scope="module")
def replies(tmp_path_factory) -> dict[str, list[Message]]:
    """Every reply of plant_a's ClientApp by message type, and plant_b's error replies (a corrupt batch)."""
    from mledge.onsite.profiles import PROFILES
    from mledge.onsite.store import append_generated_batch

    stores = {}
    for site in NODES.values():
        stores[site] = tmp_path_factory.mktemp(site)
        for _ in range(3):
            append_generated_batch(stores[site], PROFILES[site], rows=150)
    corrupt = batch_paths(stores["plant_b"])[1]
    frame = pd.read_csv(corrupt)
    frame.loc[3, "torque_nm"] = 987.654321  # out of the physical range: the reading must not leave the site
    frame.to_csv(corrupt, index=False)
    nodes = {node: {"site": site, "data-dir": str(stores[site])} for node, site in NODES.items()}
    with InProcessGrid(clientapp.app, nodes, record=True) as grid:
        for node in NODES:
            grid.send_and_receive(instructions(node))
        sent = {m.metadata.message_id: m.metadata.message_type for m in grid.received}
        found: dict[str, list[Message]] = {}
        for reply in grid.replies:
            kind = "error" if reply.has_error() else sent[reply.metadata.reply_to_message_id]
            found.setdefault(kind, []).append(reply)
    return found


@pytest.mark.parametrize("message_type", [MSG_QUERY, MSG_TRAIN, MSG_FINALISE])
def test_every_record_and_key_of_a_reply_is_declared_and_every_declared_key_is_sent(replies, message_type):
    sent: dict[str, set[str]] = {}
    for reply in replies[message_type]:
        for name, record in reply.content.items():
            assert declared(channel(message_type), name), f"{message_type} reply carries undeclared record {name!r}"
            if isinstance(record, ArrayRecord):
                assert set(record) == set(build_model().state_dict()), name  # a model's weights, nothing else
                sent.setdefault(name, set()).add("*")
            else:
                sent.setdefault(name, set()).update(record)
    wanted = {d.record: set(d.keys) for d in WHAT_LEAVES_A_SITE if d.channel == channel(message_type)}
    assert sent == wanted


def test_an_error_reply_names_the_problem_but_not_the_reading(replies):
    (error, *more) = replies["error"]
    assert {r.metadata.src_node_id for r in [error, *more]} == {12}  # plant_b's store only
    reason = error.error.reason
    assert "out-of-range values in torque_nm" in reason and "CSV lines [5]" in reason and "batch-000002" in reason
    assert "987.654" not in reason
    assert declared("Flower error reply (any message)", "error") == {"code", "reason"}


def test_what_collect_returns_is_declared(make_store):
    store = make_store("plant_a", batches=1, rows=30)
    (store / "incoming").mkdir()
    pd.read_csv(batch_paths(store)[0]).drop(columns=["torque_nm"]).to_csv(store / "incoming" / "a.csv", index=False)
    result = accept_incoming(store, "plant_a", 0.5)
    result["run_id"] = "manual__1"  # as collect_batch adds it
    undeclared = set(result) - declared("Airflow task `<site>.collect` (XCom, log)", "result")
    assert undeclared == set()
    assert json.dumps(result)  # JSON, as an XCom is


def test_readme_shows_exactly_the_declaration():
    table = disclosure_table()
    assert table in README.read_text(), f"README's 'What leaves a site' table must be:\n{table}"
