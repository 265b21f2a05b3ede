"""The aggregation strategies on crafted updates: what every rule must do, and what each robust rule adds.

Replies are real Flower Messages (fl/simulation/harness.py); models are small (a few hundred parameters), so the
whole file runs in seconds.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fl.simulation.harness import make_error_reply, make_reply, run_round, to_arrayrecord
from fl.strategies import STRATEGIES, FedQV, ReputationResidual, build_strategy
from fl.strategies.arrays import Layout, array_view, flatten, unflatten
from fl.strategies.state import MemoryStateStore
from fl.strategies.validation import validate_replies

ALL = list(STRATEGIES)
WEIGHTED = ["mledge-robust", "fedavg", "krum", "multikrum", "fedqv", "fedqv-reputation", "reputation-residual"]
COORDINATE_WISE = ["fedmedian", "fedtrimmedavg", "bulyan"]
ROBUST = [
    "mledge-robust", "krum", "multikrum", "fedmedian", "fedtrimmedavg", "bulyan", "fedqv-reputation",
    "reputation-residual",
]
SHAPES = {"layer.weight": (12, 8), "layer.bias": (8,), "out.weight": (1, 8)}


def params(name: str) -> dict:
    """Parameters that make each rule meaningful for 9 sites with at most 1 attacker."""
    return {
        "krum": {"num_malicious_nodes": 1},
        "multikrum": {"num_malicious_nodes": 1, "num_nodes_to_select": 5},
        "bulyan": {"num_malicious_nodes": 1},
    }.get(name, {})


def model(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {k: (scale * rng.standard_normal(s)).astype(np.float32) for k, s in SHAPES.items()}


def local_models(global_model: dict, n: int, seed: int = 1, noise: float = 0.05) -> list[dict]:
    """n honest local models: the global model plus a small, site-specific update."""
    rng = np.random.default_rng(seed)
    return [{k: v + model(rng, noise)[k] for k, v in global_model.items()} for _ in range(n)]


def replies_for(models: list[dict], examples: list[float] | None = None) -> list:
    examples = examples or [100 + 10 * i for i in range(len(models))]
    return [make_reply(f"site-{i}", 100 + i, m, examples[i]) for i, m in enumerate(models)]


def vector(arrays) -> np.ndarray:
    return flatten(to_arrayrecord(arrays))


def aggregate(name: str, global_model: dict, models: list[dict], **kwargs):
    strategy = build_strategy(name, **{**params(name), **kwargs})
    arrays, metrics = run_round(strategy, to_arrayrecord(global_model), replies_for(models))
    return strategy, arrays, metrics


@pytest.fixture
def global_model() -> dict[str, np.ndarray]:
    return model(np.random.default_rng(0))


# --- every strategy -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_identical_updates_aggregate_to_themselves(name, global_model):
    same = local_models(global_model, 1)[0]
    strategy, arrays, metrics = aggregate(name, global_model, [same] * 9)
    assert Layout.of(arrays) == Layout.of(to_arrayrecord(same))
    for key, value in same.items():
        np.testing.assert_allclose(arrays[key].numpy(), value, rtol=1e-6, atol=1e-7)
    assert metrics is not None and strategy.last_rejected == {}


@pytest.mark.parametrize("name", ALL)
def test_permuting_the_clients_changes_nothing(name, global_model):
    models = local_models(global_model, 8)
    models.append({k: global_model[k] + 30 * (v - global_model[k]) for k, v in models[0].items()})  # an attacker
    examples = [100 + 10 * i for i in range(9)]
    order = [4, 8, 0, 6, 2, 7, 1, 5, 3]
    results = []
    for permutation in (range(9), order):
        strategy = build_strategy(name, **params(name))
        replies = [make_reply(f"site-{i}", 100 + i, models[i], examples[i]) for i in permutation]
        arrays, _ = run_round(strategy, to_arrayrecord(global_model), replies)
        results.append((vector(arrays), strategy.last_weights))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


@pytest.mark.parametrize("name", WEIGHTED)
def test_weights_are_non_negative_sum_to_one_and_are_the_ones_used(name, global_model):
    models = local_models(global_model, 8)
    models.append({k: global_model[k] - 20 * (v - global_model[k]) for k, v in models[0].items()})  # sign flip
    strategy, arrays, _ = aggregate(name, global_model, models)
    weights = strategy.last_weights
    assert sorted(weights) == [f"site-{i}" for i in range(9)]
    values = np.array([weights[f"site-{i}"] for i in range(9)])
    assert (values >= 0).all()
    assert values.sum() == pytest.approx(1.0, abs=1e-9)
    if name != "reputation-residual":  # it averages the restricted models, not the raw ones
        expected = sum(w * vector(m) for w, m in zip(values, models, strict=True))
        np.testing.assert_allclose(vector(arrays), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", COORDINATE_WISE)
def test_coordinate_wise_rules_report_no_per_site_weight(name, global_model):
    strategy, arrays, _ = aggregate(name, global_model, local_models(global_model, 9))
    assert arrays is not None and strategy.last_weights == {}


@pytest.mark.parametrize("attack", [100.0, -100.0], ids=["scaled-x100", "sign-flipped-x100"])
@pytest.mark.parametrize("name", ROBUST)
def test_an_obvious_outlier_is_down_weighted(name, attack, global_model):
    """The outlier moves a robust aggregate away from the honest mean by < 1/10 of what it does to FedAvg's."""
    honest = local_models(global_model, 8)
    attacker = {k: global_model[k] + attack * (v - global_model[k]) for k, v in honest[0].items()}
    honest_mean = np.mean([vector(m) for m in honest], axis=0)
    shift = {}
    for rule in ("fedavg", name):
        _, arrays, _ = aggregate(rule, global_model, honest + [attacker])
        shift[rule] = np.linalg.norm(vector(arrays) - honest_mean)
    assert shift[name] < 0.1 * shift["fedavg"]


