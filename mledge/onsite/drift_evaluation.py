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
from mledge.onsite.concept_drift import evaluate_p_value, generate_simulations, model_scores, row_errors
from mledge.onsite.store import SiteDataError, batch_paths, is_held_out, read_batch

WORK_DIR = "drift"
CURRENT = "current"
ARCHIVE = "evaluations"
PLAN_FILE = "plan.json"
RESULT_FILE = "result.json"
SIMULATIONS_FILE = "concept-simulations.npz"
REPORT_NAME = "data_drift"
INITIAL_REFERENCE_BATCHES = 3
BATCH_ID = re.compile(r"batch-(\d{6,})")

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
) -> dict:
    """``{"site", "unprocessed", "reference", "reference_source", "champion"}`` for the site's store."""
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
    return {
        "site": site,
        "unprocessed": unprocessed,
        "reference": reference,
        "reference_source": source,
        "champion": champion.as_dict() if champion else None,
    }


def load_batches(store: Path, site: str, names: Sequence[str]) -> pd.DataFrame:
    """The named batches of a site's store, validated, in order."""
    folder = Path(store) / "batches"
    if not names:
        raise SiteDataError(site, "no batches to load (empty reference window?)", folder)
    return pd.concat([read_batch(site, folder / f"{n}.csv") for n in names], ignore_index=True)


# --- one batch, in memory -------------------------------------------------------------------------------------


def concept_simulations(
    model: Any,
    reference: pd.DataFrame,
    current: pd.DataFrame,
    path: Path,
    *,
    simulations: int = DRIFT_SIMULATIONS,
    bins: int = DRIFT_BINS,
    seed: int | list[int] = 0,
) -> dict:
    """The model's errors on the reference window's held-out rows and on the batch -> simulations at ``path``."""
    held = reference[is_held_out(reference)]
    ref_scores, cur_scores = model_scores(model, held), model_scores(model, current)
    return generate_simulations(
        ref_scores, row_errors(ref_scores, held), cur_scores, row_errors(cur_scores, current), path,
        simulations=simulations, bins=bins, seed=seed,
    )


def measure_batch(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    model: Any | None,
    *,
    report_dir: Path | None = None,
    alpha: float = DRIFT_ALPHA,
    simulations: int = DRIFT_SIMULATIONS,
    bins: int = DRIFT_BINS,
    seed: int | list[int] = 0,
    methods: Mapping[str, str] | None = None,
) -> dict:
    """The site's measurement of one batch in one call (the steps below, without files between them):
    ``{"data": <data-drift p-values and reports>, "concept": <concept p-value> | None}``."""
    from mledge.onsite.data_drift import data_drift

    concept = None
    if model is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(report_dir or tmp) / SIMULATIONS_FILE
            concept_simulations(model, reference, current, path, simulations=simulations, bins=bins, seed=seed)
            concept = evaluate_p_value(path)
    data = data_drift(reference, current, methods=methods, alpha=alpha, report_dir=report_dir, report_name=REPORT_NAME)
    return {"data": data, "concept": concept}


# --- the steps, through the site's workspace -----------------------------------------------------------------


def workspace(store: Path) -> Path:
    return Path(store) / WORK_DIR / CURRENT


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
    simulations: int = DRIFT_SIMULATIONS,
    bins: int = DRIFT_BINS,
    seed: int = 0,
    load_model: Callable[[Champion], Any] = load_champion_model,
) -> dict:
    """Step 2: plan the evaluation and write each batch's concept-drift simulations into a fresh workspace."""
    plan = plan_evaluation(store, site, processed, champion)
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
        }
    )
    concept: dict[str, dict] = {}
    if not plan["unprocessed"]:
        plan["concept_skipped"] = "no unevaluated batches"
    elif champion is None:
        plan["concept_skipped"] = (
            f"no production model: neither {site_model_name(site)} nor {GLOBAL_MODEL} has a "
            f"'{CHAMPION}' alias"
        )
    else:
        model = load_model(champion)
        reference = load_batches(store, site, plan["reference"])
        for batch in plan["unprocessed"]:
            frame = load_batches(store, site, [batch])
            summary = concept_simulations(
                model, reference, frame, current / batch / SIMULATIONS_FILE,
                simulations=simulations, bins=bins, seed=_seed(seed, site, batch),
            )
            concept[batch] = {k: v for k, v in summary.items() if not k.startswith("bin_")}
    (current / PLAN_FILE).write_text(json.dumps(plan, indent=2))
    return {**plan, "concept": concept}


