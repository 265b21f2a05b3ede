"""Which sites a secure round keeps, from the two scalars each site discloses beside its masked update.

Under SecAgg+ the platform cannot look at an update; each site discloses its update's L2 norm before clipping and
its alignment with the previous round's global update ((1 + cosine) / 2). A site is left out of the round's sum
when either scalar is an outlier among the round's sites: more than ``k`` scaled median absolute deviations above
the median norm (a boosted or broken update) or below the median alignment (an update against the federation's
direction). This is the robust z-score rule (Hampel 1974; Rousseeuw & Croux 1993), a sibling of the norm and
direction checks the platform makes on plain updates (FLAME, Nguyen et al. 2022, clusters on the same two
signals). With fewer than four sites it leaves everyone in: a median of three cannot outvote one.

The scalars are the site's word: a site that lies can report an ordinary norm and alignment and send any update
within the clip bound it was given (or, ignoring that bound, any coordinates within SecAgg+'s quantisation range).
The clip bound is what limits what it can do; screening only catches sites that report truthfully (faults, naive
attacks).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

NORM_KEY = "update-norm"
ALIGNMENT_KEY = "update-alignment"
MAD_SCALE = 1.4826  # MAD of a normal distribution -> its standard deviation
MIN_SITES = 4
# Scaled MADs beyond the median that count as outliers.
K = 3.0


def screen(summaries: Mapping[str, Mapping[str, float]], k: float = K) -> dict[str, str]:
    """Sites to leave out -> why, from each site's disclosed ``update-norm`` and ``update-alignment``."""
    if len(summaries) < MIN_SITES:
        return {}
    out: dict[str, str] = {}
    sites = sorted(summaries)
    # The spread never counts as less than a floor (a quarter of the median norm; 0.05 of alignment): sites that
    # agree closely must not make an ordinary difference an outlier.
    for key, side, floor in ((NORM_KEY, "above", 0.25), (ALIGNMENT_KEY, "below", 0.05)):
        values = np.array([float(summaries[s].get(key, np.nan)) for s in sites])
        known = values[np.isfinite(values)]
        if known.size < MIN_SITES:
            continue
        median = float(np.median(known))
        least = floor * abs(median) if key == NORM_KEY else floor
        spread = max(MAD_SCALE * float(np.median(np.abs(known - median))), least, 1e-12)
        for site, value in zip(sites, values, strict=True):
            z = (value - median) / spread
            if (side == "above" and z > k) or (side == "below" and z < -k):
                out.setdefault(site, f"disclosed {key}={value:.4g} is {abs(z):.1f} MADs {side} the round's median "
                                     f"{median:.4g}: left out of the secure sum")
    return out
