"""The MLflow registry side: names, lineage tags, and the promotion gate.

The ServerApp logs a run and its model; ``promote`` (called by the DAG) registers that model as a new version of
``global-axis_failures-federated`` and gives it alias ``champion`` only if, on every site's held-out rows, it is
at least as good as the current champion; otherwise alias ``challenger``. The comparison itself was computed at
the sites during the run (``promotion/evidence.json``): this module only reads the numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fl.sites import USE_CASE

EXPERIMENT = f"{USE_CASE}-federated"
GLOBAL_MODEL = f"global-{USE_CASE}-federated"
CHAMPION = "champion"
CHALLENGER = "challenger"
EVIDENCE_PATH = "promotion/evidence.json"

TAG_FLOWER_RUN = "mledge.flower_run_id"
TAG_DAG_RUN = "mledge.dag_run_id"
TAG_MODEL_URI = "mledge.model_uri"
TAG_FAILED_SITES = "mledge.failed_sites"
TAG_DECISION = "mledge.promotion"
TAG_REASON = "mledge.promotion_reason"

# Which held-out metric decides, and whether higher is better.
GATE_METRICS = {"f1": True, "recall": True, "accuracy": True, "loss": False}


@dataclass(frozen=True)
class Decision:
    alias: str
    reason: str


def decide_promotion(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    metric: str = "f1",
    margin: float = 0.0,
) -> Decision:
    """The promotion gate, per site.

    ``candidate`` and ``champion`` map site -> held-out metric value; ``champion`` is None when the model has no
    champion yet. The candidate becomes champion when, at every site that scored the champion, it is at least as
    good (a tie promotes) by ``margin``; a site that scored the champion but not the candidate blocks promotion.
    """
    if champion is None:
        return Decision(CHAMPION, "first version: there was no champion")
    if not champion:
        return Decision(CHALLENGER, "no site scored the current champion, so nothing shows the new model is as good")
    higher_is_better = GATE_METRICS[metric]
    missing = sorted(s for s in champion if s not in candidate)
    if missing:
        return Decision(CHALLENGER, f"no held-out {metric} for the new model from {', '.join(missing)}")
    worse = []
    for site in sorted(champion):
        new, old = candidate[site], champion[site]
        ok = new >= old + margin if higher_is_better else new <= old - margin
        if not ok:
            worse.append(f"{site} ({metric} {new:.4f} vs champion {old:.4f})")
    if worse:
        return Decision(CHALLENGER, "worse than the champion at " + "; ".join(worse))
    return Decision(CHAMPION, f"at least as good as the champion on held-out {metric} at every site")


def site_metric(evidence: Mapping[str, Any], role: str, metric: str) -> dict[str, float]:
    """site -> metric of ``role`` ('candidate' or 'champion') from a run's promotion evidence."""
    return {
        site: float(entry[role][metric])
        for site, entry in evidence.get("sites", {}).items()
        if entry.get(role) is not None
    }


def aliases_of(client: Any, name: str) -> dict[str, str]:
    """alias -> version of a registered model; empty when the model does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def load_champion_state(name: str) -> tuple[str | None, dict | None]:
    """(version, torch state dict) of the model's current champion, or (None, None) when it has none."""
    import mlflow

    version = aliases_of(mlflow.MlflowClient(), name).get(CHAMPION)
    if version is None:
        return None, None
    return version, mlflow.pytorch.load_model(f"models:/{name}/{version}").state_dict()


def find_run(client: Any, flower_run_id: str, experiment: str = EXPERIMENT) -> Any:
    """The MLflow run the ServerApp logged for a Flower run."""
    exp = client.get_experiment_by_name(experiment)
    runs = (
        client.search_runs([exp.experiment_id], filter_string=f"tags.`{TAG_FLOWER_RUN}` = '{flower_run_id}'")
        if exp
        else []
    )
    if len(runs) != 1:
        raise LookupError(
            f"expected one MLflow run tagged {TAG_FLOWER_RUN}={flower_run_id} in experiment {experiment!r}, "
            f"found {len(runs)}"
        )
    return runs[0]


def promote(flower_run_id: str, name: str = GLOBAL_MODEL, metric: str = "f1", margin: float = 0.0) -> dict:
    """Register the model of a Flower run and move the aliases by the gate; returns what was done."""
    import mlflow

    client = mlflow.MlflowClient()
    run = find_run(client, flower_run_id)
    tags = run.data.tags
    evidence = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{EVIDENCE_PATH}")

    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
    if existing:  # a retried task must not register the same model twice
        version = existing[0]
    else:
        version = mlflow.register_model(
            tags[TAG_MODEL_URI],
            name,
            tags={TAG_FLOWER_RUN: flower_run_id, TAG_DAG_RUN: tags.get(TAG_DAG_RUN, "")},
        )
    version_id = str(version.version)  # the registry hands versions back as int or str depending on the store
    champion_now = aliases_of(client, name).get(CHAMPION)
    compared = evidence.get("champion_version")
    if champion_now == version_id:
        decision = Decision(CHAMPION, "already champion")
    elif champion_now is not None and champion_now != compared:
        decision = Decision(
            CHALLENGER, f"the champion moved to version {champion_now} after this run compared against {compared}"
        )
    else:
        champion_scores = site_metric(evidence, "champion", metric) if champion_now else None
        decision = decide_promotion(site_metric(evidence, "candidate", metric), champion_scores, metric, margin)

    client.set_registered_model_alias(name, decision.alias, version_id)
    client.set_model_version_tag(name, version_id, TAG_DECISION, decision.alias)
    client.set_model_version_tag(name, version_id, TAG_REASON, decision.reason)
    return {
        "registered_model": name,
        "version": version_id,
        "alias": decision.alias,
        "reason": decision.reason,
        "previous_champion": champion_now,
        "mlflow_run_id": run.info.run_id,
        "flower_run_id": flower_run_id,
        "dag_run_id": tags.get(TAG_DAG_RUN, ""),
        "holdout": evidence.get("sites", {}),
        "failures": evidence.get("failures", {}),
    }
