"""Synthetic axis-failure data following the AI4I 2020 generation rules.

S. Matzka, "Explainable Artificial Intelligence for Predictive Maintenance Applications", AI4I 2020, pp. 69-74,
doi:10.1109/AI4I49448.2020.00023 (UCI data set 601). The rules are the paper's; the per-site profiles
(mledge/onsite/profiles.py) shift them so that the federation is non-IID.

Columns are the AI4I ones in snake_case (``Air temperature [K]`` -> ``air_temperature_k``).

Where the paper is loose we chose:
- Temperatures: AI4I draws one random walk over its 10,000 rows and normalises it afterwards (air SD 2 K around
  300 K; process: air + 10 K + a walk of SD 1 K). A stream has no end to normalise over, so each walk is a
  mean-reverting random walk (a discrete Ornstein-Uhlenbeck process) whose stationary SD is the paper's, with a
  relaxation time of ``SiteProfile.walk_rows`` processes. Its state is carried from one batch to the next
  (``GeneratorState``): a batch continues where the last one stopped, so a batch's mean and spread are whatever
  the walk did meanwhile, not pinned to 300 K and 2 K.
- Rotational speed "computed from a power of 2860 W with normal noise": a linear speed-torque characteristic
  around the set-point (1540 rpm at 40 Nm, -16 rpm/Nm) plus N(0, 60) noise, which reproduces the published
  marginals (mean about 1540 rpm, SD about 180, strong negative correlation with torque).
- Tool wear carries over from one batch to the next as well: a plant's tools do not reset daily.

Scheduled drift (``profiles.ScheduledDrift``, by default ``profiles.drift_schedule()``) applies from its onset
batch on, with the share ``weight(batch)`` of the change that a gradual drift has reached:
- ``product_mix`` and ``covariate_shift`` change what is produced and how; every rule still holds on the recorded
  values (P(y | x) unchanged).
- ``rule_change`` changes the failure rules (``profiles.Rules``); the inputs are drawn exactly as without it.
- ``sensor_offset`` changes what is *recorded*, not how the machine behaves: failures follow the true
  temperature, so from the onset on the heat-dissipation rule holds on ``recorded - offset``.
- ``label_loss`` drops a share of the failure rows after they were made (a broken export).
Before the onset, and without these two, every stored row satisfies the rules in force on its recorded values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy.signal import lfilter

from mledge.onsite.profiles import (
    AI4I_RULES,
    COVARIATE_FIELDS,
    Rules,
    ScheduledDrift,
    SiteProfile,
    drifts_for,
)
from mledge.onsite.schema import COLUMNS, FAILURE_MODES, LABEL, TYPES

WEAR_PER_PROCESS = {"L": 2.0, "M": 3.0, "H": 5.0}
OSF_LIMIT = dict(zip(TYPES, AI4I_RULES.osf_limits, strict=True))
# Share of tools that fail (rather than being replaced) when they reach their wear limit: 51 of 120 in AI4I.
TOOL_FAILURE_SHARE = 51 / 120
RANDOM_FAILURE_RATE = AI4I_RULES.rnf_rate
AIR_SD_K, PROCESS_SD_K = 2.0, 1.0


@dataclass
class ToolState:
    """Where a plant's generator stopped: carried from one batch to the next (``generator_state.json``).

    ``air_walk_k``/``process_walk_k``: the temperature walks' last deviations from their centres (None: not
    started, the first batch draws them from the walks' stationary distribution).
    """

    next_udi: int = 1
    tool_wear_min: float = 0.0
    tool_limit_min: float = 0.0  # 0: draw the first tool's limit
    air_walk_k: float | None = None
    process_walk_k: float | None = None


GeneratorState = ToolState


def mean_reverting_walk(rng: np.random.Generator, n: int, sd: float, rows: float, start: float | None) -> np.ndarray:
    """``n`` steps of a random walk pulled back to 0 (AR(1), stationary SD ``sd``, relaxation time ``rows``),
    continuing from ``start`` (None: a draw from the stationary distribution)."""
    phi = math.exp(-1.0 / rows)
    first = rng.normal(0.0, sd) if start is None else float(start)
    steps = rng.normal(0.0, sd * math.sqrt(1.0 - phi * phi), size=n)
    if n == 0:
        return np.empty(0)
    walk, _ = lfilter([1.0], [1.0, -phi], steps, zi=[phi * first])
    return walk


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


def sensor_offset_k(
    profile: SiteProfile,
    batch_index: int,
    drifts: Sequence[ScheduledDrift] | None = None,
    column: str = "process_temperature_k",
) -> float:
    """How far the site's ``column`` sensor reads off in this batch (0 when no offset is in force)."""
    offsets = [
        d.offset_k * d.weight(batch_index)
        for d in active_drifts(profile, batch_index, drifts)
        if d.kind == "sensor_offset" and d.column == column
    ]
    return round(sum(offsets), 1)


