"""The platform's half of a drift evaluation: from a site's p-values to decisions, alerts and processed marks.

A site measures (mledge/onsite/drift_evaluation.py) and hands over, per *unit* (one batch, or several small
batches pooled), p-values, counts and statistics, never rows. Here each unit gets one of four outcomes:

- ``insufficient_data``: the site found too few rows or too few expected failures to decide anything. No alarm,
  nothing recorded as an alert, and the batches are **not** marked processed: the site pools them with its next
  batch in the next evaluation.
- ``label_rate_anomaly``: the batch arrived without its failures: no rows at all, or at most
  ``LABEL_LOSS_SHARE`` of the failures its scores imply, significantly fewer (simulated lower tail at most
  ``LABEL_LOSS_LEVEL``; a broken export, not the machines). The site applies the same rule, so a batch too small
  for the drift tests that lost its labels comes as "labels_lost" and is decided at once instead of being pooled.
  Recorded as a ``label_rate`` alert (decision ``anomaly``) for a person; the concept tests are not decided on
  such labels (no concept alert) and the unit starts no retraining; its data tests, if any, are still recorded.
- ``drift`` / ``no_drift``: the data family (one test per column) and the concept family (false negatives, false
  positives) are each corrected on their own (drift/correction.py) and decided; a drift in either is a drift.

A unit's alerts and the processed marks of its batches land in one transaction (drift/tracking.py), and the
processed mark keeps the unit's concept decision and champion: batches the champion handled without concept
drift become part of its calibration reference (drift/history.py), which makes the concept test sharper over
time. Metrics go to the site's MLflow timeline with the unit's last batch number as step (``publish``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from drift.alerts import AlertStore
from drift.correction import DEFAULT_ALPHA, correct
from drift.history import champion_key
from drift.tracking import ProcessedBatches
from mledge.contracts import LABEL_LOSS_LEVEL, LABEL_LOSS_SHARE, TAG_DRIFT, TAG_DRIFT_CHAMPION

# publish(site=, batch=, evaluation_id=, document=, metrics=, tags=, reports=, step=) -> {"report_uri", ...}
Publisher = Callable[..., dict]

INSUFFICIENT, LABEL_ANOMALY, DRIFT, NO_DRIFT = "insufficient_data", "label_rate_anomaly", "drift", "no_drift"
OUTCOMES = (DRIFT, NO_DRIFT, INSUFFICIENT, LABEL_ANOMALY)
CONCEPT_TESTS = ("false_negatives", "false_positives")


def _data_decision(data: Mapping[str, Any], alpha: float, n_sites: int) -> dict:
    correction = correct({c: e["p_value"] for c, e in data["columns"].items()}, alpha, n_sites, family="data")
    tests = correction["tests"]
    columns = {
        col: {**entry, **{k: tests[col][k] for k in ("adjusted_p_value", "drift")}}
        for col, entry in data["columns"].items()
    }
    drifted = [c for c, e in columns.items() if e["drift"]]
    return {
        "decision": DRIFT if drifted else NO_DRIFT,
        "statistic": data["share_drifted"],  # share of tested columns with p < alpha (uncorrected)
        "p_value": min((e["adjusted_p_value"] for e in columns.values()), default=1.0),
        "drifted_columns": drifted,
        "not_computed": {c: e.get("reason") for c, e in columns.items() if not e["computed"]},
        "columns": columns,
        "correction": {k: v for k, v in correction.items() if k != "tests"},
    }


def _label_rate_decision(label: Mapping[str, Any] | None) -> dict | None:
    """Labels lost: the same rule as the site's (``mledge.onsite.concept_drift.labels_lost``)."""
    if label is None:
        return None
    share, p = label.get("share"), label.get("p_value")
    anomaly = share is not None and p is not None and share <= LABEL_LOSS_SHARE and p <= LABEL_LOSS_LEVEL
    return {**label, "decision": "anomaly" if anomaly else "normal", "level": LABEL_LOSS_LEVEL,
            "max_share": LABEL_LOSS_SHARE}


