"""Drift detection on seeded streams: detection delay, false alarms with confidence intervals, per scenario.

``python -m bench.drift`` (``make bench-drift``) writes ``bench/results/drift.json`` and ``drift.md``.

Every batch goes through the decision path the DAG runs, in memory: ``measure_batch`` at the site (data-drift tests
per column, the concept test's simulations, the label rate, the sufficiency check), then
``drift.decision.decide_batch`` at the platform (data and concept families corrected separately, alpha shared by
3 sites). Like the DAG, the bench pools a batch too small to decide with the next ones (an insufficient unit is
never marked processed and never alarms), and lets the champion's calibration reference grow with the batches it
handled without concept drift (``plan_evaluation``'s ``calibration``, the last ``MAX_CALIBRATION_BATCHES``).

Streams: for each scenario, each site and each of ``--seeds`` seeds, the site's generator with its own seed
(profile seed x 1000 + seed) draws ``--batches`` batches after a reference window of 3; a model trained on the
window's rows that are not held out stands in for the champion (the federated champion is trained the same way
on more sites). A scenario is a template of ``profiles.ScheduledDrift`` applied to the stream's site from batch
``--onset``. The champion is never retrained in a stream, so every batch after the onset is still drifted.

Reported per scenario: how often and how soon the concept test fires after the onset (delay = first batch with
a concept alarm - onset; "within 2" = delay <= 2), the share of post-onset batches with a concept alarm (for
covariate shifts: false concept alarms), label-rate findings, and the size of the change (label flips per 1000
rows against the same stream without the drift). The batches of the clean and small-batch streams give the
false-alarm rate per site and batch with its Wilson 95 % interval (a drift stream is the clean stream of its site
and seed up to its onset, so it starts from the clean stream's state there instead of repeating it).

Targets (issue 13): a concept shift is detected in >= 90 % of streams within 2 batches of its onset; a covariate
shift raises concept alarms in <= 5 % of its batches; clean streams raise <= 2 % false alarms per site and batch;
an insufficient-data unit never alarms.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import multiprocessing
import os
import platform
import statistics
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from drift.decision import DRIFT, INSUFFICIENT, LABEL_ANOMALY, decide_batch
from fl.model import build_model
from mledge.contracts import LABEL_LOSS_SHARE
from mledge.onsite.data_drift import COLUMN_METHODS
from mledge.onsite.drift_evaluation import MAX_CALIBRATION_BATCHES, measure_batch
from mledge.onsite.features import features, labels
from mledge.onsite.generator import generate_batch
from mledge.onsite.profiles import PROFILES as SITES
from mledge.onsite.profiles import ScheduledDrift, SiteProfile
from mledge.onsite.store import is_held_out
from mledge.onsite.training import train_local

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results"
REFERENCE_BATCHES = 3
N_SITES = 3
TARGETS = {
    "concept_detected_within_2_batches": 0.90,
    "covariate_concept_alarm_rate_max": 0.05,
    "clean_false_alarm_rate_max": 0.02,
    "insufficient_alarms_max": 0,
}

# name -> (family, ScheduledDrift fields without site and onset; "mix" "reversed" flips the site's own L/M/H mix).
SCENARIOS: dict[str, tuple[str, dict]] = {
    "clean": ("clean", {}),
    "small-batches": ("insufficient", {}),
    "covariate-product-mix": ("covariate", {"kind": "product_mix", "product_mix": "reversed"}),
    "covariate-speed": ("covariate", {"kind": "covariate_shift", "speed_rpm": -80.0}),
    "covariate-ambient": ("covariate", {"kind": "covariate_shift", "ambient_k": 3.0}),
    "concept-heat-dissipation-up": ("concept", {"kind": "rule_change", "hdf_gap_k": 9.3}),
    "concept-heat-dissipation-down": ("concept", {"kind": "rule_change", "hdf_gap_k": 8.0}),
    "concept-overstrain": ("concept", {"kind": "rule_change", "osf_limits": (9_900.0, 10_800.0, 11_700.0)}),
    "concept-power-window": ("concept", {"kind": "rule_change", "pwf_min_w": 4_000.0, "pwf_max_w": 8_500.0}),
    "concept-gradual-heat-dissipation": ("concept", {"kind": "rule_change", "hdf_gap_k": 9.6, "ramp_batches": 5}),
    "concept-sensor-offset": ("concept", {"kind": "sensor_offset", "offset_k": 1.5}),
    "label-loss": ("label", {"kind": "label_loss", "share": 1.0}),
}

log = logging.getLogger("bench.drift")


def scenario_drifts(scenario: str, site: str, onset: int) -> tuple[ScheduledDrift, ...]:
    """The scenario's drift at this site from ``onset`` (none for clean and small-batch streams)."""
    _, template = SCENARIOS[scenario]
    if not template:
        return ()
    fields = dict(template)
    if fields.get("product_mix") == "reversed":
        fields["product_mix"] = tuple(reversed(SITES[site].product_mix))
    return (ScheduledDrift(site=site, onset_batch=onset, **fields),)


