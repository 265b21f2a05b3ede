"""``dp``: central differential privacy on the mean of clipped updates (DP-FedAvg, McMahan et al., ICLR 2018;
Gaussian mechanism accounted with RDP, Abadi et al. 2016, Mironov 2017).

The platform sees each site's update (as with ``none``); it validates it (the wrapped strategy's checks), clips it
to L2 norm ``clip_norm`` (whatever the site did), sums the clipped updates, adds Gaussian noise of standard
deviation ``noise_multiplier * clip_norm`` to the sum and divides by the number of sites: each site counts once,
so one site moves the sum by at most ``clip_norm`` (the sensitivity the accountant assumes). What the DP guarantee
covers: the released global models (and everything computed from them), for the content of any one site's
updates. What it does not: the platform itself (it sees the updates; use ``secagg-dp``) and the sites'
evaluation counts, which reach MLflow as in every mode.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fl.privacy.noise import clip
from fl.privacy.vectors import to_arrays, to_vector
from fl.strategies.validation import ValidatingMixin, site_of
from mledge.contracts import ARRAYS_KEY, METRICS_KEY


class CentralGaussianMean:
    """Validate with ``strategy`` (a ValidatingMixin strategy: FedAvg here), clip each update, average with equal
    weights, add Gaussian noise to the sum. ``releases`` counts the noisy aggregates made (the accountant's rounds).
    """

    def __init__(
        self,
        strategy: ValidatingMixin,
        *,
        clip_norm: float,
        noise_multiplier: float,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.strategy = strategy
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.rng = rng or np.random.default_rng()
        self.releases = 0
        self.last_weights: dict[str, float] = {}
        self.last_norms: dict[str, float] = {}

    # Sampling knobs the ServerApp adjusts per round (serverapp.sampling_at_most) live on the wrapped strategy.
    @property
    def min_available_nodes(self) -> int:
        return int(self.strategy.min_available_nodes)  # type: ignore[attr-defined]

    @min_available_nodes.setter
    def min_available_nodes(self, value: int) -> None:
        self.strategy.min_available_nodes = value  # type: ignore[attr-defined]

    @property
    def min_train_nodes(self) -> int:
        return int(self.strategy.min_train_nodes)  # type: ignore[attr-defined]

    @min_train_nodes.setter
    def min_train_nodes(self, value: int) -> None:
        self.strategy.min_train_nodes = value  # type: ignore[attr-defined]

    @property
    def last_rejected(self) -> dict[str, str]:
        return self.strategy.last_rejected

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)  # type: ignore[attr-defined]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = self.strategy.validate(replies)
        self.last_weights, self.last_norms = {}, {}
        if not valid or self.strategy.global_arrays is None:
            return None, None
        start = to_vector(self.strategy.global_arrays)
        total = np.zeros_like(start)
        for reply in valid:
            clipped, norm = clip(to_vector(reply.content[ARRAYS_KEY]) - start, self.clip_norm)
            total += clipped
            self.last_norms[site_of(reply)] = norm
        total += self.rng.normal(0.0, self.noise_multiplier * self.clip_norm, size=total.shape)
        self.releases += 1
        self.last_weights = {site_of(r): 1.0 / len(valid) for r in valid}
        losses = [float(r.content[METRICS_KEY].get("train-loss", np.nan)) for r in valid]
        metrics = MetricRecord({"train-loss": float(np.nanmean(losses))}) if np.isfinite(losses).any() else None
        return to_arrays(start + total / len(valid), self.strategy.global_arrays), metrics
