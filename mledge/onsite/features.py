"""The model's input from a site's rows: one-hot product type plus scaled physical quantities."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mledge.onsite.schema import LABEL, SCALES, TYPES


def features(frame: pd.DataFrame) -> np.ndarray:
    """Model input for a batch of processes, in the order of ``schema.FEATURE_NAMES``."""
    raw = {
        "air_temperature_k": frame["air_temperature_k"].to_numpy(float),
        "process_temperature_k": frame["process_temperature_k"].to_numpy(float),
        "rotational_speed_rpm": frame["rotational_speed_rpm"].to_numpy(float),
        "torque_nm": frame["torque_nm"].to_numpy(float),
        "tool_wear_min": frame["tool_wear_min"].to_numpy(float),
    }
    raw["temperature_gap_k"] = raw["process_temperature_k"] - raw["air_temperature_k"]
    raw["power_kw"] = raw["torque_nm"] * raw["rotational_speed_rpm"] * 2 * np.pi / 60 / 1000
    raw["strain_knm_min"] = raw["torque_nm"] * raw["tool_wear_min"] / 1000
    scaled = [(raw[name] - centre) / scale for name, (centre, scale) in SCALES.items()]
    onehot = [(frame["type"].to_numpy() == t).astype(float) for t in TYPES]
    return np.column_stack(onehot + scaled).astype(np.float32)


def labels(frame: pd.DataFrame) -> np.ndarray:
    return frame[LABEL].to_numpy(np.float32)
