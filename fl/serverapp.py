"""The ServerApp: federated rounds over the connected sites, logged to MLflow.

Each round sends the global model to every site, which first scores it on its held-out rows and then trains it
(one message, and so one ClientApp process, per site and round); the configured strategy (``strategy`` in the run
config: FedAvg, Flower's robust rules, FedQV, ReputationResidual; fl/strategies/) validates and aggregates the
weights, with per-site state kept in the platform database; the summed
confusion counts give exact federated metrics. Finally every site scores the final model and the registry's
current champion side by side (the promotion evidence, computed where the data live) and fine-tunes the final
model on its recent batches: its personalised model, scored against the site's own champion. The model and all metrics
go to MLflow; registration and promotion are the DAG's job (fl/registry.py).

Run config keys are those of fl/flower_app/pyproject.toml.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import mlflow
import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fl.clientapp import CHAMPION_KEY, COMPUTE_KEY, SITE_CHAMPION_KEY, SITE_KEY, WINDOW_KEY
from fl.model import N_FEATURES, Counts, build_model, metrics_from_counts
from fl.platform_db import platform_db_url
from fl.registry import (
    EVIDENCE_PATH,
    EXPERIMENT,
    TAG_DAG_RUN,
    TAG_FAILED_SITES,
    TAG_FLOWER_RUN,
    TAG_MODEL_URI,
    TAG_STRATEGY,
    load_champion_state,
    site_model_name,
    site_model_tag,
)
from fl.strategies import SiteStateStore, build_strategy

# Child of Flower's logger, so these lines show in `flwr log` with the rest of the run.
log = logging.getLogger("flwr").getChild("mledge")
app = ServerApp()
# A synthetic input example (the server holds no site data, and must not); two rows keep the batch size free.
_INPUT_EXAMPLE = np.zeros((2, N_FEATURES), dtype=np.float32)
_PIP = ["torch==2.13.0"]


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


def reply_metrics(reply: Message) -> dict[str, float]:
    return dict(next(iter(reply.content.metric_records.values())))


def split_replies(replies: Iterable[Message], sites: dict[int, str]) -> tuple[dict[str, Message], dict[str, str]]:
    """Replies by site name, and the error reason of each site that failed.

    Sites name themselves in every reply; ``sites`` (node id -> site) remembers them so that a later error
    from the same node is named too. Node ids change when a SuperNode restarts, site names do not.
    """
    ok: dict[str, Message] = {}
    failed: dict[str, str] = {}
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            failed[sites.get(node, f"node-{node}")] = reply.error.reason
            continue
        if SITE_KEY in reply.content:
            sites[node] = str(reply.content[SITE_KEY][SITE_KEY])
        site = sites.get(node, f"node-{node}")
        if site in ok:  # two nodes claiming one site: neither speaks for it alone
            failed[f"{site} (node {node})"] = f"node {node} claims site {site}, which another node already answered for"
            continue
        ok[site] = reply
    return ok, failed


def name_unknown_nodes(grid: Grid, replies: list[Message], sites: dict[int, str], timeout: float) -> None:
    """Ask nodes that failed before ever naming themselves which site they are (a query message each).

    Costs nothing when every failing node is already known, which is the common case.
    """
    unknown = sorted({r.metadata.src_node_id for r in replies if r.has_error()} - set(sites))
    if not unknown:
        return
    messages = [
        Message(RecordDict({"config": ConfigRecord({})}), message_type="query", dst_node_id=node) for node in unknown
    ]
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if not reply.has_error() and SITE_KEY in reply.content:
            sites[reply.metadata.src_node_id] = str(reply.content[SITE_KEY][SITE_KEY])


def _require(ok: Mapping[str, Message], failed: Mapping[str, str], minimum: int, what: str) -> None:
    for site, reason in failed.items():
        log.warning("%s: site %s failed: %s", what, site, reason)
    if len(ok) < minimum:
        raise NotEnoughSitesError(
            f"{what}: only {len(ok)} site(s) answered ({sorted(ok)}), {minimum} needed; failures: {dict(failed)}"
        )


def log_evaluation(ok: Mapping[str, Message], step: int, prefix: str = "") -> None:
    """Federated and per-site held-out metrics of one global model, at ``step`` (its round)."""
    per_site = {site: counts_from(reply_metrics(reply), prefix) for site, reply in ok.items()}
    total = sum(per_site.values(), Counts(0, 0, 0, 0, 0.0))
    mlflow.log_metrics({f"eval_{k}": v for k, v in metrics_from_counts(total).items()}, step=step)
    for site, counts in per_site.items():
        mlflow.log_metrics({f"{site}/eval_{k}": v for k, v in metrics_from_counts(counts).items()}, step=step)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    rounds = int(cfg["num-server-rounds"])
    min_nodes = int(cfg["min-nodes"])
    min_replies = int(cfg["min-replies"])
    timeout = float(cfg["reply-timeout-s"])
    strategy_name = str(cfg.get("strategy", "fedavg"))
    strategy = build_strategy(strategy_name, min_nodes=min_nodes, state=SiteStateStore(platform_db_url()))
    train_config = ConfigRecord(
        {"local-epochs": int(cfg["local-epochs"]), "learning-rate": float(cfg["learning-rate"])}
    )

    mlflow.set_experiment(str(cfg.get("experiment", EXPERIMENT)))
    tags = {
        TAG_FLOWER_RUN: str(context.run_id),
        TAG_DAG_RUN: str(cfg.get("dag-run-id", "")),
        TAG_STRATEGY: strategy_name,
    }
    with mlflow.start_run(run_name=f"flower-run-{context.run_id}", tags=tags):
        mlflow.log_params({k: v for k, v in cfg.items() if k != "dag-run-id"})
        sites: dict[int, str] = {}
        failures: dict[str, list[str]] = {}
        compute: dict[str, float] = {}

        model = build_model(seed=int(cfg.get("seed", 0)))
        arrays = ArrayRecord(model.state_dict())
        for rnd in range(1, rounds + 1):
            messages = strategy.configure_train(rnd, arrays, train_config, grid)
            replies = list(grid.send_and_receive(messages, timeout=timeout))
            name_unknown_nodes(grid, replies, sites, timeout)
            ok, failed = split_replies(replies, sites)
            _record_failures(failures, rnd, "train", failed)
            _require(ok, failed, min_replies, f"round {rnd}")
            log_evaluation(ok, step=rnd - 1)  # the sites scored the model they received
            _add_compute(compute, ok)
            aggregated, train_metrics = strategy.aggregate_train(rnd, list(ok.values()))
            rejected = dict(strategy.last_rejected)
            _record_failures(failures, rnd, "rejected update", rejected)
            if aggregated is None or len(ok) - len(rejected) < min_replies:
                raise NotEnoughSitesError(
                    f"round {rnd}: {len(ok) - len(rejected)} usable update(s), {min_replies} needed; "
                    f"rejected: {rejected}"
                )
            arrays = aggregated
            weights = {f"{site}/aggregation_weight": float(w) for site, w in strategy.last_weights.items()}
            mlflow.log_metrics(weights, step=rnd)
            if train_metrics and "train-loss" in train_metrics:
                mlflow.log_metric("train_loss", float(train_metrics["train-loss"]), step=rnd)
            log.info("round %d: trained at %s", rnd, ", ".join(sorted(ok)))

        finalise_config = ConfigRecord(
            {
                "learning-rate": float(cfg["learning-rate"]),
                "personal-epochs": int(cfg.get("personal-epochs", 2)),
                "recent-batches": int(cfg.get("recent-batches", 3)),
            }
        )
        evidence, ok = _finalise(grid, arrays, sites, timeout, str(cfg["registered-model"]), finalise_config)
        _record_failures(failures, rounds + 1, "final evaluation", evidence.pop("failed"))
        if ok:
            log_evaluation(ok, step=rounds)
            _add_compute(compute, ok)
        evidence["failures"] = failures
        evidence["compute_seconds"] = compute
        for site, entry in evidence["sites"].items():
            mlflow.log_metrics({f"holdout/{site}/candidate_{k}": v for k, v in entry["candidate"].items()})
            if entry["champion"]:
                mlflow.log_metrics({f"holdout/{site}/champion_{k}": v for k, v in entry["champion"].items()})
            mlflow.log_metrics({f"recent/{site}/personal_{k}": v for k, v in entry["personal"].items()})
            personal = build_model()
            personal.load_state_dict(ok[site].content["arrays"].to_torch_state_dict())
            info = mlflow.pytorch.log_model(
                personal, name=f"site-{site}", input_example=_INPUT_EXAMPLE, pip_requirements=_PIP
            )
            mlflow.set_tag(site_model_tag(site), info.model_uri)
        mlflow.log_dict(evidence, EVIDENCE_PATH)
        mlflow.log_dict(sites, "sites.json")
        if failures:
            mlflow.set_tag(TAG_FAILED_SITES, ",".join(sorted(failures)))

        model.load_state_dict(arrays.to_torch_state_dict())
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            input_example=_INPUT_EXAMPLE,
            pip_requirements=_PIP,
        )
        mlflow.set_tag(TAG_MODEL_URI, info.model_uri)
        log.info("Logged global model %s", info.model_uri)


def _add_compute(compute: dict[str, float], ok: Mapping[str, Message]) -> None:
    """Sum each site's reported compute seconds (priced into the project's costs after the run)."""
    for site, reply in ok.items():
        compute[site] = compute.get(site, 0.0) + float(reply_metrics(reply).get(COMPUTE_KEY, 0.0))


def _record_failures(failures: dict[str, list[str]], rnd: int, phase: str, failed: Mapping[str, str]) -> None:
    for site, reason in failed.items():
        failures.setdefault(site, []).append(f"round {rnd} {phase}: {reason}")


def _finalise(
    grid: Grid,
    arrays: ArrayRecord,
    sites: dict[int, str],
    timeout: float,
    registered_model: str,
    config: ConfigRecord,
) -> tuple[dict, dict[str, Message]]:
    """Each site scores the new model and the champions on its own held-out rows and personalises the model.

    A site is sent the global champion and its own site model's champion, never another site's model.
    """
    champion_version, champion_state = load_champion_state(registered_model)
    site_champions = {site: load_champion_state(site_model_name(site)) for site in set(sites.values())}
    messages = []
    for node in grid.get_node_ids():
        content = {"arrays": arrays, "config": config}
        if champion_state is not None:
            content[CHAMPION_KEY] = ArrayRecord(champion_state)
        site_state = site_champions.get(sites.get(node, ""), (None, None))[1]
        if site_state is not None:
            content[SITE_CHAMPION_KEY] = ArrayRecord(site_state)
        messages.append(Message(RecordDict(content), message_type="train.finalise", dst_node_id=node))
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    name_unknown_nodes(grid, replies, sites, timeout)
    ok, failed = split_replies(replies, sites)
    result: dict = {"champion_version": champion_version, "sites": {}, "failed": failed}
    for site, reply in ok.items():
        metrics = reply_metrics(reply)
        champion = counts_from(metrics, "champion-")
        site_champion = counts_from(metrics, "site-champion-")
        window = reply.content[WINDOW_KEY]
        result["sites"][site] = {
            "candidate": metrics_from_counts(counts_from(metrics)),
            "champion": metrics_from_counts(champion) if champion else None,
            "num_examples": int(metrics["num-examples"]),
            "data_window": str(window["data"]),
            # The personalised model against the site's champion, on the site's recent held-out rows.
            "recent_window": str(window["recent"]),
            "recent_examples": int(metrics["recent-examples"]),
            "personal": metrics_from_counts(counts_from(metrics, "personal-")),
            "recent_global": metrics_from_counts(counts_from(metrics, "recent-global-")),
            "site_champion": metrics_from_counts(site_champion) if site_champion else None,
            "site_champion_version": site_champions.get(site, (None, None))[0],
        }
    return result, ok