def stream_profile(site: str, seed: int, walk_rows: float | None = None) -> SiteProfile:
    """The site's profile with a seed of its own for this stream (and another temperature walk time, if given)."""
    base = SITES[site]
    return replace(base, seed=base.seed * 1000 + seed, walk_rows=walk_rows or base.walk_rows)


def batch_rows(scenario: str, index: int, seed: int, rows: int) -> int:
    """Rows of batch ``index``: the profile's, or for the small-batch stream 0-30 (a few empty ones)."""
    if SCENARIOS[scenario][0] != "insufficient" or index <= REFERENCE_BATCHES:
        return rows
    draw = np.random.default_rng([seed, index, 7]).integers(-2, 31)
    return int(max(0, draw))  # about one batch in eleven is empty


def generate(profile: SiteProfile, scenario: str, seed: int, batches: int, drifts, rows: int) -> list[pd.DataFrame]:
    state, frames = None, []
    for index in range(1, batches + 1):
        frame, state = generate_batch(profile, index, state, rows=batch_rows(scenario, index, seed, rows),
                                      drifts=drifts)
        frames.append(frame)
    return frames


def champion_stand_in(reference: pd.DataFrame, seed: int, epochs: int):
    """A model trained on the reference window's rows that are not held out, as a site trains."""
    train = reference[~is_held_out(reference)]
    model = build_model(seed=seed)
    train_local(model, features(train), labels(train), epochs=epochs, lr=0.005, seed=seed)
    return model


def label_flips(drifted: list[pd.DataFrame], clean: list[pd.DataFrame], first: int) -> dict:
    """How much the drift changed the labels from batch ``first`` on: failures added and removed per 1000 rows."""
    added = removed = rows = 0
    for a, b in zip(drifted[first - 1 :], clean[first - 1 :], strict=True):
        if len(a) != len(b):  # label loss drops rows: count the failures that went missing
            removed += int(b["machine_failure"].sum() - a["machine_failure"].sum())
            rows += len(b)
            continue
        change = a["machine_failure"].to_numpy() - b["machine_failure"].to_numpy()
        added, removed, rows = added + int((change > 0).sum()), removed + int((change < 0).sum()), rows + len(b)
    return {"added_per_1000": 1000 * added / max(rows, 1), "removed_per_1000": 1000 * removed / max(rows, 1)}


class Stream:
    """One site's evaluation state, unit by unit, as the DAG keeps it: waiting batches and the calibration."""

    def __init__(self, reference: pd.DataFrame, model, args: argparse.Namespace, seed: int) -> None:
        self.reference, self.model, self.args, self.seed = reference, model, args, seed
        self.calibration: list[pd.DataFrame] = []
        self.pending: list[int] = []
        self.units: list[dict] = []

    def copy(self) -> Stream:
        other = Stream(self.reference, self.model, self.args, self.seed)
        other.calibration, other.pending, other.units = list(self.calibration), list(self.pending), []
        return other

    def evaluate(self, frames: list[pd.DataFrame], index: int, onset: int | None) -> None:
        """Evaluate batch ``index`` (pooled with the batches still waiting), as `mledge drift ...` would."""
        args, frame = self.args, frames[index - 1]
        if len(frame):
            self.pending.append(index)
        batches = list(self.pending) if len(frame) else [index]
        current = pd.concat([frames[i - 1] for i in batches], ignore_index=True)
        calibration = self.calibration[-MAX_CALIBRATION_BATCHES:]
        measured = measure_batch(
            self.reference, current, self.model, alpha=args.alpha, simulations=args.simulations,
            seed=[self.seed, index], calibration=pd.concat(calibration, ignore_index=True) if calibration else None,
        )
        decision = decide_batch(
            measured["data"], measured["concept"], args.alpha, N_SITES, status=measured["status"],
            label_rate=measured["label_rate"], reason=measured["reason"],
        )
        outcome, concept, data = decision["outcome"], decision["concept"], decision["data"]
        self.units.append(
            {
                "batch": index,
                "batches": batches,
                "rows": len(current),
                "clean": onset is None or max(batches) < onset,
                "outcome": outcome,
                "data_alarm": bool(data and data["decision"] == DRIFT),
                "concept_alarm": bool(concept and concept["decision"] == DRIFT),
                "label_anomaly": bool(decision["label_rate"] and decision["label_rate"]["decision"] == "anomaly"),
                "drifted_columns": data["drifted_columns"] if data else [],
                "concept_tests": {n: round(t["p_value"], 5) for n, t in concept["tests"].items()} if concept else None,
                "not_computed": sorted(data["not_computed"]) if data else [],
            }
        )
        if outcome == INSUFFICIENT:
            return  # waits, unmarked, for the next batch
        if len(frame):
            self.pending = []
        share = (decision["label_rate"] or {}).get("share")
        few = share is not None and share <= LABEL_LOSS_SHARE  # drift.history's rule for the track record
        if concept is not None and concept["decision"] != DRIFT and outcome != LABEL_ANOMALY and not few:
            self.calibration.append(current)


