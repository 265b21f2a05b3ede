"""Data drift of one batch against the site's reference window: a two-sample test per column that gives a
p-value, with the rows' serial dependence accounted for; Evidently renders the report with the same tests.

- Numerical columns: two-sample Kolmogorov-Smirnov on *effective* sample sizes. A site's rows come in production
  order and are not independent (dependence.py): the temperatures are random walks carried across batches, tool
  wear is a sawtooth, so n rows carry the information of n / tau independent ones. The KS statistic is the usual
  one; its p-value comes from Kolmogorov's distribution (Stephens' small-sample form) at the effective sizes of
  both samples. For independent columns (torque, speed) that is the ordinary KS test; for a temperature walk that
  relaxes over hundreds of processes a batch is worth only a few independent rows, and the test says so.
- Categorical columns (``type``): Pearson's chi-square test of homogeneity on the 2 x k table of counts (the
  reference mix is an estimate with its own sampling error, not the truth: the goodness-of-fit form that
  Evidently's ``chisquare`` uses rejected about 8 % of clean batches at 5 %; scipy's ``chi2_contingency``),
  divided by the design effect of the difference in shares (first-order Rao-Scott correction: per sample the
  variance-weighted mean integrated autocorrelation time of the category indicators).
- Minimum sample size: a test needs ``MIN_EFFECTIVE_ROWS`` effective rows in both samples (and, for the chi-square
  test, an effective expected count of at least 1 in every cell and 5 in most); below that it is reported as
  not computed (``insufficient``) and raises no alarm: a few dozen rows are one slice of the tool-wear cycle.

Evidently's report (HTML and JSON, histograms of each column: bin counts and edges, not rows) is built with these
tests registered as ``mledge_ks`` and ``mledge_chi2``; it is what leaves the site, with the p-values. The
platform corrects the p-values (drift/correction.py); the per-column verdicts in the report are uncorrected.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from mledge.onsite.dependence import integrated_time
from mledge.onsite.schema import FEATURES

CATEGORICAL_COLUMNS = ("type",)
KS, CHI2 = "mledge_ks", "mledge_chi2"
COLUMN_METHODS: dict[str, str] = {column: CHI2 if column in CATEGORICAL_COLUMNS else KS for column in FEATURES}
METHOD_NAMES = {
    KS: "two-sample Kolmogorov-Smirnov on effective sample sizes (serial dependence)",
    CHI2: "chi-square test of homogeneity (2 x k), Rao-Scott corrected for serial dependence",
}
# Below this many effective rows in either sample a column is not tested.
MIN_EFFECTIVE_ROWS = 10.0
assert set(COLUMN_METHODS) == set(FEATURES)


def _not_computed(method: str, reason: str, **extra) -> dict:
    return {"method": method, "p_value": None, "statistic": None, "computed": False, "reason": reason, **extra}


def ks_test(reference: np.ndarray, current: np.ndarray) -> dict:
    """Two-sample KS with the p-value at both samples' effective sizes; rows in production order."""
    from scipy.stats import distributions

    ref, cur = np.asarray(reference, float), np.asarray(current, float)
    ref, cur = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    n_ref = len(ref) / integrated_time(ref) if len(ref) else 0.0
    n_cur = len(cur) / integrated_time(cur) if len(cur) else 0.0
    sizes = {"rows": [len(ref), len(cur)], "effective_rows": [round(n_ref, 1), round(n_cur, 1)]}
    if min(n_ref, n_cur) < MIN_EFFECTIVE_ROWS:
        return _not_computed(KS, f"effective rows {min(n_ref, n_cur):.1f} < {MIN_EFFECTIVE_ROWS:g}", **sizes)
    ref, cur = np.sort(ref), np.sort(cur)
    points = np.concatenate([ref, cur])
    d = float(np.abs(np.searchsorted(ref, points, "right") / len(ref)
                     - np.searchsorted(cur, points, "right") / len(cur)).max())
    en = math.sqrt(n_ref * n_cur / (n_ref + n_cur))
    p = float(distributions.kstwobign.sf((en + 0.12 + 0.11 / en) * d))
    return {"method": KS, "p_value": min(1.0, p), "statistic": d, "computed": True, "reason": None, **sizes}


def _design_effect(values: np.ndarray, levels: list[str]) -> float:
    """A sample's design effect for its category shares: the integrated autocorrelation times of the category
    indicators, averaged with weights p (1 - p) (each indicator's share of the variance; >= 1)."""
    weights, times = [], []
    for v in levels:
        indicator = (values == v).astype(float)
        share = indicator.mean() if len(indicator) else 0.0
        weights.append(share * (1.0 - share))
        times.append(integrated_time(indicator))
    return float(np.average(times, weights=weights)) if sum(weights) > 0 else 1.0


