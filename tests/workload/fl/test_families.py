"""Both model families end to end in one process: the threshold chosen from pooled counts, early stopping, the
xgboost family's bagging and its refusals, scoring through one interface (evaluation, promotion, drift), and
MLflow logging with each family's flavour."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

import fl.clientapp as clientapp
from fl import families, thresholds, trees
from fl.convergence import EarlyStopping, cosine_lr, pooled_validation
from fl.model import build_model, model_from_state, with_threshold
from fl.protocol import metrics_from_counts
from fl.serverapp import finalise, log_model, train_rounds
from fl.simulation.harness import InProcessGrid, make_reply
from fl.strategies import MemoryStateStore, build_strategy
from fl.tree_strategy import TreeBagging, UnsupportedStrategyError, tree_strategy
from mledge.contracts import (
    ARRAYS_KEY,
    EVIDENCE_PATH,
    EXPERIMENT,
    GLOBAL_MODEL,
    MODEL_FAMILY_KEY,
    STRATEGIES,
    TAG_FLOWER_RUN,
    TAG_MODEL_FAMILY,
    TAG_MODEL_RUN,
    TAG_MODEL_URI,
    TAG_THRESHOLD,
    TREE_STRATEGIES,
    XGBOOST,
)
from mledge.onsite import scoring
from mledge.onsite.concept_drift import model_scores
from mledge.onsite.drift_evaluation import Champion, load_champion_model
from mledge.onsite.features import features
from mledge.onsite.schema import FEATURE_NAMES
from mledge.onsite.store import load_site_data
from mledge.onsite.training import split3
from mledge.onsite.tree_training import boost
from mledge.registry.promotion import decide_promotion, load_champion_state, promote

NODES = {11: "plant_a", 12: "plant_b", 13: "plant_c"}


# --- the threshold and early stopping: pure functions ------------------------------------------------------------


def test_threshold_counts_add_up_and_the_best_pooled_f1_wins():
    truth = np.array([1, 1, 1, 0, 0, 0])
    scores = np.array([2.0, -0.5, -0.55, -0.1, -3.0, 0.1])
    counts = thresholds.threshold_counts(scores, truth)
    at_zero = thresholds.NEUTRAL
    assert [counts[thresholds.count_key(at_zero, k)] for k in ("tp", "fp", "fn")] == [1, 1, 2]
    pooled = thresholds.sum_counts([counts, counts])
    assert pooled[thresholds.count_key(at_zero, "tp")] == 2
    threshold, f1 = thresholds.choose_threshold(pooled)
    # Below -0.55 every failure is caught, with two false alarms: F1 = 6 / 8. Every grid threshold from logit
    # -2.9 to -0.62 does that; the tie goes to the one nearest logit 0.
    assert f1 == pytest.approx(0.75) and threshold == pytest.approx(np.log(0.35 / 0.65))


def test_no_failure_keeps_the_untuned_threshold():
    counts = thresholds.threshold_counts(np.array([0.3, -1.0]), np.array([0, 0]))
    assert thresholds.choose_threshold(counts) == (0.0, 0.0)


def test_cosine_schedule_runs_from_the_base_rate_down():
    rates = [cosine_lr(0.01, r, 10) for r in range(1, 11)]
    assert rates[0] == pytest.approx(0.01) and rates[-1] == pytest.approx(0.0005)
    assert all(a > b for a, b in zip(rates, rates[1:], strict=False))


def test_early_stopping_keeps_the_best_model_and_stops_after_patience():
    stopping = EarlyStopping(patience=2)

    def report(loss: float) -> list[dict[str, float]]:
        return [{"val-loss-sum": loss * 10, "val-examples": 10, thresholds.count_key(3, "tp"): 1.0}]

    assert not stopping.observe(0, "m0", report(0.5))
    assert not stopping.observe(1, "m1", report(0.3))
    assert not stopping.observe(2, "m2", report(0.4))
    assert stopping.observe(3, "m3", report(0.35))  # two rounds without beating 0.3
    assert (stopping.best_model, stopping.best_round, stopping.best_loss) == ("m1", 1, pytest.approx(0.3))
    assert pooled_validation([]) != pooled_validation(report(0.1))


# --- the MLP: its threshold travels with its weights ---------------------------------------------------------------


def test_the_mlp_reads_its_decision_at_the_stored_threshold(site_stores):
    frame = load_site_data(site_stores["plant_a"], "plant_a")
    model = build_model(seed=1)
    raw = scoring.raw_scores(model, features(frame))
    shifted = model_from_state(with_threshold(model.state_dict(), 0.25))
    np.testing.assert_allclose(scoring.scores(shifted, frame), raw - 0.25, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model_scores(shifted.state_dict(), frame), raw - 0.25, rtol=1e-5, atol=1e-5)
    # A state from before thresholds (no buffer) reads at logit 0.
    old = {k: v for k, v in model.state_dict().items() if k != "threshold"}
    assert scoring.threshold_of(old) == 0.0


# --- the xgboost family: aggregation and refusals ----------------------------------------------------------------


@pytest.mark.parametrize("name", [s for s in STRATEGIES if s not in TREE_STRATEGIES])
def test_robust_rules_are_refused_for_trees_with_the_reason(name):
    with pytest.raises(UnsupportedStrategyError, match=f"cannot use '{name}'.*appended by Flower's FedXgbBagging"):
        tree_strategy(name, min_nodes=3)


def test_privacy_modes_are_refused_for_trees():
    with pytest.raises(UnsupportedStrategyError, match="cannot run under privacy mode 'secagg'"):
        tree_strategy("fedavg", min_nodes=3, privacy="secagg")


def test_an_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown model family 'forest'"):
        families.family_of({MODEL_FAMILY_KEY: "forest"})


def _tree_update(site_stores, site: str, start: bytes) -> bytes:
    frame = load_site_data(site_stores[site], site)
    (x, y), _, _ = split3(site, frame)
    before = trees.load_booster(start)
    after = boost(before, x, y, 1)
    done = 0 if before is None else before.num_boosted_rounds()
    return trees.save_booster(after[done:])


def test_bagging_appends_one_tree_per_site_and_refuses_malformed_updates(site_stores):
    strategy = tree_strategy("fedavg", min_nodes=2)
    assert isinstance(strategy, TreeBagging)
    strategy.current_bst = b""
    replies = [
        make_reply(site, node, {"0": trees.to_array(_tree_update(site_stores, site, b""))}, 100)
        for node, site in ((1, "plant_a"), (2, "plant_b"))
    ]
    replies.append(make_reply("plant_c", 3, {"0": np.frombuffer(b"not a booster", np.uint8)}, 100))
    replies.append(make_reply("mallory", 4, {"0": trees.to_array(_tree_update(site_stores, "plant_a", b""))}, -5))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert set(strategy.last_rejected) == {"plant_c", "mallory"}
    assert "not an XGBoost booster" in strategy.last_rejected["plant_c"]
    assert "num-examples" in strategy.last_rejected["mallory"]
    assert strategy.last_weights == {"plant_a": 0.5, "plant_b": 0.5}
    booster = trees.load_booster(trees.to_bytes(arrays["0"]))
    assert booster.num_boosted_rounds() == 2  # one tree from each accepted site


# --- both families through the ServerApp's steps, with the real ClientApp -----------------------------------------


@pytest.fixture
def grid(site_stores):
    nodes = {node: {"site": site, "data-dir": str(site_stores[site])} for node, site in NODES.items()}
    with InProcessGrid(clientapp.app, nodes, run_id=42) as grid:
        yield grid


def _run(grid, family: str, strategy, rounds: int, cfg: dict):
    stopping = EarlyStopping(patience=3)
    result = train_rounds(
        grid, strategy, families.initial_arrays(family), rounds=rounds,
        train_config=families.round_config(family, cfg, rounds), min_replies=3, timeout=60,
        sink=lambda metrics, step: None, stopping=stopping,
    )
    threshold, _ = stopping.threshold()
    result.arrays = families.with_threshold(result.arrays, threshold)
    return result, stopping, threshold


def test_xgboost_federated_rounds_threshold_and_finalise_against_an_mlp_champion(grid, site_stores):
    cfg = {MODEL_FAMILY_KEY: XGBOOST, "learning-rate": 0.01, "personal-rounds": 3, "recent-batches": 2}
    result, stopping, threshold = _run(grid, XGBOOST, tree_strategy("fedavg", min_nodes=3), 8, cfg)
    booster = trees.load_booster(trees.to_bytes(result.arrays["0"]))
    assert booster.num_boosted_rounds() == 3 * stopping.best_round  # three sites, one tree each per round
    assert trees.threshold_of(booster) == threshold
    assert sorted(booster.feature_names) == sorted(FEATURE_NAMES)

    champion = build_model(seed=0).state_dict()  # an untrained MLP champion: the trees must beat it
    evidence, ok = finalise(
        grid, result, timeout=60, registered_model="global", config=families.finalise_config(XGBOOST, cfg),
        load_champion=lambda name: ("1", champion) if name == "global" else (None, None), final_round=9,
    )
    assert set(evidence.sites) == set(NODES.values())
    candidate, old = evidence.metric("candidate", "f1"), evidence.metric("champion", "f1")
    assert min(candidate.values()) > 0.5
    assert decide_promotion(candidate, old).alias == "champion"
    for site, reply in ok.items():  # the personalised model: the global trees plus a few local rounds
        personal = trees.load_booster(trees.to_bytes(reply.content[ARRAYS_KEY]["0"]))
        assert personal.num_boosted_rounds() == booster.num_boosted_rounds() + 3
        assert trees.threshold_of(personal) == threshold
        # the site's evidence is the booster's decision on its held-out rows
        _, _, (x, y) = split3(site, load_site_data(site_stores[site], site))
        expected = scoring.counts(booster, x, y)
        assert metrics_from_counts(expected)["f1"] == pytest.approx(evidence.sites[site].candidate["f1"])


def test_mlp_rounds_stop_early_and_store_the_threshold(grid):
    cfg = {"local-epochs": 1, "learning-rate": 0.01}
    strategy = build_strategy("fedavg", min_nodes=3, state=MemoryStateStore())
    result, stopping, threshold = _run(grid, "mlp", strategy, 6, cfg)
    state = result.arrays.to_torch_state_dict()
    assert float(state["threshold"]) == pytest.approx(threshold)
    assert 0 <= stopping.best_round <= 6 and stopping.best_counts


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)


def test_each_family_is_registered_with_its_flavour_and_scores_the_same_after_loading(site_stores, tracking):
    frame = load_site_data(site_stores["plant_b"], "plant_b")
    (x, y), _, _ = split3("plant_b", frame)
    booster = boost(None, x, y, 5)
    tree_state = {"0": trees.to_array(trees.with_threshold(trees.save_booster(booster), -0.4))}
    mlp_state = with_threshold(build_model(seed=2).state_dict(), 0.3)
    client = mlflow.MlflowClient()
    for name, state, flavour in (("trees", tree_state, "xgboost"), ("net", mlp_state, "pytorch")):
        uri, _, model_id = log_model(state, "models", name, {})
        info = mlflow.models.get_model_info(uri)
        assert flavour in info.flavors and info.model_id == model_id
        # the trees' signature names the features; the MLP's pt2 format takes tensor signatures, so its metadata does
        named = info.signature.inputs.input_names() if flavour == "xgboost" else info.metadata["feature_names"]
        assert list(named) == list(FEATURE_NAMES)
        version = mlflow.register_model(uri, name).version
        client.set_registered_model_alias(name, "champion", version)
        loaded = scoring.load_registered(name, str(version))
        np.testing.assert_allclose(scoring.scores(loaded, frame), scoring.scores(state, frame), rtol=1e-5, atol=1e-5)
        champion_version, arrays = load_champion_state(name)
        assert champion_version == str(version)
        record = families.record_of(arrays)
        assert trees.is_tree_record(record) == (flavour == "xgboost")
        # What the ServerApp sends as champion scores like the registered model.
        sent = {"0": record["0"].numpy()} if flavour == "xgboost" else record.to_torch_state_dict()
        np.testing.assert_allclose(scoring.scores(sent, frame), scoring.scores(loaded, frame), rtol=1e-5, atol=1e-5)
    tree_inputs = [c.name for c in mlflow.models.get_model_info("models:/trees/1").signature.inputs]
    assert tree_inputs == list(FEATURE_NAMES)


def test_concept_drift_scores_a_booster_through_the_same_interface(site_stores):
    frame = load_site_data(site_stores["plant_c"], "plant_c")
    (x, y), _, _ = split3("plant_c", frame)
    raw = trees.with_threshold(trees.save_booster(boost(None, x, y, 4)), 0.5)
    booster = trees.load_booster(raw)
    np.testing.assert_allclose(model_scores(booster, frame), trees.raw_scores(booster, features(frame)) - 0.5)
    np.testing.assert_allclose(model_scores({"0": trees.to_array(raw)}, frame), model_scores(booster, frame))
    assert model_scores(booster, frame.iloc[:0]).shape == (0,)


# --- the whole registry path for trees: an MLP champion, then an xgboost run that beats it -----------------------


def _evidence(candidate: float, champion: float | None, champion_version: str | None) -> dict:
    def metrics(f1: float) -> dict[str, float]:
        return {"loss": 0.1, "accuracy": 0.97, "recall": f1, "precision": f1, "f1": f1}

    return {
        "champion_version": champion_version,
        "sites": {
            site: {"candidate": metrics(candidate), "champion": metrics(champion) if champion else None,
                   "num_examples": 600}
            for site in NODES.values()
        },
        "failures": {},
    }


def test_an_xgboost_run_is_registered_promoted_over_an_mlp_champion_and_scored_for_drift(site_stores, tracking):
    client = mlflow.MlflowClient()
    experiment = mlflow.create_experiment(EXPERIMENT)
    frame = load_site_data(site_stores["plant_a"], "plant_a")
    (x, y), _, _ = split3("plant_a", frame)
    booster_raw = trees.with_threshold(trees.save_booster(boost(None, x, y, 5)), -0.3)
    models = {
        "201": (with_threshold(build_model(seed=5).state_dict(), 0.0), "mlp", _evidence(0.5, None, None)),
        "202": ({"0": trees.to_array(booster_raw)}, XGBOOST, _evidence(0.9, 0.5, "1")),
    }
    for flower_run, (state, family, evidence) in models.items():
        uri, model_run, _ = log_model(state, "models", flower_run, {})
        tags = {TAG_FLOWER_RUN: flower_run, TAG_MODEL_URI: uri, TAG_MODEL_RUN: model_run,
                TAG_MODEL_FAMILY: family, TAG_THRESHOLD: repr(scoring.threshold_of(state))}
        with mlflow.start_run(experiment_id=experiment, tags=tags):
            mlflow.log_dict(evidence, EVIDENCE_PATH)
    assert promote("201")["alias"] == "champion"
    result = promote("202")
    assert (result["version"], result["alias"], result["model_family"]) == ("2", "champion", XGBOOST)
    version = client.get_model_version(GLOBAL_MODEL, "2")
    assert version.tags[TAG_MODEL_FAMILY] == XGBOOST and float(version.tags[TAG_THRESHOLD]) == pytest.approx(-0.3)
    # The next run's finalise sends the champion as the sites receive it: the booster's bytes.
    champion_version, arrays = load_champion_state(GLOBAL_MODEL)
    assert champion_version == "2" and trees.is_tree_record(arrays)
    # Drift evaluation at a site loads that exact version and scores it through the same interface.
    champion = load_champion_model(Champion(GLOBAL_MODEL, "2"))
    expected = trees.raw_scores(trees.load_booster(booster_raw), features(frame)) + 0.3
    np.testing.assert_allclose(model_scores(champion, frame), expected, rtol=1e-5, atol=1e-5)
