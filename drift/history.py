"""A champion's track record at a site: the batches it was evaluated on without concept drift.

Every decided batch's processed mark (drift/tracking.py) keeps what the evaluation found: the unit's outcome, its
concept decision and the champion it was made with (drift/decision.py writes them). The batches that the same
champion handled without concept drift, and whose labels were not lost, are later out-of-sample evidence of how
that champion's scores translate into failures: the site adds them to the concept test's reference
(``mledge.onsite.drift_evaluation.plan_evaluation``), which sharpens the test batch by batch. Names only: the
rows stay at the site.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from mledge.contracts import LABEL_LOSS_SHARE
from mledge.db.schema import drift_processed_batches

CLEAN_OUTCOMES = ("no_drift", "drift")  # a data drift alone does not disqualify a batch for the concept test


def champion_key(champion: Mapping[str, Any] | None) -> str | None:
    """How a processed mark names the champion: ``<registered model>/<version>``."""
    return f"{champion['name']}/{champion['version']}" if champion else None


def calibration_batches(engine: Engine, site: str, champion: Mapping[str, Any] | None) -> list[str]:
    """The site's batches that ``champion`` evaluated without concept drift, oldest first. Label losses are
    excluded, and so is every batch that arrived with at most ``LABEL_LOSS_SHARE`` of its expected failures even
    where that was not significant: one failure-free batch in the reference would widen the null (it is a block
    of its own) and hide the next lost batch."""
    key = champion_key(champion)
    if key is None:
        return []
    query = sa.select(drift_processed_batches.c.batch, drift_processed_batches.c.evaluation).where(
        drift_processed_batches.c.site == site
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    found = [
        batch for batch, evaluation in rows
        if isinstance(evaluation, Mapping) and evaluation.get("champion") == key
        and evaluation.get("concept") == "no_drift" and evaluation.get("outcome") in CLEAN_OUTCOMES
        and not _few_failures(evaluation.get("label_rate_share"))
    ]
    return sorted(found)


def _few_failures(share: object) -> bool:
    return isinstance(share, int | float) and share <= LABEL_LOSS_SHARE
