"""Aggregation speed: one ``aggregate_train`` call, our strategies against Flower's built-ins and a NumPy mean.

``python -m bench.aggregation_speed`` (``make bench-speed``) writes ``bench/results/aggregation_speed.json`` and
``aggregation_speed.md``: for n in {20, 100} clients and d in {1e5, 1e6, 1e7} float32 parameters, the median
seconds of a few calls per contender and its ratio to the NumPy weighted mean of the same inputs.

- Inputs: one set of n reply Messages per cell (``fl.simulation.harness.make_reply``), each client's vector the
  same base plus its own noise, split over four arrays like a small model's layers. Every call gets fresh
  ArrayRecords over the same payload bytes (Flower's FedMedian, FedTrimmedAvg and Bulyan empty the records they
  read, so a record cannot be aggregated twice; sharing the bytes costs no copy).
- Contenders: every rule of ``fl.strategies.build_strategy``; Flower's FedAvg, Krum, MultiKrum, FedMedian,
  FedTrimmedAvg and Bulyan, each twice: as they are, and under ``gc.freeze()`` (Flower's
  ``to_numpy_ndarrays(keep_input=False)`` runs a full ``gc.collect()`` per client and array, which with torch
  imported costs far more than the arithmetic; freezing the long-lived objects makes those collections cheap);
  and the yardstick: Σ w_i x_i over the clients' decoded arrays (views of the payloads) in NumPy.
- Rules that need f assume 20 % of the clients (Multi-Krum keeps n - f, trimmed mean trims 20 % per side).
- Only ``aggregate_train`` is timed; the global model is handed over before (a ServerApp does it when it sends the
  round's instructions). Each measurement is the median of ``--repeats`` calls, fewer when one call is slow.
- A cell is skipped, with the reason recorded, when its inputs and a contender's working copies would not fit in
  the memory budget (n = 100, d = 1e7 is 4 GB of payload before any copy), or when the contender's time, scaled
  from the smaller cells, would exceed the per-call limit.
- Where torch sees a CUDA device, our strategies aggregate on it by themselves (fl/strategies); the record says
  which device was present.
- BLAS runs single-threaded unless ``--blas-threads`` says otherwise: on a busy two-core machine OpenBLAS's
  spinning threads fight torch's OpenMP pool and other load (Flower's MultiKrum measured 7x slower with two).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.serverapp import strategy as flower
from threadpoolctl import threadpool_limits

from fl.simulation.harness import make_reply
from fl.strategies import STRATEGIES, build_strategy
from fl.strategies.arrays import array_view

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
CLIENTS = (20, 100)
PARAMETERS = (100_000, 1_000_000, 10_000_000)
ASSUMED_FRACTION = 0.2
TARGET_CELL = (100, 1_000_000)
LAYERS = 4
NUMPY_MEAN = "numpy-weighted-mean"
FLOWER_RULES = ("FedAvg", "Krum", "MultiKrum", "FedMedian", "FedTrimmedAvg", "Bulyan")
# Working copies a contender makes, in units of the n x d float32 inputs (upper bounds read off their code).
WORKING_COPIES = {
    "ours": 2.5,  # one stacked matrix, plus a restricted copy (reputation) and chunk buffers
    "flower:FedAvg": 0.1,
    "flower:Krum": 2.0,  # a list of flattened vectors, then their stack
    "flower:MultiKrum": 2.0,
    "flower:FedMedian": 2.0,
    "flower:FedTrimmedAvg": 2.0,
    "flower:Bulyan": 3.0,
    NUMPY_MEAN: 0.0,
}

log = logging.getLogger("bench.aggregation_speed")


@dataclass(frozen=True)
class Contender:
    """One way to aggregate: ``make()`` builds a fresh strategy (None for the NumPy yardstick)."""

    name: str
    implementation: str  # ours | flower | numpy
    gc_frozen: bool
    make: Callable[[], object] | None

    @property
    def label(self) -> str:
        return f"{self.name} (gc frozen)" if self.gc_frozen else self.name

    @property
    def memory_key(self) -> str:
        return "ours" if self.implementation == "ours" else self.name


def assumed_f(n: int) -> int:
    return round(ASSUMED_FRACTION * n)


def our_params(name: str, n: int) -> dict:
    f = assumed_f(n)
    if name in ("krum", "bulyan"):
        return {"num_malicious_nodes": f}
    if name == "multikrum":
        return {"num_malicious_nodes": f, "num_nodes_to_select": n - f}
    if name == "fedtrimmedavg":
        return {"beta": ASSUMED_FRACTION}
    return {}


def flower_rule(name: str, n: int) -> object:
    f = assumed_f(n)
    common = {"min_available_nodes": 2, "min_train_nodes": 2, "fraction_evaluate": 0.0}
    if name == "FedAvg":
        return flower.FedAvg(**common)
    if name == "Krum":
        return flower.Krum(num_malicious_nodes=f, **common)
    if name == "MultiKrum":
        return flower.MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f, **common)
    if name == "FedMedian":
        return flower.FedMedian(**common)
    if name == "FedTrimmedAvg":
        return flower.FedTrimmedAvg(beta=ASSUMED_FRACTION, **common)
    if name == "Bulyan":
        return flower.Bulyan(num_malicious_nodes=f, **common)
    raise ValueError(f"unknown Flower rule {name!r}")


def contenders(n: int, ours: Sequence[str], flowers: Sequence[str]) -> list[Contender]:
    out = [Contender(NUMPY_MEAN, "numpy", False, None)]
    out += [
        Contender(name, "ours", False, lambda name=name: build_strategy(name, **our_params(name, n))) for name in ours
    ]
    for name in flowers:
        for frozen in (False, True):
            out.append(Contender(f"flower:{name}", "flower", frozen, lambda name=name: flower_rule(name, n)))
    return out


# --- inputs ---------------------------------------------------------------------------------------------------


def layer_sizes(d: int) -> list[int]:
    """d split over LAYERS arrays (a model's layers), the remainder in the first."""
    base = d // LAYERS
    return [base + d - base * LAYERS] + [base] * (LAYERS - 1)


def client_replies(n: int, d: int, seed: int) -> tuple[list[Message], ArrayRecord]:
    """n replies whose vectors are a shared base plus per-client noise, and the global model (the base)."""
    rng = np.random.default_rng(seed)
    sizes = layer_sizes(d)
    base = rng.standard_normal(d, dtype=np.float32)
    global_record = _record(base, sizes)
    replies = []
    for i in range(n):
        vector = base + np.float32(0.01) * rng.standard_normal(d, dtype=np.float32)
        replies.append(make_reply(f"client-{i:03d}", 1000 + i, _record(vector, sizes), int(rng.integers(50, 500))))
        del vector
    return replies, global_record


def _record(vector: np.ndarray, sizes: list[int]) -> ArrayRecord:
    arrays, start = {}, 0
    for k, size in enumerate(sizes):
        arrays[f"layer{k}"] = Array(np.ascontiguousarray(vector[start : start + size]))
        start += size
    return ArrayRecord(arrays)


def fresh(replies: Sequence[Message]) -> list[Message]:
    """New reply Messages with new ArrayRecords over the same payload bytes (no copy of the data)."""
    out = []
    for reply in replies:
        content = RecordDict()
        for key, value in reply.content.items():
            if isinstance(value, ArrayRecord):
                value = ArrayRecord(
                    {
                        k: Array(dtype=a.dtype, shape=tuple(a.shape), stype=a.stype, data=a.data)
                        for k, a in value.items()
                    }
                )
            content[key] = value
        out.append(Message(metadata=reply.metadata, content=content))
    return out


def numpy_weighted_mean(replies: Sequence[Message]) -> list[np.ndarray]:
    """The yardstick: Σ w_i x_i / Σ w_i per array, over views of the payloads (no decoding copies)."""
    weights = np.array([float(r.content["metrics"]["num-examples"]) for r in replies])
    weights = (weights / weights.sum()).astype(np.float32)
    first = replies[0].content["arrays"]
    out = [np.zeros(a.shape, np.float32) for a in first.values()]
    scratch = [np.empty(a.shape, np.float32) for a in first.values()]
    for w, reply in zip(weights, replies, strict=True):
        for acc, tmp, array in zip(out, scratch, reply.content["arrays"].values(), strict=True):
            np.multiply(array_view(array), w, out=tmp)
            acc += tmp
    return out


# --- measuring ------------------------------------------------------------------------------------------------


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux); a conservative 8 GB elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def time_once(contender: Contender, replies: Sequence[Message], global_record: ArrayRecord) -> float:
    batch = fresh(replies)
    if contender.make is None:
        started = time.perf_counter()
        numpy_weighted_mean(batch)
        return time.perf_counter() - started
    strategy = contender.make()
    if hasattr(strategy, "set_global_model"):
        strategy.set_global_model(global_record)
    if contender.gc_frozen:
        gc.collect()
        gc.freeze()
    try:
        started = time.perf_counter()
        arrays, _ = strategy.aggregate_train(1, batch)
        seconds = time.perf_counter() - started
    finally:
        if contender.gc_frozen:
            gc.unfreeze()
    if arrays is None:
        raise RuntimeError(f"{contender.label} aggregated nothing")
    return seconds


