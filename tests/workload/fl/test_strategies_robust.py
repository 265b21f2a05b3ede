"""The robust default's building blocks and the fast repeated median, each against what it must guarantee.

The invariants every strategy shares (identical updates, permutation, validation, an obvious outlier) run for
``mledge-robust`` too, in test_strategies.py; here are its own pieces (fence, votes, majority direction, reputation,
claims), a small federation under attack, and the sampled repeated median against the exact one.
"""

from __future__ import annotations

import numpy as np
import pytest

from fl.simulation.harness import make_reply, run_round, to_arrayrecord
from fl.strategies import build_strategy
from fl.strategies import mledge_robust as mr
from fl.strategies import repeated_median as rm
from fl.strategies.state import SiteStateStore


def honest_updates(rng: np.random.Generator, n: int, d: int = 400, spread: float = 1.0) -> np.ndarray:
    """n non-IID-like updates: a shared direction plus a large site-specific part (cosines with the mean ~0.3)."""
    common = rng.standard_normal(d)
    return 0.5 * common + spread * rng.standard_normal((n, d))


def cosine_matrix(updates: np.ndarray) -> np.ndarray:
    units = updates / np.linalg.norm(updates, axis=1, keepdims=True)
    return units @ units.T


# --- the robust default's pieces ------------------------------------------------------------------------------


def test_norm_fence_ignores_a_block_of_tiny_updates_and_allows_for_claimed_data():
    norms = np.array([1.0, 1.2, 0.8, 1.1, 0.9, 1.3, 3.5, 11.0] + [0.01] * 6)
    claimed = np.array([100.0] * 7 + [100.0] + [100.0] * 6)
    fenced = mr.norm_fence(norms, claimed)
    # the scale is the median of the non-tiny norms (about 1.1), not the plain median, which the six near-zero
    # updates drag down to 0.9: 3.5 is within 4x, 11 is not.
    assert fenced[:7].all() and not fenced[7] and fenced[8:].all()
    claimed[7] = 1600.0  # 16x the median claim: sqrt(16) = 4 times more room
    assert mr.norm_fence(norms, claimed)[7]


def test_clip_factors_bring_every_update_within_its_fence():
    norms = np.array([1.0, 1.2, 0.8, 1.1, 0.9, 20.0, 0.0])
    claimed = np.full(7, 100.0)
    bounds = mr.fence_bounds(norms, claimed)
    clip = mr.clip_factors(norms, bounds)
    np.testing.assert_allclose(clip[:5], 1.0)
    # the scale: the median of the norms not below a quarter of the plain median (1.0), so without the zero: 1.05
    assert clip[5] * norms[5] == pytest.approx(bounds[5]) and bounds[5] == pytest.approx(4 * 1.05)
    assert clip[6] == 1.0  # a zero update stays what it is


def test_a_large_update_in_the_majority_direction_is_clipped_to_the_typical_size_not_excluded():
    """A site with many rows sends an honest update 12x the median norm: it stays in the average, clipped to the
    typical size (its fence / 4), with no exclusion recorded; the aggregate is g + sum_i w_i c_i delta_i."""
    rng = np.random.default_rng(12)
    global_flat = rng.standard_normal(400).astype(np.float32)
    updates = honest_updates(rng, 10)
    updates[9] = 12 * (0.5 * updates[:9].mean(axis=0) + 0.5 * updates[9])
    strategy = build_strategy("mledge-robust")
    arrays, _ = run_round(strategy, to_arrayrecord({"w": global_flat}), site_replies(global_flat, updates, [50] * 10))
    assert "site-09" not in strategy.last_excluded and strategy.last_weights["site-09"] > 0
    norms = np.linalg.norm(updates, axis=1)
    bound = mr.fence_bounds(norms, np.full(10, 50.0))[9] / mr.FENCE
    assert bound < norms[9] and strategy.last_clipped["site-09"] == pytest.approx(bound / norms[9], rel=1e-4)
    clip = np.array([strategy.last_clipped.get(f"site-{i:02d}", 1.0) for i in range(10)])
    weights = np.array([strategy.last_weights[f"site-{i:02d}"] for i in range(10)])
    expected = global_flat + (weights * clip) @ updates
    np.testing.assert_allclose(np.asarray(arrays["w"].numpy()), expected, rtol=1e-4, atol=1e-4)


