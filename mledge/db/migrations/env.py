"""Alembic environment of the platform database, run programmatically by ``mledge.db.migrate``."""

from mledge.db.migrate import run_alembic_env
from mledge.db.schema import metadata

run_alembic_env(metadata, "the platform database")
