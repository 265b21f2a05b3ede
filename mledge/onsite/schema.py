"""The axis_failures data schema: column names, product types and the model's feature names.

Pure facts, standard library only: the one part of ``mledge.onsite`` that platform code may import (the model's
input width and a signature with named features need them; no row does).
"""

from __future__ import annotations

TYPES = ("L", "M", "H")
FAILURE_MODES = ("twf", "hdf", "pwf", "osf", "rnf")
FEATURES = (
    "type",
    "air_temperature_k",
    "process_temperature_k",
    "rotational_speed_rpm",
    "torque_nm",
    "tool_wear_min",
)
LABEL = "machine_failure"
COLUMNS = ("udi", "product_id", *FEATURES, LABEL, *FAILURE_MODES)
NUMERIC_COLUMNS = tuple(c for c in COLUMNS if c not in ("product_id", "type"))
# Counts, ids and flags: a fractional value in one of these is a wrong type, not a measurement.
INTEGER_COLUMNS = ("udi", "rotational_speed_rpm", "tool_wear_min", LABEL, *FAILURE_MODES)
FLAG_COLUMNS = (LABEL, *FAILURE_MODES)

# (centre, scale) per numeric model feature, from the AI4I 2020 nominal ranges (not from any site's data, so no
# site has to share its distribution to agree on the model's input).
SCALES = {
    "air_temperature_k": (300.0, 2.0),
    "process_temperature_k": (310.0, 1.5),
    "rotational_speed_rpm": (1540.0, 180.0),
    "torque_nm": (40.0, 10.0),
    "tool_wear_min": (110.0, 65.0),
    # Physics the failure rules are written in: cooling gap, mechanical power, overstrain.
    "temperature_gap_k": (10.0, 1.0),
    "power_kw": (6.4, 1.5),
    "strain_knm_min": (4.4, 3.0),
}
# The model's input, in order: one-hot product type, then the scaled quantities.
FEATURE_NAMES = (*(f"type_{t}" for t in TYPES), *SCALES)
N_FEATURES = len(FEATURE_NAMES)

# What a working sensor of an AI4I-like machine can record, as (lowest, highest, unit); a reading outside is a broken
# sensor, a unit error (degrees Celsius where kelvin are due) or a broken export, never drift. The generator's
# physics (mledge/onsite/generator.py) give air 300 K +- about 2 K plus a site's offset of a few kelvin, process
# air + 10 K +- 1 K, torque N(40, 10) Nm clipped at 0, speed 1540 rpm - 16 rpm/Nm around 40 Nm +- 60 rpm, and tools
# replaced or failed by 240 min; AI4I 2020 itself spans 295-305 K, 305-314 K, 1168-2886 rpm, 3.8-76.6 Nm and
# 0-253 min. The ranges below leave margins of several times that spread, so that no plausible plant or drift
# scenario trips them.
SENSOR_RANGES = {
    "air_temperature_k": (250.0, 350.0, "K"),
    "process_temperature_k": (250.0, 400.0, "K"),
    "rotational_speed_rpm": (0.0, 6000.0, "rpm"),
    "torque_nm": (0.0, 200.0, "Nm"),
    "tool_wear_min": (0.0, 1000.0, "min"),
}