def test_coinciding_updates_share_one_vote():
    rng = np.random.default_rng(0)
    updates = np.vstack([honest_updates(rng, 5), np.repeat(rng.standard_normal((1, 400)), 4, axis=0)])
    v = mr.votes(cosine_matrix(updates), np.ones(9, dtype=bool))
    np.testing.assert_allclose(v, [1] * 5 + [0.25] * 4)
    eligible = np.array([True] * 8 + [False])
    np.testing.assert_allclose(mr.votes(cosine_matrix(updates), eligible), [1] * 5 + [1 / 3] * 3 + [0])


@pytest.mark.parametrize("attackers", [4, 8])
def test_majority_direction_keeps_the_honest_sites_against_colluders(attackers):
    """Colluders send one update against the honest mean (IPM / min-max): not accepted, every honest site is."""
    rng = np.random.default_rng(attackers)
    honest = honest_updates(rng, 20 - attackers)
    evil = np.repeat(-honest.mean(axis=0, keepdims=True), attackers, axis=0)
    cos = cosine_matrix(np.vstack([honest, evil]))
    eligible = np.ones(20, dtype=bool)
    accepted = mr.majority_direction(cos, eligible, mr.votes(cos, eligible))
    assert accepted[: 20 - attackers].all() and not accepted[20 - attackers :].any()


def test_majority_direction_accepts_every_honest_site_when_nobody_attacks():
    for seed in range(5):
        cos = cosine_matrix(honest_updates(np.random.default_rng(seed), 20))
        eligible = np.ones(20, dtype=bool)
        assert mr.majority_direction(cos, eligible, mr.votes(cos, eligible)).all()


def test_claims_count_in_full_only_with_a_clean_record():
    claimed = np.array([100.0, 120.0, 90.0, 1000.0, 1000.0])
    reputation = np.array([0.8, 0.8, 0.8, 0.8, 0.6])
    np.testing.assert_allclose(mr.claim_weights(claimed, reputation), [100, 120, 90, 1000, 120])


def site_replies(global_flat: np.ndarray, updates: np.ndarray, claims: list[float]) -> list:
    return [
        make_reply(f"site-{i:02d}", 100 + i, {"w": (global_flat + u).astype(np.float32)}, claims[i])
        for i, u in enumerate(updates)
    ]


def test_reputation_keeps_out_a_site_excluded_most_rounds_and_survives_a_new_strategy_object():
    """A site that argues against the majority for six rounds stays out for a while once it looks honest, and
    the record is in the database: a new strategy object (a new run) still excludes it."""
    rng = np.random.default_rng(3)
    store = SiteStateStore("sqlite://")
    global_flat = rng.standard_normal(400).astype(np.float32)
    strategy = build_strategy("mledge-robust", state=store)
    for rnd in range(1, 7):
        updates = honest_updates(rng, 10)
        updates[9] = -3 * updates[:9].mean(axis=0)  # against the majority
        run_round(strategy, to_arrayrecord({"w": global_flat}), site_replies(global_flat, updates, [50] * 10), rnd)
        assert strategy.last_weights["site-09"] == 0.0
    assert store.load("mledge-robust", "site-09")["reputation"] < mr.EXCLUDE_BELOW
    assert store.load("mledge-robust", "site-00")["reputation"] > mr.TRUST_CLAIMS_AT
    again = build_strategy("mledge-robust", state=store)
    updates = honest_updates(rng, 10)
    run_round(again, to_arrayrecord({"w": global_flat}), site_replies(global_flat, updates, [50] * 10), 7)
    assert again.last_weights["site-09"] == 0.0 and "reputation" in again.last_excluded["site-09"]
    assert all(again.last_weights[f"site-{i:02d}"] > 0 for i in range(9))


def test_an_honest_site_excluded_once_is_back_after_two_accepted_rounds():
    """One exclusion weighs as 2.3 acceptances (κ = 0.3): out in the round it argued against the majority and the
    next, back in the one after, and in for good."""
    rng = np.random.default_rng(4)
    global_flat = rng.standard_normal(400).astype(np.float32)
    strategy = build_strategy("mledge-robust")
    excluded = []
    for rnd in range(1, 9):
        updates = honest_updates(rng, 10)
        if rnd == 2:
            updates[9] = -updates[:9].mean(axis=0)
        run_round(strategy, to_arrayrecord({"w": global_flat}), site_replies(global_flat, updates, [50] * 10), rnd)
        excluded.append(strategy.last_weights["site-09"] == 0.0)
    assert excluded == [False, True, True, False, False, False, False, False]


def test_a_sample_count_liar_weighs_as_the_median_site():
    rng = np.random.default_rng(5)
    global_flat = rng.standard_normal(400).astype(np.float32)
    strategy = build_strategy("mledge-robust")
    updates = honest_updates(rng, 10)
    run_round(strategy, to_arrayrecord({"w": global_flat}), site_replies(global_flat, updates, [50] * 9 + [5000]))
    assert strategy.last_weights["site-09"] == pytest.approx(0.1)