def test_fedqv_zeroes_the_vote_of_the_least_similar_site(global_model):
    """Honest sites whose similarities spread, one attacker just below them: masked to weight 0."""
    rng = np.random.default_rng(5)
    honest = [{k: v + model(rng, 0.02 * (1 + i))[k] for k, v in global_model.items()} for i in range(8)]
    attacker = {k: global_model[k] + 1.2 * (v - global_model[k]) for k, v in honest[-1].items()}
    strategy, _, _ = aggregate("fedqv", global_model, honest + [attacker])
    assert strategy.last_weights["site-8"] == 0.0
    assert sum(strategy.last_weights[f"site-{i}"] > 0 for i in range(8)) >= 2  # not everyone masked


def test_fedqv_masks_every_site_when_one_outlier_is_extreme(global_model):
    """As published, min-max squeezes every honest s̄ above 1-θ: all votes are 0 and the round is a plain average.
    The reputation variant is the one that excludes such a site."""
    honest = local_models(global_model, 8)
    attacker = {k: global_model[k] + 100 * (v - global_model[k]) for k, v in honest[0].items()}
    plain, _, _ = aggregate("fedqv", global_model, honest + [attacker])
    np.testing.assert_allclose(list(plain.last_weights.values()), 1 / 9)
    with_reputation, _, _ = aggregate("fedqv-reputation", global_model, honest + [attacker])
    assert with_reputation.last_weights["site-8"] == 0.0
    assert with_reputation.state.load("fedqv-reputation", "site-8")["budget"] == 0.0


# --- validation -----------------------------------------------------------------------------------------------


