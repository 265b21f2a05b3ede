"""The generator follows the AI4I 2020 rules on every stored row, continues across batches, and differs per site."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mledge.onsite.generator import OSF_LIMIT, WEAR_PER_PROCESS, ToolState, generate_batch
from mledge.onsite.profiles import PROFILES as SITES
from mledge.onsite.schema import COLUMNS, FAILURE_MODES, LABEL

SITE_NAMES = sorted(SITES)


def _all_rows(stored_batches, site: str) -> pd.DataFrame:
    return pd.concat(stored_batches[site], ignore_index=True)


def _wear_step(frame: pd.DataFrame) -> np.ndarray:
    return frame["type"].map(WEAR_PER_PROCESS).to_numpy(float)


def _tool_changes(frame: pd.DataFrame) -> np.ndarray:
    """Positions i whose process i-1 ended its tool's life (the next process starts on a fresh tool)."""
    wear = frame["tool_wear_min"].to_numpy(float)
    return np.flatnonzero(wear[1:] != wear[:-1] + _wear_step(frame)[1:]) + 1


def test_stored_batches_have_the_schema(stored_batches):
    for site, batches in stored_batches.items():
        assert len(batches) == 3, site
        for frame in batches:
            assert tuple(frame.columns) == COLUMNS
            assert len(frame) == 1000
            assert not frame.isna().any().any()
            assert set(frame["type"]) <= {"L", "M", "H"}
            assert (frame["torque_nm"] >= 0).all()
            # Product ids carry the product's quality variant, as in AI4I ("L47181").
            assert (frame["product_id"].str[0] == frame["type"]).all()
            assert frame["product_id"].str.fullmatch(r"[LMH]\d{5}").all()


@pytest.mark.parametrize("site", SITE_NAMES)
def test_failure_modes_follow_the_rules_recomputed_from_stored_columns(stored_batches, site):
    rows = _all_rows(stored_batches, site)
    air, process = rows["air_temperature_k"], rows["process_temperature_k"]
    speed, torque, wear = rows["rotational_speed_rpm"], rows["torque_nm"], rows["tool_wear_min"]

    hdf = ((process - air) < 8.6) & (speed < 1380)
    power_w = torque * speed * 2 * np.pi / 60
    pwf = (power_w < 3500) | (power_w > 9000)
    osf = wear * torque > rows["type"].map(OSF_LIMIT)

    np.testing.assert_array_equal(rows["hdf"].to_numpy(), hdf.astype(int).to_numpy())
    np.testing.assert_array_equal(rows["pwf"].to_numpy(), pwf.astype(int).to_numpy())
    np.testing.assert_array_equal(rows["osf"].to_numpy(), osf.astype(int).to_numpy())
    for mode in (*FAILURE_MODES, LABEL):
        assert set(rows[mode].unique()) <= {0, 1}, mode


@pytest.mark.parametrize("site", SITE_NAMES)
def test_machine_failure_is_the_or_of_the_five_modes(stored_batches, site):
    rows = _all_rows(stored_batches, site)
    any_mode = rows[list(FAILURE_MODES)].any(axis=1).astype(int)
    np.testing.assert_array_equal(rows[LABEL].to_numpy(), any_mode.to_numpy())
    # Not vacuous: the site has failures.
    assert rows[LABEL].sum() > 0


def test_the_physical_failure_modes_all_occur(stored_batches):
    for site in SITE_NAMES:
        rows = _all_rows(stored_batches, site)
        for mode in ("hdf", "pwf"):
            assert rows[mode].sum() > 0, (site, mode)
    for site in ("plant_a", "plant_b"):  # the sites that keep the AI4I tool policy
        rows = _all_rows(stored_batches, site)
        assert rows["twf"].sum() > 0, site
        assert rows["osf"].sum() > 0, site
    # plant_c's preventive tool change keeps wear low, and overstrain with it.
    assert _all_rows(stored_batches, "plant_c")["osf"].mean() < _all_rows(stored_batches, "plant_a")["osf"].mean()


