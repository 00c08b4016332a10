"""The family of generated problems: shapes, seeds, intended properties.

The properties are checked with closed-form numpy classifiers (nearest
class mean; least squares on one-hot labels), so the tests take well under
a second: "dominant" is the modality a nearest-mean classifier reads best,
"overfits" a train-minus-test accuracy gap of least squares of at least
0.05 (at most 0.02 for a modality that generalizes).
"""

import numpy as np
import pytest

from keras_olm.synthetic import PROBLEMS
from keras_olm.synthetic import make_imbalanced
from keras_olm.synthetic import make_modalities
from keras_olm.synthetic import make_problem

NUM_TRAIN = 1800


def nearest_mean_accuracy(x, y, x_test, y_test, labels=None):
    labels = y if labels is None else labels
    classes = np.unique(labels)
    means = np.stack([x[labels == c].mean(0) for c in classes])
    dist = ((x_test[:, None, :] - means[None]) ** 2).sum(-1)
    return float(np.mean(classes[dist.argmin(1)] == y_test))


def least_squares_gap(x, y, x_test, y_test):
    """Train accuracy minus test accuracy of a least-squares classifier."""

    def design(v):
        return np.c_[v, np.ones(len(v))]

    targets = np.eye(4)[y]
    a = design(x)
    weights = np.linalg.solve(
        a.T @ a + 1e-3 * np.eye(a.shape[1]), a.T @ targets
    )
    train = np.mean((a @ weights).argmax(1) == y)
    test = np.mean((design(x_test) @ weights).argmax(1) == y_test)
    return float(train - test)


@pytest.fixture(scope="module", params=list(PROBLEMS))
def problem(request):
    name = request.param
    return (
        name,
        make_problem(name, NUM_TRAIN, seed=0),
        make_problem(name, 2000, seed=1000),
    )


def test_family_has_the_named_members():
    assert {
        "dominant-generalizes",
        "weak-overfits",
        "dominant-overfits",
        "complementary",
        "both-overfit",
        "three-modalities",
    } <= set(PROBLEMS)


def test_shapes_and_dtypes(problem):
    name, (x, y), _ = problem
    assert y.shape == (NUM_TRAIN,) and y.dtype == np.int32
    assert set(np.unique(y)) == {0, 1, 2, 3}
    assert list(x) == list(PROBLEMS[name])
    for modality, knobs in PROBLEMS[name].items():
        assert x[modality].shape == (NUM_TRAIN, knobs["dim"])
        assert x[modality].dtype == np.float32


def test_determinism_by_seed():
    x1, y1 = make_problem("complementary", 100, seed=3)
    x2, y2 = make_problem("complementary", 100, seed=3)
    x3, y3 = make_problem("complementary", 100, seed=4)
    np.testing.assert_array_equal(y1, y2)
    for m in x1:
        np.testing.assert_array_equal(x1[m], x2[m])
    assert not np.array_equal(x1["slow"], x3["slow"])


def test_every_seed_draws_the_same_problem():
    # The class means come from the problem, not the seed: a classifier
    # fitted on one seed's samples reads another seed's as well.
    x, y = make_problem("weak-overfits", 4000, seed=0)
    x_other, y_other = make_problem("weak-overfits", 4000, seed=7)
    same = nearest_mean_accuracy(x["fast"], y, x["fast"], y)
    other = nearest_mean_accuracy(x["fast"], y, x_other["fast"], y_other)
    assert other > same - 0.03


def test_dominant_modality_is_read_best(problem):
    name, (x, y), (x_test, y_test) = problem
    if name == "complementary":
        pytest.skip("the dominant modality only shows pairs there")
    acc = {m: nearest_mean_accuracy(x[m], y, x_test[m], y_test) for m in x}
    assert acc["fast"] > max(v for m, v in acc.items() if m != "fast")


@pytest.mark.parametrize(
    "name, overfits, generalizes",
    [
        ("dominant-generalizes", [], ["fast"]),
        ("weak-overfits", ["slow"], ["fast"]),
        ("dominant-overfits", ["fast"], ["slow"]),
        ("both-overfit", ["fast", "slow"], []),
        ("three-modalities", ["slow", "slow2"], ["fast"]),
    ],
)
def test_intended_modalities_overfit(name, overfits, generalizes):
    x, y = make_problem(name, NUM_TRAIN, seed=0)
    x_test, y_test = make_problem(name, 2000, seed=1000)
    gap = {m: least_squares_gap(x[m], y, x_test[m], y_test) for m in x}
    for m in overfits:
        assert gap[m] >= 0.05, (m, gap)
    for m in generalizes:
        assert gap[m] <= 0.02, (m, gap)


def test_complementary_only_the_weak_modality_splits_pairs():
    x, y = make_problem("complementary", NUM_TRAIN, seed=0)
    x_test, y_test = make_problem("complementary", 2000, seed=1000)
    pair = nearest_mean_accuracy(x["fast"], y // 2, x_test["fast"], y_test // 2)
    fast = nearest_mean_accuracy(x["fast"], y, x_test["fast"], y_test)
    slow = nearest_mean_accuracy(x["slow"], y, x_test["slow"], y_test)
    assert pair > 0.9  # the fast modality tells the pairs apart...
    assert fast < 0.55  # ...but not the classes within a pair
    assert slow > 0.8


def test_three_modalities_each_add_information():
    x, y = make_problem("three-modalities", NUM_TRAIN, seed=0)
    x_test, y_test = make_problem("three-modalities", 2000, seed=1000)
    assert list(x) == ["fast", "slow", "slow2"]
    single = max(nearest_mean_accuracy(x[m], y, x_test[m], y_test) for m in x)
    joined = nearest_mean_accuracy(
        np.concatenate(list(x.values()), 1),
        y,
        np.concatenate(list(x_test.values()), 1),
        y_test,
    )
    assert joined > single + 0.03


def test_make_modalities_knobs():
    x, y = make_modalities(
        {"a": dict(dim=5, informative=2, separation=3.0, shows="pair")},
        num_samples=400,
        seed=1,
    )
    assert x["a"].shape == (400, 5)
    # Only the first two dimensions carry the (pair) means.
    means = np.stack([x["a"][y // 2 == k].mean(0) for k in (0, 1)])
    assert np.abs(means[:, 2:]).max() < 0.25
    np.testing.assert_allclose(
        np.linalg.norm(means[:, :2], axis=1), [3.0, 3.0], atol=0.3
    )
    with pytest.raises(ValueError, match="shows"):
        make_modalities({"a": dict(dim=2, separation=1.0, shows="x")})
    with pytest.raises(ValueError, match="name"):
        make_problem("no-such-problem")


def test_make_imbalanced_is_unchanged():
    x, y = make_imbalanced(50, seed=0)
    assert x["fast"].shape == (50, 16) and x["slow"].shape == (50, 64)
    x2, y2 = make_imbalanced(50, seed=0)
    np.testing.assert_array_equal(x["fast"], x2["fast"])
    np.testing.assert_array_equal(y, y2)
