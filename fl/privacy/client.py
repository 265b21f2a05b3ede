"""The sites' side of the privacy modes: a ClientApp mod (fl/clientapp.py puts it after ``forward_to_trainer``, so
it runs where the train handler runs).

- ``none`` and ``dp``: the train message goes to the handler unchanged (under ``dp`` the platform clips and adds
  the noise: it sees the update anyway).
- ``secagg`` and ``secagg-dp``: every train message is a SecAgg+ stage, handled by Flower's ``secaggplus_mod``.
  In the stage that carries the global model, the handler trains as always; this mod then turns its reply into
  the update (trained - received), discloses the update's L2 norm and its alignment with the previous round's
  global update (fl/privacy/screening.py), clips the update to the run's ``clip-norm``, under ``secagg-dp`` adds
  this site's share of the distributed discrete Gaussian noise on SecAgg+'s grid (fl/privacy/plan.py), and hands
  it to ``secaggplus_mod``, which masks it. The reply carries the site's metrics, its name and the masked vector;
  the model's arrays are emptied. A plain train message in a run that promised secure aggregation is refused:
  the site does not send its model in the clear.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE

from fl.privacy.modes import SECAGG_DP, PrivacySettings
from fl.privacy.noise import alignment, clip, grid_step, noisy_on_grid
from fl.privacy.plan import site_sigma
from fl.privacy.screening import ALIGNMENT_KEY, NORM_KEY
from fl.privacy.vectors import to_vector
from mledge.contracts import ARRAYS_KEY, DEFAULT_PRIVACY, METRICS_KEY, MSG_TRAIN, PRIVACY_KEY

PREVIOUS_GLOBAL = "mledge.privacy.previous-global"  # Context.state: the global model received last round
# What Flower's secaggplus_mod reads of a reply (the legacy FitRes layout); removed again before the reply leaves.
FITRES = ("fitres.parameters", "fitres.num_examples", "fitres.metrics", "fitres.status")


class PrivacyRefusal(RuntimeError):
    """The site will not do what the message asks under the run's privacy promise."""


def privacy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Pass train messages through (``none``, ``dp``) or run them as SecAgg+ stages (``secagg``, ``secagg-dp``)."""
    mode = str(context.run_config.get(PRIVACY_KEY, DEFAULT_PRIVACY) or DEFAULT_PRIVACY).strip().lower()
    if msg.metadata.message_type != MSG_TRAIN or mode in ("none", "dp"):
        return call_next(msg, context)
    settings = PrivacySettings.from_run_config(context.run_config)
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        raise PrivacyRefusal(
            f"this run promises privacy {mode!r}, but the train message is not a SecAgg+ stage: the site does not "
            f"send its update in the clear"
        )
    reply = secaggplus_mod(msg, context, partial(masked_input, settings=settings, call_next=call_next))
    for key in FITRES:
        if key in reply.content:
            del reply.content[key]
    return reply


def masked_input(msg: Message, context: Context, *, settings: PrivacySettings, call_next: ClientAppCallable) -> Message:
    """The train handler's reply, prepared for ``secaggplus_mod``: the clipped (and, under secagg-dp, noised)
    update as the legacy FitRes parameters with weight 1, plus the two disclosed scalars in the site's metrics."""
    reply = call_next(msg, context)
    if reply.has_error():
        raise PrivacyRefusal(f"the site's training failed: {reply.error.reason}")
    received = to_vector(msg.content[ARRAYS_KEY])
    update = to_vector(reply.content[ARRAYS_KEY]) - received
    previous = context.state.array_records.get(PREVIOUS_GLOBAL)
    direction = received - to_vector(previous) if previous is not None and len(previous) else None
    context.state.array_records[PREVIOUS_GLOBAL] = ArrayRecord(
        {key: Array(np.array(a.numpy())) for key, a in msg.content[ARRAYS_KEY].items()}
    )
    clipped, norm = clip(update, settings.clip_norm)
    metrics = reply.content[METRICS_KEY]
    metrics[NORM_KEY] = norm
    metrics[ALIGNMENT_KEY] = alignment(update, direction)
    if settings.mode == SECAGG_DP:
        clipped = _noised(clipped, context, settings)
    reply.content["fitres.parameters"] = ArrayRecord({"update": Array(np.asarray(clipped, dtype=np.float64))})
    reply.content["fitres.num_examples"] = MetricRecord({"num_examples": 1})
    reply.content["fitres.metrics"] = ConfigRecord({})
    reply.content["fitres.status"] = ConfigRecord({"code": 0, "message": "OK"})
    return reply


def _noised(update: np.ndarray, context: Context, settings: PrivacySettings) -> np.ndarray:
    from fl.privacy.accountant import noise_multiplier_for  # dp-accounting: only when noise is asked for

    secagg = context.state.config_records[RECORD_KEY_STATE]
    step = grid_step(float(secagg["clipping_range"]), int(secagg["target_range"]))  # type: ignore[arg-type]
    rounds = int(context.run_config["num-server-rounds"])  # type: ignore[arg-type]
    min_sites = int(context.run_config["min-replies"])  # type: ignore[arg-type]
    z = noise_multiplier_for(settings.epsilon, rounds, settings.delta)
    sigma = site_sigma(z, settings.clip_norm, min_sites, update.size, step)
    return noisy_on_grid(update, step, sigma, np.random.default_rng())
