"""SecAgg+ under the Message API (fl/privacy/secagg.py, fl/privacy/client.py): what the platform receives, what it
computes from it, and rounds that lose a site.

Sites here are small ClientApps whose train handler adds a known update to the model it receives, behind the real
``privacy_mod``; the grid (fl/simulation/harness.py) carries every message as bytes, as a SuperLink does.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from fl.privacy.client import privacy_mod
from fl.privacy.noise import clip
from fl.privacy.plan import QUANTIZATION_RANGE, clipping_range
from fl.privacy.secagg import SecAggPlusMean, SecureAggregationError
from fl.privacy.vectors import to_vector
from fl.protocol import SECURE_TRAIN, declared
from fl.simulation.harness import InProcessGrid
from mledge.contracts import ARRAYS_KEY, METRICS_KEY, SITE_KEY

DIM = 300
CLIP = 1.0


def updates(n: int, seed: int = 0, scale: float = 0.5) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {node: rng.normal(0, scale / np.sqrt(DIM), DIM) for node in range(11, 11 + n)}


def toy_app(known: dict[int, np.ndarray]) -> ClientApp:
    app = ClientApp(mods=[privacy_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        weights = msg.content[ARRAYS_KEY]["w"].numpy()
        trained = ArrayRecord({"w": Array((weights + known[context.node_id]).astype(np.float64))})
        content = RecordDict({
            ARRAYS_KEY: trained,
            METRICS_KEY: MetricRecord({"train-loss": 0.1, "num-examples": 10}),
            SITE_KEY: ConfigRecord({SITE_KEY: f"site-{context.node_id}"}),
        })
        return Message(content, reply_to=msg)

    return app


def run_config(mode: str = "secagg", **extra) -> dict:
    return {"privacy": mode, "clip-norm": CLIP, "num-server-rounds": 1, "min-replies": 2, **extra}


def one_round(grid: InProcessGrid, strategy: SecAggPlusMean, start: np.ndarray):
    arrays = ArrayRecord({"w": Array(start)})
    messages = list(strategy.configure_train(1, arrays, ConfigRecord({"local-epochs": 1}), grid))
    replies = grid.send_and_receive(messages)
    aggregated, _ = strategy.aggregate_train(1, replies)
    return replies, to_vector(aggregated) - start


def stage(message: Message) -> str:
    return str(message.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])


def test_the_platform_receives_no_individual_update_only_the_mean():
    known = updates(5)
    nodes = {node: {} for node in known}
    start = np.zeros(DIM)
    with InProcessGrid(toy_app(known), nodes, run_config=run_config(), record=True) as grid:
        strategy = SecAggPlusMean(clipping_range=clipping_range(CLIP), screening=False)
        replies, mean = one_round(grid, strategy, start)

    expected = np.mean([clip(u, CLIP)[0] for u in known.values()], axis=0)
    step = 2 * clipping_range(CLIP) / QUANTIZATION_RANGE
    assert np.max(np.abs(mean - expected)) < 5 * step  # the mean, up to SecAgg+'s quantisation
    assert strategy.last_weights == {f"site-{n}": pytest.approx(0.2) for n in known}

    # Every reply the platform got, every stage: no array holds a value, and no masked vector resembles its update.
    assert len(grid.received) == len(Stage.all()) * 5  # four stages, five sites
    for reply in grid.replies:
        assert all(len(record) == 0 for record in reply.content.array_records.values())
        assert not any(k.startswith("fitres.") for k in reply.content)
    collected = [r for r in grid.replies if Key.MASKED_PARAMETERS in r.content.config_records[RECORD_KEY_CONFIGS]]
    assert len(collected) == 5
    for reply in collected:
        from flwr.common import bytes_to_ndarray

        masked = [bytes_to_ndarray(b) for b in reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
        vector = masked[1].astype(np.float64)  # masked[0] is the masked weight factor
        update = known[reply.metadata.src_node_id]
        assert abs(np.corrcoef(vector, update)[0, 1]) < 0.3  # masks are uniform mod 2^32: no trace of the update
        # What the site disclosed in the clear: its metrics, its name, two scalars.
        assert set(reply.content[METRICS_KEY]) == {"train-loss", "num-examples", "update-norm", "update-alignment"}
        assert reply.content[METRICS_KEY]["update-norm"] == pytest.approx(np.linalg.norm(update))
    # ... and every record and key of every stage's reply is one fl/protocol.py declares for secure aggregation.
    for reply in grid.replies:
        for record in reply.content:
            assert set(reply.content[record]) <= declared(SECURE_TRAIN, record), (record, set(reply.content[record]))
            assert declared(SECURE_TRAIN, record) or record in ("arrays",), record


def test_a_site_lost_mid_round_is_recovered_within_the_threshold():
    known = updates(5, seed=1)
    lost = 13
    drop = lambda m: m.metadata.dst_node_id == lost and stage(m) == Stage.COLLECT_MASKED_VECTORS  # noqa: E731
    with InProcessGrid(toy_app(known), {n: {} for n in known}, run_config=run_config(), drop=drop) as grid:
        strategy = SecAggPlusMean(clipping_range=clipping_range(CLIP), screening=False)
        replies, mean = one_round(grid, strategy, np.zeros(DIM))
    assert lost not in {r.metadata.src_node_id for r in replies}
    expected = np.mean([clip(u, CLIP)[0] for n, u in known.items() if n != lost], axis=0)
    assert np.max(np.abs(mean - expected)) < 1e-4  # the lost site's masks were removed, its update never added
    assert set(strategy.last_weights) == {f"site-{n}" for n in known if n != lost}


def test_a_site_lost_while_unmasking_is_recovered_too():
    known = updates(5, seed=2)
    drop = lambda m: m.metadata.dst_node_id == 12 and stage(m) == Stage.UNMASK  # noqa: E731
    with InProcessGrid(toy_app(known), {n: {} for n in known}, run_config=run_config(), drop=drop) as grid:
        _, mean = one_round(grid, SecAggPlusMean(clipping_range=clipping_range(CLIP), screening=False), np.zeros(DIM))
    assert np.max(np.abs(mean - np.mean([clip(u, CLIP)[0] for u in known.values()], axis=0))) < 1e-4


def test_more_losses_than_the_threshold_allows_end_the_round_saying_why():
    known = updates(3, seed=3)  # three sites: shares 3, threshold 2; losing two leaves one
    drop = lambda m: m.metadata.dst_node_id in (11, 12) and stage(m) == Stage.COLLECT_MASKED_VECTORS  # noqa: E731
    with InProcessGrid(toy_app(known), {n: {} for n in known}, run_config=run_config(), drop=drop) as grid:
        with pytest.raises(SecureAggregationError, match="live neighbours"):
            one_round(grid, SecAggPlusMean(clipping_range=clipping_range(CLIP), screening=False), np.zeros(DIM))


def test_a_screened_site_is_left_out_of_the_sum_without_unmasking_it():
    known = updates(6, seed=4)
    known[16] = known[16] * 40  # a boosted update: its disclosed norm is an outlier (and it is clipped anyway)
    with InProcessGrid(toy_app(known), {n: {} for n in known}, run_config=run_config()) as grid:
        strategy = SecAggPlusMean(clipping_range=clipping_range(CLIP), screening=True)
        _, mean = one_round(grid, strategy, np.zeros(DIM))
    assert set(strategy.last_rejected) == {"site-16"}
    expected = np.mean([clip(u, CLIP)[0] for n, u in known.items() if n != 16], axis=0)
    assert np.max(np.abs(mean - expected)) < 1e-4


def test_a_site_refuses_a_plain_train_message_when_the_run_promised_secagg():
    known = updates(3)
    with InProcessGrid(toy_app(known), {n: {} for n in known}, run_config=run_config()) as grid:
        message = Message(
            RecordDict({ARRAYS_KEY: ArrayRecord({"w": Array(np.zeros(DIM))}), "config": ConfigRecord({})}),
            dst_node_id=11, message_type="train",
        )
        (reply,) = grid.send_and_receive([message])
    assert reply.has_error() and "not send its update in the clear" in reply.error.reason


def test_secagg_dp_adds_the_noise_at_the_sites_and_the_platform_sees_only_the_noisy_sum():
    from fl.privacy.accountant import noise_multiplier_for
    from fl.privacy.plan import site_sigma

    known = {n: np.zeros(DIM) for n in range(11, 16)}  # zero updates: what comes back is the noise alone
    config = run_config("secagg-dp", **{"dp-epsilon": 4.0, "dp-delta": 1e-5})
    z = noise_multiplier_for(4.0, 1, 1e-5)
    rng = np.random.default_rng(0)
    sums = []
    for _ in range(4):
        with InProcessGrid(toy_app(known), {n: {} for n in known}, run_config=config) as grid:
            cr = clipping_range(CLIP, z, 2)
            _, mean = one_round(grid, SecAggPlusMean(clipping_range=cr, screening=False), np.zeros(DIM))
        sums.append(mean * 5)
    noise = np.concatenate(sums)
    step = 2 * cr / QUANTIZATION_RANGE
    # Five sites, each N(0, sigma_site^2) with sigma_site^2 = (z C')^2 / min-replies: the sum's variance is 5/2 of
    # the accountant's (z C')^2.
    expected = np.sqrt(5) * site_sigma(z, CLIP, 2, DIM, step)
    assert np.std(noise) == pytest.approx(expected, rel=0.1)
    assert abs(np.mean(noise)) < 4 * expected / np.sqrt(noise.size)
    del rng
