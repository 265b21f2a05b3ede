"""What both sides of a secure round derive from the run config alone: SecAgg+'s quantisation range and each site's
share of the noise. The platform does not tell a site how much noise to add: the site computes it from the run's
declared (epsilon, delta), rounds and minimum number of sites, with the same functions.

Noise placement in ``secagg-dp`` (distributed discrete Gaussian, Kairouz, Liu & Steinke, ICML 2021): each site adds
discrete Gaussian noise of variance ``(z * C')^2 / m`` to its update, on SecAgg+'s integer grid, before masking;
``m`` is the fewest sites a round may aggregate (``min-replies``), so any round the platform can unmask carries at
least ``(z * C')^2`` of noise in its sum, and no party (platform or site) ever sees an un-noised sum. ``C'`` is the
clip bound plus the grid rounding's slack (sqrt(d) grid steps). The price: with more than ``m`` sites present the
sum carries more noise than the accountant needs (n / m times the variance).
"""

from __future__ import annotations

import math

from fl.privacy.noise import rounding_slack

QUANTIZATION_RANGE = 2**22  # Flower's default: integers in [0, 2^22] per coordinate
MODULUS_RANGE = 2**32  # Flower's default (and its maximum); room for 1024 sites' sums
MAX_SHARES = 7  # key shares per site: the SecAgg+ neighbourhood (Bell et al. 2020) once a federation is larger
MIN_SECURE_SITES = 3  # with two, each learns the other's update from the sum
NOISE_TAIL = 10.0  # standard deviations of a site's noise inside the quantisation range (clipping: ~1e-23)


def shares_and_threshold(sites: int) -> tuple[int, int]:
    """SecAgg+'s shares per site (an odd neighbourhood, at most MAX_SHARES) and the reconstruction threshold (a
    majority of the shares: fewer colluding neighbours cannot unmask a site; more dropouts than shares - threshold
    in one neighbourhood end the round)."""
    if sites < MIN_SECURE_SITES:
        raise ValueError(f"secure aggregation needs at least {MIN_SECURE_SITES} sites, not {sites}")
    shares = min(sites, MAX_SHARES)
    if shares % 2 == 0 and shares < sites:
        shares += 1
    return shares, shares // 2 + 1


def site_sigma(noise_multiplier: float, clip_norm: float, min_sites: int, dimension: int, step: float) -> float:
    """One site's standard deviation of noise (update units) so that any ``min_sites`` shares sum to the
    accountant's ``noise_multiplier * (clip_norm + rounding slack)``."""
    return noise_multiplier * (clip_norm + rounding_slack(dimension, step)) / math.sqrt(min_sites)


def clipping_range(clip_norm: float, noise_multiplier: float = 0.0, min_sites: int = 1) -> float:
    """SecAgg+'s per-coordinate range: a power of two (the grid step is then exact in floating point) that holds a
    clipped update plus NOISE_TAIL standard deviations of a site's noise."""
    reach = clip_norm + NOISE_TAIL * 1.01 * noise_multiplier * clip_norm / math.sqrt(max(min_sites, 1))
    return float(2 ** math.ceil(math.log2(reach)))
