"""Chaos on the real stack (issue 19): each fault injected into a running `mledge stack up`, then the outcome and
the data counted before and after: registry versions, drift alerts, cost rows and site batches; 0 lost, 0 doubled.

A case ends completed, or failed with a clear message and completed by a retry (Airflow's own, or the Clear an
operator would press). Each case's recovery time (from the fault to the outcome) is recorded; `make bench-chaos`
runs this module with ``MLEDGE_CHAOS_RESULTS`` naming the JSON file they go to. No assertion is about time.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import BIN, DAG_ID, SITES, Platform, finished, running_stack, stack_env, stack_ports

from mledge.contracts import GLOBAL_MODEL

# In `make test` (about 17 min on two cores) and in `make bench-chaos`, which writes bench/results/chaos.json.
pytestmark = [pytest.mark.e2e, pytest.mark.chaos]
REPO = Path(__file__).resolve().parents[2]

RESULTS: list[dict] = []
TRAINING = {"rounds": 2, "min_clients": 2, "node_wait_timeout_s": 120}
BATCHES = "2"  # each site's generated batches: `stack up` (and a heal) tops a store up to this many


@pytest.fixture(scope="module")
def platform(deployment_home, airflow_db_url, free_ports) -> Iterator[Platform]:
    ports = stack_ports(free_ports, start=25000)
    env = stack_env(
        deployment_home,
        ports,
        MLEDGE_COLLECTION_SCHEDULE="0 0 1 1 *",  # only the test's own triggers run
        MLEDGE_DRIFT_SCHEDULE_CRON="0 0 1 1 *",
        MLEDGE_EDGE_WORKER_WAIT_S="60",
    )
    if airflow_db_url:
        env["MLEDGE_AIRFLOW_DB_URL"] = airflow_db_url
    with running_stack(deployment_home, env, ports, "--batches", BATCHES) as stack:
        client = stack.airflow()
        for dag in (DAG_ID, "data_collection"):
            client.wait_for_dag(dag)
            client.unpause(dag)
        yield stack
    target = os.environ.get("MLEDGE_CHAOS_RESULTS")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_text(json.dumps({"cases": RESULTS}, indent=2) + "\n")


# --- what is counted before and after -------------------------------------------------------------------------


def registry_versions(platform: Platform) -> dict[str, list[str]]:
    """Every registered model's versions, by name."""
    models = platform.mlflow("registered-models/search", max_results=1000).get("registered_models", [])
    return {
        m["name"]: sorted(
            v["version"]
            for v in platform.mlflow("model-versions/search", filter=f"name='{m['name']}'").get("model_versions", [])
        )
        for m in models
    }


def cost_rows(platform: Platform) -> dict[str, int]:
    """Rows of the cost store by source (the training runs' rows among them)."""
    path = platform.platform_home / "costs.db"
    if not path.exists():
        return {}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return dict(db.execute("SELECT x_source, count(*) FROM cost_rows GROUP BY x_source").fetchall())


def site_batches(platform: Platform) -> dict[str, int]:
    return {site: len(list((platform.sites / site / "batches").glob("*.csv"))) for site in SITES}


def snapshot(platform: Platform) -> dict:
    return {"versions": registry_versions(platform), "costs": cost_rows(platform), "batches": site_batches(platform)}


def one_more_version_each(before: dict, after: dict) -> None:
    """A training run registered exactly one version of the global model and of each site model it trained."""
    for name, versions in after["versions"].items():
        added = len(versions) - len(before["versions"].get(name, []))
        assert added in ((1,) if name == GLOBAL_MODEL else (0, 1)), (name, before["versions"].get(name), versions)
    assert before["batches"] == after["batches"]  # training never adds or removes a site's batch


# --- faults -------------------------------------------------------------------------------------------------


def components(platform: Platform) -> dict[str, dict]:
    done = platform.mledge("stack", "status")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def processes() -> list[tuple[int, int, str]]:
    """(pid, process group, command line) of every process on the machine."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile
            continue
        found.append((int(stat.parent.name), int(fields[2]), command))
    return found


def members(pgid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process in the process group ``pgid``."""
    return [(pid, command) for pid, group, command in processes() if group == pgid]


