"""The per-site drift evaluation, run at the site: it reads only that site's store; only p-values, statistics
and the reports leave it (to the platform database and MLflow).

Four steps, one ``mledge drift`` command each (one Airflow task each, separate processes), that hand over
through a workspace in the site's store, ``<store>/drift/current/``:

1. ``plan_evaluation`` (check-unprocessed): the batches not yet evaluated, and the reference window: the
   batches named by the production model's tag ``mledge.data_window.<site>`` (``batch-000001:batch-000003``),
   else the batches before the first unevaluated one, else (nothing evaluated yet) the first three.
2. ``simulate``: the production model's errors on the reference window's held-out rows and on each batch, and
   the simulated null distribution of each batch's error count (concept_drift.py) -> ``<batch>/*.npz``.
3. ``evaluate``: the concept-drift p-value from the simulations, and the data-drift p-values (Evidently,
   data_drift.py) with the HTML and JSON report -> ``<batch>/result.json``.
4. decide: ``measured`` hands each batch's p-values to the platform's drift/decision.py (correction, alerts,
   "processed" marks), ``publish_reports`` logs the reports, then ``archive`` moves the workspace to
   ``<store>/drift/evaluations/<id>/``.

The production model is the ``champion`` of ``<site>-axis_failures-federated`` if that model has one, else of
``global-axis_failures-federated``. Without any champion the concept test is skipped (with the reason) and
data drift still runs. ``measure_batch`` measures one batch in memory (tests, benchmark).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import uuid
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mledge.contracts import (
    CHAMPION,
    DRIFT_ALPHA,
    DRIFT_BINS,
    DRIFT_SIMULATIONS,
    GLOBAL_MODEL,
    TAG_BATCH,
    TAG_DRIFT_EVALUATION,
    TAG_SITE,
    data_window_tag,
    drift_experiment,
    site_model_name,
)
from mledge.onsite.concept_drift import coverage, evaluate_p_value, generate_simulations, model_scores
from mledge.onsite.schema import COLUMNS, LABEL
from mledge.onsite.store import SiteDataError, batch_paths, is_held_out, read_batch

WORK_DIR = "drift"
CURRENT = "current"
ARCHIVE = "evaluations"
PLAN_FILE = "plan.json"
RESULT_FILE = "result.json"
SIMULATIONS_FILE = "concept-simulations.npz"
REPORT_NAME = "data_drift"
INITIAL_REFERENCE_BATCHES = 3
# The concept test's reference grows with the batches the champion handled without concept drift, up to these.
MAX_CALIBRATION_BATCHES = 20
# ... and once it holds this many rows (five batches of the default size: enough blocks to tell how batches vary)
# it replaces the held-out rows of the reference window.
MIN_CALIBRATION_ROWS = 5000
BATCH_ID = re.compile(r"batch-(\d{6,})")
# The tag of the one run per site that carries its drift metrics batch by batch (step = batch number).
TAG_DRIFT_TIMELINE = "mledge.drift_timeline"

def batch_id(path: Path | str) -> str:
    """``batch-000004`` for ``.../batches/batch-000004.csv``."""
    return Path(path).name.removesuffix(".csv")


def batch_number(name: str) -> int:
    match = BATCH_ID.fullmatch(batch_id(name))
    if not match:
        raise ValueError(f"{name!r} is not a batch name like batch-000004")
    return int(match.group(1))


def parse_window(value: str, available: Sequence[str], site: str, source: str) -> list[str]:
    """The batches of a ``batch-000001:batch-000003`` window (or a single batch); all must exist at the site."""
    parts = [p.strip() for p in str(value).split(":")]
    if len(parts) not in (1, 2) or not all(parts):
        raise SiteDataError(site, f"{source}: data window {value!r} is not 'batch-NNNNNN:batch-NNNNNN'")
    try:
        first, last = batch_number(parts[0]), batch_number(parts[-1])
    except ValueError as exc:
        raise SiteDataError(site, f"{source}: {exc}") from None
    if first > last:
        raise SiteDataError(site, f"{source}: data window {value!r} ends before it starts")
    wanted = [f"batch-{n:06d}" for n in range(first, last + 1)]
    missing = [b for b in wanted if b not in set(available)]
    if missing:
        raise SiteDataError(site, f"{source}: data window {value!r} names batches the site does not have: {missing}")
    return wanted


@dataclass(frozen=True)
class Champion:
    """The production model: which registered model and version, and the data window it was trained on."""

    name: str
    version: str
    data_window: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def find_champion(site: str) -> Champion | None:
    """The site's model's champion, else the global model's; None when neither has one."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    for name in (site_model_name(site), GLOBAL_MODEL):
        try:
            version = (client.get_registered_model(name).aliases or {}).get(CHAMPION)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                continue
            raise
        if version is not None:
            tags = client.get_model_version(name, version).tags or {}
            return Champion(name, str(version), tags.get(data_window_tag(site)))
    return None


