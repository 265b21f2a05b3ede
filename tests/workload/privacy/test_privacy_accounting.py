"""The accountant's numbers against reference computations, the noise primitives, the DP mean, and the refused
combinations of strategy and privacy mode."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant
from flwr.app import Array, ArrayRecord
from scipy.stats import norm

from fl.privacy.accountant import ORDERS, epsilon, noise_multiplier_for
from fl.privacy.central_dp import CentralGaussianMean
from fl.privacy.modes import PrivacyCombinationError, PrivacySettings, check_combination, validate
from fl.privacy.noise import clip, discrete_gaussian, noisy_on_grid
from fl.privacy.screening import screen
from fl.simulation.harness import make_reply
from fl.strategies import build_strategy
from mledge.contracts import STRATEGIES


def rdp_reference(z: float, rounds: int, delta: float) -> float:
    """RDP of the Gaussian mechanism, alpha * T / (2 z^2) (Mironov 2017, Prop. 7), converted to (eps, delta) by
    Canonne, Kamath & Steinke 2020 (Prop. 12) / Asoodeh et al. 2021, minimised over the same orders."""
    best = math.inf
    for a in ORDERS:
        if a <= 1:
            continue
        rdp = rounds * a / (2 * z * z)
        eps = rdp + math.log1p(-1 / a) - (math.log(delta) + math.log(a)) / (a - 1)
        best = min(best, eps)
    return max(best, 0.0)


def exact_gaussian_epsilon(z: float, rounds: int, delta: float) -> float:
    """The exact epsilon of T Gaussian mechanisms (a mu-GDP mechanism with mu = sqrt(T)/z; Balle & Wang 2018,
    Dong, Roth & Su 2019): the epsilon at which delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    mu = math.sqrt(rounds) / z

    def delta_of(eps: float) -> float:
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)

    low, high = 0.0, 100.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if delta_of(middle) > delta else (low, middle)
    return high


@pytest.mark.parametrize(("z", "rounds"), [(0.8, 1), (1.1, 3), (2.0, 10), (5.0, 30), (12.8, 10)])
def test_the_accountant_is_dp_accountings_rdp_and_matches_the_closed_form(z, rounds):
    assert epsilon(z, rounds, 1e-5) == pytest.approx(rdp_reference(z, rounds, 1e-5), rel=1e-9)


@pytest.mark.parametrize(("z", "rounds"), [(1.1, 3), (2.0, 10), (5.0, 30)])
def test_the_accountant_bounds_the_exact_epsilon_from_above_and_not_by_much(z, rounds):
    exact = exact_gaussian_epsilon(z, rounds, 1e-5)
    accounted = epsilon(z, rounds, 1e-5)
    assert exact <= accounted <= 1.3 * exact


def test_default_orders_include_dp_accountings():
    assert set(rdp_privacy_accountant.DEFAULT_RDP_ORDERS) <= set(ORDERS)


@pytest.mark.parametrize("target", [1.0, 4.0, 8.0])
def test_the_calibrated_noise_reaches_the_target_and_no_less_noise_would(target):
    z = noise_multiplier_for(target, 10, 1e-5)
    assert epsilon(z, 10, 1e-5) <= target < epsilon(z * 0.999, 10, 1e-5)


def test_no_noise_is_no_privacy_and_no_rounds_spend_nothing():
    assert epsilon(0.0, 3, 1e-5) == math.inf
    assert epsilon(1.0, 0, 1e-5) == 0.0


@pytest.mark.parametrize("strategy", sorted(set(STRATEGIES) - {"fedavg"}))
@pytest.mark.parametrize("mode", ["secagg", "secagg-dp", "dp"])
def test_per_site_rules_are_refused_with_a_reason(strategy, mode):
    with pytest.raises(PrivacyCombinationError) as refused:
        check_combination(strategy, mode)
    message = str(refused.value)
    assert strategy in message and mode in message and "'fedavg'" in message
    assert ("only ever holds the sum" in message) if mode.startswith("secagg") else ("clip-norm / sites" in message)


def test_krum_with_secagg_says_why():
    with pytest.raises(PrivacyCombinationError, match="distances to the other sites' updates.*only ever holds the sum"):
        validate({"privacy": "secagg", "strategy": "krum"}, "krum")


