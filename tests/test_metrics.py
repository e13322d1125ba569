"""Evaluation metrics: FID/KID against independent implementations, SWD, array metrics, and the Inception path
with randomly initialised weights (the real ones cannot be downloaded here)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
import torch.nn.functional as F
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.metric_kid import kernel_poly, mmd2

from logdiff_core.metrics import (array_metrics, feature_statistics, frechet_distance, kernel_inception_distance,
                                  sliced_wasserstein_distance)
from tasks import fid

# Inception at 299 px costs about a CPU-second per image here: keep its tests to a handful of small images
INCEPTION_IMAGES, INCEPTION_SIDE = 3, 32


def random_features(n: int, dim: int, seed: int, scale: float = 1.0) -> np.ndarray:
    """n samples of one fixed, well-conditioned correlated Gaussian (the seed only picks the samples)."""
    rotation, _ = np.linalg.qr(np.random.default_rng(1234).standard_normal((dim, dim)))
    mixing = rotation * np.linspace(0.3, 2.0, dim)
    return scale * np.random.default_rng(seed).standard_normal((n, dim)) @ mixing


def scipy_frechet(mu1, sigma1, mu2, sigma2) -> float:
    """The pytorch-fid formula with scipy's sqrtm, as an independent reference."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy_sqrtm():
    stats_a = feature_statistics(random_features(500, 64, seed=0))
    stats_b = feature_statistics(random_features(500, 64, seed=1, scale=1.5) + 0.2)
    assert frechet_distance(*stats_a, *stats_b) == pytest.approx(scipy_frechet(*stats_a, *stats_b), rel=1e-6)


def test_frechet_distance_identical_sets_is_zero_even_when_singular():
    for n in (500, 20):  # 20 samples in 64-d: rank-deficient covariance
        stats = feature_statistics(random_features(n, 64, seed=2))
        assert abs(frechet_distance(*stats, *stats)) < 1e-6


def test_frechet_distance_mean_shift_is_squared_norm():
    mu, sigma = feature_statistics(random_features(500, 64, seed=3))
    shift = np.linspace(-1, 1, 64)
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(shift @ shift, rel=1e-9)
    assert frechet_distance(mu, sigma, mu + 2 * shift, sigma) > frechet_distance(mu, sigma, mu + shift, sigma)


def test_frechet_distance_shape_mismatch_raises():
    mu, sigma = feature_statistics(random_features(100, 8, seed=4))
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(mu, sigma, mu[:4], sigma[:4, :4])
    with pytest.raises(ValueError, match="shapes"):
        frechet_distance(mu, sigma, mu, sigma[:4])


def test_kid_matches_torch_fidelity_on_full_sets():
    # subsets of the full size are permutations, which leave the unbiased MMD unchanged
    f1, f2 = random_features(150, 16, seed=5), random_features(150, 16, seed=6) + 0.3
    kernels = (kernel_poly(a, b, kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1)
               for a, b in ((f1, f1), (f1, f2), (f2, f2)))
    mean, std = kernel_inception_distance(f1, f2, num_subsets=3, subset_size=10_000)
    assert mean == pytest.approx(mmd2(*kernels), rel=1e-9)
    assert std == pytest.approx(0, abs=1e-9)


def test_kid_same_distribution_near_zero_shifted_larger():
    f1, f2 = random_features(400, 32, seed=7), random_features(400, 32, seed=8)
    same, _ = kernel_inception_distance(f1, f2, num_subsets=10, subset_size=200)
    shifted, _ = kernel_inception_distance(f1, f2 + 0.5, num_subsets=10, subset_size=200)
    assert shifted > 0 and abs(same) < 0.05 * shifted


