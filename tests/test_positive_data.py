"""Zero-inflated positive tables: the zero-safe log transform, modelled labels and the tabular measures."""
import math

import numpy as np
import pytest
import torch

from logdiff_core import transforms
from tasks.codec import Codec
from tasks.tabular import c2st_auc, tabular_metrics, tstr_accuracy, zero_share_error


def zero_inflated(n=400, seed=0) -> torch.Tensor:
    """Three skewed positive features; the first two are exact zeros together in about 10% of rows."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(mean=[-3.0, 0.0, 2.0], sigma=[1.0, 0.5, 0.8], size=(n, 3))
    x[rng.random(n) < 0.1, :2] = 0.0
    return torch.from_numpy(x)


def test_zero_safe_log_is_exact_on_the_data_and_keeps_its_zeros():
    x = zero_inflated()
    fitted = transforms.get("zero_safe_log").fit(x)
    y = fitted.forward(x)
    assert y.shape == (400, 3) and torch.equal(y[:, 2], x[:, 2].log())  # no zeros in the last feature: its log
    back = fitted.inverse(y)
    assert torch.equal(back == 0, x == 0) and torch.allclose(back, x, rtol=1e-12, atol=0)
    restored = transforms.from_state(fitted.state_dict()).inverse(y)
    assert torch.equal(restored, back)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_safe_log_samples_are_never_negative_and_zero_below_the_midpoint(dtype):
    fitted = transforms.get("zero_safe_log").fit(zero_inflated())
    m0, m1 = (math.sqrt(3) * fitted.shift[:2]).log().tolist()  # between a zero's image log(c) and log(3c)'s
    latent = torch.tensor([[-1e4, math.inf, -1e4], [math.inf, -math.inf, 1e4], [math.nan, 0.0, 0.0],
                           [m0 - 1e-3, m1 + 1e-3, 0.0], [m0 + 1e-3, m1 - 1e-3, 0.0]], dtype=dtype)
    x = fitted.inverse(latent)
    assert x.dtype == dtype and torch.isnan(x[2, 0]) and torch.isfinite(x[[0, 1, 3, 4]]).all()
    assert (x[torch.isfinite(x)] >= 0).all()
    assert x[0, 0] == 0 and x[0, 2] > 0 and x[1, 1] == 0 and x[1, 0] > 0  # far below: a zero where zeros were seen
    assert x[3, 0] == 0 and x[3, 1] > 0 and x[4, 0] > 0 and x[4, 1] == 0  # either side of the midpoint


def test_a_model_near_the_data_keeps_its_share_of_zeros():
    """Zeros sit log(3) below the smallest positive value: noise well inside half that gap (here 0.1 in log
    units) turns no zero into a value and no value into a zero."""
    x = zero_inflated(2000)
    fitted = transforms.get("zero_safe_log").fit(x)
    noisy = fitted.forward(x) + 0.1 * torch.randn(2000, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(fitted.inverse(noisy) == 0, x == 0)


@pytest.mark.parametrize("values,match", [([[1.0, -0.5]], "needs finite x >= 0"),
                                          ([[1.0, math.nan]], "needs finite x >= 0")])
def test_zero_safe_log_refuses_negative_or_missing_values_in_one_line(values, match):
    with pytest.raises(ValueError, match=match) as err:
        transforms.get("zero_safe_log").fit(torch.tensor(values))
    assert "\n" not in str(err.value)


def test_a_zero_in_a_feature_fitted_without_zeros_is_a_clear_error():
    fitted = transforms.get("zero_safe_log").fit(zero_inflated())
    with pytest.raises(ValueError, match="feature 2 has zeros but had none"):
        fitted.forward(torch.tensor([[0.1, 0.2, 0.0]], dtype=torch.float64))


def test_codec_models_labels_as_one_hot_channels_and_decodes_a_label_column():
    x = zero_inflated(50).float()
    labels = np.arange(50) % 3
    transform = transforms.get("zero_safe_log").fit(x.double())
    codec = Codec("array", transform, None, torch.zeros(()), torch.ones(()), (), classes=3)
    encoded = codec.encode(x.numpy(), labels)
    assert encoded.shape == (50, 6)  # 3 features, 3 one-hot channels
    decoded = Codec.from_safe(*codec.to_safe()).decode(encoded)
    assert decoded.shape == (50, 4) and np.array_equal(decoded[:, -1], labels)
    assert np.allclose(decoded[:, :3], x.numpy(), rtol=1e-6) and np.array_equal(decoded[:, :3] == 0, x.numpy() == 0)


def test_the_two_sample_test_tells_a_shifted_table_from_a_real_one():
    rng = np.random.default_rng(0)
    real, same = rng.normal(size=(150, 3)), rng.normal(size=(150, 3))
    assert abs(c2st_auc(same, real) - 0.5) < 0.1
    assert c2st_auc(same + [2.0, 0.0, 0.0], real) > 0.75
    # copies of one row (a bootstrap resample) are never split between training and held-out folds
    assert c2st_auc(real[rng.integers(0, 150, 150)], real) < 0.65


def test_train_on_synthetic_accuracy_and_the_share_of_zeros():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(200, 2))
    labels = (features[:, 0] > 0).astype(float)
    assert tstr_accuracy(features[:100], labels[:100], features[100:], labels[100:]) > 0.9
    assert tstr_accuracy(features[:100], 1 - labels[:100], features[100:], labels[100:]) < 0.1  # labels swapped
    assert tstr_accuracy(features[:100], np.ones(100), features[100:], labels[100:]) == np.mean(labels[100:] == 1)
    generated, reference = np.ones((10, 3)), np.ones((20, 3))
    reference[:4, 0] = 0  # 20% zeros in one feature, none generated; no zeros elsewhere on either side
    assert zero_share_error(generated, reference) == pytest.approx(0.2)
    assert zero_share_error(np.ones((5, 2)), np.ones((5, 2))) == 0.0


def test_tabular_metrics_score_the_features_and_count_values_outside_the_support():
    rng = np.random.default_rng(2)
    reference = np.column_stack([rng.lognormal(size=(120, 2)), rng.integers(0, 2, 120)])
    generated = reference.copy()
    generated[0, 0] = -1.0
    generated[1, 1] = math.nan  # left out of the distances, counted as outside the support
    generated[2, 1] = 3 * reference[:, 1].max()  # beyond one range above the maximum
    scores = tabular_metrics(generated, reference, labels=True)
    assert scores["frac_negative"] == pytest.approx(2 / 240)
    assert scores["frac_far_rows"] == pytest.approx(2 / 120)  # the NaN row and the far one (-1 is within a range)
    assert scores["ks"] < 0.02 and scores["zero_share_error"] == 0 and scores["tstr_accuracy"] >= 0
    assert set(scores) == {"c2st_auc", "wasserstein", "ks", "quantile_01_error", "quantile_99_error",
                           "zero_share_error", "correlation_distance", "frac_negative", "frac_far_rows", "tstr_accuracy"}


def test_a_config_names_models_of_one_law_and_checks_them_in_one_line(tmp_path):
    from tasks import config
    from tasks.ingest import check_source

    cfg = config.load("breast_cancer")
    assert cfg.diffusion.distributions["stable_15"] == {"distribution": "alpha_stable", "alpha": 1.5}
    check_source(cfg.data, cfg.diffusion.transforms, cfg.diffusion.log_floor)  # zeros: fine for both logs here
    cases = {"diffusion.distributions={stable_1.5: {distribution: alpha_stable}}": "use letters, digits and '_'",
             "diffusion.distributions={heavy: {distribution: alpha_stable, alpha: 2.5}}": "heavy: alpha_stable needs",
             "diffusion.distributions={heavy: {alpha: 1.5}}": "unknown noise distribution 'heavy'.*distribution:"}
    for override, message in cases.items():
        with pytest.raises(config.ConfigError, match=message) as err:
            config.load("breast_cancer", [override])
        assert "\n" not in str(err.value)
    for override, message in {"diffusion.labels=true": "diffusion.labels: .*images",
                              "diffusion.transforms=[identity, zero_safe_log]": "zero_safe_log is for positive array"}.items():
        with pytest.raises(config.ConfigError, match=message):
            config.load("demo", [override])
    negative = tmp_path / "negative.npy"
    np.save(negative, np.array([[1.0, 0.0], [2.0, -0.5]]))
    cfg = config.load("breast_cancer", ["data.source=arrays", f"data.path={negative}", "diffusion.transforms="
                                        "[zero_safe_log]", "diffusion.labels=false"])
    with pytest.raises(ValueError, match=r"zero_safe_log transform needs values >= 0, and 1 of 4"):
        check_source(cfg.data, cfg.diffusion.transforms, cfg.diffusion.log_floor)
