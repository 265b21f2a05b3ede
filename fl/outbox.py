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
# (state, experiment, run name, tags) -> (model URI, run id, logged model id)
ModelLogger = Callable[[dict, str, str, Mapping[str, str]], tuple[str, str, str]]
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

    def put_figure(self, artifact_path: str, figure: Any) -> None:
        """A matplotlib figure, saved as PNG; it reaches the run's artifacts at ``artifact_path`` (once)."""
        path = self.folder / "figures" / artifact_path
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)

    def put_model_metrics(self, name: str, metrics: Mapping[str, float]) -> None:
        """The final evaluation of model ``name``, attached to its logged model in MLflow (``model_id``)."""
        self._write("model_metrics.json", {**self._read("model_metrics.json", {}),
                                           name: {k: float(v) for k, v in metrics.items()}})

    def put_datasets(self, datasets: list[dict[str, str]]) -> None:
        """The data each site trained on, as metadata only (``{"name", "digest", "site", "window"}``): the run's
        dataset inputs in MLflow (mlflow.data), never a row."""
        self._write("datasets.json", datasets)

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

    def history(self) -> list[dict]:
        """Every metric record so far (``{"step", "ts", "metrics"}``), in the order they were written."""
        return self._metric_lines()

    def figures(self) -> list[str]:
        root = self.folder / "figures"
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.png")) if root.exists() else []

    def published(self) -> dict:
        done = self._read("published.json", {})
        return {"metrics": 0, "documents": [], "models": {}, "tags": False, "figures": [], "model_metrics": [],
                "datasets": False, **done}

    def pending(self) -> list[str]:
        """What is not in MLflow yet (empty once everything is)."""
        done, left = self.published(), []
        if done["metrics"] < len(self._metric_lines()):
            left.append(f"{len(self._metric_lines()) - done['metrics']} metric record(s)")
        left += [f"document {d}" for d in self._read("documents.json", {}) if d not in done["documents"]]
        left += [f"model {m}" for m in self.models() if m not in done["models"]]
        left += [f"figure {f}" for f in self.figures() if f not in done["figures"]]
        measured = self._read("model_metrics.json", {})
        left += [f"metrics of model {m}" for m in measured if m not in done["model_metrics"]]
        if self._read("datasets.json", []) and not done["datasets"]:
            left.append("datasets")
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
            uri, model_run, model_id = _retrying(attempts)(log_model)(
                self.model(name), experiment, f"{flower_run} {name}", tags
            )
            done["models"][name] = {"uri": uri, "run_id": model_run, "model_id": model_id}
            self._write("published.json", done)
        self._flush_extras(client, run_id, done, attempts)
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

    def _flush_extras(self, client: Any, run_id: str, done: dict, attempts: int) -> None:
        """Figures, the logged models' final metrics and the dataset inputs: each sent once."""
        import mlflow
        from mlflow.entities import DatasetInput, InputTag

        for figure in self.figures():
            if figure not in done["figures"]:
                local = self.folder / "figures" / figure
                _retrying(attempts)(client.log_artifact)(run_id, str(local), str(Path(figure).parent))
                done["figures"].append(figure)
                self._write("published.json", done)
        for name, metrics in self._read("model_metrics.json", {}).items():
            model = done["models"].get(name)
            if name in done["model_metrics"] or not model or not model.get("model_id"):
                continue
            now = int(time.time() * 1000)
            batch = [mlflow.entities.Metric(k, v, now, 0, model_id=model["model_id"], run_id=model["run_id"])
                     for k, v in metrics.items()]
            _retrying(attempts)(client.log_batch)(model["run_id"], metrics=batch)
            done["model_metrics"].append(name)
            self._write("published.json", done)
        datasets = self._read("datasets.json", [])
        if datasets and not done["datasets"]:
            from mledge.registry.datasets import site_dataset

            inputs = [DatasetInput(site_dataset(**d)._to_mlflow_entity(), [InputTag("mlflow.data.context", "training")])
                      for d in datasets]
            _retrying(attempts)(client.log_inputs)(run_id, datasets=inputs)
            done["datasets"] = True
            self._write("published.json", done)

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
