"""BalancedMultimodalModel: API, fit logs, saving, bad inputs, training."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from olm_testing import gradients
from olm_testing import set_weights_from_numpy
from olm_testing import tiny_model

import keras_olm
from keras_olm.synthetic import make_imbalanced


@pytest.fixture(scope="module")
def data():
    x, y = make_imbalanced(256, seed=0)
    xv, yv = make_imbalanced(64, seed=1)
    return x, y, xv, yv


def np_(x):
    return keras.ops.convert_to_numpy(x)


def test_predict_returns_fused_probabilities(data):
    x, y, _, _ = data
    model = tiny_model()
    probs = model.predict(x, verbose=0)
    assert probs.shape == (256, 4)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    logits = model.predict_heads(x)
    assert list(logits) == ["fast", "slow", "fused"]
    assert logits["slow"].shape == (256, 4)
    fused = np.exp(logits["fused"])
    fused /= fused.sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, fused, rtol=1e-4, atol=1e-6)


def test_fit_logs_every_head(data):
    x, y, xv, yv = data
    model = tiny_model()
    model.compile(optimizer="adam")
    history = model.fit(
        x, y, epochs=2, batch_size=32, validation_data=(xv, yv), verbose=0
    )
    keys = set(history.history)
    for h in ("fast", "slow", "fused"):
        for what in ("loss", "acc", "coef", "lambda"):
            assert f"{h}_{what}" in keys
        # Validation repeats the losses and accuracies, not OLM's state.
        for what in ("loss", "acc"):
            assert f"val_{h}_{what}" in keys
        for what in ("coef", "lambda"):
            assert f"val_{h}_{what}" not in keys
    assert "loss" in keys and "val_loss" in keys
    lambdas = [history.history[f"{h}_lambda"][-1] for h in model.head_names]
    assert sum(lambdas) == pytest.approx(1.0, abs=1e-5)
    # 256 samples, 10% held out, batch 32: 8 steps an epoch.
    assert int(np_(model.balancer.steps)) == 16
    # Periodic schedule, a held-out batch every 20 steps of each fit call
    # (steps 0, 20, ...): only step 0 of these 16.
    assert model.balancer.held_out_every == 20
    assert int(np_(model.balancer.held_out_steps)) == 1
    coef = np_(model.balancer.coefficients)
    assert np.mean(coef) == pytest.approx(1.0, rel=1e-4)


def test_step_schedule_reads_a_held_out_batch_every_step(data):
    x, y, _, _ = data
    model = tiny_model(
        balancer=keras_olm.OLM(
            held_out=keras_olm.balancers.HeldOutSchedule("step")
        )
    )
    model.compile(optimizer="adam")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert int(np_(model.balancer.held_out_steps)) == 8


def test_repeated_fits_release_their_held_out_data(data):
    # Each fit's held-out iterator goes with the fit: a compiled step that
    # captured it would keep five of its threads alive per fit.
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):
        pytest.skip("counts threads through /proc")
    x, y, _, _ = data
    model = tiny_model(
        balancer=keras_olm.OLM(
            held_out=keras_olm.balancers.HeldOutSchedule(every=4)
        )
    )
    model.compile(optimizer="adam")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    before = len(os.listdir(tasks))
    for _ in range(4):
        model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert len(os.listdir(tasks)) <= before + 2
    # 5 fits of 8 steps; held-out batches at steps 0 and 4 of each.
    assert int(np_(model.balancer.steps)) == 40
    assert int(np_(model.balancer.held_out_steps)) == 10


def test_several_steps_per_execution_read_held_out_data(data):
    if keras.backend.backend() == "torch":
        pytest.skip("Keras' torch trainer runs one step per execution")
    x, y, _, _ = data
    model = tiny_model(
        balancer=keras_olm.OLM(
            held_out=keras_olm.balancers.HeldOutSchedule(every=4)
        )
    )
    model.compile(optimizer="adam", steps_per_execution=2)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert int(np_(model.balancer.steps)) == 8
    assert int(np_(model.balancer.held_out_steps)) == 2


def _olm_state_after(data, steps_per_execution):
    """OLM's state and the weights after two epochs of seven steps, a
    held-out batch every fourth global step (0, 4, 8, 12)."""
    x, y, xv, yv = data
    x = {m: v[:224] for m, v in x.items()}
    model = tiny_model(
        balancer=keras_olm.OLM(
            held_out=keras_olm.balancers.HeldOutSchedule(every=4)
        )
    )
    model.build({m: (None, *v.shape[1:]) for m, v in x.items()})
    set_weights_from_numpy(model)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        steps_per_execution=steps_per_execution,
    )
    model.fit(
        x,
        y[:224],
        epochs=2,
        batch_size=32,
        shuffle=False,
        held_out_data=(xv, yv),
        verbose=0,
    )
    assert int(np_(model.balancer.steps)) == 14
    assert int(np_(model.balancer.held_out_steps)) == 4
    # The whole state: the held-out losses of the last held-out step too.
    return [np_(model.balancer.state)] + [
        np_(v) for v in model.trainable_variables
    ]


def test_several_steps_per_execution_read_the_same_held_out_batches(data):
    # With two steps per call the last call of an epoch runs one step: the
    # held-out batches must stay on global steps 0, 4, 8, 12 across it.
    if keras.backend.backend() == "torch":
        pytest.skip("Keras' torch trainer runs one step per execution")
    one = _olm_state_after(data, 1)
    two = _olm_state_after(data, 2)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_held_out_feed_follows_the_global_step():
    from keras_olm import held_out as held_out_lib

    step = [5]
    feed = held_out_lib.HeldOutFeed(
        lambda skip: iter(range(skip, 10**6)), 4, lambda: step[0], 3
    )
    # From global step 5: steps 0 and 4 read held-out batches 0 and 1,
    # step 8 reads batch 2.
    assert feed.due_within(4) and not feed.due_within(3)
    assert [feed.due() for _ in range(4)] == [False, False, False, True]
    step[0] = 7
    feed.sync()
    assert feed.count == 7 and feed.due_within(2)
    assert next(feed.batches) == 2


# torch.compile takes about 100 s for this model on 2 cores.
_slow_on_torch = (
    pytest.mark.slow if keras.backend.backend() == "torch" else lambda f: f
)


@_slow_on_torch
def test_jit_compile_reads_held_out_data(data):
    # The held-out batches enter a compiled step (XLA; torch.compile, which
    # failed on numpy arrays that wrap TensorFlow buffers).
    x, y, _, _ = data
    model = tiny_model(
        balancer=keras_olm.OLM(
            held_out=keras_olm.balancers.HeldOutSchedule(every=4)
        )
    )
    model.compile(optimizer="adam", jit_compile=True)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert int(np_(model.balancer.steps)) == 16
    assert int(np_(model.balancer.held_out_steps)) == 4
    assert np.all(np.isfinite(np_(model.balancer.coefficients)))


def test_plain_joint_training_needs_no_held_out_data(data):
    x, y, _, _ = data
    model = tiny_model(balancer=None)
    model.compile(optimizer="adam")
    history = model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert "fast_coef" not in history.history
    assert "slow_acc" in history.history


def test_unimodal_heads_are_probes_without_a_balancer(data):
    """With balancer=None the unimodal losses never reach the encoders."""
    x, y, _, _ = data
    model = tiny_model(balancer=None)
    model.build({"fast": (None, 16), "slow": (None, 64)})
    batch = {m: v[:8] for m, v in x.items()}
    slow_kernel = model.encoders["slow"].trainable_variables[0]
    fast_head = model.heads["fast"].trainable_variables[0]

    loss_fn = keras_olm.balancers.base.cross_entropy
    y8 = keras.ops.convert_to_tensor(y[:8])
    grads = gradients(
        lambda: loss_fn(y8, model.head_logits(batch, training=True)["slow"]),
        [slow_kernel, fast_head],
    )
    assert np.all(np_(grads[0]) == 0)


def test_head_stopping_cuts_the_unimodal_gradient_into_its_encoder(data):
    """OLM's head stopping: a stopped head's loss no longer reaches its
    encoder; its own kernel and every forward value are unchanged."""
    x, y, _, _ = data
    olm = keras_olm.OLM(
        head_stopping=keras_olm.balancers.HeadStopping(patience=3)
    )
    model = tiny_model(balancer=olm)
    model.build({"fast": (None, 16), "slow": (None, 64)})
    batch = {m: v[:8] for m, v in x.items()}
    slow_kernel = model.encoders["slow"].trainable_variables[0]
    slow_head = model.heads["slow"].trainable_variables[0]
    loss_fn = keras_olm.balancers.base.cross_entropy
    y8 = keras.ops.convert_to_tensor(y[:8])
    rows = keras_olm.balancers.head_stopping.STATE_ROWS

    def slow_head_gradients(stopped):
        state = np_(olm.head_stopping.state).copy()
        state[rows.index("stopped")] = [0.0, stopped, 0.0]
        olm.head_stopping.state.assign(state)
        logits = model.head_logits(batch, training=True)["slow"]
        grads = gradients(
            lambda: loss_fn(
                y8, model.head_logits(batch, training=True)["slow"]
            ),
            [slow_kernel, slow_head],
        )
        return np_(logits), [np_(g) for g in grads]

    open_logits, open_grads = slow_head_gradients(0.0)
    stopped_logits, stopped_grads = slow_head_gradients(1.0)
    np.testing.assert_allclose(np_(olm.head_stopping.gates), [1.0, 0.0, 1.0])
    assert np.abs(open_grads[0]).sum() > 0
    assert np.all(stopped_grads[0] == 0)
    np.testing.assert_array_equal(stopped_logits, open_logits)
    np.testing.assert_allclose(stopped_grads[1], open_grads[1], rtol=1e-6)


def test_dataset_input_with_split_held_out():
    x, y = make_imbalanced(200, seed=0)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    train, held_out = keras_olm.split_held_out(ds, 0.2, seed=3)
    n_train = sum(1 for _ in train)
    n_held_out = sum(1 for _ in held_out)
    assert n_train + n_held_out == 200 and 20 <= n_held_out <= 60
    # Deterministic and disjoint: the same elements on every pass.
    held_out_a = np.stack([e[0]["fast"] for e in held_out.as_numpy_iterator()])
    held_out_b = np.stack([e[0]["fast"] for e in held_out.as_numpy_iterator()])
    np.testing.assert_array_equal(held_out_a, held_out_b)
    train_rows = {
        r.tobytes() for e in train.as_numpy_iterator() for r in [e[0]["fast"]]
    }
    assert not train_rows & {r.tobytes() for r in held_out_a}

    model = tiny_model()
    model.compile(optimizer="adam")
    model.fit(
        train.shuffle(200, seed=0).batch(32),
        held_out_data=held_out.batch(32),
        epochs=1,
        verbose=0,
    )
    assert int(np_(model.balancer.steps)) == -(-n_train // 32)


def test_dataset_without_dev_data_is_a_clear_error():
    x, y = make_imbalanced(64, seed=0)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    model = tiny_model()
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="held_out_data"):
        model.fit(ds, epochs=1, verbose=0)


def test_sum_fusion_projects_unequal_widths(data):
    x, y, _, _ = data
    model = tiny_model(fusion=keras_olm.LateFusion("sum", units=12))
    model.compile(optimizer="adam")
    model.fit(x, y, epochs=1, batch_size=64, verbose=0)
    assert model.heads["fused"].kernel.shape == (12, 4)
    fusion = keras_olm.LateFusion("sum")
    out = fusion({"a": np.ones((2, 8)), "b": np.ones((2, 4))})
    assert tuple(out["fused"].shape) == (2, 8)
    assert tuple(out["b"].shape) == (2, 4)
    out = keras_olm.LateFusion("concat")(
        {"a": np.ones((2, 3, 8)), "b": np.ones((2, 4))}
    )
    assert tuple(out["fused"].shape) == (2, 12)
    with pytest.raises(ValueError, match="mode"):
        keras_olm.LateFusion("product")


def test_keras_round_trip_restores_weights_and_olm_state(data, tmp_path):
    x, y, _, _ = data
    model = tiny_model()
    model.compile(optimizer="adam")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, keras_olm.BalancedMultimodalModel)
    assert isinstance(restored.balancer, keras_olm.OLM)
    for name in (
        "coefficients",
        "lambdas",
        "steps",
        "reference_held_out_losses",
    ):
        np.testing.assert_array_equal(
            np_(getattr(restored.balancer, name)),
            np_(getattr(model.balancer, name)),
        )
    np.testing.assert_array_equal(
        restored.predict(x, verbose=0), model.predict(x, verbose=0)
    )
    heads_a, heads_b = model.predict_heads(x), restored.predict_heads(x)
    for h in model.head_names:
        np.testing.assert_array_equal(heads_a[h], heads_b[h])
    # Training resumes from the restored state.
    restored.fit(x, y, epochs=1, batch_size=32, verbose=0)
    assert int(np_(restored.balancer.steps)) == 24


def test_weights_checkpoint_carries_balancer_state(data, tmp_path):
    x, y, _, _ = data
    model = tiny_model()
    model.compile(optimizer="adam")
    path = os.path.join(tmp_path, "ckpt.weights.h5")
    model.fit(
        x,
        y,
        epochs=2,
        batch_size=32,
        verbose=0,
        callbacks=[
            keras.callbacks.ModelCheckpoint(path, save_weights_only=True)
        ],
    )
    fresh = tiny_model()
    fresh.build({"fast": (None, 16), "slow": (None, 64)})
    fresh.load_weights(path)
    np.testing.assert_array_equal(
        np_(fresh.balancer.coefficients), np_(model.balancer.coefficients)
    )
    assert int(np_(fresh.balancer.steps)) == 16


# --- bad input ---------------------------------------------------------


def olm_state(model):
    return {v.name: np_(v).copy() for v in model.balancer.non_trainable_weights}


def assert_state_unchanged(model, before):
    for name, value in olm_state(model).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


@pytest.fixture
def trained(data):
    x, y, _, _ = data
    model = tiny_model()
    model.compile(optimizer="adam")
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    return model, olm_state(model)


def test_wrong_modality_keys(trained, data):
    model, before = trained
    x, y, _, _ = data
    bad = {"fast": x["fast"], "visual": x["slow"]}
    with pytest.raises(ValueError, match=r"missing modalities \['slow'\]"):
        model.fit(bad, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"unknown modalities \['visual'\]"):
        model.predict(bad, verbose=0)
    ds = tf.data.Dataset.from_tensor_slices((bad, y)).batch(8)
    with pytest.raises(ValueError, match="visual"):
        model.fit(ds, held_out_data=ds, epochs=1, verbose=0)
    assert_state_unchanged(model, before)


def test_different_batch_sizes(trained, data):
    model, before = trained
    x, y, _, _ = data
    bad = {"fast": x["fast"], "slow": x["slow"][:100]}
    with pytest.raises(ValueError, match="same number of samples"):
        model.fit(bad, y, epochs=1, verbose=0)
    fast = tf.data.Dataset.from_tensor_slices(x["fast"]).batch(8)
    slow = tf.data.Dataset.from_tensor_slices(x["slow"]).batch(6)
    labels = tf.data.Dataset.from_tensor_slices(y).batch(8)
    ds = tf.data.Dataset.zip(
        (tf.data.Dataset.zip({"fast": fast, "slow": slow}), labels)
    )
    good_held_out = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    with pytest.raises(
        ValueError,
        match=r"fit: every modality \(and the labels\) must have the same "
        r"batch size; batch 0 has \{'fast': 8, 'slow': 6, 'labels': 8\}",
    ):
        model.fit(ds, held_out_data=good_held_out, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="same batch size"):
        model.predict_heads({"fast": x["fast"][:4], "slow": x["slow"][:3]})
    assert_state_unchanged(model, before)


def test_labels_out_of_range(trained, data):
    model, before = trained
    x, y, _, _ = data
    bad_y = y.copy()
    bad_y[5] = 4
    with pytest.raises(ValueError, match=r"\[0, 4\); sample 5 has label 4"):
        model.fit(x, bad_y, epochs=1, verbose=0)
    bad_y[5] = -1
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        model.fit(x, bad_y, epochs=1, verbose=0)
    ds = tf.data.Dataset.from_tensor_slices((x, bad_y)).batch(8)
    good = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    with pytest.raises(Exception, match=r"labels must lie in \[0, 4\)"):
        model.fit(ds, held_out_data=good, epochs=1, verbose=0)
    assert_state_unchanged(model, before)


def fit_with_inf_sample(data, sample, match, epochs=1):
    """Trains a linear-encoder model on `data`, then fits it on the same
    data with an inf in the fast input of `sample` (unshuffled, batches of
    32), expecting `NonFiniteLossError` matching `match`.

    Returns the model and its weights and OLM state before the bad fit.
    """
    x, y, _, _ = data
    # Linear encoders carry an inf input into NaN logits (ReLU may not).
    model = keras_olm.BalancedMultimodalModel(
        {"fast": keras.layers.Dense(8), "slow": keras.layers.Dense(8)},
        num_classes=4,
    )
    model.compile(optimizer="adam")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    before = olm_state(model)
    weights = [np_(v).copy() for v in model.trainable_variables]
    moments = [np_(v).copy() for v in model.optimizer.variables]
    bad = {"fast": x["fast"].copy(), "slow": x["slow"]}
    # Overflows the fast head's logits to inf - inf = NaN.
    bad["fast"][sample] = np.inf
    clean_held_out = ({m: v[:32] for m, v in x.items()}, y[:32])
    with pytest.raises(keras_olm.NonFiniteLossError, match=match):
        model.fit(
            bad,
            y,
            epochs=3,
            batch_size=32,
            shuffle=False,
            held_out_data=clean_held_out,
            verbose=0,
        )
    return model, before, weights, moments


def test_nan_loss_stops_training_and_names_the_head(data):
    # Sample 40 is in the 2nd batch.
    model, before, weights_before, _ = fit_with_inf_sample(
        data, 40, r"epoch 1, step 2 .*head 'fast'"
    )
    state = olm_state(model)
    # One good step ran before the NaN step; the NaN step changed nothing.
    assert int(state["counters"][0]) == int(before["counters"][0]) + 1
    for name, value in state.items():
        assert np.all(np.isfinite(value)), name
    for v in model.trainable_variables:
        assert np.all(np.isfinite(np_(v)))
    assert len(weights_before) == len(model.trainable_variables)


def test_nan_step_moves_no_weight_and_no_optimizer_state(data):
    # Sample 3 is in the first batch: the first step is NaN.
    model, before, weights, moments = fit_with_inf_sample(
        data, 3, "step 1", epochs=2
    )
    # Zeroed gradients would still have moved the weights through Adam's
    # momentum; the step is skipped instead.
    for before_value, v in zip(weights, model.trainable_variables):
        np.testing.assert_array_equal(np_(v), before_value, err_msg=v.path)
    for before_value, v in zip(moments, model.optimizer.variables):
        np.testing.assert_array_equal(np_(v), before_value, err_msg=v.path)
    assert_state_unchanged(model, before)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="fused"):
        keras_olm.BalancedMultimodalModel(
            {"fused": keras.layers.Dense(2)}, num_classes=2
        )
    with pytest.raises(TypeError, match="modality 'audio'"):
        keras_olm.BalancedMultimodalModel({"audio": object()}, num_classes=2)
    with pytest.raises(ValueError, match="Unknown balancer"):
        keras_olm.BalancedMultimodalModel(
            {"a": keras.layers.Dense(2)}, num_classes=2, balancer="ogm"
        )
    model = tiny_model()
    with pytest.raises(ValueError, match="do not pass `loss`"):
        model.compile(optimizer="adam", loss="mse")