def smooth_images(n: int, channels: int, side: int, seed: int) -> np.ndarray:
    """Bilinear upsampling of a coarse random grid: one distribution of smooth uint8 images."""
    grid = max(side // 4, 2)
    coarse = torch.rand(n, channels, grid, grid, generator=torch.Generator().manual_seed(seed))
    images = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    return (images * 255).round().to(torch.uint8).numpy()


@pytest.mark.parametrize("channels, side, levels", [(1, 8, [8]), (3, 32, [32, 16, 8])])
def test_swd_same_distribution_closer_than_different(channels, side, levels):
    n = 200 if side == 8 else 32
    images = smooth_images(n, channels, side, seed=0)
    same = sliced_wasserstein_distance(images, smooth_images(n, channels, side, seed=1))
    noise = np.random.default_rng(2).integers(0, 256, images.shape, dtype=np.uint8)
    different = sliced_wasserstein_distance(images, noise)
    identical = sliced_wasserstein_distance(images, images.copy())
    assert list(same) == [f"swd_{s}px" for s in levels] + ["swd_mean"]
    assert same["swd_mean"] < different["swd_mean"]
    assert max(identical.values()) < 1e-9
    assert sliced_wasserstein_distance(images, noise) == different  # deterministic for a seed
    assert sliced_wasserstein_distance(images, noise, seed=1) != different


def test_swd_accepts_sets_of_different_sizes_and_rejects_floats():
    images = smooth_images(40, 1, 8, seed=3)
    assert np.isfinite(sliced_wasserstein_distance(images, smooth_images(25, 1, 8, seed=4))["swd_mean"])
    with pytest.raises(ValueError, match="uint8"):
        sliced_wasserstein_distance(images.astype(np.float32), images)


def test_array_metrics_frac_non_positive_counts_entries_and_drops_non_finite_rows():
    reference = np.random.default_rng(5).lognormal(size=(50, 3))
    generated = np.array([[1.0, -1.0, 0.0], [2.0, np.nan, 3.0], [np.inf, 1.0, 1.0], [1.0, 2.0, 3.0]])
    metrics = array_metrics(generated, reference)
    assert metrics["frac_non_positive"] == pytest.approx(4 / 12)
    without_bad_rows = array_metrics(generated[[0, 3]], reference)
    assert all(metrics[k] == without_bad_rows[k] for k in ("wasserstein", "log_wasserstein", "correlation_distance"))
    all_nan = array_metrics(np.full((3, 3), np.nan), reference)
    assert all_nan["frac_non_positive"] == 1.0 and all_nan["wasserstein"] == np.inf
    assert all_nan["log_wasserstein"] == np.inf and all_nan["correlation_distance"] == np.inf


def test_array_metrics_identical_zero_and_shifted_exact():
    reference = np.random.default_rng(6).lognormal(size=(300, 4)) @ np.triu(np.ones((4, 4)))  # correlated
    identical = array_metrics(reference, reference)
    assert identical["frac_non_positive"] == 0
    assert max(identical["wasserstein"], identical["log_wasserstein"], identical["correlation_distance"]) < 1e-12
    scaled = array_metrics(reference * np.exp(0.5), reference)  # a log-scale shift of 0.5 in every feature
    assert scaled["log_wasserstein"] == pytest.approx(np.mean(0.5 / np.log(reference).std(axis=0)), rel=1e-9)
    assert scaled["wasserstein"] > 0.1 and scaled["correlation_distance"] < 1e-12
    # shuffling each column keeps the marginals exactly but destroys the correlations
    rng = np.random.default_rng(7)
    shuffled = array_metrics(np.stack([rng.permutation(col) for col in reference.T], axis=1), reference)
    assert shuffled["wasserstein"] < 1e-12 and shuffled["correlation_distance"] > 0.1


def test_array_metrics_wasserstein_matches_scipy_for_unequal_sizes():
    rng = np.random.default_rng(8)
    generated, reference = rng.gamma(2.0, size=37), rng.gamma(3.0, size=91)
    expected = scipy.stats.wasserstein_distance(generated, reference) / reference.std()
    assert array_metrics(generated[:, None], reference[:, None])["wasserstein"] == pytest.approx(expected, rel=1e-9)
    # non-positive generated values are clipped, not NaN, on the log scale
    assert np.isfinite(array_metrics(-generated[:, None], reference[:, None])["log_wasserstein"])


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory) -> str:
    return str(fid.write_random_inception_weights(tmp_path_factory.mktemp("inception") / "random.pth"))


@pytest.fixture(scope="module")
def inception(inception_weights) -> fid.InceptionFeatures:
    return fid.InceptionFeatures(fid.resolve_fid_weights(inception_weights))  # the public loading path


