"""The ClientApp handlers, called with real Flower messages and contexts on real site stores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

import fl.clientapp as clientapp
from fl.model import build_model
from mledge.onsite.features import features, labels
from mledge.onsite.store import SiteDataError, batch_paths, is_held_out, load_site_data
from mledge.onsite.training import evaluate, is_validation

COUNT_KEYS = ("tp", "fp", "fn", "tn", "loss-sum")


def context_for(node_config, node_id=7):
    return Context(run_id=42, node_id=node_id, node_config=node_config, state=RecordDict(), run_config={})


def site_context(store, site, node_id=7):
    return context_for({"site": site, "data-dir": str(store)}, node_id)


def held_out_xy(store, site):
    frame = load_site_data(store, site)
    test = frame[is_held_out(frame)]
    return features(test), labels(test)


def train_content(model, epochs=1, server_round=1):
    config = ConfigRecord({"local-epochs": epochs, "learning-rate": 0.01, "server-round": server_round})
    return RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": config})


@pytest.fixture
def plant_a_store(make_store):
    return make_store("plant_a", batches=2)


def test_the_decorators_register_the_handlers_and_return_them():
    # flwr's decorators return the function unchanged, so the handlers can be called directly.
    assert callable(clientapp.train) and clientapp.train.__name__ == "train"
    assert clientapp.finalise.__name__ == "finalise"
    assert clientapp.identify.__name__ == "identify"


def test_train_replies_with_weights_metrics_and_site(plant_a_store, instruction):
    sent = build_model(seed=5)
    msg = instruction(train_content(sent), node_id=7, message_type="train")
    reply = clientapp.train(msg, site_context(plant_a_store, "plant_a"))

    assert not reply.has_error()
    assert reply.metadata.reply_to_message_id == msg.metadata.message_id
    assert reply.metadata.src_node_id == 7 and reply.metadata.dst_node_id == msg.metadata.src_node_id

    arrays = reply.content["arrays"]
    assert isinstance(arrays, ArrayRecord)
    state = arrays.to_torch_state_dict()
    assert list(state) == list(build_model().state_dict())
    # The weights were trained: they differ from the ones sent.
    assert any(not torch.equal(state[k], v) for k, v in sent.state_dict().items())

    metrics = reply.content["metrics"]
    assert isinstance(metrics, MetricRecord)
    frame = load_site_data(plant_a_store, "plant_a")
    held, val = is_held_out(frame), is_validation(frame)
    assert metrics["num-examples"] == int((~held & ~val).sum()) == 1200  # validation rows are not trained on
    assert metrics["eval-examples"] == int(held.sum()) == 400
    assert metrics["val-examples"] == int(val.sum()) == 400
    assert sum(metrics[k] for k in ("tp", "fp", "fn", "tn")) == metrics["eval-examples"]
    assert np.isfinite(metrics["train-loss"])

    site = reply.content["site"]
    assert isinstance(site, ConfigRecord) and site["site"] == "plant_a"


def test_train_scores_the_received_model_before_training(plant_a_store, instruction):
    sent = build_model(seed=9)
    msg = instruction(train_content(sent), node_id=7, message_type="train")
    metrics = clientapp.train(msg, site_context(plant_a_store, "plant_a")).content["metrics"]
    expected = evaluate(sent, *held_out_xy(plant_a_store, "plant_a"))
    assert (metrics["tp"], metrics["fp"], metrics["fn"], metrics["tn"]) == (
        expected.tp,
        expected.fp,
        expected.fn,
        expected.tn,
    )
    assert metrics["loss-sum"] == pytest.approx(expected.loss_sum, rel=1e-5)


def test_the_clientapp_routes_train_and_query_messages(plant_a_store, instruction):
    context = site_context(plant_a_store, "plant_a")
    reply = clientapp.app(instruction(train_content(build_model()), 7, "train"), context)
    assert reply.content["metrics"]["num-examples"] == 1200
    identity = clientapp.app(instruction(RecordDict(), 7, "query"), context)
    assert identity.content["site"]["site"] == "plant_a"


def test_train_replies_from_two_sites_aggregate_with_fedavg(make_store, instruction):
    stores = {site: make_store(site, batches=2, rows=500) for site in ("plant_a", "plant_c")}
    start = build_model(seed=1)
    replies = [
        clientapp.train(instruction(train_content(start), node, "train"), site_context(stores[site], site, node))
        for node, site in ((11, "plant_a"), (12, "plant_c"))
    ]
    arrays, metrics = FedAvg().aggregate_train(1, replies)
    assert arrays is not None and list(arrays.keys()) == list(start.state_dict())
    assert "train-loss" in metrics
    # FedAvg weighs by num-examples: equal sizes give the plain mean of the two sites' weights.
    a, c = (r.content["arrays"].to_torch_state_dict() for r in replies)
    merged = arrays.to_torch_state_dict()
    for name in merged:
        torch.testing.assert_close(merged[name], (a[name] + c[name]) / 2)


def test_an_empty_store_fails_naming_the_site(tmp_path, instruction):
    store = tmp_path / "plant_b"
    store.mkdir()
    msg = instruction(train_content(build_model()), 7, "train")
    with pytest.raises(SiteDataError) as err:
        clientapp.app(msg, site_context(store, "plant_b"))
    assert err.value.site == "plant_b"
    assert "site plant_b" in str(err.value) and "empty" in str(err.value)


def test_a_malformed_store_fails_naming_site_and_file(make_store, instruction):
    store = make_store("plant_c", batches=2, rows=100)
    bad = batch_paths(store)[0]
    bad.write_text(bad.read_text().replace(",L,", ",Q,", 1))  # an unknown product type
    msg = instruction(train_content(build_model()), 7, "train")
    with pytest.raises(SiteDataError) as err:
        clientapp.app(msg, site_context(store, "plant_c"))
    assert err.value.site == "plant_c" and err.value.path == bad
    assert str(bad) in str(err.value) and "unknown product types ['Q']" in str(err.value)


def test_a_store_too_small_to_hold_out_rows_fails_naming_the_site(make_store, instruction):
    store = make_store("plant_a", batches=1, rows=4)  # UDIs 1-4: no held-out row
    with pytest.raises(SiteDataError, match=r"site plant_a: too few rows to train and evaluate \(4\)"):
        clientapp.train(instruction(train_content(build_model()), 7, "train"), site_context(store, "plant_a"))


@pytest.mark.parametrize("node_config", [{}, {"data-dir": "/nonexistent"}, {"site": "  "}])
def test_a_node_without_site_fails_clearly(node_config, instruction):
    for message_type in ("train", "query"):
        msg = instruction(train_content(build_model()), 7, message_type)
        with pytest.raises(SiteDataError) as err:
            clientapp.app(msg, context_for(node_config))
        assert "no 'site'" in str(err.value) and "--node-config" in str(err.value)


def test_a_node_without_data_dir_fails_naming_the_site(instruction):
    msg = instruction(train_content(build_model()), 7, "train")
    with pytest.raises(SiteDataError, match="site plant_b: .*no 'data-dir'"):
        clientapp.app(msg, context_for({"site": "plant_b"}))


def test_a_site_reads_only_its_own_store(make_store, instruction):
    store_a = make_store("plant_a", batches=1, rows=100)
    make_store("plant_b", batches=1, rows=300)
    reply = clientapp.train(instruction(train_content(build_model()), 7, "train"), site_context(store_a, "plant_a"))
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] + metrics["val-examples"] + metrics["eval-examples"] == 100


def _train_state(store, instruction, node_config, run_config=None, model_seed=3):
    sent = build_model(seed=model_seed)
    msg = instruction(train_content(sent), node_id=7, message_type="train")
    context = Context(run_id=42, node_id=7, node_config=node_config, state=RecordDict(), run_config=run_config or {})
    reply = clientapp.train(msg, context)
    return sent.state_dict(), reply.content["arrays"].to_torch_state_dict(), reply.content["metrics"]


def test_a_scaling_attacker_sends_its_update_boosted(plant_a_store, instruction):
    honest_config = {"site": "plant_a", "data-dir": str(plant_a_store)}
    received, honest, _ = _train_state(plant_a_store, instruction, honest_config)
    evil_config = {**honest_config, "attack": "scaling", "attack-scale": 10.0, "attack-samples-factor": 5.0}
    _, boosted, metrics = _train_state(plant_a_store, instruction, evil_config)
    for key, start in received.items():
        expected = start + 10.0 * (honest[key] - start)  # same seed and data: the honest update, ten times
        assert torch.allclose(boosted[key], expected, atol=1e-4), key
    assert metrics["num-examples"] == 5 * 1200  # and it lies about its sample count


def test_a_run_config_simulation_poisons_only_the_named_site_that_opted_in(plant_a_store, instruction):
    node_config = {"site": "plant_a", "data-dir": str(plant_a_store), "accept-simulated-attacks": "true"}
    received, honest, _ = _train_state(plant_a_store, instruction, node_config)
    flip = {"attack-site": "plant_a", "attack-profile": "attack='sign-flip'"}
    _, flipped, _ = _train_state(plant_a_store, instruction, node_config, run_config=flip)
    for key, start in received.items():
        assert torch.allclose(flipped[key], start - (honest[key] - start), atol=1e-4), key
    elsewhere = {"attack-site": "plant_b", "attack-profile": "attack='sign-flip'"}
    _, untouched, _ = _train_state(plant_a_store, instruction, node_config, run_config=elsewhere)
    assert all(torch.equal(untouched[k], honest[k]) for k in honest)


def test_a_run_cannot_make_a_site_that_did_not_opt_in_attack(plant_a_store, instruction):
    """Whoever may trigger training cannot turn a real site into an attacker (security finding 6)."""
    node_config = {"site": "plant_a", "data-dir": str(plant_a_store)}
    _, honest, honest_metrics = _train_state(plant_a_store, instruction, node_config)
    for opt_in in (None, "false", "yes-please"):
        config = node_config if opt_in is None else {**node_config, "accept-simulated-attacks": opt_in}
        run = {"attack-site": "plant_a", "attack-profile": "attack='sign-flip' attack-samples-factor=9"}
        _, sent, metrics = _train_state(plant_a_store, instruction, config, run_config=run)
        assert all(torch.equal(sent[k], honest[k]) for k in honest)
        assert metrics["num-examples"] == honest_metrics["num-examples"]


def test_an_attack_that_needs_other_sites_updates_fails_clearly_on_a_real_node(plant_a_store, instruction):
    node_config = {"site": "plant_a", "data-dir": str(plant_a_store), "attack": "alie"}
    with pytest.raises(ValueError, match="honest updates"):
        _train_state(plant_a_store, instruction, node_config)
