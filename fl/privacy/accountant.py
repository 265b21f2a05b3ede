"""The (epsilon, delta) of a run: Rényi DP accounting of the Gaussian mechanism (Abadi et al., CCS 2016;
Mironov, CSF 2017), computed by Google's ``dp-accounting`` (its RdpAccountant), and the noise calibrated to reach a
target epsilon.

The mechanism: every round, all connected sites' clipped updates (L2 norm <= C each) are summed and Gaussian noise
of standard deviation ``noise_multiplier * C`` is added to the sum (centrally in ``dp``; as the sites' shares of a
distributed discrete Gaussian in ``secagg-dp``). Neighbouring runs differ by one site's updates (add or remove one
site): site-level DP. Every round takes every connected site, so no sampling amplification is claimed: ``rounds``
self-compositions of a Gaussian mechanism of sensitivity 1 and noise ``noise_multiplier``.
"""

from __future__ import annotations

import functools
import math

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant

# dp-accounting's default orders, and a wider tail for very small noise (large epsilons).
ORDERS: tuple[float, ...] = tuple(
    sorted({*rdp_privacy_accountant.DEFAULT_RDP_ORDERS, *(float(a) for a in range(257, 1025, 64))})
)


def _event(noise_multiplier: float, rounds: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier), rounds)


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``rounds`` rounds with noise ``noise_multiplier`` (RDP, then converted)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    accountant = rdp_privacy_accountant.RdpAccountant(list(ORDERS))
    accountant.compose(_event(noise_multiplier, rounds))
    return float(accountant.get_epsilon(delta))


@functools.lru_cache(maxsize=64)
def noise_multiplier_for(target_epsilon: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier (to 1e-4 relative) whose ``rounds`` rounds spend at most ``target_epsilon``."""
    if target_epsilon <= 0 or rounds <= 0:
        raise ValueError(f"need a positive target epsilon and rounds, not {target_epsilon!r}, {rounds!r}")
    low, high = 1e-3, 1.0
    while epsilon(high, rounds, delta) > target_epsilon:
        low, high = high, high * 2
    while (high - low) > 1e-4 * high:
        middle = (low + high) / 2
        if epsilon(middle, rounds, delta) > target_epsilon:
            low = middle
        else:
            high = middle
    return high