def kill(platform: Platform, component: str) -> float:
    """SIGKILL a component's whole process group, as a crash would; when it happened."""
    pid = components(platform)[component]["pid"]
    assert pid, f"{component} is not running"
    os.killpg(pid, signal.SIGKILL)
    return time.monotonic()


def heal(platform: Platform) -> None:
    """What an operator (or compose's restart policy) does: start what is not running."""
    up = platform.mledge("stack", "up", "--batches", BATCHES, timeout=900)
    assert up.returncode == 0, up.stderr[-3000:]
    wait = platform.mledge("fl", "wait-nodes", "--min-nodes", str(len(SITES)), "--timeout", "180", timeout=300)
    assert wait.returncode == 0, wait.stderr[-2000:]


def poll(what: str, check: Callable[[], object], timeout: float = 600, every: float = 0.5) -> object:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waiting for {what} ({timeout:.0f}s)")
        time.sleep(every)
    return found


def task_state(platform: Platform, run_id: str, task: str) -> str | None:
    return {t["task_id"]: t["state"] for t in platform.airflow().task_instances(DAG_ID, run_id)}.get(task)


def task_running(platform: Platform, run_id: str, task: str) -> bool:
    return task_state(platform, run_id, task) == "running"


def training_busy_at(platform: Platform, site: str) -> bool:
    """The site's SuperNode is handling a message now: it has a ClientApp process besides itself."""
    pid = components(platform)[f"supernode-{site}"]["pid"]
    return any("flwr-clientapp" in command for _, command in members(pid))


def trigger(platform: Platform, conf: dict | None = None) -> str:
    return platform.airflow().trigger(DAG_ID, {**TRAINING, **(conf or {})})


def outcome(platform: Platform, run_id: str) -> tuple[str, dict[str, str], int]:
    """Wait for the DAG run's end; a failed run is cleared once (an operator's retry) and waited for again.

    Returns (outcome, task states, clears)."""
    state, tasks = finished(platform, DAG_ID, run_id)
    if state == "success":
        return "completed", tasks, 0
    failed = sorted(t for t, s in tasks.items() if s == "failed")
    logs = {t: platform.airflow().task_log(DAG_ID, run_id, t)[-1500:] for t in failed}
    assert all(logs.values()), f"a failed task without a message: {logs}"
    platform.airflow().clear_failed(DAG_ID, run_id)
    state, tasks = finished(platform, DAG_ID, run_id)
    assert state == "success", (tasks, logs)
    return f"failed ({', '.join(failed)}), completed by a retry", tasks, 1


def record(fault: str, result: str, started: float, **extra: object) -> None:
    RESULTS.append({"fault": fault, "outcome": result, "recovery_s": round(time.monotonic() - started, 1), **extra})


def xcom(platform: Platform, run_id: str, task: str) -> dict:
    return platform.airflow().xcom(DAG_ID, run_id, task)


# --- the cases ----------------------------------------------------------------------------------------------


def test_a_first_training_run_gives_every_case_a_champion(platform):
    before = snapshot(platform)
    run_id = trigger(platform)
    result, tasks, _ = outcome(platform, run_id)
    assert result == "completed", tasks
    one_more_version_each(before, snapshot(platform))


@pytest.mark.parametrize("when", ["mid-round", "between rounds"])
def test_a_supernode_killed_during_a_run(platform, when):
    before = snapshot(platform)
    run_id = trigger(platform, {"rounds": 3})
    if when == "mid-round":  # plant_c is training when it dies
        poll("plant_c training", lambda: task_running(platform, run_id, "await_flower_run")
             and training_busy_at(platform, "plant_c"), every=0.2)
    else:  # round 1 done everywhere, the next not yet sent: plant_c idle after its first reply
        poll("plant_c's first message", lambda: training_busy_at(platform, "plant_c"), every=0.2)
        poll("plant_c idle again", lambda: not training_busy_at(platform, "plant_c"), every=0.2)
    started = kill(platform, "supernode-plant_c")
    try:
        result, tasks, _ = outcome(platform, run_id)
    finally:
        heal(platform)
    record(f"SuperNode killed {when}", result, started)
    failures = xcom(platform, run_id, "await_flower_run")["site_failures"]
    assert list(failures) == ["plant_c"], failures  # named, and the two others carried the run
    one_more_version_each(before, snapshot(platform))