def rules_in_force(profile: SiteProfile, batch_index: int, drifts: Sequence[ScheduledDrift] | None = None) -> Rules:
    """The failure rules of this batch: AI4I's, changed by the rule changes in force (the latest onset last)."""
    rules = AI4I_RULES
    for drift in active_drifts(profile, batch_index, drifts):
        if drift.kind == "rule_change":
            rules = rules.blend(drift.rule_targets(), drift.weight(batch_index))
    return rules


def generate_batch(
    profile: SiteProfile,
    batch_index: int,
    state: ToolState | None = None,
    rows: int | None = None,
    drifts: Sequence[ScheduledDrift] | None = None,
) -> tuple[pd.DataFrame, ToolState]:
    """Draw one batch of ``rows`` processes for a site; returns the batch and the state to continue from.

    ``drifts``: the scheduled drifts to apply (those of other sites are ignored); None reads the configured
    schedule (``profiles.drift_schedule``), ``()`` draws a clean batch. A ``label_loss`` drift returns fewer rows.
    """
    state = ToolState(**asdict(state)) if state else ToolState()
    n = rows if rows is not None else profile.rows_per_batch
    rng = np.random.default_rng([profile.seed, batch_index])
    active = active_drifts(profile, batch_index, drifts)
    shift = dict.fromkeys(COVARIATE_FIELDS, 0.0)
    mix = np.asarray(profile.product_mix, float)
    for drift in active:
        w = drift.weight(batch_index)
        if drift.kind == "product_mix" and drift.product_mix is not None:  # the latest change in force wins
            mix = (1 - w) * mix + w * np.asarray(drift.product_mix, float)
        if drift.kind == "covariate_shift":
            for name in COVARIATE_FIELDS:
                shift[name] += w * getattr(drift, name)
    rules = rules_in_force(profile, batch_index, active)

    types = rng.choice(TYPES, size=n, p=mix / mix.sum())
    air_walk = mean_reverting_walk(rng, n, AIR_SD_K, profile.walk_rows, state.air_walk_k)
    process_walk = mean_reverting_walk(rng, n, PROCESS_SD_K, profile.walk_rows, state.process_walk_k)
    if n:
        state.air_walk_k, state.process_walk_k = float(air_walk[-1]), float(process_walk[-1])
    air = 300.0 + profile.ambient_offset_k + shift["ambient_k"] + air_walk
    process = air + 10.0 + profile.cooling_offset_k + shift["cooling_k"] + process_walk
    torque = np.clip(rng.normal(40.0 + profile.torque_offset_nm + shift["torque_nm"], 10.0, size=n), 0.0, None)
    speed = 1540.0 + shift["speed_rpm"] - 16.0 * (torque - 40.0) + rng.normal(0.0, 60.0, size=n)

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

    # Failure rules apply to the true values as recorded (rounded), so that every stored row satisfies them
    # exactly unless a sensor reads off.
    air, process, torque = air.round(1), process.round(1), torque.round(1)
    speed, wear = speed.round(), wear.round()
    power_w = torque * speed * 2.0 * np.pi / 60.0
    hdf = ((process - air) < rules.hdf_gap_k) & (speed < rules.hdf_speed_rpm)
    pwf = (power_w < rules.pwf_min_w) | (power_w > rules.pwf_max_w)
    limits = dict(zip(TYPES, rules.osf_limits, strict=True))
    osf = wear * torque > np.array([limits[t] for t in types])
    rnf = rng.random(n) < rules.rnf_rate
    # A miscalibrated sensor: the failures above came from the true temperature, the store gets the reading.
    if offset := sensor_offset_k(profile, batch_index, active, "process_temperature_k"):
        process = (process + offset).round(1)
    if offset := sensor_offset_k(profile, batch_index, active, "air_temperature_k"):
        air = (air + offset).round(1)

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
    loss = 1.0 - math.prod(1.0 - d.share * d.weight(batch_index) for d in active if d.kind == "label_loss")
    if loss > 0:  # a broken export: failure rows go missing, the rest arrive
        lost = (frame[LABEL].to_numpy() == 1) & (rng.random(n) < loss)
        frame = frame[~lost].reset_index(drop=True)
    return frame[list(COLUMNS)], state
