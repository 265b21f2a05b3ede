"""FedQV: quadratic voting with per-site vote budgets.

Paper: T. Chu, N. Laoutaris, "FedQV: Leveraging Quadratic Voting in Federated Learning", ACM SIGMETRICS / POMACS
2024, arXiv 2401.01168.

Each round: s_i = cosine(w_i, w^{t-1}) of each site's full local weights against the previous global model;
min-max normalised to s̄_i; masked voting gives c_i = 0 when s̄_i <= θ or s̄_i >= 1-θ and 1 - ln s̄_i otherwise;
c_i is paid from the site's budget B_i (initially B = 30; a site whose budget is spent votes 0); the votes are
√(c_i n_i), normalised to the aggregation weights. Sites that send NaN/Inf lose their budget. The "FedQV +
reputation" variant raises the budget and credits of sites with a high NDSS'23 reputation (> 0.9) and zeroes both
for sites whose reputation is 0.

Where the reference code (github TianyueChu/FedQV, ``models/Update.py``) and the paper's description differ or
leave a choice, this follows the paper and says so:
- masked sites get c_i = 0 and pay nothing (as the code's FedQV does; an early ``models/Fed.py`` had a branch, for
  a global accuracy of 0, that gave the least similar site a credit of 1 instead);
- when every vote is 0 (all masked or out of budget) the weights are uniform, as in ``models/Update.py``; should a
  weight ever be NaN the previous global model is kept. Note the consequence: one extreme outlier squeezes every
  other site's s̄ above 1-θ, so all are masked and the round is a plain average; the reputation variant is the one
  that excludes such a site;
- the reputation variant adjusts budgets and credits only; the code additionally aggregates the residual-
  restricted models, which would make it a different rule (ReputationResidual's). Its reputation is the NDSS'23
  one with time decay (fl/strategies/reputation_residual.py), kept per site across rounds; the FedQV code
  recomputes an undecayed one every round;
- the similarity is computed by the server from the weights it received (``similarity="server"``, the default),
  so a site cannot lie about it; ``similarity="client"`` reads a client-reported ``similarity`` metric, as in
  the paper;
- the budget B is for a whole training (never replenished, as in the code). The paper's B = 30 goes with about 10
  participations per party (100 rounds, 10 % of 100 parties sampled per round): where every site takes part in
  every round, and budgets persist across runs, B = 30 runs dry after 15-25 rounds, after which only masked
  sites (attackers among them) still hold credits. Give ``budget`` in proportion to the rounds a site is
  expected to take part in (about 3 per participation, as in the paper).

- the reputation variant's outlier counts are estimated from ``coordinates`` model coordinates drawn uniformly
  without replacement each round (16,384 by default; every coordinate of a smaller model): only each site's share
  of outlier values enters its opinion (with d = 1e6 observations W = 2 is negligible), and a uniform sample of m
  coordinates estimates that share within ε of the full count's with probability >= 1 - 2 exp(-2 m ε²)
  (Hoeffding, sampling without replacement): ε = 0.013 at 99 % per site and round for m = 16,384 (each round
  draws afresh, and the reputation averages about four rounds through its decay). The counts are scaled back to
  d. The residual lines themselves use the stratified repeated median of fl/strategies/repeated_median.py beyond
  33 sites (exact up to 33).

Cost: the similarity and the average read each site's payload where it lies (fl/strategies/arrays.py), so plain
FedQV costs about two weighted means; the reputation variant adds the residual fit on the sampled coordinates only
(no (sites, parameters) matrix), which keeps it within 3x a NumPy weighted mean at n = 100, d = 1e6 on two cores
(bench/results/aggregation_speed.md).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from fl.strategies.arrays import Layout, dot_products, sampled_columns, weighted_sum
from fl.strategies.repeated_median import PARTNERS, restrict_outliers, round_seed
from fl.strategies.reputation import normalise_reputations, update_reputations
from fl.strategies.state import MemoryStateStore, StateStore
from fl.strategies.validation import BAD_METRICS, NON_FINITE, ValidatingMixin, site_of

SIMILARITY_KEY = "similarity"
# Coordinates sampled per round for the reputation variant's outlier counts (module docstring).
REPUTATION_COORDINATES = 2**14


def cosines_from_dots(dots: np.ndarray, squares: np.ndarray, reference_square: float) -> np.ndarray:
    """cos(w_i, g) from w_i · g, w_i · w_i and g · g; 0 where a vector is all zeros."""
    norms = np.sqrt(np.asarray(squares, dtype=np.float64)) * np.sqrt(float(reference_square))
    dots = np.asarray(dots, dtype=np.float64)
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def minmax_normalise(values: Sequence[float]) -> np.ndarray:
    """(v - min) / (max - min); all zeros when every value is the same (as scikit-learn's MinMaxScaler does)."""
    v = np.asarray(values, dtype=np.float64)
    span = v.max() - v.min()
    return (v - v.min()) / span if span > 0 else np.zeros_like(v)


def masked_votes(s_bar: np.ndarray, theta: float = 0.2) -> np.ndarray:
    """Voice credits c_i: 0 when s̄_i <= θ or s̄_i >= 1-θ (masked), else 1 - ln s̄_i."""
    s_bar = np.asarray(s_bar, dtype=np.float64)
    masked = (s_bar <= theta) | (s_bar >= 1 - theta)
    return np.where(masked, 0.0, 1 - np.log(np.where(masked, 1.0, s_bar)))


def spend_budgets(c: np.ndarray, budgets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pay the credits from the budgets: (credits actually spent, budgets left).

    B_i <= 0: c_i = 0 (and B_i = 0); B_i - c_i <= 0: c_i = B_i, B_i = 0; else B_i -= c_i.
    """
    c, budgets = np.asarray(c, dtype=np.float64), np.asarray(budgets, dtype=np.float64)
    spent = budgets <= 0
    last = ~spent & (budgets - c <= 0)
    new_c = np.where(spent, 0.0, np.where(last, budgets, c))
    new_budgets = np.where(spent | last, 0.0, budgets - c)
    return new_c, new_budgets


def reputation_adjust(c: np.ndarray, budgets: np.ndarray, reputation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FedQV + reputation: rep > 0.9 adds rep to budget and credits; rep == 0 zeroes both."""
    c, budgets, rep = (np.asarray(v, dtype=np.float64) for v in (c, budgets, reputation))
    good, bad = rep > 0.9, rep == 0
    return np.where(bad, 0.0, c + np.where(good, rep, 0.0)), np.where(bad, 0.0, budgets + np.where(good, rep, 0.0))


def quadratic_weights(c: np.ndarray, n: np.ndarray) -> np.ndarray:
    """α_i = √max(0, c_i n_i) / Σ_j √max(0, c_j n_j); uniform when every vote is 0 (NaN propagates)."""
    votes = np.sqrt(np.maximum(0.0, np.asarray(c, dtype=np.float64) * np.asarray(n, dtype=np.float64)))
    total = votes.sum()
    if total == 0:
        return np.full(len(votes), 1.0 / len(votes))
    return votes / total


class FedQV(ValidatingMixin, FedAvg):
    """FedQV [Chu & Laoutaris, 2024].

    Parameters (beyond FedAvg's): ``theta`` (masking, 0.2), ``budget`` (initial vote budget, 30), ``similarity``
    ("server" or "client"), ``reputation`` (the FedQV + reputation variant), ``threshold`` (its residual
    confidence threshold, 0.05 as in the FedQV code), ``coordinates`` (sampled per round for the reputation,
    16,384), ``partners`` and ``seed`` (the residual fit's, see ReputationResidual), ``state`` (a SiteStateStore
    for budgets and reputation histories across runs; in memory when None), ``max_examples``.
    """

    def __init__(
        self,
        *,
        theta: float = 0.2,
        budget: float = 30.0,
        similarity: str = "server",
        reputation: bool = False,
        threshold: float = 0.05,
        lam: float = 2.0,
        coordinates: int = REPUTATION_COORDINATES,
        partners: int | None = PARTNERS,
        seed: int | None = None,
        state: StateStore | None = None,
        **kwargs,
    ) -> None:
        if similarity not in ("server", "client"):
            raise ValueError(f"similarity must be 'server' or 'client', not {similarity!r}")
        if not 0 <= theta < 0.5:
            raise ValueError("theta must be in [0, 0.5)")
        super().__init__(**kwargs)
        self.theta, self.budget, self.similarity = theta, budget, similarity
        self.reputation, self.threshold, self.lam = reputation, threshold, lam
        self.coordinates, self.partners = coordinates, partners
        self.seed = secrets.randbits(63) if seed is None else seed
        self.state = state if state is not None else MemoryStateStore()
        self.state_key = "fedqv-reputation" if reputation else "fedqv"

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, vote (similarity, masking, budgets), average with the quadratic weights."""
        valid = self.validate(replies)
        self._forfeit_budgets([s for s, why in self.last_rejected.items() if why.startswith(NON_FINITE)])
        if self.similarity == "client":
            valid = self.reject(valid, self._similarity_problems(valid))
        if not valid:
            return None, None
        sites = [site_of(r) for r in valid]
        records = [self.arrays_of(r) for r in valid]
        layout = Layout.of(records[0])
        weights = self._weigh(sites, records, layout, valid, server_round)
        metrics = self.aggregate_metrics(valid)
        if np.isnan(weights).any():
            return self.global_arrays, metrics  # as the paper: keep the previous global model
        self.record_weights(sites, weights)
        # Straight from the payloads: FedQV weighs whole models, so it needs no (clients, parameters) matrix.
        return weighted_sum(records, layout, weights), metrics

    def _weigh(
        self, sites: list[str], records: list[ArrayRecord], layout: Layout, replies: list[Message], server_round: int
    ) -> np.ndarray:
        """The round's votes: similarity, masking, (reputation,) payment from the stored budgets, weights."""
        if self.similarity == "server":
            reference = self.global_vector().astype(layout.compute_dtype, copy=False)
            dots, squares = dot_products(records, layout, reference)
            s = cosines_from_dots(dots, squares, float(reference @ reference))
        else:
            s = np.array([float(self.metrics_of(r)[SIMILARITY_KEY]) for r in replies])
        c = masked_votes(minmax_normalise(s), self.theta)
        states = {site: self.state.load(self.state_key, site) for site in sites}
        budgets = np.array([float(states[site].get("budget", self.budget)) for site in sites])
        if self.reputation:
            # Outlier counts only, estimated on sampled coordinates: the models aggregated stay the sites' own.
            reputations, histories = update_reputations(
                self.state, self.state_key, sites, self._outlier_counts(records, layout, server_round), layout.size
            )
            for site in sites:
                states[site]["history"] = histories[site]["history"]
            c, budgets = reputation_adjust(c, budgets, normalise_reputations(reputations))
        c, budgets = spend_budgets(c, budgets)
        for site, left in zip(sites, budgets, strict=True):
            states[site]["budget"] = float(left)
        self.state.save_many(self.state_key, states)
        return quadratic_weights(c, self.examples(replies))

    def _outlier_counts(self, records: list[ArrayRecord], layout: Layout, server_round: int) -> np.ndarray:
        """Each site's number of outlier values, estimated from the sampled coordinates and scaled to the model."""
        seed = round_seed(self.seed, server_round)
        sample = sampled_columns(records, layout, self.coordinates, np.random.default_rng([seed, 1]))
        counts = restrict_outliers(
            sample, self.lam, self.threshold, partners=self.partners, seed=seed, restrict=False
        )
        return counts * (layout.size / sample.shape[1])

    def _similarity_problems(self, replies: list[Message]) -> dict[str, str]:
        problems = {}
        for reply in replies:
            value = self.metrics_of(reply).get(SIMILARITY_KEY)
            if isinstance(value, bool) or not isinstance(value, int | float) or not -1 <= value <= 1:
                problems[site_of(reply)] = f"{BAD_METRICS}: {SIMILARITY_KEY} {value!r} is not a cosine in [-1, 1]"
        return problems

    def _forfeit_budgets(self, sites: list[str]) -> None:
        """Sites that sent NaN/Inf lose their whole budget (the paper's rule for invalid models)."""
        if sites:
            states = {site: self.state.load(self.state_key, site) for site in sites}
            self.state.save_many(self.state_key, {site: {**s, "budget": 0.0} for site, s in states.items()})
