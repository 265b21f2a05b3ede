"""``make bench-rounds``: how long a federated round takes with each site's warm trainer, against the same app
training inside Flower's per-message ClientApp process, side by side in one run; and the time from trigger to
success of a 3-round ``federated_training`` DAG run on the real stack.

Rounds: three sites (plant_a/b/c, 3 generated batches of 1,000 rows each, as ``mledge demo`` starts with), a real
SuperLink and three SuperNodes as processes (bench/federation.py), the project's Flower App with its defaults
(FedAvg, 2 local epochs), R rounds (default 6). Twice: ``warm_trainer`` (each ClientApp forwards to its site's
trainer) and ``in_clientapp`` (no trainer: the ClientApp imports torch and trains itself, as before). The number is
the median wall time of rounds 2..R, from the ServerApp's own per-round timestamps. Targets: <= 4 s per round and
>= 3x faster than in-process training.

DAG run: on the local stack of ``MLEDGE_HOME`` (the running one, e.g. after ``make demo``; if none runs, it is
started here, with its sites' first batches, and stopped afterwards). Triggered through Airflow's REST API as the
UI's Trigger button does; the number is Airflow's own ``end_date - queued_at`` of the run (and the wall time this
process saw). Target: <= 45 s. With ``--no-dag`` the last measured DAG run is kept in the results, with its date.

    python -m bench.rounds [--rounds 6] [--no-dag | --dag-only] [--out bench/results/rounds.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.federation import Federation, load_average, round_ends

OUT = Path(__file__).parent / "results" / "rounds.json"
SITES = ("plant_a", "plant_b", "plant_c")
BATCHES, ROWS = 3, 1000
TARGET_ROUND_S, TARGET_SPEEDUP, TARGET_DAG_S = 4.0, 3.0, 45.0
MODES = {"warm_trainer": True, "in_clientapp": False}


def make_stores(root: Path) -> dict[str, Path]:
    from mledge.onsite.profiles import PROFILES
    from mledge.onsite.store import ensure_batches

    stores = {}
    for site in SITES:
        stores[site] = root / "sites" / site
        ensure_batches(stores[site], PROFILES[site], BATCHES)
    return stores


def measure_rounds(rounds: int) -> dict[str, Any]:
    # A short folder: the trainers' Unix sockets live in the stores (paths of at most 107 bytes).
    root = Path(tempfile.mkdtemp(prefix="mledge-bench-", dir="/tmp"))
    results: dict[str, Any] = {}
    try:
        stores = make_stores(root)
        for mode, trainers in MODES.items():
            print(f"== {mode}: {len(SITES)} sites, {rounds} rounds", flush=True)
            load_before = load_average()
            with Federation(root, stores, trainers=trainers, name=mode) as federation:
                started = time.monotonic()
                federation.start()
                ready_s = time.monotonic() - started
                times = federation.run({"num-server-rounds": rounds})
                memory = federation.memory()
            results[mode] = {
                "status": times.status,
                "round_s": times.round_s,
                "median_round_s": times.median_round_s,
                "run_wall_s": times.wall_s,
                "compute_s_per_site": times.compute_s,
                "cpu_s_per_component": times.cpu_s,
                # A site's CPU per message (its SuperNode with its ClientApp processes, and its trainer), over
                # the run's R train messages and 1 finalise message: what wall time would be without other load.
                "site_cpu_s_per_message": round(
                    sum(v for k, v in times.cpu_s.items() if k.startswith(("supernode-", "trainer-")))
                    / ((rounds + 1) * len(SITES)), 2),
                "start_s": round(ready_s, 1),
                "memory_kb": memory,
                "load_average_before": load_before,
                "load_average_after": load_average(),
            }
            print(f"   {times.status}: rounds 2..{rounds} {times.round_s} s, median {times.median_round_s} s",
                  flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    warm, cold = results["warm_trainer"]["median_round_s"], results["in_clientapp"]["median_round_s"]
    speedup = round(cold / warm, 2) if warm and cold else None
    return {
        "setup": {"sites": list(SITES), "batches": BATCHES, "rows_per_batch": ROWS, "rounds": rounds,
                  "strategy": "fedavg (the app's default)", "statistic": "median wall time of rounds 2..R",
                  "transport": "real SuperLink and SuperNodes as processes on loopback, no TLS (bench/federation.py)"},
        "modes": results,
        "speedup": speedup,
        "targets": {
            "round_s": {"target": f"<= {TARGET_ROUND_S}", "measured": warm,
                        "met": bool(warm is not None and warm <= TARGET_ROUND_S)},
            "speedup": {"target": f">= {TARGET_SPEEDUP}", "measured": speedup,
                        "met": bool(speedup is not None and speedup >= TARGET_SPEEDUP)},
        },
    }


def _airflow_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def measure_dag(rounds: int = 3, timeout: float = 900.0) -> dict[str, Any]:
    """One federated_training run of ``rounds`` rounds on the local stack, from trigger to its end; the stack is
    started (and stopped afterwards) if it does not run."""
    from mledge.ops import stack
    from mledge.ops.demo import DAG_ID, act_as_platform, admin_client
    from mledge.ops.settings import Settings

    settings = Settings()
    start_stack = not all(c["healthy"] for c in stack.status(settings).values())
    if start_stack:
        print(f"== starting the local stack in {settings.home} for the DAG run", flush=True)
        stack.init_site_data(settings, batches=BATCHES)
        stack.up(settings, timeout=600.0, say=print)
    try:
        act_as_platform(settings)
        client = admin_client(settings)
        client.wait_for_dag(DAG_ID)
        client.unpause(DAG_ID)
        load_before = load_average()
        started = time.monotonic()
        run_id = client.trigger(DAG_ID, {"rounds": rounds})
        run = client.wait_for_run(DAG_ID, run_id, timeout, poll_s=1.0)
        wall = time.monotonic() - started
        queued, ended = _airflow_time(run.get("queued_at")), _airflow_time(run.get("end_date"))
        seconds = round((ended - queued).total_seconds(), 1) if queued and ended else None
        tasks = {}
        for t in client.task_instances(DAG_ID, run_id):
            begun, done = _airflow_time(t.get("start_date")), _airflow_time(t.get("end_date"))
            tasks[t["task_id"]] = {"state": t["state"],
                                   "seconds": round((done - begun).total_seconds(), 1) if begun and done else None}
        # The Flower run's own round times, from the ServerApp's outbox at the platform (the newest run there).
        outboxes = sorted((settings.platform_home / "flower" / "outbox").glob("*/metrics.jsonl"),
                          key=lambda path: path.stat().st_mtime)
        ends = round_ends(outboxes[-1].parent) if outboxes else []
        return {
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "flower_round_s": [round(b - a, 3) for a, b in zip(ends, ends[1:], strict=False)],
            "how": "the local stack (`mledge stack up`: Airflow, MLflow, SuperLink, gateways, 3 sites with their "
                   "trainers), federated_training triggered through Airflow's REST API with rounds=3",
            "stack_started_for_it": start_stack,
            "dag_run_id": run_id,
            "state": run["state"],
            "trigger_to_end_s": seconds,
            "wall_s_seen_here": round(wall, 1),
            "tasks": tasks,
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "target": f"<= {TARGET_DAG_S}",
            "met": bool(run["state"] == "success" and seconds is not None and seconds <= TARGET_DAG_S),
        }
    finally:
        if start_stack:
            stack.down(settings, say=print)


def _write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds per run (the median is over rounds 2..R)")
    dag = parser.add_mutually_exclusive_group()
    dag.add_argument("--no-dag", action="store_true", help="no DAG run (an earlier measurement is kept)")
    dag.add_argument("--dag-only", action="store_true", help="only the DAG run (earlier round times are kept)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (round 1 is not counted)")
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    document: dict[str, Any] = {
        "benchmark": "bench-rounds",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    if args.dag_only:
        document = {**previous, **{k: v for k, v in document.items() if k not in previous}}
    else:
        document.update(measure_rounds(args.rounds))
    if not args.no_dag:
        _write(args.out, {**document, "dag_run": {"measured": False, "note": "being measured"}})  # rounds kept
        try:
            document["dag_run"] = measure_dag()
        except Exception as exc:  # the round times above stand; the failure is recorded with them
            document["dag_run"] = {"measured": False, "error": f"{exc.__class__.__name__}: {exc}"[-2000:]}
    elif "dag_run" in previous:
        document["dag_run"] = {**previous["dag_run"], "note": "kept from an earlier measurement (see measured_at)"}
    else:
        how = "`python -m bench.rounds --dag-only`"
        document["dag_run"] = {"measured": False, "how": how}
    _write(args.out, document)
    print(json.dumps({k: document.get(k) for k in ("targets", "speedup")}, indent=2))
    if "trigger_to_end_s" in document["dag_run"]:
        print(f"DAG run: {document['dag_run'].get('state')} in {document['dag_run']['trigger_to_end_s']} s")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
