"""The shared vocabulary of MLEDGE: names, keys and defaults that both Python environments agree on.

Standard library only. The orchestrator environment (Airflow: DAGs, operators, the UI plugin) and the workload
environment (Flower, torch, MLflow, Evidently) both import this module, so that a name written here is written
nowhere else: the use case and its sites, registered models, experiments and tags, drift alert statuses and
actions, aggregation strategies, Flower message keys, the drift Asset and its event's extras, knob defaults, and
where MLEDGE keeps its state.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# --- the federation ------------------------------------------------------------------------------------------
USE_CASE = "axis_failures"
SITES: tuple[str, ...] = ("plant_a", "plant_b", "plant_c")
FLWR_CONNECTION = "mledge"  # the `flwr` CLI's connection name in $FLWR_HOME/config.toml

# --- where state lives ---------------------------------------------------------------------------------------
HOME_ENV = "MLEDGE_HOME"
PLATFORM_DB_ENV = "MLEDGE_PLATFORM_DB_URL"


def mledge_home(environ: Mapping[str, str] | None = None) -> Path:
    """MLEDGE's state folder: ``MLEDGE_HOME``, else ``<repository>/.state``. The one rule, used everywhere."""
    value = (os.environ if environ is None else environ).get(HOME_ENV, "")
    return Path(value or REPO / ".state").resolve()


# node id -> site of the registered SuperNode keys, in the platform's home (mledge.security.node_keys writes it).
SUPERNODE_REGISTRY = "flower/supernodes.json"


def platform_db_url(home: Path | None = None, environ: Mapping[str, str] | None = None) -> str:
    """``MLEDGE_PLATFORM_DB_URL``, else SQLite ``platform.db`` in the home folder."""
    env = os.environ if environ is None else environ
    return env.get(PLATFORM_DB_ENV) or f"sqlite:///{(home or mledge_home(env)) / 'platform.db'}"


# --- MLflow: experiments, registered models, aliases, tags ----------------------------------------------------
EXPERIMENT = f"{USE_CASE}-federated"
GLOBAL_MODEL = f"global-{USE_CASE}-federated"
CHAMPION = "champion"
CHALLENGER = "challenger"
EVIDENCE_PATH = "promotion/evidence.json"


def site_model_name(site: str) -> str:
    """The registered model of one site's personalised model, e.g. ``plant_a-axis_failures-federated``."""
    return f"{site}-{USE_CASE}-federated"


# Where models are logged: apart from the training runs (which hold every site's metrics), so that each reader
# can be granted exactly what it may load. Every site reads the global models; each site only its own.
GLOBAL_MODELS_EXPERIMENT = f"{USE_CASE}-global-models"


def site_models_experiment(site: str) -> str:
    """The experiment of one site's personalised models, e.g. ``plant_a-axis_failures-models``."""
    return f"{site}-{USE_CASE}-models"


def drift_experiment(site: str) -> str:
    """The MLflow experiment that keeps a site's drift reports."""
    return f"drift-{site}-{USE_CASE}"


def registered_models(sites: tuple[str, ...] = SITES) -> list[str]:
    """Every registered model of the use case: each site's, then the global one."""
    return [*(site_model_name(s) for s in sites), GLOBAL_MODEL]


TAG_FLOWER_RUN = "mledge.flower_run_id"
TAG_DAG_RUN = "mledge.dag_run_id"
TAG_MODEL_URI = "mledge.model_uri"
TAG_MODEL_RUN = "mledge.model_run_id"
TAG_FAILED_SITES = "mledge.failed_sites"
TAG_DECISION = "mledge.promotion"
TAG_REASON = "mledge.promotion_reason"
TAG_STRATEGY = "mledge.strategy"
TAG_DRIFT_ALERTS = "mledge.drift_alerts"
TAG_PREVIOUS_CHAMPION = "mledge.previous_champion"
TAG_SITE = "mledge.site"
TAG_BATCH = "mledge.batch"
TAG_DRIFT_EVALUATION = "mledge.drift_evaluation"
TAG_DRIFT = "mledge.drift"
TAG_DRIFT_CHAMPION = "mledge.champion"
TAG_MODEL_FAMILY = "mledge.model_family"
TAG_THRESHOLD = "mledge.threshold"  # the decision threshold (a logit) the model version is read at
ROLLED_BACK = "rolled_back"


def site_model_tag(site: str) -> str:
    """The run tag holding the logged URI of a site's personalised model."""
    return f"mledge.site_model_uri.{site}"


def site_model_run_tag(site: str) -> str:
    """The run tag holding the id of the run that logged a site's personalised model."""
    return f"mledge.site_model_run_id.{site}"


