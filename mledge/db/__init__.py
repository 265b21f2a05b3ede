"""The platform database: drift alerts, evaluated batches and per-site strategy state, in one schema.

The one owner of that database: its tables (``schema``, one MetaData), its Alembic migrations (``migrations/``),
the migrate step (``migrate``: run once by ``mledge stack up`` and by the DAGs' ``migrate_platform_db`` task,
upstream of everything) and ``connect``, which the stores use. SQLAlchemy and the standard library only.
"""

from mledge.db.engine import make_engine, safe_url
from mledge.db.migrate import connect, migrate

__all__ = ["connect", "make_engine", "migrate", "safe_url"]
