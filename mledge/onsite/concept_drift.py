"""Concept drift: has P(y | x) changed? Observed against expected failures at the production model's scores.

The production model's score (logit) sums up what it knows of x. Under the null hypothesis (P(y | x) unchanged)
the failure rate of rows with the same score is the same in the reference window and in the new batch, whatever
the batch's inputs are (covariate shift moves rows between scores, not the rate at a score). So the test compares
failures within score bins, in both directions and on both sides of the model's decision threshold (logit 0):

- **false negatives**: failures among the rows the model calls safe (logit <= 0). More than expected: the model
  misses new failures (a lower overheating limit, a sensor reading high); fewer: failures vanished there.
- **false positives**: non-failures among the rows the model flags (logit > 0). More than expected: the model's
  alarms are no longer borne out (a raised limit); fewer: new failures landed where it already predicted them.
  (The old one-sided count of 0/1 errors let these two cancel, and missed the second.)
- **label rate**: all failures against the expected count. Far fewer failures than the scores imply, down to a
  failure-free batch, is a finding of its own (labels lost by a broken export), not concept drift.

Each side is cut into quantile bins of the pooled reference and current scores (no bin straddles logit 0; a bin
holds at least ``MIN_BIN_REFERENCE_ROWS`` reference rows). The reference rows are the held-out rows of the
reference window (UDI % 5 == 0), which training never saw, so their rates are not optimistic. Under the null the
failures within a bin are exchangeable between reference and current rows, so the current batch's failure count
in bin b is hypergeometric (bin failures f_b, bin rows n_b, current rows m_b): this accounts for the reference
rates being estimates. ``generate_simulations`` draws ``simulations`` such tables exactly, in O(N x bins), and
keeps each statistic's null distribution; ``evaluate_p_value`` reads the observed statistics against them:
p = (1 + #{null at least as extreme}) / (N + 1) per tail, two-sided = twice the smaller tail (capped at 1).

A test needs enough data to say anything (``MIN_EXPECTED_EVENTS`` expected events on each side of its count),
else it is reported as not computed (no alarm). The batch as a whole needs ``MIN_ROWS`` rows and
``MIN_EXPECTED_FAILURES`` expected failures, else it is ``insufficient``: the site pools it with its next batch
(unless its labels were lost, ``labels_lost``: that is decided at once, whatever the batch's size).

The split into two steps lets the simulations be written at the site by one task and the p-values read by the
next; only counts per bin, expected counts and p-values leave the site.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mledge.contracts import DRIFT_BINS, DRIFT_SIMULATIONS, LABEL_LOSS_LEVEL, LABEL_LOSS_SHARE
from mledge.onsite.dependence import integrated_time

MIN_REFERENCE_ROWS = 50
# A score bin holds at least this many reference rows, so that its failure rate is an estimate, not a guess.
MIN_BIN_REFERENCE_ROWS = 30
# A batch (or a pool of batches) is decided once it has this many rows, about three tool lives of 70 processes,
# so that it is not one slice of the tool-wear cycle or of a temperature excursion ...
MIN_ROWS = 200
# ... and this many expected failures: fewer, and neither a doubling nor a failure-free batch is significant at
# the levels used (P(0 failures | 5 expected) = 0.7 %).
MIN_EXPECTED_FAILURES = 10.0
# A directional test needs this many rows on its side of the decision threshold in the batch (and
# MIN_BIN_REFERENCE_ROWS in the reference); the simulated null is exact, so no expected-count rule is needed.
MIN_SIDE_ROWS = 20
# Coverage: the k-th nearest reference row, and the share of the reference that counts as covered.
COVERAGE_NEIGHBOURS = 10
COVERAGE_QUANTILE = 0.99
COVERAGE_SAMPLE = 1000
# The between-batch variance is estimated from at least this many reference blocks as long as the batch.
MIN_BLOCKS = 5
COVERAGE_MAX_ROWS = 6000
METHOD = (
    "observed vs expected failures within score bins of the production model (hypergeometric simulation, "
    "reference = held-out rows of the reference window): false negatives and false positives, two-sided each"
)
TESTS = ("false_negatives", "false_positives")


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
    return np.searchsorted(inner, scores, side="left"), inner


def _side_edges(pooled: np.ndarray, reference: np.ndarray, bins: int) -> np.ndarray:
    """Inner quantile edges of one side's pooled scores, with at least MIN_BIN_REFERENCE_ROWS reference rows per bin."""
    k = int(min(bins, max(1, len(reference) // MIN_BIN_REFERENCE_ROWS)))
    while k > 1:
        _, inner = score_bins(pooled, k)
        counts = np.bincount(np.searchsorted(inner, reference, side="left"), minlength=len(inner) + 1)
        if counts.min() >= MIN_BIN_REFERENCE_ROWS:
            return inner
        k -= 1
    return np.array([])


def decision_bins(reference_scores: np.ndarray, current_scores: np.ndarray, bins: int) -> np.ndarray:
    """Inner bin edges: 0, and quantile bins of the pooled scores on each side of it."""
    pooled = np.concatenate([reference_scores, current_scores])
    negative = _side_edges(pooled[pooled <= 0], reference_scores[reference_scores <= 0], bins)
    positive = _side_edges(pooled[pooled > 0], reference_scores[reference_scores > 0], bins)
    return np.unique(np.asarray([*negative, 0.0, *positive], float))


def _tails(null: np.ndarray, observed: float) -> dict[str, float]:
    n = len(null)
    upper = (1 + np.count_nonzero(null >= observed)) / (n + 1)
    lower = (1 + np.count_nonzero(null <= observed)) / (n + 1)
    return {"p_upper": float(upper), "p_lower": float(lower), "p_value": float(min(1.0, 2 * min(upper, lower)))}


def coverage(reference_x: np.ndarray, current_x: np.ndarray, n_types: int = 3) -> np.ndarray:
    """Which current rows lie where the reference window (the champion's training data) has data: a boolean mask
    over ``current_x``.

    A row is covered when every quantity lies within the range the reference spans, and its neighbourhood is as
    populated as the reference's own: compared within its product type (the first ``n_types`` one-hot columns),
    on the other columns divided by the reference's spread, its ``COVERAGE_NEIGHBOURS``-th nearest reference row
    is no farther than that distance is for ``COVERAGE_QUANTILE`` of the reference rows themselves (leave one
    out, on at most ``COVERAGE_SAMPLE`` of them, evenly spread), so about 1 % of a batch like the reference falls
    outside. Where the model saw no data it extrapolates, and its errors there change with the inputs without any
    change of P(y | x) (measured: a reference window whose process/air gap never fell below 8.3 K, then a walk
    down to 7 K: "concept drift" in 7 of 20 clean batches). Such rows are left out of the directional tests, and
    counted.
    """
    reference_x = np.ascontiguousarray(reference_x, dtype=float)
    trees = _coverage_trees(reference_x, n_types)
    current_x = np.asarray(current_x, float)
    cur_type = current_x[:, :n_types].argmax(axis=1)
    # Within the range the reference spans in every quantity (a neighbour count misses one quantity going beyond
    # it while the others stay typical) ...
    low, high = reference_x[:, n_types:].min(axis=0), reference_x[:, n_types:].max(axis=0)
    inside = ((current_x[:, n_types:] >= low) & (current_x[:, n_types:] <= high)).all(axis=1)
    covered = np.zeros(len(current_x), bool)
    # ... and among enough reference rows of its kind.
    for t, (tree, limit, spread) in trees.items():
        rows = np.flatnonzero(cur_type == t)
        if len(rows):
            distance = tree.query(current_x[rows, n_types:] / spread, k=COVERAGE_NEIGHBOURS)[0][:, -1]
            covered[rows] = distance <= limit
    return covered & inside


_coverage_cache: dict[bytes, dict] = {}


def _coverage_trees(reference_x: np.ndarray, n_types: int) -> dict:
    """Per product type: the reference's k-d tree, the covered distance and the columns' spread (cached: the same
    reference window is used batch after batch)."""
    import hashlib

    from scipy.spatial import cKDTree

    key = hashlib.blake2b(reference_x.tobytes() + bytes([n_types]), digest_size=16).digest()
    if key in _coverage_cache:
        return _coverage_cache[key]
    if len(reference_x) > COVERAGE_MAX_ROWS:  # an even sample of a long reference says as well where it has data
        reference_x = reference_x[:: -(-len(reference_x) // COVERAGE_MAX_ROWS)]
    spread = reference_x[:, n_types:].std(axis=0)
    spread[~(spread > 0)] = 1.0
    ref_type, ref_c = reference_x[:, :n_types].argmax(axis=1), reference_x[:, n_types:] / spread
    k, trees = COVERAGE_NEIGHBOURS, {}
    for t in range(n_types):
        rows = np.flatnonzero(ref_type == t)
        if len(rows) <= k:
            continue  # too few reference rows of this type to say where it has data: none of it is covered
        tree = cKDTree(ref_c[rows])
        sample = ref_c[rows[:: max(1, len(rows) // COVERAGE_SAMPLE)]]
        own = tree.query(sample, k=k + 1)[0][:, k]  # a reference row is its own nearest neighbour
        trees[t] = (tree, float(np.quantile(own, COVERAGE_QUANTILE)), spread)
    if len(_coverage_cache) >= 16:
        _coverage_cache.pop(next(iter(_coverage_cache)))
    _coverage_cache[key] = trees
    return trees


def _bin_counts(ref_s, ref_y, cur_s, cur_y, bins):
    inner = decision_bins(ref_s, cur_s, bins)
    n_bins = len(inner) + 1
    # Bins are (edge, next edge]: a logit of exactly 0 is "safe", as the model's decision (logit > 0) has it.
    ref_bin = np.searchsorted(inner, ref_s, side="left")
    cur_bin = np.searchsorted(inner, cur_s, side="left")
    ref_rows = np.bincount(ref_bin, minlength=n_bins)
    ref_fail = np.bincount(ref_bin, weights=ref_y, minlength=n_bins).astype(np.int64)
    rate = np.divide(ref_fail, ref_rows, out=np.zeros(n_bins), where=ref_rows > 0)
    return {
        "inner": inner,
        "ref_bin": ref_bin,
        "cur_bin": cur_bin,
        "ref_rows": ref_rows,
        "ref_fail": ref_fail,
        "ref_labels": np.asarray(ref_y, float),
        "cur_rows": np.bincount(cur_bin, minlength=n_bins),
        "cur_fail": np.bincount(cur_bin, weights=cur_y, minlength=n_bins).astype(np.int64),
        # The rows' residuals against the reference's rate at their score, in production order.
        "ref_residual": ref_y - rate[ref_bin],
        "cur_residual": cur_y - rate[cur_bin],
        # A bin is on the "flagged" side when its scores are above 0 (bins never straddle 0).
        "flagged": np.r_[-np.inf, inner] >= 0,
    }


def _spacing(position: np.ndarray) -> np.ndarray:
    """Each reference row's spacing in production: 5 for a window's held-out rows, 1 for whole batches."""
    if len(position) < 2:
        return np.ones(len(position))
    gaps = np.diff(position).astype(float)
    return np.minimum(np.r_[gaps, np.inf], np.r_[np.inf, gaps])


def _design_effect(counts: dict, bins_on_side: np.ndarray, spacing: np.ndarray) -> float:
    """How much the rows' serial dependence *within* a stretch of production inflates the variance of a count
    over these bins (>= 1), judged on the reference under the null hypothesis: the integrated autocorrelation
    time of the reference rows' residuals against their bins' rates, per run of rows with the same spacing in
    production, on the scale of consecutive rows (a series of every k-th row: 1 + k (tau - 1)); the largest.

    Only the reference is used: a drift's new failures come in spells too, and a design effect measured on the
    batch would hide the drift behind its own clustering.
    """
    on_side = bins_on_side[counts["ref_bin"]]
    residual, spacing = counts["ref_residual"][on_side], spacing[on_side]
    design = 1.0
    for k in np.unique(spacing[np.isfinite(spacing) & (spacing > 0)]):
        tau = integrated_time(residual[spacing == k])
        design = max(design, 1.0 + float(k) * (tau - 1.0))
    return design


def _between_blocks(
    counts: dict, bins_on_side: np.ndarray, position: np.ndarray, spacing: np.ndarray, block: int, design: float,
    count_failures: bool,
) -> float:
    """The variance of the per-row excess between stretches of ``block`` production rows (a random effect: how
    much one day's rows differ from another's at the same scores beyond chance), by the method of moments over
    the reference's blocks, each against the rates of all the other reference rows; 0 when it cannot be told
    (fewer than ``MIN_BLOCKS`` blocks: a window of three batches says too little about it, and a noisy estimate
    would blunt the first evaluations at random).

    The temperatures wander for hundreds of processes and the tool wear cycles; a batch is a few such spells, and
    how the failures in a score bin split between failure modes moves with them. Within-batch dependence
    (``design``) misses that: measured on clean batches, the hypergeometric null was too narrow by a factor of
    1.4 to 2 in variance, and more as the reference grew.
    """
    side_bins = np.flatnonzero(bins_on_side)
    ref_bin, labels = counts["ref_bin"], counts["ref_labels"]
    on_side = bins_on_side[ref_bin]
    ids, stride = position[on_side] // max(block, 1), spacing[on_side]
    bins_of, y = ref_bin[on_side], labels[on_side]
    n_bins = len(bins_on_side)
    rows_all = np.bincount(bins_of, minlength=n_bins)
    fail_all = np.bincount(bins_of, weights=y, minlength=n_bins)
    moments = []
    for j in np.unique(ids):
        mine = ids == j
        n_j = int(mine.sum())
        if n_j < MIN_SIDE_ROWS:
            continue
        rows_j = np.bincount(bins_of[mine], minlength=n_bins)
        fail_j = np.bincount(bins_of[mine], weights=y[mine], minlength=n_bins)
        other_rows, other_fail = rows_all - rows_j, fail_all - fail_j
        known = side_bins[other_rows[side_bins] > 0]
        if not len(known):
            continue
        rate = other_fail[known] / other_rows[known]
        expected = float((rows_j[known] * rate).sum())
        observed = float(fail_j[known].sum())
        # Chance and the within-stretch dependence are taken off (``design`` is on the scale of consecutive rows;
        # a block of every k-th row has 1 + (design - 1) / k): what is left is the variance between blocks.
        k = float(np.median(stride[mine][np.isfinite(stride[mine])])) if np.isfinite(stride[mine]).any() else 1.0
        variance = float((rows_j[known] * rate * (1 - rate)).sum()) * (1.0 + (design - 1.0) / max(k, 1.0))
        n_known = float(rows_j[known].sum())
        if not count_failures:  # the count of non-failures has the same excess, of the other sign
            observed, expected = n_known - observed, n_known - expected
        moments.append(((observed - expected) ** 2 - variance) / n_known**2)
    return max(0.0, float(np.mean(moments))) if len(moments) >= MIN_BLOCKS else 0.0


def _null(counts: dict, rng: np.random.Generator, simulations: int) -> tuple[np.ndarray, np.ndarray]:
    """Simulated current failures per bin (simulations x bins) under exchangeability within bins, and each
    bin's expected count."""
    cur_rows = counts["cur_rows"]
    rows, fails = counts["ref_rows"] + cur_rows, counts["ref_fail"] + counts["cur_fail"]
    null = np.zeros((simulations, len(rows)), dtype=np.int64)
    for b in range(len(rows)):
        if cur_rows[b]:
            null[:, b] = rng.hypergeometric(fails[b], rows[b] - fails[b], cur_rows[b], size=simulations)
    rate = np.divide(fails, rows, out=np.zeros(len(rows)), where=rows > 0)
    return null, rate * cur_rows


def _widen(null: np.ndarray, design_effect: float, between: float, rows: int) -> tuple[np.ndarray, float]:
    """The null distribution of a count widened for the rows' dependence: its variance times the design effect,
    plus the between-batch variance of the excess per row times rows squared. Returns it and the factor by
    which its variance grew.

    The widening is done on the square-root scale (Anscombe's variance-stabilising transform of a count,
    sqrt(x + 3/8)), where scaling the spread by sqrt(factor) multiplies the count's variance by about ``factor``
    and keeps the count's skew: an overdispersed count (as a negative binomial) has a long upper tail and cannot
    go below 0 (the mean is kept). Widened linearly, a null of mean 17 and factor 4 put 2 % of its mass at or
    below 0 failures, so a batch that lost every failure row was not significant; on this scale, as under a
    negative binomial, it is well below 0.1 %.
    """
    mean, variance = null.mean(), null.var()
    if variance <= 0:
        return null.astype(float), 1.0
    factor = (design_effect * variance + between * rows * rows) / variance
    root = np.sqrt(null + 0.375)
    centre = root.mean()
    widened = np.maximum(centre + np.sqrt(factor) * (root - centre), 0.0) ** 2 - 0.375
    return widened + (mean - widened.mean()), float(factor)  # the same mean: only the spread grows


def generate_simulations(
    reference_scores: np.ndarray,
    reference_labels: np.ndarray,
    current_scores: np.ndarray,
    current_labels: np.ndarray,
    path: Path,
    *,
    current_covered: np.ndarray | None = None,
    reference_position: np.ndarray | None = None,
    simulations: int = DRIFT_SIMULATIONS,
    bins: int = DRIFT_BINS,
    seed: int | list[int] = 0,
    directional: bool = True,
) -> dict:
    """Simulate the current batch's counts under the null and write them to ``path`` (an .npz at the site).

    ``*_labels``: 1 for a failure, 0 otherwise; rows in production order. ``current_covered`` (``coverage``):
    the batch's rows the directional tests use (default: all); the label rate and the sufficiency checks use
    every row.
    ``reference_position``: each reference row's place in production (row number; default 0, 1, 2, ...): the
    held-out rows of a window are every 5th row, calibration batches whole. From them the null's spread is
    widened for the rows' dependence: within a stretch of production (the reference's residual autocorrelation)
    and between stretches as long as the batch (the variance between the reference's own blocks).
    ``directional=False`` (no production model: the scores are placeholders) keeps only the label rate and the
    sufficiency checks.
    Returns the summary that is also stored in the file (no rows: counts per bin, expected counts and the
    sufficiency checks).
    """
    ref_s, ref_y = np.asarray(reference_scores, float), np.asarray(reference_labels, np.int64)
    cur_s, cur_y = np.asarray(current_scores, float), np.asarray(current_labels, np.int64)
    if len(ref_s) != len(ref_y) or len(cur_s) != len(cur_y):
        raise ValueError("scores and labels must have one value per row")
    if len(ref_s) < MIN_REFERENCE_ROWS:
        raise ValueError(f"only {len(ref_s)} reference rows; at least {MIN_REFERENCE_ROWS} are needed")
    if simulations < 1 or bins < 1:
        raise ValueError(f"simulations and bins must be positive, got {simulations} and {bins}")
    if len(cur_s) == 0:
        raise ValueError("the current batch has no rows (an empty batch is a label-rate finding, not a test)")
    cur_in = np.ones(len(cur_s), bool) if current_covered is None else np.asarray(current_covered, bool)
    position = np.arange(len(ref_s)) if reference_position is None else np.asarray(reference_position, np.int64)
    if len(cur_in) != len(cur_s) or len(position) != len(ref_s):
        raise ValueError("the coverage mask and the positions must have one value per row")
    rng = np.random.default_rng(seed)

    # Every row: the label rate and whether the batch can be decided at all.
    everything = _bin_counts(ref_s, ref_y, cur_s, cur_y, bins)
    null_all, expected_all = _null(everything, rng, simulations)
    # Covered rows: the directional tests.
    counts = _bin_counts(ref_s, ref_y, cur_s[cur_in], cur_y[cur_in], bins)
    null, expected = _null(counts, rng, simulations)
    flagged, cur_rows, cur_fail = counts["flagged"], counts["cur_rows"], counts["cur_fail"]
    everywhere, spacing, block = np.ones(len(everything["ref_rows"]), bool), _spacing(position), len(cur_s)
    design = {
        "false_negatives": _design_effect(counts, ~flagged, spacing),
        "false_positives": _design_effect(counts, flagged, spacing),
        "failures": _design_effect(everything, everywhere, spacing),
    }
    between = {
        name: _between_blocks(table, side, position, spacing, block, design[name], name != "false_positives")
        for name, table, side in (
            ("false_negatives", counts, ~flagged), ("false_positives", counts, flagged),
            ("failures", everything, everywhere),
        )
    }
    null_fn, grow_fn = _widen(
        null[:, ~flagged].sum(axis=1), design["false_negatives"], between["false_negatives"],
        int(cur_rows[~flagged].sum()),
    )
    null_fp, grow_fp = _widen(
        (cur_rows[flagged] - null[:, flagged]).sum(axis=1), design["false_positives"], between["false_positives"],
        int(cur_rows[flagged].sum()),
    )
    null_failures, grow_all = _widen(null_all.sum(axis=1), design["failures"], between["failures"], len(cur_s))
    observed = {
        "false_negatives": int(cur_fail[~flagged].sum()),
        "false_positives": int((cur_rows[flagged] - cur_fail[flagged]).sum()),
        "failures": int(cur_y.sum()),
    }
    expected_counts = {
        "false_negatives": float(expected[~flagged].sum()),
        "false_positives": float((cur_rows[flagged] - expected[flagged]).sum()),
        "failures": float(expected_all.sum()),
    }
    side_rows = {
        "false_negatives": (int(cur_rows[~flagged].sum()), int(counts["ref_rows"][~flagged].sum())),
        "false_positives": (int(cur_rows[flagged].sum()), int(counts["ref_rows"][flagged].sum())),
    }
    # A directional test needs rows on its side of the threshold, in the batch and in the reference.
    computable = {
        name: directional and current >= MIN_SIDE_ROWS and reference >= MIN_BIN_REFERENCE_ROWS
        for name, (current, reference) in side_rows.items()
    }
    reasons = []
    if len(cur_s) < MIN_ROWS:
        reasons.append(f"{len(cur_s)} rows < {MIN_ROWS}")
    if expected_counts["failures"] < MIN_EXPECTED_FAILURES:
        reasons.append(f"{expected_counts['failures']:.1f} expected failures < {MIN_EXPECTED_FAILURES:g}")
    summary = {
        "method": METHOD,
        "simulations": int(simulations),
        "bins": len(counts["inner"]) + 1,
        "bin_edges": [float(e) for e in counts["inner"]],
        "current_rows": int(len(cur_s)),
        "reference_rows": int(len(ref_s)),
        "reference_failures": int(ref_y.sum()),
        "covered_current_rows": int(cur_in.sum()),
        "side_rows": {name: {"current": c, "reference": r} for name, (c, r) in side_rows.items()},
        "observed": observed,
        "expected": expected_counts,
        "computable": computable,
        "design_effect": design,
        "between_batch_variance": between,
        "variance_factor": {"false_negatives": grow_fn, "false_positives": grow_fp, "failures": grow_all},
        "sufficient": not reasons,
        "insufficient_reason": "; ".join(reasons) or None,
        "current_failure_rate": observed["failures"] / len(cur_s) if len(cur_s) else None,
        "reference_failure_rate": float(ref_y.mean()),
        # Failures beyond what the reference implies at the same scores, per current row.
        "statistic": (observed["failures"] - expected_counts["failures"]) / len(cur_s) if len(cur_s) else 0.0,
        "bin_rows": (counts["ref_rows"] + cur_rows).tolist(),
        "bin_failures": (counts["ref_fail"] + cur_fail).tolist(),
        "bin_current_rows": cur_rows.tolist(),
        "bin_current_failures": cur_fail.tolist(),
        "bin_flagged": flagged.tolist(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:  # np.savez on a path would append ".npz" to names without it
        np.savez(
            handle, false_negatives=null_fn, false_positives=null_fp, failures=null_failures,
            summary=np.array(json.dumps(summary)),
        )
    return summary


def labels_lost(label_rate: Mapping[str, Any]) -> bool:
    """Whether a batch arrived without (most of) its failures: at most ``LABEL_LOSS_SHARE`` of those its scores
    imply, and significantly fewer (simulated lower tail <= ``LABEL_LOSS_LEVEL``). The platform applies the same
    rule (mledge.contracts), so a batch too small for the drift tests that lost its labels is decided at once."""
    share, p = label_rate.get("share"), label_rate.get("p_value")
    return share is not None and p is not None and share <= LABEL_LOSS_SHARE and p <= LABEL_LOSS_LEVEL


def evaluate_p_value(path: Path) -> dict:
    """The simulated p-values from a file written by ``generate_simulations``: the summary plus ``tests``
    (per directional test: observed, expected, two-sided ``p_value`` and both tails, ``computed``) and
    ``label_rate`` (observed and expected failures, the lower tail ``p_value``, the ``share`` that arrived)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no concept-drift simulations at {path}: run generate_simulations first")
    with np.load(path, allow_pickle=False) as stored:
        nulls = {name: stored[name] for name in (*TESTS, "failures")}
        summary = json.loads(str(stored["summary"]))
    tests = {}
    for name in TESTS:
        observed = summary["observed"][name]
        tests[name] = {
            "observed": observed,
            "expected": summary["expected"][name],
            "computed": bool(summary["computable"][name]),
            **_tails(nulls[name], observed),
        }
    observed, expected = summary["observed"]["failures"], summary["expected"]["failures"]
    label = _tails(nulls["failures"], observed)
    summary["tests"] = tests
    summary["label_rate"] = {
        "observed": observed,
        "expected": expected,
        "share": observed / expected if expected > 0 else None,
        "p_value": label["p_lower"],  # one-sided: failures missing
        "p_upper": label["p_upper"],
    }
    summary["label_rate"]["lost"] = labels_lost(summary["label_rate"])
    # The smallest directional p-value, for a one-number summary (the decision corrects them as a family).
    computed = [t["p_value"] for t in tests.values() if t["computed"]]
    summary["p_value"] = min(computed) if computed else None
    return summary