def data_window_tag(site: str) -> str:
    """The version tag naming the batches of ``site`` a model was trained on (``batch-000001:batch-000007``)."""
    return f"mledge.data_window.{site}"


# --- drift alerts ----------------------------------------------------------------------------------------------
ALERT_STATUSES = ("new", "acknowledged", "dismissed", "retraining", "resolved")
# "label_rate": a batch that arrived without (most of) its failures, a broken export rather than drift; its one
# decision is "anomaly" (a person looks; no retraining).
ALERT_KINDS = ("data", "concept", "label_rate")
ALERT_DECISIONS = ("drift", "no_drift", "anomaly")
# What a reviewer does -> the status it leads to (the CLI's and the review page's verbs).
ALERT_ACTIONS = {"acknowledge": "acknowledged", "dismiss": "dismissed", "approve": "retraining", "resolve": "resolved"}
# Which status may follow which. A dismissed alert can be reopened by acknowledging it; resolved is final.
# retraining -> retraining: approving again is a no-op that emits the retraining request again (a retried task, or
# an approval whose Asset event failed to go out, must not leave the alert stuck).
ALERT_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "new": ("acknowledged", "dismissed", "retraining", "resolved"),
    "acknowledged": ("dismissed", "retraining", "resolved"),
    "retraining": ("retraining", "resolved"),
    "dismissed": ("acknowledged",),
    "resolved": (),
}
# The actions a person takes on the review page (resolve is the platform's, after retraining).
REVIEW_ACTIONS = ("acknowledge", "dismiss", "approve")
RETRAINING_AUTO, RETRAINING_APPROVAL = "auto", "approval"
RETRAINING_MODES = (RETRAINING_AUTO, RETRAINING_APPROVAL)

# --- the DAGs --------------------------------------------------------------------------------------------------
# Airflow's executors: platform tasks run locally, a site's tasks on that site's edge worker (queue = site name).
AIRFLOW_EXECUTORS = "LocalExecutor,airflow.providers.edge3.executors.EdgeExecutor"
SITE_EXECUTOR = "EdgeExecutor"
TRAINING_DAG_ID = "federated_training"
DRIFT_DAG_ID = "concept_drift_evaluation"
COLLECTION_DAG_ID = "data_collection"
BILLING_DAG_ID = "billing_ingestion"
PRICES_DAG_ID = "price_catalog_refresh"

# The Airflow Asset whose events start federated_training, and the keys of an event's extra.
DRIFT_ASSET_URI = f"mledge://{USE_CASE}/drift"
DRIFT_ASSET_NAME = f"{USE_CASE}_drift"
DRIFT_ASSET_GROUP = "mledge"
EVENT_SITE, EVENT_ALERT_IDS, EVENT_REQUESTED_BY = "site", "alert_ids", "requested_by"

# --- aggregation strategies: name -> title (the DAG's enum and the ServerApp's registry use these names) --------
STRATEGIES: dict[str, str] = {
    "mledge-robust": "MLEDGE robust default (majority direction, norm and claim checks, reputation)",
    "fedavg": "FedAvg (weighted mean; no defence)",
    "krum": "Krum (Flower)",
    "multikrum": "Multi-Krum (Flower)",
    "fedmedian": "Coordinate-wise median (Flower)",
    "fedtrimmedavg": "Trimmed mean (Flower)",
    "bulyan": "Bulyan (Flower)",
    "fedqv": "FedQV: quadratic voting (Chu & Laoutaris 2024)",
    "fedqv-reputation": "FedQV with reputation (Chu & Laoutaris 2024)",
    "reputation-residual": "Reputation + residual reweighting (Chu et al., NDSS 2023)",
}
# The default must run with every model family and privacy mode: xgboost's trees are appended by bagging and the
# private modes sum clipped updates, which no per-site rule can judge. Against poisoning, pick "mledge-robust" with
# the mlp family (within 1 point of FedAvg with no attack in every cell of bench/results/robust.md).
DEFAULT_STRATEGY = "fedavg"

