"""The ServerApp's steps (train_rounds, finalise, publish) against three real sites in this process.

The grid is fl/simulation/harness.py's InProcessGrid: every message goes (as bytes, and back) to the real ClientApp
of fl/clientapp.py, one Context per node, on generated site stores; the strategy is the real FedAvg. Nothing of
ours is replaced. Stores are small (3 batches of 200 rows), so each round takes a fraction of a second.
"""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import fl.clientapp as clientapp
from fl.model import build_model
from fl.outbox import GLOBAL, Outbox
from fl.protocol import ZERO, PromotionEvidence, counts_from, metrics_from_counts
from fl.serverapp import (
    NotEnoughSitesError,
    TrainResult,
    finalise,
    log_model,
    publish,
    reply_metrics,
    train_rounds,
)
from fl.simulation.harness import CLIENT_APP_RAISED_EXCEPTION, SUPERLINK_NODE_ID, InProcessGrid
from fl.strategies import MemoryStateStore, build_strategy
from mledge.contracts import (
    ARRAYS_KEY,
    CHAMPION_KEY,
    COMPUTE_KEY,
    EVIDENCE_PATH,
    GLOBAL_MODELS_EXPERIMENT,
    MSG_FINALISE,
    MSG_QUERY,
    MSG_TRAIN,
    SITE_CHAMPION_KEY,
    TAG_FAILED_SITES,
    TAG_FLOWER_RUN,
    TAG_MODEL_RUN,
    TAG_MODEL_URI,
    TAG_SITE,
    site_model_name,
    site_model_run_tag,
    site_model_tag,
    site_models_experiment,
)
from mledge.onsite.store import SiteDataError, load_site_data
from mledge.onsite.training import evaluate, load_window, split, window_digest

SITES = ("plant_a", "plant_b", "plant_c")
NODES = {11: "plant_a", 12: "plant_b", 13: "plant_c"}
ROWS, BATCHES, ROUNDS = 200, 3, 2
RECENT_BATCHES = 2


def flower_reason(exc: Exception) -> str:
    """The reason a SuperNode puts in its error reply when the ClientApp raises (flwr's run_clientapp format)."""
    return str(type(exc)) + ":<'" + str(exc) + "'>"


def train_config() -> ConfigRecord:
    # A fresh record per run: Flower's configure_train writes "server-round" into it.
    return ConfigRecord({"local-epochs": 1, "learning-rate": 0.01})


def final_config() -> ConfigRecord:
    return ConfigRecord({"learning-rate": 0.01, "personal-epochs": 1, "recent-batches": RECENT_BATCHES})


def fedavg():
    return build_strategy("fedavg", min_nodes=3, state=MemoryStateStore())


def state_of(arrays: ArrayRecord) -> dict[str, torch.Tensor]:
    return arrays.to_torch_state_dict()


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def break_store(store, site) -> str:
    """Add a batch that fails the schema; returns the reason the site's ClientApp error reply will carry."""
    (store / "batches" / f"batch-{BATCHES + 1:06d}.csv").write_text("udi,foo\n1,2\n")
    with pytest.raises(SiteDataError) as err:
        load_site_data(store, site)
    return flower_reason(err.value)


class Sink:
    """The metric sink (mlflow.log_metrics' signature): every call, in order."""

    def __init__(self):
        self.calls: list[tuple[int, dict[str, float]]] = []

    def __call__(self, metrics, step):
        self.calls.append((step, dict(metrics)))

    def at(self, step: int) -> dict[str, float]:
        merged = {}
        for s, metrics in self.calls:
            if s == step:
                merged.update(metrics)
        return merged


@pytest.fixture
def stores(make_store):
    return {site: make_store(site, batches=BATCHES, rows=ROWS) for site in SITES}


@pytest.fixture
def make_grid(stores):
    """make_grid(**options) -> an InProcessGrid over the three sites (nodes 11-13), closed after the test."""
    grids = []

    def make(**options):
        nodes = {node: {"site": site, "data-dir": str(stores[site])} for node, site in NODES.items()}
        grid = InProcessGrid(clientapp.app, nodes, run_id=42, record=True, **options)
        grids.append(grid)
        return grid

    yield make
    for grid in reversed(grids):
        grid.close()