def load_champion_model(champion: Champion) -> Any:
    """The champion (that exact version, not whatever the alias points at by now), of whichever model family."""
    from mledge.onsite.scoring import load_registered

    return load_registered(champion.name, champion.version)


def plan_evaluation(
    store: Path,
    site: str,
    processed: set[str],
    champion: Champion | None,
    initial_reference: int = INITIAL_REFERENCE_BATCHES,
    calibration: Sequence[str] = (),
) -> dict:
    """``{"site", "unprocessed", "reference", "reference_source", "calibration", "champion"}`` for the store.

    ``calibration``: batches the platform evaluated under this champion without concept drift (drift/history.py);
    those after the reference window that the site still has join the concept test's reference (all their
    rows: the champion never trained on them), the most recent ``MAX_CALIBRATION_BATCHES``.
    """
    batches = [batch_id(p) for p in batch_paths(store)]
    if champion is not None and champion.data_window:
        source = f"tag {data_window_tag(site)} of {champion.name} version {champion.version}"
        reference = parse_window(champion.data_window, batches, site, source)
        last = batch_number(reference[-1])
        # Batches up to the end of the window were training data: only later ones are evaluated.
        unprocessed = [b for b in batches if batch_number(b) > last and b not in processed]
    elif not processed:
        reference = batches[:initial_reference]
        unprocessed = batches[len(reference) :]
        source = f"the site's first {len(reference)} batches (nothing evaluated yet, no data window tag)"
    else:
        # Batches before the first evaluated one were the reference then: they are not waiting for evaluation.
        floor = min(batch_number(b) for b in processed)
        unprocessed = [b for b in batches if b not in processed and batch_number(b) > floor]
        first = batch_number(unprocessed[0]) if unprocessed else None
        reference = [b for b in batches if first is None or batch_number(b) < first]
        source = "the batches before the first unevaluated one (no data window tag)"
    end = batch_number(reference[-1]) if reference else 0
    usable = sorted(
        (b for b in set(calibration) if b in set(batches) and batch_number(b) > end and b not in unprocessed),
        key=batch_number,
    )
    return {
        "site": site,
        "unprocessed": unprocessed,
        "reference": reference,
        "reference_source": source,
        "calibration": usable[-MAX_CALIBRATION_BATCHES:] if champion is not None else [],
        "champion": champion.as_dict() if champion else None,
    }


def load_batch(store: Path, site: str, name: str) -> pd.DataFrame:
    """One batch of the store, validated; an empty batch (a header, no rows) comes back as an empty frame (it is
    a finding of its own, not a reason to stop the site's evaluation)."""
    path = Path(store) / "batches" / f"{name}.csv"
    try:
        return read_batch(site, path)
    except SiteDataError as exc:
        if exc.problem == "batch has no rows":
            return pd.DataFrame({c: pd.Series(dtype="float64" if c != "type" else "object") for c in COLUMNS})
        raise


def load_batches(store: Path, site: str, names: Sequence[str]) -> pd.DataFrame:
    """The named batches of a site's store, validated, in order."""
    folder = Path(store) / "batches"
    if not names:
        raise SiteDataError(site, "no batches to load (empty reference window?)", folder)
    return pd.concat([load_batch(store, site, n) for n in names], ignore_index=True)


# --- one unit, in memory ----------------------------------------------------------------------------------------


def unit_name(batches: Sequence[str]) -> str:
    """How a unit is named in alerts: its batch, or ``first:last`` for pooled batches."""
    return batches[0] if len(batches) == 1 else f"{batches[0]}:{batches[-1]}"


