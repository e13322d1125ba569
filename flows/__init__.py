"""Orchestration: Prefect flows, Ray fan-out, DVC and MLflow wiring."""