def server_round(message: Message) -> int:
    return int(message.content["config"]["server-round"])


def round_of(grid: InProcessGrid, reply: Message) -> int:
    """The round of a train reply: that of the instruction it answers (Flower's FedAvg sets no group id)."""
    (instruction,) = [m for m in grid.received if m.metadata.message_id == reply.metadata.reply_to_message_id]
    return server_round(instruction)


def replies_of(grid: InProcessGrid, message_type: str) -> list[Message]:
    return [r for r in grid.replies if r.metadata.message_type == message_type]


def received_by(grid: InProcessGrid, node: int, message_type: str) -> list[Message]:
    return [m for m in grid.received if m.metadata.dst_node_id == node and m.metadata.message_type == message_type]


# --- the grid ---------------------------------------------------------------------------------------------------


def test_the_grid_delivers_copies_to_the_clientapp_and_returns_its_replies(make_grid):
    grid = make_grid()
    assert grid.get_node_ids() == [11, 12, 13]
    sent = [Message(RecordDict(), dst_node_id=node, message_type=MSG_QUERY) for node in NODES]
    replies = grid.send_and_receive(sent, timeout=5)

    assert {r.metadata.src_node_id: r.content["site"]["site"] for r in replies} == NODES
    for message, reply in zip(sent, replies, strict=True):
        assert message.metadata.message_id  # set on push, as the SuperLink does
        assert reply.metadata.reply_to_message_id == message.metadata.message_id
        assert reply.metadata.dst_node_id == SUPERLINK_NODE_ID and reply.metadata.run_id == 42
        assert not reply.has_error()
    # The ClientApp got a copy (as over the network), with the same id and content.
    assert [m.metadata.message_id for m in grid.received] == [m.metadata.message_id for m in sent]
    assert all(r is not s for r, s in zip(grid.received, sent, strict=True))
    assert grid.pull_messages([m.metadata.message_id for m in sent]) == []  # each reply is handed back once


def test_a_clientapp_exception_becomes_a_supernode_error_reply(stores):
    nodes = {21: {"site": "plant_a"}}  # no data-dir: the ClientApp raises SiteDataError
    with InProcessGrid(clientapp.app, nodes) as grid:
        content = RecordDict({ARRAYS_KEY: ArrayRecord(build_model().state_dict()), "config": train_config()})
        (reply,) = grid.send_and_receive([Message(content, dst_node_id=21, message_type=MSG_TRAIN)])
    assert reply.has_error() and reply.metadata.src_node_id == 21
    assert reply.error.code == CLIENT_APP_RAISED_EXCEPTION
    expected = SiteDataError("plant_a", "this SuperNode has no 'data-dir' in its --node-config")
    assert reply.error.reason == flower_reason(expected)
    assert reply.error.reason.startswith("<class 'mledge.onsite.store.SiteDataError'>:<'site plant_a: ")


def test_a_silent_node_is_listed_but_never_answers(make_grid):
    grid = make_grid(silent={12})
    assert 12 in grid.get_node_ids()
    sent = [Message(RecordDict(), dst_node_id=node, message_type=MSG_QUERY) for node in NODES]
    replies = grid.send_and_receive(sent, timeout=1)
    assert sorted(r.metadata.src_node_id for r in replies) == [11, 13]
    assert grid.pull_messages([m.metadata.message_id for m in sent]) == []
    grid.silent.clear()  # it may come back
    (reply,) = grid.send_and_receive([Message(RecordDict(), dst_node_id=12, message_type=MSG_QUERY)])
    assert reply.content["site"]["site"] == "plant_b"


