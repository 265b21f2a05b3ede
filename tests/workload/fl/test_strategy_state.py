"""Per-site strategy state in the platform database: SQLite files, in-memory SQLite, PostgreSQL, and strategies that
pick up where an earlier run (an earlier strategy object) left off."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from fl.simulation.harness import make_reply, run_round, to_arrayrecord
from fl.strategies import FedQV, MemoryStateStore, ReputationResidual, SiteStateStore
from fl.strategies.state import RoundState, StateBusyError

POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432"


def exercise(store: SiteStateStore) -> None:
    """What every backend must do: empty loads, upserts, per-strategy isolation, JSON round trips."""
    assert store.load("fedqv", "plant-a") == {}
    store.save("fedqv", "plant-a", {"budget": 30.0})
    store.save("fedqv", "plant-a", {"budget": 28.5, "history": [0.9, 0.8]})  # an update, not a second row
    store.save_many("fedqv", {"plant-b": {"budget": 1.0}, "plant-c": {"budget": 0.0}})
    store.save("reputation-residual", "plant-a", {"history": [0.5]})
    assert store.load("fedqv", "plant-a") == {"budget": 28.5, "history": [0.9, 0.8]}
    assert store.all("fedqv") == {
        "plant-a": {"budget": 28.5, "history": [0.9, 0.8]},
        "plant-b": {"budget": 1.0},
        "plant-c": {"budget": 0.0},
    }
    assert store.all("reputation-residual") == {"plant-a": {"history": [0.5]}}
    with pytest.raises(ValueError):
        store.save("fedqv", "plant-d", {"budget": float("nan")})
    assert "plant-d" not in store.all("fedqv")
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM strategy_site_state")).scalar_one()
    assert rows == 4


def test_sqlite_file_store_survives_a_new_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    exercise(SiteStateStore(url))
    assert SiteStateStore(url).load("fedqv", "plant-a")["budget"] == 28.5


def test_in_memory_sqlite_keeps_state_across_connections():
    exercise(SiteStateStore("sqlite://"))


@pytest.fixture
def postgres_url():
    """A fresh PostgreSQL database for one test, dropped afterwards (skipped where no server runs, outside CI)."""
    admin = sa.create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    name = f"mledge_strategy_test_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"no PostgreSQL at {POSTGRES}: {exc.orig}")
    yield f"{POSTGRES}/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_postgresql_store(postgres_url):
    store = SiteStateStore(postgres_url)
    try:
        exercise(store)
        assert SiteStateStore(postgres_url).all("fedqv")["plant-b"] == {"budget": 1.0}
    finally:
        store.dispose()


def unit_circle_round(cosines: list[float]):
    """Global weights (1, 0); site i sends (cos φ_i, sin φ_i), so its similarity is cos φ_i."""
    replies = [
        make_reply(f"s{i}", 10 + i, {"w": np.array([c, np.sqrt(1 - c * c)], np.float32)}, 100)
        for i, c in enumerate(cosines)
    ]
    return to_arrayrecord({"w": np.array([1.0, 0.0], np.float32)}), replies


def test_fedqv_budgets_carry_over_to_a_new_run(tmp_path):
    """Three rounds in one run and two in the next (a new strategy, a new store object) equal five in one."""
    cosines = [0.0, 0.3, 0.5, 0.7, 1.0]
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    continuous = FedQV()
    for rnd in range(1, 6):
        run_round(continuous, *unit_circle_round(cosines), rnd)
    first = FedQV(state=SiteStateStore(url))
    for rnd in range(1, 4):
        run_round(first, *unit_circle_round(cosines), rnd)
    second = FedQV(state=SiteStateStore(url))
    for rnd in range(4, 6):
        run_round(second, *unit_circle_round(cosines), rnd)
    assert second.state.all("fedqv") == continuous.state.all("fedqv")
    assert second.last_weights == continuous.last_weights
    assert second.state.load("fedqv", "s2")["budget"] == pytest.approx(30 - 5 * (1 - np.log(0.5)))


def test_reputation_histories_carry_over_and_are_keyed_by_site_not_node(tmp_path):
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    rng = np.random.default_rng(0)
    base = rng.standard_normal(40).astype(np.float32)

    def replies(node_offset: int):
        models = [base + 0.05 * rng.standard_normal(40).astype(np.float32) for _ in range(4)]
        models[3] = base + 100 * (models[3] - base)  # plant-d attacks
        return [
            make_reply(f"plant-{c}", node_offset + i, {"w": m}, 50)
            for i, (c, m) in enumerate(zip("abcd", models, strict=True))
        ]

    run_round(ReputationResidual(state=SiteStateStore(url)), to_arrayrecord({"w": base}), replies(10))
    later = ReputationResidual(state=SiteStateStore(url))
    run_round(later, to_arrayrecord({"w": base}), replies(70), 2)  # the SuperNodes restarted: new node ids
    histories = later.state.all("reputation-residual")
    assert sorted(histories) == ["plant-a", "plant-b", "plant-c", "plant-d"]
    assert all(len(h["history"]) == 2 for h in histories.values())
    assert max(histories["plant-d"]["history"]) < 0.1 < min(histories["plant-a"]["history"])
    assert later.last_weights["plant-d"] == 0.0


def test_a_rounds_state_is_written_only_when_the_round_is_accepted():
    """FedQV spends budgets while it aggregates; the ServerApp may still reject the round: then nothing is kept."""
    store = MemoryStateStore()
    staged = RoundState(store)
    strategy = FedQV(state=staged)
    run_round(strategy, *unit_circle_round([0.0, 0.5, 1.0]), 1)
    assert store.all("fedqv") == {}  # not yet accepted
    spent = staged.all("fedqv")
    assert set(spent) == {"s0", "s1", "s2"} and staged.load("fedqv", "s0") == spent["s0"]
    staged.discard()
    assert staged.all("fedqv") == {} == store.all("fedqv")

    run_round(strategy, *unit_circle_round([0.0, 0.5, 1.0]), 1)
    staged.commit()
    assert store.all("fedqv") == spent  # the same round, accepted this time: exactly its budgets
    with pytest.raises(ValueError):
        staged.save("fedqv", "s0", {"budget": float("nan")})  # refused when staged, not later at commit


def test_one_run_at_a_time_owns_a_strategys_state_in_an_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    first, second = SiteStateStore(url), SiteStateStore(url)
    lease = first.lease("fedqv")
    with pytest.raises(StateBusyError, match="'fedqv' is owned by another run"):
        second.lease("fedqv", wait_s=0)
    second.lease("reputation-residual").release()  # another strategy's state is not held
    lease.release()
    second.lease("fedqv").release()


def test_a_crashed_run_leaves_no_lock_behind(tmp_path):
    """The lock belongs to the process: a ServerApp killed mid-run releases it with its life."""
    url = f"sqlite:///{tmp_path / 'platform.db'}"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom fl.strategies import SiteStateStore\n"
         f"lease = SiteStateStore({url!r}).lease('fedqv')\nprint('held', flush=True)\ntime.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StateBusyError):
            SiteStateStore(url).lease("fedqv")
    finally:
        holder.kill()
        holder.wait()
    SiteStateStore(url).lease("fedqv").release()


def test_postgresql_lease(postgres_url):
    first, second = SiteStateStore(postgres_url), SiteStateStore(postgres_url)
    try:
        lease = first.lease("fedqv")
        with pytest.raises(StateBusyError):
            second.lease("fedqv")
        second.lease("mledge-robust").release()
        lease.release()
        second.lease("fedqv").release()
    finally:
        first.dispose()
        second.dispose()
