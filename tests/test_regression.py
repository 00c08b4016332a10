"""Regression heads of BalancedMultimodalModel (MER-MULTI's valence)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from olm_testing import tiny_encoder

import keras_olm
from keras_olm.held_out import StepBatch


def make_data(n, seed):
    """Two modalities, 3 classes, a valence linear in the 'slow' input."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    fast = rng.normal(size=(n, 6)).astype("float32")
    fast[np.arange(n), y] += 2.0
    slow = rng.normal(size=(n, 5)).astype("float32")
    valence = (1.5 * slow[:, 0] - slow[:, 1] + 0.5 * y).astype("float32")
    return {"fast": fast, "slow": slow}, {"label": y, "valence": valence}


def model_with_valence(balancer="olm", weight=1.0):
    return keras_olm.BalancedMultimodalModel(
        {"fast": tiny_encoder(), "slow": tiny_encoder()},
        num_classes=3,
        balancer=balancer,
        regression_targets={"valence": 1},
        regression_weight=weight,
    )


@pytest.fixture(scope="module")
def data():
    return make_data(320, 0), make_data(96, 1)


def np_(x):
    return keras.ops.convert_to_numpy(x)


def test_loss_adds_weighted_mse_to_the_heads_losses(data):
    (x, y), _ = data
    model = model_with_valence(balancer="heads", weight=0.5)
    batch = {m: v[:16] for m, v in x.items()}
    targets = {k: v[:16] for k, v in y.items()}
    total, (logits, head_losses, _, pred) = model._compute_loss(
        StepBatch(batch, targets), training=False
    )
    ce = []
    for h in model.head_names:
        z = np_(logits[h]).astype("float64")
        z = z - z.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        ce.append(-logp[np.arange(16), targets["label"]].mean())
    mse = np.mean((np_(pred["valence"])[:, 0] - targets["valence"]) ** 2)
    np.testing.assert_allclose(np_(head_losses), ce, rtol=1e-5)
    assert float(np_(total)) == pytest.approx(sum(ce) + 0.5 * mse, rel=1e-5)
    assert np_(pred["valence"]).shape == (16, 1)


def test_fit_logs_regression_metrics_and_learns(data):
    (x, y), (xv, yv) = data
    model = model_with_valence()
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    history = model.fit(
        x, y, epochs=12, batch_size=32, validation_data=(xv, yv), verbose=0
    ).history
    for key in ("valence_mse", "valence_mae", "val_valence_mse"):
        assert key in history
    # OLM still balances the three classification heads only.
    assert np_(model.balancer.coefficients).shape == (3,)
    assert "fused_coef" in history and "valence_coef" not in history
    variance = float(np.var(yv["valence"]))
    assert history["val_valence_mse"][-1] < 0.25 * variance
    assert history["val_valence_mse"][-1] < history["val_valence_mse"][0]
    assert history["val_fused_acc"][-1] > 0.8
    # The logged MSE is the MSE of predict's valence output.
    out = model.predict(xv, verbose=0)
    assert set(out) == {"label", "valence"}
    assert out["label"].shape == (96, 3) and out["valence"].shape == (96, 1)
    mse = np.mean((out["valence"][:, 0] - yv["valence"]) ** 2)
    assert history["val_valence_mse"][-1] == pytest.approx(mse, rel=1e-3)


def test_dataset_with_dict_targets_and_dev_data(data):
    (x, y), (xv, yv) = data
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    held_out = tf.data.Dataset.from_tensor_slices((xv, yv)).batch(32)
    model = model_with_valence()
    model.compile(optimizer="adam")
    history = model.fit(
        ds,
        held_out_data=held_out,
        validation_data=held_out,
        epochs=1,
        verbose=0,
    ).history
    assert np.isfinite(history["valence_mse"][0])
    assert np.isfinite(history["val_valence_mae"][0])
    assert int(np_(model.balancer.held_out_steps)) >= 1


def test_keras_round_trip(tmp_path, data):
    (x, y), _ = data
    model = model_with_valence(weight=0.3)
    model.compile(optimizer="adam")
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.regression_targets == {"valence": 1}
    assert loaded.regression_weight == 0.3
    a, b = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    for k in ("label", "valence"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_classifier_output_unchanged_without_regression(data):
    (x, y), _ = data
    model = keras_olm.BalancedMultimodalModel(
        {"fast": tiny_encoder(), "slow": tiny_encoder()}, num_classes=3
    )
    probs = model.predict(x, verbose=0)
    assert probs.shape == (320, 3)
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="no regression heads"):
        model.fit(x, y, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda y: {"label": y["label"]}, r"missing targets \['valence'\]"),
        (lambda y: {**y, "arousal": y["valence"]}, r"unknown targets"),
        (lambda y: y["label"], "must be a dict"),
        (
            lambda y: {
                **y,
                "valence": np.where(np.arange(320) == 7, np.nan, 1),
            },
            "'valence' must be finite; sample 7",
        ),
        (
            lambda y: {**y, "valence": np.zeros((320, 2))},
            r"1 value\(s\) per sample",
        ),
        (
            lambda y: {**y, "valence": y["valence"][:300]},
            "same number of samples",
        ),
    ],
)
def test_bad_array_targets(data, change, message):
    (x, y), _ = data
    model = model_with_valence()
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match=message):
        model.fit(x, change(y), epochs=1, verbose=0)


def test_bad_dataset_targets(data):
    (x, y), _ = data
    model = model_with_valence(balancer=None)
    model.compile(optimizer="adam")
    missing = tf.data.Dataset.from_tensor_slices((x, y["label"])).batch(32)
    with pytest.raises(ValueError, match="must yield targets as a dict"):
        model.fit(missing, epochs=1, verbose=0)
    bad = dict(y, valence=np.where(np.arange(320) == 40, np.inf, 0.0))
    ds = tf.data.Dataset.from_tensor_slices((x, bad)).batch(32)
    with pytest.raises(Exception, match="valence must be finite"):
        model.fit(ds, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "targets, weight, message",
    [
        ({"label": 1}, 1.0, "holds the class labels"),
        ({"valence": 0}, 1.0, "width >= 1"),
        ({"valence": 1}, -1.0, "regression_weight"),
        (3, 1.0, "regression_targets must be"),
    ],
)
def test_bad_configuration(targets, weight, message):
    with pytest.raises((ValueError, TypeError), match=message):
        keras_olm.BalancedMultimodalModel(
            {"a": tiny_encoder()},
            num_classes=3,
            regression_targets=targets,
            regression_weight=weight,
        )