def test_the_grid_sets_the_serverapp_task_identity_and_puts_the_previous_one_back(monkeypatch, stores):
    for attribute in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attribute, None)
    with pytest.raises(RuntimeError, match="TaskIdentity"):
        Message(RecordDict(), dst_node_id=11, message_type=MSG_QUERY)
    with InProcessGrid(clientapp.app, {11: {"site": "plant_a"}}, run_id=7):
        message = Message(RecordDict(), dst_node_id=11, message_type=MSG_QUERY)
        assert (message.metadata.run_id, message.metadata.src_node_id) == (7, SUPERLINK_NODE_ID)
    with pytest.raises(RuntimeError, match="TaskIdentity"):
        Message(RecordDict(), dst_node_id=11, message_type=MSG_QUERY)


# --- train_rounds -----------------------------------------------------------------------------------------------


def test_train_rounds_over_three_sites_with_fedavg(make_grid):
    grid, sink = make_grid(), Sink()
    start = ArrayRecord(build_model(seed=0).state_dict())
    result = train_rounds(
        grid, fedavg(), start, rounds=ROUNDS, train_config=train_config(), min_replies=3, timeout=10, sink=sink
    )

    assert result.sites == NODES
    assert result.failures == {}
    assert not same_state(state_of(result.arrays), state_of(start))

    train_replies = replies_of(grid, MSG_TRAIN)
    assert len(train_replies) == 3 * ROUNDS
    by_round = {rnd: [r for r in train_replies if round_of(grid, r) == rnd] for rnd in (1, 2)}
    # The result is FedAvg of the last round's updates (weighted by examples), and round 2 started from round 1's.
    sent_to_a = received_by(grid, 11, MSG_TRAIN)
    assert [server_round(m) for m in sent_to_a] == [1, 2]
    assert same_state(state_of(sent_to_a[0].content[ARRAYS_KEY]), state_of(start))
    for rnd, replies in by_round.items():
        assert len(replies) == 3
        examples = np.array([r.content["metrics"]["num-examples"] for r in replies], dtype=float)
        weights = examples / examples.sum()
        states = [state_of(r.content[ARRAYS_KEY]) for r in replies]
        mean = {k: sum(w * s[k].double() for w, s in zip(weights, states, strict=True)) for k in states[0]}
        # Round r's aggregate is what the sites are sent in round r+1; the last one is the result.
        target = state_of(result.arrays if rnd == ROUNDS else sent_to_a[rnd].content[ARRAYS_KEY])
        assert all(torch.allclose(target[k].double(), mean[k], atol=1e-6) for k in mean)

    # Compute seconds: each site's sum over its rounds.
    assert set(result.compute) == set(SITES)
    for site in SITES:
        reported = [r.content["metrics"][COMPUTE_KEY] for r in train_replies if r.content["site"]["site"] == site]
        assert len(reported) == ROUNDS and all(s > 0 for s in reported)
        assert result.compute[site] == pytest.approx(sum(reported))

    # The sink: round r's held-out evaluation (of the model sent in round r) at step r-1, federated and per site,
    # and the aggregation weights at step r.
    for rnd, replies in by_round.items():
        logged = sink.at(rnd - 1)
        per_site = {r.content["site"]["site"]: counts_from(dict(r.content["metrics"])) for r in replies}
        total = sum(per_site.values(), ZERO)
        assert logged["eval_accuracy"] == pytest.approx(metrics_from_counts(total)["accuracy"])
        assert logged["eval_f1"] == pytest.approx(metrics_from_counts(total)["f1"])
        for site, counts in per_site.items():
            assert logged[f"{site}/eval_loss"] == pytest.approx(metrics_from_counts(counts)["loss"])
        weights = {k: v for k, v in sink.at(rnd).items() if k.endswith("/aggregation_weight")}
        assert set(weights) == {f"{s}/aggregation_weight" for s in SITES}
        assert sum(weights.values()) == pytest.approx(1.0)
    assert {step for step, _ in sink.calls} == {0, 1, 2}
    assert "train_loss" in sink.at(1) and "train_loss" in sink.at(2)


