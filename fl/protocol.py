"""The federated run's contract between the ServerApp, the sites' ClientApps and the registry.

Message keys and types come from ``mledge.contracts``; this module adds the typed records that travel in them or
come out of a run: confusion ``Counts`` (they add up across sites, so federated metrics are exact), their metric
record form, and ``PromotionEvidence``, which the ServerApp writes to MLflow and the registry reads back.
Pure Python (no Flower, no torch), so every side can import it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from mledge.contracts import COMPUTE_KEY


@dataclass(frozen=True)
class Counts:
    """Confusion counts for the failure class; they add up across sites, so global metrics stay exact."""

    tp: int
    fp: int
    fn: int
    tn: int
    loss_sum: float

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.tn + other.tn,
            self.loss_sum + other.loss_sum,
        )


ZERO = Counts(0, 0, 0, 0, 0.0)


def metrics_from_counts(c: Counts) -> dict[str, float]:
    """Loss, accuracy, and recall, precision and F1 of the (rare) failure class."""
    recall = c.tp / (c.tp + c.fn) if c.tp + c.fn else 0.0
    precision = c.tp / (c.tp + c.fp) if c.tp + c.fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "loss": c.loss_sum / c.n if c.n else float("nan"),
        "accuracy": (c.tp + c.tn) / c.n if c.n else float("nan"),
        "recall": recall,
        "precision": precision,
        "f1": f1,
    }


def counts_record(counts: Counts, prefix: str = "") -> dict[str, float]:
    """Counts as metric record entries (``<prefix>tp``, ... ``<prefix>loss-sum``)."""
    return {
        f"{prefix}tp": counts.tp,
        f"{prefix}fp": counts.fp,
        f"{prefix}fn": counts.fn,
        f"{prefix}tn": counts.tn,
        f"{prefix}loss-sum": counts.loss_sum,
    }


def counts_from(metrics: Mapping[str, float], prefix: str = "") -> Counts | None:
    """The counts a metric record carries under ``prefix``; None when it carries none."""
    if f"{prefix}tp" not in metrics:
        return None
    return Counts(
        tp=int(metrics[f"{prefix}tp"]),
        fp=int(metrics[f"{prefix}fp"]),
        fn=int(metrics[f"{prefix}fn"]),
        tn=int(metrics[f"{prefix}tn"]),
        loss_sum=float(metrics[f"{prefix}loss-sum"]),
    )


# --- what a run proves about its models ----------------------------------------------------------------------


@dataclass(frozen=True)
class SiteEvidence:
    """One site's scores of the run's models, computed at the site on its own held-out rows."""

    candidate: dict[str, float]  # the final global model, all held-out rows
    champion: dict[str, float] | None  # the global champion when one was sent
    num_examples: int
    data_window: str = ""  # ``batch-000001:batch-000007``: what the site trained on
    recent_window: str = ""  # the site's recent batches (personalisation)
    data_digest: str = ""  # SHA-256 over the window's batch files, computed at the site (mlflow.data lineage)
    recent_digest: str = ""
    recent_examples: int = 0
    personal: dict[str, float] = field(default_factory=dict)  # the site's personalised model, recent held-out rows
    recent_global: dict[str, float] = field(default_factory=dict)  # the global model, recent held-out rows
    site_champion: dict[str, float] | None = None  # the site model's champion, recent held-out rows
    site_champion_version: str | None = None


@dataclass
class PromotionEvidence:
    """``promotion/evidence.json`` of a run: what the registry's gates decide on, and which sites failed."""

    champion_version: str | None
    sites: dict[str, SiteEvidence] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)
    compute_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> PromotionEvidence:
        """Read a run's evidence back; a missing or malformed field is named."""
        try:
            sites = {str(s): SiteEvidence(**entry) for s, entry in (document.get("sites") or {}).items()}
            version = document.get("champion_version")
            return cls(
                champion_version=None if version is None else str(version),
                sites=sites,
                failures={str(s): [str(p) for p in ps] for s, ps in (document.get("failures") or {}).items()},
                compute_seconds={str(s): float(v) for s, v in (document.get("compute_seconds") or {}).items()},
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"promotion evidence is malformed: {exc}") from None

    def metric(self, role: str, metric: str) -> dict[str, float]:
        """site -> ``metric`` of ``role`` ('candidate' or 'champion') for every site that scored it."""
        return {
            site: float(scores[metric])
            for site, entry in self.sites.items()
            if (scores := getattr(entry, role)) is not None
        }


# --- what a site may report -------------------------------------------------------------------------------

COUNT_KEYS = ("tp", "fp", "fn", "tn")


