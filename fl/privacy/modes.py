"""Privacy modes, their knobs from the run config, and which aggregation strategy can run under which mode.

Per-site rules (Krum, medians, trimmed means, reputations, quadratic voting) look at each site's update; under
secure aggregation the platform never holds one, and under differential privacy the noise is calibrated to a mean
of clipped updates, whose sensitivity to one site is the clip bound: a rule that selects or re-weights updates by
their values has no such bound. So every mode but ``none`` runs with ``fedavg`` only (each site counts once: its
weight cannot be checked under SecAgg+, and the DP sensitivity needs equal weights), and asking for another rule
fails before the run starts, saying why. Robustness under ``secagg`` is the platform's clip bound and the screening
of the sites' disclosed scalar summaries (fl/privacy/screening.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from mledge.contracts import (
    CLIP_NORM,
    CLIP_NORM_KEY,
    DEFAULT_PRIVACY,
    DEFAULT_STRATEGY,
    DP_DELTA,
    DP_DELTA_KEY,
    DP_EPSILON,
    DP_EPSILON_KEY,
    PRIVACY_KEY,
    PRIVACY_MODES,
)

NONE, DP, SECAGG, SECAGG_DP = "none", "dp", "secagg", "secagg-dp"
if set(PRIVACY_MODES) != {NONE, DP, SECAGG, SECAGG_DP}:
    raise ImportError(f"privacy modes {sorted(PRIVACY_MODES)} are not the ones fl/privacy implements")
# The one strategy every private mode runs: a mean, which secure aggregation can compute and DP can bound.
PRIVATE_STRATEGY = "fedavg"

# Why each per-site rule cannot run behind secure aggregation / with DP noise (the refusal's text).
_LOOKS_AT = {
    "krum": "scores each site's update by its distances to the other sites' updates",
    "multikrum": "scores each site's update by its distances to the other sites' updates",
    "bulyan": "selects updates by their distances and trims each coordinate across sites",
    "fedmedian": "takes each coordinate's median across the sites' individual updates",
    "fedtrimmedavg": "trims each coordinate's extreme values across the sites' individual updates",
    "mledge-robust": "compares each site's update with the majority direction and weighs it by reputation",
    "fedqv": "turns each site's update into votes from its similarity to the others",
    "fedqv-reputation": "turns each site's update into votes from its similarity to the others",
    "reputation-residual": "re-weights each site by the residuals of its own update",
}


class PrivacyCombinationError(ValueError):
    """A strategy and a privacy mode that cannot work together (the message says why, and what can)."""


def check_combination(strategy: str, mode: str) -> None:
    """Raise PrivacyCombinationError unless ``strategy`` can run under privacy ``mode``."""
    strategy, mode = strategy.strip().lower(), mode.strip().lower()
    if mode not in PRIVACY_MODES:
        raise PrivacyCombinationError(f"unknown privacy mode {mode!r}; valid modes: {', '.join(PRIVACY_MODES)}")
    if mode == NONE or strategy == PRIVATE_STRATEGY:
        return
    what = _LOOKS_AT.get(strategy, "aggregates by rules of its own")
    if mode in (SECAGG, SECAGG_DP):
        why = (
            f"{strategy} {what}, and under secure aggregation (SecAgg+) the platform only ever holds the sum of "
            f"the updates"
        )
    else:
        why = (
            f"{strategy} {what}; the DP noise is calibrated to a mean of clipped updates, which one site moves by at "
            f"most clip-norm / sites, and {strategy}'s output has no such bound"
        )
    raise PrivacyCombinationError(
        f"strategy {strategy!r} cannot run with privacy {mode!r}: {why}. Use strategy {PRIVATE_STRATEGY!r} (the "
        f"robustness it keeps under {mode}: every update clipped to clip-norm"
        + (", sites screened by the norm and direction they disclose)" if mode == SECAGG else ")")
        + f", or privacy 'none' with {strategy!r}."
    )


@dataclass(frozen=True)
class PrivacySettings:
    """A run's privacy mode and knobs (run config keys ``privacy``, ``dp-epsilon``, ``dp-delta``, ``clip-norm``)."""

    mode: str = NONE
    epsilon: float = DP_EPSILON
    delta: float = DP_DELTA
    clip_norm: float = CLIP_NORM

    def __post_init__(self) -> None:
        if self.mode not in PRIVACY_MODES:
            raise PrivacyCombinationError(
                f"unknown privacy mode {self.mode!r}; valid modes: {', '.join(PRIVACY_MODES)}"
            )
        for name, value in (("dp-epsilon", self.epsilon), ("clip-norm", self.clip_norm)):
            if not (math.isfinite(value) and value > 0):
                raise PrivacyCombinationError(f"{name} must be a positive number, not {value!r}")
        if not 0 < self.delta < 1:
            raise PrivacyCombinationError(f"dp-delta must lie strictly between 0 and 1, not {self.delta!r}")

    @property
    def noisy(self) -> bool:
        return self.mode in (DP, SECAGG_DP)

    @property
    def secure(self) -> bool:
        return self.mode in (SECAGG, SECAGG_DP)

    @classmethod
    def from_run_config(cls, config: Mapping[str, object]) -> PrivacySettings:
        return cls(
            mode=str(config.get(PRIVACY_KEY, DEFAULT_PRIVACY) or DEFAULT_PRIVACY).strip().lower(),
            epsilon=float(config.get(DP_EPSILON_KEY, DP_EPSILON)),  # type: ignore[arg-type]
            delta=float(config.get(DP_DELTA_KEY, DP_DELTA)),  # type: ignore[arg-type]
            clip_norm=float(config.get(CLIP_NORM_KEY, CLIP_NORM)),  # type: ignore[arg-type]
        )


def validate(config: Mapping[str, object], strategy: str = DEFAULT_STRATEGY) -> PrivacySettings:
    """The run's privacy settings, after checking them and their combination with ``strategy``."""
    settings = PrivacySettings.from_run_config(config)
    check_combination(strategy, settings.mode)
    family = str(config.get("model-family", "mlp") or "mlp")
    if settings.mode != NONE and family != "mlp":
        raise PrivacyCombinationError(
            f"model family {family!r} cannot run with privacy {settings.mode!r}: its sites send trees, not weight "
            f"updates, and neither clipping, DP noise nor SecAgg+'s sum applies to a tree; use model family 'mlp'"
        )
    return settings