def test_a_site_with_a_malformed_store_is_recorded_and_the_round_goes_on(make_grid, stores):
    reason = break_store(stores["plant_c"], "plant_c")
    grid, sink = make_grid(), Sink()
    result = train_rounds(
        grid,
        fedavg(),
        ArrayRecord(build_model(seed=0).state_dict()),
        rounds=ROUNDS,
        train_config=train_config(),
        min_replies=2,
        timeout=10,
        sink=sink,
    )

    # It failed before naming itself: the ServerApp asked it (one query, in round 1), so it is named.
    assert result.sites == NODES
    assert [m.metadata.dst_node_id for m in grid.received if m.metadata.message_type == MSG_QUERY] == [13]
    assert result.failures == {"plant_c": [f"round {r} train: {reason}" for r in range(1, ROUNDS + 1)]}
    assert set(result.compute) == {"plant_a", "plant_b"}
    for rnd in (1, 2):
        weights = {k for k in sink.at(rnd) if k.endswith("/aggregation_weight")}
        assert weights == {"plant_a/aggregation_weight", "plant_b/aggregation_weight"}
        assert "plant_c/eval_f1" not in sink.at(rnd - 1)


def test_a_malformed_store_fails_the_run_when_every_site_is_needed(make_grid, stores):
    reason = break_store(stores["plant_c"], "plant_c")
    sink = Sink()
    with pytest.raises(NotEnoughSitesError) as err:
        train_rounds(
            make_grid(),
            fedavg(),
            ArrayRecord(build_model(seed=0).state_dict()),
            rounds=ROUNDS,
            train_config=train_config(),
            min_replies=3,
            timeout=10,
            sink=sink,
        )
    message = str(err.value)
    assert message.startswith("round 1: only 2 site(s) answered (['plant_a', 'plant_b']), 3 needed")
    assert repr(reason) in message
    assert sink.calls == []  # nothing of a failed round is logged


def test_a_silent_site_leaves_fewer_replies(make_grid):
    grid = make_grid(silent={12})
    result = train_rounds(
        grid,
        fedavg(),
        ArrayRecord(build_model(seed=0).state_dict()),
        rounds=ROUNDS,
        train_config=train_config(),
        min_replies=2,
        timeout=10,
        sink=Sink(),
    )
    assert result.sites == {11: "plant_a", 13: "plant_c"}
    assert set(result.compute) == {"plant_a", "plant_c"}
    with pytest.raises(NotEnoughSitesError, match=r"round 1: only 2 site\(s\) answered"):
        train_rounds(
            make_grid(silent={12}),
            fedavg(),
            ArrayRecord(build_model(seed=0).state_dict()),
            rounds=ROUNDS,
            train_config=train_config(),
            min_replies=3,
            timeout=10,
            sink=Sink(),
        )


def test_a_silent_site_is_recorded_as_failed(make_grid):
    # plant_b (node 12) answers round 1; its reply to round 2 never comes.
    grid = make_grid(drop=lambda m: m.metadata.dst_node_id == 12 and server_round(m) == 2)
    result = train_rounds(
        grid,
        fedavg(),
        ArrayRecord(build_model(seed=0).state_dict()),
        rounds=ROUNDS,
        train_config=train_config(),
        min_replies=2,
        timeout=10,
        sink=Sink(),
    )
    assert result.sites[12] == "plant_b" and len(replies_of(grid, MSG_TRAIN)) == 5
    assert "plant_b" in result.failures


# --- finalise ---------------------------------------------------------------------------------------------------


class Champions:
    """load_champion: a distinct model (and version) per registered model name; records every name asked for."""

    def __init__(self, models: dict[str, tuple[str, int]]):
        self.states = {name: (version, build_model(seed=seed).state_dict()) for name, (version, seed) in models.items()}
        self.asked: list[str] = []

    def __call__(self, name):
        self.asked.append(name)
        return self.states.get(name, (None, None))


def final_result(sites=NODES, failures=None) -> TrainResult:
    """What train_rounds leaves: a global model and which node is which site."""
    return TrainResult(
        arrays=ArrayRecord(build_model(seed=5).state_dict()), sites=dict(sites), failures=dict(failures or {})
    )