def test_random_failures_are_rare(stored_batches):
    rows = pd.concat([_all_rows(stored_batches, s) for s in SITE_NAMES], ignore_index=True)
    # 0.1 % per process: 9000 processes give about 9; far fewer than 0.5 % in any case.
    assert rows["rnf"].mean() < 0.005


@pytest.mark.parametrize("site", SITE_NAMES)
def test_tool_wear_grows_by_the_quality_variant_of_each_process(stored_batches, site):
    """H/M/L add 5/3/2 minutes per process, across batch boundaries; a fresh tool starts from 0."""
    rows = _all_rows(stored_batches, site)
    wear, step = rows["tool_wear_min"].to_numpy(float), _wear_step(rows)
    changes = _tool_changes(rows)
    assert len(changes) > 0
    # After a tool change, the process's wear is its own wear on a new tool.
    np.testing.assert_array_equal(wear[changes], step[changes])
    steady = np.setdiff1d(np.arange(1, len(rows)), changes)
    np.testing.assert_array_equal(wear[steady], wear[steady - 1] + step[steady])
    # The very first process of the site starts on a new tool as well.
    assert wear[0] == step[0]


@pytest.mark.parametrize("site", ["plant_a", "plant_b"])
def test_tools_are_changed_only_between_200_and_240_min_plus_one_process(stored_batches, site):
    rows = _all_rows(stored_batches, site)
    wear = rows["tool_wear_min"].to_numpy(float)
    ends = _tool_changes(rows) - 1  # the last process of each tool
    assert len(ends) > 0
    assert (wear[ends] >= 200).all()
    # The limit is drawn in [200, 240]; the process that reaches it started below it.
    assert (wear[ends] - _wear_step(rows)[ends] < 240).all()


@pytest.mark.parametrize("site", ["plant_a", "plant_b"])
def test_twf_only_where_a_tool_reached_its_limit(stored_batches, site):
    rows = _all_rows(stored_batches, site)
    twf = np.flatnonzero(rows["twf"].to_numpy() == 1)
    assert len(twf) > 0
    wear = rows["tool_wear_min"].to_numpy(float)
    assert (wear[twf] >= 200).all()
    assert (wear[twf] - _wear_step(rows)[twf] < 240).all()
    # The failed tool is replaced: the next process runs on a new one.
    ends = set(_tool_changes(rows) - 1)
    assert all(i in ends for i in twf if i + 1 < len(rows))


def test_twf_tool_wear_stays_within_200_to_240_min():
    state, frames = None, []
    for index in range(1, 11):  # plant_a's batches 1-10 (batch 4 has a TWF at 241 min)
        frame, state = generate_batch(SITES["plant_a"], index, state)
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    wear = rows.loc[rows["twf"] == 1, "tool_wear_min"]
    assert len(wear) > 0
    assert wear.between(200, 240).all(), sorted(wear[wear > 240])


def test_preventive_tool_change_caps_wear_and_prevents_twf(stored_batches):
    profile = SITES["plant_c"]
    assert profile.tool_replace_at_min is not None
    rows = _all_rows(stored_batches, "plant_c")
    limit = profile.tool_replace_at_min
    assert rows["tool_wear_min"].max() < limit + max(WEAR_PER_PROCESS.values())
    assert rows["twf"].sum() == 0
    wear = rows["tool_wear_min"].to_numpy(float)
    ends = _tool_changes(rows) - 1
    assert len(ends) > 0
    # Each tool is changed at the first process that reached the preventive limit, not earlier.
    assert (wear[ends] >= limit).all()
    assert (wear[ends] - _wear_step(rows)[ends] < limit).all()


@pytest.mark.parametrize("site", SITE_NAMES)
def test_same_profile_batch_and_state_give_the_same_frame(site):
    profile = SITES[site]
    state = ToolState(next_udi=501, tool_wear_min=150.0, tool_limit_min=210.0)
    first, first_state = generate_batch(profile, 2, state, rows=300)
    again, again_state = generate_batch(profile, 2, state, rows=300)
    pd.testing.assert_frame_equal(first, again)
    assert first_state == again_state
    # The caller's state is not consumed.
    assert state == ToolState(next_udi=501, tool_wear_min=150.0, tool_limit_min=210.0)
    other, _ = generate_batch(profile, 3, state, rows=300)
    assert not other[["air_temperature_k", "torque_nm"]].equals(first[["air_temperature_k", "torque_nm"]])


