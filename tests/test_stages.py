"""The stage functions end to end on tiny settings: ingest -> autoencoder -> encode -> train -> evaluate -> report."""
import re
import shutil
from dataclasses import replace

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
from tasks.baselines import compute_baselines
from tasks.classifier import train_classifier
from tasks.report import write_report
from tasks.train import train_diffusion

TINY = [
    "data.limit=300", "autoencoder.steps=20", "autoencoder.base_channels=8", "autoencoder.batch_size=32",
    "autoencoder.checkpoint_every=10", "network.base_channels=8", "network.num_heads=2", "train.steps=30",
    "train.batch_size=32", "train.log_every=10", "train.checkpoint_every=10", "train.eval_every=0",
    "train.warmup_steps=5", "sample.steps=8", "eval.num_samples=48", "eval.fid=false", "eval.grid_size=16",
    "sample.restart_steps=2", "eval.bootstrap=20", "classifier.steps=60", "classifier.base_channels=8",
]


IDENTITY = {d: Variant(d, "identity") for d in ("gaussian", "laplace", "uniform")}


def tiny_config(workdir, *extra, preset="demo"):
    """As the flow does it: the experiment folder as an absolute workdir, set after validation."""
    return replace(config.load(preset, [*TINY, *extra] if preset == "demo" else list(extra)), workdir=str(workdir))


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("stages") / "work")
    ingest(cfg)
    ae_record = train_autoencoder(cfg)
    latents = encode_latents(cfg, "identity")
    judge = train_classifier(cfg)
    baselines = compute_baselines(cfg, "identity")
    return cfg, ae_record, latents, judge, baselines


def test_autoencoder_and_encoding(encoded):
    cfg, ae_record, latents, _, _ = encoded
    assert ae_record["kind"] == "conv" and 5 < ae_record["val_psnr"] < 60 and ae_record["images_per_s"] > 0
    held_out = round(300 * cfg.data.val_fraction)
    assert latents["latent_shape"] == [3, 4, 4] and latents["counts"] == {"train": 300 - held_out, "val": held_out}
    train = load_latents(cfg, "identity", "train")
    # every latent number at zero mean and unit variance, as the preconditioner's skip connection assumes (it used
    # to be off by the mean, then by each position's mean and spread)
    assert train.mean(0).abs().max().item() < 1e-5
    assert torch.allclose(train.std(0), torch.ones(3, 4, 4), atol=1e-4)
    codec, images = load_codec(cfg, "identity"), load_split(data_dir(cfg), "val").values[:16]
    autoencoder = load_autoencoder(cfg)
    with torch.no_grad():
        own = float_to_images(autoencoder.decode(autoencoder.encode(images_to_float(images))))
    assert np.array_equal(codec.decode(codec.encode(images)), own)  # shift and scale invert exactly
    assert (cfg.work / "autoencoder" / "reconstructions.png").stat().st_size > 0


def test_train_is_deterministic_and_resumes_after_a_kill(encoded, tmp_path):
    cfg, *_ = encoded
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
    cfg, *_ = encoded
    train_diffusion(cfg, IDENTITY["uniform"], progress=False)
    changed = tiny_config(cfg.workdir, "train.lr=0.0005")
    assert train_diffusion(changed, IDENTITY["uniform"], progress=False)["resumed_from"] == 0


def test_the_judge_and_the_baselines(encoded):
    cfg, _, _, judge, baselines = encoded
    assert judge["available"] and judge["classes"] == 10 and 0.3 < judge["accuracy"] <= 1
    # as many samples as both the request and the held-out split allow
    held_out = round(300 * cfg.data.val_fraction)
    assert baselines["champion_metric"] == "fd_classifier"
    assert baselines["metric_sample_size"] == min(held_out, cfg.eval.num_samples)
    assert "classifier trained on the training labels" in baselines["basis"] and "not FID" in baselines["basis"]
    for name in ("floor", "ceiling", "trivial"):
        scores = baselines[name]
        assert scores["fd_classifier_low"] < scores["fd_classifier"] < scores["fd_classifier_high"]
        assert {"precision", "recall", "class_entropy"} <= set(scores)
    # real data is closer to the reference than its own reconstructions, and those closer than a Gaussian's
    assert baselines["floor"]["fd_classifier"] < baselines["trivial"]["fd_classifier"]
    assert (cfg.work / "baselines" / "identity" / "trivial.png").stat().st_size > 0