def recent_counts(store, site, state):
    """Counts of a model on the site's recent held-out rows, computed here from the store (the test's yardstick)."""
    frame, _ = load_window(store, site, last=RECENT_BATCHES)
    _, (x, y) = split(site, frame)
    model = build_model()
    model.load_state_dict(state)
    return evaluate(model, x, y)


def test_finalise_sends_each_site_its_own_champion_and_builds_the_evidence(make_grid, stores):
    grid = make_grid()
    champions = Champions(
        {
            "global-model": ("7", 100),
            site_model_name("plant_a"): ("3", 101),
            site_model_name("plant_b"): ("4", 102),
            # plant_c's site model has no champion yet
        }
    )
    result = final_result()
    evidence, ok = finalise(
        grid,
        result,
        timeout=10,
        registered_model="global-model",
        config=final_config(),
        load_champion=champions,
        final_round=ROUNDS + 1,
    )

    assert champions.asked[0] == "global-model"
    assert sorted(champions.asked[1:]) == sorted(site_model_name(s) for s in SITES)
    # What each ClientApp received: the final model, the global champion, its own site champion and no other.
    global_champion = champions.states["global-model"][1]
    site_states = {site: champions.states.get(site_model_name(site), (None, None))[1] for site in SITES}
    for node, site in NODES.items():
        (message,) = received_by(grid, node, MSG_FINALISE)
        assert same_state(state_of(message.content[ARRAYS_KEY]), state_of(result.arrays))
        assert same_state(state_of(message.content[CHAMPION_KEY]), global_champion)
        if site_states[site] is None:
            assert SITE_CHAMPION_KEY not in message.content
        else:
            assert same_state(state_of(message.content[SITE_CHAMPION_KEY]), site_states[site])
    other_states = [site_states["plant_b"], global_champion]
    (to_a,) = received_by(grid, 11, MSG_FINALISE)
    assert not any(same_state(state_of(to_a.content[SITE_CHAMPION_KEY]), s) for s in other_states)

    assert evidence.champion_version == "7"
    assert set(evidence.sites) == set(ok) == set(SITES)
    assert evidence.failures == {} and evidence.failures is result.failures
    for site, entry in evidence.sites.items():
        metrics = dict(ok[site].content["metrics"])
        assert entry.candidate == metrics_from_counts(counts_from(metrics))
        assert entry.champion == metrics_from_counts(counts_from(metrics, "champion-"))
        assert entry.personal == metrics_from_counts(counts_from(metrics, "personal-"))
        assert entry.recent_global == metrics_from_counts(counts_from(metrics, "recent-global-"))
        assert entry.data_window == f"batch-000001:batch-{BATCHES:06d}"
        assert entry.recent_window == f"batch-{BATCHES - RECENT_BATCHES + 1:06d}:batch-{BATCHES:06d}"
        assert entry.num_examples > 0 and entry.recent_examples > 0
        assert evidence.compute_seconds[site] == pytest.approx(metrics[COMPUTE_KEY])
    # The site champion was scored, at its own site, on that site's recent rows, and only there.
    for site in ("plant_a", "plant_b"):
        entry = evidence.sites[site]
        assert entry.site_champion_version == champions.states[site_model_name(site)][0]
        expected = recent_counts(stores[site], site, site_states[site])
        assert counts_from(dict(ok[site].content["metrics"]), "site-champion-") == expected
        assert entry.site_champion == metrics_from_counts(expected)
    assert evidence.sites["plant_c"].site_champion is None
    assert evidence.sites["plant_c"].site_champion_version is None
    assert counts_from(dict(ok["plant_c"].content["metrics"]), "site-champion-") is None


def test_finalise_without_champions_sends_none(make_grid):
    grid = make_grid()
    evidence, ok = finalise(
        grid,
        final_result(),
        timeout=10,
        registered_model="global-model",
        config=final_config(),
        load_champion=Champions({}),
        final_round=ROUNDS + 1,
    )
    for message in (m for m in grid.received if m.metadata.message_type == MSG_FINALISE):
        assert CHAMPION_KEY not in message.content and SITE_CHAMPION_KEY not in message.content
    assert evidence.champion_version is None
    assert all(e.champion is None and e.site_champion is None for e in evidence.sites.values())
    assert set(evidence.sites) == set(SITES)