def bad_replies(global_model: dict) -> dict[str, object]:
    """site -> a reply that must be rejected (the site name is the expected key in last_rejected)."""
    good = local_models(global_model, 1, seed=9)[0]
    nan = {**good, "layer.bias": np.full(8, np.nan, np.float32)}
    inf = {**good, "out.weight": np.full((1, 8), np.inf, np.float32)}
    shape = {**good, "layer.bias": np.zeros(9, np.float32)}
    dtype = {**good, "layer.bias": good["layer.bias"].astype(np.float64)}
    missing = {k: v for k, v in good.items() if k != "out.weight"}
    extra = {**good, "extra": np.zeros(2, np.float32)}
    liar = to_arrayrecord(good)
    lying = liar["layer.bias"]  # declares (8,) float32 but carries 9 values
    liar["layer.bias"] = Array(lying.dtype, lying.shape, lying.stype, Array(np.zeros(9, np.float32)).data)
    return {
        "nan": make_reply("nan", 201, nan, 100),
        "inf": make_reply("inf", 202, inf, 100),
        "shape": make_reply("shape", 203, shape, 100),
        "dtype": make_reply("dtype", 204, dtype, 100),
        "missing-array": make_reply("missing-array", 205, missing, 100),
        "extra-array": make_reply("extra-array", 206, extra, 100),
        "lying-payload": make_reply("lying-payload", 207, liar, 100),
        "negative": make_reply("negative", 208, good, -5),
        "zero": make_reply("zero", 209, good, 0),
        "absurd": make_reply("absurd", 210, good, 10**12),
        "fractional": make_reply("fractional", 211, good, 2.5),
        "nan-count": make_reply("nan-count", 212, good, float("nan")),
        "no-count": make_reply("no-count", 213, good, None),
        "list-count": make_reply("list-count", 214, good, [1.0, 2.0]),
        "odd-metrics": make_reply("odd-metrics", 215, good, 100, metrics={"train-loss": 0.1, "other": 1.0}),
    }


@pytest.mark.parametrize("name", ALL)
def test_bad_updates_are_rejected_by_site_and_the_round_goes_on(name, global_model):
    honest = local_models(global_model, 7)
    bad = bad_replies(global_model)
    replies = replies_for(honest) + list(bad.values()) + [make_error_reply(300, "client crashed")]
    strategy = build_strategy(name, **params(name))
    arrays, metrics = run_round(strategy, to_arrayrecord(global_model), replies)
    assert set(strategy.last_rejected) == set(bad)
    reference = build_strategy(name, **params(name))
    expected, _ = run_round(reference, to_arrayrecord(global_model), replies_for(honest))
    np.testing.assert_array_equal(vector(arrays), vector(expected))
    assert np.isfinite(vector(arrays)).all() and metrics is not None


def test_rejection_reasons_say_what_was_wrong(global_model):
    bad, honest = bad_replies(global_model), replies_for(local_models(global_model, 3))
    valid, rejected = validate_replies(list(bad.values()) + honest, to_arrayrecord(global_model), max_examples=1000)
    assert valid == honest and set(rejected) == set(bad)
    assert rejected["nan"].startswith("non-finite values") and "layer.bias" in rejected["nan"]
    assert rejected["inf"].startswith("non-finite values")
    assert "shape" in rejected["shape"] and "dtype" in rejected["dtype"]
    assert "missing ['out.weight']" in rejected["missing-array"]
    assert "unexpected ['extra']" in rejected["extra-array"]
    assert "payload holds" in rejected["lying-payload"]
    for site in ("negative", "zero", "absurd", "fractional", "nan-count", "no-count", "list-count"):
        assert rejected[site].startswith("bad num-examples"), site
    assert "more than 1,000" in rejected["absurd"] and "missing" in rejected["no-count"]


def test_sites_are_named_by_their_reply_or_node_and_duplicates_are_refused(global_model):
    models = local_models(global_model, 4)
    replies = [
        make_reply("plant-a", 11, models[0], 10),
        make_reply(None, 12, models[1], 10),  # names no site: falls back to the node id
        make_reply("plant-c", 13, models[2], 10),
        make_reply("plant-c", 14, models[3], 10),  # a second node claiming plant-c
    ]
    valid, rejected = validate_replies(replies, to_arrayrecord(global_model))
    assert [r.metadata.src_node_id for r in valid] == [12, 11]  # sorted by site: "node-12" < "plant-a"
    assert list(rejected) == ["plant-c"] and "2 replies" in rejected["plant-c"]


