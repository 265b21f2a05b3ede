"""A site's store: append-only batches, validated reads that name site, file and problem, and never write."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from mledge.onsite.generator import ToolState, generate_batch
from mledge.onsite.profiles import PROFILES as SITES
from mledge.onsite.schema import COLUMNS
from mledge.onsite.store import (
    SiteDataError,
    append_generated_batch,
    batch_paths,
    is_held_out,
    load_site_data,
    site_dir,
)


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root with its bytes and modification time, but the parse cache (derived, disposable)."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).parts[0] != "cache"
    }


def test_site_dir_is_the_site_folder_under_the_data_root(tmp_path):
    assert site_dir(tmp_path, "plant_a") == tmp_path / "plant_a"


def test_batches_are_numbered_and_appended(tmp_path):
    store = tmp_path / "plant_a"
    paths = [append_generated_batch(store, SITES["plant_a"], rows=50) for _ in range(3)]
    assert [p.name for p in paths] == ["batch-000001.csv", "batch-000002.csv", "batch-000003.csv"]
    assert batch_paths(store) == paths
    assert all(p.parent == store / "batches" for p in paths)
    # No temporary files are left next to the accepted batches.
    assert sorted(p.name for p in (store / "batches").iterdir()) == [p.name for p in paths]

    frames = [pd.read_csv(p) for p in paths]
    assert [f["udi"].iloc[0] for f in frames] == [1, 51, 101]
    state = json.loads((store / "generator_state.json").read_text())
    assert state["next_udi"] == 151
    assert ToolState(**state).tool_wear_min >= 0


def test_appending_never_rewrites_earlier_batches(tmp_path):
    store = tmp_path / "plant_b"
    first = append_generated_batch(store, SITES["plant_b"], rows=40)
    before = first.read_bytes(), first.stat().st_mtime_ns
    append_generated_batch(store, SITES["plant_b"], rows=40)
    append_generated_batch(store, SITES["plant_b"], rows=40)
    assert (first.read_bytes(), first.stat().st_mtime_ns) == before


def test_appending_refuses_to_overwrite_an_existing_batch(tmp_path):
    store = tmp_path / "plant_a"
    append_generated_batch(store, SITES["plant_a"], rows=30)
    second = append_generated_batch(store, SITES["plant_a"], rows=30)
    (store / "batches" / "batch-000001.csv").unlink()  # now the next index is 2 again
    kept = _snapshot(store)
    with pytest.raises(FileExistsError, match="plant_a"):
        append_generated_batch(store, SITES["plant_a"], rows=30)
    assert second.exists()
    assert _snapshot(store) == kept


def test_store_continues_the_generator_state(tmp_path):
    store = tmp_path / "plant_c"
    for _ in range(2):
        append_generated_batch(store, SITES["plant_c"], rows=120)
    stored = load_site_data(store, "plant_c")
    first, state = generate_batch(SITES["plant_c"], 1, None, rows=120)
    second, _ = generate_batch(SITES["plant_c"], 2, state, rows=120)
    expected = pd.concat([first, second], ignore_index=True)
    pd.testing.assert_frame_equal(stored, expected, check_dtype=False)


def test_load_concatenates_all_batches_in_order(make_store):
    store = make_store("plant_a", batches=3, rows=200)
    frame = load_site_data(store, "plant_a")
    assert tuple(frame.columns) == COLUMNS
    assert frame["udi"].tolist() == list(range(1, 601))


@pytest.mark.parametrize("create_batches_dir", [False, True])
def test_loading_an_empty_store_names_the_site(tmp_path, create_batches_dir):
    store = tmp_path / "plant_b"
    if create_batches_dir:
        (store / "batches").mkdir(parents=True)
    with pytest.raises(SiteDataError) as err:
        load_site_data(store, "plant_b")
    assert err.value.site == "plant_b"
    assert "plant_b" in str(err.value)
    assert "empty" in str(err.value)


def _rewrite(path: Path, change) -> None:
    frame = pd.read_csv(path)
    change(frame)
    frame.to_csv(path, index=False)


def _set(column, row, value):
    def change(frame):
        if frame[column].dtype != object:
            frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value

    return change


MALFORMED = {
    "missing column": (lambda f: f.drop(columns=["torque_nm"], inplace=True), ["missing columns", "torque_nm"]),
    "extra column": (lambda f: f.insert(3, "operator", "bob"), ["unexpected columns", "operator"]),
    "missing value": (_set("air_temperature_k", 7, None), ["missing values", "air_temperature_k"]),
    "missing label": (_set("machine_failure", 3, None), ["missing values", "machine_failure"]),
    "non-numeric value": (_set("torque_nm", 5, "forty"), ["non-numeric", "torque_nm"]),
    "unknown product type": (_set("type", 9, "X"), ["unknown product types", "'X'"]),
    "label not 0/1": (_set("machine_failure", 2, 2), ["machine_failure", "0 or 1"]),
    "no rows": (lambda f: f.drop(index=f.index, inplace=True), ["no rows"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_batch_is_rejected_naming_site_file_and_problem(make_store, case):
    change, words = MALFORMED[case]
    store = make_store("plant_c", batches=3, rows=40)
    bad = batch_paths(store)[1]
    _rewrite(bad, change)
    kept = _snapshot(store)
    with pytest.raises(SiteDataError) as err:
        load_site_data(store, "plant_c")
    message = str(err.value)
    assert err.value.site == "plant_c" and "site plant_c" in message
    assert err.value.path == bad and str(bad) in message
    for word in words:
        assert word in message, (case, message)
    assert _snapshot(store) == kept


@pytest.mark.parametrize(
    ("case", "content", "words"),
    [
        ("empty file", b"", ["unreadable", "EmptyDataError"]),
        ("blank lines", b"\n\n", ["unreadable"]),
        ("binary", bytes(range(256)) * 8, ["unreadable", "UnicodeDecodeError"]),
        ("png", b"\x89PNG\r\n\x1a\n" + bytes(range(200)), ["unreadable"]),
        ("header only", (",".join(COLUMNS) + "\n").encode(), ["no rows"]),
        ("not a table", b"hello world\n", ["missing columns"]),
    ],
)
def test_an_unreadable_batch_is_rejected_naming_site_file_and_problem(make_store, case, content, words):
    store = make_store("plant_a", batches=2, rows=30)
    bad = store / "batches" / "batch-000003.csv"
    bad.write_bytes(content)
    kept = _snapshot(store)
    with pytest.raises(SiteDataError) as err:
        load_site_data(store, "plant_a")
    message = str(err.value)
    assert "site plant_a" in message and str(bad) in message and err.value.path == bad
    for word in words:
        assert word in message, (case, message)
    assert _snapshot(store) == kept


def test_the_first_bad_batch_is_named(make_store):
    store = make_store("plant_b", batches=3, rows=20)
    paths = batch_paths(store)
    for path in paths[1:]:
        _rewrite(path, _set("type", 0, "Z"))
    with pytest.raises(SiteDataError) as err:
        load_site_data(store, "plant_b")
    assert err.value.path == paths[1]


def test_loading_a_good_store_changes_nothing(make_store):
    store = make_store("plant_a", batches=2, rows=100)
    (store / "batches" / "notes.txt").write_text("not a batch")  # ignored: only batch-*.csv are batches
    before = _snapshot(store)
    listing = sorted(os.listdir(store))
    frame = load_site_data(store, "plant_a")
    assert len(frame) == 200
    assert _snapshot(store) == before
    assert sorted(os.listdir(store)) == sorted([*listing, "cache"])  # the only thing a read adds: parsed batches


def test_is_held_out_picks_every_fifth_udi():
    frame = pd.DataFrame({"udi": range(1, 23)})
    held = is_held_out(frame)
    assert held.dtype == bool
    assert frame.loc[held, "udi"].tolist() == [5, 10, 15, 20]


def test_held_out_rows_are_stable_across_batches(site_stores):
    frame = load_site_data(site_stores["plant_a"], "plant_a")
    held = is_held_out(frame)
    assert held.mean() == pytest.approx(0.2)
    # A batch read on its own marks the same rows.
    second = pd.read_csv(batch_paths(site_stores["plant_a"])[1])
    assert set(second.loc[is_held_out(second), "udi"]) == set(frame.loc[held & frame["udi"].isin(second["udi"]), "udi"])
