"""Fair cost sharing: each federated run's cost split among its sites by a documented rule, stored per run and site.

A run's cost is its sites' compute (the ``mledge-training`` rows, priced at each site's declared machine) plus the
project's share of the platform's cloud bill. How it is split among the sites is decided per run, from what the
platform already holds after the run: the promotion evidence the ServerApp wrote (``fl.protocol
.PromotionEvidence``: per site, the final model's scores on the site's own held-out rows and how many rows that
was; the rounds in which a site failed or whose update the robust aggregator rejected).

Rules (``RULES``):

- ``contribution`` (default): each site's **Shapley value** in the coalition game below, normalised to shares.
  The platform holds no model trained by a subset of the sites, so a coalition's value is estimated:
  ``v(S) = (D(S) / D(N)) ** beta`` with ``D(S) = sum over i in S of n_i * a_i * q_i``, where

  - ``n_i``: the rows the site scored the final model on (every site splits its data the same way, so this is
    proportional to what it trained on);
  - ``a_i``: the fraction of the run's rounds whose update from the site was used (a round it failed in, or whose
    update was rejected as an outlier, counts for nothing);
  - ``q_i = min(1, m_i / m)``: how well the federation's model does on the site's own held-out rows (``m_i``, the
    promotion gate's metric, F1 of the failure class by default) against the example-weighted mean over sites
    (``m``). A site whose data the model learnt less from (noisy, poisoned or unlike the others) counts for less;
    one at or above the mean counts fully, so an easy site is not paid for being easy. With no signal (``m`` = 0)
    every ``q_i`` is 1.
  - ``beta`` (default 0.5): diminishing returns of more data, as learning curves show; ``beta = 1`` makes the
    Shapley value proportional to ``n_i * a_i * q_i``.

  Exact (every coalition) up to ``EXACT_LIMIT`` sites; above, permutation sampling truncated once a coalition
  reaches the grand coalition's value (the Monte Carlo scheme GTG-Shapley builds on, Liu et al. 2022), seeded, so
  results are repeatable. The Shapley value gives a site that adds nothing to any coalition nothing (a site with
  no rows, or whose every update was rejected), gives identical sites equal shares, and shares add up to 1.
- ``leave_one_out``: ``v(N) - v(N without i)`` of the same game, normalised (cheaper, not always fair: two
  identical sites that each make the other redundant both get little).
- ``data_size``: ``n_i`` (the simple option).
- ``equal``: the same share for every site that took part.

A site that delivered no evidence (it failed the final evaluation) has no rows to count: its share is 0 under the
three data-based rules; its compute is still part of the run's cost, which the other sites then bear. Shares are
stored with 10 decimal places and always add up to exactly 1 (the remainder goes to the largest share).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING, Any

from costs.focus import AMOUNT_PLACES

if TYPE_CHECKING:
    from costs.store import CostStore

RULES = ("contribution", "leave_one_out", "data_size", "equal")
DEFAULT_RULE = "contribution"
DEFAULT_BETA = 0.5
EXACT_LIMIT = 12
HIGHER_IS_BETTER = {"f1": True, "recall": True, "precision": True, "accuracy": True, "loss": False}
_QUANTUM = Decimal(1).scaleb(-AMOUNT_PLACES)
_ROUND = re.compile(r"^round (\d+) (train|rejected update)\b")


@dataclass(frozen=True)
class SiteInput:
    """What the platform knows of one site after a run."""

    site: str
    examples: int  # held-out rows it scored the final model on (0: no evidence)
    metric: float | None  # the final model's gate metric on those rows
    rounds_used: int  # rounds whose update from the site went into the model
    rounds: int  # rounds of the run


@dataclass
class ShareResult:
    """One run's shares and how they were computed (``details`` is stored as JSON beside each share)."""

    flower_run_id: str
    rule: str
    shares: dict[str, Decimal]
    contributions: dict[str, float]
    inputs: list[SiteInput]
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"flower_run_id": self.flower_run_id, "rule": self.rule,
                "shares": {s: _text(v) for s, v in sorted(self.shares.items())},
                "contributions": {s: round(v, 12) for s, v in sorted(self.contributions.items())},
                "inputs": [asdict(i) for i in self.inputs], "settings": self.settings}


