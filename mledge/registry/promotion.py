"""The MLflow registry side: names, lineage tags, and the promotion gate.

The ServerApp logs a run and its model; ``promote`` (called by the DAG) registers that model as a new version of
``global-axis_failures-federated`` and gives it alias ``champion`` only if, on every site's held-out rows, it is
at least as good as the current champion; otherwise alias ``challenger``. The comparison itself was computed at
the sites during the run (``promotion/evidence.json``): this module only reads the numbers.

Each site's personalised model (the global model fine-tuned on the site's recent batches) becomes a version of
``<site>-axis_failures-federated`` and takes ``champion`` only if it beats that model's current champion on the
site's recent held-out rows by ``site_margin``. Every version carries its lineage as tags: DAG run, Flower run,
strategy, data window per site, and the drift alerts that triggered the training. ``rollback`` moves
``champion`` back to the version that was champion before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from fl.protocol import PromotionEvidence
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
    TAG_MODEL_FAMILY,
    TAG_MODEL_RUN,
    TAG_MODEL_URI,
    TAG_PREVIOUS_CHAMPION,
    TAG_PRIVACY,
    TAG_REASON,
    TAG_SITE,
    TAG_STRATEGY,
    TAG_THRESHOLD,
    data_window_tag,
    site_model_name,
    site_model_run_tag,
    site_model_tag,
)
from mledge.registry.model_card import global_card, site_card

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
    """(version, arrays) of the model's current champion, or (None, None) when it has none. The arrays as the
    model travels to the sites: a torch state dict (pytorch flavour) or a booster's ``{"0": uint8 JSON}``
    (xgboost flavour), whichever family the champion is of."""
    import mlflow

    version = aliases_of(mlflow.MlflowClient(), name).get(CHAMPION)
    if version is None:
        return None, None
    uri = f"models:/{name}/{version}"
    if "xgboost" in mlflow.models.get_model_info(uri).flavors:
        import numpy as np

        booster = mlflow.xgboost.load_model(uri)
        raw = bytes(booster.save_raw("json"))
        return version, {"0": np.frombuffer(raw, dtype=np.uint8).copy()}
    loaded = mlflow.pytorch.load_model(uri)
    return version, dict(loaded.state_dict() if callable(loaded.state_dict) else loaded.state_dict)


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


def read_evidence(run: Any) -> PromotionEvidence:
    """The promotion evidence the ServerApp logged with a run."""
    import mlflow

    return PromotionEvidence.from_dict(mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{EVIDENCE_PATH}"))


def _register(client: Any, name: str, model_uri: str, run_id: str, tags: Mapping[str, str]) -> str:
    """Register ``model_uri`` once per (model, run): a retried task finds the version it made before."""
    import mlflow

    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        return str(existing[0].version)  # the registry hands versions back as int or str depending on the store
    return str(mlflow.register_model(model_uri, name, tags=dict(tags)).version)


def _apply(client: Any, name: str, version: str, decision: Decision, champion_now: str | None) -> None:
    if decision.alias == CHAMPION and champion_now and champion_now != version:
        client.set_model_version_tag(name, version, TAG_PREVIOUS_CHAMPION, champion_now)
    client.set_registered_model_alias(name, decision.alias, version)
    client.set_model_version_tag(name, version, TAG_DECISION, decision.alias)
    client.set_model_version_tag(name, version, TAG_REASON, decision.reason)


def _gate(
    version: str,
    champion_now: str | None,
    compared: str | None,
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    metric: str,
    margin: float,
) -> Decision:
    if champion_now == version:
        return Decision(CHAMPION, "already champion")
    if champion_now is not None and champion_now != compared:
        return Decision(
            CHALLENGER, f"the champion moved to version {champion_now} after this run compared against {compared}"
        )
    return decide_promotion(candidate, champion if champion_now else None, metric, margin)


def promote(
    flower_run_id: str,
    name: str = GLOBAL_MODEL,
    metric: str = "f1",
    margin: float = 0.0,
    site_margin: float = 0.0,
    drift_alerts: str = "",
) -> dict:
    """Register the global and per-site models of a Flower run and move the aliases by the gates."""
    import mlflow

    client = mlflow.MlflowClient()
    run = find_run(client, flower_run_id)
    tags = run.data.tags
    evidence = read_evidence(run)
    sites = evidence.sites
    lineage = {
        TAG_FLOWER_RUN: flower_run_id,
        TAG_DAG_RUN: tags.get(TAG_DAG_RUN, ""),
        TAG_STRATEGY: tags.get(TAG_STRATEGY, ""),
        TAG_DRIFT_ALERTS: drift_alerts or "none",
        # the model's family and the decision threshold it is read at (chosen at the sites, fl/thresholds.py)
        **{k: tags[k] for k in (TAG_MODEL_FAMILY, TAG_THRESHOLD) if k in tags},
        # the run's privacy mode and (epsilon, delta), when it had one (fl/privacy/server.py)
        **{k: v for k, v in tags.items() if k == TAG_PRIVACY or k.startswith(f"{TAG_PRIVACY}.")},
    }

    global_tags = {**lineage, **{data_window_tag(s): e.data_window for s, e in sites.items() if e.data_window}}
    # A model's own run (the ServerApp logs each model apart: mledge.contracts.GLOBAL_MODELS_EXPERIMENT); runs of
    # earlier releases logged it in the training run itself.
    version = _register(client, name, tags[TAG_MODEL_URI], tags.get(TAG_MODEL_RUN, run.info.run_id), global_tags)
    champion_now = aliases_of(client, name).get(CHAMPION)
    decision = _gate(
        version,
        champion_now,
        evidence.champion_version,
        evidence.metric("candidate", metric),
        evidence.metric("champion", metric),
        metric,
        margin,
    )
    _apply(client, name, version, decision, champion_now)
    rounds = run.data.params.get("num-server-rounds", "")
    card = global_card(name, version, decision.alias, decision.reason, lineage, evidence, rounds)
    client.update_model_version(name, version, description=card)

    site_results = {}
    for site, entry in sorted(sites.items()):
        uri = tags.get(site_model_tag(site))
        if not uri or not entry.personal:
            continue
        site_name = site_model_name(site)
        site_tags = {**lineage, TAG_SITE: site, data_window_tag(site): entry.recent_window}
        model_run = tags.get(site_model_run_tag(site), run.info.run_id)
        site_version = _register(client, site_name, uri, model_run, site_tags)
        site_champion_now = aliases_of(client, site_name).get(CHAMPION)
        site_decision = _gate(
            site_version,
            site_champion_now,
            entry.site_champion_version,
            {site: float(entry.personal[metric])},
            {site: float(entry.site_champion[metric])} if entry.site_champion else {},
            metric,
            site_margin,
        )
        _apply(client, site_name, site_version, site_decision, site_champion_now)
        client.update_model_version(site_name, site_version, description=site_card(
            site_name, site_version, site_decision.alias, site_decision.reason, lineage, evidence, site, rounds))
        site_results[site] = {
            "registered_model": site_name,
            "version": site_version,
            "alias": site_decision.alias,
            "reason": site_decision.reason,
            "previous_champion": site_champion_now,
            "data_window": entry.recent_window,
        }

    return {
        "registered_model": name,
        "version": version,
        "alias": decision.alias,
        "reason": decision.reason,
        "previous_champion": champion_now,
        "mlflow_run_id": run.info.run_id,
        "flower_run_id": flower_run_id,
        "dag_run_id": tags.get(TAG_DAG_RUN, ""),
        "strategy": tags.get(TAG_STRATEGY, ""),
        "model_family": tags.get(TAG_MODEL_FAMILY, ""),
        "threshold": tags.get(TAG_THRESHOLD, ""),
        "drift_alerts": drift_alerts,
        "holdout": {site: asdict(entry) for site, entry in sites.items()},
        "site_models": site_results,
        "failures": evidence.failures,
    }


def rollback(name: str) -> dict:
    """Move ``champion`` of a registered model back to the version that was champion before the current one."""
    import mlflow

    client = mlflow.MlflowClient()
    current = aliases_of(client, name).get(CHAMPION)
    if current is None:
        raise LookupError(f"registered model {name!r} has no champion to roll back")
    previous = client.get_model_version(name, current).tags.get(TAG_PREVIOUS_CHAMPION)
    if not previous:
        raise LookupError(f"{name} version {current} records no previous champion: nothing to roll back to")
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_registered_model_alias(name, CHALLENGER, current)
    client.set_model_version_tag(name, current, TAG_DECISION, ROLLED_BACK)
    client.set_model_version_tag(name, current, TAG_REASON, f"rolled back: champion returned to version {previous}")
    return {"registered_model": name, "champion": previous, "rolled_back": current}
