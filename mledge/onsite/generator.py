"""Synthetic axis-failure data following the AI4I 2020 generation rules.

S. Matzka, "Explainable Artificial Intelligence for Predictive Maintenance Applications", AI4I 2020, pp. 69-74,
doi:10.1109/AI4I49448.2020.00023 (UCI data set 601). The rules are the paper's; the per-site profiles
(mledge/onsite/profiles.py) shift them so that the federation is non-IID.

Columns are the AI4I ones in snake_case (``Air temperature [K]`` -> ``air_temperature_k``).

Where the paper is loose we chose:
- Rotational speed "computed from a power of 2860 W with normal noise": a linear speed-torque characteristic
  around the set-point (1540 rpm at 40 Nm, -16 rpm/Nm) plus N(0, 60) noise, which reproduces the published
  marginals (mean about 1540 rpm, SD about 180, strong negative correlation with torque).
- Tool wear carries over from one batch to the next through ``ToolState``: a plant's tools do not reset daily.

Scheduled drift (``profiles.ScheduledDrift``, by default ``profiles.drift_schedule()``) applies from its onset
batch on:
- a product-mix change draws the product types from the new shares; every rule still holds on recorded values.
- a process-temperature sensor offset changes what is *recorded*, not how the machine behaves: failures follow
  the true temperature, so from the onset on the rules hold on ``recorded - offset`` (the heat-dissipation rule
  no longer on the recorded column). That is concept drift for a model fed the recorded values, which is the
  point of a miscalibrated sensor; before the onset, and for every other column, the rules hold on the recorded
  values exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from mledge.onsite.profiles import ScheduledDrift, SiteProfile, drifts_for
from mledge.onsite.schema import COLUMNS, FAILURE_MODES, LABEL, TYPES

WEAR_PER_PROCESS = {"L": 2.0, "M": 3.0, "H": 5.0}
OSF_LIMIT = {"L": 11_000.0, "M": 12_000.0, "H": 13_000.0}
# Share of tools that fail (rather than being replaced) when they reach their wear limit: 51 of 120 in AI4I.
TOOL_FAILURE_SHARE = 51 / 120
RANDOM_FAILURE_RATE = 0.001


@dataclass
class ToolState:
    """Where a plant's generator stopped: carried from one batch to the next."""

    next_udi: int = 1
    tool_wear_min: float = 0.0
    tool_limit_min: float = 0.0  # 0: draw the first tool's limit


def _normalised_walk(rng: np.random.Generator, n: int, sd: float) -> np.ndarray:
    walk = np.cumsum(rng.normal(size=n))
    spread = walk.std()
    return (walk - walk.mean()) / (spread if spread > 0 else 1.0) * sd


def _tool_limit(rng: np.random.Generator) -> float:
    # The tool is changed at the first process that reaches its limit, which can overshoot by one process's
    # wear: drawing up to 240 - 5 + 1 keeps every recorded TWF within AI4I's 200-240 min.
    return rng.uniform(200.0, 240.0 - max(WEAR_PER_PROCESS.values()) + 1.0)


def active_drifts(
    profile: SiteProfile, batch_index: int, drifts: Sequence[ScheduledDrift] | None = None
) -> list[ScheduledDrift]:
    """The drifts in force for the site's batch ``batch_index``; ``drifts=None`` reads the configured schedule."""
    chosen = drifts_for(profile.name) if drifts is None else [d for d in drifts if d.site == profile.name]
    return sorted((d for d in chosen if d.active(batch_index)), key=lambda d: d.onset_batch)


def sensor_offset_k(profile: SiteProfile, batch_index: int, drifts: Sequence[ScheduledDrift] | None = None) -> float:
    """How far the site's process-temperature sensor reads off in this batch (0 when no offset is in force)."""
    offsets = [d.offset_k for d in active_drifts(profile, batch_index, drifts) if d.kind == "sensor_offset"]
    return round(sum(offsets), 1)


