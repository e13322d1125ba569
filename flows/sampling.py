"""``logdiff sample``: a registered model (``models:/NAME@ALIAS``) or a local model file -> a file of samples."""
from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png",)
ARRAY_SUFFIXES = (".csv", ".parquet")


def load_any(model: str, project_dir: str | Path = "."):
    from tasks.sample import load_trained

    if model.startswith(("models:/", "runs:/")):
        from flows import tracking

        if not tracking.configured(project_dir):  # before MLflow would make an empty store here
            raise FileNotFoundError(f"--model {model}: no MLflow store in {Path(project_dir).resolve()} (no "
                                    "mlflow.db); pass --project-dir of a project that ran logdiff run, or set "
                                    "MLFLOW_TRACKING_URI")
        return tracking.load_registered(model, project_dir)
    if not Path(model).exists():
        raise FileNotFoundError(f"--model {model}: no such file; give models:/NAME@ALIAS or a model.safetensors path")
    return load_trained(model)


def sample_to_file(model: str, n: int, output: str | Path, *, sampler: str | None = None, steps: int | None = None,
                   options: dict | None = None, time_schedule: str | None = None, restarts: int | None = None,
                   seed: int = 0, device: str = "auto", project_dir: str | Path = ".") -> Path:
    from tasks.io import atomic_save_with
    from tasks.visuals import save_image_grid

    output = Path(output)
    if n < 1:
        raise ValueError(f"-n must be at least 1, got {n}")
    trained = load_any(model, project_dir)
    kind = trained.codec.kind
    allowed = IMAGE_SUFFIXES if kind == "image" else ARRAY_SUFFIXES
    if output.suffix.lower() not in allowed:
        raise ValueError(f"-o {output}: a model of {kind} data writes {' or '.join(allowed)} files")
    samples = trained.generate(n, sampler=sampler, steps=steps, options=options, time_schedule=time_schedule,
                               restarts=restarts, seed=seed, device=device)
    if kind == "image":
        return save_image_grid(samples, output)
    import pandas as pd

    names = trained.feature_names or [f"x{i}" for i in range(samples.shape[1])]
    frame = pd.DataFrame(np.asarray(samples), columns=names)
    if output.suffix.lower() == ".csv":
        return atomic_save_with(output, lambda tmp: frame.to_csv(tmp, index=False))
    return atomic_save_with(output, lambda tmp: frame.to_parquet(tmp, index=False))
