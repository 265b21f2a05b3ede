"""Drift detection: detection delay and false alarms on seeded streams, and the cost of one evaluation.

``python -m bench.drift`` (``make bench-drift``) writes ``bench/results/drift.json`` and ``drift.md``.

Detection (the whole per-batch decision, ``evaluate_batch`` below: ``measure_batch`` at the site, then
``drift.decision.decide_batch`` at the platform, i.e. Evidently's data drift with our stat test per column, the
stratified permutation test on the champion's errors, and Holm within the site at alpha / 3 sites):
- scenarios: ``plant_b-sensor-offset`` and ``plant_c-product-mix`` (mledge/onsite/profiles.py SCENARIOS, onset
  batch 5) and ``clean`` (no drift; the streams rotate over the three sites);
- each of ``--streams`` streams per scenario is the site's generator with its own seed (profile seed x 1000 +
  stream); batches 1-3 are the reference window, a model trained on their rows that are not held out stands in
  for the champion (the federated champion is trained the same way on more sites);
- batches from 4 on are evaluated one by one, like the DAG does after each collection. A drift stream stops at
  its first alarm at or after the onset (delay = that batch - onset) or after ``--after-onset`` batches
  (undetected); clean streams run to batch ``--clean-batches`` + 3. Every alarm on a batch before the onset or
  in a clean stream is a false alarm.

Cost: per site a reference window and a current batch of ``--timing-rows`` rows each (3 sites); "ours" is one
``evaluate_batch`` with the reports saved (HTML + JSON), the concept test included; "bare" is
``Report([DataDriftPreset()]).run(...)`` on the same frames with Evidently's default tests and nothing saved.
The ratio is the sum over the sites; also reported against a bare report with our per-column tests. Median of
``--repeats`` runs, alternating the order.

Targets (issue 4): delay <= 2 batches for the scheduled shifts, false alarms <= 5 % of clean batches, overhead
<= 1.2x the bare report.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from drift.decision import decide_batch
from fl.model import build_model
from mledge.onsite.data_drift import COLUMN_METHODS
from mledge.onsite.drift_evaluation import measure_batch
from mledge.onsite.features import features, labels
from mledge.onsite.generator import generate_batch
from mledge.onsite.profiles import PROFILES as SITES
from mledge.onsite.profiles import SCENARIOS, ScheduledDrift, SiteProfile
from mledge.onsite.store import is_held_out
from mledge.onsite.training import train_local

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
REFERENCE_BATCHES = 3
N_SITES = 3
DRIFT_SCENARIOS = ("plant_b-sensor-offset", "plant_c-product-mix")
TARGETS = {"max_delay_batches": 2, "max_false_alarm_rate": 0.05, "max_overhead": 1.2}

log = logging.getLogger("bench.drift")


def evaluate_batch(reference, current, model, *, n_sites: int, alpha: float, **measure) -> dict:
    """One batch as the DAG evaluates it: the site measures, the platform corrects and decides."""
    measured = measure_batch(reference, current, model, alpha=alpha, **measure)
    return decide_batch(measured["data"], measured["concept"], alpha, n_sites)


def stream_profile(site: str, stream: int) -> SiteProfile:
    """The site's profile with a seed of its own for this stream."""
    base = SITES[site]
    return replace(base, seed=base.seed * 1000 + stream)


def generate(profile: SiteProfile, batches: int, drifts: Sequence[ScheduledDrift], rows: int) -> list[pd.DataFrame]:
    state, frames = None, []
    for index in range(1, batches + 1):
        frame, state = generate_batch(profile, index, state, rows=rows, drifts=drifts)
        frames.append(frame)
    return frames


def champion_stand_in(reference: pd.DataFrame, seed: int, epochs: int):
    """A model trained on the reference window's rows that are not held out, as a site trains."""
    train = reference[~is_held_out(reference)]
    model = build_model(seed=seed)
    train_local(model, features(train), labels(train), epochs=epochs, lr=0.005, seed=seed)
    return model