def stream_result(scenario: str, site: str, seed: int, onset: int | None, units: list[dict], flips) -> dict:
    after = [u for u in units if onset is not None and min(u["batches"]) >= onset and u["outcome"] != INSUFFICIENT]
    first_concept = next((u["batch"] for u in after if u["concept_alarm"]), None)
    first_any = next((u["batch"] for u in after if u["concept_alarm"] or u["data_alarm"]), None)
    first_label = next((u["batch"] for u in after if u["label_anomaly"]), None)
    return {
        "scenario": scenario,
        "family": SCENARIOS[scenario][0],
        "site": site,
        "seed": seed,
        "onset": onset,
        "label_flips": flips,
        "concept_delay": None if first_concept is None else first_concept - onset,
        "any_delay": None if first_any is None else first_any - onset,
        "label_delay": None if first_label is None else first_label - onset,
        "units": units,
    }


def run_site(site: str, seed: int, scenarios: Sequence[str], args: argparse.Namespace) -> list[dict]:
    """Every scenario of one site and seed. The drift scenarios share the clean stream up to their onset (the
    same generator seed, the same batches, the same decisions), so they start from its state there."""
    last = REFERENCE_BATCHES + args.batches
    profile = stream_profile(site, seed, args.walk_rows)
    clean = generate(profile, "clean", seed, last, (), args.rows)
    reference = pd.concat(clean[:REFERENCE_BATCHES], ignore_index=True)
    model = champion_stand_in(reference, seed=seed, epochs=args.epochs)
    results = []
    base = Stream(reference, model, args, seed)
    at_onset = None
    for index in range(REFERENCE_BATCHES + 1, last + 1):
        if index == args.onset:
            at_onset = base.copy()
        base.evaluate(clean, index, None)
    if "clean" in scenarios:
        results.append(stream_result("clean", site, seed, None, base.units, None))
    for scenario in scenarios:
        family = SCENARIOS[scenario][0]
        if family == "clean":
            continue
        if family == "insufficient":
            frames = generate(profile, scenario, seed, last, (), args.rows)
            small = Stream(reference, model, args, seed)
            for index in range(REFERENCE_BATCHES + 1, last + 1):
                small.evaluate(frames, index, None)
            results.append(stream_result(scenario, site, seed, None, small.units, None))
            continue
        drifts = scenario_drifts(scenario, site, args.onset)
        frames = generate(profile, scenario, seed, last, drifts, args.rows)
        stream = at_onset.copy()
        for index in range(args.onset, last + 1):
            stream.evaluate(frames, index, args.onset)
        units = [u for u in base.units if u["batch"] < args.onset] + stream.units
        results.append(stream_result(scenario, site, seed, args.onset, units, label_flips(frames, clean, args.onset)))
    return results


# --- summaries ------------------------------------------------------------------------------------------------


def wilson(successes: int, trials: int, z: float = 1.959964) -> list[float] | None:
    """Wilson's 95 % score interval for a binomial proportion."""
    if trials == 0:
        return None
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def rate(successes: int, trials: int) -> dict:
    return {"count": successes, "of": trials, "rate": successes / trials if trials else None,
            "wilson95": wilson(successes, trials)}


