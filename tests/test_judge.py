"""The judge classifier and the metrics in its features: it learns digits to >= 97% in seconds, and its Fréchet
distance, precision/recall and class entropy see what a person sees (blur, noise, missing classes)."""
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from sklearn.datasets import load_digits

from logdiff_core.classifier import Judge, accuracy, augment, predict, to_input, train_judge
from logdiff_core.metrics import (class_entropy, feature_statistics, frechet_distance,
                                  precision_recall, precision_recall_indicators)


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    images = np.round(data.images * 255 / 16).astype(np.uint8)[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    held_out, train = order[:450], order[450:]
    return images[train], data.target[train], images[held_out], data.target[held_out]


@pytest.fixture(scope="module")
def judge(digits):
    train_images, train_labels, _, _ = digits
    torch.manual_seed(0)
    model = Judge(1, 10, image_size=8, base_channels=32)
    record = train_judge(model, train_images, train_labels, steps=300, batch_size=128, lr=2e-3,
                         generator=torch.Generator().manual_seed(0), progress=False)
    return model, record, predict(model, train_images)[0]


def test_the_digits_judge_is_accurate_within_seconds(digits, judge):
    _, _, held_out, labels = digits
    model, record, _ = judge
    assert accuracy(predict(model, held_out)[1], labels) >= 0.97
    assert record["seconds"] < 30 and model.feature_dim == 64


def score(judge, images):
    model, _, reference = judge
    features, probabilities = predict(model, images)
    precision, recall = precision_recall(reference[:len(images)], features)
    return frechet_distance(*feature_statistics(features), *feature_statistics(reference)), precision, recall, \
        class_entropy(probabilities)


def test_real_digits_score_near_the_floor_and_blur_and_noise_score_monotonically_worse(digits, judge):
    _, _, held_out, _ = digits
    real_fd, real_precision, real_recall, real_entropy = score(judge, held_out)
    assert real_precision > 0.8 and real_recall > 0.8 and real_entropy == pytest.approx(np.log(10), abs=0.02)
    blurred = [score(judge, np.clip(gaussian_filter(held_out.astype(float), (0, 0, s, s)), 0, 255).round()
                     .astype(np.uint8)) for s in (0.5, 1.0, 1.5)]
    rng = np.random.default_rng(0)
    noisy = [score(judge, np.clip(held_out + rng.normal(0, s, held_out.shape), 0, 255).round().astype(np.uint8))
             for s in (16, 32, 64)]
    for degraded in (blurred, noisy):
        fds = [real_fd] + [fd for fd, *_ in degraded]
        recalls = [real_recall] + [recall for _, _, recall, _ in degraded]
        assert fds == sorted(fds) and fds[-1] > 5 * real_fd
        # recall falls with the strength; a step may tie within sampling noise (a few of the 450 samples)
        assert all(after <= before + 0.02 for before, after in zip(recalls, recalls[1:]))
        assert recalls[-1] < recalls[0] - 0.1, recalls
    precisions = [p for _, p, _, _ in blurred]
    assert all(after <= before + 0.02 for before, after in zip(precisions, precisions[1:]))
    assert precisions[-1] < precisions[0] - 0.1, precisions


def test_dropping_classes_scores_worse_and_lowers_entropy_and_recall(digits, judge):
    _, _, held_out, labels = digits
    rng = np.random.default_rng(0)
    scores = [score(judge, held_out)] + [score(judge, held_out[rng.choice(np.flatnonzero(labels < k), len(labels))])
                                         for k in (5, 2)]
    fds, _, recalls, entropies = zip(*scores)
    assert list(fds) == sorted(fds) and list(recalls) == sorted(recalls, reverse=True)
    assert list(entropies) == sorted(entropies, reverse=True)
    assert entropies[1] == pytest.approx(np.log(5), abs=0.1) and entropies[2] == pytest.approx(np.log(2), abs=0.1)


def test_the_resnet_judge_for_32px_colour_images_trains_and_is_deterministic():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8)
    labels = np.arange(64) % 4
    images[labels == 1, 0] //= 4  # something to learn: class 1 has little red
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = Judge(3, 4, image_size=32, base_channels=8)
        record = train_judge(model, images, labels, steps=12, batch_size=16, lr=3e-3,
                             generator=torch.Generator().manual_seed(0), progress=False)
        weights.append(model.head.weight.detach().clone())
    assert model.feature_dim == 64 and np.isfinite(record["final_loss"])
    assert torch.equal(weights[0], weights[1])
    features, probabilities = predict(model, images)
    assert features.shape == (64, 64) and probabilities.shape == (64, 4)
    assert np.allclose(probabilities.sum(1), 1)


def test_augmentation_translates_with_background_and_flips_only_colour_images():
    digit = torch.full((1, 1, 8, 8), -1.0)
    digit[0, 0, 3:5, 3:5] = 1.0
    shifted = augment(digit.repeat(64, 1, 1, 1), torch.Generator().manual_seed(0))
    assert shifted.shape == (64, 1, 8, 8) and (shifted.sum(dim=(1, 2, 3)) == digit.sum()).all()  # moved, not cut
    assert len({tuple(map(int, torch.nonzero(s[0] > 0)[0])) for s in shifted}) > 1
    half = torch.full((1, 3, 32, 32), -1.0)
    half[..., :16] = 1.0  # bright left half: column 4 stays bright under any shift, and turns dark when flipped
    flipped = augment(half.repeat(64, 1, 1, 1), torch.Generator().manual_seed(0))
    assert (flipped[:, 0, 16, 4] < 0).any() and (flipped[:, 0, 16, 4] > 0).any()
    assert torch.equal(to_input(np.full((1, 1, 2, 2), 255, np.uint8)), torch.ones(1, 1, 2, 2))


def brute_force_precision_recall(real, fake, k):
    def radius(points, i):
        return np.sort(np.linalg.norm(points - points[i], axis=1))[k]
    precision = np.mean([any(np.linalg.norm(f - r) <= radius(real, j) for j, r in enumerate(real)) for f in fake])
    recall = np.mean([any(np.linalg.norm(r - f) <= radius(fake, j) for j, f in enumerate(fake)) for r in real])
    return precision, recall


def test_precision_recall_match_brute_force_and_known_cases():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(60, 3)), rng.normal(0.7, 1.3, size=(50, 3))
    assert precision_recall(real, fake, k=3) == pytest.approx(brute_force_precision_recall(real, fake, 3))
    assert precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
    assert precision_recall(real, real + 100, k=3) == (0.0, 0.0)
    fake_in_real, real_in_fake = precision_recall_indicators(real, fake, k=3)
    assert fake_in_real.shape == (50,) and real_in_fake.shape == (60,) and fake_in_real.dtype == bool
    with pytest.raises(ValueError, match="more than 3 samples"):
        precision_recall(real[:3], fake)


def test_class_entropy_counts_covered_classes():
    assert class_entropy(np.eye(4)) == pytest.approx(np.log(4))
    assert class_entropy(np.tile([0.7, 0.1, 0.1, 0.1], (10, 1))) == 0.0  # soft, but always the same class