# --- privacy: secure aggregation and differential privacy (fl/privacy/; the DAG's enum uses these names) --------
PRIVACY_MODES: dict[str, str] = {
    "none": "None: the platform sees every site's update (as before)",
    "dp": "Differential privacy: updates clipped, Gaussian noise on the aggregate, (epsilon, delta) accounted",
    "secagg": "Secure aggregation (SecAgg+): the platform only ever holds the sum of the sites' updates",
    "secagg-dp": "SecAgg+ with distributed discrete Gaussian noise: no party sees an un-noised sum",
}
DEFAULT_PRIVACY = "none"
# Run config keys (fl/flower_app/pyproject.toml) and their defaults.
PRIVACY_KEY = "privacy"
DP_EPSILON_KEY, DP_DELTA_KEY, CLIP_NORM_KEY = "dp-epsilon", "dp-delta", "clip-norm"
DP_EPSILON = 8.0  # the run's target epsilon; the noise is calibrated to reach it after num-server-rounds rounds
DP_DELTA = 1e-5
CLIP_NORM = 1.0  # L2 bound on one site's update (trained - received) in every mode but none
TAG_PRIVACY = "mledge.privacy"
TAG_EPSILON = "mledge.privacy.epsilon"
TAG_DELTA = "mledge.privacy.delta"
TAG_NOISE_MULTIPLIER = "mledge.privacy.noise_multiplier"
TAG_CLIP_NORM = "mledge.privacy.clip_norm"

# --- model families: name -> title (chosen per project: DAG param model_family, run config model-family) --------
MLP, XGBOOST = "mlp", "xgboost"
MODEL_FAMILIES: dict[str, str] = {
    MLP: "Neural network (torch MLP; FedAvg or any robust rule; early stopping, tuned threshold)",
    XGBOOST: "Gradient-boosted trees (XGBoost; Flower's FedXgbBagging)",
}
# The family that scores best on the demo's data (bench/results/model.md: federated F1 0.89 against the MLP's 0.79)
DEFAULT_MODEL_FAMILY = XGBOOST
MODEL_FAMILY_KEY = "model-family"
# The only aggregation the xgboost family takes (its trees are appended, not averaged): FedXgbBagging.
TREE_STRATEGIES = ("fedavg",)

# --- Flower messages between the ServerApp and the sites' ClientApps -------------------------------------------
MSG_TRAIN = "train"
MSG_FINALISE = "train.finalise"
MSG_QUERY = "query"
ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
SITE_KEY = "site"
CHAMPION_KEY = "champion"
SITE_CHAMPION_KEY = "site-champion"
WINDOW_KEY = "window"
# Seconds a site's machine spent on a message (read, score, train): what its compute costs are priced on.
COMPUTE_KEY = "compute-seconds"
NUM_EXAMPLES_KEY = "num-examples"

# --- defaults of the knobs people turn (DAG params, CLI options and the libraries share them) -----------------
ROUNDS = 30  # the most; early stopping (PATIENCE) usually ends a run sooner
LOCAL_EPOCHS = 5  # per round; with early stopping, fewer rounds to converge (bench/results/model.md)
LEARNING_RATE = 0.005
MIN_CLIENTS = 3
MIN_REPLIES = 2
REPLY_TIMEOUT_S = 300.0
NODE_WAIT_TIMEOUT_S = 300
RUN_TIMEOUT_S = 1800
PERSONAL_EPOCHS = 2
# Convergence: "rounds" is the most a run trains; it stops earlier when the sites' pooled validation loss has not
# improved for PATIENCE rounds, and keeps the best round's model. The learning rate follows a cosine over the rounds.
PATIENCE = 8
CLASS_WEIGHT = 1.0  # the MLP's cap on the failure class's loss weight (1: none; the tuned threshold does it)
PERSONAL_ROUNDS = 10  # xgboost: boosting rounds on a site's recent batches for its personalised model
RECENT_BATCHES = 3
# Simulations per batch for the concept-drift p-values; the smallest two-sided p, 2/(N+1), must fall below the
# smallest Holm level of the concept family (0.05 / 3 sites / 2 families / 2 tests ~ 0.0042): N >= 500.
DRIFT_SIMULATIONS = 1000
MIN_DRIFT_SIMULATIONS = 500
MAX_DRIFT_SIMULATIONS = 20000
DRIFT_ALPHA = 0.05  # the federation-wide false-alarm rate per round of batches
DRIFT_BINS = 10
# Labels lost (a broken export, not drift): at most this share of the failures the scores imply arrived, and the
# simulated lower tail of the failure count is at most LABEL_LOSS_LEVEL (a finding for a person, not an alarm of
# either drift family). The site and the platform apply the same rule, so a small batch that lost its labels is
# decided at once; a batch with at most that share never joins a champion's calibration (drift/history.py).
LABEL_LOSS_SHARE = 0.25
LABEL_LOSS_LEVEL = 0.005
ROWS_PER_BATCH = 1000

# Where a site's trainer runs torch: set by the warm trainer (``cuda`` when torch sees a GPU), read by training.
TORCH_DEVICE_ENV = "MLEDGE_TORCH_DEVICE"
