"""The ServerApp's pure helpers, on real Flower reply messages (including Flower's error replies)."""

from __future__ import annotations

import logging

import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict

from fl.protocol import Counts, counts_record
from fl.serverapp import NotEnoughSitesError, _require, counts_from, reply_metrics, split_replies

# Flower's code for "the ClientApp raised an exception" (flwr.common.constant.ErrorCode).
CLIENT_APP_RAISED_EXCEPTION = 2


def flower_reason(exc: Exception) -> str:
    """The reason a SuperNode puts in the error reply when the ClientApp raises (flwr's run_clientapp format)."""
    return str(type(exc)) + ":<'" + str(exc) + "'>"


@pytest.fixture
def reply(instruction):
    """reply(node_id, site=None, metrics=None, error=None) -> the node's reply to a 'train' instruction."""

    def make(node_id, site=None, metrics=None, error=None):
        msg = instruction(RecordDict(), node_id, "train")
        if error is not None:
            return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=error), reply_to=msg)
        content = {"metrics": MetricRecord(metrics or {"num-examples": 10})}
        if site is not None:
            content["site"] = ConfigRecord({"site": site})
        return Message(RecordDict(content), reply_to=msg)

    return make


def test_split_replies_names_sites_from_their_replies(reply):
    sites = {}
    a, b = reply(3, site="plant_a"), reply(4, site="plant_b")
    ok, failed = split_replies([a, b], sites)
    assert ok == {"plant_a": a, "plant_b": b}
    assert failed == {}
    assert sites == {3: "plant_a", 4: "plant_b"}


def test_a_failing_node_is_named_by_what_it_said_in_an_earlier_reply(reply):
    sites = {}
    split_replies([reply(3, site="plant_a"), reply(4, site="plant_b")], sites)
    reason = flower_reason(ValueError("site plant_b: store is empty: no batches (/data/plant_b/batches)"))
    good = reply(3, site="plant_a")
    ok, failed = split_replies([good, reply(4, error=reason)], sites)
    assert ok == {"plant_a": good}
    assert failed == {"plant_b": reason}
    assert sites == {3: "plant_a", 4: "plant_b"}


def test_an_unknown_failing_node_is_named_by_its_id(reply):
    sites = {3: "plant_a"}
    ok, failed = split_replies([reply(99, error="boom"), reply(3, site="plant_a")], sites)
    assert failed == {"node-99": "boom"}
    assert list(ok) == ["plant_a"]
    assert 99 not in sites


def test_a_reply_without_site_record_uses_the_known_name_or_node_id(reply):
    sites = {5: "plant_c"}
    known, unknown = reply(5), reply(6)
    ok, failed = split_replies([known, unknown], sites)
    assert ok == {"plant_c": known, "node-6": unknown}
    assert failed == {}


def test_a_restarted_supernode_is_named_by_its_new_reply(reply):
    # Node ids change when a SuperNode restarts; the site name it reports does not.
    sites = {3: "plant_a"}
    restarted = reply(8, site="plant_a")
    ok, _ = split_replies([restarted], sites)
    assert ok == {"plant_a": restarted}
    assert sites[8] == "plant_a"


def test_the_superlinks_error_for_a_lost_node_is_the_failure_of_that_nodes_site(instruction, reply):
    """A SuperNode killed mid-round: the SuperLink answers in its place, from its own node id (1). The failure is
    plant_c's, not that of a "node-1" no site registered."""
    from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

    to_c = instruction(RecordDict(), 7, "train")
    lost = create_message_error_unavailable_res_message(to_c.metadata, "node_unavail")
    assert lost.metadata.src_node_id == 1  # the SuperLink's own id, as Flower sends it
    registered = {3: "plant_a", 7: "plant_c"}
    good = reply(3, site="plant_a")
    ok, failed = split_replies([good, lost], {}, registered, addressed={to_c.metadata.message_id: 7})
    assert ok == {"plant_a": good}
    assert list(failed) == ["plant_c"] and failed["plant_c"] == lost.error.reason
    # Without knowing where the message went, the SuperLink's reply stays unattributed rather than misnamed.
    _, unknown = split_replies([lost], {}, registered)
    assert list(unknown) == ["node-1"]


def test_require_passes_with_enough_sites(reply):
    ok = {"plant_a": reply(1, site="plant_a"), "plant_b": reply(2, site="plant_b")}
    assert _require(ok, {}, 2, "round 1") is None


def test_require_fails_listing_who_answered_and_who_failed(reply, caplog):
    ok = {"plant_a": reply(1, site="plant_a")}
    failed = {"plant_b": "empty store", "node-9": "timeout"}
    with caplog.at_level(logging.WARNING, logger="flwr.mledge"), pytest.raises(NotEnoughSitesError) as err:
        _require(ok, failed, 2, "round 3")
    message = str(err.value)
    assert message.startswith("round 3: only 1 site(s) answered (['plant_a']), 2 needed")
    assert "'plant_b': 'empty store'" in message and "'node-9': 'timeout'" in message
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "round 3: site plant_b failed: empty store" in warnings
    assert "round 3: site node-9 failed: timeout" in warnings


def test_require_with_no_answer_at_all(reply):
    with pytest.raises(NotEnoughSitesError, match=r"only 0 site\(s\) answered \(\[\]\), 1 needed"):
        _require({}, {"plant_a": "down"}, 1, "final evaluation")


def test_counts_from_round_trips_the_clientapp_record():
    counts = Counts(tp=3, fp=1, fn=2, tn=94, loss_sum=7.25)
    metrics = {**counts_record(counts), **counts_record(Counts(1, 2, 3, 4, 0.5), prefix="champion-")}
    metrics["num-examples"] = 100
    assert counts_from(metrics) == counts
    assert counts_from(metrics, "champion-") == Counts(1, 2, 3, 4, 0.5)


def test_counts_from_without_counts_is_none():
    assert counts_from({"num-examples": 10}) is None
    assert counts_from(counts_record(Counts(1, 1, 1, 1, 1.0)), "champion-") is None


def test_counts_from_a_metric_record_of_floats():
    # MetricRecords travel as numbers; counts come back as ints.
    record = MetricRecord({"tp": 2.0, "fp": 0.0, "fn": 1.0, "tn": 7.0, "loss-sum": 1.5})
    counts = counts_from(dict(record))
    assert counts == Counts(2, 0, 1, 7, 1.5)
    assert all(isinstance(v, int) for v in (counts.tp, counts.fp, counts.fn, counts.tn))


def test_reply_metrics_reads_the_metric_record(reply):
    assert reply_metrics(reply(1, site="plant_a", metrics={"tp": 1, "num-examples": 5})) == {"tp": 1, "num-examples": 5}
