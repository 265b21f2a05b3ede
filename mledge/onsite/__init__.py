"""What runs at a site and reads its raw rows: the store, the data generator, the site profiles, features and
local training, and the site's half of drift evaluation.

Nothing here talks to the platform's database, and nothing the platform runs imports this package, except the
pure schema facts of ``mledge.onsite.schema`` (column and feature names). Raw rows stay in the processes that
import it; what they hand back is weights, counts, statistics and p-values.
"""
