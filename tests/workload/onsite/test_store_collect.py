"""collect is idempotent per run: a retried run finds the batch it made, and a crash at any step adds it once."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mledge.onsite import store as store_module
from mledge.onsite.profiles import PROFILES as SITES
from mledge.onsite.store import (
    ACCEPT_STEPS,
    COLLECT_STEPS,
    COLLECTIONS,
    batch_paths,
    collect_batch,
    incoming_paths,
    load_site_data,
    quarantined,
)

PROFILE = SITES["plant_b"]
ROWS = 60


class Crash(BaseException):
    pass


def _record_steps(monkeypatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(store_module, "_step", seen.append)
    return seen


def _crash_at(monkeypatch, n: int) -> None:
    seen: list[str] = []

    def step(name: str) -> None:
        seen.append(name)
        if len(seen) == n + 1:
            raise Crash(name)

    monkeypatch.setattr(store_module, "_step", step)


def _state(store: Path) -> dict:
    return {
        "batches": [p.read_bytes() for p in batch_paths(store)],
        "generator": json.loads((store / "generator_state.json").read_text()),
        "quarantine": quarantined(store),
        "incoming": incoming_paths(store),
        "claims": sorted(p.name for p in (store / "claims").iterdir()) if (store / "claims").exists() else [],
        "pending": sorted(p.name for p in (store / COLLECTIONS).glob("*.pending.json")),
    }


def test_a_retried_run_finds_its_batch_and_adds_none(tmp_path):
    store = tmp_path / "plant_b"
    first = collect_batch(store, PROFILE, rows=ROWS, run_id="scheduled__2026-05-01T10:00:00+00:00")
    before = _state(store)
    again = collect_batch(store, PROFILE, rows=ROWS, run_id="scheduled__2026-05-01T10:00:00+00:00")

    assert first["reused"] is False and again["reused"] is True
    assert again["generated"] == first["generated"]
    assert [(a["file"], a["batch"], a["rows"]) for a in again["accepted"]] == [
        (first["generated"], "batch-000001.csv", ROWS)
    ]
    assert _state(store) == before  # no batch, no file, no generator step added
    other = collect_batch(store, PROFILE, rows=ROWS, run_id="scheduled__2026-05-01T11:00:00+00:00")
    assert other["reused"] is False and [a["batch"] for a in other["accepted"]] == ["batch-000002.csv"]
    assert load_site_data(store, "plant_b")["udi"].tolist() == list(range(1, 2 * ROWS + 1))


def test_without_a_run_id_every_call_collects(tmp_path):
    store = tmp_path / "plant_b"
    for _ in range(2):
        assert collect_batch(store, PROFILE, rows=ROWS)["reused"] is False
    assert len(batch_paths(store)) == 2
    assert not list((store / COLLECTIONS).iterdir())  # nobody can ask for an anonymous run again: nothing kept


def test_a_retried_run_also_collects_what_arrived_since(tmp_path):
    store = tmp_path / "plant_b"
    collect_batch(store, PROFILE, rows=ROWS, run_id="r1")
    export = pd.read_csv(batch_paths(store)[0]).assign(udi=lambda f: f["udi"] + 10_000)
    (store / "incoming" / "site-export.csv").write_bytes(export.to_csv(index=False).encode())
    again = collect_batch(store, PROFILE, rows=ROWS, run_id="r1")
    assert [(a["file"], a["batch"]) for a in again["accepted"]] == [
        ("site-export.csv", "batch-000002.csv"), (again["generated"], "batch-000001.csv")
    ]


def test_a_retried_run_reports_the_quarantine_it_caused_again(tmp_path):
    store = tmp_path / "plant_b"
    first = collect_batch(store, PROFILE, rows=ROWS, run_id="r1", max_file_bytes=100)
    (item,) = first["quarantined"]
    assert item["file"] == first["generated"] and "size cap" in item["reason"]
    again = collect_batch(store, PROFILE, rows=ROWS, run_id="r1", max_file_bytes=100)
    assert again["reused"] is True and again["quarantined"] == [item] and again["accepted"] == []
    assert len(quarantined(store)) == 1  # the retry made no second file


def _reference(tmp_path: Path, monkeypatch, first_run: str | None) -> tuple[dict, list[str]]:
    store = tmp_path / "reference" / "plant_b"
    steps = _record_steps(monkeypatch)
    collect_batch(store, PROFILE, rows=ROWS, run_id=first_run)
    recorded = list(steps)
    collect_batch(store, PROFILE, rows=ROWS, run_id="second")
    return _state(store), recorded


def test_every_step_of_collection_is_met(tmp_path, monkeypatch):
    _, steps = _reference(tmp_path, monkeypatch, "first")
    assert steps == [
        "collect-planned", "collect-written", "collect-state-saved",
        "claim-opened", "claimed", "decided", "batch-placed", "ledgered",
        "collect-accepted",
    ]
    assert set(steps) == set(COLLECT_STEPS) | (set(ACCEPT_STEPS) - {"quarantine-placed", "reason-written"})


def test_a_run_that_crashed_at_any_step_adds_its_batch_once_when_retried(tmp_path, monkeypatch):
    reference, steps = _reference(tmp_path, monkeypatch, "first")
    for n, step in enumerate(steps):
        store = tmp_path / f"crash-{n}" / "plant_b"
        _crash_at(monkeypatch, n)
        with pytest.raises(Crash):
            collect_batch(store, PROFILE, rows=ROWS, run_id="first")
        _record_steps(monkeypatch)
        retried = collect_batch(store, PROFILE, rows=ROWS, run_id="first")
        assert [a["batch"] for a in retried["accepted"]] == ["batch-000001.csv"], (n, step)
        assert collect_batch(store, PROFILE, rows=ROWS, run_id="first")["reused"] is True
        collect_batch(store, PROFILE, rows=ROWS, run_id="second")
        assert _state(store) == reference, (n, step)


@pytest.mark.parametrize("step", COLLECT_STEPS)
def test_a_crashed_anonymous_collection_is_finished_or_undone_by_the_next_one(tmp_path, monkeypatch, step):
    reference, steps = _reference(tmp_path, monkeypatch, None)
    store = tmp_path / "crashed" / "plant_b"
    _crash_at(monkeypatch, steps.index(step))
    with pytest.raises(Crash):
        collect_batch(store, PROFILE, rows=ROWS)
    _record_steps(monkeypatch)
    collect_batch(store, PROFILE, rows=ROWS, run_id="second")
    state = _state(store)
    if step == "collect-planned":  # nothing was written: rolled back, the next run is batch 1
        assert len(state["batches"]) == 1 and state["batches"][0] == reference["batches"][0]
        assert state["pending"] == [] and state["incoming"] == []
    else:  # its file was written: accepted once, and the generator continues after it (no UDI twice)
        assert state == reference
        udis = load_site_data(store, "plant_b")["udi"].tolist()
        assert udis == list(range(1, 2 * ROWS + 1))