def _concept_decision(concept: Mapping[str, Any], alpha: float, n_sites: int) -> dict:
    tests = concept["tests"]
    p_values = {name: tests[name]["p_value"] if tests[name]["computed"] else None for name in CONCEPT_TESTS}
    correction = correct(p_values, alpha, n_sites, family="concept")
    decided = {
        name: {**tests[name], **{k: correction["tests"][name][k] for k in ("adjusted_p_value", "drift")}}
        for name in CONCEPT_TESTS
    }
    fired = [name for name, t in decided.items() if t["drift"]]
    summary = {k: v for k, v in concept.items() if not k.startswith("bin_") and k != "tests"}
    computed = [t["adjusted_p_value"] for t in decided.values() if t["computed"]]
    return {
        **summary,
        "tests": decided,
        "drifted_tests": fired,
        "raw_p_value": concept.get("p_value"),
        "p_value": min(computed) if computed else None,
        "decision": DRIFT if fired else NO_DRIFT,
        "correction": {k: v for k, v in correction.items() if k != "tests"},
    }


def decide_batch(
    data: Mapping[str, Any] | None,
    concept: Mapping[str, Any] | None,
    alpha: float = DEFAULT_ALPHA,
    n_sites: int = 1,
    *,
    status: str = "measured",
    label_rate: Mapping[str, Any] | None = None,
    reason: str | None = None,
) -> dict:
    """Decide one unit (a batch or a pool of batches) from the site's measurement.

    ``status``: the site's verdict on the unit: "measured", "insufficient_data" (too little to decide), "empty"
    (no rows) or "labels_lost" (too little for the drift tests, failures missing). ``label_rate``: observed
    against expected failures (default: the concept measurement's).
    Returns ``{"outcome", "drift", "data", "concept", "label_rate", "reason"}``.
    """
    if status == INSUFFICIENT:
        return {"outcome": INSUFFICIENT, "drift": False, "data": None, "concept": None, "label_rate": None,
                "reason": reason or "too little data to decide: waits to be pooled with the next batch"}
    if status == "empty":
        empty = {"observed": 0, "expected": None, "share": 0.0, "p_value": None, "decision": "anomaly",
                 "reason": "the batch has no rows"}
        return {"outcome": LABEL_ANOMALY, "drift": False, "data": None, "concept": None, "label_rate": empty,
                "reason": reason or "the batch has no rows"}
    label = label_rate if label_rate is not None else (concept or {}).get("label_rate")
    label_decision = _label_rate_decision(label)
    if status == "labels_lost":
        if label_decision is None or label_decision["decision"] != "anomaly":
            raise ValueError(f"a unit reported as labels_lost must carry a label rate that says so, got {label!r}")
        return {"outcome": LABEL_ANOMALY, "drift": False, "data": None, "concept": None, "label_rate": label_decision,
                "reason": "far fewer failures than the scores imply: labels lost?"}
    if status != "measured":
        raise ValueError(f"unknown unit status {status!r}")
    data_decision = _data_decision(data, alpha, n_sites) if data is not None else None
    concept_decision = None
    labels_lost = label_decision is not None and label_decision["decision"] == "anomaly"
    if concept is not None and not labels_lost:
        concept_decision = _concept_decision(concept, alpha, n_sites)
    # Lost labels make the batch suspect as a whole: its alerts are recorded for a person, but it starts nothing
    # (a data "drift" of a batch whose failure rows went missing is the loss itself).
    drift = not labels_lost and any(d is not None and d["decision"] == DRIFT for d in (data_decision, concept_decision))
    outcome = LABEL_ANOMALY if labels_lost else DRIFT if drift else NO_DRIFT
    return {
        "outcome": outcome,
        "drift": drift,
        "data": data_decision,
        "concept": concept_decision,
        "label_rate": label_decision,
        "reason": reason if not labels_lost else "far fewer failures than the scores imply: labels lost?",
    }


