"""The platform's half of a drift evaluation: from a site's p-values to decisions, alerts and processed marks.

A site measures (mledge/onsite/drift_evaluation.py) and hands over p-values and statistics per batch; here they
are corrected together (drift/correction.py), decided, published through the site's ``publish`` callback (which
logs the site's reports), and recorded: a batch's alerts and its "processed" mark land in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from drift.alerts import AlertStore
from drift.correction import DEFAULT_ALPHA, correct
from drift.tracking import ProcessedBatches
from mledge.contracts import TAG_DRIFT, TAG_DRIFT_CHAMPION

# publish(site=, batch=, evaluation_id=, document=, metrics=, tags=, reports=) -> {"report_uri", ...}
Publisher = Callable[..., dict]


def decide_batch(
    data: Mapping[str, Any], concept: Mapping[str, Any] | None, alpha: float = DEFAULT_ALPHA, n_sites: int = 1
) -> dict:
    """Correct the batch's p-values together (data columns and concept test) and decide each kind."""
    p_values = {f"data:{col}": entry["p_value"] for col, entry in data["columns"].items()}
    if concept is not None:
        p_values["concept"] = concept["p_value"]
    correction = correct(p_values, alpha=alpha, n_sites=n_sites)
    tests = correction["tests"]
    columns = {
        col: {**entry, **{k: tests[f"data:{col}"][k] for k in ("adjusted_p_value", "drift")}}
        for col, entry in data["columns"].items()
    }
    drifted = [c for c, e in columns.items() if e["drift"]]
    data_decision = {
        "decision": "drift" if drifted else "no_drift",
        "statistic": data["share_drifted"],  # Evidently's share of drifted columns (uncorrected)
        "p_value": min((e["adjusted_p_value"] for e in columns.values()), default=1.0),
        "drifted_columns": drifted,
        "columns": columns,
    }
    concept_decision = None
    if concept is not None:
        test = tests["concept"]
        concept_decision = {
            **{k: v for k, v in concept.items() if not k.startswith("bin_")},
            "raw_p_value": concept["p_value"],
            "p_value": test["adjusted_p_value"],
            "decision": "drift" if test["drift"] else "no_drift",
        }
    correction_summary = {k: v for k, v in correction.items() if k != "tests"}
    return {
        "drift": correction["drift"],
        "data": data_decision,
        "concept": concept_decision,
        "correction": correction_summary,
    }


def batch_metrics(decision: Mapping[str, Any]) -> dict[str, float]:
    columns = decision["data"]["columns"]
    metrics = {f"data_p_value.{c}": e["p_value"] for c, e in columns.items()}
    metrics.update({f"data_adjusted_p_value.{c}": e["adjusted_p_value"] for c, e in columns.items()})
    metrics["data_share_drifted"] = decision["data"]["statistic"]
    if decision["concept"]:
        concept = decision["concept"]
        metrics.update(
            {
                "concept_p_value": concept["raw_p_value"],
                "concept_adjusted_p_value": concept["p_value"],
                "concept_excess_error_rate": concept["statistic"],
                "concept_current_error_rate": concept["current_error_rate"],
                "concept_reference_error_rate": concept["reference_error_rate"],
            }
        )
    return metrics


def _record(
    alerts: AlertStore, tracker: ProcessedBatches, site: str, batch: str, decision: Mapping[str, Any],
    common: Mapping[str, Any], published: Mapping[str, Any],
) -> list[int]:
    """The batch's alerts and its processed mark, in one transaction: both land, or neither."""
    links = {k: v for k, v in published.items() if k != "report_uri"}
    data = decision["data"]
    with alerts.engine.begin() as conn:
        ids = [
            alerts.add(
                site=site, batch=batch, kind="data", statistic=data["statistic"], p_value=data["p_value"],
                decision=data["decision"], report_uri=published["report_uri"],
                details={**common, **links, "columns": data["columns"], "drifted_columns": data["drifted_columns"]},
                connection=conn,
            )["id"]
        ]
        if concept := decision["concept"]:
            ids.append(
                alerts.add(
                    site=site, batch=batch, kind="concept", statistic=concept["statistic"],
                    p_value=concept["p_value"], decision=concept["decision"], report_uri=published["report_uri"],
                    details={**common, **links, **concept}, connection=conn,
                )["id"]
            )
        evaluation = {"evaluation_id": common["evaluation_id"], "drift": decision["drift"], "alert_ids": ids}
        tracker.mark(site, [batch], evaluation=evaluation, connection=conn)
    return ids


def decide(
    site: str,
    plan: Mapping[str, Any] | None,
    results: Mapping[str, Mapping[str, Any]],
    alerts: AlertStore,
    tracker: ProcessedBatches,
    *,
    alpha: float = DEFAULT_ALPHA,
    n_sites: int = 1,
    publish: Publisher | None = None,
) -> dict:
    """Decide each measured batch, publish its reports, record its alerts and mark it processed.

    ``plan`` and ``results`` (batch -> the site's measurement) come from the site's workspace; batches already
    marked processed are skipped, so a retry records nothing twice. ``publish=None`` keeps the reports at the
    site (their local path becomes the report URI).
    Returns ``{"site", "drift", "data_drift", "concept_drift", "alerts", "batches", "evaluation_id", ...}``.
    """
    if plan is None:
        return {
            "site": site, "drift": False, "data_drift": False, "concept_drift": False, "alerts": [], "batches": {},
            "evaluation_id": None, "note": "nothing to decide: no evaluation was planned",
        }
    done = tracker.processed(site)
    created: list[dict] = []
    batches: dict[str, dict] = {}
    for batch in [b for b in plan["unprocessed"] if b not in done]:
        result = results[batch]
        decision = decide_batch(result["data"], result["concept"], alpha, n_sites)
        common = {
            "evaluation_id": plan["evaluation_id"],
            "reference": plan["reference"],
            "reference_source": plan["reference_source"],
            "champion": plan["champion"],
            "correction": decision["correction"],
        }
        reports = {"html": result["data"]["html"], "json": result["data"]["json"]}
        published: dict = {"report_uri": reports["html"], "report_json_uri": reports["json"]}
        if publish is not None:
            champion = plan["champion"]
            published = publish(
                site=site,
                batch=batch,
                evaluation_id=plan["evaluation_id"],
                document={**decision, **common},
                reports=reports,
                metrics=batch_metrics(decision),
                tags={
                    TAG_DRIFT: str(decision["drift"]).lower(),
                    TAG_DRIFT_CHAMPION: f"{champion['name']}/{champion['version']}" if champion else "",
                },
            )
        ids = _record(alerts, tracker, site, batch, decision, common, published)
        created.extend(alerts.get(i) for i in ids)
        batches[batch] = {
            "drift": decision["drift"],
            "data": decision["data"]["decision"],
            "concept": decision["concept"]["decision"] if decision["concept"] else None,
            "drifted_columns": decision["data"]["drifted_columns"],
        }
    data_drift_found = any(a["kind"] == "data" and a["decision"] == "drift" for a in created)
    concept_drift_found = any(a["kind"] == "concept" and a["decision"] == "drift" for a in created)
    return {
        "site": site,
        "evaluation_id": plan["evaluation_id"],
        "drift": data_drift_found or concept_drift_found,
        "data_drift": data_drift_found,
        "concept_drift": concept_drift_found,
        "alerts": created,
        "batches": batches,
        "already_processed": [b for b in plan["unprocessed"] if b in done],
        "concept_skipped": plan["concept_skipped"],
    }
