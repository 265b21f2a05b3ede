"""Fair cost sharing (costs/sharing.py): a site that contributes nothing pays nothing, identical sites pay the same,
shares add up to 1 and amounts to the run's cost, and the split reaches the store, the report and the CLI."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal

import pytest
from conftest import SAMPLES
from sqlalchemy import select

from costs.ingest import ingest
from costs.sharing import EXACT_LIMIT, RULES, SiteInput, compute_shares, shapley, site_inputs
from costs.sources.focus_files import FocusFileSource
from costs.store import cost_shares
from mledge.cli import build_parser
from mledge.ops.settings import Settings


def site(name: str, examples: int, metric: float | None = 0.8, used: int = 5, rounds: int = 5) -> SiteInput:
    return SiteInput(name, examples, metric, used, rounds)


def evidence(sites: dict[str, tuple[int, float]], failures: dict[str, list[str]] | None = None,
             seconds: dict[str, float] | None = None) -> dict:
    """A run's promotion evidence as the ServerApp writes it (PromotionEvidence.to_dict())."""
    from fl.protocol import PromotionEvidence, SiteEvidence

    scores = {s: SiteEvidence(candidate={"f1": f1, "accuracy": 0.9, "recall": f1, "precision": f1, "loss": 0.3},
                              champion=None, num_examples=n) for s, (n, f1) in sites.items()}
    return PromotionEvidence(None, scores, failures or {}, seconds or {s: 60.0 for s in sites}).to_dict()


@pytest.mark.parametrize("rule", ["contribution", "leave_one_out", "data_size"])
def test_a_site_without_data_gets_no_share(rule):
    result = compute_shares("r1", [site("plant_a", 400), site("plant_b", 250), site("plant_c", 0)], rule=rule)
    assert result.shares["plant_c"] == 0
    assert result.shares["plant_a"] > result.shares["plant_b"] > 0
    assert sum(result.shares.values()) == 1


@pytest.mark.parametrize("rule", ["contribution", "leave_one_out"])
def test_a_site_whose_every_update_was_rejected_gets_no_share(rule):
    inputs = [site("plant_a", 300), site("plant_b", 300), site("plant_c", 300, used=0)]
    result = compute_shares("r1", inputs, rule=rule)
    assert result.shares == {"plant_a": Decimal("0.5"), "plant_b": Decimal("0.5"), "plant_c": Decimal(0)}


@pytest.mark.parametrize("rule", RULES)
def test_identical_sites_get_identical_shares(rule):
    inputs = [site("plant_a", 300, 0.7), site("plant_b", 300, 0.7), site("plant_c", 900, 0.9)]
    result = compute_shares("r1", inputs, rule=rule)
    # equal up to the last of 10 places, which one of them takes so that the shares add up to exactly 1
    assert abs(result.shares["plant_a"] - result.shares["plant_b"]) <= Decimal("1E-10")
    assert result.contributions["plant_a"] == result.contributions["plant_b"] > 0
    assert sum(result.shares.values()) == 1


def test_shapley_is_efficient_and_reduces_to_proportional_at_beta_one():
    weights = {"a": 100.0, "b": 300.0, "c": 600.0}
    values = shapley(weights, beta=0.5)
    assert sum(values.values()) == pytest.approx(1.0)  # v(N) = 1
    assert values["a"] / values["c"] > 100 / 600  # diminishing returns: the small site gets more than pro rata
    assert shapley(weights, beta=1.0) == pytest.approx({"a": 0.1, "b": 0.3, "c": 0.6})


def test_quality_on_the_site_own_rows_weighs_its_data():
    """The same data size, but the federation's model does poorly on plant_c's own held-out rows."""
    result = compute_shares("r1", [site("plant_a", 300, 0.8), site("plant_b", 300, 0.8), site("plant_c", 300, 0.2)])
    assert result.shares["plant_c"] < result.shares["plant_a"] == result.shares["plant_b"]
    assert compute_shares("r1", [site("a", 300, 0.8), site("b", 300, 0.2)], rule="data_size").shares == {
        "a": Decimal("0.5"), "b": Decimal("0.5")}


