"""Aggregation for the xgboost family: Flower's FedXgbBagging, with MLEDGE's checks and reports around it.

Bagging appends every site's new trees to the global booster; nothing is averaged. What that protects against,
and what it does not:

- It refuses malformed updates (not one uint8 array, not a booster's JSON, more trees than the round asked for,
  absurd ``num-examples``), naming the site, as every MLEDGE strategy does; a refused site adds no tree.
- It does not bound a site's influence: one poisoned site's trees enter the model at full weight, each round
  (a label-flipping or backdoor site shifts every prediction its trees touch). Robust rules for weight vectors
  (median, Krum, trimmed mean, reputation) have no meaning for trees, which are not points of one vector space;
  they are refused for this family (``tree_strategy``). Use the ``mlp`` family where an attacker is expected.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedXgbBagging

from fl.strategies.validation import BAD_ARRAYS, DEFAULT_MAX_EXAMPLES, examples_problem, site_of
from mledge.contracts import DEFAULT_PRIVACY, NUM_EXAMPLES_KEY, STRATEGIES, TREE_STRATEGIES, XGBOOST


class UnsupportedStrategyError(ValueError):
    """A strategy name that cannot apply to the chosen model family."""


def tree_problem(record: ArrayRecord, max_trees: int) -> str | None:
    """Why a site's tree update cannot be appended, or None when it can."""
    if list(record.keys()) != ["0"]:
        return f"{BAD_ARRAYS}: expected one array '0' (a booster's JSON), got {sorted(record.keys())}"
    data = record["0"].numpy()
    if data.dtype.name != "uint8":
        return f"{BAD_ARRAYS}: the booster must be uint8 bytes, got {data.dtype}"
    try:
        model = json.loads(data.tobytes())["learner"]["gradient_booster"]["model"]
        trees = int(model["gbtree_model_param"]["num_trees"])
    except (ValueError, KeyError, TypeError) as exc:
        return f"{BAD_ARRAYS}: not an XGBoost booster's JSON ({exc.__class__.__name__})"
    if not 1 <= trees <= max_trees:
        return f"{BAD_ARRAYS}: {trees} trees, expected 1 to {max_trees}"
    return None


class TreeBagging(FedXgbBagging):
    """FedXgbBagging that validates each update and reports ``last_rejected`` / ``last_weights``."""

    # Flower's aggregate_bagging appends one boosting round (num_parallel_tree trees) per site: a site boosts once.
    def __init__(self, *, max_trees: int = 1, max_examples: int = DEFAULT_MAX_EXAMPLES, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_trees = max_trees
        self.max_examples = max_examples
        self.last_rejected: dict[str, str] = {}
        self.last_weights: dict[str, float] = {}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, rejected = [], {}
        for reply in replies:
            if not reply.has_content():
                continue
            site = site_of(reply)
            metrics = next(iter(reply.content.metric_records.values()), {})
            arrays = next(iter(reply.content.array_records.values()), None)
            problem = examples_problem(metrics.get(NUM_EXAMPLES_KEY), self.max_examples) or (
                tree_problem(arrays, self.max_trees) if arrays is not None else f"{BAD_ARRAYS}: no booster"
            )
            if problem:
                rejected[site] = problem
            else:
                valid.append(reply)
        self.last_rejected = rejected
        total = sum(float(next(iter(r.content.metric_records.values()))[NUM_EXAMPLES_KEY]) for r in valid)
        self.last_weights = {
            site_of(r): float(next(iter(r.content.metric_records.values()))[NUM_EXAMPLES_KEY]) / total for r in valid
        }
        if not valid:
            return None, None
        return super().aggregate_train(server_round, valid)


def tree_strategy(name: str, *, min_nodes: int, privacy: str = DEFAULT_PRIVACY) -> TreeBagging:
    """The xgboost family's aggregation for a strategy name; robust rules for weight vectors are refused, and so is
    every privacy mode but none (secure aggregation sums vectors; DP noise here has no accountant for trees)."""
    if privacy != DEFAULT_PRIVACY:
        raise UnsupportedStrategyError(
            f"model family '{XGBOOST}' cannot run under privacy mode {privacy!r}: secure aggregation and differential "
            f"privacy (fl/privacy/) apply to weight vectors, not to appended trees; use privacy 'none' or model "
            f"family 'mlp'"
        )
    key = name.strip().lower()
    if key not in TREE_STRATEGIES:
        known = f"'{key}' ({STRATEGIES[key]})" if key in STRATEGIES else f"unknown strategy {name!r}"
        raise UnsupportedStrategyError(
            f"model family '{XGBOOST}' cannot use {known}: its trees are appended by Flower's FedXgbBagging, not "
            f"averaged, so rules that compare or average weight vectors do not apply; use strategy "
            f"{' or '.join(repr(s) for s in TREE_STRATEGIES)} (bagging), or model family 'mlp' for robust aggregation"
        )
    return TreeBagging(
        max_trees=1, min_available_nodes=min_nodes, min_train_nodes=min_nodes, fraction_evaluate=0.0
    )
