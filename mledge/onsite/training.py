"""Local training and scoring of the federated MLP on one site's rows (they never leave this process).

A site's rows split three ways by UDI, the same in every run: every fifth UDI is held out for evaluation (the
promotion evidence and the reported metrics), the next fifth is held out for validation (the early stopping loss
and the decision threshold's counts, fl/thresholds.py), the rest is trained on.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from fl import thresholds, trees
from fl.model import model_from_state
from fl.protocol import Counts, counts_record
from fl.simulation.attacks import AttackProfile, Trigger, attack_arrays, attack_data, reported_examples
from mledge.contracts import NUM_EXAMPLES_KEY, TORCH_DEVICE_ENV
from mledge.onsite import scoring
from mledge.onsite.features import features, labels
from mledge.onsite.schema import N_FEATURES
from mledge.onsite.scoring import log_loss_sum, raw_scores
from mledge.onsite.store import SiteDataError, batch_paths, is_held_out, read_batch

# Failures are about 3 % of processes. Class weighting: a failure row weighs (non-failures / failures) times a
# non-failure, capped at this; 1 turns it off. The federated runs leave it off and tune the decision threshold
# instead (measured: bench/results/model.md), which keeps the early-stopping loss a plain log-loss.
CLASS_WEIGHT_CAP = 30.0


def _pos_weight(y: np.ndarray, cap: float = CLASS_WEIGHT_CAP) -> torch.Tensor:
    positives = float(y.sum())
    return torch.tensor(max(min((len(y) - positives) / positives, cap), 1.0) if positives else 1.0)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.logits(x) if hasattr(model, "logits") else model(x)


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    class_weight: float = CLASS_WEIGHT_CAP,
) -> float:
    """Train in place on one site's data; returns the mean training loss of the last epoch.

    On the trainer's device (``device()``: a GPU when the site's trainer sees one); the model is back on the CPU
    afterwards, where its weights are read and sent."""
    on = device()
    generator = torch.Generator().manual_seed(seed)  # on the CPU: the same shuffles on every device
    xt, yt = torch.from_numpy(x).to(on), torch.from_numpy(y).to(on)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=_pos_weight(y, class_weight).to(on))
    model.to(on)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    last = float("nan")
    try:
        for _ in range(epochs):
            order = torch.randperm(len(xt), generator=generator).to(on)
            total = torch.zeros((), dtype=torch.float64, device=on)  # summed on the device: no sync per batch
            for start in range(0, len(xt), batch_size):
                idx = order[start : start + batch_size]
                optimiser.zero_grad()
                loss = loss_fn(_logits(model, xt[idx]), yt[idx])
                loss.backward()
                optimiser.step()
                total += loss.detach().double() * len(idx)
            last = float(total) / len(xt)
    finally:
        model.to("cpu")
    return last


def device() -> torch.device:
    """Where a site trains: ``MLEDGE_TORCH_DEVICE`` (the warm trainer sets ``cuda`` when torch sees a GPU,
    mledge/onsite/trainer.py), else the CPU."""
    return torch.device(os.environ.get(TORCH_DEVICE_ENV) or "cpu")


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> Counts:
    """Confusion counts at the model's decision (``model(x) > 0``: its threshold applied) and the summed log-loss."""
    model.eval()
    xt = torch.from_numpy(x)
    logits = _logits(model, xt)
    loss_sum = nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y), reduction="sum").item()
    pred = (model(xt) > 0).numpy()
    truth = y.astype(bool)
    return Counts(
        tp=int((pred & truth).sum()),
        fp=int((pred & ~truth).sum()),
        fn=int((~pred & truth).sum()),
        tn=int((~pred & ~truth).sum()),
        loss_sum=float(loss_sum),
    )


# --- a site's work for one federated message ------------------------------------------------------------------


def window_name(paths: list[Path]) -> str:
    """A batch window as lineage shows it: ``batch-000001:batch-000007``."""
    return f"{paths[0].stem}:{paths[-1].stem}"


def window_digest(store: Path, last: int | None = None) -> str:
    """SHA-256 over the window's batch files (each file's own SHA-256, in order): names the exact data a model was
    trained on, for the registry's dataset lineage (mlflow.data), without a row leaving the site."""
    return _digest(_file_hashes(store)[-last:] if last else _file_hashes(store))


def _file_hashes(store: Path) -> list[str]:
    return [f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}\n" for p in batch_paths(store)]


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def window_record(store: Path, data: str, recent: str, recent_batches: int) -> dict[str, str]:
    """What a site says of its data windows at the end of a run: batch names and digests (fl/protocol.py)."""
    hashes = _file_hashes(store)  # each file read once for both windows
    return {"data": data, "recent": recent, "data-digest": _digest(hashes),
            "recent-digest": _digest(hashes[-recent_batches:] if recent_batches else hashes)}


def load_window(store: Path, site: str, last: int | None = None) -> tuple[pd.DataFrame, str]:
    """The site's accepted batches (only the ``last`` ones when given), validated, and the window's name."""
    paths = batch_paths(store)
    if not paths:
        raise SiteDataError(site, "store is empty: no batches", Path(store) / "batches")
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


