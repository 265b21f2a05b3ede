"""Security primitives: private files, the local CA and TLS, SuperNode keys, MLflow identities and grants."""