def test_train_then_evaluate_writes_metrics_and_pictures(encoded):
    cfg, *_ = encoded
    record = train_diffusion(cfg, IDENTITY["gaussian"], progress=False)
    assert record["steps"] == 30 and np.isfinite(record["final_loss"])
    history = (train_dir(cfg, IDENTITY["gaussian"]) / "history.csv").read_text().splitlines()
    assert history[0].startswith("step,") and len(history) == 4
    result = evaluate(cfg, IDENTITY["gaussian"])
    assert result == read_json(eval_dir(cfg, IDENTITY["gaussian"]) / "record.json")
    assert result["champion_metric"] == "fd_classifier" and result["champion_score"] == result["fd_classifier"]
    assert result["fd_classifier_low"] < result["fd_classifier"] < result["fd_classifier_high"]
    assert set(result["baselines"]) == {"floor", "ceiling", "trivial", "copy"}
    assert result["beats_trivial"] in (True, False)
    assert result["num_samples"] == 48 and result["steps"] == 8  # the current sample settings, recorded as used
    headline = read_json(cfg.work / "metrics" / "evaluate" / "gaussian-identity-0.json")
    assert set(headline) >= {"fd_classifier", "fd_classifier_low", "fd_classifier_high", "precision", "recall"}
    for name in ("samples.png", "trajectories.png"):
        assert (eval_dir(cfg, IDENTITY["gaussian"]) / name).stat().st_size > 0
    model = load_trained(train_dir(cfg, IDENTITY["gaussian"]))
    images = model.generate(5, steps=4, progress=False)
    assert images.dtype == np.uint8 and images.shape == (5, 1, 8, 8)

    summary = write_report(cfg)  # only gaussian is evaluated: the others are named as missing
    assert summary["best"] == "gaussian" and len(summary["missing"]) == 4
    table = (cfg.work / "report" / "report.md").read_text()
    assert "## Verdict" in table and "**Best: gaussian**" in table and "one seed" in table
    assert f"| gaussian | 0 | {result['held_out_fd_classifier']:.4g} [" in table  # ranked on held-out
    assert f" | {result['fd_classifier']:.4g} [" in table  # and shown against the training split
    assert "| floor (real vs real) | identity |" in table and "| trivial (Gaussian fitted to the latents) |" in table
    assert "Not evaluated (training failed or not run): laplace-identity-0, uniform-identity-0" in table
    for picture in ("samples.png", "scores.png", "curves.png"):
        assert (cfg.work / "report" / picture).stat().st_size > 0


def test_evaluation_samples_with_the_current_settings(encoded):
    """Changed sample settings (which rerun only evaluate under DVC) are what the evaluation uses and records."""
    cfg, *_ = encoded
    train_diffusion(cfg, IDENTITY["laplace"], progress=False)
    first = evaluate(cfg, IDENTITY["laplace"])
    fewer = evaluate(tiny_config(cfg.workdir, "sample.steps=2", "sample.restarts=0"), IDENTITY["laplace"])
    assert (first["steps"], first["restarts"], fewer["steps"], fewer["restarts"]) == (8, 2, 2, 0)
    assert fewer["fd_classifier"] != first["fd_classifier"]


def test_unknown_distribution_and_missing_inputs(tmp_path, encoded):
    cfg, *_ = encoded
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


def test_an_image_grid_has_one_cell_per_image_and_white_gaps(tmp_path):
    """Five 2x3 RGB images, two per row: three rows of cells, 1-pixel white gaps, the last row's second cell empty;
    grey images stay one channel."""
    from PIL import Image

    from tasks.visuals import save_image_grid

    images = np.arange(5 * 3 * 2 * 3, dtype=np.uint8).reshape(5, 3, 2, 3)
    grid = np.asarray(Image.open(save_image_grid(images, tmp_path / "rgb.png", nrow=2, upscale=1)))
    assert grid.shape == (3 * 3 + 1, 2 * 4 + 1, 3)
    assert (grid[0] == 255).all() and (grid[:, 0] == 255).all() and (grid[3] == 255).all()
    assert np.array_equal(grid[4:6, 5:8], images[3].transpose(1, 2, 0))  # row 1, column 1: the fourth image
    assert (grid[7:9, 5:8] == 255).all()  # no sixth image
    grey = np.asarray(Image.open(save_image_grid(images[:, :1], tmp_path / "grey.png", upscale=2)))
    assert grey.shape == (2 * (2 * 3 + 1), 2 * (3 * 4 + 1))


