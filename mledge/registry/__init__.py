"""The model registry side of the platform (MLflow): promotion gates, lineage, rollback, and retraining's close.

Runs at the platform; reads only what the ServerApp logged (models, metrics, the promotion evidence).
"""
