"""Finite, physically possible sensor readings: what is outside is named by column, row count and CSV lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mledge.onsite.generator import generate_batch
from mledge.onsite.profiles import PROFILES as SITES
from mledge.onsite.profiles import SCENARIOS
from mledge.onsite.schema import NUMERIC_COLUMNS, SENSOR_RANGES
from mledge.onsite.store import SiteDataError, batch_paths, load_site_data, schema_problems


@pytest.fixture(scope="module")
def good() -> pd.DataFrame:
    return generate_batch(SITES["plant_a"], 1, None, rows=50, drifts=())[0]


def _set(frame: pd.DataFrame, column: str, rows: list[int], value) -> pd.DataFrame:
    changed = frame.copy()
    changed[column] = changed[column].astype(float)
    changed.loc[rows, column] = value
    return changed


def test_a_good_batch_has_no_problem(good):
    assert schema_problems(good) == []


def test_the_ranges_cover_ai4i_with_margins_and_are_numeric_columns():
    # The published AI4I 2020 spans (Matzka 2020, UCI 601), which every range must hold with room to spare.
    ai4i = {
        "air_temperature_k": (295.3, 304.5),
        "process_temperature_k": (305.7, 313.8),
        "rotational_speed_rpm": (1168, 2886),
        "torque_nm": (3.8, 76.6),
        "tool_wear_min": (0, 253),
    }
    assert set(SENSOR_RANGES) == set(ai4i) and set(SENSOR_RANGES) <= set(NUMERIC_COLUMNS)
    for column, (low, high, unit) in SENSOR_RANGES.items():
        seen_low, seen_high = ai4i[column]
        assert low <= seen_low and high >= 2 * seen_high - seen_low, column  # at least a span's margin above
        assert low >= 0 and unit


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_the_generator_never_trips_a_range(scenario):
    for site, profile in SITES.items():
        state = None
        for index in range(1, 13):
            frame, state = generate_batch(profile, index, state, rows=500, drifts=SCENARIOS[scenario])
            assert schema_problems(frame) == [], (scenario, site, index)


@pytest.mark.parametrize("column", sorted(SENSOR_RANGES))
def test_the_range_bounds_are_inclusive(good, column):
    low, high, unit = SENSOR_RANGES[column]
    assert schema_problems(_set(good, column, [0], low)) == []
    assert schema_problems(_set(good, column, [0], high)) == []
    for outside in (low - 1, high + 1):
        (problem,) = schema_problems(_set(good, column, [0], outside))
        assert problem.startswith(f"out-of-range values in {column} (physical range {low:g} to {high:g} {unit})")
        assert "1 row(s), e.g. CSV lines [2]" in problem


def test_the_count_is_complete_and_the_examples_few(good):
    rows = [1, 4, 9, 16, 25, 36, 49]
    (problem,) = schema_problems(_set(good, "torque_nm", rows, 999.0))
    assert problem == (
        "out-of-range values in torque_nm (physical range 0 to 200 Nm): 7 row(s), e.g. CSV lines [3, 6, 11, 18, 27] "
        "(values [999.0, 999.0, 999.0, 999.0, 999.0])"
    )


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_values_are_named_not_taken_for_fractions(good, value):
    problems = schema_problems(_set(good, "tool_wear_min", [2, 3], value))
    shown = "Infinity" if value > 0 else "-Infinity"
    lines = "2 row(s), e.g. CSV lines [4, 5]"
    assert problems == [f"non-finite values in tool_wear_min: {lines} (values [{shown}, {shown}])"]


def test_a_missing_value_is_not_a_range_problem(good):
    assert schema_problems(_set(good, "torque_nm", [0], np.nan)) == ["missing values in {'torque_nm': 1}"]
    assert schema_problems(_set(good, "torque_nm", [0], np.nan), check_missing_values=False) == []


def test_text_in_a_number_names_the_lines_and_values(good):
    frame = good.copy()
    frame["torque_nm"] = frame["torque_nm"].astype(object)
    frame.loc[[5, 6], "torque_nm"] = ["forty", "n/a"]
    (problem,) = schema_problems(frame)
    assert problem == 'non-numeric values in torque_nm: 2 row(s), e.g. CSV lines [7, 8] (values ["forty", "n/a"])'


def test_reading_a_stored_batch_checks_the_ranges_too(make_store):
    store = make_store("plant_b", batches=2, rows=30)
    bad = batch_paths(store)[1]
    frame = pd.read_csv(bad)
    frame.loc[4, "process_temperature_k"] = 37.2  # a Celsius reading
    frame.to_csv(bad, index=False)
    with pytest.raises(SiteDataError) as err:
        load_site_data(store, "plant_b")
    assert err.value.path == bad
    assert "out-of-range values in process_temperature_k" in str(err.value) and "CSV lines [6]" in str(err.value)
    # What may leave the site names the line, not the reading; the site's own copy keeps it.
    assert "37.2" not in str(err.value) and "(values [37.2])" in err.value.problem


@pytest.mark.parametrize(
    "cell", ["Jane Doe, operator", 'x"]) (values ["leak', "]) also", "\\", "12345678901234567890"]
)
def test_no_cell_value_leaves_the_site_with_a_quarantine(make_store, cell):
    """Whatever a cell holds, the summary a collection returns (XCom, task log) leaves it out; the reason file
    beside the quarantined file, at the site, keeps it."""
    import json

    from mledge.onsite.store import accept_incoming

    store = make_store("plant_a", batches=1, rows=30)
    frame = pd.read_csv(batch_paths(store)[0]).astype({"torque_nm": object})
    frame.loc[[3, 4], "torque_nm"] = [cell, cell]
    (store / "incoming").mkdir(exist_ok=True)
    frame.to_csv(store / "incoming" / "export.csv", index=False)
    result = accept_incoming(store, "plant_a", 0.5)
    (held,) = result["quarantined"]
    assert "values in torque_nm" in held["reason"] and "2 row(s), e.g. CSV lines [5, 6]" in held["reason"]
    summary = json.dumps(result)
    assert cell not in summary and json.dumps(cell)[1:-1] not in summary and "(values" not in summary
    kept = json.loads(Path(held["reason_file"]).read_text())["problem"]
    assert "(values [" in kept and (json.dumps(cell) in kept or "e+19" in kept)