def measure(
    contender: Contender, replies: Sequence[Message], global_record: ArrayRecord, repeats: int, slow_s: float
) -> list[float]:
    """Up to ``repeats`` timings; once a call takes longer than ``slow_s``, one more at most (its median is enough)."""
    times: list[float] = []
    for _ in range(repeats):
        times.append(time_once(contender, replies, global_record))
        if times[-1] > slow_s and len(times) >= 2:
            break
        if times[-1] > 4 * slow_s:
            break
    return times


def predicted_seconds(history: dict[tuple[str, int], tuple[int, float]], contender: Contender, n: int, d: int):
    """This contender's time at (n, d), scaled linearly in d from its largest measured d at the same n."""
    known = history.get((contender.label, n))
    if known is None:
        return None
    d0, seconds = known
    return seconds * d / d0


@dataclass(frozen=True)
class Settings:
    clients: tuple[int, ...]
    parameters: tuple[int, ...]
    ours: tuple[str, ...]
    flowers: tuple[str, ...]
    repeats: int
    max_call_s: float
    memory_fraction: float
    max_memory_gb: float
    seed: int
    blas_threads: int
    budget_s: float


def run(settings: Settings, on_result: Callable[[list[dict]], None] = lambda results: None) -> list[dict]:
    """Every cell, cheapest first (d outer, n inner), so a time budget cuts the costliest cells; ``on_result`` sees
    the results so far after each measurement (the caller writes them, so a killed run keeps what it measured)."""
    results: list[dict] = []
    history: dict[tuple[str, int], tuple[int, float]] = {}
    device = _device()
    deadline = time.monotonic() + settings.budget_s
    for d in settings.parameters:
        for n in settings.clients:
            payload = n * d * 4
            budget = min(settings.memory_fraction * available_bytes(), settings.max_memory_gb * 2**30)
            rows = contenders(n, settings.ours, settings.flowers)
            if payload * 1.1 > budget:
                reason = f"inputs alone are {payload / 2**30:.1f} GiB, over the {budget / 2**30:.1f} GiB budget"
                results += [_skipped(c, n, d, reason, device) for c in rows]
                continue
            if time.monotonic() > deadline:
                results += [_skipped(c, n, d, "the benchmark's time budget was spent", device) for c in rows]
                continue
            log.info("n=%d d=%.0e: building %0.2f GiB of replies", n, d, payload / 2**30)
            replies, global_record = client_replies(n, d, settings.seed)
            yardstick = None
            for contender in rows:
                reason = _reason_to_skip(contender, n, d, payload, budget, history, settings, deadline)
                if reason:
                    results.append(_skipped(contender, n, d, reason, device))
                    continue
                try:
                    times = measure(contender, replies, global_record, settings.repeats, settings.max_call_s / 4)
                except Exception as err:  # a rule that cannot run this cell is a result, not a crash
                    log.exception("%s failed at n=%d d=%d", contender.label, n, d)
                    results.append(_skipped(contender, n, d, f"failed: {type(err).__name__}: {err}", device))
                    continue
                seconds = statistics.median(times)
                history[(contender.label, n)] = (d, seconds)
                if contender.make is None:
                    yardstick = seconds
                results.append(
                    _result(contender, n, d, device, seconds=seconds, times=times, yardstick=yardstick)
                )
                on_result(results)
                log.info(
                    "n=%d d=%.0e %-36s %8.4f s  %s", n, d, contender.label, seconds,
                    f"{seconds / yardstick:.1f}x" if yardstick else "",
                )
            del replies, global_record
            gc.collect()
    return results


