"""The ServerApp: federated rounds over the connected sites, logged to MLflow.

Per run: ask every node which site it is; for each round, train (FedAvg) and evaluate on every site's held-out
rows; finally let every site evaluate the new global model and the registry's current champion side by side
(the promotion evidence, computed where the data live); log the model. Registration and promotion are the
DAG's job (fl/registry.py): the ServerApp only logs.

Run config keys are those of fl/flower_app/pyproject.toml.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import mlflow
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fl.clientapp import CHAMPION_KEY, SITE_KEY
from fl.model import N_FEATURES, Counts, build_model, metrics_from_counts
from fl.registry import (
    EVIDENCE_PATH,
    EXPERIMENT,
    TAG_DAG_RUN,
    TAG_FAILED_SITES,
    TAG_FLOWER_RUN,
    TAG_MODEL_URI,
    load_champion_state,
)

# Child of Flower's logger, so these lines show in `flwr log` with the rest of the run.
log = logging.getLogger("flwr").getChild("mledge")
app = ServerApp()


class NotEnoughSitesError(RuntimeError):
    """Too few sites answered a round for its result to mean anything."""


def counts_from(metrics: Mapping[str, float], prefix: str = "") -> Counts | None:
    if f"{prefix}tp" not in metrics:
        return None
    return Counts(
        tp=int(metrics[f"{prefix}tp"]),
        fp=int(metrics[f"{prefix}fp"]),
        fn=int(metrics[f"{prefix}fn"]),
        tn=int(metrics[f"{prefix}tn"]),
        loss_sum=float(metrics[f"{prefix}loss-sum"]),
    )


def aggregate_counts(replies: list[RecordDict], weighted_by_key: str = "num-examples") -> MetricRecord:
    """Federated evaluation metrics from summed confusion counts: exact global recall and F1, not an average."""
    total = sum((counts_from(next(iter(r.metric_records.values()))) for r in replies), Counts(0, 0, 0, 0, 0.0))
    return MetricRecord({**metrics_from_counts(total), "num-examples": total.n})


def reply_metrics(reply: Message) -> dict[str, float]:
    return dict(next(iter(reply.content.metric_records.values())))


def split_replies(
    replies: Iterable[Message], sites: Mapping[int, str]
) -> tuple[dict[str, Message], dict[str, str]]:
    """Replies by site name, and the error reason of each site that failed."""
    ok: dict[str, Message] = {}
    failed: dict[str, str] = {}
    for reply in replies:
        site = sites.get(reply.metadata.src_node_id, f"node-{reply.metadata.src_node_id}")
        if reply.has_error():
            failed[site] = reply.error.reason
        else:
            ok[site] = reply
    return ok, failed


def discover_sites(grid: Grid, timeout: float) -> dict[int, str]:
    """node id -> site name, asked of every connected node (node ids can change; site names do not)."""
    messages = [
        Message(RecordDict({"config": ConfigRecord({})}), message_type="query", dst_node_id=node)
        for node in grid.get_node_ids()
    ]
    sites = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if not reply.has_error():
            sites[reply.metadata.src_node_id] = str(reply.content[SITE_KEY][SITE_KEY])
    return sites


def _require(ok: Mapping[str, Message], failed: Mapping[str, str], minimum: int, what: str) -> None:
    for site, reason in failed.items():
        log.warning("%s: site %s failed: %s", what, site, reason)
    if len(ok) < minimum:
        raise NotEnoughSitesError(
            f"{what}: only {len(ok)} site(s) answered ({sorted(ok)}), {minimum} needed; failures: {dict(failed)}"
        )


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    rounds = int(cfg["num-server-rounds"])
    min_nodes = int(cfg["min-nodes"])
    min_replies = int(cfg["min-replies"])
    timeout = float(cfg["reply-timeout-s"])
    strategy = FedAvg(
        min_available_nodes=min_nodes,
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        evaluate_metrics_aggr_fn=aggregate_counts,
    )
    train_config = ConfigRecord(
        {"local-epochs": int(cfg["local-epochs"]), "learning-rate": float(cfg["learning-rate"])}
    )

    mlflow.set_experiment(str(cfg.get("experiment", EXPERIMENT)))
    tags = {
        TAG_FLOWER_RUN: str(context.run_id),
        TAG_DAG_RUN: str(cfg.get("dag-run-id", "")),
        "mledge.strategy": "fedavg",
    }
    with mlflow.start_run(run_name=f"flower-run-{context.run_id}", tags=tags):
        mlflow.log_params({k: v for k, v in cfg.items() if k != "dag-run-id"})
        sites = discover_sites(grid, timeout)
        log.info("Sites in this run: %s", sites)
        mlflow.log_param("sites", ",".join(sorted(sites.values())))
        failures: dict[str, list[str]] = {}

        model = build_model(seed=int(cfg.get("seed", 0)))
        arrays = ArrayRecord(model.state_dict())
        for rnd in range(1, rounds + 1):
            messages = strategy.configure_train(rnd, arrays, train_config, grid)
            replies = list(grid.send_and_receive(messages, timeout=timeout))
            ok, failed = split_replies(replies, sites)
            _record_failures(failures, rnd, "train", failed)
            _require(ok, failed, min_replies, f"round {rnd} train")
            arrays, train_metrics = strategy.aggregate_train(rnd, list(ok.values()))
            mlflow.log_metric("train_loss", float(train_metrics["train-loss"]), step=rnd)

            messages = strategy.configure_evaluate(rnd, arrays, ConfigRecord(), grid)
            replies = list(grid.send_and_receive(messages, timeout=timeout))
            ok, failed = split_replies(replies, sites)
            _record_failures(failures, rnd, "evaluate", failed)
            _require(ok, failed, min_replies, f"round {rnd} evaluate")
            overall = strategy.aggregate_evaluate(rnd, list(ok.values()))
            mlflow.log_metrics({f"eval_{k}": float(v) for k, v in overall.items() if k != "num-examples"}, step=rnd)
            for site, reply in ok.items():
                site_metrics = metrics_from_counts(counts_from(reply_metrics(reply)))
                mlflow.log_metrics({f"{site}/eval_{k}": v for k, v in site_metrics.items()}, step=rnd)

        evidence = _promotion_evidence(grid, arrays, sites, timeout, str(cfg["registered-model"]))
        _record_failures(failures, rounds + 1, "holdout-comparison", evidence.pop("failed"))
        evidence["failures"] = failures
        mlflow.log_dict(evidence, EVIDENCE_PATH)
        for site, entry in evidence["sites"].items():
            mlflow.log_metrics({f"holdout/{site}/candidate_{k}": v for k, v in entry["candidate"].items()})
            if entry["champion"]:
                mlflow.log_metrics({f"holdout/{site}/champion_{k}": v for k, v in entry["champion"].items()})
        if failures:
            mlflow.set_tag(TAG_FAILED_SITES, ",".join(sorted(failures)))

        model.load_state_dict(arrays.to_torch_state_dict())
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            # A synthetic input: the server holds no site data, and must not.
            input_example=np.zeros((1, N_FEATURES), dtype=np.float32),
            pip_requirements=["torch==2.13.0"],
        )
        mlflow.set_tag(TAG_MODEL_URI, info.model_uri)
        log.info("Logged global model %s", info.model_uri)


def _record_failures(failures: dict[str, list[str]], rnd: int, phase: str, failed: Mapping[str, str]) -> None:
    for site, reason in failed.items():
        failures.setdefault(site, []).append(f"round {rnd} {phase}: {reason}")


def _promotion_evidence(
    grid: Grid, arrays: ArrayRecord, sites: Mapping[int, str], timeout: float, registered_model: str
) -> dict:
    """Each site scores the new model and the current champion on its own held-out rows."""
    champion_version, champion_state = load_champion_state(registered_model)
    content = {"arrays": arrays, "config": ConfigRecord({"purpose": "promotion"})}
    if champion_state is not None:
        content[CHAMPION_KEY] = ArrayRecord(champion_state)
    messages = [
        Message(RecordDict(content), message_type="evaluate", dst_node_id=node) for node in grid.get_node_ids()
    ]
    ok, failed = split_replies(grid.send_and_receive(messages, timeout=timeout), sites)
    result: dict = {"champion_version": champion_version, "sites": {}, "failed": failed}
    for site, reply in ok.items():
        metrics = reply_metrics(reply)
        champion = counts_from(metrics, "champion-")
        result["sites"][site] = {
            "candidate": metrics_from_counts(counts_from(metrics)),
            "champion": metrics_from_counts(champion) if champion else None,
            "num_examples": int(metrics["num-examples"]),
        }
    return result