def test_without_a_global_model_the_common_layout_is_the_reference(global_model):
    models = local_models(global_model, 3)
    odd = {**models[0], "layer.bias": np.zeros(3, np.float32)}
    valid, rejected = validate_replies(replies_for(models) + [make_reply("odd", 9, odd, 10)], None)
    assert len(valid) == 3 and list(rejected) == ["odd"]


# --- FedQV ----------------------------------------------------------------------------------------------------


def test_fedqv_masked_votes_mask_the_extremes():
    from fl.strategies.fedqv import masked_votes, minmax_normalise

    s_bar = minmax_normalise([-1.0, -0.8, -0.6, 0.2, 0.4, 0.6, 1.0])  # -> 0, .1, .2, .6, .7, .8, 1
    np.testing.assert_allclose(s_bar, [0, 0.1, 0.2, 0.6, 0.7, 0.8, 1.0], atol=1e-12)
    c = masked_votes(s_bar, theta=0.2)
    np.testing.assert_allclose(c, [0, 0, 0, 1 - np.log(0.6), 1 - np.log(0.7), 0, 0], atol=1e-12)
    assert masked_votes(np.array([0.15, 0.5]), theta=0.1)[0] == pytest.approx(1 - np.log(0.15))
    np.testing.assert_array_equal(minmax_normalise([0.3, 0.3]), [0.0, 0.0])


def test_fedqv_budget_payments_and_quadratic_weights():
    from fl.strategies.fedqv import quadratic_weights, reputation_adjust, spend_budgets

    c, left = spend_budgets(np.array([2.0, 2.0, 2.0, 0.0]), np.array([30.0, 1.5, 0.0, 4.0]))
    np.testing.assert_array_equal(c, [2.0, 1.5, 0.0, 0.0])
    np.testing.assert_array_equal(left, [28.0, 0.0, 0.0, 4.0])
    np.testing.assert_allclose(quadratic_weights([1.0, 4.0], [1, 1]), [1 / 3, 2 / 3])
    np.testing.assert_allclose(quadratic_weights([1.0, 1.0], [100, 400]), [1 / 3, 2 / 3])
    np.testing.assert_array_equal(quadratic_weights([0.0, 0.0, -1.0], [5, 5, 5]), [1 / 3] * 3)
    assert np.isnan(quadratic_weights([np.nan, 1.0], [1, 1])).all()
    c, budgets = reputation_adjust(np.array([1.0, 1.0, 1.0]), np.array([5.0, 5.0, 5.0]), np.array([0.95, 0.5, 0.0]))
    np.testing.assert_allclose(c, [1.95, 1.0, 0.0])
    np.testing.assert_allclose(budgets, [5.95, 5.0, 0.0])


