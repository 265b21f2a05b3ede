"""Where cost rows come from: cloud billing APIs and FOCUS export files, each a ``CostSource``."""
