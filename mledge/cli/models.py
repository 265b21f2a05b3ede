"""``mledge models ...``: the model registry (promotion through the gates, rollback)."""

from __future__ import annotations

import argparse
import json
import logging

from mledge.cli.common import add, group
from mledge.ops.settings import Settings

log = logging.getLogger("mledge")


def alert_ids(value: str) -> list[int]:
    """A JSON list of alert ids (``[]`` or empty: none)."""
    try:
        ids = json.loads(value or "[]")
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a JSON list of alert ids such as [3, 7], got {value!r}") from None
    return ids


def cmd_models_promote(args: argparse.Namespace, settings: Settings) -> dict:
    from drift.alerts import AlertStore
    from mledge.registry.retraining import promote_and_resolve

    ids = args.drift_alert_ids
    alerts = AlertStore(settings.platform_db_url) if ids else None
    result = promote_and_resolve(
        args.flower_run_id, alerts, alert_ids=ids, metric=args.metric, margin=args.margin,
        site_margin=args.site_margin,
    )
    for entry in [result, *result["site_models"].values()]:
        log.info("Version %s of %s is %s: %s", entry["version"], entry["registered_model"], entry["alias"],
                 entry["reason"])
    return result


def cmd_models_rollback(args: argparse.Namespace, settings: Settings) -> dict:
    from mledge.registry.promotion import rollback

    result = rollback(args.name)
    log.info("%s: champion is version %s again (version %s rolled back)", args.name, result["champion"],
             result["rolled_back"])
    return result


def register(commands: argparse._SubParsersAction) -> None:
    models = group(commands, "models", "the model registry")
    p = add(models, "promote", cmd_models_promote, "register a run's global model and apply the promotion gate")
    p.add_argument("--flower-run-id", required=True)
    p.add_argument("--metric", default="f1", choices=["f1", "recall", "accuracy", "loss"])
    p.add_argument("--margin", type=float, default=0.0, help="how much better than the champion it must be")
    p.add_argument("--site-margin", type=float, default=0.0,
                   help="how much a site's personalised model must beat that site's champion")
    p.add_argument("--drift-alert-ids", type=alert_ids, default=[], metavar="JSON",
                   help="the drift alerts this run retrained for, as a JSON list (its triggering Asset events "
                        "carry them): those still in retraining are linked to the new versions and resolved")
    p = add(models, "rollback", cmd_models_rollback, "move alias champion back to the previous champion")
    p.add_argument("name", help="registered model, e.g. plant_b-axis_failures-federated")
