"""Model families compared: F1, recall and precision of the failure class, federated vs central vs each site alone.

``python -m bench.model`` (``make bench-model``) writes ``bench/results/model.json`` and ``model.md``.

Data: the generator's three default sites (plant_a, plant_b, plant_c: their profiles' product mix, ambient, cooling
and torque offsets, tool policy), drawn with ``--seeds`` new seeds each (profile seed + 1000 x (seed + 1): none of
them is the demo's data), ``--batches`` clean batches per site. Rows split by UDI as the sites split them
(mledge/onsite/training.py): evaluation rows (every fifth UDI), validation rows (the next fifth), training rows.
Reported: the counts of every model on the pooled evaluation rows of the three sites.

Each family runs the platform's procedure in memory, with the site code (mledge/onsite/training.py,
tree_training.py) and the platform's rules (fl/convergence.py, fl/thresholds.py, Flower's FedAvg weighted mean
and FedXgbBagging tree appending): rounds until the pooled validation loss has not improved for ``PATIENCE``
rounds (at most ``--rounds``), the best round's model, its threshold from the pooled validation counts.

- federated: the three sites, each training on its own rows.
- central: the ceiling: one "site" holding the three sites' rows (for trees, 3x the rounds: as many trees).
- site alone: one site's rows only (for trees, 3x the rounds), evaluated on the pooled evaluation rows.

Targets (issue 20): the federated default >= 0.85 F1 and within 3 points of its central ceiling; both families
within 3 points of their ceilings.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from flwr.serverapp.strategy.strategy_utils import aggregate_bagging

from fl import trees
from fl.convergence import EarlyStopping, cosine_lr
from fl.model import build_model, with_threshold
from fl.protocol import ZERO, Counts, metrics_from_counts
from mledge.contracts import CLASS_WEIGHT, LEARNING_RATE, LOCAL_EPOCHS, MLP, PATIENCE, ROUNDS, XGBOOST
from mledge.onsite import scoring
from mledge.onsite.generator import generate_batch
from mledge.onsite.profiles import PROFILES
from mledge.onsite.training import XY, split3, train_local, validation_metrics
from mledge.onsite.tree_training import boost, new_trees

RESULTS = Path(__file__).resolve().parent / "results"
Site = tuple[XY, XY, XY]  # training, validation, evaluation rows


def site_data(seed: int, batches: int) -> dict[str, Site]:
    """Each default site's rows under a new seed, split as the site splits them."""
    out = {}
    for name, profile in PROFILES.items():
        profile = dataclasses.replace(profile, seed=profile.seed + 1000 * (seed + 1))
        state, frames = None, []
        for index in range(1, batches + 1):
            frame, state = generate_batch(profile, index, state, drifts=())
            frames.append(frame)
        out[name] = split3(name, pd.concat(frames, ignore_index=True))
    return out


def pooled(sites: Sequence[Site]) -> Site:
    """One site holding every given site's rows."""
    return tuple(  # type: ignore[return-value]
        (np.vstack([s[i][0] for s in sites]), np.concatenate([s[i][1] for s in sites])) for i in range(3)
    )


# --- one family's federated procedure ------------------------------------------------------------------------------


def run_mlp(sites: Sequence[Site], rounds: int, seed: int) -> tuple[object, EarlyStopping]:
    """FedAvg rounds (weighted mean of the sites' weights) with the cosine schedule and early stopping."""
    model = build_model(seed=seed)
    stopping = EarlyStopping(patience=PATIENCE)
    for rnd in range(1, rounds + 1):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        reports, updates, weights = [], [], []
        for (x, y), (xv, yv), _ in sites:
            local = copy.deepcopy(model)
            reports.append(validation_metrics(local, xv, yv))
            lr = cosine_lr(LEARNING_RATE, rnd, rounds)
            train_local(local, x, y, epochs=LOCAL_EPOCHS, lr=lr, seed=rnd, class_weight=CLASS_WEIGHT)
            updates.append(local.state_dict())
            weights.append(len(y))
        if stopping.observe(rnd - 1, state, reports):
            break
        total = float(sum(weights))
        model.load_state_dict({k: sum(u[k] * (w / total) for u, w in zip(updates, weights, strict=True))
                               for k in updates[0]})
    threshold, _ = stopping.threshold()
    return with_threshold(stopping.best_model, threshold), stopping


def run_trees(sites: Sequence[Site], rounds: int, seed: int) -> tuple[object, EarlyStopping]:
    """FedXgbBagging rounds (each site's new tree appended) with early stopping."""
    glob = b""
    stopping = EarlyStopping(patience=PATIENCE)
    for rnd in range(1, rounds + 1):
        booster = trees.load_booster(glob)
        reports, new = [], glob
        for (x, y), (xv, yv), _ in sites:
            reports.append(validation_metrics(booster, xv, yv))
            new = aggregate_bagging(new, new_trees(booster, boost(booster, x, y, 1)))
        if stopping.observe(rnd - 1, glob, reports):
            break
        glob = new
    threshold, _ = stopping.threshold()
    return trees.load_booster(trees.with_threshold(stopping.best_model, threshold)), stopping