@pytest.mark.parametrize("mode", ["none", "dp", "secagg", "secagg-dp"])
def test_fedavg_runs_in_every_mode_and_every_rule_without_privacy(mode):
    check_combination("fedavg", mode)
    for strategy in STRATEGIES:
        check_combination(strategy, "none")


def test_bad_settings_are_refused():
    for config in ({"privacy": "homomorphic"}, {"privacy": "dp", "dp-epsilon": 0}, {"privacy": "dp", "dp-delta": 1.5},
                   {"privacy": "dp", "clip-norm": -1}):
        with pytest.raises(PrivacyCombinationError):
            PrivacySettings.from_run_config(config)
    assert PrivacySettings.from_run_config({}).mode == "none"


def test_clip_keeps_short_updates_and_shortens_long_ones():
    short, long_ = np.array([0.3, 0.4]), np.array([3.0, 4.0])
    assert clip(short, 1.0)[0] is short and clip(short, 1.0)[1] == pytest.approx(0.5)
    clipped, before = clip(long_, 1.0)
    assert before == pytest.approx(5.0) and np.linalg.norm(clipped) == pytest.approx(1.0)


def test_discrete_gaussian_has_the_right_variance_and_integer_values():
    rng = np.random.default_rng(0)
    for sigma in (0.7, 3.0, 250.0):
        draws = discrete_gaussian(sigma, 200_000, rng)
        assert draws.dtype == np.int64
        assert np.var(draws) == pytest.approx(sigma**2, rel=0.03)
        assert abs(np.mean(draws)) < 5 * sigma / math.sqrt(draws.size)


def test_noise_on_the_grid_is_unbiased_and_lands_on_the_grid():
    rng = np.random.default_rng(1)
    step = 2.0**-18
    update = rng.normal(0, 0.01, 50_000)
    noised = noisy_on_grid(update, step, 0.0, rng)
    assert np.all(noised / step == np.round(noised / step))
    assert np.max(np.abs(noised - update)) <= step
    assert abs(np.mean(noised - update)) < 4 * step / math.sqrt(update.size)


def test_screening_leaves_out_outliers_only_with_enough_sites():
    ordinary = {f"s{i}": {"update-norm": 1.0 + 0.05 * i, "update-alignment": 0.8} for i in range(6)}
    assert screen(ordinary) == {}
    boosted = {**ordinary, "big": {"update-norm": 9.0, "update-alignment": 0.8}}
    against = {**ordinary, "flip": {"update-norm": 1.1, "update-alignment": 0.05}}
    assert set(screen(boosted)) == {"big"} and set(screen(against)) == {"flip"}
    three = {k: ordinary[k] for k in ("s0", "s1")} | {"big": boosted["big"]}
    assert screen(three) == {}


def test_the_dp_mean_clips_each_update_gives_sites_equal_weight_and_adds_noise_of_the_calibrated_size():
    start = ArrayRecord({"w": Array(np.zeros(4000, dtype=np.float32))})
    updates = {"a": np.full(4000, 1.0), "b": np.full(4000, -0.001), "c": np.zeros(4000)}  # a is clipped to norm 1

    def aggregate(z: float, seed: int) -> np.ndarray:
        strategy = CentralGaussianMean(build_strategy("fedavg", min_nodes=3), clip_norm=1.0, noise_multiplier=z,
                                       rng=np.random.default_rng(seed))
        strategy.strategy.set_global_model(start)
        replies = [make_reply(s, i + 2, {"w": u.astype(np.float32)}, num_examples=100 * (i + 1))
                   for i, (s, u) in enumerate(updates.items())]
        arrays, _ = strategy.aggregate_train(1, replies)
        assert strategy.last_weights == {s: pytest.approx(1 / 3) for s in updates}
        assert strategy.releases == 1
        return arrays["w"].numpy().astype(np.float64)

    clipped = (updates["a"] / np.linalg.norm(updates["a"]) + updates["b"]) / 3
    assert np.allclose(aggregate(0.0, 0), clipped, atol=1e-7)
    noise = (aggregate(2.0, 1) - clipped) * 3  # the noise on the sum
    assert np.std(noise) == pytest.approx(2.0 * 1.0, rel=0.05)


def test_tree_models_are_refused_under_every_private_mode():
    with pytest.raises(PrivacyCombinationError, match="not weight updates"):
        validate({"privacy": "secagg", "model-family": "xgboost"}, "fedavg")
    assert validate({"privacy": "none", "model-family": "xgboost"}, "fedavg").mode == "none"