def is_validation(frame: pd.DataFrame) -> pd.Series:
    """The site's validation rows: the UDIs after the held-out ones (every fifth, offset 1)."""
    return frame["udi"] % 5 == 1


XY = tuple[np.ndarray, np.ndarray]


def split3(site: str, frame: pd.DataFrame) -> tuple[XY, XY, XY]:
    """(training, validation, held-out) (x, y): disjoint, by UDI, the same in every run."""
    held, val = is_held_out(frame).to_numpy(), is_validation(frame).to_numpy()
    parts = frame[~held & ~val], frame[val], frame[held]
    if any(p.empty for p in parts):
        raise SiteDataError(site, f"too few rows to train and evaluate ({len(frame)})")
    return tuple((features(p), labels(p)) for p in parts)  # type: ignore[return-value]


def validation_metrics(model: object, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """What a site reports of a model on its validation rows: the log-loss sum, the row count and the counts at
    every grid threshold (fl/thresholds.py), for any model family (mledge/onsite/scoring.py)."""
    raw = raw_scores(model, x)
    return {"val-loss-sum": log_loss_sum(raw, y), "val-examples": len(y), **thresholds.threshold_counts(raw, y)}


def _model_from(state: Mapping[str, torch.Tensor]) -> nn.Module:
    return model_from_state(state)


def _counts(arrays: Mapping[str, object], x: np.ndarray, y: np.ndarray) -> Counts:
    """Counts of a model sent along (a champion), of either family (a booster: mledge/onsite/scoring.py)."""
    if trees.is_tree_record(arrays):
        return scoring.counts(arrays, x, y)
    return evaluate(_model_from(arrays), x, y)  # type: ignore[arg-type]


# Backdoor trigger for axis data: an impossible, far out-of-range value of the last engineered feature.
AXIS_TRIGGER = Trigger((N_FEATURES - 1,), 25.0)


def train_round(
    store: Path,
    site: str,
    received: Mapping[str, torch.Tensor],
    *,
    epochs: int,
    lr: float,
    server_round: int,
    attack: AttackProfile,
    class_weight: float = CLASS_WEIGHT_CAP,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Score the received global model on the held-out and validation rows, then train it on the training rows.

    Scoring before training gives the evaluation of every global model (round r scores the model of round r-1)
    without a separate evaluate message per round; the validation loss and threshold counts drive the platform's
    early stopping and threshold choice. Returns the weights to send (poisoned only when this site's own node
    config opts into an attack) and the metrics: counts, examples and the training loss.
    """
    frame, _ = load_window(store, site)
    (x, y), (x_val, y_val), (x_test, y_test) = split3(site, frame)
    model = _model_from(received)
    values: dict[str, float] = counts_record(evaluate(model, x_test, y_test))
    values["eval-examples"] = len(y_test)
    values.update(validation_metrics(model, x_val, y_val))
    before = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    x, y = attack_data(attack, x, y, n_classes=2, trigger=AXIS_TRIGGER)
    values["train-loss"] = train_local(
        model, x, y, epochs=epochs, lr=lr, seed=server_round, class_weight=class_weight
    )
    values[NUM_EXAMPLES_KEY] = reported_examples(attack, len(y))
    trained = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return attack_arrays(attack, before, trained, seed=server_round), values


def finalise(
    store: Path,
    site: str,
    global_state: Mapping[str, torch.Tensor],
    champion_state: Mapping[str, object] | None,
    site_champion_state: Mapping[str, object] | None,
    *,
    lr: float,
    personal_epochs: int,
    recent_batches: int,
    class_weight: float = CLASS_WEIGHT_CAP,
) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, str]]:
    """The run's last work at a site: promotion evidence for the global model, and the site's own model.

    1. Score the final global model and the global champion (when sent) on all held-out rows.
    2. Personalise: fine-tune the global model on the site's recent batches, then score it, the global model and
       the site's current champion (when sent) on the recent held-out rows.
    Returns the personalised weights, the counts, and the data windows (names of batches, not rows).
    """
    everything, window = load_window(store, site)
    _, (x_test, y_test) = split(site, everything)
    glob = _model_from(global_state)
    values: dict[str, float] = {NUM_EXAMPLES_KEY: len(y_test)}
    values.update(counts_record(evaluate(glob, x_test, y_test)))
    if champion_state is not None:
        values.update(counts_record(_counts(champion_state, x_test, y_test), "champion-"))

    recent_frame, recent_window = load_window(store, site, last=recent_batches)
    (x, y), _, (x_recent, y_recent) = split3(site, recent_frame)
    values["recent-examples"] = len(y_recent)
    values.update(counts_record(evaluate(glob, x_recent, y_recent), "recent-global-"))
    if site_champion_state is not None:
        values.update(counts_record(_counts(site_champion_state, x_recent, y_recent), "site-champion-"))
    personal = _model_from(global_state)
    values["personal-train-loss"] = train_local(
        personal, x, y, epochs=personal_epochs, lr=lr, seed=0, class_weight=class_weight
    )
    values.update(counts_record(evaluate(personal, x_recent, y_recent), "personal-"))
    return personal.state_dict(), values, window_record(store, window, recent_window, recent_batches)
