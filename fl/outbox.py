"""The ServerApp's outbox: everything a run produces, kept at the platform before MLflow sees it.

A training's result must not depend on MLflow answering at the moment the ServerApp finishes. So the ServerApp
writes every metric, its tags and parameters, the promotion evidence and every model's weights into a folder of
the platform's home (``<platform home>/flower/outbox/<flower run id>/``), and logs to MLflow from there:
``Outbox.flush`` sends what MLflow has not acknowledged yet (retrying with backoff), and can be called again by
anyone (the ServerApp during rounds and at its end, then the DAG's ``publish`` step) until everything is in.
Each item is sent once: metrics carry sequence numbers and a published mark, the MLflow run is found by the
Flower run id tag, models by their own run's tag. An outage delays registration; it loses and doubles nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tenacity import retry, stop_after_attempt, wait_exponential

from mledge.contracts import (
    GLOBAL_MODELS_EXPERIMENT,
    TAG_FLOWER_RUN,
    TAG_MODEL_RUN,
    TAG_MODEL_URI,
    TAG_SITE,
    site_model_run_tag,
    site_model_tag,
    site_models_experiment,
)
from mledge.security.files import write_private

log = logging.getLogger("flwr").getChild("mledge.outbox")
OUTBOX = "flower/outbox"
ModelLogger = Callable[[dict, str, str, Mapping[str, str]], tuple[str, str]]  # (state, experiment, name, tags)
GLOBAL = "global"


def outbox_dir(platform_home: Path, flower_run_id: str) -> Path:
    return Path(platform_home) / OUTBOX / str(flower_run_id)


def _retrying(attempts: int) -> Callable:
    return retry(stop=stop_after_attempt(attempts), wait=wait_exponential(multiplier=0.5, max=8), reraise=True)


class Outbox:
    """One run's outbox folder: append metrics, keep documents and models, flush to MLflow."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        (self.folder / "models").mkdir(parents=True, exist_ok=True)

    # --- what the ServerApp writes ----------------------------------------------------------------------------

    def start(self, experiment: str, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> None:
        if not (self.folder / "run.json").exists():
            self._write("run.json", {"experiment": experiment, "run_name": run_name, "tags": dict(tags),
                                     "params": {k: str(v) for k, v in params.items()}})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Append metrics (the ServerApp's metric sink); they reach MLflow at the next flush."""
        with (self.folder / "metrics.jsonl").open("a") as out:
            values = {k: float(v) for k, v in metrics.items()}
            out.write(json.dumps({"step": int(step), "ts": int(time.time() * 1000), "metrics": values}) + "\n")

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._write("tags.json", {**self._read("tags.json", {}), **{k: str(v) for k, v in tags.items()}})

    def put_document(self, artifact_path: str, document: Any) -> None:
        documents = self._read("documents.json", {})
        documents[artifact_path] = document
        self._write("documents.json", documents)

    def put_model(self, name: str, state: Mapping[str, Any]) -> None:
        """A model's weights (``global`` or a site's name): numpy arrays by parameter name."""
        arrays = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v) for k, v in state.items()}
        np.savez(self.folder / "models" / f"{name}.npz", **arrays)

    def model(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.folder / "models" / f"{name}.npz") as data:
            return {k: data[k] for k in data.files}

    def models(self) -> list[str]:
        return sorted(p.stem for p in (self.folder / "models").glob("*.npz"))

    # --- what reaches MLflow -------------------------------------------------------------------------------------

    def documents(self) -> dict[str, Any]:
        """The documents kept for MLflow (artifact path -> JSON document), e.g. the promotion evidence."""
        return self._read("documents.json", {})

    def published(self) -> dict:
        return self._read("published.json", {"metrics": 0, "documents": [], "models": {}, "tags": False})

    def pending(self) -> list[str]:
        """What is not in MLflow yet (empty once everything is)."""
        done, left = self.published(), []
        if done["metrics"] < len(self._metric_lines()):
            left.append(f"{len(self._metric_lines()) - done['metrics']} metric record(s)")
        left += [f"document {d}" for d in self._read("documents.json", {}) if d not in done["documents"]]
        left += [f"model {m}" for m in self.models() if m not in done["models"]]
        if self._read("tags.json", {}) and not done["tags"]:
            left.append("tags")
        return left

    def flush(self, log_model: ModelLogger, attempts: int = 3) -> str:
        """Send to MLflow what it has not acknowledged; returns the MLflow run id. Raises when MLflow stays down
        (nothing is lost: a later flush sends the rest). ``log_model(state, experiment, run_name, tags)``."""
        import mlflow

        client = mlflow.MlflowClient()
        run = self._read("run.json", None)
        if run is None:
            raise LookupError(f"{self.folder}: no run was started in this outbox")
        run_id = _retrying(attempts)(self._run_id)(client, run)
        done = self.published()
        lines = self._metric_lines()
        for start in range(done["metrics"], len(lines), 200):
            chunk = lines[start : start + 200]
            metrics = [
                mlflow.entities.Metric(key, value, entry["ts"], entry["step"])
                for entry in chunk
                for key, value in entry["metrics"].items()
            ]
            _retrying(attempts)(client.log_batch)(run_id, metrics=metrics)
            done["metrics"] = start + len(chunk)
            self._write("published.json", done)
        for path, document in self._read("documents.json", {}).items():
            if path not in done["documents"]:
                _retrying(attempts)(client.log_dict)(run_id, document, path)
                done["documents"].append(path)
                self._write("published.json", done)
        flower_run = run["tags"].get(TAG_FLOWER_RUN, "")
        for name in self.models():
            if name in done["models"]:
                continue
            experiment = GLOBAL_MODELS_EXPERIMENT if name == GLOBAL else site_models_experiment(name)
            tags = {**run["tags"], **({} if name == GLOBAL else {TAG_SITE: name})}
            uri, model_run = _retrying(attempts)(log_model)(self.model(name), experiment, f"{flower_run} {name}", tags)
            done["models"][name] = {"uri": uri, "run_id": model_run}
            self._write("published.json", done)
        tags = dict(self._read("tags.json", {}))
        for name, model in done["models"].items():
            if name == GLOBAL:
                tags.update({TAG_MODEL_URI: model["uri"], TAG_MODEL_RUN: model["run_id"]})
            else:
                tags.update({site_model_tag(name): model["uri"], site_model_run_tag(name): model["run_id"]})
        for key, value in tags.items():
            _retrying(attempts)(client.set_tag)(run_id, key, value)
        done["tags"] = bool(tags)
        self._write("published.json", done)
        return run_id

    # --- internals --------------------------------------------------------------------------------------------------

    def _run_id(self, client: Any, run: dict) -> str:
        """The MLflow run of this outbox: found by its Flower run tag, else created (once)."""
        known = self._read("published.json", {}).get("run_id")
        if known:
            return known
        experiment = client.get_experiment_by_name(run["experiment"])
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(run["experiment"])
        flower_run = run["tags"].get(TAG_FLOWER_RUN, "")
        found = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_FLOWER_RUN}` = '{flower_run}'")
        if found:
            mlflow_run_id = found[0].info.run_id
        else:
            created = client.create_run(experiment_id, run_name=run["run_name"], tags=run["tags"])
            mlflow_run_id = created.info.run_id
            for key, value in run["params"].items():
                client.log_param(mlflow_run_id, key, value)
        self._write("published.json", {**self.published(), "run_id": mlflow_run_id})
        return mlflow_run_id

    def _metric_lines(self) -> list[dict]:
        path = self.folder / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def _read(self, name: str, default: Any) -> Any:
        path = self.folder / name
        return json.loads(path.read_text()) if path.exists() else default

    def _write(self, name: str, document: Any) -> None:
        write_private(self.folder / name, json.dumps(document, indent=1, default=str))
