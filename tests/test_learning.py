"""The offline metric ranks training progress the right way round: on the demo's digits, the same model trained
longer scores better than trained briefly (the multi-scale SWD on 8x8 images used to say the opposite)."""
import shutil
from dataclasses import replace

from tasks import config
from tasks.autoencoder import train_autoencoder
from tasks.baselines import compute_baselines
from tasks.classifier import train_classifier
from tasks.config import Variant
from tasks.encode import encode_latents
from tasks.evaluate import evaluate
from tasks.ingest import ingest
from tasks.train import train_diffusion

SMALL = ["autoencoder.steps=150", "network.hidden=128", "train.batch_size=128", "train.eval_every=0",
         "train.warmup_steps=20", "train.log_every=20", "sample.steps=20", "eval.num_samples=300", "eval.bootstrap=50",
         "diffusion.distributions={gaussian: {}}"]


def test_a_model_trained_longer_scores_better_beyond_the_noise(tmp_path):
    briefly, longer = tmp_path / "briefly", tmp_path / "longer"
    cfg = replace(config.load("demo", SMALL), workdir=str(briefly))
    for stage in (ingest, train_autoencoder, lambda c: encode_latents(c, "identity"), train_classifier,
                  lambda c: compute_baselines(c, "identity")):
        stage(cfg)
    shutil.copytree(briefly, longer)  # the same data, autoencoder, judge and baselines
    variant = Variant("gaussian", "identity")
    scores = {}
    for workdir, steps in ((briefly, 40), (longer, 400)):
        run = replace(config.load("demo", [*SMALL, f"train.steps={steps}", f"train.checkpoint_every={steps}"]),
                      workdir=str(workdir))
        train_diffusion(run, variant, progress=False)
        scores[steps] = evaluate(run, variant)
    brief, long = scores[40], scores[400]
    assert brief["champion_metric"] == long["champion_metric"] == "fd_classifier"
    assert long["fd_classifier_high"] < brief["fd_classifier_low"]  # better, intervals apart
    assert long["beats_trivial"] and long["ceiling_ratio"] < brief["ceiling_ratio"]
