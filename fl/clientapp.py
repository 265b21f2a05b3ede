"""The ClientApp each site's SuperNode runs: it reads only its own site's store and sends back weights and counts.

Node config (set when the SuperNode starts): ``site`` (its stable name) and ``data-dir`` (its own store).
Rows never leave this process; replies carry model weights, example counts and confusion counts only.

Attack simulation (fl/attacks.py), off unless configured: a node config with ``attack=...`` keys makes this node
malicious; for demonstrations, a run config naming this site in ``attack-site`` applies ``attack-profile`` (the
same syntax) for that run only.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl.attacks import AttackProfile, Trigger, attack_arrays, attack_data, reported_examples
from fl.model import N_FEATURES, Counts, build_model, evaluate, features, labels, train_local
from fl.store import SiteDataError, batch_paths, is_held_out, read_batch

app = ClientApp()

SITE_KEY = "site"
CHAMPION_KEY = "champion"
SITE_CHAMPION_KEY = "site-champion"
WINDOW_KEY = "window"
# Seconds this site's machine spent on a message (read, score, train): what its compute costs are priced on.
COMPUTE_KEY = "compute-seconds"


def site_of(context: Context) -> str:
    site = str(context.node_config.get("site", "")).strip()
    if not site:
        raise SiteDataError("<unnamed>", "this SuperNode has no 'site' in its --node-config")
    return site


def _data_dir(context: Context, site: str) -> Path:
    data_dir = context.node_config.get("data-dir")
    if not data_dir:
        raise SiteDataError(site, "this SuperNode has no 'data-dir' in its --node-config")
    return Path(str(data_dir))


def window_name(paths: list[Path]) -> str:
    """A batch window as lineage shows it: ``batch-000001:batch-000007``."""
    return f"{paths[0].stem}:{paths[-1].stem}"


def load_window(context: Context, site: str, last: int | None = None) -> tuple[pd.DataFrame, str]:
    """The site's accepted batches (only the ``last`` ones when given), validated, and the window's name."""
    store = _data_dir(context, site)
    paths = batch_paths(store)
    if not paths:
        raise SiteDataError(site, "store is empty: no batches", store / "batches")
    if last:
        paths = paths[-last:]
    return pd.concat([read_batch(site, p) for p in paths], ignore_index=True), window_name(paths)


def split(site: str, frame: pd.DataFrame) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((x, y) for training, (x, y) held out): held-out rows are every fifth UDI, the same in every run."""
    held = is_held_out(frame).to_numpy()
    train, test = frame[~held], frame[held]
    if train.empty or test.empty:
        raise SiteDataError(site, f"too few rows to train and evaluate ({len(frame)})")
    return (features(train), labels(train)), (features(test), labels(test))