def test_different_sites_draw_different_data():
    a, _ = generate_batch(SITES["plant_a"], 1, rows=200)
    b, _ = generate_batch(SITES["plant_b"], 1, rows=200)
    assert not np.allclose(a["torque_nm"].to_numpy(), b["torque_nm"].to_numpy())


def test_store_batches_equal_a_chain_of_generate_batch_calls(stored_batches):
    state = None
    for index, stored in enumerate(stored_batches["plant_b"], start=1):
        frame, state = generate_batch(SITES["plant_b"], index, state, rows=1000)
        pd.testing.assert_frame_equal(stored, frame, check_dtype=False)


@pytest.mark.parametrize("site", SITE_NAMES)
def test_tool_wear_and_udis_carry_across_batches(site):
    profile = SITES[site]
    first, state1 = generate_batch(profile, 1, None, rows=700)
    second, state2 = generate_batch(profile, 2, state1, rows=700)

    assert first["udi"].tolist() == list(range(1, 701))
    assert second["udi"].tolist() == list(range(701, 1401))
    assert state1.next_udi == 701 and state2.next_udi == 1401

    last_wear = first["tool_wear_min"].iloc[-1]
    last_changed_tool = state1.tool_wear_min == 0.0
    assert last_changed_tool or state1.tool_wear_min == last_wear
    step = WEAR_PER_PROCESS[second["type"].iloc[0]]
    assert second["tool_wear_min"].iloc[0] == state1.tool_wear_min + step

    # Starting batch 2 from a fresh state is a different history: the carried wear matters.
    fresh, _ = generate_batch(profile, 2, None, rows=700)
    assert fresh["udi"].iloc[0] == 1
    assert fresh["tool_wear_min"].iloc[0] == step


def test_a_carried_worn_tool_reaches_its_limit_in_the_next_batch():
    profile = SITES["plant_a"]
    state = ToolState(next_udi=10, tool_wear_min=219.0, tool_limit_min=220.0)
    frame, after = generate_batch(profile, 5, state, rows=50)
    assert frame["tool_wear_min"].iloc[0] == 219.0 + WEAR_PER_PROCESS[frame["type"].iloc[0]]
    # The first process passes the limit: the tool is replaced or fails there, and a new limit is drawn.
    assert frame["tool_wear_min"].iloc[1] == WEAR_PER_PROCESS[frame["type"].iloc[1]]
    assert 200.0 <= after.tool_limit_min <= 240.0
    assert after.next_udi == 60


@pytest.mark.parametrize(
    ("site", "expected"),
    [(name, profile.product_mix) for name, profile in SITES.items()],
)
def test_product_mix_follows_the_site_profile(stored_batches, site, expected):
    rows = _all_rows(stored_batches, site)
    shares = rows["type"].value_counts(normalize=True)
    for kind, share in zip(("L", "M", "H"), expected, strict=True):
        assert shares.get(kind, 0.0) == pytest.approx(share, abs=0.04), (site, kind)


def test_sites_are_not_iid(stored_batches):
    rows = {site: _all_rows(stored_batches, site) for site in SITE_NAMES}
    low = {site: (r["type"] == "L").mean() for site, r in rows.items()}
    assert low["plant_b"] > low["plant_a"] + 0.1 > low["plant_c"] + 0.2
    # Ambient temperature: plant_b's hall is warmer, plant_c's cooler (offsets +3 K and -2 K). The temperatures
    # are random walks: the mean of n rows of a walk with relaxation time T has SD ~ sd * sqrt(2 T / n); 4 SD.
    def tolerance(sd: float, site: str) -> float:
        return 4 * sd * math.sqrt(2 * SITES[site].walk_rows / len(rows[site]))

    air = {site: r["air_temperature_k"].mean() for site, r in rows.items()}
    for site in SITE_NAMES:
        assert air[site] == pytest.approx(300.0 + SITES[site].ambient_offset_k, abs=tolerance(2.0, site)), site
    assert air["plant_b"] > air["plant_a"] > air["plant_c"]
    # Cooling: plant_b's narrower process/air gap gives it the most heat-dissipation failures.
    gap = {site: (r["process_temperature_k"] - r["air_temperature_k"]).mean() for site, r in rows.items()}
    assert gap["plant_b"] == pytest.approx(10.0 + SITES["plant_b"].cooling_offset_k, abs=tolerance(1.0, "plant_b"))
    hdf = {site: r["hdf"].mean() for site, r in rows.items()}
    assert hdf["plant_b"] > max(hdf["plant_a"], hdf["plant_c"])
    # Calibration: mean torque follows each plant's offset.
    for site in SITE_NAMES:
        assert rows[site]["torque_nm"].mean() == pytest.approx(40.0 + SITES[site].torque_offset_nm, abs=0.6), site


