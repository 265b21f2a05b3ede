"""False-alarm control across sites and columns.

Each evaluated batch of a site is one family of tests: one per data column and one for the model's errors. We
control the family-wise error rate (the chance of any false alarm) rather than the false discovery rate, because
every alarm here costs a person's review and possibly a retraining run.

- Across columns (and the concept test) within a site: Holm's step-down procedure (statsmodels
  ``multipletests(method="holm")``). It controls the family-wise error rate under any dependence between the
  tests, which matters here (the two temperatures move together, speed falls with torque), and it is never less
  powerful than Bonferroni.
- Across sites: Bonferroni, each site tested at ``alpha / n_sites``. The sites are evaluated in separate mapped
  tasks, at the site, and must not wait for one another's p-values; Bonferroni needs only their number.

So the chance of a false alarm anywhere in the federation for one round of batches stays below ``alpha``. The
adjusted p-values returned are Holm's times ``n_sites`` (capped at 1): compare them with ``alpha`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mledge.contracts import DRIFT_ALPHA

DEFAULT_ALPHA = DRIFT_ALPHA
METHOD = "holm"


def correct(
    p_values: Mapping[str, float | None], alpha: float = DEFAULT_ALPHA, n_sites: int = 1, method: str = METHOD
) -> dict:
    """Adjust one site's family of p-values; returns the level used and, per test, the adjusted p and decision.

    ``p_values``: test name -> raw p-value; None or NaN (a test that could not be computed, e.g. a constant
    column) counts as 1.0 and is reported with ``"computed": False``.
    Returns ``{"alpha", "n_sites", "method", "site_level", "tests": {name: {"p_value", "adjusted_p_value",
    "drift", "computed"}}, "drift": any}``.
    """
    from statsmodels.stats.multitest import multipletests

    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be within (0, 1), got {alpha}")
    if n_sites < 1:
        raise ValueError(f"n_sites must be at least 1, got {n_sites}")
    names = list(p_values)
    computed = {n: p_values[n] is not None and not math.isnan(float(p_values[n])) for n in names}
    raw = [float(p_values[n]) if computed[n] else 1.0 for n in names]
    for name, p in zip(names, raw, strict=True):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p-value of {name!r} must be within [0, 1], got {p}")
    site_level = alpha / n_sites
    if names:
        reject, adjusted, _, _ = multipletests(raw, alpha=site_level, method=method)
    else:
        reject, adjusted = [], []
    tests = {
        name: {
            "p_value": p,
            "adjusted_p_value": min(1.0, float(adj) * n_sites),
            "drift": bool(rej),
            "computed": computed[name],
        }
        for name, p, adj, rej in zip(names, raw, adjusted, reject, strict=True)
    }
    return {
        "alpha": alpha,
        "n_sites": n_sites,
        "method": method,
        "site_level": site_level,
        "tests": tests,
        "drift": any(t["drift"] for t in tests.values()),
    }