def delays(values: Sequence[int | None], horizon: int) -> dict:
    """Distribution of detection delays: counts per delay, quantiles of the detected ones, undetected count."""
    found = sorted(v for v in values if v is not None)
    counts: dict[str, int] = {}
    for v in found:
        counts[str(v)] = counts.get(str(v), 0) + 1
    return {
        "streams": len(values),
        "detected": len(found),
        "within_2": rate(sum(v <= 2 for v in found), len(values)),
        "counts": counts,
        "undetected": len(values) - len(found),
        "median": statistics.median(found) if found else None,
        "p90": float(np.quantile(found, 0.9)) if found else None,
        "max": max(found) if found else None,
        "mean": statistics.fmean(found) if found else None,
        "horizon": horizon,
    }


def summarise(streams: list[dict], args: argparse.Namespace) -> dict:
    horizon = REFERENCE_BATCHES + args.batches - args.onset
    scenarios: dict[str, dict] = {}
    for name in SCENARIOS:
        items = [s for s in streams if s["scenario"] == name]
        if not items:
            continue
        decided = [u for s in items for u in s["units"] if u["outcome"] != INSUFFICIENT]
        post = [u for s in items if s["onset"] for u in s["units"]
                if u["outcome"] != INSUFFICIENT and min(u["batches"]) >= s["onset"]]
        clean = [u for u in decided if u["clean"]]
        entry: dict = {
            "family": items[0]["family"],
            "streams": len(items),
            "decided_units": len(decided),
            "clean_units": len(clean),
            "clean_false_alarms": rate(sum(u["data_alarm"] or u["concept_alarm"] for u in clean), len(clean)),
            "insufficient_units": sum(u["outcome"] == INSUFFICIENT for s in items for u in s["units"]),
            "insufficient_alarms": sum(
                (u["data_alarm"] or u["concept_alarm"])
                for s in items for u in s["units"] if u["outcome"] == INSUFFICIENT
            ),
        }
        if items[0]["onset"]:
            flips = [s["label_flips"] for s in items if s["label_flips"]]
            entry.update(
                {
                    "post_onset_units": len(post),
                    "post_onset_concept_alarms": rate(sum(u["concept_alarm"] for u in post), len(post)),
                    "post_onset_data_alarms": rate(sum(u["data_alarm"] for u in post), len(post)),
                    "post_onset_label_anomalies": rate(sum(u["label_anomaly"] for u in post), len(post)),
                    "concept_delay": delays([s["concept_delay"] for s in items], horizon),
                    "any_alarm_delay": delays([s["any_delay"] for s in items], horizon),
                    "label_delay": delays([s["label_delay"] for s in items], horizon),
                    "label_flips_per_1000": {
                        "added": statistics.fmean(f["added_per_1000"] for f in flips),
                        "removed": statistics.fmean(f["removed_per_1000"] for f in flips),
                    } if flips else None,
                    "per_site": {
                        site: {
                            "concept_detected_within_2": sum(
                                s["concept_delay"] is not None and s["concept_delay"] <= 2
                                for s in items if s["site"] == site
                            ),
                            "streams": sum(s["site"] == site for s in items),
                            "label_flips_per_1000": next(
                                (s["label_flips"] for s in items if s["site"] == site), None
                            ),
                        }
                        for site in sorted({s["site"] for s in items})
                    },
                }
            )
        scenarios[name] = entry
    # The drift streams repeat the clean stream before their onset: clean batches are counted there only. Empty
    # batches are label-rate findings by design, not false alarms.
    clean_units = [
        (s["site"], u) for s in streams if s["family"] in ("clean", "insufficient") for u in s["units"]
        if u["outcome"] != INSUFFICIENT and u["rows"] > 0
    ]
    per_site = {
        site: rate(sum(u["data_alarm"] or u["concept_alarm"] for s_, u in clean_units if s_ == site),
                   sum(1 for s_, _ in clean_units if s_ == site))
        for site in sorted({s["site"] for s in streams})
    }
    return {
        "scenarios": scenarios,
        "clean": {
            "any_alarm": rate(sum(u["data_alarm"] or u["concept_alarm"] for _, u in clean_units), len(clean_units)),
            "data_alarm": rate(sum(u["data_alarm"] for _, u in clean_units), len(clean_units)),
            "concept_alarm": rate(sum(u["concept_alarm"] for _, u in clean_units), len(clean_units)),
            "label_anomaly": rate(sum(u["label_anomaly"] for _, u in clean_units), len(clean_units)),
            "per_site": per_site,
        },
    }


