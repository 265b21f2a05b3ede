"""Local boosting and scoring of the federated trees (``xgboost`` family) on one site's rows.

Flower's bagging scheme (``FedXgbBagging``): each round a site adds ``local-rounds`` boosting rounds to the global
booster it received, fitted to that model's residuals on its own training rows, and sends back only the new
trees; the platform appends every site's trees to the global model. Rows split as for the MLP
(mledge/onsite/training.py): held-out rows for evaluation, validation rows for early stopping and the threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fl import trees
from fl.protocol import counts_record
from mledge.contracts import NUM_EXAMPLES_KEY
from mledge.onsite import scoring
from mledge.onsite.training import load_window, split3, validation_metrics, window_record


def boost(booster: Any, x: np.ndarray, y: np.ndarray, rounds: int, eta: float | None = None) -> Any:
    """``booster`` (None: none yet) with ``rounds`` more boosting rounds on (x, y); the input is not changed."""
    import xgboost as xgb

    params = dict(trees.PARAMS, **({"eta": eta} if eta is not None else {}))
    start = None if booster is None else xgb.Booster(params=params, model_file=booster.save_raw("json"))
    return xgb.train(params, trees.matrix(x, y), num_boost_round=rounds, xgb_model=start)


def new_trees(before: Any, after: Any) -> bytes:
    """The boosting rounds ``after`` added to ``before``, as a booster of their own (what a site sends)."""
    done = 0 if before is None else before.num_boosted_rounds()
    return trees.save_booster(after[done : after.num_boosted_rounds()])


def train_round(
    store: Path, site: str, received: bytes, *, local_rounds: int, eta: float | None = None
) -> tuple[bytes, dict[str, float]]:
    """Score the received global booster on the held-out and validation rows, then boost it on the training
    rows; returns the new trees and the metrics (the MLP's keys, fl/protocol.py WHAT_LEAVES_A_SITE)."""
    frame, _ = load_window(store, site)
    (x, y), (x_val, y_val), (x_test, y_test) = split3(site, frame)
    glob = trees.load_booster(received)
    values: dict[str, float] = counts_record(scoring.counts(glob, x_test, y_test))
    values["eval-examples"] = len(y_test)
    values.update(validation_metrics(glob, x_val, y_val))
    trained = boost(glob, x, y, local_rounds, eta)
    values["train-loss"] = scoring.log_loss_sum(trees.raw_scores(trained, x), y) / len(y)
    values[NUM_EXAMPLES_KEY] = len(y)
    return new_trees(glob, trained), values


def finalise(
    store: Path,
    site: str,
    global_model: bytes,
    champion: Mapping[str, Any] | None,
    site_champion: Mapping[str, Any] | None,
    *,
    personal_rounds: int,
    recent_batches: int,
) -> tuple[bytes, dict[str, float], dict[str, str]]:
    """Promotion evidence for the global booster, and the site's own model: the global booster with
    ``personal_rounds`` more boosting rounds on the site's recent batches (its threshold kept). Champions may be
    of either family (scored through mledge/onsite/scoring.py)."""
    everything, window = load_window(store, site)
    _, _, (x_test, y_test) = split3(site, everything)
    glob = trees.load_booster(global_model)
    values: dict[str, float] = {NUM_EXAMPLES_KEY: len(y_test)}
    values.update(counts_record(scoring.counts(glob, x_test, y_test)))
    if champion is not None:
        values.update(counts_record(scoring.counts(champion, x_test, y_test), "champion-"))

    recent_frame, recent_window = load_window(store, site, last=recent_batches)
    (x, y), _, (x_recent, y_recent) = split3(site, recent_frame)
    values["recent-examples"] = len(y_recent)
    values.update(counts_record(scoring.counts(glob, x_recent, y_recent), "recent-global-"))
    if site_champion is not None:
        values.update(counts_record(scoring.counts(site_champion, x_recent, y_recent), "site-champion-"))
    personal = boost(glob, x, y, personal_rounds)
    personal.set_attr(**{trees.THRESHOLD_ATTR: repr(trees.threshold_of(glob))})
    values["personal-train-loss"] = scoring.log_loss_sum(trees.raw_scores(personal, x), y) / len(y)
    values.update(counts_record(scoring.counts(personal, x_recent, y_recent), "personal-"))
    return trees.save_booster(personal), values, window_record(store, window, recent_window, recent_batches)