def test_sampled_shapley_above_the_exact_limit():
    weights = {f"s{i:02d}": float(100 + 10 * (i // 2)) for i in range(EXACT_LIMIT + 2)}
    weights["s00"] = 0.0
    values = shapley(weights, beta=0.5, samples=3000, seed=7)
    assert values["s00"] == 0.0  # a null site is never credited, sampled or not
    assert values["s02"] == pytest.approx(values["s03"], abs=0.01)  # identical weights, same value
    assert sum(values.values()) == pytest.approx(1.0)
    assert shapley(weights, beta=0.5, samples=3000, seed=7) == values  # seeded: repeatable


def test_inputs_come_from_the_promotion_evidence():
    document = evidence({"plant_a": (400, 0.8), "plant_b": (200, 0.6)},
                        failures={"plant_b": ["round 2 rejected update: norm 40 above bound",
                                              "round 3 train: timed out"],
                                  "plant_c": ["round 5 final evaluation: unreachable"]},
                        seconds={"plant_a": 60.0, "plant_b": 55.0, "plant_c": 70.0})
    inputs = {i.site: i for i in site_inputs(document, rounds=5)}
    assert inputs["plant_a"] == SiteInput("plant_a", 400, 0.8, 5, 5)
    assert inputs["plant_b"] == SiteInput("plant_b", 200, 0.6, 3, 5)
    assert inputs["plant_c"] == SiteInput("plant_c", 0, None, 0, 5)  # no evidence: no rows to count
    shares = compute_shares("r1", list(inputs.values())).shares
    assert shares["plant_c"] == 0 and shares["plant_a"] > shares["plant_b"] > 0


def test_bad_rule_and_beta_are_named():
    with pytest.raises(ValueError, match="rule 'fairish'"):
        compute_shares("r1", [site("a", 1)], rule="fairish")
    with pytest.raises(ValueError, match="beta"):
        compute_shares("r1", [site("a", 1)], beta=0)


@pytest.fixture
def run(tmp_path):
    parser = build_parser()
    settings = Settings(home=tmp_path / "home")

    def invoke(*argv: str):
        args = parser.parse_args(["costs", *argv])
        result = args.func(args, settings)
        json.dumps(result)
        return result

    return invoke


def test_shares_reach_the_store_and_the_report(run, tmp_path):
    """plant_c trained but its every update was rejected: it bears nothing of the run's cost, which is the three
    sites' compute plus the project's cloud bill of the window; amounts add up to exactly that."""
    from costs.store import CostStore, default_url

    path = tmp_path / "evidence.json"
    path.write_text(json.dumps(evidence({"plant_a": (300, 0.8), "plant_b": (300, 0.8), "plant_c": (300, 0.8)},
                                        failures={"plant_c": [f"round {r} rejected update: outlier"
                                                              for r in range(1, 6)]})))
    recorded = run("record-training", "--flower-run-id", "41", "--seconds-json",
                   '{"plant_a": 1800, "plant_b": 1800, "plant_c": 1800}', "--at", "2026-11-20T08:00:00",
                   "--evidence", str(path), "--rounds", "5")
    assert recorded["shares"]["shares"] == {"plant_a": "0.5", "plant_b": "0.5", "plant_c": "0"}
    store = CostStore(default_url(Settings(home=tmp_path / "home").platform_home))  # where the CLI keeps it
    with store.engine.connect() as conn:
        stored = {r.site: r.x_cost_share for r in conn.execute(select(cost_shares))}
    assert stored == {"plant_a": Decimal("0.5"), "plant_b": Decimal("0.5"), "plant_c": Decimal(0)}
    ingest(FocusFileSource("gcp", ["gcp/*.csv"], base=SAMPLES), store, date(2026, 11, 14), date(2026, 11, 21))
    report = run("report", "--project", "axis_failures", "--from", "2026-11-14", "--to", "2026-11-21")
    sharing = report["sharing"]
    training = Decimal(recorded["total"])
    cloud = Decimal(report["by_source"]["gcp"])
    assert Decimal(sharing["cloud_cost"]) == cloud and Decimal(sharing["unallocated"]) == 0
    (only,) = sharing["runs"]
    assert only["flower_run_id"] == "41" and only["rule"] == "contribution"
    assert Decimal(only["total"]) == training + cloud == Decimal(sharing["shared_total"])
    by_site = {s["site"]: s for s in sharing["by_site"]}
    assert Decimal(by_site["plant_c"]["amount"]) == 0 and Decimal(by_site["plant_c"]["compute_cost"]) > 0
    assert by_site["plant_a"]["amount"] == by_site["plant_b"]["amount"]
    assert sum(Decimal(s["amount"]) for s in sharing["by_site"]) == training + cloud
    assert Decimal(report["total"]) == training + cloud  # the report's total and the shared total agree
    # recomputing by data size replaces the run's shares
    again = run("share", "--flower-run-id", "41", "--rule", "data_size", "--evidence", str(path))
    assert again["shares"] == {"plant_a": "0.3333333334", "plant_b": "0.3333333333", "plant_c": "0.3333333333"}
    report = run("report", "--project", "axis_failures", "--from", "2026-11-14", "--to", "2026-11-21")
    assert report["sharing"]["rule"] == "data_size"
    assert sum(Decimal(s["amount"]) for s in report["sharing"]["by_site"]) == training + cloud


def test_record_training_without_evidence_leaves_shares_pending(run, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recorded = run("record-training", "--flower-run-id", "42", "--seconds-json", '{"plant_a": 60}',
                   "--at", "2026-11-20T08:00:00")
    assert "MLFLOW_TRACKING_URI" in recorded["shares"]["pending"]
    report = run("report", "--from", "2026-11-20", "--to", "2026-11-21")
    assert report["sharing"]["unshared_runs"] == ["42"] and report["sharing"]["runs"] == []
    assert Decimal(report["sharing"]["unallocated"]) == Decimal(report["total"])
    with pytest.raises(LookupError, match="no promotion evidence"):
        run("share", "--flower-run-id", "42")
