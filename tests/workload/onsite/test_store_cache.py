"""Batches are parsed and validated once per content: repeated reads load the validated frame from cache/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mledge.onsite import store as store_module
from mledge.onsite.drift_evaluation import load_batches
from mledge.onsite.store import CACHE, SiteDataError, batch_paths, cache_version, load_site_data, read_batch
from mledge.onsite.training import load_window


@pytest.fixture
def parses(monkeypatch) -> list[int]:
    """Counts every CSV parse the store does (the expensive step the cache saves, with validation after it)."""
    calls: list[int] = []
    real = store_module._parse

    def counted(data: bytes):
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(store_module, "_parse", counted)
    return calls


@pytest.fixture
def validations(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = store_module.validate_batch

    def counted(site, path, frame):
        calls.append(Path(path))
        return real(site, path, frame)

    monkeypatch.setattr(store_module, "validate_batch", counted)
    return calls


def _entries(store: Path) -> list[Path]:
    return sorted((store / CACHE).rglob("*.npz"))


def test_the_second_read_neither_parses_nor_validates(make_store, parses, validations):
    store = make_store("plant_a", batches=3, rows=200)
    first = load_site_data(store, "plant_a")
    assert len(parses) == 3 and len(validations) == 3 and len(_entries(store)) == 3
    again = load_site_data(store, "plant_a")
    assert len(parses) == 3 and len(validations) == 3
    pd.testing.assert_frame_equal(again, first, check_dtype=True, check_exact=True)


def test_a_cached_frame_equals_a_fresh_parse_exactly(make_store):
    store = make_store("plant_c", batches=1, rows=300)
    path = batch_paths(store)[0]
    read_batch("plant_c", path)  # fills the cache
    cached = read_batch("plant_c", path)
    fresh = pd.read_csv(path)
    pd.testing.assert_frame_equal(cached, fresh, check_dtype=True, check_exact=True)
    assert list(cached.dtypes) == list(fresh.dtypes)
    cached.loc[0, "torque_nm"] = -1.0  # the caller's copy: the next read is unaffected
    assert read_batch("plant_c", path).loc[0, "torque_nm"] == fresh.loc[0, "torque_nm"]


def test_a_changed_file_is_parsed_and_validated_again(make_store, parses):
    store = make_store("plant_b", batches=2, rows=50)
    path = batch_paths(store)[1]
    load_site_data(store, "plant_b")
    original = path.read_bytes()
    frame = pd.read_csv(path)
    frame.loc[3, "torque_nm"] = None  # corrupted after it was accepted (and cached)
    frame.to_csv(path, index=False)
    parses.clear()
    with pytest.raises(SiteDataError, match="missing values") as err:
        load_site_data(store, "plant_b")
    assert err.value.path == path and len(parses) == 1  # only the changed batch was parsed again
    with pytest.raises(SiteDataError):  # and a bad batch is never cached: it fails every time
        load_site_data(store, "plant_b")
    path.write_bytes(original)  # the original bytes again: their cached frame serves
    parses.clear()
    assert len(load_site_data(store, "plant_b")) == 100 and parses == []


def test_new_validation_rules_invalidate_the_cache(make_store, parses, monkeypatch):
    store = make_store("plant_a", batches=2, rows=40)
    load_site_data(store, "plant_a")
    old = _entries(store)
    monkeypatch.setattr(store_module, "VALIDATION_VERSION", store_module.VALIDATION_VERSION + 1)
    assert f"parsed-{cache_version()}" not in {p.parent.name for p in old}
    parses.clear()
    load_site_data(store, "plant_a")
    assert len(parses) == 2
    assert not any(p.exists() for p in old)  # frames validated by the old rules are gone
    assert len(_entries(store)) == 2


def test_a_tighter_range_rejects_a_batch_that_was_cached_under_the_old_one(make_store, monkeypatch):
    store = make_store("plant_a", batches=1, rows=40)
    load_site_data(store, "plant_a")
    ranges = {**store_module.SENSOR_RANGES, "torque_nm": (0.0, 1.0, "Nm")}
    monkeypatch.setattr(store_module, "SENSOR_RANGES", ranges)
    with pytest.raises(SiteDataError, match="out-of-range values in torque_nm"):
        load_site_data(store, "plant_a")


def test_a_damaged_cache_entry_is_ignored_and_rewritten(make_store, parses):
    store = make_store("plant_c", batches=1, rows=40)
    expected = load_site_data(store, "plant_c")
    (entry,) = _entries(store)
    entry.write_bytes(entry.read_bytes()[:100])
    parses.clear()
    pd.testing.assert_frame_equal(load_site_data(store, "plant_c"), expected)
    assert len(parses) == 1
    with np.load(entry, allow_pickle=False) as saved:  # rewritten whole, plain arrays only
        assert len(saved.files) == len(expected.columns) + 1


def test_a_cache_entry_of_other_content_is_not_served(make_store, parses):
    store = make_store("plant_a", batches=2, rows=40)
    load_site_data(store, "plant_a")
    first, second = (store / CACHE / f"parsed-{cache_version()}" / f"{store_module._sha256(p.read_bytes())}.npz"
                     for p in batch_paths(store))
    second.write_bytes(first.read_bytes())  # an entry under the wrong name (a copy gone wrong)
    parses.clear()
    frame = load_site_data(store, "plant_a")
    assert frame["udi"].tolist() == list(range(1, 81)) and len(parses) == 1


def test_the_training_and_drift_readers_use_the_cache(make_store, parses):
    store = make_store("plant_b", batches=3, rows=40)
    load_window(store, "plant_b")
    assert len(parses) == 3
    parses.clear()
    window, name = load_window(store, "plant_b", last=2)
    names = [p.stem for p in batch_paths(store)]
    frame = load_batches(store, "plant_b", names)
    assert parses == [] and name == "batch-000002:batch-000003" and len(window) == 80 and len(frame) == 120


def test_a_batch_outside_a_store_is_read_without_a_cache(tmp_path, make_store, parses):
    store = make_store("plant_a", batches=1, rows=20)
    loose = tmp_path / "loose.csv"
    loose.write_bytes(batch_paths(store)[0].read_bytes())
    read_batch("plant_a", loose)
    read_batch("plant_a", loose)
    assert len(parses) == 2 and not (tmp_path / CACHE).exists()
