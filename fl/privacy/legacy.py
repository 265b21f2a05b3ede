"""The little of Flower's legacy server API that its SecAgg+ workflow needs, for a Message-API ServerApp.

``flwr.server.workflow.SecAggPlusWorkflow`` (Flower 1.41) runs inside a ``LegacyContext`` and asks a legacy
``flwr.server.strategy.Strategy`` for fit instructions (``configure_fit``: which nodes take part) and gives it the
unmasked aggregate (``aggregate_fit``). ``LegacyShim`` is that strategy: it names the round's nodes, and keeps the
aggregate the workflow hands over (every result carries the same unmasked mean).
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.common import FitIns, FitRes, Parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.strategy import Strategy


@dataclass(frozen=True)
class NodeProxy:
    """What the workflow reads of a legacy ClientProxy: its node id."""

    node_id: int


class LegacyShim(Strategy):
    """A legacy strategy that samples exactly ``node_ids`` and keeps the workflow's aggregate (``aggregate``)."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = list(node_ids)
        self.aggregate: list | None = None
        self.results: list[tuple[NodeProxy, FitRes]] = []

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list:
        # The workflow only keeps these to build stage-2 messages, which SecAggPlusMean builds itself.
        return [(NodeProxy(node), FitIns(parameters, {})) for node in self.node_ids]

    def aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple[Parameters | None, dict]:
        self.results = list(results)
        if results:
            self.aggregate = parameters_to_ndarrays(results[0][1].parameters)
        return (results[0][1].parameters if results else None), {}

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> list:
        return []

    def aggregate_evaluate(self, server_round: int, results: list, failures: list) -> tuple[float | None, dict]:
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict] | None:
        return None
