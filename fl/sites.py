"""The sites of the axis_failures federation and what makes each one different (non-IID).

One place to read or change a site's profile: product mix, ambient temperature, machine calibration and tool
change policy. Profiles are facts about a plant, not data: they never leave anything but their own site's
generator.
"""

from __future__ import annotations

from dataclasses import dataclass

USE_CASE = "axis_failures"


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


SITES: dict[str, SiteProfile] = {
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
        return SITES[name]
    except KeyError:
        raise KeyError(f"unknown site {name!r}; registered sites: {', '.join(sorted(SITES))}") from None
