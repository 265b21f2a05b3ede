"""Training to convergence, decided at the platform from what the sites report: a learning-rate schedule, early
stopping on the sites' pooled validation loss, and the best round's model with its decision threshold.

Each round's replies score the model the sites received (the previous round's global model) on their validation
rows: a log-loss sum, a row count and counts at every grid threshold (fl/thresholds.py). ``EarlyStopping`` keeps
the model with the lowest pooled validation loss and its pooled counts; a run stops once ``patience`` rounds have
not improved on it. Pure Python; no row, no score, only sums.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fl import thresholds


def cosine_lr(base: float, server_round: int, rounds: int, floor: float = 0.05) -> float:
    """The learning rate of round ``server_round`` (1-based) of at most ``rounds``: a cosine from ``base`` down to
    ``floor * base`` at the last round."""
    progress = (server_round - 1) / max(rounds - 1, 1)
    return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def pooled_validation(records: Iterable[Mapping[str, float]]) -> tuple[float, dict[str, float]]:
    """(mean validation log-loss, pooled grid counts) of the sites' reports on one model; nan when none report."""
    records = [r for r in records if float(r.get("val-examples", 0)) > 0]
    examples = sum(float(r["val-examples"]) for r in records)
    loss = sum(float(r["val-loss-sum"]) for r in records) / examples if examples else float("nan")
    return loss, thresholds.sum_counts(records)


@dataclass
class EarlyStopping:
    """The best model so far by pooled validation loss, and whether to stop."""

    patience: int
    best_loss: float = math.inf
    best_round: int = -1  # the round whose aggregation produced the model (0: the initial model)
    best_model: Any = None
    best_counts: dict[str, float] = field(default_factory=dict)
    since_best: int = 0

    def observe(self, model_round: int, model: Any, records: Iterable[Mapping[str, float]]) -> bool:
        """Record the sites' validation reports on ``model`` (made by round ``model_round``); True: stop now."""
        loss, counts = pooled_validation(records)
        if math.isfinite(loss) and loss < self.best_loss:
            self.best_loss, self.best_round, self.best_model, self.best_counts = loss, model_round, model, counts
            self.since_best = 0
        else:
            self.since_best += 1
        return self.since_best >= self.patience

    def threshold(self) -> tuple[float, float]:
        """(threshold, pooled validation F1 there) of the best model."""
        return thresholds.choose_threshold(self.best_counts)
