"""Helpers of the end-to-end tests: the demo at its smallest settings, and git and DVC as a user runs them."""
import json
import os
import subprocess
import sys
from pathlib import Path

TINY = [
    "data.limit=200", "autoencoder.steps=10", "autoencoder.base_channels=8", "autoencoder.batch_size=32",
    "network.base_channels=8", "network.num_heads=2", "train.steps=10", "train.batch_size=32", "train.log_every=5",
    "train.eval_every=5", "sample.steps=5", "eval.num_samples=32", "eval.fid=false", "eval.bootstrap=10",
    "sample.restart_steps=2", "classifier.steps=30", "classifier.base_channels=8",
    "diffusion.distributions={gaussian: {}, student_t: {nu: 5}}",
]


def git(folder, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True,
                          capture_output=True, text=True).stdout


def dvc(folder, *args) -> str:
    """``dvc <args>`` in ``folder`` with this venv's ``logdiff`` on the PATH (what stage commands call)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=folder, env=env, check=True, capture_output=True,
                          text=True).stdout


def dvc_status(folder):
    return json.loads(dvc(folder, "status", "--json"))
