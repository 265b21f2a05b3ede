"""Fixtures for the drift tests: clean and drifted site streams, and a model trained on a reference window."""

from __future__ import annotations

import pandas as pd
import pytest
from drift_streams import stream, trained_model

from mledge.onsite.profiles import SCENARIOS


@pytest.fixture(scope="session")
def plant_b_stream() -> list[pd.DataFrame]:
    """plant_b, batches 1-6, with the default scheduled sensor offset from batch 5."""
    return stream("plant_b", 6, SCENARIOS["plant_b-sensor-offset"])


@pytest.fixture(scope="session")
def plant_b_reference(plant_b_stream) -> pd.DataFrame:
    return pd.concat(plant_b_stream[:3], ignore_index=True)


@pytest.fixture(scope="session")
def plant_b_model(plant_b_reference):
    return trained_model(plant_b_reference)