def test_the_robust_default_beats_fedavg_in_a_small_federation_under_attack():
    """digits, 20 Dirichlet(0.5) clients, 8 rounds: 40 % of the clients send IPM (epsilon 100) or min-max
    updates. FedAvg breaks down to chance or worse; the robust default keeps learning from the honest 60 %."""
    from fl.simulation.attacks import AttackProfile
    from fl.simulation.lockstep import Simulation, simulate, sklearn_federation

    fed = sklearn_federation("digits", 0)
    attackers = tuple(range(0, 20, 5)) + tuple(range(2, 20, 5))
    sims = [
        Simulation(f"{rule}/{name}", lambda rule=rule: build_strategy(rule), profile, bad)
        for rule in ("fedavg", "mledge-robust")
        for name, profile, bad in (
            ("clean", AttackProfile(), ()),
            ("ipm", AttackProfile("ipm", epsilon=100.0), attackers),
            ("min-max", AttackProfile("min-max"), attackers),
        )
    ]
    final = {sim.name: outcome.accuracy[-1] for sim, outcome in zip(sims, simulate(fed, sims, rounds=8), strict=True)}
    assert final["mledge-robust/clean"] >= final["fedavg/clean"] - 0.02
    for attack in ("ipm", "min-max"):
        assert final[f"fedavg/{attack}"] < 0.3, attack
        assert final[f"mledge-robust/{attack}"] >= 0.6, (attack, final)


# --- the repeated median: sampled against exact ---------------------------------------------------------------


