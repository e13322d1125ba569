"""Pipeline stage functions: validated config and input paths in, artifacts and a JSON record out.

Stage modules (ingest, autoencoder, encode, train, evaluate, report) never import each other: what they share
lives in support modules (paths, codec and its loaders, scoring, sample, data, io, runtime, visuals). No
Prefect, Ray, MLflow or DVC code lives here; orchestration is in ``flows``.
"""
