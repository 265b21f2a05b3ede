"""The sites of the axis_failures federation and what makes each one different (non-IID).

One place to read or change a site's profile: product mix, ambient temperature, machine calibration and tool
change policy. Profiles are facts about a plant, not data: they never leave anything but their own site's
generator.

Also the one place that schedules drift: which site changes how, from which batch (``DRIFT_SCHEDULE``), with
``MLEDGE_DRIFT_SCHEDULE`` to choose another scenario (a JSON or TOML file, a name in ``SCENARIOS``, or ``none``).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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


# --- scheduled drift -------------------------------------------------------------------------------------------
# Changes that start at a known batch of one site, so that detection delay and false alarms can be measured. The
# schedule lives here and nowhere else; MLEDGE_DRIFT_SCHEDULE swaps it for a scenario of a test or benchmark.

DRIFT_KINDS = ("sensor_offset", "product_mix")
DRIFT_SCHEDULE_ENV = "MLEDGE_DRIFT_SCHEDULE"
SENSOR_RESOLUTION_K = 0.1


class DriftScheduleError(ValueError):
    """A drift schedule that cannot be used; the message names the source, the entry and the field."""


@dataclass(frozen=True)
class ScheduledDrift:
    """One change at one site, from batch ``onset_batch`` (the site's n-th accepted batch, from 1) on.

    - ``sensor_offset``: the process-temperature sensor reads ``offset_k`` too high. The machine still fails by
      its true temperature, so the label follows the true value while the recorded one is off: the relation
      between recorded inputs and failures changes (concept drift), and the recorded column shifts (data drift).
    - ``product_mix``: the site makes a new share of L/M/H products (``product_mix``); failures still follow the
      same rules on every recorded value (covariate shift only).
    """

    site: str
    onset_batch: int
    kind: str
    offset_k: float = 0.0
    product_mix: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in DRIFT_KINDS:
            raise DriftScheduleError(f"kind {self.kind!r} is not one of {', '.join(DRIFT_KINDS)}")
        if isinstance(self.onset_batch, bool) or not isinstance(self.onset_batch, int) or self.onset_batch < 1:
            raise DriftScheduleError(f"onset_batch must be a whole number >= 1, got {self.onset_batch!r}")
        if self.kind == "sensor_offset":
            steps = self.offset_k / SENSOR_RESOLUTION_K
            # The sensor records tenths of a kelvin: an offset in whole tenths keeps recorded - offset exact.
            if self.offset_k == 0 or abs(steps - round(steps)) > 1e-9:
                raise DriftScheduleError(
                    f"offset_k must be a non-zero multiple of {SENSOR_RESOLUTION_K} K, got {self.offset_k!r}"
                )
        if self.kind == "product_mix":
            mix = self.product_mix
            if mix is None or len(mix) != 3 or any(s < 0 for s in mix) or sum(mix) <= 0:
                raise DriftScheduleError(f"product_mix must be three non-negative L/M/H shares, got {mix!r}")

    def active(self, batch_index: int) -> bool:
        return batch_index >= self.onset_batch


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
    "clean": (),
}


def _drift_from_entry(entry: object, where: str) -> ScheduledDrift:
    if not isinstance(entry, dict):
        raise DriftScheduleError(f"{where}: expected a table/object, got {type(entry).__name__}")
    fields = {"site", "onset_batch", "kind", "offset_k", "product_mix"}
    unknown = sorted(set(entry) - fields)
    if unknown:
        raise DriftScheduleError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(fields)}")
    for required in ("site", "onset_batch", "kind"):
        if required not in entry:
            raise DriftScheduleError(f"{where}: missing field {required!r}")
    if entry["site"] not in PROFILES:
        raise DriftScheduleError(
            f"{where}: field 'site': unknown site {entry['site']!r}; registered: {sorted(PROFILES)}"
        )
    values = dict(entry)
    if values.get("product_mix") is not None:
        values["product_mix"] = tuple(values["product_mix"])
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