FAMILIES: dict[str, Callable[[Sequence[Site], int, int], tuple[object, EarlyStopping]]] = {
    MLP: run_mlp, XGBOOST: run_trees,
}


def evaluate(model: object, sites: Sequence[Site]) -> Counts:
    return sum((scoring.counts(model, x, y) for _, _, (x, y) in sites), ZERO)


def one_seed(seed: int, batches: int, rounds: int, families: Sequence[str]) -> list[dict]:
    torch.set_num_threads(1)
    data = site_data(seed, batches)
    sites = list(data.values())
    rows = []
    for family in families:
        run = FAMILIES[family]
        single = rounds * (len(sites) if family == XGBOOST else 1)  # as many trees as the federation grows
        setups = [("federated", sites, rounds), ("central", [pooled(sites)], single)]
        setups += [(f"alone:{name}", [data[name]], single) for name in data]
        for setup, train_sites, budget in setups:
            started = time.perf_counter()
            model, stopping = run(train_sites, budget, seed)
            counts = evaluate(model, sites)
            metrics = metrics_from_counts(counts)
            rows.append({
                "family": family, "setup": setup, "seed": seed, "f1": metrics["f1"], "recall": metrics["recall"],
                "precision": metrics["precision"], "failures": counts.tp + counts.fn, "rows": counts.n,
                "best_round": stopping.best_round, "threshold": scoring.threshold_of(model),
                "seconds": time.perf_counter() - started,
            })
            print(f"seed {seed} {family:8s} {setup:15s} F1 {metrics['f1']:.3f} (best round {stopping.best_round}, "
                  f"{time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and spread per family and setup (site-alone runs pooled over the sites)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        setup = "site alone" if row["setup"].startswith("alone:") else row["setup"]
        groups.setdefault((row["family"], setup), []).append(row)
    out = []
    for (family, setup), members in groups.items():
        entry = {"family": family, "setup": setup, "runs": len(members)}
        for key in ("f1", "recall", "precision"):
            values = [m[key] for m in members]
            entry[key] = statistics.fmean(values)
            entry[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        if setup == "site alone":
            entry["f1_min"], entry["f1_max"] = min(m["f1"] for m in members), max(m["f1"] for m in members)
        out.append(entry)
    return out


def targets(summary: list[dict], default: str) -> dict:
    f1 = {(s["family"], s["setup"]): s["f1"] for s in summary}
    gaps = {fam: f1[(fam, "central")] - f1[(fam, "federated")] for fam in {s["family"] for s in summary}}
    return {
        "default_family": default,
        "default_f1_at_least_0.85": f1[(default, "federated")] >= 0.85,
        "gap_to_central_points": {fam: round(100 * gap, 1) for fam, gap in gaps.items()},
        "every_family_within_3_points": all(gap <= 0.03 for gap in gaps.values()),
    }


def markdown(summary: list[dict], verdict: dict, meta: dict) -> str:
    lines = [
        "# Model families: failure-class F1, federated vs central vs each site alone", "",
        f"{meta['seeds']} new seeds of the three default sites, {meta['batches']} batches each; pooled evaluation "
        f"rows ({meta['rows']} rows, {meta['failures']} failures over the seeds). Mean ± SD over seeds (site alone: "
        f"over seeds and sites, with the range). {meta['cpus']} CPUs, {meta['seconds']:.0f} s.", "",
        "| family | setup | F1 | recall | precision |", "|---|---|---|---|---|",
    ]
    for s in sorted(summary, key=lambda s: (s["family"], ["federated", "central", "site alone"].index(s["setup"]))):
        extra = f" ({s['f1_min']:.3f}–{s['f1_max']:.3f})" if "f1_min" in s else ""
        lines.append(
            f"| {s['family']} | {s['setup']} | {s['f1']:.3f} ± {s['f1_sd']:.3f}{extra} | {s['recall']:.3f} | "
            f"{s['precision']:.3f} |"
        )
    lines += ["", "Targets (issue 20): " + json.dumps(verdict), ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="most federated rounds (early stopping)")
    parser.add_argument("--families", default=f"{MLP},{XGBOOST}")
    parser.add_argument("--default", default=None, help="the demo's family (default: mledge.contracts)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    from mledge.contracts import DEFAULT_MODEL_FAMILY

    started = time.perf_counter()
    families = args.families.split(",")
    rows = [row for seed in range(args.seeds) for row in one_seed(seed, args.batches, args.rounds, families)]
    summary = summarise(rows)
    fed = [r for r in rows if r["setup"] == "federated" and r["family"] == families[0]]
    meta = {
        "seeds": args.seeds, "batches": args.batches, "rounds": args.rounds, "cpus": os.cpu_count(),
        "python": platform.python_version(), "seconds": time.perf_counter() - started,
        "rows": sum(r["rows"] for r in fed), "failures": sum(r["failures"] for r in fed),
    }
    verdict = targets(summary, args.default or DEFAULT_MODEL_FAMILY) if len(families) > 1 else {}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model.json").write_text(json.dumps({"meta": meta, "summary": summary, "targets": verdict,
                                                     "runs": rows}, indent=1))
    (args.out / "model.md").write_text(markdown(summary, verdict, meta))
    print(markdown(summary, verdict, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