def test_temperatures_are_random_walks_carried_across_batches():
    """AI4I's walks, continued: every batch starts where the last one stopped; over the stream the spreads are the
    paper's (air SD 2 K around 300 K + the site's offset, process = air + 10 K + a walk of SD 1 K), while single
    batches are not pinned to them."""
    profile = SITES["plant_a"]
    state, frames = None, []
    for index in range(1, 41):
        frame, state = generate_batch(profile, index, state, rows=500)
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    air, gap = rows["air_temperature_k"].to_numpy(), (rows["process_temperature_k"] - rows["air_temperature_k"])
    assert air.mean() == pytest.approx(300.0 + profile.ambient_offset_k, abs=0.6)
    assert air.std() == pytest.approx(2.0, rel=0.25)
    assert gap.mean() == pytest.approx(10.0 + profile.cooling_offset_k, abs=0.3)
    assert gap.std() == pytest.approx(1.0, rel=0.25)
    # Not pinned: batch means wander by about a kelvin, and a batch's own spread is not 2 K every time.
    means = np.array([f["air_temperature_k"].mean() for f in frames])
    spreads = np.array([f["air_temperature_k"].std() for f in frames])
    assert means.std() > 0.4 and spreads.std() > 0.1
    # A walk: neighbours are close, across the batch boundaries as much as within a batch.
    steps = np.abs(np.diff(air))
    boundaries = np.cumsum([len(f) for f in frames])[:-1]
    assert np.corrcoef(air[:-1], air[1:])[0, 1] > 0.9
    assert np.abs(air[boundaries] - air[boundaries - 1]).mean() < 3 * steps.mean()
    assert state.air_walk_k == pytest.approx(air[-1] - 300.0 - profile.ambient_offset_k, abs=0.051)
    # Starting the same batch from a fresh state draws another start: the state is what carries the walk.
    again, _ = generate_batch(profile, 41, state, rows=10)
    fresh, _ = generate_batch(profile, 41, None, rows=10)
    assert abs(again["air_temperature_k"].iloc[0] - air[-1]) < 1.0
    assert not np.allclose(again["air_temperature_k"], fresh["air_temperature_k"])


def test_the_walk_relaxes_on_the_profiles_time_scale():
    """A mean-reverting walk: the lag-k autocorrelation falls like exp(-k / walk_rows)."""
    from mledge.onsite.generator import mean_reverting_walk

    rng = np.random.default_rng(5)
    walk = mean_reverting_walk(rng, 200_000, 2.0, 100.0, None)
    assert walk.std() == pytest.approx(2.0, rel=0.1)
    for lag in (10, 100):
        rho = np.corrcoef(walk[:-lag], walk[lag:])[0, 1]
        assert rho == pytest.approx(np.exp(-lag / 100.0), abs=0.06)
    assert mean_reverting_walk(rng, 0, 2.0, 100.0, 1.0).size == 0


def test_speed_falls_with_torque(stored_batches):
    for site in SITE_NAMES:
        for frame in stored_batches[site]:
            assert np.corrcoef(frame["torque_nm"], frame["rotational_speed_rpm"])[0, 1] < -0.8


@pytest.mark.parametrize("site", SITE_NAMES)
def test_failure_rate_is_plausible(stored_batches, site):
    rate = _all_rows(stored_batches, site)[LABEL].mean()
    assert 0.01 <= rate <= 0.10
