"""The stage functions end to end on tiny settings: ingest -> autoencoder -> encode -> train -> evaluate -> report."""
import shutil

import numpy as np
import pytest
import torch

from tasks import config
from tasks.config import Variant
from tasks.autoencoder import train_autoencoder
from tasks.codec import load_autoencoder, load_codec, load_latents
from tasks.data import float_to_images, images_to_float, load_split
from tasks.encode import encode_latents
from tasks.evaluate import evaluate
from tasks.io import load_safetensors
from tasks.paths import MODEL_FILE, checkpoint_file, data_dir, eval_dir, train_dir
from tasks.ingest import ingest
from tasks.io import read_json
from tasks.sample import load_trained
from tasks.report import write_report
from tasks.train import train_diffusion

TINY = [
    "data.limit=300", "autoencoder.steps=20", "autoencoder.base_channels=8", "autoencoder.batch_size=32",
    "autoencoder.checkpoint_every=10", "network.base_channels=8", "network.num_heads=2", "train.steps=30",
    "train.batch_size=32", "train.log_every=10", "train.checkpoint_every=10", "train.eval_every=0",
    "train.warmup_steps=5", "sample.steps=8", "eval.num_samples=48", "eval.fid=false", "eval.grid_size=16",
]


IDENTITY = {d: Variant(d, "identity") for d in ("gaussian", "laplace", "uniform")}


def tiny_config(workdir, *extra):
    return config.load("demo", [f"workdir={workdir}", *TINY, *extra])


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("stages") / "work")
    ingest(cfg)
    ae_record = train_autoencoder(cfg)
    latents = encode_latents(cfg, "identity")
    return cfg, ae_record, latents


def test_autoencoder_and_encoding(encoded):
    cfg, ae_record, latents = encoded
    assert ae_record["kind"] == "conv" and 5 < ae_record["val_psnr"] < 60 and ae_record["val_rswd"] > 0
    assert ae_record["images_per_s"] > 0 and "rfid" not in ae_record  # eval.fid=false: no FID attempted
    assert latents["latent_shape"] == [3, 4, 4] and latents["counts"] == {"train": 270, "val": 30}
    train = load_latents(cfg, "identity", "train")
    assert train.std().item() == pytest.approx(1.0, rel=1e-4)  # the latent scale factor makes unit variance
    # centred per channel, as the preconditioner's skip connection assumes (it used to be off by the mean)
    assert train.mean(dim=(0, 2, 3)).abs().max().item() < 1e-5
    codec, images = load_codec(cfg, "identity"), load_split(data_dir(cfg), "val").values[:16]
    autoencoder = load_autoencoder(cfg)
    with torch.no_grad():
        own = float_to_images(autoencoder.decode(autoencoder.encode(images_to_float(images))))
    assert np.array_equal(codec.decode(codec.encode(images)), own)  # shift and scale invert exactly
    assert (cfg.work / "autoencoder" / "reconstructions.png").stat().st_size > 0


def test_train_is_deterministic_and_resumes_after_a_kill(encoded, tmp_path):
    cfg, _, _ = encoded
    train_diffusion(cfg, IDENTITY["laplace"], progress=False)
    reference = load_safetensors(train_dir(cfg, IDENTITY["laplace"]) / MODEL_FILE, "model")[0]

    class Killed(Exception):
        pass

    def kill_at_step_20(step, metrics):
        if step == 20:
            raise Killed

    # a second, interrupted run from scratch: resume must reproduce the uninterrupted weights exactly
    checkpoint_file(cfg, IDENTITY["laplace"].name).unlink()
    shutil.rmtree(train_dir(cfg, IDENTITY["laplace"]))
    with pytest.raises(Killed):
        train_diffusion(cfg, IDENTITY["laplace"], callback=kill_at_step_20, progress=False)
    assert not train_dir(cfg, IDENTITY["laplace"]).exists()  # nothing half-written, no temp folder left
    assert [p.name for p in train_dir(cfg, IDENTITY["laplace"]).parent.iterdir() if "laplace" in p.name] == []
    record = train_diffusion(cfg, IDENTITY["laplace"], progress=False)
    assert record["resumed_from"] == 10  # the kill came before the step-20 checkpoint
    resumed = load_safetensors(train_dir(cfg, IDENTITY["laplace"]) / MODEL_FILE, "model")[0]
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_changed_settings_do_not_resume_a_stale_checkpoint(encoded):
    cfg, _, _ = encoded
    train_diffusion(cfg, IDENTITY["uniform"], progress=False)
    changed = config.load("demo", [f"workdir={cfg.workdir}", *TINY, "train.lr=0.0005"])
    assert train_diffusion(changed, IDENTITY["uniform"], progress=False)["resumed_from"] == 0


