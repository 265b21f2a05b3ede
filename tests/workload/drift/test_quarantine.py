"""Collection: each incoming file is accepted as the next batch or quarantined with its reason; nothing is lost."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest
from drift_streams import stream

from mledge.onsite.profiles import PROFILES as SITES
from mledge.onsite.schema import COLUMNS
from mledge.onsite.store import (
    REASON_SUFFIX,
    accept_incoming,
    batch_paths,
    collect_batch,
    disclosed,
    incoming_paths,
    load_site_data,
    quarantined,
)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _contents(store: Path) -> dict[str, list[str]]:
    """Digests of every data file per folder (reason files aside)."""
    return {
        folder: sorted(_digest(p) for p in (store / folder).glob("*") if p.is_file() and REASON_SUFFIX not in p.name)
        for folder in ("incoming", "batches", "quarantine")
        if (store / folder).exists()
    }


def _drop(store: Path, name: str, content: bytes, mtime: int | None = None) -> Path:
    path = store / "incoming" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))
    return path


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


@pytest.fixture(scope="module")
def good() -> pd.DataFrame:
    return stream("plant_a", 1, rows=60)[0]


def _with(frame: pd.DataFrame, column: str, row: int, value) -> pd.DataFrame:
    changed = frame.copy()
    changed[column] = changed[column].astype(object)
    changed.loc[row, column] = value
    return changed


BAD = {
    "missing column": (lambda f: f.drop(columns=["torque_nm"]), ["missing columns", "torque_nm"]),
    "extra column": (lambda f: f.assign(operator="bob"), ["unexpected columns", "operator"]),
    "missing value": (lambda f: _with(f, "air_temperature_k", 4, None), ["missing values", "air_temperature_k"]),
    "text in a number": (lambda f: _with(f, "torque_nm", 3, "forty"), ["non-numeric", "torque_nm"]),
    "fraction in a count": (lambda f: _with(f, "tool_wear_min", 2, 12.5), ["non-integer", "tool_wear_min"]),
    "unknown product type": (lambda f: _with(f, "type", 1, "X"), ["unknown product types", "'X'"]),
    "label not 0/1": (lambda f: _with(f, "machine_failure", 5, 3), ["machine_failure", "0 or 1"]),
    "failure mode not 0/1": (lambda f: _with(f, "osf", 5, 2), ["failure modes", "osf"]),
    "no rows": (lambda f: f.iloc[:0], ["no rows"]),
    "infinite reading": (
        lambda f: _with(_with(f, "torque_nm", 3, float("inf")), "torque_nm", 8, float("-inf")),
        ["non-finite values in torque_nm", "2 row(s)", "CSV lines [5, 10]"],
    ),
    "number beyond float range": (
        lambda f: _with(f, "process_temperature_k", 6, "1e999"),
        ["non-finite values in process_temperature_k", "1 row(s)", "CSV lines [8]"],
    ),
    "temperatures in Celsius": (
        lambda f: f.assign(air_temperature_k=(f["air_temperature_k"] - 273.15).round(1)),
        ["out-of-range values in air_temperature_k", "250 to 350 K", "60 row(s)", "CSV lines [2, 3, 4, 5, 6]"],
    ),
    "negative speed": (
        lambda f: _with(f, "rotational_speed_rpm", 2, -1500),
        ["out-of-range values in rotational_speed_rpm", "1 row(s)", "CSV lines [4]"],
    ),
    "absurd torque": (
        lambda f: _with(f, "torque_nm", 9, 4000.0),
        ["out-of-range values in torque_nm", "0 to 200 Nm", "CSV lines [11]"],
    ),
    "absurd tool wear": (
        lambda f: _with(f, "tool_wear_min", 0, 99999),
        ["out-of-range values in tool_wear_min", "CSV lines [2]"],
    ),
}
# Cell values each case puts in a file: the site's reason file shows them, the reported reason must not.
SHOWN_VALUES = {"negative speed": ["-1500"], "absurd torque": ["4000"], "text in a number": ['"forty"']}

UNREADABLE = {
    "empty file": b"",
    "binary": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("case", sorted(BAD) + sorted(UNREADABLE))
def test_each_bad_kind_is_quarantined_with_a_reason_and_nothing_is_lost(tmp_path, good, case):
    store = tmp_path / "plant_a"
    if case in BAD:
        change, words = BAD[case]
        content = _csv(change(good))
    else:
        content, words = UNREADABLE[case], ["unreadable"]
    _drop(store, "ok-1.csv", _csv(good), mtime=1_000)
    bad = _drop(store, "export.csv", content, mtime=2_000)
    _drop(store, "ok-2.csv", _csv(good.assign(udi=good["udi"] + 60)), mtime=3_000)
    before = sorted(_digest(p) for p in incoming_paths(store))

    result = accept_incoming(store, "plant_a")

    assert [a["file"] for a in result["accepted"]] == ["ok-1.csv", "ok-2.csv"]
    assert [a["batch"] for a in result["accepted"]] == ["batch-000001.csv", "batch-000002.csv"]
    (item,) = result["quarantined"]
    assert item["file"] == "export.csv"
    for word in words:
        assert word in item["reason"], (case, item["reason"])
    moved = store / "quarantine" / "export.csv"
    assert moved.read_bytes() == content  # the file itself, unchanged
    reason = json.loads((store / "quarantine" / f"export.csv{REASON_SUFFIX}").read_text())
    assert reason["site"] == "plant_a" and reason["file"] == "export.csv"
    # The site's own reason file names the offending values; what is reported beyond the site never does.
    assert disclosed(reason["problem"]) == item["reason"]
    for value in SHOWN_VALUES.get(case, []):
        assert value in reason["problem"] and value not in item["reason"], (case, reason["problem"], item["reason"])
    assert reason["time"].endswith("+00:00")
    assert not bad.exists() and incoming_paths(store) == []
    # Nothing lost: every incoming file is now a batch or in quarantine, byte for byte.
    after = _contents(store)
    assert sorted(after["batches"] + after["quarantine"]) == before
    assert len(load_site_data(store, "plant_a")) == 120
    assert [r["file"] for r in quarantined(store)] == ["export.csv"]


def test_missing_values_within_the_limit_split_the_file(tmp_path, good):
    store = tmp_path / "plant_b"
    frame = _with(_with(good, "torque_nm", 7, None), "machine_failure", 11, None)
    original = _drop(store, "with-gaps.csv", _csv(frame))
    content = original.read_bytes()

    strict = accept_incoming(store, "plant_b")  # default limit 0: the whole file is quarantined
    assert strict["accepted"] == [] and "exceed the limit of 0.0%" in strict["quarantined"][0]["reason"]

    store2 = tmp_path / "plant_c"
    _drop(store2, "with-gaps.csv", content)
    result = accept_incoming(store2, "plant_c", max_nan_share=0.05)
    (accepted,) = result["accepted"]
    assert accepted["rows"] == len(good) - 2
    kept = load_site_data(store2, "plant_c")
    assert sorted(kept["udi"]) == sorted(set(good["udi"]) - {good["udi"][7], good["udi"][11]})
    (held,) = result["quarantined"]
    assert "2 row(s) with missing values" in held["reason"]
    reason = json.loads(Path(held["reason_file"]).read_text())
    assert reason["accepted_as"] == "batch-000001.csv" and reason["held_back_lines"] == [9, 13]
    assert (store2 / "quarantine" / "with-gaps.csv").read_bytes() == content  # every row, as it came


def test_quarantine_never_overwrites_and_batch_numbers_continue(tmp_path, good):
    store = tmp_path / "plant_a"
    for round_ in range(2):
        _drop(store, "same-name.csv", b"garbage" + bytes([round_]))
        accept_incoming(store, "plant_a")
    names = sorted(p.name for p in (store / "quarantine").iterdir())
    assert names == sorted(["same-name.csv", f"same-name.csv{REASON_SUFFIX}", "same-name.1.csv",
                            f"same-name.1.csv{REASON_SUFFIX}"])
    assert (store / "quarantine" / "same-name.1.csv").read_bytes() == b"garbage\x01"

    (store / "batches").mkdir()
    (store / "batches" / "batch-000004.csv").write_bytes(_csv(good))  # a gap: numbering goes on after the last
    _drop(store, "next.csv", _csv(good.assign(udi=good["udi"] + 60)))
    assert accept_incoming(store, "plant_a")["accepted"][0]["batch"] == "batch-000005.csv"


def test_collect_generates_the_next_batch_through_incoming(tmp_path):
    store = tmp_path / "plant_b"
    results = [collect_batch(store, SITES["plant_b"], rows=80) for _ in range(3)]
    assert [r["accepted"][0]["batch"] for r in results] == [f"batch-00000{i}.csv" for i in (1, 2, 3)]
    assert all(r["quarantined"] == [] for r in results)
    assert incoming_paths(store) == [] and len(batch_paths(store)) == 3
    expected = pd.concat(stream("plant_b", 3, drifts=(), rows=80), ignore_index=True)
    pd.testing.assert_frame_equal(load_site_data(store, "plant_b"), expected, check_dtype=False)
    assert tuple(load_site_data(store, "plant_b").columns) == COLUMNS


def test_collect_takes_waiting_files_first(tmp_path, good):
    store = tmp_path / "plant_a"
    _drop(store, "site-export.csv", _csv(good))
    _drop(store, "broken.csv", b"\x00\x01")
    result = collect_batch(store, SITES["plant_a"], rows=50)
    assert [a["file"] for a in result["accepted"]] == ["site-export.csv", result["generated"]]
    assert [a["batch"] for a in result["accepted"]] == ["batch-000001.csv", "batch-000002.csv"]
    assert [q["file"] for q in result["quarantined"]] == ["broken.csv"]


def test_a_bad_limit_is_refused(tmp_path):
    with pytest.raises(ValueError, match="max_nan_share"):
        accept_incoming(tmp_path, "plant_a", max_nan_share=1.5)
