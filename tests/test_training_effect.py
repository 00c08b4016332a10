"""Training shows the effect: the slow head improves, nothing collapses."""

import keras
import numpy as np
import pytest

import keras_olm
from keras_olm.synthetic import make_imbalanced


def encoder():
    return keras.Sequential(
        [
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(32, activation="relu"),
        ]
    )


def train(balancer, epochs, num_samples=2000, seed=0):
    x, y = make_imbalanced(num_samples, seed=seed)
    keras.utils.set_random_seed(seed)
    model = keras_olm.BalancedMultimodalModel(
        {"fast": encoder(), "slow": encoder()},
        num_classes=4,
        balancer=balancer,
    )
    model.compile(optimizer="adam")
    history = model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model, history


@pytest.fixture(scope="module")
def test_set():
    return make_imbalanced(2000, seed=1000)


def head_figures(model, test_set):
    x, y = test_set
    logits = model.predict_heads(x)
    acc = {h: float(np.mean(v.argmax(-1) == y)) for h, v in logits.items()}
    norm = {
        h: float(np.mean(np.linalg.norm(v, axis=-1))) for h, v in logits.items()
    }
    return acc, norm


def test_olm_raises_the_slow_heads_accuracy_and_logit_norm(test_set):
    plain, _ = train(None, epochs=12)
    olm, _ = train("olm", epochs=12)
    plain_acc, plain_norm = head_figures(plain, test_set)
    olm_acc, olm_norm = head_figures(olm, test_set)
    print("plain", plain_acc, plain_norm)
    print("olm", olm_acc, olm_norm)
    # Joint training leaves the slow modality behind the fused model.
    assert plain_acc["slow"] < plain_acc["fused"] - 0.15
    # OLM trains it further: measured on TF/JAX/torch: +0.03 to +0.05.
    assert olm_acc["slow"] >= plain_acc["slow"] + 0.015
    assert olm_norm["slow"] > 1.1 * plain_norm["slow"]
    # And the fused prediction is not worse for it.
    assert olm_acc["fused"] >= plain_acc["fused"] - 0.01


def test_default_coefficients_stay_sane_where_the_authors_collapse():
    # 375 steps with a coefficient learning rate 5x the default stand in
    # for ~1,900 steps at the default rate, to keep the test short.
    steps = int(np.ceil(900 / 64))
    _, ours = train(
        keras_olm.OLM(learning_rate=5e-3), epochs=25, num_samples=1000
    )
    _, authors = train(
        keras_olm.OLM.authors(steps_per_epoch=steps, learning_rate=5e-3),
        epochs=25,
        num_samples=1000,
    )
    heads = ("fast", "slow", "fused")
    ours_coef = np.array([ours.history[f"{h}_coef"] for h in heads])
    authors_coef = np.array([authors.history[f"{h}_coef"] for h in heads])
    print("ours", ours_coef[:, -1], "authors", authors_coef[:, -1])
    # Every epoch, every head: no collapse to 0, no explosion.
    assert ours_coef.min() > 0.12
    assert ours_coef.max() < 4.0
    # The authors' algorithm on the same problem: λ one-hot, the
    # coefficients driven to 0 (the failure measured in the spec).
    assert authors_coef[:, -1].max() < 0.05
