"""The GPU check's shrunken CPU run: the same code path a CUDA machine runs, on a tiny image-folder zip."""
import sys
import zipfile
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import gpu_check  # noqa: E402


def tiny_cifar_zip(path: Path, per_class: int = 60) -> Path:
    """Two classes of 32x32 RGB JPEGs (dark and bright), as ``class/NNNN.jpg`` like the CIFAR-10 zip."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as archive:
        for label, (low, high) in {"dark": (0, 120), "bright": (135, 256)}.items():
            for i in range(per_class):
                buffer = BytesIO()
                Image.fromarray(rng.integers(low, high, (32, 32, 3), dtype=np.uint8)).save(buffer, "JPEG")
                archive.writestr(f"{label}/{i:04d}.jpg", buffer.getvalue())
    return path


def test_gpu_check_runs_shrunken_on_cpu_and_prints_one_table(tmp_path, capsys):
    data = tiny_cifar_zip(tmp_path / "train.zip")
    rows = gpu_check.main(["--smoke", "--data", str(data)])
    table = capsys.readouterr().out
    measured = {what: figure for what, figure, _ in rows}
    assert measured["device"] == "CPU" and measured["ingest"] == "120 images"
    assert float(measured["autoencoder"].split()[0].replace(",", "")) > 0
    assert float(measured["diffusion training"].split()[0].replace(",", "")) > 0
    assert "held-out accuracy" in measured["judge classifier"]
    assert measured["gaussian after 20 steps, 0 restarts"].startswith("fd_classifier ")
    assert measured["gaussian after 20 steps, 2 restarts"].startswith("fd_classifier ")
    assert "sample + decode 64" in measured
    assert table.count("\n| ") == len(rows) + 2  # header, rule, one line per row
