"""Per-site personalised models: registration, their own gate with a margin, lineage tags, and rollback.

Against a real (local, SQLite) MLflow tracking store, with runs shaped as the ServerApp logs them.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pytest

from fl.model import build_model
from mledge.contracts import (
    CHALLENGER,
    CHAMPION,
    EVIDENCE_PATH,
    EXPERIMENT,
    GLOBAL_MODEL,
    ROLLED_BACK,
    TAG_DAG_RUN,
    TAG_DECISION,
    TAG_DRIFT_ALERTS,
    TAG_FLOWER_RUN,
    TAG_MODEL_URI,
    TAG_PREVIOUS_CHAMPION,
    TAG_STRATEGY,
    data_window_tag,
    site_model_name,
    site_model_tag,
)
from mledge.onsite.schema import N_FEATURES
from mledge.registry.promotion import aliases_of, promote, rollback

SITES = ("plant_a", "plant_b")
PIP = ["torch==2.13.0"]


def _m(f1):
    return {"loss": 0.3, "accuracy": 0.9, "recall": 0.7, "precision": 0.6, "f1": f1}


def _evidence(personal, site_champion=None, site_champion_version=None, last_batch=3):
    return {
        "champion_version": None,
        "sites": {
            site: {
                "candidate": _m(0.5),
                "champion": None,
                "num_examples": 400,
                "data_window": f"batch-000001:batch-{last_batch:06d}",
                "recent_window": f"batch-{last_batch - 2:06d}:batch-{last_batch:06d}",
                "recent_examples": 120,
                "personal": _m(score),
                "recent_global": _m(0.4),
                "site_champion": _m(site_champion[site]) if site_champion else None,
                "site_champion_version": (site_champion_version or {}).get(site),
            }
            for site, score in personal.items()
        },
        "failures": {},
    }


def _log_run(experiment_id, flower_run_id, evidence, seed):
    tags = {TAG_FLOWER_RUN: flower_run_id, TAG_DAG_RUN: f"dag-{flower_run_id}", TAG_STRATEGY: "fedqv-reputation"}
    example = np.zeros((2, N_FEATURES), np.float32)
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        mlflow.log_dict(evidence, EVIDENCE_PATH)
        info = mlflow.pytorch.log_model(
            build_model(seed=seed), name="model", input_example=example, pip_requirements=PIP
        )
        mlflow.set_tag(TAG_MODEL_URI, info.model_uri)
        for i, site in enumerate(evidence["sites"]):
            info = mlflow.pytorch.log_model(
                build_model(seed=seed + i + 1), name=f"site-{site}", input_example=example, pip_requirements=PIP
            )
            mlflow.set_tag(site_model_tag(site), info.model_uri)
    return run.info.run_id


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        mlflow.set_tracking_uri(uri)
        try:
            yield mlflow.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
        finally:
            mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def history(tracking):
    """1: first models (v1 champion everywhere). 2: plant_a beats its champion by 0.10, plant_b by only 0.01,
    with a site margin of 0.05 -> plant_a v2 champion, plant_b v2 challenger. Then plant_a is rolled back."""
    client = mlflow.MlflowClient()
    steps = {}
    _log_run(tracking, "201", _evidence({"plant_a": 0.5, "plant_b": 0.5}), seed=10)
    steps["first"] = promote("201", site_margin=0.05, drift_alerts="")
    _log_run(
        tracking,
        "202",
        _evidence({"plant_a": 0.6, "plant_b": 0.51}, {"plant_a": 0.5, "plant_b": 0.5}, {"plant_a": "1", "plant_b": "1"},
                  last_batch=7),
        seed=20,
    )
    steps["second"] = promote("202", site_margin=0.05, drift_alerts="7")
    steps["aliases_before_rollback"] = {s: aliases_of(client, site_model_name(s)) for s in SITES}
    steps["rollback"] = rollback(site_model_name("plant_a"))
    steps["aliases_after_rollback"] = aliases_of(client, site_model_name("plant_a"))
    return {"steps": steps, "client": client}


def test_each_site_gets_its_own_registered_model(history):
    first = history["steps"]["first"]["site_models"]
    assert set(first) == set(SITES)
    for site in SITES:
        assert first[site]["registered_model"] == f"{site}-axis_failures-federated"
        assert first[site]["version"] == "1" and first[site]["alias"] == CHAMPION


def test_a_site_model_must_beat_its_champion_by_the_margin(history):
    second = history["steps"]["second"]["site_models"]
    assert second["plant_a"]["alias"] == CHAMPION
    assert second["plant_b"]["alias"] == CHALLENGER
    assert "plant_b" in second["plant_b"]["reason"]
    assert history["steps"]["aliases_before_rollback"] == {
        "plant_a": {CHAMPION: "2"},
        "plant_b": {CHAMPION: "1", CHALLENGER: "2"},
    }


def test_site_versions_carry_lineage(history):
    client = history["client"]
    mv = client.get_model_version(site_model_name("plant_a"), "2")
    assert mv.tags[TAG_FLOWER_RUN] == "202"
    assert mv.tags[TAG_DAG_RUN] == "dag-202"
    assert mv.tags[TAG_STRATEGY] == "fedqv-reputation"
    assert mv.tags[TAG_DRIFT_ALERTS] == "7"
    assert mv.tags[data_window_tag("plant_a")] == "batch-000005:batch-000007"
    assert mv.tags[TAG_PREVIOUS_CHAMPION] == "1"
    glob = client.get_model_version(GLOBAL_MODEL, "2")
    assert glob.tags[data_window_tag("plant_b")] == "batch-000001:batch-000007"
    assert client.get_model_version(GLOBAL_MODEL, "1").tags[TAG_DRIFT_ALERTS] == "none"


def test_a_site_never_gets_another_sites_model(history):
    client = history["client"]
    for site in SITES:
        for mv in client.search_model_versions(f"name = '{site_model_name(site)}'"):
            assert mv.tags["mledge.site"] == site
            assert mv.source == client.get_run(mv.run_id).data.tags[site_model_tag(site)]


def test_rollback_returns_champion_to_the_previous_version(history):
    assert history["steps"]["rollback"] == {
        "registered_model": site_model_name("plant_a"),
        "champion": "1",
        "rolled_back": "2",
    }
    assert history["steps"]["aliases_after_rollback"] == {CHAMPION: "1", CHALLENGER: "2"}
    mv = history["client"].get_model_version(site_model_name("plant_a"), "2")
    assert mv.tags[TAG_DECISION] == ROLLED_BACK


def test_rollback_without_a_previous_champion_fails_clearly(history):
    with pytest.raises(LookupError, match="no previous champion"):
        rollback(site_model_name("plant_b"))
    with pytest.raises(LookupError, match="has no champion"):
        rollback("no-such-model")


def test_a_site_version_describes_itself_with_its_own_model_card(history):
    """Its recent window, its scores there beside the run's global model and its champion, and the alerts."""
    client = history["client"]
    card = client.get_model_version(site_model_name("plant_b"), "2").description
    assert card.startswith(f"### {site_model_name('plant_b')} v2: {CHALLENGER}")
    assert "`batch-000005:batch-000007`" in card
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in card.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() != "model"}
    assert rows == {"this version": "0.510", "the run's global model": "0.400", "champion v1": "0.500"}
    assert "**Drift alerts that caused it**: 7" in card
    assert "plant_a" not in card  # a site's card says nothing of another site
