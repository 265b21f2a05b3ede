"""Federated learning only: the run protocol, the model, the ServerApp (platform) and ClientApp (site), aggregation
strategies, simulation support, and the SuperLink client."""
