"""Reply validation shared by every strategy here, and the mixin that makes a Flower strategy use it.

A robust aggregation rule is only as good as its inputs: one NaN, one mis-shaped array or one site claiming a
billion examples would otherwise poison (or crash) the round. ``validate_replies`` rejects such replies, names the
site each came from, and lets the round go on with the others; ``ValidatingMixin`` runs it first in every
strategy's ``aggregate_train`` and keeps what a ServerApp wants to log (who was rejected, who weighed how much).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fl.strategies.arrays import Layout, PayloadError, array_view, flatten
from mledge.contracts import NUM_EXAMPLES_KEY, SITE_KEY

log = logging.getLogger("flwr").getChild("mledge.strategies")

DEFAULT_MAX_EXAMPLES = 10_000_000
# Rejection reasons start with one of these, so that a strategy can react to the kind (FedQV zeroes the budget of a
# site that sent non-finite values, as the paper prescribes).
NON_FINITE = "non-finite values"
BAD_EXAMPLES = "bad num-examples"
BAD_ARRAYS = "bad arrays"
BAD_METRICS = "bad metrics"
DUPLICATE_SITE = "duplicate site"


def site_of(reply: Message) -> str:
    """The site a reply comes from: its own ConfigRecord, else its node id (which changes when a node restarts)."""
    if reply.has_content():
        record = reply.content.get(SITE_KEY)
        if isinstance(record, ConfigRecord) and str(record.get(SITE_KEY, "")).strip():
            return str(record[SITE_KEY]).strip()
    return f"node-{reply.metadata.src_node_id}"


def examples_problem(value: object, max_examples: int) -> str | None:
    """Why ``value`` is not a plausible example count, or None when it is."""
    if value is None:
        return f"{BAD_EXAMPLES}: missing"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{BAD_EXAMPLES}: {value!r} is not a number"
    if not math.isfinite(value) or value != int(value):
        return f"{BAD_EXAMPLES}: {value!r} is not a whole number"
    if value <= 0:
        return f"{BAD_EXAMPLES}: {value!r} is not positive"
    if value > max_examples:
        return f"{BAD_EXAMPLES}: {value!r} is more than {max_examples:,}"
    return None


def arrays_problem(record: ArrayRecord, layout: Layout) -> str | None:
    """Why an ArrayRecord cannot be averaged with the global model, or None when it can."""
    if (difference := layout.difference(record)) is not None:
        return f"{BAD_ARRAYS}: {difference}"
    for key, array in record.items():
        try:
            values = array_view(array)
        except PayloadError as exc:
            return f"{BAD_ARRAYS}: array {key!r}: {exc}"
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            return f"{NON_FINITE} in array {key!r}"
    return None


def _single(records: dict, what: str, preferred: str) -> tuple[object | None, str | None]:
    """The reply's one record of a kind (by the strategy's key when it has several), or why there is none."""
    if preferred in records:
        return records[preferred], None
    if len(records) == 1:
        return next(iter(records.values())), None
    return None, f"expected one {what}, found {len(records)}"


def _modal(values: Sequence, key=lambda v: v):
    """The most common value; ties go to the smallest key, so the answer does not depend on reply order."""
    counts = Counter(values)
    best = max(counts.values())
    return min((v for v, c in counts.items() if c == best), key=key)


def validate_replies(
    replies: Iterable[Message],
    reference: ArrayRecord | None,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    *,
    arrayrecord_key: str = "arrays",
    weighted_by_key: str = NUM_EXAMPLES_KEY,
) -> tuple[list[Message], dict[str, str]]:
    """Split replies into those safe to aggregate (sorted by site) and site -> reason for the rest.

    Error replies are skipped (the ServerApp reports them). ``reference`` is the global model the sites were sent;
    without one, the layout most replies share stands in for it. Replies come back sorted by site name, so that
    every rule sees the same order whatever order the replies arrived in.
    """
    candidates = [r for r in replies if not r.has_error()]
    rejected: dict[str, str] = {}

    # One reply per site: two nodes claiming one name cannot both be trusted, and state is keyed by the name.
    claims = Counter(site_of(r) for r in candidates)
    for site, count in claims.items():
        if count > 1:
            rejected[site] = f"{DUPLICATE_SITE}: {count} replies claim this site name"
    candidates = sorted((r for r in candidates if claims[site_of(r)] == 1), key=site_of)

    parsed: list[tuple[Message, ArrayRecord, MetricRecord]] = []
    for reply in candidates:
        arrays, problem = _single(dict(reply.content.array_records), "ArrayRecord", arrayrecord_key)
        if problem is not None:
            rejected[site_of(reply)] = f"{BAD_ARRAYS}: {problem}"
            continue
        metrics, problem = _single(dict(reply.content.metric_records), "MetricRecord", "metrics")
        if problem is None:
            problem = examples_problem(metrics.get(weighted_by_key), max_examples)
        else:
            problem = f"{BAD_METRICS}: {problem}"
        if problem is not None:
            rejected[site_of(reply)] = problem
            continue
        parsed.append((reply, arrays, metrics))

    if reference is not None:
        layout = Layout.of(reference)
    elif parsed:
        layout = _modal([Layout.of(arrays) for _, arrays, _ in parsed], key=repr)
    accepted = []
    for reply, arrays, metrics in parsed:
        if (problem := arrays_problem(arrays, layout)) is not None:
            rejected[site_of(reply)] = problem
        else:
            accepted.append((reply, metrics))

    # Flower's metric aggregation needs every reply to carry the same metric names.
    if accepted:
        names = _modal([tuple(sorted(metrics)) for _, metrics in accepted])
        for reply, metrics in accepted:
            if tuple(sorted(metrics)) != names:
                rejected[site_of(reply)] = f"{BAD_METRICS}: metric names {sorted(metrics)} differ from {list(names)}"
    valid = [reply for reply, _ in accepted if site_of(reply) not in rejected]
    return valid, rejected


class ValidatingMixin:
    """Validate first, remember the global model, and keep per-round weights and rejections for logging.

    Put it before the Flower base class (``class X(ValidatingMixin, FedAvg)``). Attributes after each round:
    ``last_rejected`` (site -> reason) and ``last_weights`` (site -> weight in the aggregate, summing to 1; empty
    for coordinate-wise rules, which have no per-site weight).
    """

    def __init__(self, *args, max_examples: int = DEFAULT_MAX_EXAMPLES, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.max_examples = max_examples
        self.last_rejected: dict[str, str] = {}
        self.last_weights: dict[str, float] = {}
        self.global_arrays: ArrayRecord | None = None
        self._global_vector: np.ndarray | None = None

    def set_global_model(self, arrays: ArrayRecord) -> None:
        """The model the sites were sent this round: the reference for validation and for similarity rules."""
        self.global_arrays = arrays
        self._global_vector = None

    def global_vector(self) -> np.ndarray:
        """The global model as one flat vector (computed once per round)."""
        if self.global_arrays is None:
            raise RuntimeError(f"{type(self).__name__} needs the global model: call set_global_model first")
        if self._global_vector is None:
            self._global_vector = flatten(self.global_arrays)
        return self._global_vector

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid):
        self.set_global_model(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def validate(self, replies: Iterable[Message]) -> list[Message]:
        """The replies safe to aggregate, sorted by site; rejections are logged and kept in ``last_rejected``."""
        valid, self.last_rejected = validate_replies(
            replies,
            self.global_arrays,
            self.max_examples,
            arrayrecord_key=self.arrayrecord_key,
            weighted_by_key=self.weighted_by_key,
        )
        self.last_weights = {}
        for site, reason in self.last_rejected.items():
            log.warning("%s rejected the update of site %s: %s", type(self).__name__, site, reason)
        return valid

    def reject(self, replies: list[Message], reasons: dict[str, str]) -> list[Message]:
        """Drop further replies a strategy found unusable (site -> reason), recording why."""
        for site, reason in reasons.items():
            log.warning("%s rejected the update of site %s: %s", type(self).__name__, site, reason)
        self.last_rejected.update(reasons)
        return [r for r in replies if site_of(r) not in reasons]

    def record_weights(self, sites: Sequence[str], weights: Sequence[float]) -> None:
        self.last_weights = {site: float(w) for site, w in zip(sites, weights, strict=True)}

    def examples(self, replies: Sequence[Message]) -> np.ndarray:
        """Each reply's example count (validated: positive whole numbers)."""
        return np.array([float(self.metrics_of(r)[self.weighted_by_key]) for r in replies])

    def arrays_of(self, reply: Message) -> ArrayRecord:
        records = reply.content.array_records
        return records[self.arrayrecord_key] if self.arrayrecord_key in records else next(iter(records.values()))

    @staticmethod
    def metrics_of(reply: Message) -> MetricRecord:
        records = reply.content.metric_records
        return records["metrics"] if "metrics" in records else next(iter(records.values()))

    def aggregate_metrics(self, replies: Sequence[Message]) -> MetricRecord:
        return self.train_metrics_aggr_fn([r.content for r in replies], self.weighted_by_key)
