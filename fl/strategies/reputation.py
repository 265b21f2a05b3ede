"""Subjective-logic reputation of a site from its inlier and outlier counts, with decay over rounds.

Paper: T. Chu, A. Garcia-Recuero, C. Iordanou, G. Smaragdakis, N. Laoutaris, "Securing Federated Sensitive Topic
Classification against Poisoning Attacks", NDSS 2023, arXiv 2201.13086 (Section "reputation"); used by
ReputationResidual (fl/strategies/reputation_residual.py) and by FedQV + reputation (fl/strategies/fedqv.py).

A site's p positive (inlier) and q negative (outlier) observations make an opinion: belief b = κp / (κp + (1-κ)q
+ W), uncertainty u = W / (κp + (1-κ)q + W), reputation R = b + a·u (κ = 0.3, W = 2, a = 0.5). The reputation
used in a round decays over the last ``window`` rounds (z = 0.5). Histories are kept per site name in a
StateStore (fl/strategies/state.py), so they survive rounds, runs and restarts. Where the reference code departs
from the paper (inliers counted as disbelief; z shifted to 10 on one path), this follows the paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fl.strategies.arrays import normalised
from fl.strategies.state import StateStore


def opinion(
    p: np.ndarray | float,
    q: np.ndarray | float,
    kappa: float = 0.3,
    W: float = 2.0,
    a: float = 0.5,
) -> np.ndarray:
    """Subjective-logic reputation R = b + a·u from p positive and q negative observations.

    b = κp / (κp + (1-κ)q + W), u = W / (κp + (1-κ)q + W).
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    total = kappa * p + (1 - kappa) * q + W
    return kappa * p / total + a * W / total


def decayed(history: Sequence[float], z: float = 0.5, window: int = 10) -> float:
    """Time-decayed reputation over the last ``window`` rounds (oldest first in ``history``):
    R̄ = Σ_j e^{-z j} R_{t-j} / Σ_j e^{-z j}, j = 0 for the newest."""
    recent = np.asarray(list(history)[-window:][::-1], dtype=np.float64)
    if recent.size == 0:
        raise ValueError("no reputation history")
    decay = np.exp(-z * np.arange(recent.size))
    return float(decay @ recent / decay.sum())


def normalise_reputations(reputations: Sequence[float]) -> np.ndarray:
    """Min-max normalised reputations with values below 1/n zeroed; all ones when every site's is the same."""
    r = np.asarray(reputations, dtype=np.float64)
    span = r.max() - r.min()
    scaled = (r - r.min()) / span if span > 0 else np.ones_like(r)
    scaled[scaled < 1 / len(r)] = 0.0
    return scaled


def reputation_weights(reputations: Sequence[float]) -> np.ndarray:
    """Aggregation weights: the normalised reputations scaled to sum to 1."""
    return normalised(normalise_reputations(reputations))


def update_reputations(
    store: StateStore,
    key: str,
    sites: Sequence[str],
    outliers: np.ndarray,
    coordinates: int,
    *,
    kappa: float = 0.3,
    W: float = 2.0,
    a: float = 0.5,
    z: float = 0.5,
    window: int = 10,
) -> tuple[np.ndarray, dict[str, dict]]:
    """This round's opinions appended to each site's stored history; returns the decayed reputations and the
    updated states (for the caller to save with anything else it keeps, in one transaction)."""
    fresh = opinion(coordinates - outliers, outliers, kappa, W, a)
    states = {site: store.load(key, site) for site in sites}
    for site, value in zip(sites, fresh, strict=True):
        states[site]["history"] = (list(states[site].get("history", [])) + [float(value)])[-window:]
    return np.array([decayed(states[site]["history"], z, window) for site in sites]), states