def site_split(context: Context) -> tuple[str, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(site, (x, y) for training, (x, y) held out) from the site's own store."""
    site = site_of(context)
    frame, _ = load_window(context, site)
    return site, *split(site, frame)


# Backdoor trigger for axis data: an impossible, far out-of-range value of the last engineered feature.
AXIS_TRIGGER = Trigger((N_FEATURES - 1,), 25.0)


def attack_profile(context: Context, site: str) -> AttackProfile:
    """This node's attack: its own node config first, else a run-config simulation that names its site."""
    own = AttackProfile.from_node_config(context.node_config)
    if not own.is_off:
        return own
    if str(context.run_config.get("attack-site", "")) == site:
        return AttackProfile.parse(str(context.run_config.get("attack-profile", "")))
    return own


def counts_record(counts: Counts, prefix: str = "") -> dict[str, float]:
    return {
        f"{prefix}tp": counts.tp,
        f"{prefix}fp": counts.fp,
        f"{prefix}fn": counts.fn,
        f"{prefix}tn": counts.tn,
        f"{prefix}loss-sum": counts.loss_sum,
    }


def _model_from(record: ArrayRecord):
    model = build_model()
    model.load_state_dict(record.to_torch_state_dict())
    return model


def _site_record(site: str) -> ConfigRecord:
    return ConfigRecord({SITE_KEY: site})


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Tell the ServerApp which site this node is."""
    return Message(RecordDict({SITE_KEY: _site_record(site_of(context))}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Score the received global model on the held-out rows, then train it on the training rows.

    Scoring before training gives the evaluation of every global model (round r scores the model of round r-1)
    without a separate evaluate message per round: each message costs a ClientApp process start.
    """
    started = time.perf_counter()
    site, (x, y), (x_test, y_test) = site_split(context)
    profile = attack_profile(context, site)
    config = msg.content["config"]
    server_round = int(config.get("server-round", 0))
    model = _model_from(msg.content["arrays"])
    values: dict[str, float] = counts_record(evaluate(model, x_test, y_test))
    values["eval-examples"] = len(y_test)
    received = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    x, y = attack_data(profile, x, y, n_classes=2, trigger=AXIS_TRIGGER)
    values["train-loss"] = train_local(
        model, x, y, epochs=int(config["local-epochs"]), lr=float(config["learning-rate"]), seed=server_round
    )
    values["num-examples"] = reported_examples(profile, len(y))
    trained = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    sent = attack_arrays(profile, received, trained, seed=server_round)
    arrays = ArrayRecord({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sent.items()})
    values[COMPUTE_KEY] = time.perf_counter() - started
    content = {"arrays": arrays, "metrics": MetricRecord(values), SITE_KEY: _site_record(site)}
    return Message(RecordDict(content), reply_to=msg)


@app.evaluate()
def evaluate_held_out(msg: Message, context: Context) -> Message:
    """Evaluate the sent model (and, when sent, the registry's champion) on this site's held-out rows."""
    site, _, (x, y) = site_split(context)
    values: dict[str, float] = {"num-examples": len(y)}
    values.update(counts_record(evaluate(_model_from(msg.content["arrays"]), x, y)))
    if CHAMPION_KEY in msg.content:
        values.update(counts_record(evaluate(_model_from(msg.content[CHAMPION_KEY]), x, y), prefix="champion-"))
    return Message(RecordDict({"metrics": MetricRecord(values), SITE_KEY: _site_record(site)}), reply_to=msg)


@app.train("finalise")
def finalise(msg: Message, context: Context) -> Message:
    """The run's last message to a site: promotion evidence for the global model, and the site's own model.

    1. Score the final global model and the global champion (when sent) on all held-out rows.
    2. Personalise: fine-tune the global model on the site's recent batches (``recent-batches``), then score it,
       the global model and the site's current champion (when sent) on the recent held-out rows.
    The personalised weights go back to the server for the registry; rows stay here.
    """
    started = time.perf_counter()
    site = site_of(context)
    config = msg.content["config"]
    everything, window = load_window(context, site)
    _, (x_test, y_test) = split(site, everything)
    glob = _model_from(msg.content["arrays"])
    values: dict[str, float] = {"num-examples": len(y_test)}
    values.update(counts_record(evaluate(glob, x_test, y_test)))
    if CHAMPION_KEY in msg.content:
        values.update(counts_record(evaluate(_model_from(msg.content[CHAMPION_KEY]), x_test, y_test), "champion-"))

    recent_frame, recent_window = load_window(context, site, last=int(config["recent-batches"]))
    (x, y), (x_recent, y_recent) = split(site, recent_frame)
    values["recent-examples"] = len(y_recent)
    values.update(counts_record(evaluate(glob, x_recent, y_recent), "recent-global-"))
    if SITE_CHAMPION_KEY in msg.content:
        site_champion = _model_from(msg.content[SITE_CHAMPION_KEY])
        values.update(counts_record(evaluate(site_champion, x_recent, y_recent), "site-champion-"))
    personal = _model_from(msg.content["arrays"])
    values["personal-train-loss"] = train_local(
        personal, x, y, epochs=int(config["personal-epochs"]), lr=float(config["learning-rate"]), seed=0
    )
    values.update(counts_record(evaluate(personal, x_recent, y_recent), "personal-"))
    values[COMPUTE_KEY] = time.perf_counter() - started
    content = {
        "arrays": ArrayRecord(personal.state_dict()),
        "metrics": MetricRecord(values),
        SITE_KEY: _site_record(site),
        WINDOW_KEY: ConfigRecord({"data": window, "recent": recent_window}),
    }
    return Message(RecordDict(content), reply_to=msg)
