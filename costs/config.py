"""Configured cost sources: ``costs/data/sources.toml`` (or the file named by ``MLEDGE_COST_SOURCES``).

Each ``[[source]]`` has a unique ``name``, a ``kind`` (focus_files, aws_cost_explorer, gcp_bigquery,
azure_cost_management), optionally the Airflow ``connection`` its credentials come from, and kind-specific
options (``focus_files``: ``paths``, optionally ``version``; any source: ``project_tag_key``). Errors name the
file and the source.

Project attribution (``[settings]``): ``project_tag_key`` (default ``mledge-project``), ``project_tag_keys`` (a
table ProviderName -> key, for providers that spell it differently, e.g. ``Owner`` and ``owner``),
``tag_keys_case_insensitive`` (match keys whatever their case) and ``site_tag_key`` (default ``mledge-site``).
A source's own ``project_tag_key`` wins over both. Reading the file is cheap (tomllib only), so DAG files may do it at
parse time.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from costs.focus import FOCUS_VERSIONS, TagRule
from costs.sources.base import CostSource

DATA = Path(__file__).resolve().parent / "data"
DEFAULT_SOURCES = DATA / "sources.toml"
SOURCES_ENV = "MLEDGE_COST_SOURCES"
KINDS = ("focus_files", "aws_cost_explorer", "gcp_bigquery", "azure_cost_management")
DEFAULT_CONNECTIONS = {
    "aws_cost_explorer": "aws_default",
    "gcp_bigquery": "google_cloud_default",
    "azure_cost_management": "azure_default",
}


class ConfigError(ValueError):
    """A sources or sites file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class SourceConfig:
    name: str
    kind: str
    provider: str
    connection: str | None
    options: dict[str, Any] = field(default_factory=dict)
    base: Path = DATA

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "provider": self.provider, "connection": self.connection,
                **{k: v for k, v in self.options.items()}}


@dataclass(frozen=True)
class CostConfig:
    path: Path
    project_tag_key: str
    trailing_days: int
    sources: tuple[SourceConfig, ...]
    project_tag_keys: dict[str, str] = field(default_factory=dict)
    tag_keys_case_insensitive: bool = False
    site_tag_key: str = "mledge-site"

    def tag_rule(self, source: SourceConfig | None = None) -> TagRule:
        """How rows of ``source`` find their project and site."""
        own = source.options.get("project_tag_key") if source is not None else None
        return TagRule(own or self.project_tag_key, {} if own else dict(self.project_tag_keys),
                       self.tag_keys_case_insensitive, self.site_tag_key)

    def source(self, name: str) -> SourceConfig:
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(s.name for s in self.sources)
        raise ConfigError(f"{self.path}: no source named {name!r} (configured: {known})")


def config_path() -> Path:
    return Path(os.environ.get(SOURCES_ENV) or DEFAULT_SOURCES)


def load_config(path: Path | None = None) -> CostConfig:
    """Read and check the sources file."""
    path = Path(path or config_path())
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: cost sources file not found (set {SOURCES_ENV})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    settings = document.get("settings", {})
    tag_key = settings.get("project_tag_key", "mledge-project")
    trailing = settings.get("trailing_days", 7)
    if not isinstance(tag_key, str) or not tag_key:
        raise ConfigError(f"{path}: settings.project_tag_key must be a non-empty string")
    if not isinstance(trailing, int) or trailing < 1:
        raise ConfigError(f"{path}: settings.trailing_days must be a positive integer, not {trailing!r}")
    per_provider = settings.get("project_tag_keys", {})
    if not isinstance(per_provider, dict) or not all(isinstance(k, str) and isinstance(v, str) and v
                                                     for k, v in per_provider.items()):
        raise ConfigError(f"{path}: settings.project_tag_keys must be a table of ProviderName = \"tag key\"")
    insensitive = settings.get("tag_keys_case_insensitive", False)
    if not isinstance(insensitive, bool):
        raise ConfigError(f"{path}: settings.tag_keys_case_insensitive must be true or false")
    site_key = settings.get("site_tag_key", "mledge-site")
    if not isinstance(site_key, str) or not site_key:
        raise ConfigError(f"{path}: settings.site_tag_key must be a non-empty string")
    sources = []
    seen: set[str] = set()
    for index, entry in enumerate(document.get("source", []), start=1):
        where = f"{path}: source #{index}"
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: 'name' is missing")
        where = f"{path}: source {name!r}"
        if name in seen:
            raise ConfigError(f"{where}: the name is used twice")
        seen.add(name)
        kind = entry.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if kind == "focus_files":
            paths = entry.get("paths")
            if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
                raise ConfigError(f"{where}: 'paths' must be a non-empty list of glob patterns")
            if entry.get("version") is not None and entry["version"] not in FOCUS_VERSIONS:
                raise ConfigError(f"{where}: version {entry['version']!r} is not one of {', '.join(FOCUS_VERSIONS)}")
        if "project_tag_key" in entry and (not isinstance(entry["project_tag_key"], str)
                                           or not entry["project_tag_key"]):
            raise ConfigError(f"{where}: 'project_tag_key' must be a non-empty string")
        options = {k: v for k, v in entry.items() if k not in ("name", "kind", "provider", "connection")}
        connection = entry.get("connection") or DEFAULT_CONNECTIONS.get(kind)
        sources.append(SourceConfig(name, kind, entry.get("provider", ""), connection, options, path.parent))
    return CostConfig(path, tag_key, trailing, tuple(sources), dict(per_provider), insensitive, site_key)


def build_source(config: SourceConfig, tag_key: str = "mledge-project") -> CostSource:
    """The ``CostSource`` for one configured source (SDKs are imported when it is read, not here)."""
    options = config.options
    if config.kind == "focus_files":
        from costs.sources.focus_files import FocusFileSource

        return FocusFileSource(config.name, options["paths"], provider=config.provider, base=config.base,
                               version=options.get("version"))
    if config.kind == "aws_cost_explorer":
        from costs.sources.aws_cost_explorer import AwsCostExplorerSource

        return AwsCostExplorerSource(
            config.name, tag_key=tag_key,
            billed_metric=options.get("billed_metric", "UnblendedCost"),
            effective_metric=options.get("effective_metric", "AmortizedCost"),
        )
    if config.kind == "gcp_bigquery":
        from costs.sources.gcp_bigquery import GcpBillingExportSource

        return GcpBillingExportSource(
            config.name, table=options.get("table") or os.environ.get("MLEDGE_GCP_BILLING_TABLE", ""),
            tag_key=tag_key, project=options.get("project") or None, location=options.get("location") or None,
        )
    if config.kind == "azure_cost_management":
        from costs.sources.azure_cost_management import AzureCostManagementSource

        scope = options.get("scope") or os.environ.get("AZURE_COST_SCOPE") or (
            f"/subscriptions/{os.environ['AZURE_SUBSCRIPTION_ID']}" if os.environ.get("AZURE_SUBSCRIPTION_ID")
            else "")
        return AzureCostManagementSource(config.name, scope=scope, tag_key=tag_key,
                                         cost_type=options.get("cost_type", "ActualCost"))
    raise ConfigError(f"source {config.name!r}: unknown kind {config.kind!r}")
