"""The ServerApp: federated rounds over the connected sites, logged to MLflow.

Three steps, each a function of its own:

1. ``train_rounds``: each round sends the global model to every site, which first scores it on its held-out rows
   and then trains it (one message, and so one ClientApp process, per site and round); the configured strategy
   (``strategy`` in the run config; fl/strategies/) validates and aggregates the weights, with per-site state
   kept in the platform database; the summed confusion counts give exact federated metrics.
2. ``finalise``: every site scores the final model and the registry's current champion side by side (the
   promotion evidence, computed where the data live) and fine-tunes the final model on its recent batches: its
   personalised model, scored against the site's own champion.
3. ``publish``: the models, the evidence and the metrics go to MLflow; registration and promotion are the DAG's
   job (mledge/registry/).

Run config keys are those of fl/flower_app/pyproject.toml.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from tenacity import retry, stop_after_attempt, wait_exponential

from fl import families, trees
from fl.convergence import EarlyStopping, pooled_validation
from fl.grid import PromptGrid
from fl.model import model_from_state
from fl.outbox import GLOBAL, Outbox, outbox_dir
from fl.privacy.server import apply_privacy
from fl.protocol import ZERO, Counts, PromotionEvidence, SiteEvidence, counts_from, metric_problems, metrics_from_counts
from fl.strategies import AggregationStrategy, SiteStateStore, build_strategy
from fl.strategies.state import Lease, RoundState
from fl.tree_strategy import tree_strategy
from mledge.contracts import (
    ARRAYS_KEY,
    CHAMPION_KEY,
    COMPUTE_KEY,
    CONFIG_KEY,
    DEFAULT_PRIVACY,
    DEFAULT_STRATEGY,
    EVIDENCE_PATH,
    EXPERIMENT,
    MSG_FINALISE,
    MSG_QUERY,
    NUM_EXAMPLES_KEY,
    PATIENCE,
    PRIVACY_KEY,
    SITE_CHAMPION_KEY,
    SITE_KEY,
    SUPERNODE_REGISTRY,
    TAG_DAG_RUN,
    TAG_FAILED_SITES,
    TAG_FLOWER_RUN,
    TAG_MODEL_FAMILY,
    TAG_STRATEGY,
    TAG_THRESHOLD,
    WINDOW_KEY,
    XGBOOST,
    mledge_home,
    platform_db_url,
    site_model_name,
)
from mledge.onsite.schema import FEATURE_NAMES, N_FEATURES
from mledge.registry.figures import run_figures

# Child of Flower's logger, so these lines show in `flwr log` with the rest of the run.
log = logging.getLogger("flwr").getChild("mledge")
app = ServerApp()
# A synthetic input example (the server holds no site data, and must not); two rows keep the batch size free.
_INPUT_EXAMPLE = np.zeros((2, N_FEATURES), dtype=np.float32)
_PIP = ["torch==2.13.0"]

MetricSink = Callable[..., None]  # mlflow.log_metrics(metrics, step=...)
ChampionLoader = Callable[[str], tuple[str | None, dict | None]]  # registered model -> (version, state dict)


class NotEnoughSitesError(RuntimeError):
    """Too few sites answered a round for its result to mean anything."""


@dataclass
class TrainResult:
    """What the rounds leave: the final global weights, which node is which site, failures and compute time."""

    arrays: ArrayRecord
    sites: dict[int, str] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)
    compute: dict[str, float] = field(default_factory=dict)
    # node id -> site of the registered SuperNode keys (a node's id is bound to its key): with it, a site is who
    # the registry says, never who its reply claims to be. None: sites name themselves (no node authentication).
    registered: dict[int, str] | None = None

    def __post_init__(self) -> None:
        if self.registered is not None:
            self.sites.update(self.registered)


def reply_metrics(reply: Message) -> dict[str, float]:
    return dict(next(iter(reply.content.metric_records.values())))


def sender(reply: Message, addressed: Mapping[str, int]) -> int:
    """The node a reply speaks for. The SuperLink answers for a node it lost (a SuperNode killed or timed out)
    with an error reply of its own (source ``SUPERLINK_NODE_ID``); that failure belongs to the node the message
    was addressed to (``addressed``: message id -> destination node), not to a "node-1" nobody registered."""
    node = reply.metadata.src_node_id
    if node == SUPERLINK_NODE_ID:
        return addressed.get(reply.metadata.reply_to_message_id, node)
    return node


def split_replies(
    replies: Iterable[Message],
    sites: dict[int, str],
    registered: Mapping[int, str] | None = None,
    addressed: Mapping[str, int] | None = None,
) -> tuple[dict[str, Message], dict[str, str]]:
    """Replies by site name, and the reason of each site (or node) that failed or was refused.

    With ``registered`` (node id -> site, from the SuperNode registry), a node's site is the one its key was
    registered for: a reply that claims another site, or comes from a node no site registered, is refused and
    named. Without it sites name themselves; ``sites`` (node id -> site) remembers them so that a later error from
    the same node is named too. Node ids change when a SuperNode restarts, site names do not. ``addressed``
    (message id -> destination node) names the node of an error the SuperLink answered in its place (``sender``).
    """
    ok: dict[str, Message] = {}
    failed: dict[str, str] = {}
    for reply in replies:
        node = sender(reply, addressed or {})
        claim = str(reply.content[SITE_KEY][SITE_KEY]) if not reply.has_error() and SITE_KEY in reply.content else None
        if registered is not None:
            site = registered.get(node)
            if site is None:
                failed[f"node-{node}"] = f"node {node} is not the registered SuperNode of any site: refused"
                continue
            if claim is not None and claim != site:
                failed[site] = f"node {node} is registered as site {site} but its reply claims site {claim}: refused"
                continue
            sites[node] = site
        elif claim is not None:
            sites[node] = claim
        site = sites.get(node, f"node-{node}")
        if reply.has_error():
            failed[site] = reply.error.reason
            continue
        if site in ok:  # two nodes claiming one site: neither speaks for it alone
            failed[f"{site} (node {node})"] = f"node {node} claims site {site}, which another node already answered for"
            continue
        ok[site] = reply
    return ok, failed


def name_unknown_nodes(
    grid: Grid, replies: list[Message], sites: dict[int, str], timeout: float, addressed: Mapping[str, int]
) -> None:
    """Ask nodes that failed before ever naming themselves which site they are (a query message each).

    Costs nothing when every failing node is already known, which is the common case.
    """
    unknown = sorted({sender(r, addressed) for r in replies if r.has_error()} - set(sites) - {SUPERLINK_NODE_ID})
    if not unknown:  # always so with a registry: every node is known by its key
        return
    messages = [
        Message(RecordDict({CONFIG_KEY: ConfigRecord({})}), message_type=MSG_QUERY, dst_node_id=node)
        for node in unknown
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


def log_evaluation(ok: Mapping[str, Message], step: int, sink: MetricSink, prefix: str = "") -> Counts:
    """Federated and per-site held-out metrics of one global model, at ``step`` (its round); returns the summed
    counts."""
    per_site = {site: counts_from(reply_metrics(reply), prefix) for site, reply in ok.items()}
    total = sum(per_site.values(), ZERO)
    sink({f"eval_{k}": v for k, v in metrics_from_counts(total).items()}, step=step)
    for site, counts in per_site.items():
        sink({f"{site}/eval_{k}": v for k, v in metrics_from_counts(counts).items()}, step=step)
    return total


def _add_compute(compute: dict[str, float], ok: Mapping[str, Message]) -> None:
    """Sum each site's reported compute seconds (priced into the project's costs after the run)."""
    for site, reply in ok.items():
        compute[site] = compute.get(site, 0.0) + float(reply_metrics(reply).get(COMPUTE_KEY, 0.0))


def _record_failures(failures: dict[str, list[str]], rnd: int, phase: str, failed: Mapping[str, str]) -> None:
    for site, reason in failed.items():
        failures.setdefault(site, []).append(f"round {rnd} {phase}: {reason}")


def exchange(
    grid: Grid,
    messages: list[Message],
    result: TrainResult,
    *,
    timeout: float,
    what: str,
    rnd: int,
    check: Callable[[Mapping[str, float], float], list[str]],
) -> tuple[dict[str, Message], dict[str, str]]:
    """Send ``messages``, and sort the replies into the usable ones by site and the failures (recorded).

    A failure is an error reply, a refused identity (split_replies), a node that did not answer within
    ``timeout``, or metrics that break the protocol (``check(metrics, seconds waited)``, e.g.
    fl.protocol.metric_problems): what a site reports is not trusted.
    """
    started = time.monotonic()
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    waited = time.monotonic() - started
    addressed = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}  # ids set by the push
    name_unknown_nodes(grid, replies, result.sites, timeout, addressed)
    ok, failed = split_replies(replies, result.sites, result.registered, addressed)
    answered = {sender(r, addressed) for r in replies}
    for node in sorted({m.metadata.dst_node_id for m in messages} - answered):
        failed[result.sites.get(node, f"node-{node}")] = f"no reply within {timeout:.0f}s"
    for site, reply in list(ok.items()):
        problems = check(reply_metrics(reply), waited)
        if problems:
            failed[site] = "reply refused: " + "; ".join(problems)
            del ok[site]
    _record_failures(result.failures, rnd, what, failed)
    return ok, failed


def _train_check(metrics: Mapping[str, float], waited: float) -> list[str]:
    return metric_problems(metrics, examples_key="eval-examples", max_seconds=waited + 1.0)


def _finalise_check(metrics: Mapping[str, float], waited: float) -> list[str]:
    prefixes = ("", "recent-global-", "personal-") + tuple(
        p for p in ("champion-", "site-champion-") if f"{p}tp" in metrics
    )
    problems = metric_problems(metrics, examples_key=NUM_EXAMPLES_KEY, prefixes=prefixes, max_seconds=waited + 1.0)
    return problems + [f"missing {k}" for k in (NUM_EXAMPLES_KEY, "recent-examples") if k not in metrics]


def connected_nodes(
    grid: Grid, strategy: AggregationStrategy, *, floor: int, wait: float, clock: Callable[[], float] = time.monotonic
) -> list[int]:
    """The connected nodes once the strategy's minimum is there, or after ``wait`` seconds if at least ``floor``
    are; fewer than ``floor`` after ``wait`` fails the round, saying how many were there."""
    wanted = max(int(getattr(strategy, "min_available_nodes", floor) or floor), floor)
    deadline = clock() + wait
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= wanted or (clock() >= deadline and len(nodes) >= floor):
            return nodes
        if clock() >= deadline:
            raise NotEnoughSitesError(f"only {len(nodes)} site(s) connected after {wait:.0f}s; {floor} needed")
        time.sleep(1.0)


@contextmanager
def sampling_at_most(strategy: AggregationStrategy, available: int):
    """Let the strategy sample from ``available`` nodes this round (Flower's samplers wait for their minimum)."""
    saved = {k: getattr(strategy, k) for k in ("min_available_nodes", "min_train_nodes") if hasattr(strategy, k)}
    for key, value in saved.items():
        setattr(strategy, key, min(int(value), available))
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(strategy, key, value)


def train_rounds(
    grid: Grid,
    strategy: AggregationStrategy,
    arrays: ArrayRecord,
    *,
    rounds: int,
    train_config: ConfigRecord | Callable[[int], ConfigRecord],
    min_replies: int,
    timeout: float,
    sink: MetricSink,
    registered: Mapping[int, str] | None = None,
    node_wait: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    stopping: EarlyStopping | None = None,
    round_state: RoundState | None = None,
) -> TrainResult:
    """Step 1: ``rounds`` federated rounds from ``arrays``; fails when fewer than ``min_replies`` sites count.

    ``registered``: node id -> site from the SuperNode registry (see TrainResult.registered). Before each round
    the connected sites are awaited ``node_wait`` seconds at most (Flower's own sampling would wait forever for
    its minimum); a round with fewer than the strategy's minimum but at least ``min_replies`` goes on with them,
    and the missing sites are recorded.

    ``train_config``: the same config every round, or one per round (a learning-rate schedule). ``stopping``:
    early stopping on the sites' pooled validation loss; the run ends once it says so and keeps its best model.
    ``round_state``: the strategy's staged per-site state, committed when a round is accepted, dropped when not.
    """
    result = TrainResult(arrays=arrays, registered=dict(registered) if registered is not None else None)
    for rnd in range(1, rounds + 1):
        connected = connected_nodes(grid, strategy, floor=min_replies, wait=node_wait, clock=clock)
        missing = {
            site for node, site in (result.registered or {}).items() if node not in connected
        } - set(result.sites.get(n) for n in connected)
        _record_failures(result.failures, rnd, "train", dict.fromkeys(sorted(missing), "not connected"))
        with sampling_at_most(strategy, len(connected)):
            config = train_config(rnd) if callable(train_config) else train_config
            messages = list(strategy.configure_train(rnd, result.arrays, config, grid))
        ok, failed = exchange(grid, messages, result, timeout=timeout, what="train", rnd=rnd, check=_train_check)
        _require(ok, failed, min_replies, f"round {rnd}")
        log_evaluation(ok, step=rnd - 1, sink=sink)  # the sites scored the model they received
        _add_compute(result.compute, ok)
        if stopping is not None:
            stop = stopping.observe(rnd - 1, result.arrays, [reply_metrics(r) for r in ok.values()])
            sink({"val_loss": pooled_validation(reply_metrics(r) for r in ok.values())[0]}, step=rnd - 1)
            if stop:
                log.info("round %d: no better validation loss for %d rounds: stopped", rnd, stopping.patience)
                break
        aggregated, train_metrics = strategy.aggregate_train(rnd, list(ok.values()))
        rejected = dict(strategy.last_rejected)
        _record_failures(result.failures, rnd, "rejected update", rejected)
        if aggregated is None or len(ok) - len(rejected) < min_replies:
            if round_state is not None:
                round_state.discard()  # the strategy's updates of a rejected round leave no trace
            raise NotEnoughSitesError(
                f"round {rnd}: {len(ok) - len(rejected)} usable update(s), {min_replies} needed; rejected: {rejected}"
            )
        result.arrays = aggregated
        if round_state is not None:
            round_state.commit()  # the accepted round's budgets and reputations, in one transaction
        sink({f"{site}/aggregation_weight": float(w) for site, w in strategy.last_weights.items()}, step=rnd)
        if train_metrics and "train-loss" in train_metrics:
            sink({"train_loss": float(train_metrics["train-loss"])}, step=rnd)
        log.info("round %d: trained at %s", rnd, ", ".join(sorted(ok)))
    if stopping is not None and stopping.best_model is not None:
        result.arrays = stopping.best_model
    return result


# What a site may say of its windows: batch names and a SHA-256; anything else (it would reach model cards and
# registry tags) is dropped.
WINDOW_PATTERN = re.compile(r"batch-\d{6}(:batch-\d{6})?")
DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")


def lineage_value(value: object, pattern: re.Pattern) -> str:
    """``value`` if it is a string of ``pattern``, else "" (a site's lineage claim is not trusted)."""
    return value if isinstance(value, str) and pattern.fullmatch(value) else ""


def finalise(
    grid: Grid,
    result: TrainResult,
    *,
    timeout: float,
    registered_model: str,
    config: ConfigRecord,
    load_champion: ChampionLoader,
    final_round: int,
) -> tuple[PromotionEvidence, dict[str, Message]]:
    """Step 2: each site scores the new model and the champions on its own held-out rows and personalises it.

    A site is sent the global champion and its own site model's champion, never another site's model.
    """
    champion_version, champion_state = load_champion(registered_model)
    site_champions = {site: load_champion(site_model_name(site)) for site in set(result.sites.values())}
    messages = []
    for node in grid.get_node_ids():
        content = {ARRAYS_KEY: result.arrays, CONFIG_KEY: config}
        if champion_state is not None:
            content[CHAMPION_KEY] = families.record_of(champion_state)
        site_state = site_champions.get(result.sites.get(node, ""), (None, None))[1]
        if site_state is not None:
            content[SITE_CHAMPION_KEY] = families.record_of(site_state)
        messages.append(Message(RecordDict(content), message_type=MSG_FINALISE, dst_node_id=node))
    ok, _ = exchange(
        grid, messages, result, timeout=timeout, what="final evaluation", rnd=final_round, check=_finalise_check
    )
    _add_compute(result.compute, ok)
    evidence = PromotionEvidence(champion_version, failures=result.failures, compute_seconds=result.compute)
    for site, reply in ok.items():
        metrics = reply_metrics(reply)
        champion = counts_from(metrics, "champion-")
        site_champion = counts_from(metrics, "site-champion-")
        window = reply.content.get(WINDOW_KEY) or ConfigRecord({"data": "", "recent": ""})
        evidence.sites[site] = SiteEvidence(
            candidate=metrics_from_counts(counts_from(metrics)),
            champion=metrics_from_counts(champion) if champion else None,
            num_examples=int(metrics[NUM_EXAMPLES_KEY]),
            data_window=lineage_value(window.get("data"), WINDOW_PATTERN),
            recent_window=lineage_value(window.get("recent"), WINDOW_PATTERN),
            data_digest=lineage_value(window.get("data-digest"), DIGEST_PATTERN),
            recent_digest=lineage_value(window.get("recent-digest"), DIGEST_PATTERN),
            recent_examples=int(metrics["recent-examples"]),
            personal=metrics_from_counts(counts_from(metrics, "personal-")),
            recent_global=metrics_from_counts(counts_from(metrics, "recent-global-")),
            site_champion=metrics_from_counts(site_champion) if site_champion else None,
            site_champion_version=site_champions.get(site, (None, None))[0],
        )
    return evidence, ok


def publish(
    result: TrainResult, evidence: PromotionEvidence, ok: Mapping[str, Message], *, step: int, outbox: Outbox
) -> None:
    """Step 3: the final evaluation, the evidence, which sites failed, and every model, into the run's outbox (at
    the platform); ``Outbox.flush`` then sends them to MLflow, each model to the experiment its readers may read
    (the global models', or the site's own)."""
    final = log_evaluation(ok, step=step, sink=outbox.log_metrics) if ok else None
    for site, entry in evidence.sites.items():
        outbox.log_metrics({f"holdout/{site}/candidate_{k}": v for k, v in entry.candidate.items()}, step=step)
        if entry.champion:
            outbox.log_metrics({f"holdout/{site}/champion_{k}": v for k, v in entry.champion.items()}, step=step)
        outbox.log_metrics({f"recent/{site}/personal_{k}": v for k, v in entry.personal.items()}, step=step)
    for site in sorted(ok):
        outbox.put_model(site, families.arrays_of(ok[site].content[ARRAYS_KEY]))
        outbox.put_model_metrics(site, {f"recent_{k}": v for k, v in evidence.sites[site].personal.items()})
    outbox.put_model(GLOBAL, families.arrays_of(result.arrays))
    if final is not None:  # the final evaluation, on every site's held-out rows, attached to the logged model
        outbox.put_model_metrics(GLOBAL, {f"holdout_{k}": v for k, v in metrics_from_counts(final).items()})
    for path, figure in run_figures(outbox.history(), final).items():
        outbox.put_figure(path, figure)
    outbox.put_datasets([
        {"site": site, "window": entry.data_window, "digest": entry.data_digest}
        for site, entry in sorted(evidence.sites.items()) if entry.data_window and entry.data_digest
    ])
    outbox.put_document(EVIDENCE_PATH, evidence.to_dict())
    outbox.put_document("sites.json", {str(node): site for node, site in result.sites.items()})
    if evidence.failures:
        outbox.set_tags({TAG_FAILED_SITES: ",".join(sorted(evidence.failures))})


def log_model(state: Mapping, experiment: str, run_name: str, tags: Mapping[str, str]) -> tuple[str, str, str]:
    """One model in a run of its own in ``experiment``; returns (model URI, run id, logged model id). The outbox's
    model logger.

    MLflow's flavour follows the model's family: pytorch for the MLP, xgboost for a booster (fl/families.py)."""
    found = mlflow.MlflowClient().get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else mlflow.create_experiment(experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags)) as run:
        if trees.is_tree_record(state):
            info = families.log_booster(state)
        else:
            model = model_from_state({k: torch.as_tensor(v) for k, v in state.items()})
            # MLflow's pt2 format (torch.export, no pickle for a site to unpickle) takes tensor signatures only:
            # the feature names go into the model's metadata instead (fl/families.py names the trees' columns).
            info = mlflow.pytorch.log_model(model, name="model", input_example=_INPUT_EXAMPLE, pip_requirements=_PIP,
                                            metadata={"feature_names": list(FEATURE_NAMES)})
    return info.model_uri, run.info.run_id, info.model_id