def run_stream(scenario: str, stream: int, args: argparse.Namespace) -> dict:
    """Evaluate one seeded stream batch by batch; returns its alarms, delay and false alarms."""
    drifts = SCENARIOS[scenario]
    site = drifts[0].site if drifts else sorted(SITES)[stream % len(SITES)]
    onset = drifts[0].onset_batch if drifts else None
    last = onset + args.after_onset - 1 if onset else REFERENCE_BATCHES + args.clean_batches
    frames = generate(stream_profile(site, stream), last, drifts, args.rows)
    reference = pd.concat(frames[:REFERENCE_BATCHES], ignore_index=True)
    model = champion_stand_in(reference, seed=stream, epochs=args.epochs)
    evaluated, delay = [], None
    for index in range(REFERENCE_BATCHES + 1, last + 1):
        result = evaluate_batch(
            reference, frames[index - 1], model, n_sites=N_SITES, alpha=args.alpha,
            simulations=args.simulations, seed=[stream, index],
        )
        drifted_after_onset = onset is not None and index >= onset
        evaluated.append(
            {
                "batch": index,
                "clean": not drifted_after_onset,
                "alarm": result["drift"],
                "data_columns": result["data"]["drifted_columns"],
                "concept": result["concept"]["decision"] == "drift",
                "concept_p_value": result["concept"]["raw_p_value"],
                "min_data_p_value": min(c["p_value"] for c in result["data"]["columns"].values()),
            }
        )
        if drifted_after_onset and result["drift"]:
            delay = index - onset
            break
    return {
        "scenario": scenario,
        "stream": stream,
        "site": site,
        "onset": onset,
        "delay": delay,
        "detected": delay is not None,
        "clean_batches": sum(e["clean"] for e in evaluated),
        "false_alarms": sum(e["clean"] and e["alarm"] for e in evaluated),
        "batches": evaluated,
    }


def summarise(streams: list[dict]) -> dict:
    """Per scenario: detection rate and delays, false alarms on its clean batches, which test fired first."""
    by_scenario: dict[str, list[dict]] = {}
    for s in streams:
        by_scenario.setdefault(s["scenario"], []).append(s)
    summary = {}
    for scenario, items in by_scenario.items():
        clean = sum(s["clean_batches"] for s in items)
        alarms = sum(s["false_alarms"] for s in items)
        entry = {"streams": len(items), "clean_batches": clean, "false_alarms": alarms,
                 "false_alarm_rate": alarms / clean if clean else None}
        if items[0]["onset"] is not None:
            delays = [s["delay"] for s in items if s["detected"]]
            firing = [s["batches"][-1] for s in items if s["detected"]]
            entry.update(
                {
                    "detected": len(delays),
                    "detection_rate": len(delays) / len(items),
                    "delay_mean": statistics.fmean(delays) if delays else None,
                    "delay_median": statistics.median(delays) if delays else None,
                    "delay_max": max(delays) if delays else None,
                    "delays": [s["delay"] for s in items],
                    "found_by_data_drift": sum(bool(b["data_columns"]) for b in firing),
                    "found_by_concept_drift": sum(b["concept"] for b in firing),
                    "drifted_columns": sorted({c for b in firing for c in b["data_columns"]}),
                }
            )
        summary[scenario] = entry
    clean = sum(e["clean_batches"] for e in summary.values())
    alarms = sum(e["false_alarms"] for e in summary.values())
    summary["all clean batches"] = {"clean_batches": clean, "false_alarms": alarms,
                                    "false_alarm_rate": alarms / clean if clean else None}
    return summary


# --- cost ------------------------------------------------------------------------------------------------------


