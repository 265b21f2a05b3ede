"""Alembic environment of the cost store, run programmatically by ``costs.store.CostStore`` (no alembic.ini).

The store passes an open connection in ``config.attributes["connection"]``; the command line can still be used
with ``-x url=...``: ``alembic -c /dev/null -x url=sqlite:///costs.db upgrade head`` with script_location set.
"""

from costs.store import metadata
from mledge.db.migrate import run_alembic_env

run_alembic_env(metadata, "the cost store")
