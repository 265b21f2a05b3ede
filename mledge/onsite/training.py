"""Local training and scoring of the federated model on one site's rows (they never leave this process)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from fl.model import build_model
from fl.protocol import Counts, counts_record
from fl.simulation.attacks import AttackProfile, Trigger, attack_arrays, attack_data, reported_examples
from mledge.contracts import NUM_EXAMPLES_KEY
from mledge.onsite.features import features, labels
from mledge.onsite.schema import N_FEATURES
from mledge.onsite.store import SiteDataError, batch_paths, is_held_out, read_batch


def _pos_weight(y: np.ndarray) -> torch.Tensor:
    # Failures are about 3 % of processes: weigh them up so the model does not learn "never fails".
    positives = float(y.sum())
    return torch.tensor(min((len(y) - positives) / positives, 30.0) if positives else 1.0)


def train_local(
    model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float, batch_size: int = 64, seed: int = 0
) -> float:
    """Train in place on one site's data; returns the mean training loss of the last epoch."""
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=_pos_weight(y))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    last = float("nan")
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        total = 0.0
        for start in range(0, len(xt), batch_size):
            idx = order[start : start + batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(idx)
        last = total / len(xt)
    return last


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> Counts:
    model.eval()
    logits = model(torch.from_numpy(x))
    loss_sum = nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y), reduction="sum").item()
    pred = (logits > 0).numpy()
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


def _model_from(state: Mapping[str, torch.Tensor]) -> nn.Module:
    model = build_model()
    model.load_state_dict(dict(state))
    return model


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
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Score the received global model on the held-out rows, then train it on the training rows.

    Scoring before training gives the evaluation of every global model (round r scores the model of round r-1)
    without a separate evaluate message per round. Returns the weights to send (poisoned only when this site's
    own node config opts into an attack) and the metrics: counts, examples and the training loss.
    """
    frame, _ = load_window(store, site)
    (x, y), (x_test, y_test) = split(site, frame)
    model = _model_from(received)
    values: dict[str, float] = counts_record(evaluate(model, x_test, y_test))
    values["eval-examples"] = len(y_test)
    before = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    x, y = attack_data(attack, x, y, n_classes=2, trigger=AXIS_TRIGGER)
    values["train-loss"] = train_local(model, x, y, epochs=epochs, lr=lr, seed=server_round)
    values[NUM_EXAMPLES_KEY] = reported_examples(attack, len(y))
    trained = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return attack_arrays(attack, before, trained, seed=server_round), values


def finalise(
    store: Path,
    site: str,
    global_state: Mapping[str, torch.Tensor],
    champion_state: Mapping[str, torch.Tensor] | None,
    site_champion_state: Mapping[str, torch.Tensor] | None,
    *,
    lr: float,
    personal_epochs: int,
    recent_batches: int,
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
        values.update(counts_record(evaluate(_model_from(champion_state), x_test, y_test), "champion-"))

    recent_frame, recent_window = load_window(store, site, last=recent_batches)
    (x, y), (x_recent, y_recent) = split(site, recent_frame)
    values["recent-examples"] = len(y_recent)
    values.update(counts_record(evaluate(glob, x_recent, y_recent), "recent-global-"))
    if site_champion_state is not None:
        values.update(counts_record(evaluate(_model_from(site_champion_state), x_recent, y_recent), "site-champion-"))
    personal = _model_from(global_state)
    values["personal-train-loss"] = train_local(personal, x, y, epochs=personal_epochs, lr=lr, seed=0)
    values.update(counts_record(evaluate(personal, x_recent, y_recent), "personal-"))
    return personal.state_dict(), values, {"data": window, "recent": recent_window}