def test_the_superlink_restarted_mid_run(platform):
    before = snapshot(platform)
    run_id = trigger(platform, {"rounds": 3})
    poll("a round in progress", lambda: task_running(platform, run_id, "await_flower_run")
         and training_busy_at(platform, "plant_a"), every=0.2)
    started = kill(platform, "superlink")
    heal(platform)
    result, tasks, _ = outcome(platform, run_id)
    record("SuperLink restarted mid-run", result, started)
    one_more_version_each(before, snapshot(platform))


def test_mlflow_stopped_during_registration(platform):
    """MLflow dies as the results are published and registered: the steps fail or wait, nothing is lost, and the
    run completes once MLflow is back (the outbox at the platform holds the results meanwhile)."""
    before = snapshot(platform)
    run_id = trigger(platform)
    poll("the Flower run's end", lambda: task_state(platform, run_id, "await_flower_run") == "success", every=0.2)
    started = kill(platform, "mlflow")
    try:
        poll("a registration step to meet MLflow down", lambda: met_mlflow_down(platform, run_id))
    finally:
        heal(platform)
    result, tasks, _ = outcome(platform, run_id)
    record("MLflow stopped during registration", result, started)
    one_more_version_each(before, snapshot(platform))


def met_mlflow_down(platform: Platform, run_id: str) -> bool:
    """publish_run or register_and_promote failed (to be retried), or its log shows MLflow refusing."""
    for task in ("publish_run", "register_and_promote"):
        if task_state(platform, run_id, task) in ("up_for_retry", "failed"):
            return True
        if task_state(platform, run_id, task) == "running":
            log = platform.airflow().task_log(DAG_ID, run_id, task)
            if "Connection refused" in log or "Max retries exceeded" in log:
                return True
    return False


def test_the_scheduler_killed_mid_run(platform):
    before = snapshot(platform)
    run_id = trigger(platform, {"rounds": 3})
    poll("the Flower run", lambda: task_running(platform, run_id, "await_flower_run"))
    started = kill(platform, "airflow-scheduler")
    heal(platform)
    result, tasks, _ = outcome(platform, run_id)
    record("Airflow scheduler killed mid-run", result, started)
    one_more_version_each(before, snapshot(platform))


def test_the_await_task_killed(platform):
    """The task's process dies (OOM killer, node loss): the retry adopts the Flower run, which never stopped."""
    before = snapshot(platform)
    run_id = trigger(platform, {"rounds": 3})
    poll("await_flower_run", lambda: task_running(platform, run_id, "await_flower_run"))
    waiting = poll("the await process", lambda: [pid for pid, _, command in processes()
                                                  if " fl await " in f" {command} " and run_id in command])
    started = time.monotonic()
    for pid in waiting:
        os.kill(pid, signal.SIGKILL)
    result, tasks, _ = outcome(platform, run_id)
    record("await_flower_run task killed", result, started)
    first = xcom(platform, run_id, "start_flower_run")["run_id"]
    assert xcom(platform, run_id, "await_flower_run")["run_id"] == first  # adopted, not started again
    one_more_version_each(before, snapshot(platform))


@pytest.mark.parametrize("step", ["collect-written", "collect-state-saved", "claimed", "batch-placed", "ledgered"])
def test_a_site_store_crash_between_acceptance_steps(platform, step):
    """`collect` dies at ``step``; the same run's retry leaves exactly one new batch, accepted once."""
    before = site_batches(platform)
    run_id = f"chaos-{step}"
    env = {**platform.env, "MLEDGE_STORE_CRASH_AT": step}
    crashed = run_collect(platform, run_id, env)
    assert crashed.returncode != 0
    started = time.monotonic()
    again = run_collect(platform, run_id, platform.env)
    assert again.returncode == 0, again.stderr[-2000:]
    twice = run_collect(platform, run_id, platform.env)  # a retried task on top: still one batch
    assert twice.returncode == 0, twice.stderr[-2000:]
    record(f"site store crash at {step}", "completed by a retry", started)
    after = site_batches(platform)
    assert after == {**before, "plant_a": before["plant_a"] + 1}


def run_collect(platform: Platform, run_id: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "mledge"), "drift", "collect", "--site", "plant_a", "--rows", "200", "--run-id", run_id],
        env=env, capture_output=True, text=True, timeout=300,
    )


