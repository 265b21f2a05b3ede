"""Flower's own strategies, unchanged in their rules, but validating every update first.

Flower checks that replies are consistent and raises on the first odd one, which ends the round; these wrappers
drop the bad replies instead (naming the site) and aggregate the others with Flower's code. Note that Flower's
FedMedian, FedTrimmedAvg and Bulyan take the arrays out of the replies they aggregate.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from flwr.serverapp.strategy.multikrum import select_multikrum
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fl.strategies.arrays import normalised
from fl.strategies.validation import ValidatingMixin, site_of

Result = tuple[ArrayRecord | None, MetricRecord | None]


class _CoordinateWise(ValidatingMixin):
    """Validate, then Flower's rule; coordinate-wise rules have no per-site weight, so last_weights stays empty."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Result:
        return super().aggregate_train(server_round, self.validate(replies))


class ValidatedFedAvg(ValidatingMixin, FedAvg):
    """FedAvg [McMahan et al., 2017] on validated updates; weights are the example counts."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Result:
        valid = self.validate(replies)
        arrays, metrics = super().aggregate_train(server_round, valid)
        if arrays is not None:
            self.record_weights([site_of(r) for r in valid], normalised(self.examples(valid)))
        return arrays, metrics


class _KrumSelection(ValidatingMixin):
    """Flower's Krum / Multi-Krum selection and averaging, with the selected sites' weights recorded."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Result:
        valid = self.validate(replies)
        if not valid:
            return None, None
        contents = [r.content for r in valid]
        selected = select_multikrum(contents, self.num_malicious_nodes, self.num_nodes_to_select)
        chosen = {id(content) for content in selected}
        kept = [r for r in valid if id(r.content) in chosen]
        weights = normalised(self.examples(kept))
        self.last_weights = {site_of(r): 0.0 for r in valid}
        self.last_weights.update({site_of(r): float(w) for r, w in zip(kept, weights, strict=True)})
        return aggregate_arrayrecords(selected, self.weighted_by_key), self.train_metrics_aggr_fn(
            selected, self.weighted_by_key
        )


class ValidatedKrum(_KrumSelection, Krum):
    """Krum [Blanchard et al., 2017] on validated updates."""


class ValidatedMultiKrum(_KrumSelection, MultiKrum):
    """Multi-Krum [Blanchard et al., 2017] on validated updates."""


class ValidatedFedMedian(_CoordinateWise, FedMedian):
    """Coordinate-wise median [Yin et al., 2018] on validated updates."""


class ValidatedFedTrimmedAvg(_CoordinateWise, FedTrimmedAvg):
    """Coordinate-wise trimmed mean [Yin et al., 2018] on validated updates."""


class ValidatedBulyan(_CoordinateWise, Bulyan):
    """Bulyan [El Mhamdi et al., 2018] on validated updates."""