def test_train_then_evaluate_writes_metrics_and_pictures(encoded):
    cfg, _, _ = encoded
    record = train_diffusion(cfg, IDENTITY["gaussian"], progress=False)
    assert record["steps"] == 30 and np.isfinite(record["final_loss"])
    history = (train_dir(cfg, IDENTITY["gaussian"]) / "history.csv").read_text().splitlines()
    assert history[0].startswith("step,") and len(history) == 4
    result = evaluate(cfg, IDENTITY["gaussian"])
    assert result == read_json(eval_dir(cfg, IDENTITY["gaussian"]) / "record.json")
    assert result["champion_metric"] == "swd_mean" and result["champion_score"] > 0
    assert result["num_samples"] == 48
    for name in ("samples.png", "trajectories.png"):
        assert (cfg.work / "eval" / "gaussian-identity" / name).stat().st_size > 0
    model = load_trained(train_dir(cfg, IDENTITY["gaussian"]))
    images = model.generate(5, steps=4, progress=False)
    assert images.dtype == np.uint8 and images.shape == (5, 1, 8, 8)

    summary = write_report(cfg)  # only gaussian is evaluated: the others are named as missing
    assert summary["best"] == "gaussian-identity" and len(summary["missing"]) == 4
    table = (cfg.work / "report" / "report.md").read_text()
    assert f"| gaussian | gaussian | identity | **{result['swd_mean']:.4g}** |" in table
    assert "Not evaluated (training failed or not run): laplace, uniform, gumbel, exponential." in table
    assert (cfg.work / "report" / "samples.png").stat().st_size > 0


def test_unknown_distribution_and_missing_inputs(tmp_path, encoded):
    cfg, _, _ = encoded
    with pytest.raises(ValueError, match="not in diffusion.distributions"):
        train_diffusion(cfg, Variant("student_t", "identity"))
    with pytest.raises(ValueError, match="transform 'log' is not in diffusion.transforms"):
        train_diffusion(cfg, Variant("gaussian", "log"))
    empty = tiny_config(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="run the ingest stage"):
        train_autoencoder(empty)
    with pytest.raises(FileNotFoundError, match="latents"):
        train_diffusion(empty, IDENTITY["gaussian"])


def test_saved_files_are_byte_identical_for_identical_content(tmp_path):
    """DVC compares outputs by hash: the same checkpoint saved twice must be the same bytes."""
    from tasks.io import atomic_torch_save, sha256_file

    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 3}
    paths = [atomic_torch_save(state, tmp_path / f"{i}.pt") for i in range(2)]
    assert sha256_file(paths[0]) == sha256_file(paths[1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.pt", "1.pt"]  # no temp files left


def test_positive_array_data_identity_vs_log_end_to_end(tmp_path):
    """wine (strictly positive) -> no autoencoder -> identity and log transforms -> MLP denoiser -> report.
    The log model's samples stay positive, even with a heavy-tailed noise and few sampling steps."""
    cfg = config.load("wine", [f"workdir={tmp_path / 'work'}", "train.steps=30", "train.log_every=10",
                               "train.eval_every=0", "network.hidden=32", "eval.num_samples=200",
                               "sample.steps=5", "diffusion.distributions={student_t: {nu: 3}}"])
    assert [v.name for v in cfg.variants()] == ["student_t-identity", "student_t-log"]
    ingest(cfg)
    assert train_autoencoder(cfg) == {"kind": "none"}
    records = {}
    for variant in cfg.variants():
        assert encode_latents(cfg, variant.transform)["latent_shape"] == [13]
        train_diffusion(cfg, variant, progress=False)
        records[variant.transform] = evaluate(cfg, variant)
    log = records["log"]
    assert log["frac_non_positive"] == 0.0 and log["champion_metric"] == "wasserstein"
    # the floor (142 training rows vs the 36 held-out) and the model are scored at the same sample size
    assert log["metric_sample_size"] == 142 and 0 <= log["floor_wasserstein"] < log["wasserstein"]
    samples = load_trained(train_dir(cfg, Variant("student_t", "log"))).generate(300, steps=3, progress=False)
    assert samples.shape == (300, 13) and (samples > 0).all()
    header = (cfg.work / "eval" / "student_t-log" / "samples.csv").read_text().splitlines()[0]
    assert header.startswith("alcohol,malic_acid")
    assert (cfg.work / "eval" / "student_t-log" / "histograms.png").stat().st_size > 0

    summary = write_report(cfg)
    assert set(summary["models"]) == {"student_t-identity", "student_t-log"}
    expected_best = min(records.values(), key=lambda r: r["wasserstein"])["transform"]
    assert summary["best"] == f"student_t-{expected_best}"
    table = (cfg.work / "report" / "report.md").read_text()
    assert "| student_t-log | student_t | log |" in table and "| *floor (real vs real)* |" in table
    assert f"{records['log']['wasserstein']:.4g}" in table
    for picture in ("scores.png", "histograms.png"):
        assert f"]({picture})" in table and (cfg.work / "report" / picture).stat().st_size > 0


def test_report_without_evaluated_models_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the evaluate stages first"):
        write_report(tiny_config(tmp_path / "work"))