def test_a_final_evaluation_failure_is_recorded_with_the_final_round(make_grid, stores):
    reason = break_store(stores["plant_b"], "plant_b")
    earlier = {"plant_c": ["round 2 rejected update: not finite"]}
    result = final_result(failures=earlier)
    evidence, ok = finalise(
        make_grid(),
        result,
        timeout=10,
        registered_model="global-model",
        config=final_config(),
        load_champion=Champions({}),
        final_round=ROUNDS + 1,
    )
    assert set(ok) == set(evidence.sites) == {"plant_a", "plant_c"}
    assert evidence.failures == {
        "plant_b": [f"round {ROUNDS + 1} final evaluation: {reason}"],
        "plant_c": ["round 2 rejected update: not finite"],
    }
    assert set(evidence.compute_seconds) == {"plant_a", "plant_c"}


def test_a_site_silent_in_the_final_evaluation_is_recorded_as_failed(make_grid):
    grid = make_grid(silent={12})
    evidence, _ = finalise(
        grid,
        final_result(),
        timeout=10,
        registered_model="global-model",
        config=final_config(),
        load_champion=Champions({"global-model": ("7", 100)}),
        final_round=ROUNDS + 1,
    )
    assert set(evidence.sites) == {"plant_a", "plant_c"}
    assert "plant_b" in evidence.failures


