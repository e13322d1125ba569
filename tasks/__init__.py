"""Pipeline stage functions: validated config and input paths in, artifacts and a JSON record out.

No Prefect, Ray, MLflow or DVC code lives here except in ``register`` (MLflow is what registration is).
"""
