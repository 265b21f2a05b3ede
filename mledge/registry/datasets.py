"""What a model was trained on, as MLflow dataset metadata (``mlflow.data``) with no row in it.

Each site's data window becomes a ``MetaDataset``: its name (``plant_a:batch-000001:batch-000007``), the SHA-256
the site computed over the window's batch files, the feature schema, and a source that says where the rows are
(at the site) and cannot load them. A registry reader sees which batches, byte for byte, went into a version.
"""

from __future__ import annotations

from typing import Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset

from mledge.onsite.schema import FEATURE_NAMES

SOURCE_TYPE = "mledge-site"


class SiteDatasetSource(DatasetSource):
    """Rows kept in a site's store: named, never loadable from the platform."""

    def __init__(self, site: str, window: str) -> None:
        self.site, self.window = site, window

    @staticmethod
    def _get_source_type() -> str:
        return SOURCE_TYPE

    def load(self, **kwargs: Any) -> Any:
        raise PermissionError(f"the rows of {self.site} ({self.window}) stay at the site and cannot be loaded here")

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> SiteDatasetSource:
        raise NotImplementedError

    def to_dict(self) -> dict[str, str]:
        return {"site": self.site, "window": self.window}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> SiteDatasetSource:
        return cls(str(source_dict["site"]), str(source_dict["window"]))


def feature_schema() -> Any:
    from mlflow.types import ColSpec, DataType, Schema

    return Schema([ColSpec(DataType.float, name) for name in FEATURE_NAMES])


def site_dataset(site: str, window: str, digest: str, name: str | None = None) -> MetaDataset:
    """One site's training window as MLflow dataset metadata."""
    return MetaDataset(SiteDatasetSource(site, window), name=name or f"{site}:{window}", digest=digest[:36],
                       schema=feature_schema())
