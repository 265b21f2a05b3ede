"""`mledge fl start` refuses a strategy that cannot run under the privacy mode before submitting anything."""

from __future__ import annotations

import argparse

import pytest

from mledge.cli.fl import cmd_fl_start


def test_krum_with_secagg_is_refused_before_any_run_is_submitted():
    args = argparse.Namespace(
        rounds=3, local_epochs=1, learning_rate=0.01, min_nodes=3, strategy="krum", attack_site="",
        attack_profile="", dag_run_id="", privacy="secagg", dp_epsilon=8.0,
    )
    with pytest.raises(SystemExit, match="'krum' cannot run with privacy 'secagg'.*only ever holds the sum"):
        cmd_fl_start(args, settings=None)  # settings are only read when submitting: never reached