def metric_problems(
    metrics: Mapping[str, Any], *, examples_key: str | None, prefixes: tuple[str, ...] = ("",),
    max_seconds: float | None = None,
) -> list[str]:
    """Every way a site's metric record breaks the protocol (empty when it fits).

    Sites are not trusted: every number must be finite and non-negative, confusion counts whole numbers that sum
    to the examples they were computed on (``examples_key``), and the compute seconds a site bills cannot exceed
    the wall time the platform waited for its reply (``max_seconds``). A record that fails is rejected, named,
    and feeds neither the metrics, the promotion gate nor the cost rows.
    """
    problems = []
    for key, value in metrics.items():
        number = value if isinstance(value, int | float) else None
        if number is None or isinstance(value, bool) or not math.isfinite(number) or number < 0:
            problems.append(f"{key}={value!r} is not a finite non-negative number")
    if problems:
        return problems
    for prefix in prefixes:
        keys = [f"{prefix}{k}" for k in COUNT_KEYS]
        if f"{prefix}tp" not in metrics:
            problems.append(f"no confusion counts {prefix}tp..{prefix}tn")
            continue
        missing = [k for k in [*keys, f"{prefix}loss-sum"] if k not in metrics]
        if missing:
            problems.append(f"missing {missing}")
            continue
        if any(float(metrics[k]) != int(metrics[k]) for k in keys):
            problems.append(f"{prefix}confusion counts are not whole numbers")
        total = sum(int(metrics[k]) for k in keys)
        if examples_key is not None and prefix == "" and examples_key in metrics:
            if total != int(metrics[examples_key]):
                problems.append(f"confusion counts sum to {total}, not {examples_key}={int(metrics[examples_key])}")
    if max_seconds is not None and float(metrics.get(COMPUTE_KEY, 0.0)) > max_seconds:
        problems.append(f"{COMPUTE_KEY}={metrics[COMPUTE_KEY]} exceeds the {max_seconds:.1f}s the platform waited")
    return problems


# --- what leaves a site ----------------------------------------------------------------------------------------
# Every record and key a site sends to the platform, per channel. README's "What leaves a site" table is this
# declaration (``disclosure_table``), and tests/workload/security/test_what_leaves_a_site.py holds the ClientApp's
# real replies and the site tasks' real results to it: a new key fails that test until it is declared here.


@dataclass(frozen=True)
class Disclosure:
    """One thing a site sends: over which channel, in which record, with which keys, and what they are."""

    channel: str
    record: str
    keys: tuple[str, ...]  # "*" for the arrays of a model: every weight tensor of its state
    meaning: str


def _counts(prefix: str = "") -> tuple[str, ...]:
    return tuple(counts_record(ZERO, prefix))


# Top-level keys of the drift steps' answers at a site (mledge/onsite/drift_evaluation.py); their values are batch
# names, counts, statistics and p-values (tests/workload/drift/test_drift_cli.py checks an evaluation against these).
PLAN_KEYS = ("site", "evaluation_id", "unprocessed", "reference", "reference_source", "calibration", "units",
             "champion", "concept_skipped")
SIMULATION_KEYS = (*PLAN_KEYS, "simulations", "bins", "seed", "created_at", "concept")
P_VALUE_KEYS = ("site", "evaluation_id", "reference", "calibration", "units", "concept_skipped")

def _threshold_counts() -> tuple[str, ...]:
    from fl.thresholds import GRID, count_key

    return tuple(count_key(i, k) for i in range(len(GRID)) for k in ("tp", "fp", "fn"))


SECURE_TRAIN = "Flower reply to `train` under privacy `secagg` and `secagg-dp` (each SecAgg+ stage)"

