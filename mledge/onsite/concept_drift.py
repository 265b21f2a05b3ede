"""Concept drift: is the production model wrong more often on the new labelled batch than on its reference window?

The error of a row is a misclassification at the model's own decision threshold (logit > 0), as in
``mledge.onsite.training.evaluate``. The reference errors come from the held-out rows of the reference window
(UDI % 5 == 0), which training never sees, so the reference error rate is not optimistic.

The p-value comes from a permutation test, stratified by the model's score:
- pool the reference and current rows, cut the pooled scores into ``bins`` quantile bins;
- under the null hypothesis (P(y | x) unchanged) the errors within a bin are exchangeable between reference and
  current rows, so the current batch's error count in bin b is hypergeometric (bin errors e_b, bin rows n_b,
  current rows m_b): ``generate_simulations`` draws N such totals, exactly, in O(N x bins);
- ``evaluate_p_value``: p = (1 + #{simulated >= observed}) / (N + 1).

Why stratify: a batch whose inputs fall more often in hard regions (the temperatures are random walks, the tool
wear a sawtooth) has more errors without any change of P(y | x). Measured here on clean batches at the 5 % level,
an unstratified permutation of the 0/1 errors alarmed on 6-22 % of them (per site), within score bins on
2.5-7.5 %; a sensor offset (failures at inputs the model calls safe) puts errors in low-score bins, where the
reference has almost none. Why 0/1 errors and not the log loss: a few confident misses dominate a mean log loss,
which alarmed on up to 28 % of clean batches even within bins. The split into two steps lets the simulations be
written at the site by one task and the p-value be read by the next.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mledge.contracts import DRIFT_BINS, DRIFT_SIMULATIONS

MIN_REFERENCE_ROWS = 50
METHOD = "permutation within score bins (hypergeometric), one-sided: more errors than the reference implies"


def model_scores(model: Any, frame: pd.DataFrame) -> np.ndarray:
    """The production model's decision margins for a batch: its log-odds of a failure minus its stored decision
    threshold, so that its decision is ``score > 0`` (``model``: a model of any family or its arrays, as
    mledge/onsite/scoring.py takes them)."""
    from mledge.onsite.scoring import scores

    return scores(model, frame)


def row_errors(scores: np.ndarray, frame: pd.DataFrame) -> np.ndarray:
    """1 where the model's decision (logit > 0) disagrees with the recorded label, else 0."""
    from mledge.onsite.features import labels

    return ((np.asarray(scores) > 0) != (labels(frame) > 0.5)).astype(np.int64)


def score_bins(scores: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin index per score, inner edges) for quantile bins of the given scores; ties never split a bin."""
    inner = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, bins + 1)[1:-1])) if bins > 1 else np.array([])
    return np.searchsorted(inner, scores, side="right"), inner


def generate_simulations(
    reference_scores: np.ndarray,
    reference_errors: np.ndarray,
    current_scores: np.ndarray,
    current_errors: np.ndarray,
    path: Path,
    *,
    simulations: int = DRIFT_SIMULATIONS,
    bins: int = DRIFT_BINS,
    seed: int | list[int] = 0,
) -> dict:
    """Simulate the current batch's error count under the null and write it to ``path`` (an .npz at the site).

    Returns the summary that is also stored in the file (no rows: counts per bin and rates only).
    """
    ref_s, ref_e = np.asarray(reference_scores, float), np.asarray(reference_errors, np.int64)
    cur_s, cur_e = np.asarray(current_scores, float), np.asarray(current_errors, np.int64)
    if len(ref_s) != len(ref_e) or len(cur_s) != len(cur_e):
        raise ValueError("scores and errors must have one value per row")
    if len(ref_s) < MIN_REFERENCE_ROWS:
        raise ValueError(f"only {len(ref_s)} reference rows; at least {MIN_REFERENCE_ROWS} are needed")
    if len(cur_s) == 0:
        raise ValueError("the current batch has no rows")
    if simulations < 1 or bins < 1:
        raise ValueError(f"simulations and bins must be positive, got {simulations} and {bins}")
    scores = np.concatenate([ref_s, cur_s])
    errors = np.concatenate([ref_e, cur_e])
    is_current = np.r_[np.zeros(len(ref_s), bool), np.ones(len(cur_s), bool)]
    bin_of, inner = score_bins(scores, bins)
    n_bins = len(inner) + 1
    rows = np.bincount(bin_of, minlength=n_bins)
    errs = np.bincount(bin_of, weights=errors, minlength=n_bins).astype(np.int64)
    current_rows = np.bincount(bin_of, weights=is_current, minlength=n_bins).astype(np.int64)

    rng = np.random.default_rng(seed)
    null = np.zeros(simulations, dtype=np.int64)
    for b in range(n_bins):
        if current_rows[b]:
            null += rng.hypergeometric(errs[b], rows[b] - errs[b], current_rows[b], size=simulations)
    observed = int(cur_e.sum())
    summary = {
        "method": METHOD,
        "simulations": int(simulations),
        "bins": int(n_bins),
        "observed_errors": observed,
        "expected_errors": float(null.mean()),
        "current_rows": int(len(cur_e)),
        "reference_rows": int(len(ref_e)),
        "current_error_rate": observed / len(cur_e),
        "reference_error_rate": float(ref_e.mean()),
        # Errors beyond what the reference implies at the same scores, per current row.
        "statistic": (observed - float(null.mean())) / len(cur_e),
        "bin_rows": rows.tolist(),
        "bin_errors": errs.tolist(),
        "bin_current_rows": current_rows.tolist(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:  # np.savez on a path would append ".npz" to names without it
        np.savez(handle, null=null, summary=np.array(json.dumps(summary)))
    return summary


def evaluate_p_value(path: Path) -> dict:
    """The simulated p-value from a file written by ``generate_simulations``: summary plus ``p_value``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no concept-drift simulations at {path}: run generate_simulations first")
    with np.load(path, allow_pickle=False) as stored:
        null = stored["null"]
        summary = json.loads(str(stored["summary"]))
    observed = summary["observed_errors"]
    summary["p_value"] = float((1 + np.count_nonzero(null >= observed)) / (len(null) + 1))
    return summary
