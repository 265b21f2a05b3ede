"""fl/simulation/attacks.py: each attack does what it says on crafted inputs, and node configs parse or fail clearly."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from fl.simulation.attacks import (
    ATTACKS,
    AttackProfile,
    Trigger,
    alie,
    alie_z,
    attack_arrays,
    attack_data,
    attack_update,
    backdoor,
    gaussian,
    ipm,
    label_flip,
    lie_about_samples,
    min_max,
    reported_examples,
    scaling,
    sign_flip,
    stamp,
)

# Three honest updates of two coordinates: mean (1, 4), population std (sqrt(2/3), sqrt(8/3)).
HONEST = np.array([[0.0, 2.0], [1.0, 4.0], [2.0, 6.0]], dtype=np.float32)


def max_pairwise_sq(rows: np.ndarray) -> float:
    return float(max(np.sum((a - b) ** 2) for a in rows for b in rows))


# --- data poisoning -------------------------------------------------------------------------------------------


def test_label_flip_mirrors_the_classes_and_keeps_the_dtype():
    assert label_flip(np.array([0, 3, 9]), 10).tolist() == [9, 6, 0]
    flipped = label_flip(np.array([0.0, 1.0, 1.0], dtype=np.float32), 2)  # the site's float labels
    assert flipped.tolist() == [1.0, 0.0, 0.0] and flipped.dtype == np.float32


def test_label_flip_refuses_labels_outside_the_classes():
    with pytest.raises(ValueError, match="outside"):
        label_flip(np.array([0, 2]), 2)
    with pytest.raises(ValueError, match="at least 2"):
        label_flip(np.array([0]), 1)


def test_stamp_sets_the_trigger_on_a_copy():
    x = np.zeros((2, 5), dtype=np.float32)
    stamped = stamp(x, Trigger((1, 3), 7.0))
    assert stamped[:, [1, 3]].tolist() == [[7.0, 7.0], [7.0, 7.0]]
    assert stamped[:, [0, 2, 4]].sum() == 0
    assert x.sum() == 0  # the input is untouched


def test_backdoor_keeps_clean_rows_and_adds_triggered_ones_labelled_target():
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    y = np.arange(10) % 3
    trigger = Trigger((0,), -1.0)
    px, py = backdoor(x, y, trigger, target=2, fraction=0.3)
    assert np.array_equal(px[:10], x) and np.array_equal(py[:10], y)
    added_x, added_y = px[10:], py[10:]
    assert len(added_x) == 3 and (added_y == 2).all()
    assert (added_x[:, 0] == -1.0).all()
    # The copies are real rows, trigger aside.
    assert all(any(np.array_equal(row[1:], orig[1:]) for orig in x) for row in added_x)


def test_backdoor_rejects_a_fraction_outside_0_1():
    with pytest.raises(ValueError, match="fraction"):
        backdoor(np.zeros((3, 2)), np.zeros(3), Trigger((0,)), 1, fraction=0.0)


# --- model poisoning of one update ----------------------------------------------------------------------------


def test_sign_flip_and_scaling():
    update = np.array([1.0, -2.0, 0.5], dtype=np.float32)
    assert sign_flip(update).tolist() == [-1.0, 2.0, -0.5]
    assert scaling(update, 10.0).tolist() == [10.0, -20.0, 5.0]


def test_gaussian_replaces_the_update_with_seeded_noise_of_the_given_sigma():
    update = np.full(20_000, 123.0, dtype=np.float32)
    noise = gaussian(update, sigma=0.5, seed=3)
    assert noise.shape == update.shape and noise.dtype == np.float32
    assert abs(noise.mean()) < 0.02 and abs(noise.std() - 0.5) < 0.02  # nothing of the update is left
    assert np.array_equal(noise, gaussian(update, sigma=0.5, seed=3))
    assert not np.array_equal(noise, gaussian(update, sigma=0.5, seed=4))


# --- omniscient attacks ---------------------------------------------------------------------------------------


def test_alie_is_mean_plus_z_std_per_coordinate():
    crafted = alie(HONEST, z=1.5)
    expected = HONEST.mean(axis=0) + 1.5 * HONEST.std(axis=0)
    np.testing.assert_allclose(crafted, expected, rtol=1e-6)
    np.testing.assert_allclose(alie(HONEST, z=0.0), [1.0, 4.0])


def test_alie_z_is_baruchs_z_max():
    # n = 20, m = 4: s = floor(11) - 4 = 7 clients must be further away, z = Phi^-1(13 / 20).
    assert alie_z(20, 4) == pytest.approx(NormalDist().inv_cdf(13 / 20))
    assert alie_z(20, 8) > alie_z(20, 4) > 0  # more attackers can afford a larger shift


def test_ipm_is_minus_epsilon_times_the_mean_and_points_against_it():
    crafted = ipm(HONEST, epsilon=0.5)
    np.testing.assert_allclose(crafted, [-0.5, -2.0])
    assert crafted @ HONEST.mean(axis=0) < 0


@pytest.mark.parametrize("deviation", ["unit-vec", "std", "sign"])
def test_min_max_goes_as_far_as_the_furthest_honest_pair_allows(deviation):
    rng = np.random.default_rng(0)
    honest = (rng.normal(size=(8, 30)) + 1.0).astype(np.float32)
    crafted = min_max(honest, deviation)
    mean = honest.astype(np.float64).mean(axis=0)
    limit = max_pairwise_sq(honest.astype(np.float64))
    distances = np.sum((honest.astype(np.float64) - crafted) ** 2, axis=1)
    assert distances.max() <= limit * (1 + 1e-4)  # never further than the honest spread...
    assert distances.max() == pytest.approx(limit, rel=1e-3)  # ...but exactly as far: gamma is the largest
    assert np.linalg.norm(crafted - mean) > 0.5  # and it did move away from the mean
    if deviation == "unit-vec":  # along -mean: the crafted update has a smaller projection on the mean
        assert crafted @ mean < mean @ mean


def test_min_max_of_identical_updates_is_that_update_and_bad_deviation_fails():
    same = np.ones((4, 3), dtype=np.float32)
    np.testing.assert_allclose(min_max(same, "std"), np.ones(3))
    with pytest.raises(ValueError, match="deviation"):
        min_max(HONEST, "sideways")


def test_omniscient_attacks_need_a_2d_set_of_honest_updates():
    with pytest.raises(ValueError, match="honest updates"):
        alie(np.ones(3), 1.0)


# --- sample count ---------------------------------------------------------------------------------------------


def test_lying_about_samples_multiplies_the_count():
    assert lie_about_samples(120, 10.0) == 1200
    assert lie_about_samples(3, 0.01) == 1  # never zero: a zero count would be rejected, not trusted
    assert reported_examples(AttackProfile(), 120) == 120
    assert reported_examples(AttackProfile("sign-flip", samples_factor=5.0), 120) == 600


# --- profiles from node configs -------------------------------------------------------------------------------


def test_the_default_profile_is_off():
    profile = AttackProfile()
    assert profile.name == "off" and profile.is_off
    assert not (profile.poisons_data or profile.poisons_update or profile.needs_honest_updates)
    assert AttackProfile.from_node_config({"site": "plant_a", "data-dir": "/data"}).is_off
    assert AttackProfile.parse("").is_off


def test_a_node_config_string_parses_to_a_profile():
    profile = AttackProfile.parse("attack='scaling' attack-scale=10")
    assert profile.name == "scaling" and profile.scale == 10.0 and profile.poisons_update
    lie = AttackProfile.parse("attack='label-flip' attack-samples-factor=5 attack-seed=3")
    assert lie.poisons_data and lie.samples_factor == 5.0 and lie.seed == 3 and not lie.is_off
    backdoor_profile = AttackProfile.parse("attack='backdoor' attack-trigger='0,1,2' attack-target=1")
    assert backdoor_profile.trigger_or(Trigger((9,))) == Trigger((0, 1, 2), 1.0)
    assert backdoor_profile.target == 1
    assert AttackProfile.parse("attack='backdoor'").trigger_or(Trigger((9,))) == Trigger((9,))
    assert AttackProfile.parse("attack='alie'").needs_honest_updates


def test_flower_node_config_values_are_converted():
    # Flower hands node-config values over as TOML types: ints, floats and strings.
    profile = AttackProfile.from_node_config({"attack": "Gaussian", "attack-sigma": 2, "site": "plant_b"})
    assert profile.name == "gaussian" and profile.sigma == 2.0


def test_an_unknown_attack_is_a_clear_error_naming_it():
    with pytest.raises(ValueError, match="unknown attack 'sign_flop'") as err:
        AttackProfile.parse("attack='sign_flop'")
    assert all(name in str(err.value) for name in ATTACKS)


def test_unknown_or_malformed_attack_settings_are_errors():
    with pytest.raises(ValueError, match="attack-scal"):
        AttackProfile.parse("attack='scaling' attack-scal=10")
    with pytest.raises(ValueError, match="attack-scale"):
        AttackProfile.from_node_config({"attack": "scaling", "attack-scale": "lots"})
    with pytest.raises(ValueError, match="attack-samples-factor"):
        AttackProfile.parse("attack='off' attack-samples-factor=0")
    with pytest.raises(ValueError, match="attack-fraction"):
        AttackProfile.parse("attack='backdoor' attack-fraction=1.5")


# --- applying a profile ---------------------------------------------------------------------------------------


def test_attack_data_poisons_only_for_data_attacks():
    x, y = np.zeros((4, 3), dtype=np.float32), np.array([0, 1, 0, 1])
    trigger = Trigger((2,), 1.0)
    assert attack_data(AttackProfile(), x, y, 2, trigger)[1] is y
    assert attack_data(AttackProfile("sign-flip"), x, y, 2, trigger)[1] is y
    assert attack_data(AttackProfile("label-flip"), x, y, 2, trigger)[1].tolist() == [1, 0, 1, 0]
    bx, by = attack_data(AttackProfile("backdoor", target=1, fraction=0.5), x, y, 2, trigger)
    assert len(bx) == 6 and (bx[4:, 2] == 1.0).all() and (by[4:] == 1).all()


def test_attack_update_dispatches_and_omniscient_attacks_need_the_honest_updates():
    update = np.array([1.0, -1.0], dtype=np.float32)
    assert attack_update(AttackProfile(), update) is update
    assert attack_update(AttackProfile("label-flip"), update) is update  # a data attack sends its update as is
    assert attack_update(AttackProfile("sign-flip"), update).tolist() == [-1.0, 1.0]
    np.testing.assert_allclose(attack_update(AttackProfile("ipm", epsilon=2.0), update, HONEST), [-2.0, -8.0])
    with pytest.raises(ValueError, match="honest updates"):
        attack_update(AttackProfile("min-max"), update)
    with pytest.raises(ValueError, match="numbers of clients"):
        attack_update(AttackProfile("alie"), update, HONEST)
    z = alie_z(3, 1)
    np.testing.assert_allclose(
        attack_update(AttackProfile("alie"), update, HONEST, n_clients=3, n_malicious=1), alie(HONEST, z)
    )


def test_attack_arrays_attacks_the_update_not_the_weights():
    received = {"w": np.array([[1.0, 1.0]], dtype=np.float32), "b": np.array([0.5], dtype=np.float32)}
    trained = {"w": np.array([[2.0, 0.0]], dtype=np.float32), "b": np.array([1.5], dtype=np.float32)}
    flipped = attack_arrays(AttackProfile("sign-flip"), received, trained)
    np.testing.assert_allclose(flipped["w"], [[0.0, 2.0]])  # received - (trained - received)
    np.testing.assert_allclose(flipped["b"], [-0.5])
    assert flipped["w"].dtype == np.float32 and flipped["w"].shape == (1, 2)
    boosted = attack_arrays(AttackProfile("scaling", scale=3.0), received, trained)
    np.testing.assert_allclose(boosted["w"], [[4.0, -2.0]])
    honest = attack_arrays(AttackProfile("label-flip"), received, trained)
    np.testing.assert_allclose(honest["w"], trained["w"])