def unit_dir(name: str) -> str:
    return name.replace(":", "--")


def concept_simulations(
    model: Any | None,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    path: Path,
    *,
    calibration: pd.DataFrame | None = None,
    simulations: int = DRIFT_SIMULATIONS,
    bins: int = DRIFT_BINS,
    seed: int | list[int] = 0,
) -> dict:
    """The concept test's simulations for ``current`` -> ``path``; returns their summary.

    Reference rows: the held-out rows of the reference window plus every row of ``calibration`` (later batches
    the champion never trained on). Coverage (``concept_drift.coverage``) is judged against the whole reference
    window, the champion's training data. Without a model (``None``) only the label rate and the sufficiency checks
    are simulated, against the reference's failure rate.
    """
    from mledge.onsite.features import features

    held = reference[is_held_out(reference)]
    extra = calibration if calibration is not None and len(calibration) else None
    if extra is not None and len(extra) >= MIN_CALIBRATION_ROWS:
        # The champion's track record is the honest reference for how it does on later batches; its held-out rows
        # shared their spells with its training rows and flatter it.
        held = held.iloc[:0]
    ref_rows = held if extra is None else pd.concat([held, extra], ignore_index=True)
    ref_y, cur_y = ref_rows[LABEL].to_numpy(np.int64), current[LABEL].to_numpy(np.int64)
    if model is None:
        return generate_simulations(
            np.zeros(len(ref_rows)), ref_y, np.zeros(len(current)), cur_y, path,
            reference_position=_positions(reference, extra), simulations=simulations, bins=1, seed=seed,
            directional=False,
        )
    return generate_simulations(
        model_scores(model, ref_rows), ref_y, model_scores(model, current), cur_y, path,
        current_covered=coverage(features(reference), features(current)),
        reference_position=_positions(reference, extra),
        simulations=simulations, bins=bins, seed=seed,
    )


def _positions(reference: pd.DataFrame, extra: pd.DataFrame | None) -> np.ndarray:
    """Production row numbers of the concept test's reference rows: the held-out rows' places in the window (unless
    the track record replaced them), then the calibration batches' rows after it."""
    held = np.flatnonzero(is_held_out(reference).to_numpy())
    if extra is not None and len(extra) >= MIN_CALIBRATION_ROWS:
        held = held[:0]
    after = len(reference) + np.arange(0 if extra is None else len(extra))
    return np.r_[held, after].astype(np.int64)


def measure_batch(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    model: Any | None,
    *,
    calibration: pd.DataFrame | None = None,
    report_dir: Path | None = None,
    alpha: float = DRIFT_ALPHA,
    simulations: int = DRIFT_SIMULATIONS,
    bins: int = DRIFT_BINS,
    seed: int | list[int] = 0,
    methods: Mapping[str, str] | None = None,
) -> dict:
    """The site's measurement of one unit (a batch, or batches pooled) in one call, as the steps below make it:
    ``{"status", "reason", "rows", "data", "concept", "label_rate"}``.

    ``status``: "empty" (no rows: nothing to test, a label-rate finding), "labels_lost" (too small for the drift
    tests, but far fewer failures than its scores imply: a label-rate finding now), "insufficient_data" (fewer
    than ``MIN_ROWS`` rows or ``MIN_EXPECTED_FAILURES`` expected failures: pool it with the next batch; no test
    is run) or "measured". ``concept`` is None without a model; ``label_rate`` compares the failures with those
    the scores (or, without a model, the reference rate) imply.
    """
    from mledge.onsite.data_drift import data_drift

    if len(current) == 0:
        return {"status": "empty", "reason": "the batch has no rows", "rows": 0, "data": None, "concept": None,
                "label_rate": None}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(report_dir or tmp) / SIMULATIONS_FILE
        summary = concept_simulations(model, reference, current, path, calibration=calibration,
                                      simulations=simulations, bins=bins, seed=seed)
        measured = evaluate_p_value(path)
    result = {"status": "measured", "reason": None, "rows": len(current), "data": None,
              "concept": measured if model is not None else None, "label_rate": measured["label_rate"]}
    if not summary["sufficient"]:
        status = "labels_lost" if measured["label_rate"]["lost"] else "insufficient_data"
        result.update(status=status, reason=summary["insufficient_reason"], concept=None)
        return result
    result["data"] = data_drift(reference, current, methods=methods, alpha=alpha, report_dir=report_dir,
                                report_name=REPORT_NAME)
    return result


