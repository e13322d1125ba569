"""The data-copying tests (logdiff_core/copying.py) on cases with known answers, in the pixels of scikit-learn's
8x8 digits: a "model" that returns training images is flagged as copying, held-out images are not, and a blurred
training mean is flagged as underfitting, not copying."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from sklearn.datasets import load_digits

from logdiff_core import copying


@pytest.fixture(scope="module")
def digits():
    """Training, held-out and unseen digits (pixels in [0, 1]), the training set's k-means cells and dimension."""
    images = load_digits().images / 16.0
    order = np.random.default_rng(0).permutation(len(images))
    train, held_out, unseen = (images[order[a:b]].reshape(-1, 64) for a, b in ((0, 1100), (1100, 1450), (1450, 1797)))
    return train, held_out, unseen, copying.kmeans_cells(train, 3, seed=0), copying.intrinsic_dimension(train)


def figures(digits, generated):
    train, held_out, _, centroids, dimension = digits
    nearest = copying.nearest(generated, train)[0][:, 0]
    held_out_nearest = copying.nearest(held_out, train)[0][:, 0]
    return {**copying.data_copying_statistic(train, held_out, generated, centroids),
            **copying.near_copy_shares(nearest, held_out_nearest),
            **copying.copying_rate(train, generated, dimension)}


def test_a_model_returning_training_images_copies(digits):
    train = digits[0]
    returned = train[np.random.default_rng(1).integers(0, len(train), 600)]
    found = figures(digits, returned)
    assert found["c_t"] < -3 and found["reading"] == "copies"
    assert found["near_copy_5"] == 1.0 and found["copying_rate"] == 1.0


def test_a_model_returning_slightly_noised_training_images_still_copies(digits):
    train = digits[0]
    rng = np.random.default_rng(2)
    returned = np.clip(train[rng.integers(0, len(train), 600)] + rng.normal(0, 0.03, (600, 64)), 0, 1)
    found = figures(digits, returned)
    assert found["reading"] == "copies" and found["copying_rate"] > 0.9


def test_held_out_images_are_not_flagged(digits):
    """Real digits have near-twins of their own (the same writer): 2% of them lie in a copied region, the rate a
    generator that generalises like real data scores (the report shows the held-out split's beside the models')."""
    found = figures(digits, digits[2])  # digits none of the sets above hold
    assert -3 < found["c_t"] < 3 and found["reading"] == "generalises"
    assert found["near_copy_5"] < 0.1 and found["copying_rate"] < 0.05


def test_a_blurred_training_mean_underfits_and_does_not_copy(digits):
    mean = gaussian_filter(digits[0].mean(axis=0).reshape(8, 8), 1.0).reshape(64)
    found = figures(digits, np.repeat(mean[None], 300, axis=0))
    assert found["c_t"] > 3 and found["reading"] == "underfits"
    assert found["near_copy_5"] == 0.0 and found["copying_rate"] == 0.0


def test_copying_in_one_cell_can_hide_from_c_t_but_not_from_the_copying_rate(digits):
    """Half the samples copied, half a blurred mean: C_T averages the two cells' opposite z to nothing copying,
    the point-by-point rate still finds the copies (Bhattacharjee et al.'s argument)."""
    train = digits[0]
    mean = gaussian_filter(train.mean(axis=0).reshape(8, 8), 1.0).reshape(64)
    copied = train[np.random.default_rng(3).integers(0, len(train), 150)]
    mixed = np.concatenate([copied, np.repeat(mean[None], 450, axis=0)])
    found = figures(digits, mixed)
    assert found["reading"] != "copies" and found["copying_rate"] == pytest.approx(0.25, abs=0.02)


def test_nearest_skips_itself_and_the_z_score_follows_meehan_et_al():
    points = np.array([[0.0], [1.0], [3.0]])
    distances, indices = copying.nearest(points, points, k=1, exclude_self=True)
    assert distances[:, 0].tolist() == [1.0, 1.0, 2.0] and indices[:, 0].tolist() == [1, 0, 1]
    # every generated distance below every held-out one: U = 0, z = (0 - (n m / 2 - 0.5)) / sd
    z = copying.mann_whitney_z(np.zeros(4), np.ones(5))
    assert z == pytest.approx(-(10 - 0.5) / np.sqrt(20 * 10 / 12))


def test_the_intrinsic_dimension_of_a_plane_in_ten_dimensions_is_two():
    rng = np.random.default_rng(0)
    plane = rng.uniform(size=(2000, 2)) @ rng.normal(size=(2, 10))
    assert copying.intrinsic_dimension(plane) == pytest.approx(2, abs=0.3)


def test_a_copying_rate_the_trivial_generator_also_reaches_is_no_copying():
    """Samples crowded into few places (mode collapse) raise the point-by-point copying rate without copying: the
    trivial generator, which cannot copy, sets the bar beside the held-out split."""
    from tasks.config import Variant
    from tasks.copying import copying_verdict

    crowded = {"judge": {"reading": "generalises", "c_t": 0.3, "copying_rate": 0.68}}
    baselines = {"identity": {"copying_reference": {"judge": {"held_out_copying_rate": 0.12}},
                              "copying": {"trivial": {"judge": {"reading": "generalises", "c_t": 1.1,
                                                                "copying_rate": 0.62}}}}}
    record = {Variant("gaussian", "identity"): {"copying": crowded}}
    assert copying_verdict(record, baselines)[0].startswith("No model copies")
    baselines["identity"]["copying"]["trivial"]["judge"]["copying_rate"] = 0.02
    assert copying_verdict(record, baselines)[0].startswith("**Copies its training data**")
    copier = {Variant("gaussian", "identity"): {"copying": {"judge": {"reading": "copies", "c_t": -9.0,
                                                                      "copying_rate": 0.9}}}}
    assert copying_verdict(copier, {})[0].startswith("**Copies its training data**")
