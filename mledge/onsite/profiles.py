"""The sites of the axis_failures federation and what makes each one different (non-IID).

One place to read or change a site's profile: product mix, ambient temperature, machine calibration and tool
change policy. Profiles are facts about a plant, not data: they never leave anything but their own site's
generator.

Also the one place that schedules drift: which site changes how, from which batch (``DRIFT_SCHEDULE``), with
``MLEDGE_DRIFT_SCHEDULE`` to choose another scenario (a JSON or TOML file, a name in ``SCENARIOS``, or ``none``).
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path


@dataclass(frozen=True)
class SiteProfile:
    """How one plant's machines and products differ from the AI4I 2020 baseline."""

    name: str
    seed: int
    # Share of low/medium/high quality products (AI4I baseline: 50/30/20 %).
    product_mix: tuple[float, float, float] = (0.5, 0.3, 0.2)
    # Hall temperature above the 300 K baseline.
    ambient_offset_k: float = 0.0
    # Cooling: a weaker cooling system narrows the process/air temperature gap (more heat-dissipation failures).
    cooling_offset_k: float = 0.0
    # Calibration: mean torque shift of this plant's drives.
    torque_offset_nm: float = 0.0
    # Preventive tool change at this wear in minutes; None keeps the AI4I policy (replace or fail at 200-240 min).
    tool_replace_at_min: float | None = None
    rows_per_batch: int = 1000
    # The temperatures' random walks (AI4I: air SD 2 K, process SD 1 K around air + 10 K) are mean-reverting walks
    # carried from batch to batch; this is their relaxation time in processes (how long a deviation lasts).
    walk_rows: float = 50.0


PROFILES: dict[str, SiteProfile] = {
    p.name: p
    for p in (
        SiteProfile(name="plant_a", seed=11),
        SiteProfile(
            name="plant_b",
            seed=22,
            product_mix=(0.7, 0.2, 0.1),
            ambient_offset_k=3.0,
            cooling_offset_k=-0.4,
            torque_offset_nm=2.0,
        ),
        SiteProfile(
            name="plant_c",
            seed=33,
            product_mix=(0.2, 0.4, 0.4),
            ambient_offset_k=-2.0,
            torque_offset_nm=-1.5,
            tool_replace_at_min=190.0,
        ),
    )
}