def chi2_test(reference: pd.Series, current: pd.Series) -> dict:
    """Chi-square test of homogeneity of two samples of categories, with a first-order Rao-Scott correction for
    serial dependence: the statistic divided by the design effect of the difference of the two samples' shares
    (each sample's own, ``_design_effect``, weighted by its variance share 1/n)."""
    from scipy.stats import chi2, chi2_contingency

    ref = pd.Series(reference).dropna().astype(str).to_numpy()
    cur = pd.Series(current).dropna().astype(str).to_numpy()
    levels = sorted(set(ref) | set(cur))
    d_ref, d_cur = _design_effect(ref, levels), _design_effect(cur, levels)
    n_ref, n_cur = len(ref) / d_ref, len(cur) / d_cur
    design = (d_ref / len(ref) + d_cur / len(cur)) / (1 / len(ref) + 1 / len(cur)) if len(ref) and len(cur) else 1.0
    sizes = {"rows": [len(ref), len(cur)], "effective_rows": [round(n_ref, 1), round(n_cur, 1)],
             "design_effect": round(design, 3)}
    if min(n_ref, n_cur) < MIN_EFFECTIVE_ROWS:
        return _not_computed(CHI2, f"effective rows {min(n_ref, n_cur):.1f} < {MIN_EFFECTIVE_ROWS:g}", **sizes)
    if len(levels) < 2:
        return {"method": CHI2, "p_value": 1.0, "statistic": 0.0, "computed": True, "reason": None, **sizes}
    table = np.array([[np.sum(ref == v) for v in levels], [np.sum(cur == v) for v in levels]], float)
    pearson, _, dof, expected = chi2_contingency(table, correction=False)
    effective = expected / design
    if effective.min() < 1.0 or np.mean(effective < 5.0) > 0.2:
        return _not_computed(CHI2, f"expected counts too small (smallest {effective.min():.1f} effective)", **sizes)
    statistic = float(pearson) / design
    p = float(chi2.sf(statistic, df=dof))
    return {"method": CHI2, "p_value": p, "statistic": statistic, "computed": True, "reason": None, **sizes}


def column_test(reference: pd.Series, current: pd.Series, method: str) -> dict:
    """One column's test by method name (``COLUMN_METHODS``)."""
    if method == KS:
        return ks_test(pd.to_numeric(reference).to_numpy(float), pd.to_numeric(current).to_numpy(float))
    if method == CHI2:
        return chi2_test(reference, current)
    raise ValueError(f"unknown data-drift test {method!r}; choose from {sorted(METHOD_NAMES)}")


# --- Evidently: the same tests, for the report -----------------------------------------------------------------


def _evidently_p(method: str):
    def test(reference: pd.Series, current: pd.Series, feature_type, threshold: float) -> tuple[float, bool]:
        result = column_test(reference, current, method)
        p = 1.0 if result["p_value"] is None else result["p_value"]  # not computed: no drift in the report
        return p, p < threshold

    test.__name__ = method
    return test


def register_with_evidently() -> None:
    """Register ``mledge_ks`` and ``mledge_chi2`` as Evidently stat tests (idempotent)."""
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    for method, kinds in ((KS, [ColumnType.Numerical]), (CHI2, [ColumnType.Categorical])):
        register_stattest(
            StatTest(name=method, display_name=METHOD_NAMES[method], allowed_feature_types=kinds),
            default_impl=_evidently_p(method),
        )


def _definition(columns: list[str]):
    from evidently import DataDefinition

    return DataDefinition(
        numerical_columns=[c for c in columns if c not in CATEGORICAL_COLUMNS],
        categorical_columns=[c for c in columns if c in CATEGORICAL_COLUMNS],
    )


def build_report(columns: list[str], methods: Mapping[str, str], alpha: float, drift_share: float):
    """The Evidently report we run: the data-drift preset with our test per column."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    register_with_evidently()
    preset = DataDriftPreset(
        columns=columns, per_column_method=dict(methods), threshold=alpha, drift_share=drift_share
    )
    return Report([preset], include_tests=True)


def _check_columns(frame: pd.DataFrame, columns: list[str], which: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{which} data lack column(s) {missing} needed for data drift")


def data_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    methods: Mapping[str, str] | None = None,
    alpha: float = 0.05,
    drift_share: float = 0.5,
    report_dir: Path | None = None,
    report_name: str = "data_drift",
) -> dict:
    """Test every column of ``current`` against ``reference`` (rows in production order); with ``report_dir``
    also save Evidently's ``<report_name>.html``/``.json`` built with the same tests.

    Returns ``{"columns": {col: {"method", "p_value", "statistic", "computed", "reason", "rows",
    "effective_rows", "drifted_uncorrected"}}, "share_drifted", "drifted_count", "reference_rows",
    "current_rows", "html", "json"}``; a column that could not be tested has ``p_value`` None.
    """
    methods = dict(COLUMN_METHODS if methods is None else methods)
    unknown = sorted(m for m in set(methods.values()) if m not in METHOD_NAMES)
    if unknown:
        raise ValueError(f"stat test(s) {unknown} are not ours; choose from {sorted(METHOD_NAMES)}")
    columns = list(methods)
    _check_columns(reference, columns, "reference")
    _check_columns(current, columns, "current")
    if reference.empty:
        raise ValueError("reference data have no rows")
    found = {}
    for column in columns:
        result = column_test(reference[column], current[column], methods[column])
        result["drifted_uncorrected"] = result["computed"] and result["p_value"] < alpha
        found[column] = result
    computed = [r for r in found.values() if r["computed"]]
    drifted = sum(r["drifted_uncorrected"] for r in computed)
    document = {
        "columns": found,
        "share_drifted": drifted / len(computed) if computed else 0.0,
        "drifted_count": drifted,
        "reference_rows": len(reference),
        "current_rows": len(current),
        "html": None,
        "json": None,
    }
    if report_dir is not None and len(current):
        from evidently import Dataset

        definition = _definition(columns)
        snapshot = build_report(columns, methods, alpha, drift_share).run(
            current_data=Dataset.from_pandas(current[columns].reset_index(drop=True), data_definition=definition),
            reference_data=Dataset.from_pandas(
                reference[columns].reset_index(drop=True), data_definition=definition
            ),
        )
        report_dir = Path(report_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        html, js = report_dir / f"{report_name}.html", report_dir / f"{report_name}.json"
        snapshot.save_html(str(html))
        snapshot.save_json(str(js))
        document.update({"html": str(html), "json": str(js)})
    return document
