"""Data drift: two-sample tests per column that know the rows are not independent; Evidently renders the same."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from drift_streams import stream

from drift.decision import decide_batch
from mledge.onsite.data_drift import (
    CHI2,
    COLUMN_METHODS,
    KS,
    MIN_EFFECTIVE_ROWS,
    chi2_test,
    data_drift,
    ks_test,
)
from mledge.onsite.generator import mean_reverting_walk
from mledge.onsite.profiles import SCENARIOS, ScheduledDrift
from mledge.onsite.schema import FEATURES


@pytest.fixture(scope="module")
def clean_result(plant_b_reference, plant_b_stream, tmp_path_factory):
    report_dir = tmp_path_factory.mktemp("reports")
    return data_drift(plant_b_reference, plant_b_stream[3], report_dir=report_dir), report_dir


def test_a_clean_batch_is_not_drift(clean_result):
    result, _ = clean_result
    assert set(result["columns"]) == set(FEATURES)
    for column, entry in result["columns"].items():
        assert entry["method"] == COLUMN_METHODS[column]
        assert entry["p_value"] is None or 0.0 <= entry["p_value"] <= 1.0
    decision = decide_batch(result, None, alpha=0.05, n_sites=3)
    assert decision["data"]["decision"] == "no_drift" and decision["data"]["drifted_columns"] == []
    assert result["reference_rows"] == 3000 and result["current_rows"] == 1000


def test_the_reports_are_saved_at_the_site_with_our_tests(clean_result):
    result, report_dir = clean_result
    assert result["html"] == str(report_dir / "data_drift.html")
    assert "<html" in (report_dir / "data_drift.html").read_text()[:2000].lower()
    document = json.loads((report_dir / "data_drift.json").read_text())
    drift = {m["config"]["column"]: m for m in document["metrics"] if "column" in m["config"]}
    assert {c: m["config"]["method"] for c, m in drift.items()} == COLUMN_METHODS
    for column, metric in drift.items():  # the report shows the p-values the decision used
        expected = result["columns"][column]["p_value"]
        assert metric["value"] == pytest.approx(1.0 if expected is None else expected)


def test_ks_counts_effective_rows_not_rows():
    rng = np.random.default_rng(0)
    iid = ks_test(rng.normal(size=3000), rng.normal(size=1000))
    assert iid["computed"] and iid["effective_rows"][1] > 850
    # A slow walk: a batch is worth a handful of independent rows, whatever its level says.
    walk = mean_reverting_walk(rng, 4000, 2.0, 400.0, None)
    slow = ks_test(walk[:3000], walk[3000:] + 1.0)
    assert not slow["computed"] and slow["p_value"] is None and "effective rows" in slow["reason"]
    assert slow["effective_rows"][1] < MIN_EFFECTIVE_ROWS


def test_ks_keeps_its_level_on_serially_dependent_columns():
    """A walk relaxing over 50 rows, compared with its own past: the naive KS test would reject nearly always."""
    rng = np.random.default_rng(1)
    rejections = computed = 0
    for _ in range(200):
        walk = mean_reverting_walk(rng, 6000, 1.0, 25.0, None)
        result = ks_test(walk[:3000], walk[5000:])
        if result["computed"]:
            computed += 1
            rejections += result["p_value"] < 0.05
    assert computed > 150
    assert rejections / computed <= 0.08
    assert ks_test(rng.normal(size=3000), rng.normal(0.3, 1.0, size=1000))["p_value"] < 1e-6


def test_the_chi_square_test_treats_the_reference_mix_as_an_estimate():
    """Clean batches at 5 %: the two-sample test rejects about 5 %; a goodness-of-fit test against the reference's
    shares (Evidently's ``chisquare``) rejects more, because the reference's own sampling error is ignored."""
    from scipy.stats import chisquare

    rng = np.random.default_rng(2)
    ours = gof = 0
    trials = 1500
    for _ in range(trials):
        ref = pd.Series(rng.choice(list("LMH"), size=1000, p=[0.5, 0.3, 0.2]))
        cur = pd.Series(rng.choice(list("LMH"), size=1000, p=[0.5, 0.3, 0.2]))
        ours += chi2_test(ref, cur)["p_value"] < 0.05
        counts_ref, counts_cur = ref.value_counts(), cur.value_counts()
        expected = [counts_ref[k] * len(cur) / len(ref) for k in "LMH"]
        gof += chisquare([counts_cur[k] for k in "LMH"], expected)[1] < 0.05
    assert 0.03 <= ours / trials <= 0.07
    assert gof / trials > 0.10  # equal sizes: the reference's error doubles the variance
    shifted = pd.Series(rng.choice(list("LMH"), size=1000, p=[0.3, 0.3, 0.4]))
    assert chi2_test(ref, shifted)["p_value"] < 1e-10


def test_too_few_rows_are_not_tested():
    rng = np.random.default_rng(3)
    few = ks_test(rng.normal(size=3000), rng.normal(size=8))
    assert not few["computed"] and few["p_value"] is None
    tiny = chi2_test(pd.Series(list("LMH") * 300), pd.Series(list("LLM")))
    assert not tiny["computed"]


def test_a_product_mix_change_is_found_in_the_type_column():
    frames = stream("plant_c", 5, SCENARIOS["plant_c-product-mix"], rows=600)
    result = data_drift(pd.concat(frames[:3], ignore_index=True), frames[4])
    decision = decide_batch(result, None, alpha=0.05, n_sites=3)
    assert decision["data"]["drifted_columns"] == ["type"]
    assert result["columns"]["type"]["method"] == CHI2


def test_a_speed_shift_is_found_in_the_speed_column():
    drift = (ScheduledDrift("plant_a", 4, "covariate_shift", speed_rpm=-80.0),)
    frames = stream("plant_a", 4, drift)
    result = data_drift(pd.concat(frames[:3], ignore_index=True), frames[3])
    decision = decide_batch(result, None, alpha=0.05, n_sites=3)
    assert "rotational_speed_rpm" in decision["data"]["drifted_columns"]
    assert result["columns"]["rotational_speed_rpm"]["method"] == KS


def test_unknown_tests_and_missing_columns_are_refused(plant_b_reference, plant_b_stream):
    with pytest.raises(ValueError, match="wasserstein"):
        data_drift(plant_b_reference, plant_b_stream[3], methods={**COLUMN_METHODS, "torque_nm": "wasserstein"})
    with pytest.raises(ValueError, match="current data lack column.*torque_nm"):
        data_drift(plant_b_reference, plant_b_stream[3].drop(columns=["torque_nm"]))