def bare_report(reference: pd.DataFrame, current: pd.DataFrame, methods: dict[str, str] | None) -> float:
    """Seconds of a bare Evidently data-drift report: the preset, run, nothing saved."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = list(COLUMN_METHODS)
    definition = DataDefinition(
        numerical_columns=[c for c in columns if c != "type"], categorical_columns=["type"]
    )
    started = time.perf_counter()
    preset = DataDriftPreset(columns=columns, per_column_method=methods or None)
    Report([preset]).run(
        current_data=Dataset.from_pandas(current[columns], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    return time.perf_counter() - started


def ours(reference: pd.DataFrame, current: pd.DataFrame, model, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        evaluate_batch(reference, current, model, report_dir=Path(tmp), n_sites=N_SITES, alpha=args.alpha,
                       simulations=args.simulations, seed=0)
        return time.perf_counter() - started


def cost(args: argparse.Namespace) -> dict:
    """One evaluation for 3 sites x ``timing_rows`` rows against a bare Evidently report on the same data."""
    sites = {}
    for site in sorted(SITES):
        reference, current = generate(stream_profile(site, 999), 2, (), args.timing_rows)
        model = champion_stand_in(reference.iloc[: 3 * args.rows], seed=0, epochs=args.epochs)
        sites[site] = (reference, current, model)
    contenders = {
        "ours": lambda r, c, m: ours(r, c, m, args),
        "bare_default": lambda r, c, m: bare_report(r, c, None),
        "bare_same_tests": lambda r, c, m: bare_report(r, c, COLUMN_METHODS),
    }
    for name, call in contenders.items():  # warm-up: first-call costs (imports, caches) are not the steady state
        call(*sites["plant_a"])
        log.info("cost: warmed up %s", name)
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for repeat in range(args.repeats):
        order = list(contenders) if repeat % 2 == 0 else list(reversed(contenders))
        for name in order:
            seconds[name].append(sum(contenders[name](*sites[site]) for site in sites))
        log.info("cost: repeat %d: %s", repeat + 1, {k: round(v[-1], 2) for k, v in seconds.items()})
    median = {name: statistics.median(v) for name, v in seconds.items()}
    return {
        "rows_per_site": {"reference": args.timing_rows, "current": args.timing_rows},
        "sites": len(sites),
        "repeats": args.repeats,
        "seconds": seconds,
        "median_seconds": median,
        "ratio_to_bare_default": median["ours"] / median["bare_default"],
        "ratio_to_bare_same_tests": median["ours"] / median["bare_same_tests"],
    }


# --- output ----------------------------------------------------------------------------------------------------


def verdict(summary: dict, timing: dict | None) -> dict:
    delays = {s: summary[s].get("delay_max") for s in DRIFT_SCENARIOS if s in summary}
    all_detected = all(summary[s]["detected"] == summary[s]["streams"] for s in DRIFT_SCENARIOS if s in summary)
    rate = summary["all clean batches"]["false_alarm_rate"]
    result = {
        "delay": {
            "max_delay_batches": delays,
            "every_stream_detected": all_detected,
            "met": all_detected and all(d is not None and d <= TARGETS["max_delay_batches"] for d in delays.values()),
        },
        "false_alarms": {"rate": rate, "met": rate is not None and rate <= TARGETS["max_false_alarm_rate"]},
    }
    if timing:
        result["overhead"] = {
            "ratio_to_bare_default": timing["ratio_to_bare_default"],
            "ratio_to_bare_same_tests": timing["ratio_to_bare_same_tests"],
            "met": timing["ratio_to_bare_default"] <= TARGETS["max_overhead"],
            "met_against_same_tests": timing["ratio_to_bare_same_tests"] <= TARGETS["max_overhead"],
        }
    return result


def _met(flag: bool) -> str:
    return "met" if flag else "**not met**"


def markdown(document: dict) -> str:
    summary, checks, timing = document["detection"], document["targets"], document.get("cost")
    cfg = document["settings"]
    lines = [
        "# Drift detection",
        "",
        f"{cfg['streams']} seeded streams per scenario, {cfg['rows']} rows per batch, reference = batches 1-3, "
        f"alpha {cfg['alpha']} shared by {N_SITES} sites (Holm within a site), {cfg['simulations']} simulations "
        f"for the concept test. {document['environment']['cpus']} CPUs; {document['seconds_total']:.0f} s in all.",
        "",
        "| scenario | streams | detected | delay (mean / max batches) | found by data / concept drift "
        "| clean batches | false alarms |",
        "|---|---|---|---|---|---|---|",
    ]
    for scenario, e in summary.items():
        if scenario == "all clean batches":
            continue
        detected = f"{e['detected']}/{e['streams']}" if "detected" in e else "-"
        delay = (f"{e['delay_mean']:.2f} / {e['delay_max']}" if e.get("delay_mean") is not None
                 else ("none detected" if "detected" in e else "-"))
        found = f"{e['found_by_data_drift']} / {e['found_by_concept_drift']}" if "detected" in e else "-"
        rate = f"{e['false_alarms']} ({e['false_alarm_rate']:.1%})" if e["clean_batches"] else "-"
        clean = e["clean_batches"]
        lines.append(f"| {scenario} | {e['streams']} | {detected} | {delay} | {found} | {clean} | {rate} |")
    total = summary["all clean batches"]
    lines += [
        "",
        f"All clean batches: {total['false_alarms']} false alarm(s) in {total['clean_batches']} "
        f"({total['false_alarm_rate']:.1%}).",
    ]
    if timing:
        med = timing["median_seconds"]
        lines += [
            "",
            f"## Cost of one evaluation: {timing['sites']} sites x {timing['rows_per_site']['current']} rows "
            f"(reference of the same size), median of {timing['repeats']}",
            "",
            "| | seconds (3 sites) | ratio |",
            "|---|---|---|",
            f"| ours (data + concept drift, correction, HTML + JSON saved) | {med['ours']:.2f} | - |",
            f"| bare Evidently DataDriftPreset, default tests | {med['bare_default']:.2f} | "
            f"{timing['ratio_to_bare_default']:.2f}x |",
            f"| bare Evidently DataDriftPreset, our tests | {med['bare_same_tests']:.2f} | "
            f"{timing['ratio_to_bare_same_tests']:.2f}x |",
        ]
    lines += ["", "## Targets", ""]
    d = checks["delay"]
    lines.append(f"- delay <= {TARGETS['max_delay_batches']} batches: max {d['max_delay_batches']}, every stream "
                 f"detected: {d['every_stream_detected']} -> {_met(d['met'])}")
    f = checks["false_alarms"]
    lines.append(f"- false alarms <= {TARGETS['max_false_alarm_rate']:.0%} of clean batches: {f['rate']:.1%} -> "
                 f"{_met(f['met'])}")
    if "overhead" in checks:
        o = checks["overhead"]
        lines.append(f"- overhead <= {TARGETS['max_overhead']}x the bare report: {o['ratio_to_bare_default']:.2f}x "
                     f"-> {_met(o['met'])} (against a bare report with our tests: "
                     f"{o['ratio_to_bare_same_tests']:.2f}x -> {_met(o['met_against_same_tests'])})")
    return "\n".join(lines) + "\n"


def environment() -> dict:
    import evidently
    import torch

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "evidently": evidently.__version__,
        "torch": torch.__version__,
        "load_average": os.getloadavg(),
    }


def _worker_setup() -> None:
    import torch

    torch.set_num_threads(1)  # a tiny MLP; more threads only fight the other work on two cores
    logging.getLogger("evidently").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")  # Evidently's and litestar's deprecation notices, once per report
    # statsmodels' Holm runs gc.collect() on every call; freezing the long-lived objects makes that cheap.
    gc.freeze()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.drift", description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=20, help="seeded streams per scenario")
    parser.add_argument("--rows", type=int, default=1000, help="rows per batch in the streams")
    parser.add_argument("--after-onset", type=int, default=4, help="batches evaluated after the onset at most")
    parser.add_argument("--clean-batches", type=int, default=7, help="batches evaluated per clean stream")
    parser.add_argument("--simulations", type=int, default=2000)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of the champion stand-in")
    parser.add_argument("--timing-rows", type=int, default=50_000, help="rows per site in the cost measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--workers", type=int, default=2, help="processes for the streams (one per core)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--stem", default="drift", help="file name of the results (drift.json, drift.md)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    started = time.perf_counter()
    env = environment()
    _worker_setup()
    jobs = [(scenario, stream) for scenario in (*DRIFT_SCENARIOS, "clean") for stream in range(args.streams)]
    streams = []
    # Streams are independent: one process per core ("spawn": a fresh interpreter, no forked torch state).
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context, initializer=_worker_setup) as pool:
        futures = [pool.submit(run_stream, scenario, stream, args) for scenario, stream in jobs]
        for future in futures:
            s = future.result()
            streams.append(s)
            log.info("%s stream %d (%s): delay %s, false alarms %d/%d", s["scenario"], s["stream"], s["site"],
                     s["delay"], s["false_alarms"], s["clean_batches"])
    summary = summarise(streams)
    timing = None if args.skip_cost else cost(args)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    document = {
        "environment": env,
        "settings": settings,
        "seconds_total": time.perf_counter() - started,
        "column_tests": COLUMN_METHODS,
        "targets": verdict(summary, timing),
        "target_values": TARGETS,
        "detection": summary,
        "cost": timing,
        "streams": streams,
    }
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.stem}.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    (out / f"{args.stem}.md").write_text(markdown(document))
    log.info("done in %.1f min -> %s", document["seconds_total"] / 60, out / f"{args.stem}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