# --- billing deliveries -------------------------------------------------------------------------------------

BILLING_SAMPLE = REPO / "costs" / "samples" / "gcp" / "focus_export_20261022_20261120.csv"


def ingest_billing(platform: Platform, sources: Path) -> tuple[subprocess.CompletedProcess, dict]:
    """`mledge costs ingest` of the test's source into the stack's cost store, as the platform's own user."""
    argv = [str(BIN / "mledge"), "--json", "costs", "ingest", "--source", "chaos-gcp", "--from", "2026-10-01",
            "--to", "2026-12-01"]
    owner = platform.platform_home.stat().st_uid
    if os.geteuid() == 0 and owner != 0:  # as root, the cost store is the platform user's: act as that user
        import pwd

        argv = ["runuser", "-u", pwd.getpwuid(owner).pw_name, "--", *argv]
    done = subprocess.run(argv, env={**platform.env, "MLEDGE_COST_SOURCES": str(sources)}, capture_output=True,
                          text=True, timeout=600)
    try:  # the JSON summary comes first on stdout, on failure too
        summary = json.JSONDecoder().raw_decode(done.stdout.lstrip())[0] if done.stdout.strip() else {}
    except ValueError:
        summary = {}
    return done, summary


def deliver(folder: Path, name: str, text: str, mtime: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    path = folder / name
    path.write_text(text)
    os.chmod(path, 0o644)
    os.utime(path, (mtime, mtime))
    return path


def test_overlapping_and_empty_billing_deliveries_lose_and_double_nothing(platform):
    """A re-run export of another period that overlaps, and a newer header-only export of the same period: the
    days they touch fail naming the files, the stored rows stay exactly as they were; removing the bad delivery
    and running again restores the same rows, once."""
    billing = platform.home / "billing"
    sources = deliver(billing, "sources.toml", f'[[source]]\nname = "chaos-gcp"\nkind = "focus_files"\n'
                      f'provider = "Google Cloud"\npaths = ["{billing}/exports/**/*.csv"]\n', time.time())
    sample = BILLING_SAMPLE.read_text()
    deliver(billing / "exports" / "2026-10", "focus_export_20261022_20261120.csv", sample, time.time() - 3600)
    done, summary = ingest_billing(platform, sources)
    assert done.returncode == 0, done.stderr[-2000:]
    stored = cost_rows(platform).get("chaos-gcp", 0)
    assert stored > 0, summary
    done, _ = ingest_billing(platform, sources)  # the same delivery again: replaced exactly, not added
    assert done.returncode == 0 and cost_rows(platform)["chaos-gcp"] == stored

    # A delivery of another period that shares days with the first one.
    started = time.monotonic()
    late = deliver(billing / "exports" / "late", "focus_export_20261110_20261209.csv", sample, time.time())
    done, summary = ingest_billing(platform, sources)
    assert done.returncode != 0, summary
    message = done.stdout + done.stderr
    assert "overlap" in message and late.name in message and "focus_export_20261022_20261120.csv" in message
    assert cost_rows(platform)["chaos-gcp"] == stored  # nothing lost, nothing added
    late.unlink()
    done, _ = ingest_billing(platform, sources)
    assert done.returncode == 0, done.stderr[-2000:]
    assert cost_rows(platform)["chaos-gcp"] == stored
    record("overlapping billing delivery", "failed naming both files, completed after the fix", started)

    # A newer export of the same period with a header and no rows: it must not replace the month with nothing.
    started = time.monotonic()
    header = sample.splitlines()[0] + "\n"
    empty = deliver(billing / "exports" / "2026-10-rerun", "focus_export_20261022_20261120.csv", header, time.time())
    done, summary = ingest_billing(platform, sources)
    assert done.returncode != 0, summary
    assert "a header and no rows" in done.stderr and "2026-10-rerun" in done.stderr, done.stderr[-2000:]
    assert summary.get("rows") == 0, summary
    assert cost_rows(platform)["chaos-gcp"] == stored
    empty.unlink()
    done, _ = ingest_billing(platform, sources)
    assert done.returncode == 0, done.stderr[-2000:]
    assert cost_rows(platform)["chaos-gcp"] == stored
    record("empty billing delivery", "failed naming the delivery, rows kept, completed after the fix", started)
