"""``make bench-scale``: does the federation scale? Many simulated sites per round, and 30 real SuperNodes.

1. Simulation: 10, 100 and 1,000 simulated sites per round, each with its own generated store (one batch of 100
   rows), with FedAvg and with the robust default. Flower's simulation engine (``flwr.simulation.run_simulation``)
   needs Ray, and Flower 1.41 has no other backend (``flwr.server.superlink.fleet.vce`` builds a RayBackend
   unconditionally); Ray is not in this project's lock (``flwr[simulation]`` would add ray 2.55.1, on PyPI, to the
   workload environment: not done here). So the rounds run on the project's in-process grid (fl/simulation/harness.py:
   ``InProcessGrid``, a Flower ``Grid`` whose nodes run the real ClientApp of fl/clientapp.py, every message
   serialised and deserialised as on the wire) with the ServerApp's own rounds (fl/serverapp.py ``train_rounds``)
   and the real strategies. One process per configuration, one torch thread, sites one after another: seconds per
   round (median of rounds 2..R) and the process's peak resident memory. Target: 1,000 sites in <= 60 s per round.
2. 30 real SuperNodes, each its own process with its own generated store and its own trainer, a real SuperLink
   (bench/federation.py), 3 rounds of the project's Flower App: seconds per round and memory per SuperNode (and per
   trainer). Started only if the machine has the memory for it (checked before each wave of trainers).

    python -m bench.scale [--sizes 10 100 1000] [--rounds 3] [--supernodes 30] [--out bench/results/scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "results" / "scale.json"
SIM_ROWS, SIM_BATCHES = 100, 1
NODE_ROWS, NODE_BATCHES = 500, 2
TARGET_S, TARGET_SITES = 60.0, 1000
# Memory a real site needs on this machine: a warm trainer ~330 MB PSS and its SuperNode ~105 MB once settled, but
# 30 sites starting took 17.7 GB of available memory (about 590 MB a site), plus a ClientApp process per message
# (~100 MB). The 30-SuperNode part starts only with this much available per site, plus a margin, and stops
# (everything it started, by PID) when the machine, shared with other work, falls below the margin between waves.
PER_SITE_MB, MARGIN_MB = 650, 2048


class ShortOfMemory(RuntimeError):
    """The machine has too little memory left to go on without pushing other work out."""


def memory_guard(margin_mb: int = MARGIN_MB) -> None:
    available = mem_available_mb()
    if available < margin_mb:
        raise ShortOfMemory(f"{available} MB available, below the {margin_mb} MB margin: stopped")


def robust_default() -> str:
    """The contracts' default strategy; if that is FedAvg itself, the project's robust rule."""
    from fl.strategies import STRATEGIES
    from mledge.contracts import DEFAULT_STRATEGY

    if DEFAULT_STRATEGY != "fedavg" or "mledge-robust" not in STRATEGIES:
        return DEFAULT_STRATEGY
    return "mledge-robust"


def make_stores(root: Path, count: int, batches: int, rows: int, prefix: str = "sim") -> dict[str, Path]:
    """``count`` sites with their own generated stores; each site's profile is one of the three plants' with a
    seed of its own (non-IID like the demo's sites)."""
    from mledge.onsite.profiles import PROFILES
    from mledge.onsite.store import append_generated_batch, batch_paths

    bases = list(PROFILES.values())
    stores = {}
    for i in range(count):
        name = f"{prefix}-{i:04d}"
        profile = replace(bases[i % len(bases)], name=name, seed=10_000 + i)
        stores[name] = root / name
        while len(batch_paths(stores[name])) < batches:
            append_generated_batch(stores[name], profile, rows=rows)
    return stores


# --- 1. simulation: one configuration per process ------------------------------------------------------------


def simulate(stores: dict[str, Path], strategy_name: str, rounds: int) -> dict[str, Any]:
    """The ServerApp's rounds over ``stores`` on the in-process grid; runs in a process of its own."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord

    import fl.clientapp as clientapp
    from fl.model import build_model
    from fl.serverapp import train_rounds
    from fl.simulation.harness import InProcessGrid
    from fl.strategies import MemoryStateStore, build_strategy

    torch.set_num_threads(1)
    # Node ids from 2: 1 is the SuperLink's.
    nodes = {i + 2: {"site": site, "data-dir": str(store)} for i, (site, store) in enumerate(stores.items())}
    client_s = 0.0

    def app(message: Any, context: Any) -> Any:
        nonlocal client_s
        started = time.perf_counter()
        try:
            return clientapp.app(message, context)
        finally:
            client_s += time.perf_counter() - started

    ends: dict[int, float] = {}
    cpu_ends: dict[int, float] = {}  # this process's CPU seconds: what a round costs, whatever else the machine runs

    def sink(metrics: dict[str, float], step: int) -> None:
        if any(k.endswith("/aggregation_weight") for k in metrics):
            ends[step] = time.perf_counter()
            cpu_ends[step] = time.process_time()

    strategy = build_strategy(strategy_name, min_nodes=len(stores), state=MemoryStateStore())
    with InProcessGrid(app, nodes) as grid:
        began, cpu_began = time.perf_counter(), time.process_time()
        train_rounds(
            grid, strategy, ArrayRecord(build_model(seed=0).state_dict()), rounds=rounds,
            train_config=ConfigRecord({"local-epochs": 2, "learning-rate": 0.005}),
            min_replies=max(1, len(stores) // 2), timeout=3600.0, sink=sink, node_wait=0.0,
        )
    marks = [began, *(ends[r] for r in sorted(ends))]
    per_round = [round(b - a, 3) for a, b in zip(marks, marks[1:], strict=False)]
    counted = per_round[1:] or per_round
    cpu_marks = [cpu_began, *(cpu_ends[r] for r in sorted(cpu_ends))]
    cpu_per_round = [round(b - a, 3) for a, b in zip(cpu_marks, cpu_marks[1:], strict=False)]
    return {
        "sites": len(stores),
        "strategy": strategy_name,
        "rounds": rounds,
        "round_s": per_round,
        "median_round_s": round(statistics.median(counted), 3),
        "cpu_s_per_round": cpu_per_round,
        "median_round_cpu_s": round(statistics.median(cpu_per_round[1:] or cpu_per_round), 3),
        "clientapp_s_total": round(client_s, 2),
        "server_s_total": round(sum(per_round) - client_s, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def run_simulation(data: Path, sizes: list[int], rounds: int) -> list[dict[str, Any]]:
    largest = max(sizes)
    print(f"== simulation: generating {largest} site stores ({SIM_BATCHES} x {SIM_ROWS} rows)", flush=True)
    started = time.monotonic()
    make_stores(data, largest, SIM_BATCHES, SIM_ROWS)
    print(f"   generated in {time.monotonic() - started:.0f}s", flush=True)
    results = []
    for strategy in ("fedavg", robust_default()):
        for size in sizes:
            print(f"== simulation: {size} sites, {strategy}, {rounds} rounds", flush=True)
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            done = subprocess.run(
                [sys.executable, "-m", "bench.scale", "--one", str(size), "--strategy", strategy,
                 "--rounds", str(rounds), "--data", str(data)],
                capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1],
            )
            if done.returncode != 0:
                results.append({"sites": size, "strategy": strategy, "error": done.stderr[-2000:]})
                print(f"   failed: {done.stderr[-500:]}", flush=True)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
            results.append(result)
            print(f"   median {result['median_round_s']} s per round, peak {result['peak_rss_mb']} MB", flush=True)
    return results


# --- 2. 30 real SuperNodes ------------------------------------------------------------------------------------


def mem_available_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def _summary(values: list[int]) -> dict[str, float]:
    return {"median": round(statistics.median(values) / 1024, 1), "max": round(max(values) / 1024, 1)}


def run_supernodes(root: Path, count: int, rounds: int) -> dict[str, Any]:
    from bench.federation import Federation, load_average

    needed = count * PER_SITE_MB + MARGIN_MB
    available = mem_available_mb()
    base = {"supernodes": count, "rounds": rounds, "store": f"{NODE_BATCHES} batches x {NODE_ROWS} rows each",
            "mem_available_mb_before": available, "mem_needed_mb": needed}
    if available < needed:
        return {**base, "status": "not run: not enough free memory on this machine"}
    print(f"== {count} real SuperNodes with their trainers, {rounds} rounds", flush=True)
    stores = make_stores(root / "sites", count, NODE_BATCHES, NODE_ROWS, prefix="node")
    load_before = load_average()
    federation = Federation(root, stores, trainers=True, name=f"supernodes-{count}")
    stopped: dict[str, Any] = {}

    def guard() -> None:
        try:
            memory_guard()
        except ShortOfMemory:
            stopped["sites_up"] = sum(1 for c in federation.components if c.name.startswith("trainer-"))
            stopped["memory_mb"] = {k: round(v.get("pss", 0) / 1024, 1) for k, v in federation.memory().items()}
            raise

    try:
        with federation:
            started = time.monotonic()
            federation.start(timeout=1800.0, wave=5, before_wave=guard)
            start_s = time.monotonic() - started
            guard()
            times = federation.run({"num-server-rounds": rounds, "min-nodes": count, "min-replies": count // 2},
                                   timeout=3600.0)
            memory = federation.memory()
    except ShortOfMemory as exc:
        return {**base, "status": f"not completed: {exc}", "when_stopped": stopped}
    kinds = {kind: [m for name, m in memory.items() if name.startswith(kind) and m]
             for kind in ("supernode-", "trainer-")}
    return {
        **base,
        "status": times.status,
        "start_s": round(start_s, 1),
        "round_s": times.round_s,
        "median_round_s": times.median_round_s,
        "run_wall_s": times.wall_s,
        "memory_mb_per_supernode": {k: _summary([m[k] for m in kinds["supernode-"]]) for k in ("rss", "pss")},
        "memory_mb_per_trainer": {k: _summary([m[k] for m in kinds["trainer-"]]) for k in ("rss", "pss")},
        "superlink_memory_mb": {k: round(v / 1024, 1) for k, v in memory.get("superlink", {}).items()},
        "cpu_s": {"supernodes_with_clientapps": round(sum(v for k, v in times.cpu_s.items()
                                                          if k.startswith("supernode-")), 1),
                  "trainers": round(sum(v for k, v in times.cpu_s.items() if k.startswith("trainer-")), 1),
                  "superlink_with_serverapp": times.cpu_s.get("superlink")},
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--supernodes", type=int, default=30, help="real SuperNodes (0: skip that part)")
    parser.add_argument("--skip-simulation", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child: one simulated configuration
    parser.add_argument("--strategy", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        stores = {f"sim-{i:04d}": args.data / f"sim-{i:04d}" for i in range(args.one)}
        print(json.dumps(simulate(stores, args.strategy, args.rounds)))
        return 0
    root = Path(tempfile.mkdtemp(prefix="mledge-scale-", dir="/tmp"))  # short: the trainers' socket paths
    document: dict[str, Any] = {
        "benchmark": "bench-scale",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "engine": "fl/simulation/harness.py InProcessGrid (Flower's run_simulation needs Ray, not in the lock)",
    }
    try:
        signal.signal(signal.SIGTERM, _stop)  # a stopped benchmark still stops what it started
        if not args.skip_simulation:
            simulation = run_simulation(root / "sim", args.sizes, args.rounds)
            largest = [r for r in simulation if r.get("sites") == TARGET_SITES and "median_round_s" in r]
            document["simulation"] = {
                "setup": {"store": f"{SIM_BATCHES} batch x {SIM_ROWS} rows per site", "local_epochs": 2,
                          "rounds": args.rounds, "statistic": "median of rounds 2..R",
                          "torch_threads": 1, "sites": "one after another in one process"},
                "results": simulation,
                "target": {"target": f"{TARGET_SITES} sites per round in <= {TARGET_S} s",
                           "measured": {r["strategy"]: r["median_round_s"] for r in largest},
                           "met": bool(largest) and all(r["median_round_s"] <= TARGET_S for r in largest)},
            }
            _write(args.out, document)  # kept, whatever happens to the next part
        if args.supernodes:
            document["supernodes"] = run_supernodes(root / "nodes", args.supernodes, args.rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _write(args.out, document)
    print(f"written to {args.out}")
    return 0


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def _write(path: Path, document: dict[str, Any]) -> None:
    previous = json.loads(path.read_text()) if path.exists() else {}
    for key in ("simulation", "supernodes"):
        if key not in document and key in previous:
            document[key] = {**previous[key], "note": "kept from an earlier run"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