def batch_metrics(decision: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one decided unit, as MLflow metrics (the site's timeline)."""
    metrics: dict[str, float] = {
        "drift": float(decision["drift"]),
        "insufficient_data": float(decision["outcome"] == INSUFFICIENT),
        "label_rate_anomaly": float(decision["outcome"] == LABEL_ANOMALY),
    }
    if data := decision.get("data"):
        columns = data["columns"]
        metrics.update({f"data_p_value.{c}": e["p_value"] for c, e in columns.items() if e["computed"]})
        metrics.update({f"data_adjusted_p_value.{c}": e["adjusted_p_value"] for c, e in columns.items()})
        metrics["data_drift"] = float(data["decision"] == DRIFT)
        metrics["data_share_drifted"] = data["statistic"]
    if concept := decision.get("concept"):
        metrics["concept_drift"] = float(concept["decision"] == DRIFT)
        for name, test in concept["tests"].items():
            metrics[f"concept_{name}_observed"] = test["observed"]
            metrics[f"concept_{name}_expected"] = test["expected"]
            if test["computed"]:
                metrics[f"concept_{name}_p_value"] = test["p_value"]
                metrics[f"concept_{name}_adjusted_p_value"] = test["adjusted_p_value"]
        metrics["concept_excess_failure_rate"] = concept["statistic"]
        if concept.get("current_failure_rate") is not None:
            metrics["concept_current_failure_rate"] = concept["current_failure_rate"]
        metrics["concept_reference_failure_rate"] = concept["reference_failure_rate"]
    if label := decision.get("label_rate"):
        if label.get("share") is not None:
            metrics["label_rate_share"] = label["share"]
        if label.get("p_value") is not None:
            metrics["label_rate_p_value"] = label["p_value"]
    return {k: float(v) for k, v in metrics.items() if v is not None}


def _record(
    alerts: AlertStore, tracker: ProcessedBatches, site: str, unit: Mapping[str, Any], decision: Mapping[str, Any],
    common: Mapping[str, Any], published: Mapping[str, Any],
) -> list[int]:
    """The unit's alerts and its batches' processed marks, in one transaction: both land, or neither."""
    links = {k: v for k, v in published.items() if k != "report_uri"}
    name, report = unit["name"], published.get("report_uri")
    details = {**common, **links, "batches": list(unit["batches"])}
    ids = []
    with alerts.engine.begin() as conn:
        if data := decision["data"]:
            ids.append(alerts.add(
                site=site, batch=name, kind="data", statistic=data["statistic"], p_value=data["p_value"],
                decision=data["decision"], report_uri=report, connection=conn,
                details={**details, "columns": data["columns"], "drifted_columns": data["drifted_columns"],
                         "not_computed": data["not_computed"], "correction": data["correction"]},
            )["id"])
        if concept := decision["concept"]:
            ids.append(alerts.add(
                site=site, batch=name, kind="concept", statistic=concept["statistic"], p_value=concept["p_value"],
                decision=concept["decision"], report_uri=report, connection=conn,
                details={**details, **concept, "label_rate": decision["label_rate"]},
            )["id"])
        if (label := decision["label_rate"]) and label["decision"] == "anomaly":
            ids.append(alerts.add(
                site=site, batch=name, kind="label_rate", statistic=label.get("share"),
                p_value=label.get("p_value"), decision="anomaly", report_uri=report, connection=conn,
                details={**details, **label, "reason": decision["reason"]},
            )["id"])
        concept = decision["concept"]
        evaluation = {
            "evaluation_id": common["evaluation_id"],
            "unit": name,
            "outcome": decision["outcome"],
            "drift": decision["drift"],
            "concept": concept["decision"] if concept else None,
            "champion": champion_key(common.get("champion")),
            "label_rate_share": (decision["label_rate"] or {}).get("share"),
            "alert_ids": ids,
        }
        tracker.mark(site, unit["batches"], evaluation=evaluation, connection=conn)
    return ids


def _step(unit: Mapping[str, Any]) -> int:
    """The unit's place on the site's timeline: its last batch's number."""
    return int(str(unit["batches"][-1]).rsplit("-", 1)[-1])


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
    """Decide each measured unit, publish its reports, record its alerts and mark its batches processed.

    ``plan`` and ``results`` (unit name -> the site's measurement) come from the site's workspace; units whose
    batches are all marked processed already are skipped, so a retry records nothing twice. An insufficient
    unit is reported under ``waiting`` and left unmarked. ``publish=None`` keeps the reports at the site (their
    local path becomes the report URI).
    Returns ``{"site", "drift", "data_drift", "concept_drift", "label_rate_anomaly", "alerts", "batches",
    "waiting", "evaluation_id", ...}``.
    """
    if plan is None:
        return {
            "site": site, "drift": False, "data_drift": False, "concept_drift": False, "label_rate_anomaly": False,
            "alerts": [], "batches": {}, "waiting": [], "evaluation_id": None,
            "note": "nothing to decide: no evaluation was planned",
        }
    done = tracker.processed(site)
    created: list[dict] = []
    batches: dict[str, dict] = {}
    waiting: list[dict] = []
    drifted = False  # a unit whose labels were lost starts nothing, whatever its data tests found
    units = plan.get("units") or [{"name": b, "batches": [b]} for b in plan["unprocessed"]]
    for unit in units:
        if all(b in done for b in unit["batches"]) or unit["name"] not in results:
            continue
        result = results[unit["name"]]
        decision = decide_batch(
            result.get("data"), result.get("concept"), alpha, n_sites,
            status=result.get("status", "measured"), label_rate=result.get("label_rate"),
            reason=result.get("reason"),
        )
        common = {
            "evaluation_id": plan["evaluation_id"],
            "reference": plan["reference"],
            "reference_source": plan["reference_source"],
            "calibration": plan.get("calibration", []),
            "champion": plan["champion"],
            "outcome": decision["outcome"],
        }
        data = result.get("data") or {}
        reports = {"html": data.get("html"), "json": data.get("json")}
        published: dict = {"report_uri": reports["html"], "report_json_uri": reports["json"]}
        if publish is not None:
            champion = plan["champion"]
            published = publish(
                site=site,
                batch=unit["name"],
                evaluation_id=plan["evaluation_id"],
                document={**decision, **common, "batches": unit["batches"]},
                reports=reports,
                metrics=batch_metrics(decision),
                step=_step(unit),
                tags={
                    TAG_DRIFT: str(decision["drift"]).lower(),
                    TAG_DRIFT_CHAMPION: f"{champion['name']}/{champion['version']}" if champion else "",
                },
            )
        summary = {
            "outcome": decision["outcome"],
            "drift": decision["drift"],
            "data": decision["data"]["decision"] if decision["data"] else None,
            "concept": decision["concept"]["decision"] if decision["concept"] else None,
            "label_rate": decision["label_rate"]["decision"] if decision["label_rate"] else None,
            "drifted_columns": decision["data"]["drifted_columns"] if decision["data"] else [],
            "batches": list(unit["batches"]),
        }
        if decision["outcome"] == INSUFFICIENT:
            waiting.append({"unit": unit["name"], "batches": list(unit["batches"]), "reason": decision["reason"]})
            batches[unit["name"]] = summary
            continue
        ids = _record(alerts, tracker, site, unit, decision, common, published)
        created.extend(alerts.get(i) for i in ids)
        batches[unit["name"]] = summary
        drifted = drifted or decision["drift"]
    found = {kind: any(a["kind"] == kind and a["decision"] in (DRIFT, "anomaly") for a in created)
             for kind in ("data", "concept", "label_rate")}
    return {
        "site": site,
        "evaluation_id": plan["evaluation_id"],
        "drift": drifted,
        "data_drift": found["data"],
        "concept_drift": found["concept"],
        "label_rate_anomaly": found["label_rate"],
        "alerts": created,
        "batches": batches,
        "waiting": waiting,
        "already_processed": [b for b in plan["unprocessed"] if b in done],
        "concept_skipped": plan.get("concept_skipped"),
    }
