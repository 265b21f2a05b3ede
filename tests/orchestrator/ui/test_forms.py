"""The Costs page's recommendation form: every number finite and within bounds, every problem named by field."""

from __future__ import annotations

import pytest

from operators.ui.forms import FormError, template

VALID = {"vcpus": "8", "memory_gib": "32", "gpus": "1", "gpu_class": "T4", "regions": "us-east-1", "hours": "10"}


def test_a_valid_template_is_accepted():
    chosen = template(VALID)
    assert (chosen.vcpus, chosen.memory_gib, chosen.gpus, chosen.hours) == (8, 32.0, 1, 10.0)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("memory_gib", "inf", "is not a finite number"),
        ("memory_gib", "nan", "is not a finite number"),
        ("hours", "-inf", "is not a finite number"),
        ("hours", "1e308", "is above"),
        ("vcpus", "100000", "is above"),
        ("gpus", "65", "is above"),
        ("memory_gib", "0.1", "is below"),
        ("vcpus", "2.5", "is not a whole number"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_field(field, value, problem):
    with pytest.raises(FormError) as err:
        template({**VALID, field: value})
    assert problem in err.value.problems[field]
    assert set(err.value.problems) == {field}