def _reason_to_skip(
    contender: Contender, n: int, d: int, payload: int, budget: float, history: dict, settings: Settings,
    deadline: float,
) -> str | None:
    need = payload * (1 + WORKING_COPIES[contender.memory_key])
    if need > budget:
        return f"needs about {need / 2**30:.1f} GiB with its working copies, budget {budget / 2**30:.1f}"
    if time.monotonic() > deadline:
        return "the benchmark's time budget was spent"
    guess = predicted_seconds(history, contender, n, d)
    # The targets' cell gets a larger allowance: it is the one the targets are about.
    limit = settings.max_call_s * (5 if (n, d) == TARGET_CELL else 1)
    if guess is not None and guess > limit:
        return f"one call would take about {guess:.0f} s (scaled from its time at d/10), over the {limit:.0f} s limit"
    return None


def _result(
    contender: Contender,
    n: int,
    d: int,
    device: str,
    *,
    seconds: float | None = None,
    times: list[float] | None = None,
    yardstick: float | None = None,
    skipped: str | None = None,
) -> dict:
    """One cell of the results: a measurement, or the reason it was skipped."""
    times = times or []
    return {
        "n_clients": n,
        "parameters": d,
        "contender": contender.label,
        "rule": contender.name,
        "implementation": contender.implementation,
        "gc_frozen": contender.gc_frozen,
        "seconds": seconds,
        "repeats": len(times),
        "all_seconds": [round(t, 6) for t in times],
        "ratio_to_numpy_mean": seconds / yardstick if seconds is not None and yardstick else None,
        "device": device if contender.implementation == "ours" else "cpu",
        "skipped": skipped,
    }


