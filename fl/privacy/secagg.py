"""``secagg`` and ``secagg-dp``: the mean of the sites' clipped updates by SecAgg+ (Bell, Bonawitz, Gascón,
Lepoint & Raykova, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS 2020), so that the
platform only ever holds the sum.

Flower 1.41 has SecAgg+ only as the legacy ``SecAggPlusWorkflow`` (a Message-API SecAgg, flwrlabs/flower#4982, was
closed unmerged). This strategy drives that workflow's own stages from a Message-API ServerApp, one round per
``configure_train`` / ``aggregate_train`` pair, so that fl/serverapp.py's rounds run unchanged:

- ``configure_train`` runs the workflow's ``setup_stage`` (public keys) and ``share_keys_stage`` (encrypted key
  shares) and returns the stage-2 messages: the global model, the train config, and each site's forwarded shares;
- the ServerApp sends them as it sends every train message (its reply checks, identities and failures apply);
  each site trains and replies with its metrics, two scalars (fl/privacy/screening.py) and its masked update
  (fl/privacy/client.py, Flower's ``secaggplus_mod``);
- ``aggregate_train`` leaves out the sites the screening refuses (they count as dropped: their masked vectors are
  never added), sums the masked vectors, checks that every site still has enough live neighbours, and runs the
  workflow's ``unmask_stage``, which recovers the masks of the live sites and of those that dropped and hands back
  the mean update only.

Each site counts once (its weight is inside its masked vector, where no one could check it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import Code, FitRes, Parameters, Status, bytes_to_ndarray
from flwr.common.secure_aggregation.ndarrays_arithmetic import parameters_addition, parameters_mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import SecAggPlusWorkflow, WorkflowState
from flwr.serverapp import Grid

from fl.privacy.legacy import LegacyShim, NodeProxy
from fl.privacy.plan import MODULUS_RANGE, QUANTIZATION_RANGE, shares_and_threshold
from fl.privacy.screening import screen
from fl.privacy.vectors import to_arrays, to_vector
from fl.strategies.validation import site_of
from mledge.contracts import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, MSG_TRAIN


class SecureAggregationError(RuntimeError):
    """A secure round that cannot complete: too few sites, or too many lost within one neighbourhood."""


def enough_neighbours(state: WorkflowState) -> list[int]:
    """Sampled nodes with fewer than the threshold of live neighbours (their masks could not be recovered)."""
    return sorted(
        node for node in state.sampled_node_ids
        if len(state.nid_to_neighbours[node] & state.active_node_ids) < state.threshold
    )


class SecAggPlusMean:
    """The equal-weight mean of the sites' updates through SecAgg+; see the module docstring.

    ``clipping_range``: SecAgg+'s per-coordinate range (fl/privacy/plan.py). ``screening``: leave out sites whose
    disclosed scalars are outliers (``secagg``; off under ``secagg-dp``, where the scalars would be released
    outside the DP guarantee). ``timeout``: seconds the key-exchange and unmask stages wait for replies.
    """

    def __init__(
        self,
        *,
        clipping_range: float,
        min_nodes: int = 3,
        screening: bool = True,
        timeout: float | None = None,
    ) -> None:
        self.clipping_range = clipping_range
        self.min_available_nodes = min_nodes
        self.min_train_nodes = min_nodes
        self.screening = screening
        self.timeout = timeout
        self.last_rejected: dict[str, str] = {}
        self.last_weights: dict[str, float] = {}
        self.releases = 0
        self._round: tuple[Grid, LegacyContext, SecAggPlusWorkflow, WorkflowState, LegacyShim] | None = None
        self._start: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = sorted(grid.get_node_ids())
        shares, threshold = shares_and_threshold(len(nodes))
        workflow = SecAggPlusWorkflow(
            shares, threshold, max_weight=1.0, clipping_range=self.clipping_range,
            quantization_range=QUANTIZATION_RANGE, modulus_range=MODULUS_RANGE, timeout=self.timeout,
        )
        shim = LegacyShim(nodes)
        context = LegacyContext(
            Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}), strategy=shim
        )
        context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round})
        context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
        state = WorkflowState()
        for stage in (workflow.setup_stage, workflow.share_keys_stage):
            if not stage(grid, context, state):
                raise SecureAggregationError(
                    f"round {server_round}: SecAgg+ {stage.__name__.removesuffix('_stage')} halted: "
                    f"{len(state.active_node_ids)} of {len(nodes)} sites answered, and every site needs "
                    f"{state.threshold} live neighbours of its {state.num_shares}"
                )
        # Sites lost before their key shares went out never masked anything and nobody holds their shares: the
        # round goes on without them (Flower's unmask stage would otherwise ask for their shares and halt).
        state.sampled_node_ids = set(state.active_node_ids)
        for node in list(state.nid_to_neighbours):
            if node in state.sampled_node_ids:
                state.nid_to_neighbours[node] &= state.sampled_node_ids
            else:
                del state.nid_to_neighbours[node]
        self._round, self._start = (grid, context, workflow, state, shim), arrays
        train_config = ConfigRecord({**dict(config), "server-round": server_round})
        messages = []
        for node in sorted(state.active_node_ids):
            secagg = ConfigRecord({
                Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                Key.CIPHERTEXT_LIST: state.forward_ciphertexts[node],
                Key.SOURCE_LIST: state.forward_srcs[node],
            })
            content = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: train_config, RECORD_KEY_CONFIGS: secagg})
            messages.append(Message(content, dst_node_id=node, message_type=MSG_TRAIN, group_id=str(server_round)))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._round is None or self._start is None:
            raise SecureAggregationError("aggregate_train before configure_train")
        grid, context, workflow, state, shim = self._round
        self._round = None
        replies = [r for r in replies if not r.has_error()]
        summaries = {site_of(r): dict(r.content[METRICS_KEY]) for r in replies}
        self.last_rejected = screen(summaries) if self.screening else {}
        kept = [r for r in replies if site_of(r) not in self.last_rejected]
        state.active_node_ids = {r.metadata.src_node_id for r in kept}
        short = enough_neighbours(state)
        if len(kept) < 2 or short:
            raise SecureAggregationError(
                f"round {server_round}: {len(kept)} masked update(s) kept of {len(state.sampled_node_ids)} sites; "
                f"nodes {short} have fewer than {state.threshold} live neighbours: their masks cannot be removed"
            )
        masked: list[np.ndarray] | None = None
        for reply in kept:
            secagg = reply.content.config_records[RECORD_KEY_CONFIGS]
            vector = [bytes_to_ndarray(b) for b in cast(list[bytes], secagg[Key.MASKED_PARAMETERS])]
            masked = vector if masked is None else parameters_addition(masked, vector)
        state.aggregate_ndarrays = parameters_mod(cast(list[np.ndarray], masked), state.mod_range)
        ok = Status(code=Code.OK, message="")
        state.legacy_results = [
            (NodeProxy(r.metadata.src_node_id), FitRes(ok, Parameters([], ""), 1, {})) for r in kept  # type: ignore[misc]
        ]
        if not workflow.unmask_stage(grid, context, state) or shim.aggregate is None:
            raise SecureAggregationError(
                f"round {server_round}: SecAgg+ unmasking failed: fewer than {state.threshold} key shares came back "
                f"for some site"
            )
        self.releases += 1
        start = to_vector(self._start)
        mean = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in shim.aggregate])
        self.last_weights = {site_of(r): 1.0 / len(kept) for r in kept}
        losses = [float(r.content[METRICS_KEY].get("train-loss", np.nan)) for r in kept]
        metrics = MetricRecord({"train-loss": float(np.nanmean(losses))}) if np.isfinite(losses).any() else None
        return to_arrays(start + mean, self._start), metrics