# --- publish ----------------------------------------------------------------------------------------------------


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """A fresh SQLite tracking store with artifacts under tmp_path; yields the experiment id."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # experiments the ServerApp creates keep MLflow's default ./mlruns artifact root
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow.create_experiment("rounds", artifact_location=(tmp_path / "artifacts").as_uri())
    finally:
        mlflow.set_tracking_uri(None)


def test_publish_logs_the_evidence_the_site_models_and_the_global_model(make_grid, stores, tracking, tmp_path):
    reason = break_store(stores["plant_c"], "plant_c")
    grid = make_grid()
    result = train_rounds(
        grid,
        fedavg(),
        ArrayRecord(build_model(seed=0).state_dict()),
        rounds=ROUNDS,
        train_config=train_config(),
        min_replies=2,
        timeout=10,
        sink=Sink(),
    )
    evidence, ok = finalise(
        grid,
        result,
        timeout=10,
        registered_model="global-model",
        config=final_config(),
        load_champion=Champions({}),
        final_round=ROUNDS + 1,
    )
    outbox = Outbox(tmp_path / "outbox")
    outbox.start("rounds", "flower-run-7", {TAG_FLOWER_RUN: "7"}, {"num-server-rounds": ROUNDS})
    publish(result, evidence, ok, step=ROUNDS, outbox=outbox)
    run_id = outbox.flush(log_model)
    assert outbox.pending() == [] and outbox.flush(log_model) == run_id  # a second flush sends nothing twice

    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "rounds"
    logged = run.data
    document = json.loads(open(client.download_artifacts(run.info.run_id, EVIDENCE_PATH)).read())
    assert PromotionEvidence.from_dict(document) == evidence
    assert set(document["sites"]) == {"plant_a", "plant_b"}
    assert document["failures"]["plant_c"] == [f"round {r} train: {reason}" for r in range(1, ROUNDS + 1)] + [
        f"round {ROUNDS + 1} final evaluation: {reason}"
    ]
    assert logged.tags[TAG_FAILED_SITES] == "plant_c"

    uri = logged.tags[TAG_MODEL_URI]
    assert same_state(mlflow.pytorch.load_model(uri).state_dict(), state_of(result.arrays))
    # Each model in a run of its own, in the experiment its readers may read: the global models', a site's own.
    global_run = client.get_run(logged.tags[TAG_MODEL_RUN])
    assert client.get_experiment(global_run.info.experiment_id).name == GLOBAL_MODELS_EXPERIMENT
    for site in ("plant_a", "plant_b"):
        model_uri = logged.tags[site_model_tag(site)]
        assert same_state(mlflow.pytorch.load_model(model_uri).state_dict(), state_of(ok[site].content[ARRAYS_KEY]))
        site_run = client.get_run(logged.tags[site_model_run_tag(site)])
        assert client.get_experiment(site_run.info.experiment_id).name == site_models_experiment(site)
        assert site_run.data.tags[TAG_SITE] == site
        assert logged.metrics[f"holdout/{site}/candidate_f1"] == pytest.approx(evidence.sites[site].candidate["f1"])
        assert logged.metrics[f"recent/{site}/personal_f1"] == pytest.approx(evidence.sites[site].personal["f1"])
    assert site_model_tag("plant_c") not in logged.tags
    history = client.get_metric_history(run_id, "eval_f1")
    assert [m.step for m in history] == [ROUNDS]

    # The run's figures, the logged models' final metrics and the sites' data windows as dataset metadata.
    figures = {f.path for f in client.list_artifacts(run_id, "figures")}
    assert figures == {"figures/confusion_matrix.png", "figures/per_site_f1.png"}  # FedAvg logs no weights here
    with open(client.download_artifacts(run_id, "figures/confusion_matrix.png"), "rb") as png:
        assert png.read(8) == b"\x89PNG\r\n\x1a\n"
    global_model = mlflow.get_logged_model(uri.removeprefix("models:/"))
    final = {m.key: m.value for m in global_model.metrics}
    expected = sum((counts_from(reply_metrics(r)) for r in ok.values()), ZERO)
    assert final["holdout_f1"] == pytest.approx(metrics_from_counts(expected)["f1"])
    inputs = client.get_run(run_id).inputs.dataset_inputs
    named = {i.dataset.name: i.dataset for i in inputs}
    assert set(named) == {f"{s}:{evidence.sites[s].data_window}" for s in ("plant_a", "plant_b")}
    for site in ("plant_a", "plant_b"):
        dataset = named[f"{site}:{evidence.sites[site].data_window}"]
        assert dataset.digest == window_digest(stores[site])[:36]  # the site's own digest of its batch files
        assert json.loads(dataset.source) == {"site": site, "window": evidence.sites[site].data_window}


# --- who a site is, and what it may report ---------------------------------------------------------------------


class Liar:
    """A ClientApp that does the real work, then changes one thing in its reply (an attacker's, in a test)."""

    def __init__(self, change):
        self.change = change

    def __call__(self, message, context):
        reply = clientapp.app(message, context)
        if message.metadata.message_type == MSG_TRAIN:
            self.change(reply)
        return reply


def test_a_node_claiming_another_registered_site_is_refused_and_named(stores):
    # Node 12 holds plant_b's key (the registry says so) but names itself plant_a in its replies.
    nodes = {node: {"site": site, "data-dir": str(stores[site])} for node, site in NODES.items()}
    nodes[12]["site"] = "plant_a"
    with InProcessGrid(clientapp.app, nodes, run_id=42) as grid:
        result = train_rounds(
            grid, fedavg(), ArrayRecord(build_model(seed=1).state_dict()), rounds=1, train_config=train_config(),
            min_replies=2, timeout=30, sink=Sink(), registered=NODES,
        )
    assert list(result.failures) == ["plant_b"]
    assert "registered as site plant_b but its reply claims site plant_a" in result.failures["plant_b"][0]
    assert result.sites == NODES  # the registry names nodes, never their replies


def test_a_node_no_site_registered_is_refused(stores):
    nodes = {node: {"site": site, "data-dir": str(stores[site])} for node, site in NODES.items()}
    nodes[99] = {"site": "plant_c", "data-dir": str(stores["plant_c"])}  # an extra node with a copy of plant_c
    with InProcessGrid(clientapp.app, nodes, run_id=42) as grid:
        result = train_rounds(
            grid, build_strategy("fedavg", min_nodes=4, state=MemoryStateStore()),
            ArrayRecord(build_model(seed=1).state_dict()), rounds=1, train_config=train_config(), min_replies=3,
            timeout=30, sink=Sink(), registered=NODES,
        )
    refusal = "round 1 train: node 99 is not the registered SuperNode of any site: refused"
    assert result.failures == {"node-99": [refusal]}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda m: m.__setitem__("tp", float("nan")), "tp=nan is not a finite non-negative number"),
        (lambda m: m.__setitem__("fn", -3), "fn=-3 is not a finite non-negative number"),
        (lambda m: m.__setitem__("tn", m["tn"] + 7), "confusion counts sum to"),
        (lambda m: m.__setitem__(COMPUTE_KEY, 3600.0), "exceeds the"),
        (lambda m: m.__delitem__("tp"), "no confusion counts"),
    ],
)
def test_a_site_reporting_impossible_metrics_is_refused_and_the_round_goes_on(stores, change, problem):
    def tamper(reply):
        metrics = reply.content["metrics"]
        change(metrics)

    nodes = {node: {"site": site, "data-dir": str(stores[site])} for node, site in NODES.items()}
    apps = {12: Liar(tamper)}
    with InProcessGrid(clientapp.app, nodes, run_id=42, apps=apps) as grid:
        sink = Sink()
        result = train_rounds(
            grid, fedavg(), ArrayRecord(build_model(seed=1).state_dict()), rounds=1, train_config=train_config(),
            min_replies=2, timeout=30, sink=sink, registered=NODES,
        )
    (reason,) = result.failures["plant_b"]
    assert reason.startswith("round 1 train: reply refused:") and problem in reason
    assert "plant_b/eval_f1" not in sink.at(0) and "plant_b" not in result.compute  # nothing of it was used


