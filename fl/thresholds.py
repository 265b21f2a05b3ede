"""The decision threshold of the failure class, chosen federatedly on the sites' validation rows.

Each site scores a model on its validation rows (held out of training, apart from the evaluation rows) and counts,
for every candidate threshold of one shared grid, its true positives, false positives and false negatives. Only
those counts leave the site. Counts add up across sites, so the platform finds the threshold with the best pooled
F1 exactly, without seeing a score or a row (``choose_threshold``).

Thresholds are on the model's raw score (a logit: the log-odds of a failure, for both model families); the model
stores the chosen value and its decision is ``score - threshold > 0``. Pure NumPy, so both sides import it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

# Probabilities 0.05, 0.10 ... 0.95 as logits; index 9 is probability 0.5 (logit 0, the untuned decision).
PROBABILITIES = np.round(np.linspace(0.05, 0.95, 19), 2)
GRID = np.log(PROBABILITIES / (1.0 - PROBABILITIES))
NEUTRAL = 9
_KEYS = ("tp", "fp", "fn")


def count_key(index: int, kind: str) -> str:
    return f"val-t{index:02d}-{kind}"


def threshold_counts(scores: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Counts of the failure class at every grid threshold, as metric record entries (what a site sends)."""
    scores = np.asarray(scores, float)
    positive = np.asarray(truth) > 0.5
    out: dict[str, float] = {}
    for i, threshold in enumerate(GRID):
        flagged = scores > threshold
        out[count_key(i, "tp")] = int((flagged & positive).sum())
        out[count_key(i, "fp")] = int((flagged & ~positive).sum())
        out[count_key(i, "fn")] = int((~flagged & positive).sum())
    return out


def sum_counts(records: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Pooled grid counts of several sites (records without grid counts add nothing)."""
    total = dict.fromkeys((count_key(i, k) for i in range(len(GRID)) for k in _KEYS), 0.0)
    for record in records:
        for key in total:
            total[key] += float(record.get(key, 0.0))
    return total


def f1_at(counts: Mapping[str, float], index: int) -> float:
    tp, fp, fn = (float(counts.get(count_key(index, k), 0.0)) for k in _KEYS)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def choose_threshold(counts: Mapping[str, float]) -> tuple[float, float]:
    """(threshold, pooled F1 there): the grid threshold with the best F1; ties go to the one nearest logit 0, and
    no failure in any validation row keeps the untuned threshold 0."""
    scores = [f1_at(counts, i) for i in range(len(GRID))]
    best = max(scores)
    if best == 0.0:
        return 0.0, 0.0
    index = min((i for i, f in enumerate(scores) if f == best), key=lambda i: abs(i - NEUTRAL))
    return float(GRID[index]), best