@pytest.mark.parametrize("k", [4, 8, 12, 16, 24])
def test_the_median_network_puts_the_middle_values_in_place(k):
    rng = np.random.default_rng(k)
    wires = rng.standard_normal((k, 500))
    wires[:, :50] = np.round(wires[:, :50])  # ties
    out = list(wires.copy())
    for a, b in rm.median_network(k):
        low, high = np.minimum(out[a], out[b]), np.maximum(out[a], out[b])
        out[a], out[b] = low, high
    ordered = np.sort(wires, axis=0)
    np.testing.assert_array_equal(out[(k - 1) // 2], ordered[(k - 1) // 2])
    np.testing.assert_array_equal(out[k // 2], ordered[k // 2])


def test_offset_plan_is_stratified_and_never_pairs_a_point_with_itself():
    n, k = 100, 16
    x = np.arange(n, dtype=np.float64)
    offsets, inverse = rm.offset_plan(n, k, np.random.default_rng(0), x)
    length = (n - 1) / k  # stratum s covers positions [s L, (s + 1) L) of 0..n-1, offset = 1 + floor(position)
    assert (offsets >= 1 + np.floor(np.arange(k) * length)).all()
    assert (offsets <= 1 + np.floor(np.arange(1, k + 1) * length)).all() and (offsets <= n - 1).all()
    partners = (np.arange(n)[None, :] + offsets[:, None]) % n
    np.testing.assert_allclose(inverse[:, :, 0], 1 / (partners - np.arange(n)[None, :]))


def _exact_rows(ys: np.ndarray) -> np.ndarray:
    """Every point's slopes to all others, per coordinate: (coordinates, n, n - 1), x = ranks."""
    c, n = ys.shape
    x = np.arange(n)
    slopes = (ys[:, None, :] - ys[:, :, None]) / np.where(x[None, :] == x[:, None], 1, x[None, :] - x[:, None])
    keep = ~np.eye(n, dtype=bool)
    return slopes[:, keep].reshape(c, n, n - 1)


def test_sampled_slope_is_bracketed_as_stated():
    """The module docstring's statement, checked exactly: with B points outside their [1/2 - eps, 1/2 + eps] quantile
    band, the slope lies between the (ceil(n/2) - B)-th lower and the (floor(n/2) + 1 + B)-th upper band edge; and B
    stays near its expectation (at most 2 n exp(-2 k eps^2))."""
    n, k, eps = 60, 16, 0.3
    rng = np.random.default_rng(7)
    ys = np.sort(rng.standard_normal((200, n)).astype(np.float64) * rng.uniform(0.5, 3, (200, 1)), axis=1)
    ys[:40, :20] += 25.0  # a third of the points far off in some coordinates
    x = np.arange(n, dtype=np.float64)
    offsets, inverse = rm.offset_plan(n, k, np.random.default_rng(1), x)
    slope, _ = rm.sampled_line(ys, x, (offsets, inverse))
    rows = _exact_rows(ys)
    lower = np.quantile(rows, 0.5 - eps, axis=2, method="inverted_cdf")
    upper = np.quantile(rows, 0.5 + eps, axis=2, method="higher")
    sampled = np.stack([(ys[:, (np.arange(n) + o) % n] - ys) * inverse[s, :, 0] for s, o in enumerate(offsets)])
    inner = np.median(sampled, axis=0)
    missed = (inner < lower - 1e-12) | (inner > upper + 1e-12)
    bad = missed.sum(axis=1)
    for c in range(ys.shape[0]):
        lo = np.sort(lower[c])[max(int(np.ceil(n / 2)) - bad[c], 1) - 1]
        hi = np.sort(upper[c])[min(n // 2 + 1 + bad[c], n) - 1]
        assert lo - 1e-9 <= slope[c] <= hi + 1e-9, c
    assert missed.mean() <= 2 * np.exp(-2 * k * eps**2)


def test_sampled_line_is_exact_for_small_federations_and_close_for_large_ones():
    rng = np.random.default_rng(8)
    small = np.sort(rng.standard_normal((20, 300)).astype(np.float32), axis=0)
    exact = rm.repeated_median_line(small)
    for got, want in zip(rm.repeated_median_line(small, partners=rm.PARTNERS), exact, strict=True):
        np.testing.assert_array_equal(got, want)  # 20 - 1 <= 2 x 16: the exact line
    large = np.sort(rng.standard_normal((100, 3000)).astype(np.float32), axis=0)
    slope, _ = rm.repeated_median_line(large)
    approx, _ = rm.repeated_median_line(large, partners=rm.PARTNERS, seed=3)
    relative = np.abs(approx - slope) / slope
    assert np.median(relative) < 0.02 and np.quantile(relative, 0.99) < 0.1


def test_sampled_restriction_flags_what_the_exact_one_flags():
    rng = np.random.default_rng(9)
    matrix = rng.standard_normal((100, 4000)).astype(np.float32)
    matrix[:30, :2000] += 6.0  # 30 % of the clients off in half the coordinates
    exact, sampled = matrix.copy(), matrix.copy()
    exact_counts = rm.restrict_outliers(exact, partners=None)
    sampled_counts = rm.restrict_outliers(sampled, partners=rm.PARTNERS, seed=1)
    assert np.mean((exact != matrix) == (sampled != matrix)) > 0.99
    assert np.abs(sampled_counts - exact_counts).max() <= 0.05 * exact_counts.max()
    # the same seed gives the same result whatever the threads or blocks
    again = matrix.copy()
    np.testing.assert_array_equal(rm.restrict_outliers(again, partners=rm.PARTNERS, seed=1), sampled_counts)
    np.testing.assert_array_equal(again, sampled)


def test_the_fast_outlier_test_is_the_confidence_threshold():
    """restrict_outliers compares |r| with τ K √(1-h) / threshold; residual_confidence computes ω itself."""
    rng = np.random.default_rng(10)
    matrix = rng.standard_normal((15, 2000)).astype(np.float32)
    matrix[3, :100] = 9.0
    for threshold in (0.05, 0.1, 0.5):
        copy = matrix.copy()
        counts = rm.restrict_outliers(copy, threshold=threshold, partners=None)
        order = np.argsort(matrix, axis=0, kind="stable")
        ys = np.take_along_axis(matrix, order, axis=0)
        slope, intercept = rm.repeated_median_line(ys)
        flagged = rm.residual_confidence(ys, slope, intercept) < threshold
        expected = np.bincount(order[flagged], minlength=15)
        np.testing.assert_array_equal(counts, expected)


def test_fedqv_reputation_estimates_outlier_counts_from_sampled_coordinates():
    """On a model larger than its sample the estimated counts are the exact counts' within the Hoeffding bound."""
    from fl.strategies.fedqv import FedQV

    rng = np.random.default_rng(11)
    n, d = 12, 60_000
    models = rng.standard_normal((n, d)).astype(np.float32)
    models[:3, : d // 3] += 5.0
    records = [to_arrayrecord({"w": m}) for m in models]
    from fl.strategies.arrays import Layout

    layout = Layout.of(records[0])
    strategy = FedQV(reputation=True, coordinates=8192, seed=0)
    estimated = strategy._outlier_counts(records, layout, 1)
    exact = rm.restrict_outliers(models.copy(), 2.0, strategy.threshold, partners=None, restrict=False)
    bound = np.sqrt(np.log(2 * n / 1e-3) / (2 * 8192))  # every site at once, with probability 0.999
    assert np.abs(estimated - exact).max() / d <= bound
