"""The ServerApp's rounds (fl/serverapp.py's train_rounds, unchanged) over the three sites' real ClientApp, in every
privacy mode: the sites' own evaluations still reach the metric sink, and the privacy report is what the run
records (its tags go on the registered model versions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord

from fl import clientapp
from fl.model import build_model
from fl.privacy.accountant import epsilon
from fl.privacy.server import apply_privacy
from fl.privacy.vectors import to_vector
from fl.serverapp import train_rounds
from fl.simulation.harness import InProcessGrid
from fl.strategies import build_strategy
from mledge.contracts import TAG_CLIP_NORM, TAG_DELTA, TAG_EPSILON, TAG_NOISE_MULTIPLIER, TAG_PRIVACY
from mledge.onsite.profiles import PROFILES as SITES

NODES = {11: "plant_a", 12: "plant_b", 13: "plant_c"}
ROUNDS = 2


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple[int, dict]] = []

    def __call__(self, metrics, step):
        self.calls.append((step, dict(metrics)))


def run(make_store, mode: str, **extra):
    stores = {site: make_store(site, batches=2, rows=600) for site in SITES}
    config = {"privacy": mode, "num-server-rounds": ROUNDS, "min-replies": 2, "dp-epsilon": 8.0, **extra}
    strategy, report = apply_privacy(config, "fedavg", build_strategy("fedavg", min_nodes=3), min_nodes=3,
                                     min_replies=2)
    nodes = {node: {"site": site, "data-dir": str(stores[site])} for node, site in NODES.items()}
    sink = Sink()
    start = ArrayRecord(build_model(seed=0).state_dict())
    with InProcessGrid(clientapp.app, nodes, run_id=42, run_config=config, record=True) as grid:
        result = train_rounds(grid, strategy, start, rounds=ROUNDS,
                              train_config=ConfigRecord({"local-epochs": 1, "learning-rate": 0.005}),
                              min_replies=2, timeout=10, sink=sink)
        received = list(grid.replies)
    return result, report, sink, received, start


@pytest.mark.parametrize("mode", ["secagg", "secagg-dp", "dp"])
def test_every_mode_trains_and_keeps_per_site_metrics(make_store, mode):
    result, report, sink, replies, start = run(make_store, mode)
    assert result.failures == {}
    assert not np.allclose(to_vector(result.arrays), to_vector(start))
    steps = {step for step, _ in sink.calls}
    assert steps >= {0, 1}
    logged = {k for _, metrics in sink.calls for k in metrics}
    for site in SITES:
        assert f"{site}/eval_f1" in logged and f"{site}/aggregation_weight" in logged
    assert "eval_f1" in logged
    tags = report.tags()
    assert tags[TAG_PRIVACY] == mode and float(tags[TAG_CLIP_NORM]) == 1.0
    if mode == "secagg":
        assert report.noise_multiplier is None and TAG_EPSILON not in tags
    else:
        assert report.releases == ROUNDS
        assert float(tags[TAG_EPSILON]) == pytest.approx(epsilon(report.noise_multiplier, ROUNDS, 1e-5), rel=1e-3)
        assert float(tags[TAG_EPSILON]) <= 8.0 and float(tags[TAG_DELTA]) == 1e-5
        assert float(tags[TAG_NOISE_MULTIPLIER]) > 0
    if mode.startswith("secagg"):  # the platform never got a model from a train reply
        train = [r for r in replies if r.metadata.message_type == "train" and not r.has_error()]
        assert train and all(len(a) == 0 for r in train for a in r.content.array_records.values())


def test_none_is_unchanged(make_store):
    strategy = build_strategy("fedavg", min_nodes=3)
    same, report = apply_privacy({"num-server-rounds": 3}, "krum", strategy, min_nodes=3, min_replies=2)
    assert same is strategy and report is None
    assert math.isinf(epsilon(0.0, 1, 1e-5))
