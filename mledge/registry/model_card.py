"""A registered version's description: a short model card in Markdown, as the MLflow registry shows it.

What a reviewer needs before trusting a version: why it has its alias, how it was trained (strategy, family,
rounds, privacy), on which data (each site's batch window and its digest), how it scored on each site's held-out
rows beside the champion it was compared with, which drift alerts caused it, and which sites failed. Everything
comes from the run's promotion evidence and tags: numbers and names, no row.
"""

from __future__ import annotations

from collections.abc import Mapping

from fl.protocol import PromotionEvidence
from mledge.contracts import (
    TAG_DAG_RUN,
    TAG_DRIFT_ALERTS,
    TAG_FLOWER_RUN,
    TAG_MODEL_FAMILY,
    TAG_PRIVACY,
    TAG_STRATEGY,
    TAG_THRESHOLD,
)

METRICS = ("f1", "recall", "precision", "accuracy")


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _training(lineage: Mapping[str, str], rounds: str) -> list[str]:
    privacy = lineage.get(TAG_PRIVACY) or "none"
    alerts = lineage.get(TAG_DRIFT_ALERTS) or "none"
    return [
        f"- **Trained by**: Flower run {lineage.get(TAG_FLOWER_RUN, '?')}, "
        f"DAG run `{lineage.get(TAG_DAG_RUN) or '?'}`",
        f"- **Strategy**: {lineage.get(TAG_STRATEGY) or '?'}; "
        f"**model family**: {lineage.get(TAG_MODEL_FAMILY) or '?'}; "
        f"**rounds**: {rounds or '?'}; **privacy**: {privacy}"
        + (f"; **decision threshold**: {float(lineage[TAG_THRESHOLD]):.3f}" if lineage.get(TAG_THRESHOLD) else ""),
        f"- **Drift alerts that caused it**: {alerts if alerts != 'none' else 'none (scheduled or manual run)'}",
    ]


def _failures(evidence: PromotionEvidence) -> list[str]:
    if not evidence.failures:
        return ["", "No site failed during the run."]
    lines = ["", "**Sites that failed** (the run went on without them):"]
    lines += [f"- {site}: {'; '.join(problems[-2:])}" for site, problems in sorted(evidence.failures.items())]
    return lines


def global_card(
    name: str, version: str, alias: str, reason: str, lineage: Mapping[str, str], evidence: PromotionEvidence,
    rounds: str = "",
) -> str:
    """The global model's card: every site's window, and its held-out scores against the champion's."""
    lines = [f"### {name} v{version}: {alias}", "", f"**Why**: {reason}", "", *_training(lineage, rounds), "",
             "**Data** (each site's batches; the digest is the site's SHA-256 over those files):", ""]
    lines += _table(
        ["site", "batches", "held-out rows", "digest"],
        [[site, f"`{e.data_window or '?'}`", f"{e.num_examples:,}", f"`{e.data_digest[:12]}`" if e.data_digest else "–"]
         for site, e in sorted(evidence.sites.items())],
    )
    champion = f"champion v{evidence.champion_version}" if evidence.champion_version else "no champion"
    lines += ["", f"**Held-out scores at each site** (this version / {champion}):", ""]
    lines += _table(
        ["site", *METRICS],
        [[site, *(f"{_number(e.candidate.get(m))} / {_number((e.champion or {}).get(m))}" for m in METRICS)]
         for site, e in sorted(evidence.sites.items())],
    )
    return "\n".join(lines + _failures(evidence))


def site_card(
    name: str, version: str, alias: str, reason: str, lineage: Mapping[str, str], evidence: PromotionEvidence,
    site: str, rounds: str = "",
) -> str:
    """A site's personalised model: the global model fine-tuned on the site's recent batches, scored there."""
    entry = evidence.sites[site]
    lines = [f"### {name} v{version}: {alias}", "", f"**Why**: {reason}", "",
             f"The global model of this run, fine-tuned on {site}'s recent batches `{entry.recent_window or '?'}`"
             + (f" (digest `{entry.recent_digest[:12]}`)" if entry.recent_digest else "") + ".", "",
             *_training(lineage, rounds), "", f"**Scores on {site}'s recent held-out rows** "
             f"({entry.recent_examples:,} rows):", ""]
    rows = [["this version", *(_number(entry.personal.get(m)) for m in METRICS)],
            ["the run's global model", *(_number(entry.recent_global.get(m)) for m in METRICS)]]
    if entry.site_champion:
        champion = entry.site_champion
        rows.append([f"champion v{entry.site_champion_version}", *(_number(champion.get(m)) for m in METRICS)])
    lines += _table(["model", *METRICS], rows)
    return "\n".join(lines)