def verdict(summary: dict) -> dict:
    scenarios = summary["scenarios"]
    concept = {n: e["concept_delay"]["within_2"]["rate"] for n, e in scenarios.items() if e["family"] == "concept"}
    covariate = {n: e["post_onset_concept_alarms"]["rate"] for n, e in scenarios.items()
                 if e["family"] == "covariate"}
    clean = summary["clean"]["per_site"]
    insufficient = sum(e["insufficient_alarms"] for e in scenarios.values())
    return {
        "concept_detected_within_2": {
            "per_scenario": concept,
            "met": all(r is not None and r >= TARGETS["concept_detected_within_2_batches"] for r in concept.values()),
        },
        "covariate_concept_alarms": {
            "per_scenario": covariate,
            "met": all(r is not None and r <= TARGETS["covariate_concept_alarm_rate_max"] for r in covariate.values()),
        },
        "clean_false_alarms": {
            "per_site": {s: r["rate"] for s, r in clean.items()},
            "met": all(r["rate"] is not None and r["rate"] <= TARGETS["clean_false_alarm_rate_max"]
                       for r in clean.values()),
        },
        "insufficient_never_alarms": {"alarms": insufficient, "met": insufficient == 0},
    }


# --- output ----------------------------------------------------------------------------------------------------


def _pct(entry: dict | None) -> str:
    if not entry or entry["rate"] is None:
        return "-"
    low, high = entry["wilson95"]
    return f"{entry['count']}/{entry['of']} = {entry['rate']:.1%} [{low:.1%}, {high:.1%}]"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}".removesuffix(".0")


def _rounded(values: dict) -> dict:
    return {k: None if v is None else round(v, 4) for k, v in values.items()}


def _met(flag: bool) -> str:
    return "met" if flag else "**not met**"