def live_sink(outbox: Outbox) -> MetricSink:
    """The rounds' metric sink: into the outbox, then on to MLflow at once if it answers (a live timeline);
    if it does not, the round goes on and the next flush catches up."""

    def sink(metrics: Mapping[str, float], step: int) -> None:
        outbox.log_metrics(metrics, step)
        try:
            outbox.flush(log_model, attempts=1)
        except Exception as exc:  # MLflow down or slow: the outbox keeps the metrics
            log.warning("metrics kept in the outbox, not in MLflow yet (%s: %s)", exc.__class__.__name__, exc)

    return sink


def registered_sites(path: Path) -> dict[int, str] | None:
    """node id -> site of the SuperNode keys the platform registered (``mledge nodes register``); None if none."""
    from mledge.security.node_keys import registry_sites

    if not path.exists():
        log.warning("no SuperNode registry at %s: sites name themselves (no node authentication)", path)
        return None
    return {int(node): site for node, site in registry_sites(path).items()}


@app.main()
def main(grid: Grid, context: Context) -> None:
    from mledge.registry.promotion import load_champion_state

    grid = PromptGrid(grid)  # replies collected as they come (Flower's own grid pulls every 3 s)
    cfg = context.run_config
    rounds = int(cfg["num-server-rounds"])
    timeout = float(cfg["reply-timeout-s"])
    strategy_name = str(cfg.get("strategy", DEFAULT_STRATEGY))
    family = families.family_of(cfg)
    round_state, lease = None, Lease("", None)  # trees keep no per-site strategy state
    if family == XGBOOST:  # refuses the strategies that cannot apply to trees, saying why
        strategy = tree_strategy(
            strategy_name, min_nodes=int(cfg["min-nodes"]), privacy=str(cfg.get(PRIVACY_KEY, DEFAULT_PRIVACY))
        )
    else:
        store = SiteStateStore(platform_db_url())
        round_state = RoundState(store)  # a round's state is written only once the round is accepted
        strategy = build_strategy(strategy_name, min_nodes=int(cfg["min-nodes"]), state=round_state)
        # One run at a time updates a strategy's per-site state; the lock goes with this process.
        lease = store.lease(getattr(strategy, "state_key", strategy_name), wait_s=float(cfg.get("node-wait-s", 0)))
    # privacy (fl/privacy/): refuses strategies that cannot run under the mode; under none, strategy unchanged
    strategy, privacy = apply_privacy(
        cfg, strategy_name, strategy, min_nodes=int(cfg["min-nodes"]), min_replies=int(cfg["min-replies"]),
        timeout=timeout,
    )
    tags = {
        TAG_FLOWER_RUN: str(context.run_id),
        TAG_DAG_RUN: str(cfg.get("dag-run-id", "")),
        TAG_STRATEGY: strategy_name,
        TAG_MODEL_FAMILY: family,
    }
    stopping = EarlyStopping(patience=int(cfg.get("patience", PATIENCE)))
    outbox = Outbox(outbox_dir(mledge_home(), str(context.run_id)))
    outbox.start(
        str(cfg.get("experiment", EXPERIMENT)), f"flower-run-{context.run_id}", tags,
        {k: v for k, v in cfg.items() if k != "dag-run-id"},
    )
    result = train_rounds(
        grid,
        strategy,
        families.initial_arrays(family, seed=int(cfg.get("seed", 0))),
        rounds=rounds,
        train_config=families.round_config(family, cfg, rounds),
        stopping=stopping,
        min_replies=int(cfg["min-replies"]),
        timeout=timeout,
        sink=live_sink(outbox),
        registered=registered_sites(mledge_home() / SUPERNODE_REGISTRY),
        node_wait=float(cfg.get("node-wait-s", timeout)),
        round_state=round_state,
    )
    lease.release()
    threshold, val_f1 = stopping.threshold()  # from the sites' pooled validation counts of the best model
    result.arrays = families.with_threshold(result.arrays, threshold)
    outbox.set_tags({TAG_THRESHOLD: repr(threshold), TAG_MODEL_FAMILY: family})
    outbox.log_metrics({"threshold": threshold, "val_f1": val_f1, "best_round": stopping.best_round}, step=rounds)
    if privacy is not None:  # the run's (epsilon, delta) and clip bound; registration copies them to the versions
        outbox.set_tags(privacy.tags())
        if privacy.metrics():
            outbox.log_metrics(privacy.metrics(), step=rounds)
    evidence, ok = finalise(
        grid,
        result,
        timeout=timeout,
        registered_model=str(cfg["registered-model"]),
        config=families.finalise_config(family, cfg),
        # The champion is what the gate compares with: MLflow must answer (retried), or the run fails clearly.
        load_champion=retry(stop=stop_after_attempt(5), wait=wait_exponential(max=20), reraise=True)(
            load_champion_state
        ),
        final_round=rounds + 1,
    )
    publish(result, evidence, ok, step=rounds, outbox=outbox)
    try:
        outbox.flush(log_model, attempts=5)
    except Exception as exc:  # the result is safe at the platform; the DAG's publish step sends it later
        log.warning(
            "MLflow did not take the run's result (%s: %s); kept in %s for `mledge fl publish`",
            exc.__class__.__name__, exc, outbox.folder,
        )