def test_positive_array_data_identity_vs_log_end_to_end(tmp_path):
    """wine (strictly positive, labelled) -> no autoencoder -> identity and log transforms -> MLP denoiser ->
    report. The log model's samples stay positive, even with a heavy-tailed noise and few sampling steps, and
    carry a label column."""
    cfg = tiny_config(tmp_path / "work", "train.steps=30", "train.log_every=10", "train.eval_every=0",
                      "network.hidden=32", "eval.num_samples=200", "eval.bootstrap=3", "sample.steps=5",
                      "diffusion.distributions={student_t: {nu: 3}}", preset="wine")
    assert [v.name for v in cfg.variants()] == ["student_t-identity-0", "student_t-log-0"]
    ingest(cfg)
    assert train_autoencoder(cfg) == {"kind": "none"}
    assert train_classifier(cfg) == {"available": False, "reason": "array data: scored by per-feature distances "
                                                                   "to the held-out split, not by an image classifier"}
    records = {}
    for variant in cfg.variants():
        assert encode_latents(cfg, variant.transform)["latent_shape"] == [16]  # 13 features, 3 one-hot classes
        baselines = compute_baselines(cfg, variant.transform)
        assert baselines["ceiling"] is None if "ceiling" in baselines else "no autoencoder" in baselines["ceiling_note"]
        train_diffusion(cfg, variant, progress=False)
        records[variant.transform] = evaluate(cfg, variant)
    log = records["log"]
    assert log["frac_negative"] == 0.0 and log["champion_metric"] == "c2st_auc"
    # the floor (142 training rows vs the 36 held-out) and the model are scored at the same sample size
    assert log["metric_sample_size"] == 142 and 0 <= log["baselines"]["floor"]["c2st_auc"] < log["c2st_auc"]
    assert log["ceiling_ratio"] is None and log["c2st_auc_low"] < log["c2st_auc"] < log["c2st_auc_high"]
    samples = load_trained(train_dir(cfg, cfg.variants()[1])).generate(300, steps=3, progress=False)
    assert samples.shape == (300, 14) and (samples[:, :13] > 0).all() and set(samples[:, 13]) <= {0, 1, 2}
    header = (eval_dir(cfg, cfg.variants()[1]) / "samples.csv").read_text().splitlines()[0]
    assert header.startswith("alcohol,malic_acid") and header.endswith(",label")
    assert (eval_dir(cfg, cfg.variants()[1]) / "histograms.png").stat().st_size > 0

    summary = write_report(cfg)
    assert set(summary["models"]) == {"student_t-identity-0", "student_t-log-0"}
    expected_best = min(records.values(), key=lambda r: r["c2st_auc"])["transform"]
    assert summary["best"] == ("student_t" if expected_best == "identity" else "student_t-log")
    table = (cfg.work / "report" / "report.md").read_text()
    assert "| student_t-log | 0 |" in table and "| floor (real vs real) | log |" in table
    assert f"{records['log']['c2st_auc']:.4g}" in table and "log: 0 of 1 models drew negative" in table
    assert "## By noise and transform" in table
    for picture in ("scores.png", "histograms.png", "tails.png"):
        assert f"]({picture})" in table and (cfg.work / "report" / picture).stat().st_size > 0


def test_report_without_evaluated_models_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the evaluate stages first"):
        write_report(tiny_config(tmp_path / "work"))


def test_models_scored_on_different_metrics_are_compared_on_one_they_share():
    """FID weights that appear between two partial runs leave some models ranked by fid and others by
    fd_classifier: the report compares all on fd_classifier and says so (it used to crash)."""
    from tasks.report import common_metric

    records = [{"champion_metric": "fid", "fid": 30.0, "fd_classifier": 2.0},
               {"champion_metric": "fd_classifier", "fd_classifier": 3.0}]
    baselines = {"identity": {"floor": {"fd_classifier": 0.5}, "trivial": {"fd_classifier": 6.0}, "ceiling": None}}
    metric, note = common_metric(records, baselines)
    assert metric == "fd_classifier" and "fd_classifier for 1, fid for 1" in note
    assert common_metric(records[1:], baselines) == ("fd_classifier", None)
    with pytest.raises(ValueError, match="share no metric"):
        common_metric([{"champion_metric": "fid", "fid": 1.0}, {"champion_metric": "wasserstein",
                                                                 "wasserstein": 1.0}], {})


