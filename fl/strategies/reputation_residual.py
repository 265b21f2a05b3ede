"""Residual-based reweighting with a subjective-logic reputation ("FedRM-RR").

Paper: T. Chu, A. Garcia-Recuero, C. Iordanou, G. Smaragdakis, N. Laoutaris, "Securing Federated Sensitive Topic
Classification against Poisoning Attacks", NDSS 2023, arXiv 2201.13086. The residual detection is that of Fu et
al., "Attack-Resistant Federated Learning with Residual-based Reweighting" (arXiv 1912.11464), which it builds on.

Each round, per model coordinate: sort the n clients' values y (ranks x = 0..n-1), fit Siegel's repeated-median
line, scale the residuals robustly, and give every value a confidence ω (1 for inliers); values with ω below the
threshold are replaced by the line's value (the "restricted" model). Each client's inlier and outlier counts over
all coordinates are positive and negative observations of a subjective-logic opinion, its reputation, which decays
over a window of rounds; the global model is the reputation-weighted average of the restricted models. The line
and residuals are in fl/strategies/repeated_median.py, the reputation in fl/strategies/reputation.py.

Where the reference code (github TianyueChu/FedRep) departs from the paper, this follows the paper:
- inliers (ω >= threshold) are the positive observations; the code counts them as disbelief;
- z = 0.5 on every path (one call in the code shifts its arguments so that z becomes 10);
- every coordinate is observed; in the code only the last shard of a sharded layer survives, and 0-d arrays are
  skipped;
- τ uses the median of all n absolute residuals; the code drops the smallest one first;
- min-max normalised reputations below 1/n are zeroed (the FedRep code uses 0.1, the FedQV code 1/n); when every
  site has the same reputation, min-max is undefined and the weights are uniform (the code would divide by zero);
- the aggregate weighs by reputation only, not by example counts, as both paper and code do.

Speed: the exact repeated median costs n (n - 1) slopes per coordinate. Beyond 33 sites each point's inner median
is taken over a stratified sample of ``partners`` (16) slopes instead, with the error bound stated in
fl/strategies/repeated_median.py; up to 33 sites (and on a CUDA device) the line is exact. ``partners=None``
forces the exact line everywhere. The partner plans are drawn from ``seed`` and the round number; ``seed=None``
(the default) draws a secret seed per strategy object, so that a site cannot predict which of its values are
compared with which.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg

from fl.strategies.arrays import Layout, stack, unflatten, weighted_average
from fl.strategies.repeated_median import PARTNERS, restrict_outliers, round_seed
from fl.strategies.reputation import reputation_weights, update_reputations
from fl.strategies.state import MemoryStateStore, StateStore
from fl.strategies.validation import ValidatingMixin, site_of


class ReputationResidual(ValidatingMixin, FedAvg):
    """Residual-based reweighting with reputation [Chu et al., NDSS 2023].

    Parameters (beyond FedAvg's): ``lam`` (λ, 2), ``threshold`` (confidence below which a value is an outlier,
    0.1), ``kappa`` (0.3), ``W`` (2), ``a`` (0.5), ``z`` (decay, 0.5), ``window`` (rounds, 10), ``partners``
    (slopes per inner median beyond 33 sites, 16; None: exact), ``seed`` (partner plans; None: a secret one),
    ``state`` (a SiteStateStore for reputation histories across runs; in memory when None), ``max_examples``.
    """

    state_key = "reputation-residual"

    def __init__(
        self,
        *,
        lam: float = 2.0,
        threshold: float = 0.1,
        kappa: float = 0.3,
        W: float = 2.0,
        a: float = 0.5,
        z: float = 0.5,
        window: int = 10,
        partners: int | None = PARTNERS,
        seed: int | None = None,
        state: StateStore | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.lam, self.threshold = lam, threshold
        self.partners = partners
        self.seed = secrets.randbits(63) if seed is None else seed
        self.opinion_params = {"kappa": kappa, "W": W, "a": a, "z": z, "window": window}
        self.state = state if state is not None else MemoryStateStore()

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, restrict each coordinate's outliers, weigh by decayed reputation, average."""
        valid = self.validate(replies)
        if not valid:
            return None, None
        sites = [site_of(r) for r in valid]
        layout = Layout.of(self.arrays_of(valid[0]))
        matrix = stack([self.arrays_of(r) for r in valid], layout)
        outliers = restrict_outliers(
            matrix, self.lam, self.threshold, partners=self.partners, seed=round_seed(self.seed, server_round)
        )
        reputations, states = update_reputations(
            self.state, self.state_key, sites, outliers, matrix.shape[1], **self.opinion_params
        )
        self.state.save_many(self.state_key, states)
        weights = reputation_weights(reputations)
        self.record_weights(sites, weights)
        return unflatten(weighted_average(matrix, weights), layout), self.aggregate_metrics(valid)