def test_a_constant_spender_exhausts_its_budget_of_30():
    from fl.strategies.fedqv import spend_budgets

    credit, budget, paid = 1 - np.log(0.5), np.array([30.0]), []
    for _ in range(20):
        c, budget = spend_budgets(np.array([credit]), budget)
        paid.append(float(c[0]))
    full = int(30 // credit)  # 17 full payments, then the rest, then nothing
    assert paid[:full] == [pytest.approx(credit)] * full
    assert paid[full] == pytest.approx(30 - full * credit)
    assert paid[full + 1 :] == [0.0] * (20 - full - 1) and budget[0] == 0.0


def unit_circle_replies(cosines: list[float]) -> tuple[ArrayRecord, list]:
    """A 2-parameter model whose global weights are (1, 0): site i sends (cos φ_i, sin φ_i), so s_i = cos φ_i."""
    global_arrays = to_arrayrecord({"w": np.array([1.0, 0.0], np.float32)})
    replies = [
        make_reply(f"s{i}", 10 + i, {"w": np.array([c, np.sqrt(1 - c * c)], np.float32)}, 100)
        for i, c in enumerate(cosines)
    ]
    return global_arrays, replies


def test_fedqv_budgets_run_out_round_by_round_and_then_votes_are_uniform():
    """s̄ = 0, .3, .5, .7, 1: the extremes never vote; the others pay 1 - ln s̄ a round until B = 30 is spent."""
    cosines = [0.0, 0.3, 0.5, 0.7, 1.0]
    strategy = FedQV()
    history = []
    for rnd in range(1, 26):
        global_arrays, replies = unit_circle_replies(cosines)
        run_round(strategy, global_arrays, replies, rnd)
        history.append(strategy.last_weights)
    assert history[0]["s0"] == history[0]["s4"] == 0.0
    votes = {i: 1 - np.log(cosines[i]) for i in (1, 2, 3)}
    expected = np.sqrt([votes[1], votes[2], votes[3]]) / np.sqrt([votes[1], votes[2], votes[3]]).sum()
    np.testing.assert_allclose([history[0][f"s{i}"] for i in (1, 2, 3)], expected, rtol=1e-5)
    rounds = {i: int(30 // votes[i]) + 1 for i in (1, 2, 3)}  # the round that pays the rest of each budget
    assert rounds == {1: 14, 2: 18, 3: 23}
    for i in (1, 2):
        assert history[rounds[i] - 1][f"s{i}"] > 0 and history[rounds[i]][f"s{i}"] == 0.0, i
    assert history[rounds[3] - 1]["s3"] == 1.0  # the last site with budget
    for weights in history[rounds[3] :]:  # no votes left at all: uniform
        np.testing.assert_allclose(list(weights.values()), 0.2)
    assert all(strategy.state.load("fedqv", f"s{i}")["budget"] == 0.0 for i in (1, 2, 3))
    assert strategy.state.load("fedqv", "s0")["budget"] == 30.0  # masked sites pay nothing


def test_fedqv_server_similarity_ignores_what_clients_claim():
    from fl.strategies.arrays import dot_products
    from fl.strategies.fedqv import cosines_from_dots

    global_arrays, replies = unit_circle_replies([0.0, 0.3, 0.5, 0.7, 1.0])
    for reply in replies:  # every site claims to be the most similar
        reply.content["metrics"]["similarity"] = 1.0
    server, client = FedQV(), FedQV(similarity="client")
    run_round(server, global_arrays, replies)
    _, replies = unit_circle_replies([0.0, 0.3, 0.5, 0.7, 1.0])
    for reply in replies:
        reply.content["metrics"]["similarity"] = 1.0
    run_round(client, global_arrays, replies)
    assert server.last_weights["s0"] == 0.0 and server.last_weights["s2"] > 0.2
    np.testing.assert_allclose(list(client.last_weights.values()), 0.2)  # equal claims: all masked
    records = [to_arrayrecord({"w": np.array(row, np.float32)}) for row in ([3.0, 4.0], [0.0, 2.0], [0.0, 0.0])]
    reference = np.array([1.0, 0.0], np.float32)
    dots, squares = dot_products(records, Layout.of(records[0]), reference)
    np.testing.assert_allclose(cosines_from_dots(dots, squares, 1.0), [0.6, 0.0, 0.0])


def test_fedqv_client_similarity_must_be_a_cosine():
    global_arrays, replies = unit_circle_replies([0.3, 0.5, 0.7])
    for reply, claim in zip(replies, [0.3, 0.5, 7.0], strict=True):
        reply.content["metrics"]["similarity"] = claim
    strategy = FedQV(similarity="client")
    run_round(strategy, global_arrays, replies)
    assert list(strategy.last_rejected) == ["s2"] and "similarity" in strategy.last_rejected["s2"]


def test_fedqv_takes_the_whole_budget_of_a_site_that_sends_nan(global_model):
    models = local_models(global_model, 4)
    models[3] = {**models[3], "layer.bias": np.full(8, np.nan, np.float32)}
    strategy = FedQV()
    arrays, _ = run_round(strategy, to_arrayrecord(global_model), replies_for(models))
    assert arrays is not None and "site-3" in strategy.last_rejected
    assert strategy.state.load("fedqv", "site-3") == {"budget": 0.0}
    assert strategy.state.load("fedqv", "site-0")["budget"] == 30.0  # masked or voting, never charged to 0


# --- reputation and residuals ---------------------------------------------------------------------------------


def test_opinion_and_its_decay_follow_the_paper():
    from fl.strategies.reputation import decayed, opinion

    assert opinion(8, 2) == pytest.approx((0.3 * 8 + 0.5 * 2) / (0.3 * 8 + 0.7 * 2 + 2))
    assert opinion(0, 0) == pytest.approx(0.5)  # no observations: pure uncertainty, weighted by a
    assert opinion(10**6, 0) > 0.99 and opinion(0, 10**6) < 0.01
    assert decayed([0.0, 1.0]) == pytest.approx(1 / (1 + np.exp(-0.5)))  # the newest weighs e^0, the one before e^-.5
    assert decayed([1.0] * 10 + [0.0]) == pytest.approx(1 - 1 / sum(np.exp(-0.5 * np.arange(10))))
    # A bad round, then good ones: the reputation climbs back, and the bad round is forgotten after the window.
    history, levels = [0.0], []
    for _ in range(10):
        history.append(1.0)
        levels.append(decayed(history))
    assert all(b > a for a, b in zip(levels, levels[1:], strict=False))
    assert levels[-1] == pytest.approx(1.0)


def test_reputation_weights_min_max_and_the_one_over_n_floor():
    from fl.strategies.reputation import reputation_weights

    np.testing.assert_allclose(reputation_weights([0.2, 0.6, 1.0]), [0, 1 / 3, 2 / 3])
    np.testing.assert_allclose(reputation_weights([0.0, 0.3, 1.0]), [0, 0, 1])  # 0.3 < 1/3
    np.testing.assert_allclose(reputation_weights([0.7, 0.7]), [0.5, 0.5])


def brute_force_line(column: list[float]) -> tuple[float, float]:
    """Siegel's repeated median for one coordinate, in plain Python, straight from the definition."""
    y = sorted(column)
    n = len(y)

    def median(values):
        values = sorted(values)
        m = len(values)
        return values[m // 2] if m % 2 else (values[m // 2 - 1] + values[m // 2]) / 2

    slope = median([median([(y[i] - y[j]) / (i - j) for j in range(n) if j != i]) for i in range(n)])
    return slope, median(y) - slope * median(list(range(n)))


@pytest.mark.parametrize("n", [2, 3, 6, 7, 10])
def test_repeated_median_line_equals_brute_force(n):
    from fl.strategies.repeated_median import repeated_median_line

    rng = np.random.default_rng(n)
    y = rng.standard_normal((n, 25)).astype(np.float32)
    y[:, 3] = 1.5  # all tied
    y[: n // 2, 4] = -2.0  # some tied
    y = np.sort(y, axis=0)
    slope, intercept = repeated_median_line(y)
    for k in range(y.shape[1]):
        s, i = brute_force_line([float(v) for v in y[:, k]])
        assert slope[k] == pytest.approx(s, rel=1e-5, abs=1e-6) and intercept[k] == pytest.approx(i, rel=1e-5, abs=1e-6)


def test_repeated_median_line_does_not_depend_on_chunking_or_backend(monkeypatch):
    import torch

    from fl.strategies import repeated_median as rr

    y = np.sort(np.random.default_rng(3).standard_normal((9, 1000)).astype(np.float32), axis=0)
    whole = rr.repeated_median_line(y)
    chunked = rr.repeated_median_line(y, chunk_bytes=9 * 9 * 4 * 7)  # 143 chunks of 7 coordinates, threaded
    monkeypatch.setattr(rr, "_accelerator", lambda: (torch, "cpu"))  # the GPU code path, run on the CPU
    on_torch = rr.repeated_median_line(y)
    for other in (chunked, on_torch):
        np.testing.assert_allclose(other[0], whole[0], rtol=1e-6)
        np.testing.assert_allclose(other[1], whole[1], rtol=1e-6, atol=1e-7)


def test_residual_confidence_and_restriction():
    from fl.strategies.repeated_median import leverage, residual_confidence, restrict_outliers

    x = np.arange(7.0)
    np.testing.assert_allclose(leverage(x), 1 / 7 + (x - 3) ** 2 / ((x - 3) ** 2).sum())
    rng = np.random.default_rng(4)
    clean = np.linspace(0, 1, 7, dtype=np.float32)[:, None] + rng.normal(0, 0.01, (7, 50)).astype(np.float32)
    matrix = clean.copy()
    matrix[2, 10] = 50.0  # one absurd value of client 2
    outliers = restrict_outliers(matrix)
    assert 0.5 < matrix[2, 10] < 2.0  # replaced by its line value at the top rank
    assert outliers.tolist() == [0, 0, 1, 0, 0, 0, 0]
    np.testing.assert_array_equal(np.delete(matrix, 10, axis=1), np.delete(clean, 10, axis=1))  # the rest untouched
    y = np.sort(matrix[:, :1], axis=0)
    omega = residual_confidence(y, np.zeros(1, np.float32), np.array([np.median(y)], np.float32))
    assert omega.shape == (7, 1) and (omega <= 1).all() and (omega > 0).all()
    line = np.arange(7, dtype=np.float32)[:, None]
    assert (residual_confidence(line, np.ones(1, np.float32), np.zeros(1, np.float32)) == 1).all()


def test_reputation_drops_for_an_attack_and_recovers_after_it(global_model):
    strategy = ReputationResidual()
    reputations = []
    for rnd in range(1, 13):
        models = local_models(global_model, 5, seed=rnd)
        if rnd == 1:
            models[4] = {k: global_model[k] + 100 * (v - global_model[k]) for k, v in models[4].items()}
        run_round(strategy, to_arrayrecord(global_model), replies_for(models), rnd)
        if rnd == 1:
            assert strategy.last_weights["site-4"] == 0.0
        history = strategy.state.load("reputation-residual", "site-4")["history"]
        reputations.append(history)
    assert reputations[0][-1] < 0.1  # the attack round's opinion
    from fl.strategies.reputation import decayed

    levels = [decayed(h) for h in reputations]
    assert all(b > a for a, b in zip(levels[:5], levels[1:6], strict=True))
    assert len(reputations[-1]) == 10 and min(reputations[-1]) > 0.5  # the attack round left the window


# --- mechanics ------------------------------------------------------------------------------------------------


def test_hot_paths_decode_without_copies_or_garbage_collections(global_model, monkeypatch):
    record = to_arrayrecord(global_model)
    view = array_view(record["layer.weight"])
    assert not view.flags.writeable and np.shares_memory(view, np.frombuffer(record["layer.weight"].data, np.uint8))
    collections = []
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(a) or 0)
    for name in ("fedqv", "fedqv-reputation", "reputation-residual"):
        aggregate(name, global_model, local_models(global_model, 5))
    assert collections == []


def test_payload_sums_and_dot_products_equal_the_stacked_matrix_ones(global_model):
    from fl.strategies.arrays import dot_products, stack, weighted_average, weighted_sum

    records = [to_arrayrecord(m) for m in local_models(global_model, 6)]
    layout = Layout.of(records[0])
    matrix = stack(records, layout)
    weights = np.array([0.5, 0.0, 2.0, 1.0, 0.25, 3.0])
    np.testing.assert_allclose(vector(weighted_sum(records, layout, weights)), weighted_average(matrix, weights),
                               rtol=1e-6, atol=1e-7)
    reference = vector(global_model)
    dots, squares = dot_products(records, layout, reference)
    np.testing.assert_allclose(dots, matrix.astype(np.float64) @ reference, rtol=1e-5)
    np.testing.assert_allclose(squares, (matrix.astype(np.float64) ** 2).sum(axis=1), rtol=1e-5)


def test_payload_sums_work_in_the_layouts_dtype_and_across_blocks(monkeypatch):
    from fl.strategies import arrays

    monkeypatch.setattr(arrays, "SUM_BLOCK", 7)  # several blocks per array, a short last one
    rng = np.random.default_rng(2)
    models = [{"w": rng.standard_normal(40), "b": rng.standard_normal(3).astype(np.float32),
               "steps": np.array(10 + i, np.int64)} for i in range(3)]
    records = [to_arrayrecord(m) for m in models]
    layout = Layout.of(records[0])
    assert layout.compute_dtype == np.float64  # one float64 array: everything is summed in float64
    summed = arrays.weighted_sum(records, layout, np.array([1.0, 1.0, 2.0]))
    assert Layout.of(summed) == layout
    np.testing.assert_allclose(summed["w"].numpy(), (models[0]["w"] + models[1]["w"] + 2 * models[2]["w"]) / 4)
    assert summed["steps"].numpy() == 11  # (10 + 11 + 2 x 12) / 4 = 11.25, rounded to the nearest integer


def test_fedqv_weighs_the_payloads_without_stacking_them(global_model, monkeypatch):
    """Plain FedQV reads no matrix at all; the reputation variant reads only its sampled coordinates."""
    from fl.strategies import arrays, fedqv

    def no_stack(*args, **kwargs):
        raise AssertionError("FedQV must not build a (clients, parameters) matrix")

    monkeypatch.setattr(fedqv, "sampled_columns", no_stack)
    strategy, arrays_, _ = aggregate("fedqv", global_model, local_models(global_model, 5))
    assert arrays_ is not None and sum(strategy.last_weights.values()) == pytest.approx(1.0)
    monkeypatch.undo()
    monkeypatch.setattr(arrays, "stack", no_stack)
    strategy, arrays_, _ = aggregate("fedqv-reputation", global_model, local_models(global_model, 5), coordinates=40)
    assert arrays_ is not None and sum(strategy.last_weights.values()) == pytest.approx(1.0)


def test_payload_headers_are_checked_even_when_seen_before(global_model):
    from fl.strategies.arrays import PayloadError

    record = to_arrayrecord(global_model)
    good = record["layer.bias"]
    array_view(good)  # its header is now cached
    truncated = Array(good.dtype, good.shape, good.stype, good.data[:-4])
    with pytest.raises(PayloadError, match="bytes for 8"):
        array_view(truncated)
    other_shape = Array(good.dtype, (4, 2), good.stype, good.data)
    with pytest.raises(PayloadError, match="declares float32"):
        array_view(other_shape)
    bad_version = Array(good.dtype, good.shape, good.stype, good.data[:6] + b"\x03" + good.data[7:])
    with pytest.raises(PayloadError, match="unreadable payload"):
        array_view(bad_version)
    with pytest.raises(PayloadError, match="unreadable payload"):
        array_view(Array(good.dtype, good.shape, good.stype, b"not a numpy payload"))


def test_unflatten_restores_names_shapes_and_dtypes():
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "steps": np.array(7, dtype=np.int64)}
    layout = Layout.of(to_arrayrecord(arrays))
    back = unflatten(flatten(to_arrayrecord(arrays)) + np.float32(0.2), layout)
    assert Layout.of(back) == layout and back["steps"].numpy() == 7
    np.testing.assert_allclose(back["a"].numpy(), arrays["a"] + 0.2, rtol=1e-6)


def test_build_strategy_names_and_parameters():
    with pytest.raises(ValueError, match="valid names: mledge-robust, fedavg, krum, multikrum"):
        build_strategy("fedprox")
    strategy = build_strategy("FedQV", min_nodes=3, theta=0.1)
    assert isinstance(strategy, FedQV) and strategy.theta == 0.1 and strategy.min_train_nodes == 3
    assert strategy.min_available_nodes == 3 and strategy.fraction_evaluate == 0.0
    assert build_strategy("fedqv-reputation").state_key == "fedqv-reputation"
    store = MemoryStateStore()
    assert build_strategy("reputation-residual", state=store).state is store
    assert build_strategy("multikrum", num_nodes_to_select=3).num_nodes_to_select == 3
    for name in STRATEGIES:
        assert hasattr(build_strategy(name), "set_global_model")


def test_an_all_rejected_round_returns_nothing(global_model):
    models = local_models(global_model, 2)
    for name in ALL:
        strategy = build_strategy(name)
        assert run_round(strategy, to_arrayrecord(global_model), replies_for(models, [-1, -1])) == (None, None)
        assert set(strategy.last_rejected) == {"site-0", "site-1"}