def evaluate(store: Path, site: str, *, alpha: float = DRIFT_ALPHA) -> dict:
    """Step 3: concept p-values from the simulations and data drift with Evidently, per planned batch."""
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
    for batch in plan["unprocessed"]:
        concept = None if plan["concept_skipped"] else evaluate_p_value(current / batch / SIMULATIONS_FILE)
        frame = load_batches(store, site, [batch])
        data = data_drift(reference, frame, alpha=alpha, report_dir=current / batch, report_name=REPORT_NAME)
        result = {"batch": batch, "data": data, "concept": concept}
        (current / batch / RESULT_FILE).write_text(json.dumps(result, indent=2))
        results[batch] = {
            "data": {c: e["p_value"] for c, e in data["columns"].items()},
            "share_drifted": data["share_drifted"],
            "concept_p_value": concept["p_value"] if concept else None,
        }
    return {
        "site": site,
        "evaluation_id": plan["evaluation_id"],
        "reference": plan["reference"],
        "batches": results,
        "concept_skipped": plan["concept_skipped"],
    }


def measured(store: Path, site: str, done: set[str]) -> tuple[dict | None, dict[str, dict]]:
    """Step 4, the site's part: the plan and each planned batch's measurement not yet recorded (``done``)."""
    plan = read_plan(store)
    if plan is None:
        return None, {}
    results = {}
    for batch in [b for b in plan["unprocessed"] if b not in done]:
        result_file = workspace(store) / batch / RESULT_FILE
        if not result_file.exists():
            raise SiteDataError(site, f"no result for {batch}: run `mledge drift p-value` first", result_file)
        results[batch] = json.loads(result_file.read_text())
    return plan, results


def archive(store: Path) -> Path | None:
    """Step 4's end: the decided workspace moves under ``evaluations/`` (kept, never deleted)."""
    return _archive(store)


def publish_reports(
    store: Path,
) -> Callable[..., dict]:
    """A publisher for drift.decision.decide: writes the batch's decision beside its reports in the workspace and
    logs them to the site's drift experiment in MLflow."""

    def publish(
        *,
        site: str,
        batch: str,
        evaluation_id: str,
        document: Mapping[str, Any],
        reports: Mapping[str, str],
        metrics: Mapping[str, float],
        tags: Mapping[str, str],
    ) -> dict:
        summary = workspace(store) / batch / "decision.json"
        summary.write_text(json.dumps(document, indent=2))
        files = [("reports", Path(reports["html"])), ("reports", Path(reports["json"])), ("decision", summary)]
        return log_reports_to_mlflow(
            site=site, batch=batch, evaluation_id=evaluation_id, files=files, metrics=metrics, tags=tags
        )

    return publish


def log_reports_to_mlflow(
    *,
    site: str,
    batch: str,
    evaluation_id: str,
    files: Sequence[tuple[str, Path]],
    metrics: Mapping[str, float],
    tags: Mapping[str, str],
) -> dict:
    """Log one batch's reports to the site's drift experiment (one run per batch and evaluation, reused on retry).

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
    with mlflow.start_run(
        run_id=found[0].info.run_id if found else None,
        run_name=None if found else f"{site} {batch}",
        experiment_id=experiment.experiment_id,
        tags=run_tags,
    ) as run:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        logged = []
        for folder, path in files:
            mlflow.log_artifact(str(path), artifact_path=folder)
            logged.append(f"{folder}/{Path(path).name}")
        html = next((a for a in logged if a.endswith(".html")), None)
        js = next((a for a in logged if a.endswith(".json")), None)
        return {
            "report_uri": mlflow.get_artifact_uri(html) if html else None,
            "report_json_uri": mlflow.get_artifact_uri(js) if js else None,
            "mlflow_run_id": run.info.run_id,
            "mlflow_experiment_id": experiment.experiment_id,
        }


