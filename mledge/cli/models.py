"""``mledge models ...``: the model registry (promotion through the gates, rollback)."""

from __future__ import annotations

import argparse
import logging

from mledge.cli.common import add, group
from mledge.ops.settings import Settings

log = logging.getLogger("mledge")


def cmd_models_promote(args: argparse.Namespace, settings: Settings) -> dict:
    from drift.alerts import AlertStore
    from mledge.registry.retraining import promote_and_resolve

    alerts = AlertStore(settings.platform_db_url) if args.resolve_drift_alerts else None
    result = promote_and_resolve(
        args.flower_run_id, alerts, metric=args.metric, margin=args.margin, site_margin=args.site_margin
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
    p.add_argument("--resolve-drift-alerts", action="store_true",
                   help="link the drift alerts awaiting retraining to the new versions and resolve them")
    p = add(models, "rollback", cmd_models_rollback, "move alias champion back to the previous champion")
    p.add_argument("name", help="registered model, e.g. plant_b-axis_failures-federated")