def _skipped(contender: Contender, n: int, d: int, reason: str, device: str) -> dict:
    return _result(contender, n, d, device, skipped=reason)


def _device() -> str:
    try:
        import torch
    except ImportError:
        return "cpu"
    return f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"


# --- targets and report ---------------------------------------------------------------------------------------


def targets(results: list[dict]) -> dict:
    """FedQV + reputation <= 3x the NumPy mean; ReputationResidual <= 2x Flower's MultiKrum (n = 100, d = 1e6).

    Plain FedQV's ratio is reported too (it was the earlier target)."""
    n, d = TARGET_CELL
    cell = {r["contender"]: r for r in results if r["n_clients"] == n and r["parameters"] == d}

    def seconds(label: str) -> float | None:
        row = cell.get(label)
        return row["seconds"] if row else None

    numpy_s, fedqv_s, fqr_s = seconds(NUMPY_MEAN), seconds("fedqv"), seconds("fedqv-reputation")
    rr_s, mk_s = seconds("reputation-residual"), seconds("flower:MultiKrum")
    mk_frozen = seconds("flower:MultiKrum (gc frozen)")
    fedqv_ratio = fedqv_s / numpy_s if fedqv_s and numpy_s else None
    fqr_ratio = fqr_s / numpy_s if fqr_s and numpy_s else None
    rr_ratio = rr_s / mk_s if rr_s and mk_s else None
    return {
        "cell": {"n_clients": n, "parameters": d},
        "fedqv_reputation_vs_numpy_mean": {"ratio": fqr_ratio, "allowed": 3.0, "met": _within(fqr_ratio, 3.0)},
        "fedqv_vs_numpy_mean": {"ratio": fedqv_ratio},
        "reputation_residual_vs_flower_multikrum": {
            "ratio": rr_ratio,
            "ratio_vs_gc_frozen_multikrum": rr_s / mk_frozen if rr_s and mk_frozen else None,
            "allowed": 2.0,
            "met": _within(rr_ratio, 2.0),
        },
    }


def _within(ratio: float | None, allowed: float) -> bool | None:
    """Whether a measured ratio is within its allowance; None when the cell was not measured."""
    return None if ratio is None else ratio <= allowed


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("met" if met else "**not met**")


def markdown(results: list[dict], checks: dict, environment: dict) -> str:
    cells = list(dict.fromkeys((r["n_clients"], r["parameters"]) for r in results))
    labels = list(dict.fromkeys(r["contender"] for r in results))
    index = {(r["contender"], r["n_clients"], r["parameters"]): r for r in results}

    def show(r: dict | None) -> str:
        if r is None or r["seconds"] is None:
            return "skipped" if r else ""
        ratio = r["ratio_to_numpy_mean"]
        return f"{r['seconds']:.4g} s ({ratio:.1f}x)" if ratio else f"{r['seconds']:.4g} s"

    lines = [
        "# Aggregation speed",
        "",
        f"One `aggregate_train` call, median seconds and (ratio to the NumPy weighted mean). {environment['cpus']} "
        f"CPUs, device {environment['device']}, Flower {environment['flwr']}, NumPy {environment['numpy']}. "
        "Skipped cells and their reasons are in `aggregation_speed.json`.",
        "",
        "| contender | " + " | ".join(f"n={n}, d={d:.0e}" for n, d in cells) + " |",
        "|---|" + "---|" * len(cells),
    ]
    for label in labels:
        lines.append(f"| {label} | " + " | ".join(show(index.get((label, n, d))) for n, d in cells) + " |")
    fqr, fq = checks["fedqv_reputation_vs_numpy_mean"], checks["fedqv_vs_numpy_mean"]
    rr = checks["reputation_residual_vs_flower_multikrum"]
    lines += [
        "",
        "## Targets (n = 100, d = 1e6)",
        "",
        f"- FedQV + reputation <= 3x the NumPy mean: {_ratio(fqr['ratio'])} -> {_verdict(fqr['met'])} "
        f"(plain FedQV: {_ratio(fq['ratio'])})",
        f"- ReputationResidual <= 2x Flower's MultiKrum: {_ratio(rr['ratio'])} -> {_verdict(rr['met'])} "
        "(against MultiKrum under gc.freeze: "
        f"{_ratio(rr['ratio_vs_gc_frozen_multikrum'])})",
    ]
    return "\n".join(lines) + "\n"