# --- the steps, through the site's workspace -----------------------------------------------------------------


def workspace(store: Path) -> Path:
    return Path(store) / WORK_DIR / CURRENT


def archived(report: str | None, evaluation_id: str) -> str | None:
    """Where a file of the current workspace will lie once ``archive`` has moved it: what an alert names."""
    marker = f"/{WORK_DIR}/{CURRENT}/"
    if not report or marker not in report:
        return report
    head, tail = report.split(marker, 1)
    return f"{head}/{WORK_DIR}/{ARCHIVE}/{evaluation_id}/{tail}"


def _archive(store: Path, suffix: str = "") -> Path | None:
    """Move the workspace under ``evaluations/`` (kept, never deleted); returns where it went."""
    current = workspace(store)
    if not current.exists():
        return None
    plan_file = current / PLAN_FILE
    ident = json.loads(plan_file.read_text())["evaluation_id"] if plan_file.exists() else uuid.uuid4().hex
    target = Path(store) / WORK_DIR / ARCHIVE / f"{ident}{suffix}"
    while target.exists():  # never replace an earlier archive
        target = target.with_name(f"{target.name}-{uuid.uuid4().hex[:6]}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(current), str(target))
    return target


def read_plan(store: Path) -> dict | None:
    path = workspace(store) / PLAN_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _seed(seed: int, site: str, batch: str) -> list[int]:
    # Reproducible, and different for every site and batch.
    return [int(seed), zlib.crc32(site.encode()), batch_number(batch)]


def simulate(
    store: Path,
    site: str,
    processed: set[str],
    champion: Champion | None,
    *,
    calibration: Sequence[str] = (),
    simulations: int = DRIFT_SIMULATIONS,
    bins: int = DRIFT_BINS,
    seed: int = 0,
    load_model: Callable[[Champion], Any] = load_champion_model,
) -> dict:
    """Step 2: plan the evaluation, cut the unprocessed batches into units and write each unit's simulations
    into a fresh workspace.

    Batches are taken in order; a batch too small to decide (``MIN_ROWS`` rows, ``MIN_EXPECTED_FAILURES``
    expected failures) is pooled with the next ones until the pool is large enough. A trailing pool that is
    still too small is planned as ``insufficient_data``: it stays unprocessed and is pooled again next time.
    An empty batch is a unit of its own ("empty"); so is a pool too small for the drift tests whose failures
    went missing ("labels_lost", ``concept_drift.labels_lost``): pooling it on would dilute the loss.
    Without a champion only the label rate is simulated.
    """
    plan = plan_evaluation(store, site, processed, champion, calibration=calibration)
    _archive(store, "-superseded")  # an earlier, undecided evaluation is kept, not continued
    current = workspace(store)
    current.mkdir(parents=True)
    plan.update(
        {
            "evaluation_id": uuid.uuid4().hex,
            "created_at": datetime.now(UTC).isoformat(),
            "simulations": simulations,
            "bins": bins,
            "seed": seed,
            "concept_skipped": None,
            "units": [],
        }
    )
    concept: dict[str, dict] = {}
    if not plan["unprocessed"]:
        plan["concept_skipped"] = "no unevaluated batches"
    else:
        if champion is None:
            plan["concept_skipped"] = (
                f"no production model: neither {site_model_name(site)} nor {GLOBAL_MODEL} has a "
                f"'{CHAMPION}' alias"
            )
        model = load_model(champion) if champion is not None else None
        reference = load_batches(store, site, plan["reference"])
        extra = load_batches(store, site, plan["calibration"]) if plan["calibration"] else None
        pending: list[str] = []
        for batch in plan["unprocessed"]:
            frame = load_batch(store, site, batch)
            if len(frame) == 0:
                plan["units"].append({"name": batch, "batches": [batch], "status": "empty"})
                continue
            pending.append(batch)
            name = unit_name(pending)
            path = current / unit_dir(name) / SIMULATIONS_FILE
            summary = concept_simulations(
                model, reference, load_batches(store, site, pending), path,
                calibration=extra, simulations=simulations, bins=bins, seed=_seed(seed, site, batch),
            )
            concept[name] = {k: v for k, v in summary.items() if not k.startswith("bin_")}
            if summary["sufficient"]:
                plan["units"].append({"name": name, "batches": list(pending), "status": "measured"})
                pending = []
            elif evaluate_p_value(path)["label_rate"]["lost"]:
                plan["units"].append({"name": name, "batches": list(pending), "status": "labels_lost",
                                      "reason": summary["insufficient_reason"]})
                pending = []
        if pending:
            name = unit_name(pending)
            plan["units"].append({"name": name, "batches": list(pending), "status": "insufficient_data",
                                  "reason": concept[name]["insufficient_reason"]})
    (current / PLAN_FILE).write_text(json.dumps(plan, indent=2))
    return {**plan, "concept": concept}


def evaluate(store: Path, site: str, *, alpha: float = DRIFT_ALPHA) -> dict:
    """Step 3: concept p-values from the simulations and data drift (with Evidently's report), per planned unit."""
    from mledge.onsite.data_drift import data_drift

    plan = read_plan(store)
    if plan is None or not plan["unprocessed"]:
        return {"site": site, "evaluation_id": plan and plan["evaluation_id"], "batches": {},
                "note": "nothing to evaluate: no unevaluated batches were planned"}
    if plan["site"] != site:
        raise SiteDataError(site, f"the workspace holds an evaluation of site {plan['site']}", workspace(store))
    current = workspace(store)
    reference = load_batches(store, site, plan["reference"])
    results: dict[str, dict] = {}
    for unit in plan["units"]:
        folder = current / unit_dir(unit["name"])
        folder.mkdir(parents=True, exist_ok=True)
        result = {"unit": unit["name"], "batches": unit["batches"], "status": unit["status"],
                  "reason": unit.get("reason"), "data": None, "concept": None, "label_rate": None, "rows": 0}
        if unit["status"] != "empty":
            measured = evaluate_p_value(folder / SIMULATIONS_FILE)
            result.update(rows=measured["current_rows"], label_rate=measured["label_rate"])
            if unit["status"] == "measured":
                frame = load_batches(store, site, unit["batches"])
                result["concept"] = None if plan["concept_skipped"] else measured
                result["data"] = data_drift(reference, frame, alpha=alpha, report_dir=folder,
                                            report_name=REPORT_NAME)
        (folder / RESULT_FILE).write_text(json.dumps(result, indent=2))
        results[unit["name"]] = {
            "status": result["status"],
            "batches": unit["batches"],
            "data": {c: e["p_value"] for c, e in result["data"]["columns"].items()} if result["data"] else None,
            "concept": {n: t["p_value"] for n, t in result["concept"]["tests"].items()} if result["concept"]
            else None,
            "label_rate_share": result["label_rate"]["share"] if result["label_rate"] else None,
        }
    return {
        "site": site,
        "evaluation_id": plan["evaluation_id"],
        "reference": plan["reference"],
        "calibration": plan["calibration"],
        "units": results,
        "concept_skipped": plan["concept_skipped"],
    }


def measured(store: Path, site: str, done: set[str]) -> tuple[dict | None, dict[str, dict]]:
    """Step 4, the site's part: the plan and each planned unit's measurement whose batches are not all recorded
    yet (``done``)."""
    plan = read_plan(store)
    if plan is None:
        return None, {}
    results = {}
    for unit in plan["units"]:
        if all(b in done for b in unit["batches"]):
            continue
        result_file = workspace(store) / unit_dir(unit["name"]) / RESULT_FILE
        if not result_file.exists():
            raise SiteDataError(site, f"no result for {unit['name']}: run `mledge drift p-value` first", result_file)
        results[unit["name"]] = json.loads(result_file.read_text())
    return plan, results


def archive(store: Path) -> Path | None:
    """Step 4's end: the decided workspace moves under ``evaluations/`` (kept, never deleted)."""
    return _archive(store)


def publish_reports(
    store: Path,
) -> Callable[..., dict]:
    """A publisher for drift.decision.decide: writes the unit's decision beside its reports in the workspace and
    logs the decision and its metrics (never the reports) to the site's drift experiment in MLflow, the metrics
    also on the site's timeline."""

    def publish(
        *,
        site: str,
        batch: str,
        evaluation_id: str,
        document: Mapping[str, Any],
        reports: Mapping[str, str | None],
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
        step: int | None = None,
    ) -> dict:
        if document.get("outcome") == "insufficient_data" and step is not None:
            # Waiting to be pooled: a point on the timeline, not a run (it is evaluated again with the next batch).
            return {"report_uri": None, "mlflow_timeline_run_id": log_timeline(site, metrics, step)}
        folder = workspace(store) / unit_dir(batch)
        folder.mkdir(parents=True, exist_ok=True)
        summary = folder / "decision.json"
        summary.write_text(json.dumps(document, indent=2, default=str))
        # Statistics only: Evidently's HTML and JSON reports stay at the site (they carry near-raw data: means of
        # a few consecutive rows in production order, exact extremes), the alert links their site-local path.
        links = log_reports_to_mlflow(
            site=site, batch=batch, evaluation_id=evaluation_id, files=[("decision", summary)], metrics=metrics,
            tags=tags, step=step,
        )
        return {**links, "report_uri": archived(reports.get("html"), evaluation_id),
                "report_json_uri": archived(reports.get("json"), evaluation_id)}

    return publish


def log_reports_to_mlflow(
    *,
    site: str,
    batch: str,
    evaluation_id: str,
    files: Sequence[tuple[str, Path]],
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
    step: int | None = None,
) -> dict:
    """Log one unit's reports to the site's drift experiment (one run per unit and evaluation, reused on retry),
    and its metrics to the site's timeline run (``drift timeline <site>``) at ``step``, the unit's last batch
    number, so that MLflow charts every metric of the site batch by batch.

    ``files``: (artifact folder, local file) pairs; the first HTML file is the report the alert links to.
    """
    import mlflow

    experiment = mlflow.set_experiment(drift_experiment(site))
    client = mlflow.MlflowClient()
    found = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{TAG_DRIFT_EVALUATION}` = '{evaluation_id}' and tags.`{TAG_BATCH}` = '{batch}'",
    )
    run_tags = {TAG_SITE: site, TAG_BATCH: batch, TAG_DRIFT_EVALUATION: evaluation_id, **tags}
    values = {k: float(v) for k, v in metrics.items()}
    with mlflow.start_run(
        run_id=found[0].info.run_id if found else None,
        run_name=None if found else f"{site} {batch}",
        experiment_id=experiment.experiment_id,
        tags=run_tags,
    ) as run:
        mlflow.log_metrics(values, step=step)
        logged = []
        for folder, path in files:
            mlflow.log_artifact(str(path), artifact_path=folder)
            logged.append(f"{folder}/{Path(path).name}")
        html = next((a for a in logged if a.endswith(".html")), None)
        js = next((a for a in logged if a.startswith("reports/") and a.endswith(".json")), None)
        links = {
            "report_uri": mlflow.get_artifact_uri(html) if html else None,
            "report_json_uri": mlflow.get_artifact_uri(js) if js else None,
            "mlflow_run_id": run.info.run_id,
            "mlflow_experiment_id": experiment.experiment_id,
        }
    links["mlflow_timeline_run_id"] = log_timeline(site, values, step) if step is not None else None
    return links


def log_timeline(site: str, metrics: Mapping[str, float], step: int) -> str:
    """Log metrics at ``step`` to the site's one timeline run in its drift experiment (made on first use)."""
    import mlflow
    from mlflow.entities import Metric

    experiment = mlflow.set_experiment(drift_experiment(site))
    client = mlflow.MlflowClient()
    found = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{TAG_DRIFT_TIMELINE}` = '{site}'", max_results=1,
        order_by=["attributes.start_time ASC"],
    )
    if found:
        run_id = found[0].info.run_id
    else:
        run_id = client.create_run(
            experiment.experiment_id, run_name=f"drift timeline {site}", tags={TAG_DRIFT_TIMELINE: site, TAG_SITE: site}
        ).info.run_id
    timestamp = int(datetime.now(UTC).timestamp() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), timestamp, int(step)) for k, v in metrics.items()])
    return run_id