def site_profile(name: str) -> SiteProfile:
    """The profile of a registered site; a clear error for an unknown one."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown site {name!r}; registered sites: {', '.join(sorted(PROFILES))}") from None


# --- failure rules and scheduled drift ----------------------------------------------------------------------------
# Changes that start at a known batch of one site, so that detection delay and false alarms can be measured. The
# schedule lives here and nowhere else; MLEDGE_DRIFT_SCHEDULE swaps it for a scenario of a test or benchmark.


@dataclass(frozen=True)
class Rules:
    """The parameters of the AI4I 2020 failure rules; a ``rule_change`` drift replaces some of them."""

    # Heat dissipation: process minus air temperature below this gap and rotational speed below this speed.
    hdf_gap_k: float = 8.6
    hdf_speed_rpm: float = 1380.0
    # Power: torque x rotational speed (rad/s) outside this window.
    pwf_min_w: float = 3500.0
    pwf_max_w: float = 9000.0
    # Overstrain: tool wear x torque above this limit, per product quality L, M, H (min Nm).
    osf_limits: tuple[float, float, float] = (11_000.0, 12_000.0, 13_000.0)
    # Random failures per process, regardless of the parameters.
    rnf_rate: float = 0.001

    def blend(self, target: Mapping[str, object], weight: float) -> Rules:
        """These rules moved ``weight`` (0..1) of the way to the parameters in ``target`` (a gradual change)."""
        values = {}
        for name, value in target.items():
            if value is None:
                continue
            old = getattr(self, name)
            if isinstance(old, tuple):
                values[name] = tuple(o + weight * (float(v) - o) for o, v in zip(old, value, strict=True))
            else:
                values[name] = old + weight * (float(value) - old)
        return replace(self, **values)


AI4I_RULES = Rules()
RULE_FIELDS = tuple(f.name for f in fields(Rules))
DRIFT_KINDS = ("sensor_offset", "product_mix", "covariate_shift", "rule_change", "label_loss")
# Columns a miscalibrated sensor can shift (kelvin, recorded in tenths).
OFFSET_COLUMNS = ("process_temperature_k", "air_temperature_k")
# What a covariate shift moves: the drives' speed set-point, the torque, the hall's temperature, the cooling.
COVARIATE_FIELDS = ("speed_rpm", "torque_nm", "ambient_k", "cooling_k")
KIND_FIELDS: dict[str, tuple[str, ...]] = {
    "sensor_offset": ("offset_k", "column"),
    "product_mix": ("product_mix",),
    "covariate_shift": COVARIATE_FIELDS,
    "rule_change": RULE_FIELDS,
    "label_loss": ("share",),
}
COMMON_FIELDS = ("site", "onset_batch", "kind", "ramp_batches")
DRIFT_SCHEDULE_ENV = "MLEDGE_DRIFT_SCHEDULE"
SENSOR_RESOLUTION_K = 0.1


class DriftScheduleError(ValueError):
    """A drift schedule that cannot be used; the message names the source, the entry and the field."""


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DriftScheduleError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ScheduledDrift:
    """One change at one site, from batch ``onset_batch`` (the site's n-th accepted batch, from 1) on.

    Kinds (the fields each one takes are in ``KIND_FIELDS``):

    - ``sensor_offset``: a temperature sensor (``column``, the process temperature by default) reads ``offset_k``
      off. The machine still fails by its true temperature, so the label follows the true value while the recorded
      one is off: P(y | recorded x) changes (concept drift), and the recorded column shifts.
    - ``product_mix``: the site makes a new share of L/M/H products; every rule holds on the recorded values
      (covariate shift: P(x) changes, P(y | x) does not).
    - ``covariate_shift``: the operating point moves (``speed_rpm`` on the drives' set-point, ``torque_nm``,
      ``ambient_k`` on the hall, ``cooling_k`` on the process/air gap); the rules still hold on the recorded values.
    - ``rule_change``: the failure rules themselves change (``Rules``' fields: heat-dissipation gap and speed, power
      window, overstrain limits, random-failure rate); the inputs are drawn as before (concept drift: P(x)
      unchanged, P(y | x) changed).
    - ``label_loss``: a broken pipeline loses ``share`` of the failure rows before they are stored (the label
      rate falls; the machines do not change).

    ``ramp_batches`` > 1 makes it gradual: the change grows linearly and is complete ``ramp_batches`` batches
    after the onset (a share 1/ramp_batches of it at the onset batch).
    """

    site: str
    onset_batch: int
    kind: str
    offset_k: float = 0.0
    column: str = "process_temperature_k"
    product_mix: tuple[float, float, float] | None = None
    speed_rpm: float = 0.0
    torque_nm: float = 0.0
    ambient_k: float = 0.0
    cooling_k: float = 0.0
    hdf_gap_k: float | None = None
    hdf_speed_rpm: float | None = None
    pwf_min_w: float | None = None
    pwf_max_w: float | None = None
    osf_limits: tuple[float, float, float] | None = None
    rnf_rate: float | None = None
    share: float = 1.0
    ramp_batches: int = 1

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise DriftScheduleError(f"kind {self.kind!r} is not one of {', '.join(DRIFT_KINDS)}")
        for name, value in (("onset_batch", self.onset_batch), ("ramp_batches", self.ramp_batches)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DriftScheduleError(f"{name} must be a whole number >= 1, got {value!r}")
        defaults = {f.name: f.default for f in fields(ScheduledDrift) if f.name not in COMMON_FIELDS}
        foreign = sorted(
            name for name, default in defaults.items()
            if name not in KIND_FIELDS[self.kind] and getattr(self, name) != default
        )
        if foreign:
            raise DriftScheduleError(
                f"field(s) {foreign} do not apply to kind {self.kind!r}; it takes {list(KIND_FIELDS[self.kind])}"
            )
        getattr(self, f"_check_{self.kind}")()

    def _check_sensor_offset(self) -> None:
        if self.column not in OFFSET_COLUMNS:
            raise DriftScheduleError(f"column must be one of {', '.join(OFFSET_COLUMNS)}, got {self.column!r}")
        steps = _finite("offset_k", self.offset_k) / SENSOR_RESOLUTION_K
        # The sensor records tenths of a kelvin: an offset in whole tenths keeps recorded - offset exact.
        if self.offset_k == 0 or abs(steps - round(steps)) > 1e-9:
            raise DriftScheduleError(
                f"offset_k must be a non-zero multiple of {SENSOR_RESOLUTION_K} K, got {self.offset_k!r}"
            )

    def _check_product_mix(self) -> None:
        mix = self.product_mix
        if mix is None or len(mix) != 3 or any(_finite("product_mix", s) < 0 for s in mix) or sum(mix) <= 0:
            raise DriftScheduleError(f"product_mix must be three non-negative L/M/H shares, got {mix!r}")

    def _check_covariate_shift(self) -> None:
        if not any(_finite(name, getattr(self, name)) for name in COVARIATE_FIELDS):
            raise DriftScheduleError(f"a covariate_shift needs a non-zero shift of one of {list(COVARIATE_FIELDS)}")

    def _check_rule_change(self) -> None:
        target = self.rule_targets()
        if not target:
            raise DriftScheduleError(f"a rule_change needs at least one of {list(RULE_FIELDS)}")
        for name, value in target.items():
            values = value if name == "osf_limits" else (value,)
            if name == "osf_limits" and len(value) != 3:
                raise DriftScheduleError(f"osf_limits must be three L/M/H limits, got {value!r}")
            if any(_finite(name, v) <= 0 for v in values) and name != "rnf_rate":
                raise DriftScheduleError(f"{name} must be positive, got {value!r}")
        if not 0.0 <= target.get("rnf_rate", 0.0) <= 1.0:
            raise DriftScheduleError(f"rnf_rate must be within [0, 1], got {target['rnf_rate']!r}")
        rules = AI4I_RULES.blend(target, 1.0)
        if rules.pwf_min_w >= rules.pwf_max_w:
            raise DriftScheduleError(f"the power window must not be empty: {rules.pwf_min_w} W to {rules.pwf_max_w} W")

    def _check_label_loss(self) -> None:
        if not 0.0 < _finite("share", self.share) <= 1.0:
            raise DriftScheduleError(f"share must be within (0, 1], got {self.share!r}")

    def rule_targets(self) -> dict[str, object]:
        """The rule parameters this drift sets (empty for any kind but ``rule_change``)."""
        return {name: getattr(self, name) for name in RULE_FIELDS if getattr(self, name) is not None}

    def active(self, batch_index: int) -> bool:
        return batch_index >= self.onset_batch

    def weight(self, batch_index: int) -> float:
        """How much of the change is in force in batch ``batch_index``: 0 before the onset, 1 once complete."""
        if not self.active(batch_index):
            return 0.0
        return min(1.0, (batch_index - self.onset_batch + 1) / self.ramp_batches)


# The demo's schedule: plant_b's process-temperature sensor reads 1.5 K high from its 5th batch (the demo starts
# with 3 batches per site and collects about 4 more); plant_a and plant_c stay clean.
DRIFT_SCHEDULE: tuple[ScheduledDrift, ...] = (
    ScheduledDrift(site="plant_b", onset_batch=5, kind="sensor_offset", offset_k=1.5),
)

# Named scenarios for tests and benchmarks (MLEDGE_DRIFT_SCHEDULE may name one instead of a file).
SCENARIOS: dict[str, tuple[ScheduledDrift, ...]] = {
    "default": DRIFT_SCHEDULE,
    "plant_b-sensor-offset": DRIFT_SCHEDULE,
    # plant_c turns to the AI4I baseline mix: many more cheap L products than its usual 20 %.
    "plant_c-product-mix": (
        ScheduledDrift(site="plant_c", onset_batch=5, kind="product_mix", product_mix=(0.5, 0.3, 0.2)),
    ),
    # plant_a's drives run 80 rpm slower: more processes near the heat-dissipation and power limits, same rules.
    "plant_a-speed-shift": (ScheduledDrift(site="plant_a", onset_batch=5, kind="covariate_shift", speed_rpm=-80.0),),
    # plant_a's machines now overheat below a 9.3 K gap (was 8.6 K): failures where the model saw none.
    "plant_a-heat-dissipation": (ScheduledDrift(site="plant_a", onset_batch=5, kind="rule_change", hdf_gap_k=9.3),),
    # plant_b's tools overstrain 10 % earlier.
    "plant_b-overstrain": (
        ScheduledDrift(site="plant_b", onset_batch=5, kind="rule_change", osf_limits=(9_900.0, 10_800.0, 11_700.0)),
    ),
    # plant_c's drives tolerate a narrower power window.
    "plant_c-power-window": (
        ScheduledDrift(site="plant_c", onset_batch=5, kind="rule_change", pwf_min_w=3_800.0, pwf_max_w=8_700.0),
    ),
    # plant_a's heat-dissipation limit creeps from 8.6 K to 9.6 K over 5 batches.
    "plant_a-gradual-heat-dissipation": (
        ScheduledDrift(site="plant_a", onset_batch=5, kind="rule_change", hdf_gap_k=9.6, ramp_batches=5),
    ),
    # plant_c's export loses every failure row from its 5th batch.
    "plant_c-label-loss": (ScheduledDrift(site="plant_c", onset_batch=5, kind="label_loss", share=1.0),),
    "clean": (),
}

_FIELDS = {f.name for f in fields(ScheduledDrift)}
_TUPLE_FIELDS = ("product_mix", "osf_limits")


def _drift_from_entry(entry: object, where: str) -> ScheduledDrift:
    if not isinstance(entry, dict):
        raise DriftScheduleError(f"{where}: expected a table/object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise DriftScheduleError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(_FIELDS)}")
    for required in ("site", "onset_batch", "kind"):
        if required not in entry:
            raise DriftScheduleError(f"{where}: missing field {required!r}")
    if entry["site"] not in PROFILES:
        raise DriftScheduleError(
            f"{where}: field 'site': unknown site {entry['site']!r}; registered: {sorted(PROFILES)}"
        )
    values = dict(entry)
    for name in _TUPLE_FIELDS:
        if isinstance(values.get(name), list):
            values[name] = tuple(values[name])
    try:
        return ScheduledDrift(**values)
    except (DriftScheduleError, TypeError) as exc:
        raise DriftScheduleError(f"{where}: {exc}") from None


def load_drift_schedule(path: Path) -> tuple[ScheduledDrift, ...]:
    """A schedule from a JSON or TOML file: a list of drifts under ``drifts`` (JSON may also be a bare list)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise DriftScheduleError(f"drift schedule {path}: cannot be read: {exc}") from None
    try:
        document = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise DriftScheduleError(f"drift schedule {path}: not valid {kind}: {exc}") from None
    entries = document if isinstance(document, list) else document.get("drifts") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise DriftScheduleError(f"drift schedule {path}: expected a list of drifts under 'drifts'")
    return tuple(_drift_from_entry(e, f"drift schedule {path}, drifts[{i}]") for i, e in enumerate(entries))


def drift_schedule(environ: Mapping[str, str] | None = None) -> tuple[ScheduledDrift, ...]:
    """The schedule in force: MLEDGE_DRIFT_SCHEDULE (a JSON/TOML file, a scenario, ``none``), else the default."""
    value = (os.environ if environ is None else environ).get(DRIFT_SCHEDULE_ENV, "").strip()
    if not value:
        return DRIFT_SCHEDULE
    if value.lower() == "none":
        return ()
    if value in SCENARIOS:
        return SCENARIOS[value]
    path = Path(value)
    if not path.is_file():
        raise DriftScheduleError(
            f"{DRIFT_SCHEDULE_ENV}={value!r} is neither 'none', a scenario ({', '.join(SCENARIOS)}) nor a file"
        )
    return load_drift_schedule(path)


def drifts_for(site: str, schedule: Sequence[ScheduledDrift] | None = None) -> tuple[ScheduledDrift, ...]:
    """The scheduled drifts of one site, oldest onset first."""
    chosen = drift_schedule() if schedule is None else schedule
    return tuple(sorted((d for d in chosen if d.site == site), key=lambda d: d.onset_batch))