def _ratio(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.2f}x"


def environment() -> dict:
    import flwr

    try:
        import torch

        torch_version, cuda = torch.__version__, torch.cuda.is_available()
    except ImportError:
        torch_version, cuda = None, False
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "flwr": flwr.__version__ if hasattr(flwr, "__version__") else "1.41",
        "torch": torch_version,
        "cuda": cuda,
        "device": _device(),
        "memory_available_gib": round(available_bytes() / 2**30, 1),
    }


# --- command line ---------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.aggregation_speed", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="n=20, d=1e5 only, into aggregation_speed-quick.*")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--clients", nargs="+", type=int, help="n values (default 20 100)")
    parser.add_argument("--parameters", nargs="+", type=float, help="d values (default 1e5 1e6 1e7)")
    parser.add_argument("--ours", nargs="+", choices=list(STRATEGIES), help="our rules (default all)")
    parser.add_argument("--flower", nargs="+", choices=FLOWER_RULES, help="Flower's rules (default all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-call-s", type=float, default=60.0, help="skip a call predicted to take longer")
    parser.add_argument("--memory-fraction", type=float, default=0.5, help="share of MemAvailable to use at most")
    parser.add_argument("--max-memory-gb", type=float, default=10.0, help="absolute memory cap (shared machine)")
    parser.add_argument(
        "--blas-threads", type=int, default=1,
        help="OpenBLAS threads (default 1: on a busy two-core machine its spinning threads fight torch's OpenMP pool)",
    )
    parser.add_argument(
        "--budget-s", type=float, default=900.0, help="stop starting measurements after this many seconds (15 min)"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # Flower logs every aggregate_train at INFO and warns at every FedAvg built with fraction_evaluate=0.
    logging.getLogger("flwr").setLevel(logging.ERROR)
    import torch  # noqa: F401 - the ServerApp process has torch loaded: gc.collect() costs what it costs there

    threadpool_limits(args.blas_threads, user_api="blas")
    settings = Settings(
        clients=tuple(args.clients or ((20,) if args.quick else CLIENTS)),
        parameters=tuple(int(p) for p in (args.parameters or ((1e5,) if args.quick else PARAMETERS))),
        ours=tuple(args.ours or STRATEGIES),
        flowers=tuple(args.flower or FLOWER_RULES),
        repeats=args.repeats,
        max_call_s=args.max_call_s,
        memory_fraction=args.memory_fraction,
        max_memory_gb=args.max_memory_gb,
        seed=args.seed,
        blas_threads=args.blas_threads,
        budget_s=args.budget_s,
    )
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    stem = "aggregation_speed-quick" if args.quick else "aggregation_speed"
    env = environment()
    started = time.perf_counter()

    def write(results: list[dict], complete: bool = False) -> None:
        checks = targets(results)
        document = {
            "environment": env,
            "settings": {**settings.__dict__, "assumed_malicious_fraction": ASSUMED_FRACTION},
            "complete": complete,
            "seconds_total": round(time.perf_counter() - started, 1),
            "targets": checks,
            "results": results,
        }
        (out / f"{stem}.json").write_text(json.dumps(document, indent=1, default=_jsonable) + "\n")
        (out / f"{stem}.md").write_text(markdown(results, checks, env))

    results = run(settings, on_result=write)
    write(results, complete=True)
    log.info("done in %.1f min -> %s", (time.perf_counter() - started) / 60, out / f"{stem}.json")
    return 0


def _jsonable(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


if __name__ == "__main__":
    raise SystemExit(main())
