"""The ClientApp each site's SuperNode runs: Flower messages in, the site's own work (mledge/onsite/), replies out.

Node config (set when the SuperNode starts): ``site`` (its stable name) and ``data-dir`` (its own store).
Rows never leave this process; replies carry model weights, example counts and confusion counts only.

Attack simulation (fl/simulation/attacks.py), off unless the site itself says so: a node config with
``attack=...`` keys makes this node malicious; for demonstrations, a run config naming this site in
``attack-site`` applies ``attack-profile`` (the same syntax) for that run only, and only if the SuperNode was
started with ``accept-simulated-attacks=true`` in its own node config. Whoever may trigger a run cannot make a
real site poison its updates.

Where the work runs: with ``trainer-socket`` in the node config (the stack sets it), this process only forwards each
train message, as it came, with its Context, to the site's long-lived trainer (mledge/onsite/trainer.py), which runs
these same handlers warm, and relays the reply; a trainer that is down gives an error reply naming the site. So
torch and the site's training code are imported here only when a node has no trainer (tests, the in-process
simulation): Flower starts this process for every message. Queries (``identify``) are answered here.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from fl import trees
from fl.privacy.client import privacy_mod
from fl.simulation.attacks import AttackProfile
from mledge.contracts import (
    ARRAYS_KEY,
    CHAMPION_KEY,
    COMPUTE_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    MLP,
    MODEL_FAMILY_KEY,
    SITE_CHAMPION_KEY,
    SITE_KEY,
    WINDOW_KEY,
    XGBOOST,
)
from mledge.onsite import trainer_client
from mledge.onsite.trainer_client import Deferred

# Loaded on first use (the trainer loads them at its start): this process usually only forwards.
torch = Deferred("torch")
training = Deferred("mledge.onsite.training")
tree_training = Deferred("mledge.onsite.tree_training")
store = Deferred("mledge.onsite.store")

log = logging.getLogger("flwr").getChild("mledge.site")


def forward_to_trainer(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A mod around every handler: a node with a trainer has the trainer run the handler (its reply and the
    Context's state come back); without one, or for a query, the handler runs here."""
    path = context.node_config.get(trainer_client.TRAINER_KEY)
    if not path or msg.metadata.message_type.split(".")[0] == "query":
        return call_next(msg, context)
    site = str(context.node_config.get("site", "")).strip() or "<unnamed>"
    reply, context.state = trainer_client.call(Path(str(path)), msg, context, site=site)
    return Message(reply.error if reply.has_error() else reply.content, reply_to=msg)


# forward_to_trainer outermost: any other mod runs where the handler runs. privacy_mod (fl/privacy/client.py) runs
# train messages as SecAgg+ stages under privacy secagg / secagg-dp, and passes everything through otherwise.
app = ClientApp(mods=[forward_to_trainer, privacy_mod])


def site_of(context: Context) -> str:
    site = str(context.node_config.get("site", "")).strip()
    if not site:
        raise store.SiteDataError("<unnamed>", "this SuperNode has no 'site' in its --node-config")
    return site


def data_dir(context: Context, site: str) -> Path:
    value = context.node_config.get("data-dir")
    if not value:
        raise store.SiteDataError(site, "this SuperNode has no 'data-dir' in its --node-config")
    return Path(str(value))


ACCEPT_SIMULATED_ATTACKS = "accept-simulated-attacks"


def attack_profile(context: Context, site: str) -> AttackProfile:
    """This node's attack: its own node config first, else a run-config simulation that names its site, if the
    node opted in to simulations; a run asking a node that did not opt in is ignored (and said so in its log)."""
    own = AttackProfile.from_node_config(context.node_config)
    if not own.is_off:
        return own
    if str(context.run_config.get("attack-site", "")) == site:
        if str(context.node_config.get(ACCEPT_SIMULATED_ATTACKS, "")).lower() != "true":
            log.warning("site %s: the run asks for a simulated attack; this SuperNode did not opt in: ignored", site)
            return own
        return AttackProfile.parse(str(context.run_config.get("attack-profile", "")))
    return own