def _text(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


def site_inputs(evidence: Mapping[str, Any], *, sites: set[str] | None = None, metric: str = "f1",
                rounds: int | None = None) -> list[SiteInput]:
    """Per-site inputs from a run's promotion evidence (``PromotionEvidence.to_dict()`` form).

    ``sites``: every site that took part (e.g. those with compute seconds), also the ones without evidence.
    ``rounds``: the run's number of rounds; unknown, the highest round named in the failures (or 1).
    """
    from fl.protocol import PromotionEvidence

    parsed = PromotionEvidence.from_dict(evidence)
    failed_rounds: dict[str, set[int]] = {}
    for site, problems in parsed.failures.items():
        for problem in problems:
            match = _ROUND.match(problem)
            if match:
                failed_rounds.setdefault(site, set()).add(int(match.group(1)))
    if rounds is None:
        rounds = max((r for rs in failed_rounds.values() for r in rs), default=1)
    everyone = set(parsed.sites) | set(parsed.compute_seconds) | set(parsed.failures) | (sites or set())
    inputs = []
    for site in sorted(everyone):
        entry = parsed.sites.get(site)
        value = None
        if entry is not None and metric in entry.candidate and math.isfinite(float(entry.candidate[metric])):
            value = float(entry.candidate[metric])
        used = max(0, rounds - len(failed_rounds.get(site, set()))) if entry is not None else 0
        inputs.append(SiteInput(site, entry.num_examples if entry is not None else 0, value, used, rounds))
    return inputs


def _weights(inputs: list[SiteInput], metric: str) -> dict[str, float]:
    """n_i * a_i * q_i of every site (see the module's description)."""
    higher = HIGHER_IS_BETTER.get(metric, True)
    scored = [(i.examples, i.metric) for i in inputs if i.examples > 0 and i.metric is not None]
    total = sum(n for n, _ in scored)
    mean = sum(n * m for n, m in scored) / total if total else 0.0
    weights = {}
    for item in inputs:
        if item.examples <= 0 or item.rounds <= 0:
            weights[item.site] = 0.0
            continue
        quality = 1.0
        if item.metric is not None and mean > 0:
            quality = min(1.0, item.metric / mean) if higher else min(1.0, mean / item.metric if item.metric else 1.0)
        weights[item.site] = item.examples * (item.rounds_used / item.rounds) * max(0.0, quality)
    return weights


def shapley(weights: Mapping[str, float], beta: float = DEFAULT_BETA, *, samples: int = 2000,
            seed: int = 0, tolerance: float = 1e-9) -> dict[str, float]:
    """Shapley values of v(S) = (sum of weights in S / total) ** beta; exact up to EXACT_LIMIT players."""
    players = sorted(weights)
    total = sum(weights.values())
    if total <= 0:
        return {p: 0.0 for p in players}

    def value(mass: float) -> float:
        return (mass / total) ** beta if mass > 0 else 0.0

    n = len(players)
    if n <= EXACT_LIMIT:
        result = {p: 0.0 for p in players}
        factorial = math.factorial
        for index, player in enumerate(players):
            others = [weights[p] for j, p in enumerate(players) if j != index]
            for size in range(n):
                coefficient = factorial(size) * factorial(n - size - 1) / factorial(n)
                for subset in itertools.combinations(others, size):
                    mass = sum(subset)
                    result[player] += coefficient * (value(mass + weights[player]) - value(mass))
        return result
    rng = random.Random(seed)
    sums = {p: 0.0 for p in players}
    for _ in range(samples):
        order = players[:]
        rng.shuffle(order)
        mass, previous = 0.0, 0.0
        for player in order:
            if previous >= 1.0 - tolerance:  # truncation: the rest add (almost) nothing
                break
            mass += weights[player]
            current = value(mass)
            sums[player] += current - previous
            previous = current
    return {p: s / samples for p, s in sums.items()}


def leave_one_out(weights: Mapping[str, float], beta: float = DEFAULT_BETA) -> dict[str, float]:
    total = sum(weights.values())
    if total <= 0:
        return {p: 0.0 for p in weights}
    return {p: 1.0 - ((total - w) / total) ** beta for p, w in weights.items()}


def normalise(scores: Mapping[str, float]) -> dict[str, Decimal]:
    """Shares with AMOUNT_PLACES places adding up to exactly 1 (largest remainder; nothing for scores <= 0).
    No positive score at all: every site the same share."""
    positive = {s: max(0.0, v) for s, v in scores.items()}
    total = sum(positive.values())
    if total <= 0:
        positive = {s: 1.0 for s in scores}
        total = float(len(scores))
    if not positive:
        return {}
    exact = {s: Decimal(repr(v / total)) for s, v in positive.items()}
    shares = {s: e.quantize(_QUANTUM, rounding=ROUND_DOWN) for s, e in exact.items()}
    remainder = Decimal(1) - sum(shares.values())
    steps = int(remainder / _QUANTUM)
    for site in sorted(exact, key=lambda s: (shares[s] - exact[s], -exact[s], s))[:steps]:  # ties: by name
        shares[site] += _QUANTUM
    return shares


def compute_shares(flower_run_id: str, inputs: list[SiteInput], *, rule: str = DEFAULT_RULE,
                   beta: float = DEFAULT_BETA, metric: str = "f1") -> ShareResult:
    """One run's shares by ``rule``."""
    if rule not in RULES:
        raise ValueError(f"cost sharing rule {rule!r} is not one of {', '.join(RULES)}")
    if not inputs:
        raise ValueError(f"run {flower_run_id}: no site to share its cost among")
    if not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1], not {beta}")
    weights = _weights(inputs, metric)
    if rule == "contribution":
        scores = shapley(weights, beta)
    elif rule == "leave_one_out":
        scores = leave_one_out(weights, beta)
    elif rule == "data_size":
        scores = {i.site: float(i.examples) for i in inputs}
    else:
        scores = {i.site: 1.0 for i in inputs}
    settings = {"metric": metric, "beta": beta, "weights": {s: round(w, 9) for s, w in sorted(weights.items())},
                "exact": len(inputs) <= EXACT_LIMIT}
    return ShareResult(flower_run_id, rule, normalise(scores), scores, inputs, settings)


