"""Acceptance survives crashes between its steps, takes each content once, reads only regular files under a cap.

A crash is simulated in two ways: in process, by making the store's step hook raise at the n-th step (every
step of a reference run is tried), and for real, by a child process that exits at a step without any clean-up
(``MLEDGE_STORE_CRASH_AT``). Either way the next acceptance must leave the store exactly as an uninterrupted run
does: every file a batch or in quarantine once, nothing lost, nothing doubled, no claim left.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from mledge.onsite import store as store_module
from mledge.onsite.generator import generate_batch
from mledge.onsite.profiles import PROFILES as SITES
from mledge.onsite.store import (
    ACCEPT_STEPS,
    CRASH_ENV,
    CRASH_EXIT_CODE,
    DEFAULT_MAX_FILE_BYTES,
    REASON_SUFFIX,
    SiteDataError,
    accept_incoming,
    append_generated_batch,
    batch_paths,
    incoming_paths,
    ledger_lookup,
    load_site_data,
    quarantined,
    read_batch,
)


class Crash(BaseException):
    """The process dies here (a BaseException: no ``except Exception`` in the store may swallow it)."""


def _frame(index: int, rows: int = 40) -> pd.DataFrame:
    return generate_batch(SITES["plant_a"], index, None, rows=rows, drifts=())[0]


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _drop(store: Path, name: str, content: bytes, mtime: int) -> Path:
    path = store / "incoming" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.utime(path, ns=(mtime, mtime))
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _deliveries(store: Path, outside: Path) -> None:
    """One of every outcome: accepted, quarantined, split, duplicate, a symbolic link, and another accepted."""
    gaps = _frame(3)
    gaps.loc[4, "torque_nm"] = None
    _drop(store, "ok-1.csv", _csv(_frame(1)), 1_000)
    _drop(store, "no-torque.csv", _csv(_frame(2).drop(columns=["torque_nm"])), 2_000)
    _drop(store, "gaps.csv", _csv(gaps), 3_000)
    _drop(store, "ok-1-again.csv", _csv(_frame(1)), 4_000)
    outside.write_bytes(_csv(_frame(5)))
    link = store / "incoming" / "link.csv"
    link.symlink_to(outside)
    os.utime(link, ns=(5_000, 5_000), follow_symlinks=False)
    _drop(store, "ok-2.csv", _csv(_frame(6)), 6_000)


def _entry(path: Path):
    return ("link", os.readlink(path)) if path.is_symlink() else path.read_bytes()


def _state(store: Path) -> dict:
    """Everything that matters in a store (reason times aside)."""
    def folder(name):
        root = store / name
        return sorted(root.iterdir()) if root.is_dir() else []

    return {
        "incoming": [p.name for p in folder("incoming")],
        "claims": [p.name for p in folder("claims")],
        "batches": {p.name: p.read_bytes() for p in folder("batches")},
        "quarantine": {p.name: _entry(p) for p in folder("quarantine") if not p.name.endswith(REASON_SUFFIX)},
        "reasons": {r["quarantined_as"]: (r["file"], r["problem"]) for r in quarantined(store)},
        "ledger": {p.stem: json.loads(p.read_text())["batch"] for p in folder("ledger")},
    }


def _record_steps(monkeypatch) -> list[str]:
    seen: list[str] = []
    monkeypatch.setattr(store_module, "_step", seen.append)
    return seen


def _crash_at(monkeypatch, n: int) -> list[str]:
    """Make the n-th step (0-based) of what runs next a crash."""
    seen: list[str] = []

    def step(name: str) -> None:
        seen.append(name)
        if len(seen) == n + 1:
            raise Crash(name)

    monkeypatch.setattr(store_module, "_step", step)
    return seen


def _reference(tmp_path: Path, monkeypatch) -> tuple[dict, list[str], dict]:
    store = tmp_path / "reference" / "plant_a"
    _deliveries(store, tmp_path / "reference-outside.csv")
    steps = _record_steps(monkeypatch)
    result = accept_incoming(store, "plant_a", max_nan_share=0.1)
    return _state(store), steps, result


def test_the_reference_run_has_every_outcome(tmp_path, monkeypatch):
    state, steps, result = _reference(tmp_path, monkeypatch)
    assert [(a["file"], a["batch"]) for a in result["accepted"]] == [
        ("ok-1.csv", "batch-000001.csv"), ("gaps.csv", "batch-000002.csv"), ("ok-2.csv", "batch-000003.csv")
    ]
    assert [q["file"] for q in result["quarantined"]] == ["no-torque.csv", "gaps.csv", "ok-1-again.csv", "link.csv"]
    assert set(steps) == set(ACCEPT_STEPS)  # every step is met, so every crash point below is exercised
    assert state["incoming"] == [] and state["claims"] == []


def test_a_crash_between_any_two_steps_is_finished_by_the_next_acceptance(tmp_path, monkeypatch):
    reference, steps, _ = _reference(tmp_path, monkeypatch)
    for n, step in enumerate(steps):
        store = tmp_path / f"crash-{n}" / "plant_a"
        _deliveries(store, tmp_path / "reference-outside.csv")
        _crash_at(monkeypatch, n)
        with pytest.raises(Crash):
            accept_incoming(store, "plant_a", max_nan_share=0.1)
        _record_steps(monkeypatch)
        accept_incoming(store, "plant_a", max_nan_share=0.1)
        assert _state(store) == reference, (n, step)


def test_a_crash_while_recovering_is_recovered_too(tmp_path, monkeypatch):
    reference, steps, _ = _reference(tmp_path, monkeypatch)
    for n in range(0, len(steps), 3):
        store = tmp_path / f"twice-{n}" / "plant_a"
        _deliveries(store, tmp_path / "reference-outside.csv")
        for crash in (n, 0, 1):  # crash, then crash again early in each recovery
            _crash_at(monkeypatch, crash)
            with pytest.raises(Crash):
                accept_incoming(store, "plant_a", max_nan_share=0.1)
        _record_steps(monkeypatch)
        accept_incoming(store, "plant_a", max_nan_share=0.1)
        assert _state(store) == reference, n


def test_a_file_is_claimed_by_rename_before_anything_is_decided(tmp_path, monkeypatch):
    store = tmp_path / "plant_a"
    path = _drop(store, "ok.csv", _csv(_frame(1)), 1_000)
    inode = path.stat().st_ino
    _crash_at(monkeypatch, ACCEPT_STEPS.index("claimed"))
    with pytest.raises(Crash):
        accept_incoming(store, "plant_a")
    assert incoming_paths(store) == []  # gone from incoming/: no later run can take it a second time
    (claim,) = (store / "claims").iterdir()
    assert (claim / "data").stat().st_ino == inode  # the same file, moved, not copied
    assert json.loads((claim / "origin.json").read_text())["file"] == "ok.csv"
    assert batch_paths(store) == []

    _record_steps(monkeypatch)
    result = accept_incoming(store, "plant_a")
    assert result["accepted"] == [{"file": "ok.csv", "batch": "batch-000001.csv", "rows": 40, "recovered": True}]
    assert not any((store / "claims").iterdir())


def test_a_claim_that_never_took_its_file_is_rolled_back(tmp_path, monkeypatch):
    store = tmp_path / "plant_a"
    path = _drop(store, "ok.csv", _csv(_frame(1)), 1_000)
    _crash_at(monkeypatch, ACCEPT_STEPS.index("claim-opened"))
    with pytest.raises(Crash):
        accept_incoming(store, "plant_a")
    assert path.exists() and len(list((store / "claims").iterdir())) == 1

    _record_steps(monkeypatch)
    result = accept_incoming(store, "plant_a")
    assert [a["batch"] for a in result["accepted"]] == ["batch-000001.csv"]
    assert "recovered" not in result["accepted"][0]  # taken afresh from incoming/, once
    assert not any((store / "claims").iterdir()) and not path.exists()


def test_the_decision_is_written_before_the_batch_is_placed(tmp_path, monkeypatch):
    store = tmp_path / "plant_a"
    _drop(store, "ok.csv", _csv(_frame(1)), 1_000)
    _crash_at(monkeypatch, ACCEPT_STEPS.index("decided"))
    with pytest.raises(Crash):
        accept_incoming(store, "plant_a")
    (claim,) = (store / "claims").iterdir()
    decision = json.loads((claim / "decision.json").read_text())
    assert decision["action"] == "accept" and decision["batch"] == "batch-000001.csv"
    assert batch_paths(store) == []
    # Another file arrives meanwhile: the recovered decision keeps its number, the newcomer takes the next.
    _drop(store, "later.csv", _csv(_frame(2)), 2_000)
    _record_steps(monkeypatch)
    result = accept_incoming(store, "plant_a")
    assert [(a["file"], a["batch"]) for a in result["accepted"]] == [
        ("ok.csv", "batch-000001.csv"), ("later.csv", "batch-000002.csv")
    ]


def test_a_crash_while_a_finished_claim_is_removed_doubles_nothing(tmp_path, monkeypatch):
    store = tmp_path / "plant_a"
    _drop(store, "ok.csv", _csv(_frame(1)), 1_000)
    real_rmtree = shutil.rmtree

    def dies_midway(path, *args, **kwargs):
        if Path(path).parent.name == "claims":  # removing a finished claim: the decision goes first, then death
            (Path(path) / "decision.json").unlink()
            raise Crash("rmtree")
        return real_rmtree(path, *args, **kwargs)

    _record_steps(monkeypatch)
    monkeypatch.setattr(shutil, "rmtree", dies_midway)
    with pytest.raises(Crash):
        accept_incoming(store, "plant_a")
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert len(list((store / "claims").iterdir())) == 1  # what is left of the claim: its origin and its file

    assert accept_incoming(store, "plant_a") == {"site": "plant_a", "accepted": [], "quarantined": []}
    assert len(batch_paths(store)) == 1 and quarantined(store) == [] and not any((store / "claims").iterdir())


@pytest.mark.parametrize("step", ["claimed", "batch-placed"])
def test_a_real_crash_leaves_nothing_that_a_restart_cannot_finish(tmp_path, step):
    store = tmp_path / "plant_a"
    content = _csv(_frame(1))
    _drop(store, "ok.csv", content, 1_000)
    code = f"from mledge.onsite.store import accept_incoming; accept_incoming({str(store)!r}, 'plant_a')"
    child = subprocess.run([sys.executable, "-c", code], env={**os.environ, CRASH_ENV: step},
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == CRASH_EXIT_CODE, child.stderr
    assert incoming_paths(store) == [] and len(list((store / "claims").iterdir())) == 1

    result = accept_incoming(store, "plant_a")  # the dead child's lock is gone with it
    assert [(a["file"], a["batch"], a.get("recovered")) for a in result["accepted"]] == [
        ("ok.csv", "batch-000001.csv", True)
    ]
    assert [p.read_bytes() for p in batch_paths(store)] == [content]
    assert not any((store / "claims").iterdir()) and quarantined(store) == []
    assert ledger_lookup(store, _sha(content))["batch"] == "batch-000001.csv"


def test_acceptance_holds_the_store_lock_through_its_steps(tmp_path, monkeypatch):
    store = tmp_path / "plant_a"
    _drop(store, "ok.csv", _csv(_frame(1)), 1_000)
    probes = []

    def probe(name: str) -> None:  # another process (a second open file) tries to take the lock at each step
        fd = os.open(store / ".store.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            probes.append((name, "free"))
        except BlockingIOError:
            probes.append((name, "held"))
        finally:
            os.close(fd)

    monkeypatch.setattr(store_module, "_step", probe)
    accept_incoming(store, "plant_a")
    assert probes and all(state == "held" for _, state in probes), probes
    fd = os.open(store / ".store.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # and released afterwards
    os.close(fd)


def test_a_batch_placed_by_hand_after_the_decision_is_never_overwritten(tmp_path, monkeypatch):
    store = tmp_path / "plant_a"
    ours, theirs = _csv(_frame(1)), _csv(_frame(2))
    _drop(store, "ours.csv", ours, 1_000)
    _crash_at(monkeypatch, ACCEPT_STEPS.index("decided"))
    with pytest.raises(Crash):
        accept_incoming(store, "plant_a")
    (store / "batches").mkdir()
    (store / "batches" / "batch-000001.csv").write_bytes(theirs)  # a writer that ignores the lock took the number
    _record_steps(monkeypatch)
    result = accept_incoming(store, "plant_a")
    assert [(a["file"], a["batch"]) for a in result["accepted"]] == [("ours.csv", "batch-000002.csv")]
    assert [p.read_bytes() for p in batch_paths(store)] == [theirs, ours]


def test_a_quarantine_name_taken_after_the_decision_is_never_overwritten(tmp_path, monkeypatch):
    store = tmp_path / "plant_a"
    _drop(store, "bad.csv", b"not,a,batch\n1,2,3\n", 1_000)
    _crash_at(monkeypatch, ACCEPT_STEPS.index("decided"))
    with pytest.raises(Crash):
        accept_incoming(store, "plant_a")
    (store / "quarantine").mkdir()
    (store / "quarantine" / "bad.csv").write_bytes(b"someone else's")
    _record_steps(monkeypatch)
    (item,) = accept_incoming(store, "plant_a")["quarantined"]
    assert Path(item["path"]).name == "bad.1.csv" and Path(item["path"]).read_bytes() == b"not,a,batch\n1,2,3\n"
    assert (store / "quarantine" / "bad.csv").read_bytes() == b"someone else's"
    assert json.loads(Path(item["reason_file"]).read_text())["quarantined_as"] == "bad.1.csv"


# --- the content ledger ---------------------------------------------------------------------------------------


def test_the_same_content_under_another_name_is_quarantined_naming_the_first_batch(tmp_path):
    store = tmp_path / "plant_a"
    content = _csv(_frame(1))
    _drop(store, "export-monday.csv", content, 1_000)
    _drop(store, "export-monday-copy.csv", content, 2_000)
    first = accept_incoming(store, "plant_a")
    _drop(store, "resent.csv", content, 3_000)
    second = accept_incoming(store, "plant_a")

    assert [a["batch"] for a in first["accepted"]] == ["batch-000001.csv"] and second["accepted"] == []
    assert len(batch_paths(store)) == 1
    reasons = {r["file"]: r for r in quarantined(store)}
    assert set(reasons) == {"export-monday-copy.csv", "resent.csv"}
    for reason in reasons.values():
        assert "duplicate" in reason["problem"] and "batch-000001.csv" in reason["problem"]
        assert "export-monday.csv" in reason["problem"]
        assert reason["duplicate_of"] == "batch-000001.csv" and reason["sha256"] == _sha(content)
    # Nothing lost: the copies are kept byte for byte.
    assert (store / "quarantine" / "resent.csv").read_bytes() == content


def test_content_of_a_batch_made_before_the_ledger_is_recognised(tmp_path):
    store = tmp_path / "plant_b"
    batch = append_generated_batch(store, SITES["plant_b"], rows=30)
    shutil.rmtree(store / "ledger")  # a store from before the ledger
    _drop(store, "old-batch.csv", batch.read_bytes(), 1_000)
    result = accept_incoming(store, "plant_b")
    (item,) = result["quarantined"]
    assert result["accepted"] == [] and item["file"] == "old-batch.csv" and "batch-000001.csv" in item["reason"]
    assert ledger_lookup(store, _sha(batch.read_bytes()))["batch"] == "batch-000001.csv"


def test_the_complete_rows_of_a_split_file_are_a_known_content_too(tmp_path):
    store = tmp_path / "plant_a"
    gaps = _frame(1)
    gaps.loc[3, "torque_nm"] = None
    _drop(store, "gaps.csv", _csv(gaps), 1_000)
    accept_incoming(store, "plant_a", max_nan_share=0.1)
    _drop(store, "gaps-again.csv", _csv(gaps), 2_000)
    _drop(store, "its-complete-rows.csv", batch_paths(store)[0].read_bytes(), 3_000)
    result = accept_incoming(store, "plant_a", max_nan_share=0.1)
    assert result["accepted"] == []
    assert {q["file"] for q in result["quarantined"]} == {"gaps-again.csv", "its-complete-rows.csv"}
    assert all("batch-000001.csv" in q["reason"] for q in result["quarantined"])


def test_content_no_batch_holds_any_more_is_accepted_again(tmp_path):
    store = tmp_path / "plant_a"
    content, other = _csv(_frame(1)), _csv(_frame(2))
    _drop(store, "ok.csv", content, 1_000)
    accept_incoming(store, "plant_a")
    batch_paths(store)[0].write_bytes(other)  # the batch was rewritten by hand: it no longer holds that content
    _drop(store, "ok-resent.csv", content, 2_000)
    result = accept_incoming(store, "plant_a")
    assert [(a["file"], a["batch"]) for a in result["accepted"]] == [("ok-resent.csv", "batch-000002.csv")]
    assert ledger_lookup(store, _sha(content))["batch"] == "batch-000002.csv"


def test_different_content_is_accepted_each_time(tmp_path):
    store = tmp_path / "plant_a"
    for i in range(1, 4):
        _drop(store, "same-name.csv", _csv(_frame(i)), i * 1_000)
        accept_incoming(store, "plant_a")
    assert [p.name for p in batch_paths(store)] == [f"batch-00000{i}.csv" for i in (1, 2, 3)]
    assert quarantined(store) == []


# --- regular files only ---------------------------------------------------------------------------------------


def _accept_with_watchdog(store: Path, **kwargs) -> dict:
    """accept_incoming in a thread: a FIFO opened by mistake would block for ever; fail instead of hanging."""
    out: dict = {}
    worker = threading.Thread(target=lambda: out.update(accept_incoming(store, "plant_a", **kwargs)), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "acceptance blocked: it opened something that is not a regular file"
    return out


def test_links_fifos_and_folders_are_quarantined_without_being_followed(tmp_path):
    store = tmp_path / "plant_a"
    incoming = store / "incoming"
    incoming.mkdir(parents=True)
    good = _csv(_frame(1))
    outside = tmp_path / "outside.csv"
    outside.write_bytes(good)  # a valid batch: following the link would accept it
    (incoming / "to-a-file.csv").symlink_to(outside)
    (incoming / "to-a-folder").symlink_to(tmp_path)
    (incoming / "dangling.csv").symlink_to(tmp_path / "nothing-here.csv")
    os.mkfifo(incoming / "pipe.csv")
    (incoming / "folder.csv").mkdir()
    (incoming / "folder.csv" / "inside.csv").write_bytes(good)
    _drop(store, "real.csv", _csv(_frame(2)), 1)

    result = _accept_with_watchdog(store)

    assert [a["file"] for a in result["accepted"]] == ["real.csv"]
    reasons = {q["file"]: q["reason"] for q in result["quarantined"]}
    assert set(reasons) == {"to-a-file.csv", "to-a-folder", "dangling.csv", "pipe.csv", "folder.csv"}
    assert "symbolic link" in reasons["to-a-file.csv"] and str(outside) in reasons["to-a-file.csv"]
    assert "symbolic link" in reasons["dangling.csv"] and "symbolic link" in reasons["to-a-folder"]
    assert "FIFO" in reasons["pipe.csv"] and "directory" in reasons["folder.csv"]
    assert all("not a regular file" in r for r in reasons.values())
    quarantine = store / "quarantine"
    # Kept as they came: the links still point where they did, the folder keeps its file, the target is untouched.
    assert os.readlink(quarantine / "to-a-file.csv") == str(outside) and outside.read_bytes() == good
    assert (quarantine / "pipe.csv").is_fifo()
    assert (quarantine / "folder.csv" / "inside.csv").read_bytes() == good
    assert incoming_paths(store) == [] and len(batch_paths(store)) == 1


def test_an_incoming_folder_that_is_a_link_is_refused(tmp_path):
    store = tmp_path / "plant_a"
    store.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.csv").write_bytes(_csv(_frame(1)))
    (store / "incoming").symlink_to(elsewhere)
    with pytest.raises(SiteDataError, match="incoming/ is not a folder of this store") as err:
        accept_incoming(store, "plant_a")
    assert err.value.site == "plant_a"
    assert (elsewhere / "x.csv").exists() and batch_paths(store) == []


def test_reading_refuses_a_batch_that_is_a_link_or_a_fifo(make_store, tmp_path):
    store = make_store("plant_a", batches=1, rows=30)
    outside = tmp_path / "outside.csv"
    outside.write_bytes(batch_paths(store)[0].read_bytes())
    link = store / "batches" / "batch-000002.csv"
    link.symlink_to(outside)
    with pytest.raises(SiteDataError, match="symbolic link") as err:
        load_site_data(store, "plant_a")
    assert err.value.path == link
    link.unlink()
    os.mkfifo(link)
    with pytest.raises(SiteDataError, match="FIFO"):
        read_batch("plant_a", link)  # opened without blocking, then refused


# --- the size cap ------------------------------------------------------------------------------------------------


def test_a_file_over_the_cap_is_quarantined_without_being_parsed(tmp_path, monkeypatch):
    store = tmp_path / "plant_a"
    small, large = _csv(_frame(1, rows=5)), _csv(_frame(2, rows=40))
    _drop(store, "small.csv", small, 1_000)
    _drop(store, "large.csv", large, 2_000)
    parsed = []
    real_parse = store_module._parse
    monkeypatch.setattr(store_module, "_parse", lambda data: parsed.append(len(data)) or real_parse(data))

    result = accept_incoming(store, "plant_a", max_file_bytes=len(small))

    assert [a["file"] for a in result["accepted"]] == ["small.csv"]  # exactly at the cap: accepted
    (item,) = result["quarantined"]
    assert item["file"] == "large.csv"
    assert f"size cap of {len(small)} bytes" in item["reason"] and f"{len(large)} bytes" in item["reason"]
    assert "without parsing" in item["reason"]
    assert parsed == [len(small)]  # the large one was never parsed
    assert (store / "quarantine" / "large.csv").read_bytes() == large


def test_the_default_cap_is_generous_and_applies(tmp_path, monkeypatch):
    assert DEFAULT_MAX_FILE_BYTES == 100 * 1024 * 1024
    store = tmp_path / "plant_a"
    huge = store / "incoming" / "huge.csv"
    huge.parent.mkdir(parents=True)
    with huge.open("wb") as handle:
        handle.truncate(DEFAULT_MAX_FILE_BYTES + 1)  # sparse: costs no disk
    monkeypatch.setattr(store_module, "_parse", lambda data: pytest.fail("a file over the cap was parsed"))
    result = accept_incoming(store, "plant_a")
    assert result["quarantined"][0]["file"] == "huge.csv" and "size cap" in result["quarantined"][0]["reason"]
    assert (store / "quarantine" / "huge.csv").stat().st_size == DEFAULT_MAX_FILE_BYTES + 1


@pytest.mark.parametrize("cap", [0, -5, 1.5, True])
def test_a_bad_cap_is_refused(tmp_path, cap):
    with pytest.raises(ValueError, match="max_file_bytes"):
        accept_incoming(tmp_path, "plant_a", max_file_bytes=cap)