def test_an_mlflow_outage_loses_nothing_and_doubles_nothing(tmp_path, tracking, monkeypatch):
    """Metrics and models wait in the outbox while MLflow is unreachable; the next flush sends each once."""
    outbox = Outbox(tmp_path / "outbox")
    outbox.start("rounds", "flower-run-8", {TAG_FLOWER_RUN: "8"}, {})
    outbox.log_metrics({"eval_f1": 0.25}, step=0)
    good = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(Exception):  # noqa: B017 - any transport error: the point is what stays behind
        outbox.flush(log_model, attempts=1)
    outbox.log_metrics({"eval_f1": 0.5}, step=1)
    outbox.put_model(GLOBAL, build_model(seed=3).state_dict())
    assert outbox.pending() == ["2 metric record(s)", "model global"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", good)
    mlflow.set_tracking_uri(good)
    run_id = outbox.flush(log_model)
    outbox.flush(log_model)
    client = mlflow.MlflowClient()
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "eval_f1")] == [(0, 0.25), (1, 0.5)]
    assert len(client.search_runs([client.get_experiment_by_name(GLOBAL_MODELS_EXPERIMENT).experiment_id])) == 1
    assert outbox.pending() == []


def test_a_site_that_is_not_connected_does_not_stall_the_round(make_grid):
    """Flower's sampling waits forever for its minimum; the ServerApp waits a bounded time and goes on."""
    grid = make_grid()
    grid.offline.add(13)  # plant_c's SuperNode is gone
    result = train_rounds(
        grid, fedavg(), ArrayRecord(build_model(seed=1).state_dict()), rounds=2, train_config=train_config(),
        min_replies=2, timeout=30, sink=Sink(), registered=NODES, node_wait=0.2,
    )
    assert result.failures == {"plant_c": ["round 1 train: not connected", "round 2 train: not connected"]}
    assert set(result.compute) == {"plant_a", "plant_b"}
    grid.offline.add(12)
    with pytest.raises(NotEnoughSitesError, match="only 1 site\\(s\\) connected after 0s; 2 needed"):
        train_rounds(
            grid, fedavg(), ArrayRecord(build_model(seed=1).state_dict()), rounds=1, train_config=train_config(),
            min_replies=2, timeout=30, sink=Sink(), registered=NODES, node_wait=0.2,
        )