def record_shares(store: CostStore, result: ShareResult, *, project: str, day: date) -> dict[str, Any]:
    """Store one run's shares (replacing earlier ones of the run), in one transaction."""
    from sqlalchemy import delete

    from costs.store import cost_shares

    now = datetime.now(UTC).replace(tzinfo=None)
    by_site = {i.site: i for i in result.inputs}
    details = json.dumps({"settings": result.settings, "inputs": [asdict(i) for i in result.inputs]},
                         sort_keys=True)
    rows = [{"flower_run_id": result.flower_run_id, "x_project": project, "site": site, "day": day,
             "rule": result.rule, "x_cost_share": share,
             "contribution": Decimal(repr(result.contributions.get(site, 0.0))).quantize(Decimal("1E-18")),
             "examples": by_site[site].examples if site in by_site else None, "details": details,
             "computed_at": now} for site, share in sorted(result.shares.items())]
    with store.engine.begin() as conn:
        conn.execute(delete(cost_shares).where(cost_shares.c.flower_run_id == result.flower_run_id))
        conn.execute(cost_shares.insert(), rows)
    return {"project": project, "day": day.isoformat(), **result.as_dict()}


def stored_shares(store: CostStore, project: str, start: date, end: date) -> dict[str, dict[str, Any]]:
    """Every run of ``project`` with shares recorded for a day in [start, end): run -> {day, rule, shares}."""
    from sqlalchemy import select

    from costs.store import cost_shares

    query = (select(cost_shares.c.flower_run_id, cost_shares.c.day, cost_shares.c.rule, cost_shares.c.site,
                    cost_shares.c.x_cost_share)
             .where(cost_shares.c.x_project == project, cost_shares.c.day >= start, cost_shares.c.day < end)
             .order_by(cost_shares.c.day, cost_shares.c.flower_run_id, cost_shares.c.site))
    runs: dict[str, dict[str, Any]] = {}
    with store.engine.connect() as conn:
        for run, day, rule, site, share in conn.execute(query):
            entry = runs.setdefault(run, {"day": day, "rule": rule, "shares": {}})
            entry["shares"][site] = share
    return runs


def split(amount: Decimal, shares: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """``amount`` split by ``shares`` to AMOUNT_PLACES places, adding up to exactly ``amount``."""
    if not shares:
        return {}
    parts = {s: (amount * share).quantize(_QUANTUM, rounding=ROUND_DOWN) for s, share in shares.items()}
    remainder = amount - sum(parts.values())
    largest = max(sorted(shares), key=lambda s: shares[s])
    parts[largest] += remainder
    return parts