def test_replicates_are_summarised_across_seeds(encoded):
    """train.seeds=[0, 1]: one model per seed, a verdict on the mean with its spread, and every metric's mean ±
    standard deviation across the seeds."""
    cfg, *_ = encoded
    seeded = tiny_config(cfg.workdir, "train.seeds=[0,1]", "diffusion.distributions={gaussian: {}, uniform: {}}")
    assert [v.name for v in seeded.variants()] == ["gaussian-identity-0", "gaussian-identity-1",
                                                   "uniform-identity-0", "uniform-identity-1"]
    for variant in seeded.variants():
        train_diffusion(seeded, variant, progress=False)
        evaluate(seeded, variant)
    write_report(seeded)
    table = (seeded.work / "report" / "report.md").read_text()
    assert "spread across 2 seeds" in table and "## Across seeds" in table
    assert re.search(r"\| gaussian \| 2 \| [0-9.]+ ± [0-9.]+ \| [0-9.]+ ± [0-9.]+ \|", table)  # every metric
    assert "| gaussian | 1 | " in table  # each replicate's own row, with its interval


def test_few_step_sampling_of_a_trained_model_and_its_frontier(encoded, tmp_path, monkeypatch):
    """The train stage stores the fitted time schedule; a model file without one (saved before) is fitted when
    first asked, to the same schedule; the samples do not depend on the batch size; the frontier scores settings
    against the references and the report shows it, or says it is stale once the model is trained again."""
    from tasks import frontier
    from tasks.io import save_safetensors, write_json

    cfg, *_ = encoded
    variant = IDENTITY["gaussian"]
    train_diffusion(cfg, variant, progress=False)
    model_file = train_dir(cfg, variant) / MODEL_FILE
    tensors, settings = load_safetensors(model_file, "model")
    model = load_trained(model_file)
    fitted = model.grid("fitted", 5)
    assert fitted[0] == 999 and fitted == sorted(set(fitted), reverse=True) and len(fitted) == 5
    assert "time_schedule.cost" in tensors
    old_file = save_safetensors(cfg.work / "old.safetensors",
                                {k: v for k, v in tensors.items() if not k.startswith("time_schedule.")}, settings)
    old = load_trained(old_file)
    assert old.time_fit is None and old.grid("fitted", 5) == fitted

    def latents(batch_size):
        return model.sample(20, sampler="ddpm", steps=4, batch_size=batch_size, progress=False).latents
    assert torch.allclose(latents(7), latents(20), atol=1e-5)

    baseline = frontier.BASELINE_REFERENCE  # (1000-step ancestral sampling, the other reference, takes seconds)
    monkeypatch.setattr(frontier, "REFERENCES", {baseline: frontier.REFERENCES[baseline]})
    result = frontier.run_frontier(cfg, [variant], ("ddim", "unipc"), ("fitted",), (2, 4), 48, progress=False)
    rows = {(r["reference"] or r["sampler"], r["budget"]): r for r in result["rows"]}
    assert rows[(baseline, None)]["evaluations"] == 87 and rows[("unipc", 4)]["evaluations"] == 4
    assert rows[("unipc", 4)]["ceiling_ratio"] is not None and len(rows) == 5
    assert all(r["fd_classifier_low"] < r["fd_classifier"] < r["fd_classifier_high"] for r in rows.values())
    section = frontier.report_section(cfg, tmp_path)  # what write_report appends to report.md
    assert "## Sampling frontier" in section and "| unipc fitted |" in section and "![frontier](frontier.png)" in section
    assert (tmp_path / "frontier.png").stat().st_size > 0
    result["models"][variant.name]["model_sha256"] = "a model trained since"
    write_json(cfg.work / "frontier" / "frontier.json", result)
    assert "measured models trained again since (gaussian-identity-0)" in frontier.report_section(cfg, tmp_path)
