"""Data drift with Evidently: a sensor offset and a product-mix change are found, a clean batch is not."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from drift_streams import stream

from drift.decision import decide_batch
from mledge.onsite.data_drift import COLUMN_METHODS, data_drift
from mledge.onsite.profiles import SCENARIOS
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
        assert 0.0 <= entry["p_value"] <= 1.0
    decision = decide_batch(result, None, alpha=0.05, n_sites=3)
    assert decision["data"]["decision"] == "no_drift" and decision["data"]["drifted_columns"] == []
    assert result["reference_rows"] == 3000 and result["current_rows"] == 1000


def test_the_reports_are_saved_at_the_site(clean_result):
    result, report_dir = clean_result
    assert result["html"] == str(report_dir / "data_drift.html")
    assert "<html" in (report_dir / "data_drift.html").read_text()[:2000].lower()
    document = json.loads((report_dir / "data_drift.json").read_text())
    methods = {m["config"]["column"]: m["config"]["method"] for m in document["metrics"] if "column" in m["config"]}
    assert methods == COLUMN_METHODS


def test_a_sensor_offset_is_found_in_its_column_only(plant_b_reference, plant_b_stream):
    result = data_drift(plant_b_reference, plant_b_stream[4])  # batch 5: the offset's first batch
    decision = decide_batch(result, None, alpha=0.05, n_sites=3)
    assert decision["data"]["decision"] == "drift"
    assert decision["data"]["drifted_columns"] == ["process_temperature_k"]
    assert decision["data"]["p_value"] < 1e-6


def test_a_product_mix_change_is_found_in_the_type_column():
    frames = stream("plant_c", 5, SCENARIOS["plant_c-product-mix"], rows=600)
    result = data_drift(pd.concat(frames[:3], ignore_index=True), frames[4])
    decision = decide_batch(result, None, alpha=0.05, n_sites=3)
    assert decision["data"]["drifted_columns"] == ["type"]


def test_tests_without_p_values_and_missing_columns_are_refused(plant_b_reference, plant_b_stream):
    with pytest.raises(ValueError, match="wasserstein"):
        data_drift(plant_b_reference, plant_b_stream[3], methods={**COLUMN_METHODS, "torque_nm": "wasserstein"})
    with pytest.raises(ValueError, match="current data lack column.*torque_nm"):
        data_drift(plant_b_reference, plant_b_stream[3].drop(columns=["torque_nm"]))
