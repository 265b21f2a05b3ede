"""What the ServerApp asks of the privacy modes: the strategy to run, and the run's privacy report.

``apply_privacy(run_config, strategy_name, strategy, ...)`` returns the strategy unchanged and no report under
``none``; otherwise it refuses combinations that cannot work (fl/privacy/modes.py), calibrates the noise of the
noisy modes to the run's target epsilon over its rounds, and returns the private strategy and a ``PrivacyReport``
whose tags (mode, epsilon, delta, noise multiplier, clip bound) go on the training run and, by registration, on the
registered model versions; its epsilon is the one spent by the rounds actually aggregated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fl.privacy.accountant import epsilon, noise_multiplier_for
from fl.privacy.central_dp import CentralGaussianMean
from fl.privacy.modes import DP, NONE, SECAGG, SECAGG_DP, PrivacySettings, validate
from fl.privacy.plan import clipping_range
from fl.privacy.secagg import SecAggPlusMean
from mledge.contracts import (
    DEFAULT_STRATEGY,
    TAG_CLIP_NORM,
    TAG_DELTA,
    TAG_EPSILON,
    TAG_NOISE_MULTIPLIER,
    TAG_PRIVACY,
)


@dataclass
class PrivacyReport:
    """A run's privacy: its settings, the calibrated noise multiplier (None without noise), and the strategy that
    counts the noisy releases."""

    settings: PrivacySettings
    rounds: int
    noise_multiplier: float | None
    strategy: Any

    @property
    def releases(self) -> int:
        return int(getattr(self.strategy, "releases", 0))

    def epsilon(self) -> float:
        """Epsilon spent so far (at the run's delta); inf without noise."""
        if self.noise_multiplier is None:
            return math.inf
        return epsilon(self.noise_multiplier, self.releases, self.settings.delta)

    def tags(self) -> dict[str, str]:
        tags = {TAG_PRIVACY: self.settings.mode, TAG_CLIP_NORM: f"{self.settings.clip_norm:g}"}
        if self.noise_multiplier is not None:
            tags.update({
                TAG_EPSILON: f"{self.epsilon():.4g}",
                TAG_DELTA: f"{self.settings.delta:g}",
                TAG_NOISE_MULTIPLIER: f"{self.noise_multiplier:.6g}",
            })
        return tags

    def metrics(self) -> dict[str, float]:
        if self.noise_multiplier is None:
            return {}
        return {"privacy_epsilon": self.epsilon(), "privacy_delta": self.settings.delta,
                "privacy_noise_multiplier": self.noise_multiplier}


def apply_privacy(
    run_config: Mapping[str, Any],
    strategy_name: str,
    strategy: Any,
    *,
    min_nodes: int,
    min_replies: int,
    timeout: float | None = None,
) -> tuple[Any, PrivacyReport | None]:
    """The strategy the run's ``privacy`` mode needs, and its report (``(strategy, None)`` under ``none``)."""
    settings = validate(run_config, strategy_name or DEFAULT_STRATEGY)
    if settings.mode == NONE:
        return strategy, None
    rounds = int(run_config["num-server-rounds"])
    z = noise_multiplier_for(settings.epsilon, rounds, settings.delta) if settings.noisy else None
    if settings.mode == DP:
        private: Any = CentralGaussianMean(strategy, clip_norm=settings.clip_norm, noise_multiplier=float(z or 0))
    elif settings.mode == SECAGG:
        private = SecAggPlusMean(
            clipping_range=clipping_range(settings.clip_norm), min_nodes=min_nodes, screening=True, timeout=timeout
        )
    elif settings.mode == SECAGG_DP:
        private = SecAggPlusMean(
            clipping_range=clipping_range(settings.clip_norm, float(z or 0), min_replies),
            min_nodes=min_nodes, screening=False, timeout=timeout,
        )
    else:  # pragma: no cover - validate() knows every mode
        raise ValueError(settings.mode)
    return private, PrivacyReport(settings, rounds, z, private)