WHAT_LEAVES_A_SITE: tuple[Disclosure, ...] = (
    Disclosure("Flower reply to `query`", "site", ("site",), "the site's name (checked against its node key)"),
    Disclosure("Flower reply to `train`", "arrays", ("*",), "the received global model after local training"),
    Disclosure(
        "Flower reply to `train`", "metrics",
        (*_counts(), "eval-examples", "train-loss", "num-examples", COMPUTE_KEY, "val-loss-sum", "val-examples",
         *_threshold_counts()),
        "confusion counts and loss sum of the received model on the held-out rows and their number; its loss sum "
        "on the validation rows, their number and its true/false positives and false negatives there at each of "
        "19 candidate decision thresholds (fl/thresholds.py); the last epoch's mean training loss; training rows; "
        "compute seconds",
    ),
    Disclosure("Flower reply to `train`", "site", ("site",), "the site's name"),
    Disclosure(
        SECURE_TRAIN, "metrics",
        (*_counts(), "eval-examples", "train-loss", "num-examples", COMPUTE_KEY, "val-loss-sum", "val-examples",
         *_threshold_counts(), "update-norm", "update-alignment"),
        "the same metrics as a plain `train` reply, plus the update's L2 norm before clipping and its cosine with "
        "the previous round's global update (fl/privacy/screening.py)",
    ),
    Disclosure(SECURE_TRAIN, "arrays", (), "emptied: the model never leaves the site in the clear"),
    Disclosure(SECURE_TRAIN, "site", ("site",), "the site's name"),
    Disclosure(
        SECURE_TRAIN, "secaggplus_configs", ("pk1", "pk2", "dsts", "ctxts", "masked_params", "nids", "shares"),
        "Flower's SecAgg+ stages: the site's two public keys; its secret shares for the other sites, encrypted to "
        "each; its clipped update masked uniformly mod 2^32 (under `secagg-dp` with its share of the discrete "
        "Gaussian noise); the shares that unmask the sum of the sites that answered",
    ),
    Disclosure("Flower reply to `train.finalise`", "arrays", ("*",), "the site's personalised model"),
    Disclosure(
        "Flower reply to `train.finalise`", "metrics",
        (
            "num-examples", *_counts(), *_counts("champion-"), "recent-examples", *_counts("recent-global-"),
            *_counts("site-champion-"), "personal-train-loss", *_counts("personal-"), COMPUTE_KEY,
        ),
        "confusion counts and loss sums of the final global model, the global champion (all held-out rows), the "
        "global model, the site's champion and its personalised model (recent held-out rows); row counts; the "
        "personalisation's training loss; compute seconds",
    ),
    Disclosure("Flower reply to `train.finalise`", "window", ("data", "recent", "data-digest", "recent-digest"),
               "names of the first and last batch trained on (`batch-000001:batch-000004`) and a SHA-256 over the "
               "window's batch files (lineage in the registry), not their rows"),
    Disclosure("Flower reply to `train.finalise`", "site", ("site",), "the site's name"),
    Disclosure("Flower error reply (any message)", "error", ("code", "reason"),
               "what failed: a file name, a column, counts and CSV line numbers; never a cell's value"),
    Disclosure(
        "Airflow task `<site>.collect` (XCom, log)", "result", ("site", "accepted", "quarantined", "run_id"),
        "per file: the batch it became and its row count, or the reason it was quarantined (columns, counts, "
        "CSV line numbers) and where it lies at the site",
    ),
    Disclosure(
        "Airflow task `<site>.check_unprocessed` (XCom, log)", "result", PLAN_KEYS,
        "the evaluation's plan: batch names (unprocessed, reference, calibration), how they are grouped into units, "
        "the champion's name and version, whether the concept test is skipped and why",
    ),
    Disclosure(
        "Airflow task `<site>.generate_simulations` (XCom, log)", "result", SIMULATION_KEYS,
        "the plan again, with each unit's status, the simulations' settings and per unit the error counts of "
        "the champion and of its simulations (no row)",
    ),
    Disclosure(
        "Airflow task `<site>.evaluate_p_value` (XCom, log)", "result", P_VALUE_KEYS,
        "per unit: test statistics and p-values of the data and concept tests, label counts and rates, row counts, "
        "the site-local path of Evidently's report",
    ),
    Disclosure(
        "Airflow task `<site>.measurements` (XCom)", "result", ("site", "plan", "results"),
        "the plan and each unit's statistics as above, for the platform's decision",
    ),
    Disclosure(
        "Airflow task `<site>.publish_decision` (XCom; MLflow `drift-<site>-axis_failures`)", "result",
        ("site", "published", "archived"),
        "MLflow run ids of each decided unit's run, to which the site logs the decision (corrected p-values, "
        "drifted column names) and its metrics; Evidently's HTML and JSON reports stay at the site",
    ),
)


def declared(channel: str, record: str) -> frozenset[str]:
    """The keys ``record`` may carry on ``channel`` (empty when the record is not declared there)."""
    return frozenset(k for d in WHAT_LEAVES_A_SITE if (d.channel, d.record) == (channel, record) for k in d.keys)


def disclosure_table() -> str:
    """README's table of what leaves a site, as Markdown."""
    lines = ["| channel | record | keys | what it is |", "|---|---|---|---|"]
    for d in WHAT_LEAVES_A_SITE:
        lines.append(f"| {d.channel} | `{d.record}` | {_keys_text(d.keys)} | {d.meaning} |")
    return "\n".join(lines)


def _keys_text(keys: tuple[str, ...]) -> str:
    """Keys for a reader: a model's weights in words, each full set of counts as its prefix."""
    if keys == ("*",):
        return "weights of every layer"
    if not keys:
        return "none (an empty record)"
    prefixes = [p for p in dict.fromkeys(k[: -len("tp")] for k in keys if k.endswith("tp"))
                if set(_counts(p)) <= set(keys)]
    grouped = {k for p in prefixes for k in _counts(p)}
    parts = [f"counts `{p}{{{','.join(_counts())}}}`" for p in prefixes]
    grid = _threshold_counts()
    if set(grid) <= set(keys):
        grouped |= set(grid)
        parts.append(f"counts `val-t{{00..{len(grid) // 3 - 1}}}-{{tp,fp,fn}}`")
    return ", ".join(parts + [f"`{k}`" for k in keys if k not in grouped])
