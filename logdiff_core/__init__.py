"""LogDiff's pure core: noise distributions, schedules, transforms, diffusion, samplers, networks, metrics.

Imports only torch, torchvision, numpy and pyarrow; orchestration (Prefect, Ray, MLflow, DVC) lives elsewhere.
"""
__version__ = "0.1.0"