def markdown(document: dict) -> str:
    summary, checks, cfg = document["detection"], document["targets"], document["settings"]
    lines = [
        "# Drift detection",
        "",
        f"{cfg['seeds']} seeds x {len(SITES)} sites per scenario; each stream: reference batches 1-3, then "
        f"{cfg['batches']} batches of {cfg['rows']} rows evaluated one by one, onset at batch {cfg['onset']} "
        f"(concept, covariate, label scenarios). alpha {cfg['alpha']} shared by {N_SITES} sites, half to each "
        f"family (data, concept), Holm within a family; {cfg['simulations']} simulations. "
        f"{document['environment']['cpus']} CPUs; {document['seconds_total']:.0f} s in all.",
        "",
        "## Concept shifts (P(x) unchanged unless noted): detection after the onset",
        "",
        "| scenario | label flips per 1000 rows (+/-) | detected within 2 batches | delay median / p90 / max | "
        "undetected | post-onset batches with a concept alarm | per site within 2 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, e in summary["scenarios"].items():
        if e["family"] != "concept":
            continue
        d = e["concept_delay"]
        flips = e["label_flips_per_1000"]
        per_site = ", ".join(f"{s} {v['concept_detected_within_2']}/{v['streams']}" for s, v in e["per_site"].items())
        lines.append(
            f"| {name} | +{flips['added']:.1f} / -{flips['removed']:.1f} | {_pct(d['within_2'])} | "
            f"{_num(d['median'])} / {_num(d['p90'])} / {_num(d['max'])} | {d['undetected']} | "
            f"{_pct(e['post_onset_concept_alarms'])} | "
            f"{per_site} |"
        )
    lines += ["", "Delay counts (delay in batches: streams):", ""]
    for name, e in summary["scenarios"].items():
        if e["family"] == "concept":
            d = e["concept_delay"]
            lines.append(f"- {name}: {d['counts']}, undetected {d['undetected']} (horizon {d['horizon']} batches)")
    lines += [
        "",
        "## Covariate shifts (P(y | x) unchanged): false concept alarms after the onset",
        "",
        "| scenario | post-onset batches with a concept alarm | with a data alarm | data-alarm delay median |",
        "|---|---|---|---|",
    ]
    for name, e in summary["scenarios"].items():
        if e["family"] == "covariate":
            lines.append(f"| {name} | {_pct(e['post_onset_concept_alarms'])} | {_pct(e['post_onset_data_alarms'])} "
                         f"| {e['any_alarm_delay']['median']} |")
    label = summary["scenarios"].get("label-loss")
    if label:
        lines += [
            "",
            "## Label loss (every failure row lost from the onset)",
            "",
            f"- label-rate anomaly after the onset: {_pct(label['post_onset_label_anomalies'])}; delay median "
            f"{label['label_delay']['median']}",
            f"- concept alarms after the onset: {_pct(label['post_onset_concept_alarms'])}",
        ]
    small = summary["scenarios"].get("small-batches")
    if small:
        lines += [
            "",
            "## Small batches (0-30 rows, about one in eleven empty; no drift)",
            "",
            f"- units that waited for more data (insufficient): {small['insufficient_units']}, alarms among them: "
            f"{small['insufficient_alarms']}",
            f"- pooled units decided: {small['decided_units']}, false alarms: {_pct(small['clean_false_alarms'])}",
        ]
    clean = summary["clean"]
    lines += [
        "",
        "## Clean batches (clean and small-batch streams): false alarms per site and batch",
        "",
        f"- any alarm: {_pct(clean['any_alarm'])}",
        f"- data alarm: {_pct(clean['data_alarm'])}; concept alarm: {_pct(clean['concept_alarm'])}; label-rate "
        f"finding: {_pct(clean['label_anomaly'])}",
    ]
    lines += [f"- {site}: {_pct(r)}" for site, r in clean["per_site"].items()]
    lines += ["", "## Targets", ""]
    c = checks["concept_detected_within_2"]
    lines.append(f"- concept shift detected within 2 batches in >= 90 % of streams: {_rounded(c['per_scenario'])} "
                 f"-> {_met(c['met'])}")
    c = checks["covariate_concept_alarms"]
    lines.append(f"- covariate shift: concept alarms in <= 5 % of batches: {_rounded(c['per_scenario'])} "
                 f"-> {_met(c['met'])}")
    c = checks["clean_false_alarms"]
    lines.append(f"- clean: <= 2 % false alarms per site and batch: {_rounded(c['per_site'])} -> {_met(c['met'])}")
    c = checks["insufficient_never_alarms"]
    lines.append(f"- an insufficient-data unit never alarms: {c['alarms']} alarms -> {_met(c['met'])}")
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
    warnings.filterwarnings("ignore")
    # statsmodels' Holm runs gc.collect() on every call; freezing the long-lived objects makes that cheap.
    gc.freeze()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.drift", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeded streams per site and scenario")
    parser.add_argument("--batches", type=int, default=50, help="batches evaluated per stream (after 3 reference)")
    parser.add_argument("--onset", type=int, default=20, help="first drifted batch of the drift scenarios")
    parser.add_argument("--rows", type=int, default=1000, help="rows per batch")
    parser.add_argument("--simulations", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of the champion stand-in")
    parser.add_argument("--walk-rows", type=float, default=None,
                        help="relaxation time of the temperature walks in processes (default: the profiles')")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated scenario names")
    parser.add_argument("--sites", default=",".join(sorted(SITES)))
    parser.add_argument("--workers", type=int, default=2, help="processes for the streams (one per core)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--stem", default="drift", help="file name of the results (drift.json, drift.md)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.scenarios.split(",")) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {sorted(SCENARIOS)}")
    if not REFERENCE_BATCHES < args.onset <= REFERENCE_BATCHES + args.batches:
        parser.error("--onset must fall within the evaluated batches")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    started = time.perf_counter()
    env = environment()
    _worker_setup()
    scenarios = args.scenarios.split(",")
    jobs = [(site, seed) for seed in range(args.seeds) for site in args.sites.split(",")]
    streams = []
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker, no forked torch state
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context, initializer=_worker_setup) as pool:
        futures = [pool.submit(run_site, site, seed, scenarios, args) for site, seed in jobs]
        for future in futures:
            for s in future.result():
                streams.append(s)
                clean = [u for u in s["units"] if u["clean"] and u["outcome"] != INSUFFICIENT]
                log.info("%s %s seed %d: concept delay %s, label delay %s, clean alarms %d/%d", s["scenario"],
                         s["site"], s["seed"], s["concept_delay"], s["label_delay"],
                         sum(u["data_alarm"] or u["concept_alarm"] for u in clean), len(clean))
    summary = summarise(streams, args)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    document = {
        "environment": env,
        "settings": settings,
        "seconds_total": time.perf_counter() - started,
        "column_tests": COLUMN_METHODS,
        "targets": verdict(summary),
        "target_values": TARGETS,
        "detection": summary,
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