def _site_record(site: str) -> ConfigRecord:
    return ConfigRecord({SITE_KEY: site})


def _state(msg: Message, key: str) -> dict | None:
    """A model sent along (a champion, of either family): a torch state dict or the booster's ``{"0": bytes}``."""
    if key not in msg.content:
        return None
    record = msg.content[key]
    if trees.is_tree_record(record):
        return {trees.TREE_KEY: record[trees.TREE_KEY].numpy()}
    return record.to_torch_state_dict()


def _tree_record(raw: bytes) -> ArrayRecord:
    return ArrayRecord([trees.to_array(raw)])


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Tell the ServerApp which site this node is."""
    return Message(RecordDict({SITE_KEY: _site_record(site_of(context))}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Score the received global model on the held-out rows, then train it (mledge.onsite.training)."""
    started = time.perf_counter()
    site = site_of(context)
    config = msg.content[CONFIG_KEY]
    if str(config.get(MODEL_FAMILY_KEY, MLP)) == XGBOOST:
        raw, values = tree_training.train_round(
            data_dir(context, site), site, trees.to_bytes(msg.content[ARRAYS_KEY][trees.TREE_KEY]),
            local_rounds=int(config["local-rounds"]),
        )
        values[COMPUTE_KEY] = time.perf_counter() - started
        content = {ARRAYS_KEY: _tree_record(raw), METRICS_KEY: MetricRecord(values), SITE_KEY: _site_record(site)}
        return Message(RecordDict(content), reply_to=msg)
    sent, values = training.train_round(
        data_dir(context, site),
        site,
        msg.content[ARRAYS_KEY].to_torch_state_dict(),
        epochs=int(config["local-epochs"]),
        lr=float(config["learning-rate"]),
        server_round=int(config.get("server-round", 0)),
        attack=attack_profile(context, site),
        class_weight=float(config.get("class-weight", training.CLASS_WEIGHT_CAP)),
    )
    arrays = ArrayRecord({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sent.items()})
    values[COMPUTE_KEY] = time.perf_counter() - started
    content = {ARRAYS_KEY: arrays, METRICS_KEY: MetricRecord(values), SITE_KEY: _site_record(site)}
    return Message(RecordDict(content), reply_to=msg)


@app.train("finalise")
def finalise(msg: Message, context: Context) -> Message:
    """The run's last message to a site: promotion evidence for the global model, and the site's own model."""
    started = time.perf_counter()
    site = site_of(context)
    config = msg.content[CONFIG_KEY]
    if str(config.get(MODEL_FAMILY_KEY, MLP)) == XGBOOST:
        raw, values, window = tree_training.finalise(
            data_dir(context, site), site, trees.to_bytes(msg.content[ARRAYS_KEY][trees.TREE_KEY]),
            _state(msg, CHAMPION_KEY), _state(msg, SITE_CHAMPION_KEY),
            personal_rounds=int(config["personal-rounds"]), recent_batches=int(config["recent-batches"]),
        )
        personal = _tree_record(raw)
    else:
        personal, values, window = _finalise_mlp(msg, config, context, site)
    values[COMPUTE_KEY] = time.perf_counter() - started
    content = {
        ARRAYS_KEY: ArrayRecord(personal) if isinstance(personal, dict) else personal,
        METRICS_KEY: MetricRecord(values),
        SITE_KEY: _site_record(site),
        WINDOW_KEY: ConfigRecord(window),
    }
    return Message(RecordDict(content), reply_to=msg)


def _finalise_mlp(msg: Message, config: ConfigRecord, context: Context, site: str) -> tuple:
    return training.finalise(
        data_dir(context, site),
        site,
        msg.content[ARRAYS_KEY].to_torch_state_dict(),
        _state(msg, CHAMPION_KEY),
        _state(msg, SITE_CHAMPION_KEY),
        lr=float(config["learning-rate"]),
        personal_epochs=int(config["personal-epochs"]),
        recent_batches=int(config["recent-batches"]),
        class_weight=float(config.get("class-weight", training.CLASS_WEIGHT_CAP)),
    )