def test_inception_features_do_not_depend_on_batch_size(inception):
    images = np.random.default_rng(9).integers(0, 256, (INCEPTION_IMAGES, 3, INCEPTION_SIDE, INCEPTION_SIDE),
                                               dtype=np.uint8)
    whole = inception(images, batch_size=INCEPTION_IMAGES)
    assert whole.shape == (INCEPTION_IMAGES, 2048) and whole.dtype == np.float64
    assert np.abs(whole[0] - whole[1]).max() > 1e-3 * np.abs(whole).max()  # distinct images, distinct features
    np.testing.assert_allclose(inception(torch.from_numpy(images), batch_size=2), whole,
                               rtol=1e-4, atol=1e-5 * np.abs(whole).max())


def test_inception_grey_images_equal_their_rgb_copies(inception):
    grey = smooth_images(INCEPTION_IMAGES // 2, 1, INCEPTION_SIDE, seed=10)
    np.testing.assert_allclose(inception(grey), inception(np.repeat(grey, 3, axis=1)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="quantise to uint8 first"):
        inception(grey.astype(np.float32) / 255)


def test_weights_resolution_order(inception_weights, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(fid, "download_weights", lambda url, dest: pytest.fail("no download expected"))
    monkeypatch.setenv(fid.WEIGHTS_ENV, inception_weights)
    assert str(fid.resolve_fid_weights(None)) == inception_weights
    with pytest.raises(fid.FIDUnavailable, match=r"^eval\.fid_weights: .*missing\.pth not found"):
        fid.resolve_fid_weights(str(tmp_path / "missing.pth"))
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(tmp_path / "gone.pth"))
    with pytest.raises(fid.FIDUnavailable, match=rf"^{fid.WEIGHTS_ENV}: .*gone\.pth not found"):
        fid.resolve_fid_weights(None)


def test_weights_download_into_hub_cache_or_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    cached = tmp_path / "hub" / "checkpoints" / fid.WEIGHTS_FILENAME

    def offline(url, dest):
        assert (url, dest) == (URL_INCEPTION_V3, cached) and url.endswith("/" + fid.WEIGHTS_FILENAME)
        raise OSError("[Errno -3] Temporary failure\nin name resolution")

    monkeypatch.setattr(fid, "download_weights", offline)
    with pytest.raises(fid.FIDUnavailable) as error:
        fid.resolve_fid_weights(None)
    message = str(error.value)
    assert "\n" not in message and message.startswith("Inception weights (pt_inception-2015-12-05)")
    assert "Temporary failure in name resolution" in message and fid.WEIGHTS_ENV in message

    def online(url, dest):
        dest.parent.mkdir(parents=True)
        dest.write_bytes(b"weights")

    monkeypatch.setattr(fid, "download_weights", online)
    assert fid.resolve_fid_weights(None) == cached and cached.read_bytes() == b"weights"


def test_download_weights_is_atomic(tmp_path):
    source = tmp_path / "source.pth"
    source.write_bytes(b"x" * 100_000)
    dest = tmp_path / "cache" / "weights.pth"
    fid.download_weights(source.as_uri(), dest)  # file:// exercises the real code path offline
    assert dest.read_bytes() == source.read_bytes()
    with pytest.raises(OSError):
        fid.download_weights((tmp_path / "absent.pth").as_uri(), tmp_path / "cache" / "other.pth")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["weights.pth"]  # no partial files left


def test_reference_features_cached_and_recomputed_on_count_change(tmp_path):
    features = random_features(50, 16, seed=11)
    images = np.zeros((50, 1, 8, 8), np.uint8)
    cache = tmp_path / "ref_features.npz"
    first = fid.reference_features(images, lambda x: features[:len(x)], cache)
    cached = fid.reference_features(images, lambda x: pytest.fail("cache not used"), cache)
    np.testing.assert_array_equal(cached, first)
    np.testing.assert_allclose(first, features, rtol=1e-6)  # stored as float32
    fewer = fid.reference_features(images[:30], lambda x: features[:len(x)], cache)
    np.testing.assert_allclose(fewer, features[:30], rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref_features.npz"]


def fd_scorer(size: int, reference: np.ndarray, bootstrap: int = 100):
    from tasks.scoring import Measure, Scorer

    stats = feature_statistics(reference)
    measure = Measure(("fd",), lambda rows: {"features": rows},
                      lambda rows: {"fd": frechet_distance(*feature_statistics(rows["features"]), *stats)})
    return Scorer("array", size, [measure], "fd", "fd", bootstrap=bootstrap, confidence=0.95, seed=0, notes={})


def test_a_figure_over_several_sets_is_their_mean_and_its_interval_covers_the_expected_value():
    size, sets = 100, 8
    reference = random_features(2000, 6, seed=0)
    scorer = fd_scorer(size, reference)
    shifted = [random_features(size * sets, 6, seed=s) + 0.15 for s in range(1, 61)]
    expected = np.mean([scorer.score(x[i * size:(i + 1) * size])["fd"] for x in shifted for i in range(sets)])
    scores = [scorer.score(x) for x in shifted]
    assert scores[0]["sets"] == sets
    assert scores[0]["fd"] == pytest.approx(np.mean([scorer.score(shifted[0][i * size:(i + 1) * size])["fd"]
                                                     for i in range(sets)]))
    covered = np.mean([s["fd_low"] < expected < s["fd_high"] for s in scores])
    assert 0.85 <= covered <= 1.0, covered
    # one set alone is bootstrapped: about sqrt(8) times as wide as the figure over eight
    one = scorer.score(shifted[0][:size])
    assert one["sets"] == 1 and one["fd_low"] < one["fd"] < one["fd_high"]
    assert (one["fd_high"] - one["fd_low"]) > 2 * (scores[0]["fd_high"] - scores[0]["fd_low"])
    assert "fd_low" not in fd_scorer(size, reference, bootstrap=0).score(shifted[0])  # intervals off


def test_the_ceiling_ratio_carries_the_models_interval():
    """x ceiling = (model - floor) / (ceiling - floor), and its interval is the model's mapped the same way."""
    from tasks.evaluate import read_against_baselines
    from tasks.scoring import format_ceiling_ratio

    baselines = {"floor": {"fd": 1.0}, "ceiling": {"fd": 1.5}, "trivial": {"fd": 10.0, "fd_low": 9.0}}
    reading = read_against_baselines({"fd": 2.0, "fd_low": 1.8, "fd_high": 2.2}, baselines, "fd")
    assert reading["beats_trivial"] is True
    assert [reading[f"ceiling_ratio{k}"] for k in ("", "_low", "_high")] == pytest.approx([2.0, 1.6, 2.4])
    assert format_ceiling_ratio(reading) == "2.00 [1.60, 2.40]"
    no_interval = read_against_baselines({"fd": 1.25}, baselines, "fd")
    assert "ceiling_ratio_low" not in no_interval and format_ceiling_ratio(no_interval) == "0.50"
    no_ceiling = read_against_baselines({"fd": 2.0, "fd_low": 1.8, "fd_high": 2.2}, {"floor": {"fd": 1.0}}, "fd")
    assert no_ceiling["ceiling_ratio"] is None and format_ceiling_ratio(no_ceiling) == "n/a"


def test_bounded_metrics_get_intervals_inside_their_range():
    """A share near 0 (a recall of 0.001) gets a percentile interval that stays at or above 0, where value +- z SE
    would go below it; an unbounded metric keeps the normal interval."""
    from logdiff_core.intervals import wilson_interval
    from tasks.scoring import PROPORTION, Measure, Scorer

    measure = Measure(("share", "unbounded"), lambda rows: {"hits": rows},
                      lambda rows: {"share": float(rows["hits"].mean()), "unbounded": float(rows["hits"].mean())},
                      bounds={"share": PROPORTION})
    scorer = Scorer("array", 1000, [measure], "share", "share", bootstrap=200, confidence=0.95, seed=0, notes={})
    one_hit = np.zeros(1000)
    one_hit[7] = 1
    for samples in (one_hit, np.concatenate([one_hit, np.zeros(4000)])):  # one set (bootstrapped), five sets
        scores = scorer.score(samples)
        assert 0 <= scores["share_low"] <= scores["share"] < scores["share_high"] <= 1, scores
        assert scores["unbounded_low"] < 0  # what the share's interval would have been
    assert wilson_interval(0, 1000) == (0.0, pytest.approx(0.00383, abs=1e-5))
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
