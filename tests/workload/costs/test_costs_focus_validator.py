"""The shipped public FOCUS 1.2 samples pass the FinOps Foundation's focus-validator (its rules bundled for 1.2.0.1,
no download), but for the rules its own authors call validator artefacts. The validator needs Python >= 3.12 and
lives in .venvs/focus-validator, built by .ci/focus-validator-env; without it this module is skipped (with
MLEDGE_REQUIRE_FOCUS_VALIDATOR=1 it fails instead)."""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from conftest import REPO, SAMPLES

VALIDATOR = REPO / ".venvs" / "focus-validator" / "bin" / "focus-validator"
# Failures the sample's publisher reports for focus-validator 2.2 too (costs/samples/public/README.md):
# InvoiceId-C-004-C ("MUST be NULL") is one branch of an OR pair whose parent passes; BillingAccountId type rules
# fail because a CSV carries no types and 12-digit AWS account ids are read as numbers.
KNOWN = {"InvoiceId-C-004-C", "BillingAccountId-C-000-M", "BillingAccountId-C-002-M"}

if not VALIDATOR.exists():
    if os.environ.get("MLEDGE_REQUIRE_FOCUS_VALIDATOR") == "1":
        pytest.fail(f"{VALIDATOR} is missing: run .ci/focus-validator-env", pytrace=False)
    pytest.skip("focus-validator is not built (.ci/focus-validator-env)", allow_module_level=True)


def _site_packages() -> Path:
    # The validator opens focus_validator/rules/*.csv relative to the working directory.
    code = "import focus_validator, os; print(os.path.dirname(os.path.dirname(focus_validator.__file__)))"
    out = subprocess.run([str(VALIDATOR.parent / "python"), "-c", code], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


@pytest.mark.parametrize("provider", ["aws", "azure", "gcp"])
def test_public_focus_1_2_samples_pass_focus_validator(provider, tmp_path):
    data = SAMPLES / "public" / "focus-1.2" / f"focus_sample_costandusage_{provider}_subset.csv"
    report = tmp_path / "report.xml"
    subprocess.run([str(VALIDATOR), "--data-file", str(data), "--validate-version", "1.2.0.1", "--block-download",
                    "--output-type", "unittest", "--output-destination", str(report)],
                   check=True, cwd=_site_packages(), capture_output=True, timeout=600)
    cases = list(ElementTree.parse(report).getroot().iter("testcase"))
    failed = {case.attrib["name"].split(" ::")[0] for case in cases
              if case.find("failure") is not None or case.find("error") is not None}
    assert len(cases) > 500  # the whole rule set ran
    assert failed <= KNOWN, failed - KNOWN
