"""Aggregation strategies for the ServerApp, by name: MLEDGE's robust default, Flower's own rules and the two IMDEA
robust methods.

Every strategy here validates each update first (fl/strategies/validation.py) and exposes ``last_rejected`` and
``last_weights`` after each round (declared in fl/strategies/base.py). ``build_strategy(name, ...)`` is the one
entry point a ServerApp needs.
"""

from __future__ import annotations

from collections.abc import Callable

from flwr.serverapp.strategy import Strategy

from fl.strategies.base import AggregationStrategy
from fl.strategies.fedqv import FedQV
from fl.strategies.flower import (
    ValidatedBulyan,
    ValidatedFedAvg,
    ValidatedFedMedian,
    ValidatedFedTrimmedAvg,
    ValidatedKrum,
    ValidatedMultiKrum,
)
from fl.strategies.mledge_robust import MledgeRobust
from fl.strategies.reputation_residual import ReputationResidual
from fl.strategies.state import MemoryStateStore, SiteStateStore, StateStore
from fl.strategies.validation import ValidatingMixin, validate_replies
from mledge.contracts import STRATEGIES as STRATEGY_TITLES

__all__ = [
    "STRATEGIES",
    "AggregationStrategy",
    "FedQV",
    "MemoryStateStore",
    "MledgeRobust",
    "ReputationResidual",
    "SiteStateStore",
    "StateStore",
    "ValidatingMixin",
    "build_strategy",
    "validate_replies",
]


def _stateless(cls: type) -> Callable[..., Strategy]:
    def factory(state: StateStore | None = None, **params) -> Strategy:
        return cls(**params)

    factory.__doc__ = cls.__doc__
    return factory


def _stateful(cls: type, **fixed) -> Callable[..., Strategy]:
    def factory(state: StateStore | None = None, **params) -> Strategy:
        return cls(state=state, **fixed, **params)

    factory.__doc__ = cls.__doc__
    return factory


# name -> factory(state=None, **constructor parameters); the names are mledge.contracts.STRATEGIES'.
STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "mledge-robust": _stateful(MledgeRobust),
    "fedavg": _stateless(ValidatedFedAvg),
    "krum": _stateless(ValidatedKrum),
    "multikrum": _stateless(ValidatedMultiKrum),
    "fedmedian": _stateless(ValidatedFedMedian),
    "fedtrimmedavg": _stateless(ValidatedFedTrimmedAvg),
    "bulyan": _stateless(ValidatedBulyan),
    "fedqv": _stateful(FedQV),
    "fedqv-reputation": _stateful(FedQV, reputation=True),
    "reputation-residual": _stateful(ReputationResidual),
}


if set(STRATEGIES) != set(STRATEGY_TITLES):  # one vocabulary: a name added here is added to the contracts too
    raise ImportError(f"strategies {sorted(set(STRATEGIES) ^ set(STRATEGY_TITLES))} are not in mledge.contracts")


def build_strategy(name: str, *, min_nodes: int = 2, state: StateStore | None = None, **params) -> Strategy:
    """The strategy called ``name``, sampling at least ``min_nodes`` sites per round.

    ``state`` (a SiteStateStore) keeps FedQV budgets and reputations across runs; strategies without
    per-site state ignore it. ``params`` go to the strategy's constructor (e.g. ``num_malicious_nodes``,
    ``theta``). Federated evaluation is off unless ``fraction_evaluate`` says otherwise: the ServerApp has the sites
    score each global model themselves.
    """
    key = name.strip().lower()
    if key not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid names: {', '.join(STRATEGIES)}")
    params = {"min_available_nodes": min_nodes, "min_train_nodes": min_nodes, "fraction_evaluate": 0.0, **params}
    return STRATEGIES[key](state=state, **params)
