"""The promotion gate, and promote() end to end against a real (local, SQLite) MLflow tracking store."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from fl.model import build_model
from fl.protocol import PromotionEvidence
from mledge.contracts import (
    CHALLENGER,
    CHAMPION,
    EVIDENCE_PATH,
    EXPERIMENT,
    GLOBAL_MODEL,
    TAG_DAG_RUN,
    TAG_DECISION,
    TAG_FLOWER_RUN,
    TAG_MODEL_URI,
    TAG_REASON,
)
from mledge.onsite.schema import N_FEATURES
from mledge.registry.promotion import aliases_of, decide_promotion, find_run, load_champion_state, promote

SITES3 = ("plant_a", "plant_b", "plant_c")


# --- the gate ------------------------------------------------------------------------------------------------


def test_first_version_becomes_champion():
    decision = decide_promotion({"plant_a": 0.1}, None)
    assert decision.alias == CHAMPION
    assert "first version" in decision.reason


def test_a_tie_promotes():
    scores = {"plant_a": 0.5, "plant_b": 0.7}
    assert decide_promotion(dict(scores), dict(scores)).alias == CHAMPION


def test_better_everywhere_promotes():
    decision = decide_promotion({"plant_a": 0.6, "plant_b": 0.8}, {"plant_a": 0.5, "plant_b": 0.7})
    assert decision.alias == CHAMPION
    assert "every site" in decision.reason


def test_worse_at_one_site_is_a_challenger_naming_that_site():
    decision = decide_promotion(
        {"plant_a": 0.9, "plant_b": 0.41, "plant_c": 0.9}, {"plant_a": 0.5, "plant_b": 0.42, "plant_c": 0.5}
    )
    assert decision.alias == CHALLENGER
    assert "plant_b (f1 0.4100 vs champion 0.4200)" in decision.reason
    assert "plant_a" not in decision.reason and "plant_c" not in decision.reason


def test_every_worse_site_is_named():
    decision = decide_promotion({"plant_a": 0.1, "plant_b": 0.2}, {"plant_a": 0.5, "plant_b": 0.6}, metric="recall")
    assert decision.alias == CHALLENGER
    assert "plant_a (recall 0.1000" in decision.reason and "plant_b (recall 0.2000" in decision.reason


def test_a_site_that_scored_only_the_champion_blocks_promotion():
    decision = decide_promotion({"plant_a": 0.9}, {"plant_a": 0.5, "plant_c": 0.5})
    assert decision.alias == CHALLENGER
    assert "plant_c" in decision.reason and "plant_a" not in decision.reason


def test_a_site_that_scored_only_the_candidate_does_not_block():
    assert decide_promotion({"plant_a": 0.6, "plant_new": 0.0}, {"plant_a": 0.5}).alias == CHAMPION


def test_no_site_scored_the_champion():
    decision = decide_promotion({"plant_a": 0.9}, {})
    assert decision.alias == CHALLENGER
    assert "no site scored the current champion" in decision.reason


def test_loss_is_better_when_lower():
    champion = {"plant_a": 0.30, "plant_b": 0.30}
    assert decide_promotion({"plant_a": 0.20, "plant_b": 0.30}, champion, metric="loss").alias == CHAMPION
    worse = decide_promotion({"plant_a": 0.20, "plant_b": 0.31}, champion, metric="loss")
    assert worse.alias == CHALLENGER and "plant_b (loss 0.3100 vs champion 0.3000)" in worse.reason


def test_margin_is_required_in_the_metric_direction():
    champion = {"plant_a": 0.50}
    assert decide_promotion({"plant_a": 0.52}, champion, margin=0.05).alias == CHALLENGER
    assert decide_promotion({"plant_a": 0.56}, champion, margin=0.05).alias == CHAMPION
    assert decide_promotion({"plant_a": 0.50}, champion, margin=0.05).alias == CHALLENGER
    # For loss the candidate must be lower by the margin.
    assert decide_promotion({"plant_a": 0.47}, champion, metric="loss", margin=0.05).alias == CHALLENGER
    assert decide_promotion({"plant_a": 0.44}, champion, metric="loss", margin=0.05).alias == CHAMPION


def test_unknown_metric_is_refused():
    with pytest.raises(KeyError):
        decide_promotion({"plant_a": 1.0}, {"plant_a": 1.0}, metric="auc")


def _metrics(f1, loss=0.3):
    return {"loss": loss, "accuracy": 0.9, "recall": 0.7, "precision": 0.6, "f1": f1}


def evidence_for(candidate, champion=None, champion_version=None, failures=None):
    """A promotion evidence document as the ServerApp logs it."""
    return {
        "champion_version": champion_version,
        "sites": {
            site: {
                "candidate": _metrics(score),
                "champion": _metrics(champion[site]) if champion and site in champion else None,
                "num_examples": 400,
            }
            for site, score in candidate.items()
        },
        "failures": failures or {},
    }


def test_site_metric_reads_one_role_and_metric():
    evidence = PromotionEvidence.from_dict(evidence_for({"plant_a": 0.6, "plant_b": 0.4}, champion={"plant_a": 0.5}))
    assert evidence.metric("candidate", "f1") == {"plant_a": 0.6, "plant_b": 0.4}
    assert evidence.metric("champion", "f1") == {"plant_a": 0.5}
    assert evidence.metric("candidate", "loss") == {"plant_a": 0.3, "plant_b": 0.3}
    assert PromotionEvidence.from_dict({"failures": {}}).metric("candidate", "f1") == {}


def test_evidence_round_trips_and_names_what_is_malformed():
    document = evidence_for({"plant_a": 0.6}, champion={"plant_a": 0.5}, champion_version=2, failures={"x": ["y"]})
    evidence = PromotionEvidence.from_dict(document)
    assert evidence.champion_version == "2" and evidence.failures == {"x": ["y"]}
    assert PromotionEvidence.from_dict(evidence.to_dict()) == evidence
    document["sites"]["plant_a"]["unknown_field"] = 1
    with pytest.raises(ValueError, match="unknown_field"):
        PromotionEvidence.from_dict(document)


# --- promote() against a real MLflow store ------------------------------------------------------------------


def _log_flower_run(experiment_id, flower_run_id, evidence, seed):
    """What the ServerApp leaves in MLflow for one Flower run: tags, evidence, and the logged global model."""
    tags = {TAG_FLOWER_RUN: flower_run_id, TAG_DAG_RUN: f"dag-{flower_run_id}"}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"flower-run-{flower_run_id}", tags=tags) as run:
        mlflow.log_dict(evidence, EVIDENCE_PATH)
        info = mlflow.pytorch.log_model(
            build_model(seed=seed),
            name="model",
            input_example=np.zeros((2, N_FEATURES), np.float32),
            pip_requirements=["torch==2.13.0"],
        )
        mlflow.set_tag(TAG_MODEL_URI, info.model_uri)
    return run.info.run_id


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A fresh SQLite tracking store with artifacts under the test's temporary folder; yields the experiment id."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        mlflow.set_tracking_uri(uri)
        try:
            yield mlflow.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
        finally:
            mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def history(tracking):
    """Three Flower runs promoted in turn, with every result and the registry state after each step.

    1. "101": the first model                                        -> v1 champion
    2. "102": compared against v1, worse at plant_b                   -> v2 challenger
    3. "101" promoted again (a retried task)                          -> still v1, no new version
    4. "102" promoted again                                           -> still v2 challenger
    5. "103": compared against v1, better everywhere                  -> v3 champion
    6. "102" promoted again: its evidence is against v1, v3 rules now -> v2 challenger, for that reason
    """
    client = mlflow.MlflowClient()
    champion_v1 = {site: 0.5 for site in SITES3}
    runs = {
        "101": _log_flower_run(tracking, "101", evidence_for({s: 0.5 for s in SITES3}), seed=101),
        "102": _log_flower_run(
            tracking,
            "102",
            evidence_for({"plant_a": 0.7, "plant_b": 0.45, "plant_c": 0.7}, champion_v1, champion_version="1"),
            seed=102,
        ),
        "103": _log_flower_run(tracking, "103", evidence_for({s: 0.6 for s in SITES3}, champion_v1, "1"), seed=103),
    }
    steps = {}

    def step(label, flower_run_id):
        result = promote(flower_run_id)
        versions = client.search_model_versions(f"name = '{GLOBAL_MODEL}'")
        steps[label] = {"result": result, "aliases": aliases_of(client, GLOBAL_MODEL), "versions": len(versions)}

    step("first", "101")
    step("worse", "102")
    step("retry first", "101")
    step("retry worse", "102")
    step("better", "103")
    step("stale", "102")
    return {"runs": runs, "steps": steps, "client": client}


def test_the_first_promotion_registers_version_1_as_champion(history):
    first = history["steps"]["first"]
    assert str(first["result"]["version"]) == "1"
    assert first["result"]["alias"] == CHAMPION
    assert first["result"]["previous_champion"] is None
    assert first["aliases"] == {CHAMPION: "1"}
    assert first["versions"] == 1
    assert first["result"]["mlflow_run_id"] == history["runs"]["101"]
    assert first["result"]["flower_run_id"] == "101" and first["result"]["dag_run_id"] == "dag-101"
    assert set(first["result"]["holdout"]) == set(SITES3)


def test_a_model_worse_at_one_site_becomes_challenger(history):
    worse = history["steps"]["worse"]
    assert str(worse["result"]["version"]) == "2"
    assert worse["result"]["alias"] == CHALLENGER
    assert worse["result"]["previous_champion"] == "1"
    assert "plant_b" in worse["result"]["reason"]
    assert "plant_a" not in worse["result"]["reason"] and "plant_c" not in worse["result"]["reason"]
    assert worse["aliases"] == {CHAMPION: "1", CHALLENGER: "2"}


def test_promoting_the_same_flower_run_again_registers_nothing_new(history):
    retry = history["steps"]["retry first"]
    assert retry["versions"] == 2
    assert str(retry["result"]["version"]) == "1"
    assert retry["aliases"][CHAMPION] == "1"

    retry_worse = history["steps"]["retry worse"]
    assert retry_worse["versions"] == 2
    assert str(retry_worse["result"]["version"]) == "2"
    assert retry_worse["result"]["alias"] == CHALLENGER
    assert retry_worse["aliases"] == {CHAMPION: "1", CHALLENGER: "2"}


def test_promoting_the_champions_run_again_keeps_it_champion(history):
    retry = history["steps"]["retry first"]
    assert retry["result"]["alias"] == CHAMPION, retry["result"]["reason"]
    assert retry["aliases"] == {CHAMPION: "1", CHALLENGER: "2"}


def test_a_better_model_becomes_champion(history):
    better = history["steps"]["better"]
    assert str(better["result"]["version"]) == "3"
    assert better["result"]["alias"] == CHAMPION
    assert better["result"]["previous_champion"] == "1"
    assert better["aliases"][CHAMPION] == "3"


def test_evidence_against_a_former_champion_makes_a_challenger(history):
    stale = history["steps"]["stale"]
    assert str(stale["result"]["version"]) == "2"
    assert stale["result"]["alias"] == CHALLENGER
    assert stale["result"]["previous_champion"] == "3"
    # Decided by the stale comparison, not by the numbers (which compare against v1).
    assert stale["result"]["reason"] == "the champion moved to version 3 after this run compared against 1"
    assert stale["aliases"] == {CHAMPION: "3", CHALLENGER: "2"}
    assert stale["versions"] == 3


def test_versions_carry_lineage_and_decision_tags(history):
    client = history["client"]
    expected = {"1": "101", "2": "102", "3": "103"}
    for version, flower_run in expected.items():
        mv = client.get_model_version(GLOBAL_MODEL, version)
        assert mv.run_id == history["runs"][flower_run]
        assert mv.tags[TAG_FLOWER_RUN] == flower_run
        assert mv.tags[TAG_DAG_RUN] == f"dag-{flower_run}"
    # The decision of each version's latest promotion.
    for version, label in (("2", "stale"), ("3", "better")):
        mv = client.get_model_version(GLOBAL_MODEL, version)
        result = history["steps"][label]["result"]
        assert mv.tags[TAG_DECISION] == result["alias"]
        assert mv.tags[TAG_REASON] == result["reason"]


def test_the_champion_state_is_the_promoted_model(history):
    version, state = load_champion_state(GLOBAL_MODEL)
    assert version == "3"
    expected = build_model(seed=103).state_dict()
    assert list(state) == list(expected)
    for name, value in expected.items():
        assert torch.equal(state[name], value)


def test_a_model_without_champion_has_no_state(history):
    assert load_champion_state("no-such-model") == (None, None)
    assert aliases_of(history["client"], "no-such-model") == {}


def test_promoting_an_unknown_flower_run_fails(history):
    with pytest.raises(LookupError, match="mledge.flower_run_id=999"):
        promote("999")
    assert find_run(history["client"], "103").info.run_id == history["runs"]["103"]


def test_each_version_describes_itself_with_a_model_card(history):
    """The description says why the version has its alias, what it was compared with, and its scores per site."""
    client = history["client"]
    stale = client.get_model_version(GLOBAL_MODEL, "2").description
    assert stale.startswith(f"### {GLOBAL_MODEL} v2: {CHALLENGER}")
    assert "the champion moved to version 3 after this run compared against 1" in stale
    assert "Flower run 102" in stale and "`dag-102`" in stale
    # plant_b's row: this version's F1 against the champion it was compared with (v1)
    row = next(line for line in stale.splitlines() if line.startswith("| plant_b |") and "/" in line)
    assert row.split("|")[2].strip() == "0.450 / 0.500"
    assert "champion v1" in stale
    first = client.get_model_version(GLOBAL_MODEL, "1").description
    assert "no champion" in first and "0.500 / –" in first
    assert "No site failed" in first