def generate_batch(
    profile: SiteProfile,
    batch_index: int,
    state: ToolState | None = None,
    rows: int | None = None,
    drifts: Sequence[ScheduledDrift] | None = None,
) -> tuple[pd.DataFrame, ToolState]:
    """Draw one batch of ``rows`` processes for a site; returns the batch and the state to continue from.

    ``drifts``: the scheduled drifts to apply (those of other sites are ignored); None reads the configured
    schedule (``profiles.drift_schedule``), ``()`` draws a clean batch.
    """
    state = ToolState(**asdict(state)) if state else ToolState()
    n = rows if rows is not None else profile.rows_per_batch
    rng = np.random.default_rng([profile.seed, batch_index])
    active = active_drifts(profile, batch_index, drifts)

    mix = profile.product_mix
    for drift in active:  # the latest product-mix change in force wins
        if drift.kind == "product_mix" and drift.product_mix is not None:
            mix = drift.product_mix
    types = rng.choice(TYPES, size=n, p=np.asarray(mix) / sum(mix))
    air = 300.0 + profile.ambient_offset_k + _normalised_walk(rng, n, 2.0)
    process = air + 10.0 + profile.cooling_offset_k + _normalised_walk(rng, n, 1.0)
    torque = np.clip(rng.normal(40.0 + profile.torque_offset_nm, 10.0, size=n), 0.0, None)
    speed = 1540.0 - 16.0 * (torque - 40.0) + rng.normal(0.0, 60.0, size=n)

    wear = np.empty(n)
    twf = np.zeros(n, dtype=int)
    if state.tool_limit_min <= 0:
        state.tool_limit_min = _tool_limit(rng)
    for i, t in enumerate(types):  # sequential by nature: each process wears the tool in use
        state.tool_wear_min += WEAR_PER_PROCESS[t]
        wear[i] = state.tool_wear_min
        preventive = profile.tool_replace_at_min is not None and wear[i] >= profile.tool_replace_at_min
        if preventive or wear[i] >= state.tool_limit_min:
            if not preventive and rng.random() < TOOL_FAILURE_SHARE:
                twf[i] = 1
            state.tool_wear_min = 0.0
            state.tool_limit_min = _tool_limit(rng)

    # Failure rules apply to the values as recorded, so that every stored row satisfies them exactly.
    air, process, torque = air.round(1), process.round(1), torque.round(1)
    speed, wear = speed.round(), wear.round()
    power_w = torque * speed * 2.0 * np.pi / 60.0
    hdf = ((process - air) < 8.6) & (speed < 1380.0)
    pwf = (power_w < 3500.0) | (power_w > 9000.0)
    osf = wear * torque > np.vectorize(OSF_LIMIT.get)(types)
    rnf = rng.random(n) < RANDOM_FAILURE_RATE
    # A miscalibrated sensor: the failures above came from the true temperature, the store gets the reading.
    offset = sensor_offset_k(profile, batch_index, active)
    if offset:
        process = (process + offset).round(1)

    udi = np.arange(state.next_udi, state.next_udi + n)
    state.next_udi += n
    frame = pd.DataFrame(
        {
            "udi": udi,
            "product_id": [f"{t}{u:05d}" for t, u in zip(types, rng.integers(10_000, 99_999, size=n), strict=True)],
            "type": types,
            "air_temperature_k": air,
            "process_temperature_k": process,
            "rotational_speed_rpm": speed.astype(int),
            "torque_nm": torque,
            "tool_wear_min": wear.astype(int),
            "twf": twf,
            "hdf": hdf.astype(int),
            "pwf": pwf.astype(int),
            "osf": osf.astype(int),
            "rnf": rnf.astype(int),
        }
    )
    frame[LABEL] = frame[list(FAILURE_MODES)].max(axis=1)
    return frame[list(COLUMNS)], state
