"""Scheduled drift: configured in one place, applied from its onset batch, overridable per scenario."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from drift_streams import stream

from mledge.onsite.generator import OSF_LIMIT, generate_batch
from mledge.onsite.profiles import (
    DRIFT_SCHEDULE,
    DRIFT_SCHEDULE_ENV,
    SCENARIOS,
    DriftScheduleError,
    ScheduledDrift,
    drift_schedule,
    drifts_for,
    load_drift_schedule,
)
from mledge.onsite.profiles import PROFILES as SITES
from mledge.onsite.schema import FAILURE_MODES, LABEL
from mledge.onsite.store import append_generated_batch, load_site_data

OFFSET = DRIFT_SCHEDULE[0].offset_k


def test_default_schedule_is_a_plant_b_sensor_offset_from_batch_5_only():
    assert len(DRIFT_SCHEDULE) == 1
    (drift,) = DRIFT_SCHEDULE
    assert (drift.site, drift.kind, drift.onset_batch) == ("plant_b", "sensor_offset", 5)
    assert drift.offset_k > 0
    assert drifts_for("plant_a", DRIFT_SCHEDULE) == () and drifts_for("plant_c", DRIFT_SCHEDULE) == ()


def test_without_override_the_default_schedule_is_in_force(monkeypatch):
    monkeypatch.delenv(DRIFT_SCHEDULE_ENV, raising=False)
    assert drift_schedule() == DRIFT_SCHEDULE
    assert drifts_for("plant_b") == DRIFT_SCHEDULE


def test_sensor_offset_changes_only_the_recorded_process_temperature_from_the_onset(plant_b_stream):
    clean = stream("plant_b", 6, drifts=())
    for index, (drifted, plain) in enumerate(zip(plant_b_stream, clean, strict=True), start=1):
        others = [c for c in drifted.columns if c != "process_temperature_k"]
        # Same machines, same failures: the sensor does not change what happens, only what is recorded.
        pd.testing.assert_frame_equal(drifted[others], plain[others])
        shift = (drifted["process_temperature_k"] - plain["process_temperature_k"]).to_numpy()
        expected = OFFSET if index >= 5 else 0.0
        np.testing.assert_allclose(shift, expected, atol=1e-9, err_msg=f"batch {index}")


def test_after_the_onset_failures_follow_the_true_temperature_not_the_recorded_one(plant_b_stream):
    rows = pd.concat(plant_b_stream[4:], ignore_index=True)
    air, recorded, speed = rows["air_temperature_k"], rows["process_temperature_k"], rows["rotational_speed_rpm"]
    true = (recorded - OFFSET).round(1)
    np.testing.assert_array_equal(rows["hdf"], (((true - air) < 8.6) & (speed < 1380)).astype(int))
    on_recorded = (((recorded - air) < 8.6) & (speed < 1380)).astype(int)
    # Concept drift: the rule written on the recorded values now misses failures.
    assert (rows["hdf"] != on_recorded).sum() > 10
    # Every other rule still holds on the recorded values, and the label is still the OR of the modes.
    power = rows["torque_nm"] * speed * 2 * np.pi / 60
    np.testing.assert_array_equal(rows["pwf"], ((power < 3500) | (power > 9000)).astype(int))
    np.testing.assert_array_equal(
        rows["osf"], (rows["tool_wear_min"] * rows["torque_nm"] > rows["type"].map(OSF_LIMIT)).astype(int)
    )
    np.testing.assert_array_equal(rows[LABEL], rows[list(FAILURE_MODES)].max(axis=1))


def test_before_the_onset_the_rules_hold_on_recorded_values(plant_b_stream):
    rows = pd.concat(plant_b_stream[:4], ignore_index=True)
    hdf = ((rows["process_temperature_k"] - rows["air_temperature_k"]) < 8.6) & (rows["rotational_speed_rpm"] < 1380)
    np.testing.assert_array_equal(rows["hdf"], hdf.astype(int))


def test_product_mix_change_draws_the_new_mix_from_its_onset():
    scenario = SCENARIOS["plant_c-product-mix"]
    (drift,) = scenario
    frames = stream("plant_c", 7, scenario)
    before = pd.concat(frames[: drift.onset_batch - 1])["type"].value_counts(normalize=True)
    after = pd.concat(frames[drift.onset_batch - 1 :])["type"].value_counts(normalize=True)
    for kind, old, new in zip("LMH", SITES["plant_c"].product_mix, drift.product_mix, strict=True):
        assert before[kind] == pytest.approx(old, abs=0.04)
        assert after[kind] == pytest.approx(new, abs=0.04)
    rows = pd.concat(frames, ignore_index=True)  # a product-mix change keeps every rule on recorded values
    hdf = ((rows["process_temperature_k"] - rows["air_temperature_k"]) < 8.6) & (rows["rotational_speed_rpm"] < 1380)
    np.testing.assert_array_equal(rows["hdf"], hdf.astype(int))


def test_a_drift_of_another_site_is_ignored():
    a, _ = generate_batch(SITES["plant_a"], 6, drifts=DRIFT_SCHEDULE)
    b, _ = generate_batch(SITES["plant_a"], 6, drifts=())
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_the_environment_chooses_a_schedule_file(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"schedule{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"drifts": [{"site": "plant_a", "kind": "sensor_offset", "onset_batch": 2,
                                                "offset_k": -0.7}]}))
    else:
        path.write_text('[[drifts]]\nsite = "plant_a"\nkind = "sensor_offset"\nonset_batch = 2\noffset_k = -0.7\n')
    monkeypatch.setenv(DRIFT_SCHEDULE_ENV, str(path))
    assert drift_schedule() == (ScheduledDrift("plant_a", 2, "sensor_offset", offset_k=-0.7),)
    # The store's generator follows it: plant_a's second batch reads 0.7 K low, plant_b stays clean.
    store = tmp_path / "plant_a"
    append_generated_batch(store, SITES["plant_a"], rows=200)
    append_generated_batch(store, SITES["plant_a"], rows=200)
    stored = load_site_data(store, "plant_a")
    clean = pd.concat(stream("plant_a", 2, drifts=(), rows=200), ignore_index=True)
    shift = (stored["process_temperature_k"] - clean["process_temperature_k"]).to_numpy()
    np.testing.assert_allclose(shift[:200], 0.0, atol=1e-9)
    np.testing.assert_allclose(shift[200:], -0.7, atol=1e-9)
    assert drifts_for("plant_b") == ()


def test_none_and_scenario_names(monkeypatch):
    monkeypatch.setenv(DRIFT_SCHEDULE_ENV, "none")
    assert drift_schedule() == ()
    frame, _ = generate_batch(SITES["plant_b"], 6, rows=50)
    clean, _ = generate_batch(SITES["plant_b"], 6, rows=50, drifts=())
    pd.testing.assert_frame_equal(frame, clean)
    monkeypatch.setenv(DRIFT_SCHEDULE_ENV, "plant_c-product-mix")
    assert drift_schedule() == SCENARIOS["plant_c-product-mix"]


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ({"drifts": [{"site": "plant_x", "kind": "sensor_offset", "onset_batch": 2, "offset_k": 1.0}]},
         ["drifts[0]", "'site'", "plant_x"]),
        ({"drifts": [{"site": "plant_a", "kind": "heatwave", "onset_batch": 2}]}, ["drifts[0]", "heatwave"]),
        ({"drifts": [{"site": "plant_a", "kind": "sensor_offset", "offset_k": 1.0}]}, ["drifts[0]", "onset_batch"]),
        ({"drifts": [{"site": "plant_a", "kind": "sensor_offset", "onset_batch": 0, "offset_k": 1.0}]},
         ["onset_batch", ">= 1"]),
        ({"drifts": [{"site": "plant_a", "kind": "sensor_offset", "onset_batch": 3, "offset_k": 0.25}]},
         ["offset_k", "0.1"]),
        ({"drifts": [{"site": "plant_a", "kind": "product_mix", "onset_batch": 3, "product_mix": [1, -1, 0]}]},
         ["product_mix"]),
        ({"drifts": [{"site": "plant_a", "kind": "product_mix", "onset_batch": 3, "colour": "red"}]},
         ["unknown field", "colour"]),
        ({"drifts": [{"site": "plant_a", "kind": "product_mix", "onset_batch": 3, "product_mix": [1, 1, 1],
                      "hdf_gap_k": 9.0}]}, ["hdf_gap_k", "do not apply", "product_mix"]),
        ({"drifts": [{"site": "plant_a", "kind": "rule_change", "onset_batch": 3}]}, ["rule_change needs"]),
        ({"drifts": [{"site": "plant_a", "kind": "rule_change", "onset_batch": 3, "pwf_min_w": 9500}]},
         ["power window", "empty"]),
        ({"drifts": [{"site": "plant_a", "kind": "rule_change", "onset_batch": 3, "osf_limits": [1, 2]}]},
         ["osf_limits", "three"]),
        ({"drifts": [{"site": "plant_a", "kind": "label_loss", "onset_batch": 3, "share": 1.5}]}, ["share"]),
        ({"drifts": [{"site": "plant_a", "kind": "covariate_shift", "onset_batch": 3}]}, ["non-zero shift"]),
        ({"drifts": [{"site": "plant_a", "kind": "sensor_offset", "onset_batch": 3, "offset_k": 1.0,
                      "column": "torque_nm"}]}, ["column", "air_temperature_k"]),
        ({"drifts": [{"site": "plant_a", "kind": "label_loss", "onset_batch": 3, "ramp_batches": 0}]},
         ["ramp_batches", ">= 1"]),
        ({"something": []}, ["'drifts'"]),
    ],
)
def test_a_bad_schedule_names_the_file_the_entry_and_the_field(tmp_path, document, words):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(DriftScheduleError) as err:
        load_drift_schedule(path)
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message, message


def test_unreadable_or_missing_schedules_are_named(tmp_path, monkeypatch):
    broken = tmp_path / "broken.toml"
    broken.write_text("[[drifts]\nsite =")
    with pytest.raises(DriftScheduleError, match="not valid TOML"):
        load_drift_schedule(broken)
    monkeypatch.setenv(DRIFT_SCHEDULE_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(DriftScheduleError, match=DRIFT_SCHEDULE_ENV):
        drift_schedule()


# --- the scenario kinds: what each one changes, and what it leaves alone -------------------------------------------


def _rules_hold(rows: pd.DataFrame, gap: float = 8.6, speed: float = 1380.0, pwf=(3500.0, 9000.0),
                osf=(11_000.0, 12_000.0, 13_000.0)) -> None:
    """Every failure mode is the rule recomputed from the recorded columns (with these parameters)."""
    air, process, rpm = rows["air_temperature_k"], rows["process_temperature_k"], rows["rotational_speed_rpm"]
    power = rows["torque_nm"] * rpm * 2 * np.pi / 60
    limits = rows["type"].map(dict(zip("LMH", osf, strict=True)))
    np.testing.assert_array_equal(rows["hdf"], (((process - air) < gap) & (rpm < speed)).astype(int))
    np.testing.assert_array_equal(rows["pwf"], ((power < pwf[0]) | (power > pwf[1])).astype(int))
    np.testing.assert_array_equal(rows["osf"], (rows["tool_wear_min"] * rows["torque_nm"] > limits).astype(int))
    np.testing.assert_array_equal(rows[LABEL], rows[list(FAILURE_MODES)].max(axis=1))


INPUTS = ["udi", "product_id", "type", "air_temperature_k", "process_temperature_k", "rotational_speed_rpm",
          "torque_nm", "tool_wear_min"]


def test_a_rule_change_changes_the_labels_and_nothing_else():
    """Concept drift with P(x) unchanged: the same inputs as the clean stream, failures by the new rule."""
    drift = ScheduledDrift("plant_a", 3, "rule_change", hdf_gap_k=9.3, pwf_min_w=4_000.0,
                           osf_limits=(9_900.0, 10_800.0, 11_700.0))
    drifted, clean = stream("plant_a", 5, (drift,), rows=800), stream("plant_a", 5, (), rows=800)
    for index, (a, b) in enumerate(zip(drifted, clean, strict=True), start=1):
        pd.testing.assert_frame_equal(a[INPUTS], b[INPUTS])
        if index < 3:
            pd.testing.assert_frame_equal(a, b)
    after = pd.concat(drifted[2:], ignore_index=True)
    _rules_hold(after, gap=9.3, pwf=(4_000.0, 9_000.0), osf=(9_900.0, 10_800.0, 11_700.0))
    before = pd.concat(clean[2:], ignore_index=True)
    assert after[LABEL].sum() > before[LABEL].sum() + 30  # a lower bar for three modes: many more failures


def test_a_covariate_shift_moves_the_inputs_and_keeps_every_rule():
    """Covariate shift with P(y | x) unchanged: slower drives, a warmer hall; the rules hold on what is recorded."""
    drift = ScheduledDrift("plant_b", 3, "covariate_shift", speed_rpm=-80.0, ambient_k=2.0)
    drifted, clean = stream("plant_b", 6, (drift,), rows=800), stream("plant_b", 6, (), rows=800)
    after, before = pd.concat(drifted[2:], ignore_index=True), pd.concat(clean[2:], ignore_index=True)
    _rules_hold(after)
    shift = (after["rotational_speed_rpm"] - before["rotational_speed_rpm"]).mean()
    assert shift == pytest.approx(-80.0, abs=1.0)
    assert (after["air_temperature_k"] - before["air_temperature_k"]).mean() == pytest.approx(2.0, abs=0.05)
    pd.testing.assert_frame_equal(drifted[0], clean[0])


def test_a_gradual_change_grows_batch_by_batch_to_its_target():
    drift = ScheduledDrift("plant_a", 3, "rule_change", hdf_gap_k=9.6, ramp_batches=4)
    assert [drift.weight(b) for b in (2, 3, 4, 5, 6, 9)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    frames = stream("plant_a", 7, (drift,), rows=600)
    for index, frame in enumerate(frames, start=1):
        _rules_hold(frame, gap=8.6 + drift.weight(index) * 1.0)


def test_label_loss_drops_failure_rows_and_only_those():
    drift = ScheduledDrift("plant_c", 2, "label_loss", share=1.0)
    drifted, clean = stream("plant_c", 3, (drift,), rows=900), stream("plant_c", 3, (), rows=900)
    pd.testing.assert_frame_equal(drifted[0], clean[0])
    for a, b in zip(drifted[1:], clean[1:], strict=True):
        assert a[LABEL].sum() == 0 and b[LABEL].sum() > 0
        kept = b[b[LABEL] == 0].reset_index(drop=True)
        pd.testing.assert_frame_equal(a, kept)  # the other rows arrive untouched, UDIs with gaps
    partial = stream("plant_c", 6, (ScheduledDrift("plant_c", 2, "label_loss", share=0.5),), rows=900)
    whole = stream("plant_c", 6, (), rows=900)
    lost = sum(b[LABEL].sum() - a[LABEL].sum() for a, b in zip(partial[1:], whole[1:], strict=True))
    assert 0.3 < lost / sum(b[LABEL].sum() for b in whole[1:]) < 0.7


def test_an_air_sensor_offset_shifts_the_recorded_air_temperature_only():
    drift = ScheduledDrift("plant_a", 2, "sensor_offset", offset_k=-1.0, column="air_temperature_k")
    drifted, clean = stream("plant_a", 3, (drift,), rows=500), stream("plant_a", 3, (), rows=500)
    others = [c for c in drifted[2].columns if c != "air_temperature_k"]
    pd.testing.assert_frame_equal(drifted[2][others], clean[2][others])
    np.testing.assert_allclose(drifted[2]["air_temperature_k"] - clean[2]["air_temperature_k"], -1.0, atol=1e-9)


def test_every_named_scenario_is_valid_and_names_a_registered_site():
    for name, drifts in SCENARIOS.items():
        for drift in drifts:
            assert drift.site in SITES, name
            frame, _ = generate_batch(SITES[drift.site], drift.onset_batch, rows=50, drifts=drifts)
            assert len(frame) <= 50
