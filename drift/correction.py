"""False-alarm control across sites, families of tests and the tests within a family.

Each evaluated batch of a site is tested by two families: **data** (one test per column: has P(x) changed?) and
**concept** (the production model's false negatives and false positives at its scores: has P(y | x) changed?).
They answer different questions and lead to different actions, so each is corrected on its own (Holm within the
family): a data drift found with p = 1e-50 in the product mix must not lower the bar for the concept test, as one
Holm procedure over both did (a covariate shift raised a concept alarm only because the data tests had already
rejected). We control the family-wise error rate (the chance of any false alarm) rather than the false discovery
rate, because every alarm here costs a person's review and possibly a retraining run:

- Across sites: Bonferroni, each site's batch tested at ``alpha / n_sites``. Sites are evaluated in separate
  mapped tasks, at the site, and must not wait for one another's p-values; Bonferroni needs only their number.
- Across the two families: Bonferroni again, each family gets ``FAMILY_SHARE`` of the site's level. So the
  chance of *any* false alarm, data or concept, anywhere in the federation for one round of batches stays
  below ``alpha``, and below ``alpha / n_sites`` per site and batch (1.7 % with the defaults).
- Within a family: Holm's step-down procedure (the same adjusted p-values as statsmodels'
  ``multipletests(method="holm")``, computed here: statsmodels runs a full garbage collection on every call). It
  controls the family-wise error rate under any dependence between the tests (the temperatures move together,
  speed falls with torque; false negatives and false positives come from one model) and is never less powerful
  than Bonferroni.

The adjusted p-values returned are Holm's divided by the family's share of ``alpha / n_sites`` times ``alpha``
(capped at 1): compare them with ``alpha`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mledge.contracts import DRIFT_ALPHA

DEFAULT_ALPHA = DRIFT_ALPHA
METHOD = "holm"
FAMILIES = ("data", "concept")
FAMILY_SHARE = {"data": 0.5, "concept": 0.5}


def family_level(alpha: float = DEFAULT_ALPHA, n_sites: int = 1, family: str | None = None) -> float:
    """The family-wise level one family of one site's batch is tested at (the whole site's with no family)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")
    if n_sites < 1:
        raise ValueError(f"n_sites must be at least 1, got {n_sites}")
    if family is not None and family not in FAMILY_SHARE:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    return alpha / n_sites * (FAMILY_SHARE[family] if family else 1.0)


def holm(p_values: list[float]) -> list[float]:
    """Holm's adjusted p-values: the k-th smallest times (m - k + 1), made monotone, capped at 1."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [1.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def correct(
    p_values: Mapping[str, float | None],
    alpha: float = DEFAULT_ALPHA,
    n_sites: int = 1,
    method: str = METHOD,
    family: str | None = None,
) -> dict:
    """Adjust one family of one site's p-values; returns the level used and, per test, the adjusted p and decision.

    ``p_values``: test name -> raw p-value; None or NaN (a test that could not be computed: too few effective
    rows, a constant column) counts as 1.0 and is reported with ``"computed": False``: it never alarms and does
    not make the others pay for it (only computed tests count in Holm's procedure).
    ``family``: "data" or "concept" (its share of the site's level); None tests at the site's whole level.
    Returns ``{"alpha", "n_sites", "family", "method", "level", "site_level", "tests": {name: {"p_value",
    "adjusted_p_value", "drift", "computed"}}, "drift": any}``.
    """
    if method != METHOD:
        raise ValueError(f"method must be {METHOD!r}, got {method!r}")
    level = family_level(alpha, n_sites, family)
    names = list(p_values)
    computed = {n: p_values[n] is not None and not math.isnan(float(p_values[n])) for n in names}
    raw = {n: float(p_values[n]) if computed[n] else 1.0 for n in names}
    for name, p in raw.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-value of {name!r} must be within [0, 1], got {p}")
    tested = [n for n in names if computed[n]]
    reject, adjusted = {}, {}
    if tested:
        adjusted = dict(zip(tested, holm([raw[n] for n in tested]), strict=True))
        reject = {n: adjusted[n] <= level for n in tested}
    scale = alpha / level  # adjusted p-values compare with alpha itself
    tests = {
        name: {
            "p_value": raw[name],
            "adjusted_p_value": min(1.0, adjusted[name] * scale) if computed[name] else 1.0,
            "drift": reject.get(name, False),
            "computed": computed[name],
        }
        for name in names
    }
    return {
        "alpha": alpha,
        "n_sites": n_sites,
        "family": family,
        "method": method,
        "level": level,
        "site_level": alpha / n_sites,
        "tests": tests,
        "drift": any(t["drift"] for t in tests.values()),
    }
