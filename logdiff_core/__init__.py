"""LogDiff's pure core: noise distributions, schedules, transforms, diffusion, samplers, networks, metrics.

Imports only torch, numpy and tqdm (progress bars); orchestration (Prefect, Ray, MLflow, DVC) and
file formats live in ``tasks`` and ``flows``.
"""
__version__ = "0.1.0"
